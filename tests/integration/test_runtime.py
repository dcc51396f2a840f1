"""The adaptive runtime on a real server: it scales the bottleneck, moves instances away from idle
components, heals a killed stub, accounts instance-seconds, and runs beside `compound deploy`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from click.testing import CliRunner

from tests.conftest import FIXTURES, start_server
from tests.integration.load import Load
from toolkit.cli.main import cli
from toolkit.client import model_config
from toolkit.core.system import command_line, free_port
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.runtime.policy import Decision
from toolkit.runtime.supervisor import Supervisor
from toolkit.targets.local import LocalServer, group_members
from toolkit.targets.server import stub_counts
from toolkit.targets.state import RuntimeConfig

SPEC = FIXTURES / "adaptive" / "pipeline.yaml"


@pytest.fixture(scope="module")
def adaptive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    folder = tmp_path_factory.mktemp("adaptive")
    server = start_server(render_repository(plan_spec(SPEC), folder / "repo"), folder)
    yield server
    server.stop()


def supervisor_for(server: LocalServer, run_dir: Path, cores: float = 2.0) -> Supervisor:
    config = RuntimeConfig(
        name="adaptive",
        repository=str(server.repository),
        http_url=server.http_url,
        grpc_url=server.grpc_url,
        metrics_url=server.metrics_url,
        api_key=server.api_key,
        run_dir=str(run_dir),
        cores=cores,
    )
    stubs = lambda: stub_counts([command_line(pid) for pid in group_members(server.pid)])  # noqa: E731
    return Supervisor(config, stubs=stubs, log=lambda line: None)


def chain_request(_: int) -> tuple[str, list[grpcclient.InferInput]]:
    data = grpcclient.InferInput("x", [1, 4], "FP32")
    data.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    return "chain", [data]


def instances(server: LocalServer, model: str) -> int:
    return int(model_config(server.http_url, model)["instance_group"][0]["count"])


def test_the_bottleneck_gets_an_instance_and_idle_ones_give_theirs_back(
    adaptive_server: LocalServer, tmp_path: Path
) -> None:
    supervisor = supervisor_for(adaptive_server, tmp_path)
    supervisor.tick()
    assert instances(adaptive_server, "heavy") == 1 and instances(adaptive_server, "helper") == 2
    with Load(adaptive_server.grpc_url, 16, chain_request) as load:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            instances(adaptive_server, "heavy") < 2 or instances(adaptive_server, "helper") > 1
        ):
            time.sleep(1.0)
            supervisor.tick()
        time.sleep(2.0)  # requests keep flowing through the rescales
    assert instances(adaptive_server, "heavy") == 2, supervisor.decisions
    assert not load.errors, load.errors[:3]
    scaled = [d for d in supervisor.decisions if d["model"] == "heavy" and d["action"] == "scale"]
    assert scaled and "utilisation" in scaled[0]["reason"] and "queued per request" in scaled[0]["reason"]
    # helper has no traffic ('side' is idle): its second instance goes, heavy's stays
    assert instances(adaptive_server, "helper") == 1, supervisor.decisions
    given_back = [d for d in supervisor.decisions if d["model"] == "helper" and d["instances"] == 1]
    assert given_back and (
        "would carry it" in given_back[0]["reason"] or "gives an instance" in given_back[0]["reason"]
    )
    status = supervisor.status(time.monotonic())
    assert status["models"]["heavy"]["instance_s"] > 0 and 0 < status["models"]["heavy"]["requests"] <= load.done
    assert (tmp_path / "runtime.json").is_file()


def test_a_killed_stub_is_healed_and_the_pipeline_serves_again(adaptive_server: LocalServer, tmp_path: Path) -> None:
    supervisor = supervisor_for(adaptive_server, tmp_path)
    supervisor.tick()
    with Load(adaptive_server.grpc_url, 4, chain_request) as load:
        time.sleep(1.0)
        victims = [pid for pid in group_members(adaptive_server.pid) if "/front/" in " ".join(command_line(pid))]
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(0.5)
        while time.monotonic() - killed_at < 10:
            supervisor.tick()
            time.sleep(1.0)
        errors_at_10s = len(load.errors)
        done_at_10s = load.done
        time.sleep(3.0)
    heals = [d for d in supervisor.decisions if d["action"] == "heal" and d["model"] == "front"]
    assert heals and "reloaded" in heals[0]["reason"], supervisor.decisions
    assert len(load.errors) == errors_at_10s, "requests still failed 10 s after the stub was killed"
    assert load.done > done_at_10s


def test_deploy_runs_the_runtime_and_stop_ends_it(tmp_path: Path) -> None:
    runner = CliRunner()
    repo = tmp_path / "repo"
    assert runner.invoke(cli, ["generate", str(SPEC), "-o", str(repo)]).exit_code == 0
    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    result = runner.invoke(cli, ["deploy", str(repo), "--name", "adaptive-cli", "--cores", "2", *ports])
    try:
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 20
        status = runner.invoke(cli, ["status", "--name", "adaptive-cli"])
        while "runtime:    pid" not in status.output and time.monotonic() < deadline:
            time.sleep(0.5)
            status = runner.invoke(cli, ["status", "--name", "adaptive-cli"])
        assert status.exit_code == 0, status.output
        assert "runtime:    pid" in status.output and "heavy: 1 instance(s), loaded, autoscale 1..2" in status.output
        logs = runner.invoke(cli, ["logs", "--name", "adaptive-cli"])
        assert "--- adaptive runtime" in logs.output and "runtime for 'adaptive-cli' started" in logs.output
        runtime_pid = int(status.output.split("runtime:    pid ")[1].split(",")[0])
    finally:
        stopped = runner.invoke(cli, ["stop", "--name", "adaptive-cli"])
    assert stopped.exit_code == 0
    assert (
        not Path(f"/proc/{runtime_pid}").exists()
        or "supervisor" not in Path(f"/proc/{runtime_pid}/cmdline").read_text()
    )


def test_a_scale_up_loads_in_the_background_and_its_reaction_ends_when_the_instance_serves(
    adaptive_server: LocalServer, tmp_path: Path
) -> None:
    supervisor = supervisor_for(adaptive_server, tmp_path)
    supervisor.tick()
    supervisor.prepare(time.monotonic())  # once, at the start: every later rescale adds instances alone
    assert not model_config(adaptive_server.http_url, "heavy").get("model_warmup")
    heavy = supervisor.components["heavy"]
    if heavy.instances > 1:
        supervisor._apply(Decision("heavy", "scale", 1, "back to one"), time.monotonic())
    supervisor.background_loads = True
    with Load(adaptive_server.grpc_url, 16, chain_request) as load:
        time.sleep(1.0)
        heavy.burst_since = time.monotonic()  # as the burst path sets it: the first queued request seen
        supervisor._apply(Decision("heavy", "scale", 2, "a burst"), time.monotonic())
        assert heavy.instances == 2 and heavy.loading  # counted from the decision; the runtime goes on
        deadline = time.monotonic() + 30
        while (supervisor.loading or len(supervisor.served) < 5) and time.monotonic() < deadline:
            time.sleep(0.25)
            supervisor.react()
        arrivals = supervisor.status(time.monotonic())["arrivals"]  # the forecast reads the pipeline's counter
    assert arrivals["chain"]["rate"] > 10 and arrivals["side"]["rate"] == 0, arrivals
    helper = supervisor.components["helper"]
    if helper.instances > 1:  # a removal also loads in the background, and counts until it returns
        before = helper.instances
        supervisor._apply(Decision("helper", "scale", before - 1, "idle"), time.monotonic())
        assert helper.loading and helper.instances == before
        deadline = time.monotonic() + 30
        while supervisor.loading and time.monotonic() < deadline:
            time.sleep(0.25)
            supervisor.react()
        assert helper.instances == before - 1 == instances(adaptive_server, "helper") and not helper.loading
    (entry,) = [d for d in supervisor.decisions if d["model"] == "heavy" and d["reason"].startswith("a burst")]
    assert entry["reaction_s"] > 0 and "after the first queued request" in entry["reason"], entry
    assert instances(adaptive_server, "heavy") == 2 and not heavy.loading
    assert not load.errors, load.errors[:3]
