"""On-demand components on a real server: unloaded until a request needs them, loaded together with
every cold component its path can reach (not one cold start after another), the request waiting
without an error; unloaded again by the runtime once idle."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, start_server
from tests.integration.test_runtime import supervisor_for
from toolkit.client import infer, model_states
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository

SPEC = FIXTURES / "ondemand" / "pipeline.yaml"
AGENTS = ("planner", "researcher", "writer")


def loaded(server: object) -> set[str]:
    return {m.name for m in model_states(server.http_url, server.headers) if m.state == "READY"}  # type: ignore[attr-defined]


def test_cold_branch_loads_its_components_together_and_idle_ones_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = tmp_path / "starts.txt"
    monkeypatch.setenv("COMPOUND_TEST_STARTS", str(starts))  # the server's stubs inherit it
    plan = plan_spec(SPEC)
    assert plan.pipelines["brief"].kind == "orchestrator"  # no control flow, but on-demand steps
    server = start_server(render_repository(plan, tmp_path / "repo"), tmp_path)
    try:
        assert loaded(server) >= {"agent", "route", "chat"} and not loaded(server) & set(AGENTS)

        out = infer("agent", server.http_url, {"query": np.array([[b"hello"]], dtype=object)})
        assert out["answer"].tolist() == [[b"chat:hello"]]
        assert not loaded(server) & set(AGENTS)  # the branch not taken loads nothing

        began = time.monotonic()
        out = infer("agent", server.http_url, {"query": np.array([[b"deep question"]], dtype=object)})
        first_s = time.monotonic() - began
        assert out["answer"].tolist() == [[b"writer:researcher:planner:deep question"]]
        assert loaded(server) >= set(AGENTS)
        intervals = {
            tag: (float(a), float(b)) for tag, a, b in (line.split() for line in starts.read_text().splitlines())
        }
        assert set(AGENTS) <= set(intervals)
        # loaded together: every start-up began before any of them ended (one after another, none would)
        assert max(intervals[t][0] for t in AGENTS) < min(intervals[t][1] for t in AGENTS), (intervals, first_s)

        supervisor = supervisor_for(server, tmp_path)
        deadline = time.monotonic() + 20
        while loaded(server) & set(AGENTS) and time.monotonic() < deadline:
            supervisor.tick()
            time.sleep(1.0)
        assert not loaded(server) & set(AGENTS), supervisor.decisions
        unloads = [d for d in supervisor.decisions if d["action"] == "unload"]
        assert {d["model"] for d in unloads} == set(AGENTS) and "idle_s 3" in unloads[0]["reason"]
        assert "route" in loaded(server)  # fixed components stay

        # a static chain of on-demand agents is served by an orchestrator: its cold steps load, it waits
        out = infer("brief", server.http_url, {"query": np.array([[b"short"]], dtype=object)})
        assert out["answer"].tolist() == [[b"writer:planner:short"]]
        assert loaded(server) & set(AGENTS) == {"planner", "writer"}

        out = infer("agent", server.http_url, {"query": np.array([[b"deep again"]], dtype=object)})
        assert out["answer"].tolist() == [[b"writer:researcher:planner:deep again"]]
    finally:
        server.stop()
