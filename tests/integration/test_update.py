"""`compound update` on the real server: a full update and a rollback under load fail no request and
leave unchanged components' processes alone; a canary splits each pipeline's requests at the asked
share in every topology; promote and rollback switch the whole set."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import FIXTURES, start_server
from tests.integration.load import Load
from toolkit.core.system import command_line
from toolkit.observe.canary import canary_report
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.repository.versions import VERSIONS_FILE, VersionRecord
from toolkit.targets.local import LocalServer, group_members
from toolkit.update.apply import LiveDeployment, promote, rollback, update

PIPELINES = ("chain", "routed", "fused", "grouped")


def write_spec(folder: Path, offset: float) -> Path:
    """The fixture's spec with shift's offset set (the change an update carries)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "update" / "handlers.py", folder / "handlers.py")
    text = (FIXTURES / "update" / "pipeline.yaml").read_text().replace("{offset: 0}", f"{{offset: {offset}}}")
    (folder / "pipeline.yaml").write_text(text)
    return folder / "pipeline.yaml"


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[LocalServer]:
    repo = render_repository(plan_spec(write_spec(tmp_path / "v0", 0)), tmp_path / "repo")
    server = start_server(repo, tmp_path)
    yield server
    server.stop()


def x_input(value: float = 1.0) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    return [tensor]


def answer(client: grpcclient.InferenceServerClient, pipeline: str) -> float:
    return float(client.infer(pipeline, x_input()).as_numpy("z")[0][0])


def stubs(server: LocalServer, model: str) -> set[int]:
    """Pids of the model's Python-backend processes."""
    assert server.pid is not None
    return {pid for pid in group_members(server.pid) if f"/{model}/1/model.py" in " ".join(command_line(pid))}


def test_update_and_rollback_under_load_fail_nothing_and_touch_only_the_changed(
    server: LocalServer, tmp_path: Path
) -> None:
    live = LiveDeployment.of(server)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert [answer(client, p) for p in PIPELINES] == [2.0] * len(PIPELINES)
    # kind is called by the orchestrator only; double is also a step of the ensemble, which the update
    # loads again: Triton 2.51 restarts a composing model whose folder changed since it was loaded
    # (the stub's bytecode, once), so the folders hold their bytecode before Triton sees them
    untouched = {name: stubs(server, name) for name in ("kind", "double")}
    assert all(untouched.values())
    lines: list[str] = []
    with Load(server.grpc_url, 16, lambda i: (PIPELINES[i % len(PIPELINES)], x_input())) as load:
        threading.Event().wait(2.0)
        change = update(live, plan_spec(write_spec(tmp_path / "v1", 1)), log=lines.append)
        threading.Event().wait(1.0)
        assert [answer(client, p) for p in PIPELINES] == [4.0] * len(PIPELINES)
        rollback(live, log=lines.append)
        threading.Event().wait(1.0)
    assert load.errors == [], load.errors[:5]
    assert load.done > 100
    assert sorted(change.changed_components) == ["grouped_steps", "shift"]  # the fuse group runs shift too
    assert sorted(change.changed_pipelines) == sorted(PIPELINES)
    assert [answer(client, p) for p in PIPELINES] == [2.0] * len(PIPELINES)
    # unchanged components kept their processes through the update and the rollback
    assert {name: stubs(server, name) for name in untouched} == untouched
    record = VersionRecord.from_json((server.repository / VERSIONS_FILE).read_text())
    assert record.current == 1 and record.history == [1]
    assert record.versions[2].components["shift"]["model"] == "shift.v2"
    # an update that changes nothing does nothing
    assert update(live, plan_spec(write_spec(tmp_path / "v0b", 0)), log=lines.append).empty
    client.close()


def test_canary_splits_every_topology_then_promote_and_rollback(server: LocalServer, tmp_path: Path) -> None:
    live = LiveDeployment.of(server)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    update(live, plan_spec(write_spec(tmp_path / "v1", 1)), canary=20, log=print)
    for pipeline in PIPELINES:
        answers = [answer(client, pipeline) for _ in range(400)]
        new = sum(1 for a in answers if a == 4.0)
        assert new + sum(1 for a in answers if a == 2.0) == 400
        assert abs(100.0 * new / 400 - 20.0) <= 5.0, (pipeline, new)
    report = "\n".join(canary_report(live.repository, live.http_url, [live.metrics_url]) or [])
    assert "canary v2 at 20% beside v1" in report
    for pipeline in PIPELINES:  # the routers' own counts, per version, agree with what the clients saw
        old = re.search(rf"{pipeline} v1: (\d+) requests, 0 failed", report)
        new = re.search(rf"{pipeline} v2: (\d+) requests, 0 failed", report)
        assert old and new, report
        assert int(old.group(1)) + int(new.group(1)) == 400 and abs(int(new.group(1)) - 80) <= 20, report
    promote(live, log=print)
    assert [answer(client, p) for p in PIPELINES] == [4.0] * len(PIPELINES)
    rollback(live, log=print)
    assert [answer(client, p) for p in PIPELINES] == [2.0] * len(PIPELINES)
    # shadow: every answer from the serving version, the new one compared on a copy
    update(live, plan_spec(write_spec(tmp_path / "v3", 3)), canary=50, shadow=True, log=print)
    assert [answer(client, "chain") for _ in range(20)] == [2.0] * 20
    report = "\n".join(canary_report(live.repository, live.http_url, [live.metrics_url]) or [])
    shadow = re.search(r"chain v3: .*shadow: (\d+) compared, (\d+) differed", report)
    assert shadow and shadow.group(1) == shadow.group(2) and 8 <= int(shadow.group(1)) <= 12, report
    rollback(live, log=print)
    assert answer(client, "chain") == 2.0
    client.close()


def test_update_and_rollback_reach_every_replica_behind_the_proxy(tmp_path: Path) -> None:
    """With --replicas, an update loads on each replica directly (not through the proxy, which would
    pick one): afterwards every replica answers with the new version, and after a rollback with the old."""
    from toolkit.core.system import free_port
    from toolkit.deployment.deployment import Deployment
    from toolkit.targets.settings import DeployRequest

    repo = render_repository(plan_spec(write_spec(tmp_path / "v0", 0)), tmp_path / "repo")
    request = DeployRequest(
        repository=repo,
        name="updated-replicas",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        replicas=2,
    )
    deployment = Deployment.start(request)
    try:
        state = deployment.state
        replicas = [grpcclient.InferenceServerClient(f"{state.host}:{s.grpc_port}") for s in state.server_records()]
        live = LiveDeployment.of(state)
        assert [answer(c, "chain") for c in replicas] == [2.0, 2.0]
        update(live, plan_spec(write_spec(tmp_path / "v1", 1)), log=lambda line: None)
        assert [answer(c, p) for c in replicas for p in PIPELINES] == [4.0] * 2 * len(PIPELINES)
        rollback(live, log=lambda line: None)
        assert [answer(c, p) for c in replicas for p in PIPELINES] == [2.0] * 2 * len(PIPELINES)
        for client in replicas:
            client.close()
    finally:
        Deployment.find("updated-replicas").stop()
