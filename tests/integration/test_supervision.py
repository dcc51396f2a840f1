"""Supervision on real processes: a deployment whose tritonserver dies comes back by itself, on the
same ports with the same key and its live state, and says so in `compound status` and `compound logs`."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import EXAMPLE_SPEC, FIXTURES, start_server
from tests.integration.test_runtime import supervisor_for
from toolkit.cli.main import cli
from toolkit.client import api_key_headers, infer, instance_count, model_config, model_states
from toolkit.core.system import free_port
from toolkit.deployment.deployment import Deployment
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.runtime.keeper import backoff_s
from toolkit.targets.local import group_members, pid_running_tritonserver, shared_memory_regions
from toolkit.targets.settings import DeployRequest

TEXT = {"text": np.array([[b"I love this product"]], dtype=object)}


def serves(http_url: str) -> bool:
    try:
        infer("classify", http_url, TEXT, timeout_s=2.0)
    except Exception:  # noqa: BLE001 - not yet
        return False
    return True


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    repo = render_repository(plan_spec(EXAMPLE_SPEC), tmp_path_factory.mktemp("supervised") / "repo")
    request = DeployRequest(
        repository=repo, name="supervised", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    started = Deployment.start(request)
    yield started
    Deployment.find("supervised").stop()


def test_a_crashed_server_serves_again_on_its_ports_and_status_says_why(deployment: Deployment) -> None:
    url = deployment.endpoints.http_url
    assert serves(url)
    first_pid = deployment.state.pid
    assert first_pid is not None
    key = deployment.state.api_key

    regions = set().union(*(shared_memory_regions(pid) for pid in group_members(first_pid)))
    assert regions and all(region.exists() for region in regions)
    os.kill(first_pid, signal.SIGSEGV)  # what Triton 2.51's gRPC cancellation race does to it
    deadline = time.monotonic() + 10
    while pid_running_tritonserver(first_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_running_tritonserver(first_pid)
    killed = time.monotonic()
    deadline = killed + 30
    while time.monotonic() < deadline:
        if serves(url):
            break
        time.sleep(0.1)
    back_s = time.monotonic() - killed
    assert serves(url), f"not serving {back_s:.1f} s after the crash"

    def written_down() -> bool:
        """The restart, and a status file: on a loaded machine the crash can come before the
        runtime's first interval has written one."""
        found = Deployment.find("supervised")
        return bool(found.restarts()) and found.runtime_status() is not None

    while not written_down() and time.monotonic() < deadline:
        time.sleep(0.1)  # serving, but the runtime has not written down the restart yet
    current = Deployment.find("supervised")
    assert current.state.pid != first_pid and pid_running_tritonserver(current.state.pid)
    assert group_members(first_pid) == []  # the dead server's stubs went with it
    assert not any(region.exists() for region in regions)  # and the shared memory they had mapped
    assert current.state.api_key == key  # the restricted APIs still answer to the deployment's key
    assert model_states(url, api_key_headers(key))

    restarts = current.restarts()
    assert len(restarts) == 1 and "SIGSEGV" in restarts[0]["reason"], restarts
    assert Path(restarts[0]["crash_log"]).is_file()

    result = CliRunner().invoke(cli, ["status", "--name", "supervised", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["restarts"]["count"] == 1 and "SIGSEGV" in report["restarts"]["last"]["reason"]
    assert report["condition"] == "ready" and report["target"] == "local"
    assert report["endpoints"]["http"] == url
    assert {m["name"] for m in report["models"]} >= {"classify", "tok", "sentiment"}
    assert all(m["state"] == "READY" and m["instances"] >= 1 for m in report["models"])
    assert isinstance(report["runtime"]["instance_seconds"], float)
    assert "tok" in report["runtime"]["components"]

    text = CliRunner().invoke(cli, ["status", "--name", "supervised"]).output
    assert "restarts:   1" in text and "SIGSEGV" in text
    logs = CliRunner().invoke(cli, ["logs", "--name", "supervised", "-n", "20"]).output
    assert "last crash (1 restart(s))" in logs and "serving again" in logs


def test_restore_gives_a_restarted_server_the_instance_counts_the_runtime_chose(tmp_path: Path) -> None:
    server = start_server(render_repository(plan_spec(EXAMPLE_SPEC), tmp_path / "repo"), tmp_path)
    try:
        supervisor = supervisor_for(server, tmp_path)
        supervisor.tick()
        assert supervisor.components["tok"].instances == 1
        supervisor.components["tok"].instances = 2  # as if the runtime had scaled it before a crash
        supervisor.restore(time.monotonic())
        assert instance_count(model_config(server.http_url, "tok"))[0] == 2
        assert any(d["action"] == "restore" and d["model"] == "tok" for d in supervisor.decisions)
    finally:
        server.stop()


def test_restore_loads_the_on_demand_components_that_were_loaded(tmp_path: Path) -> None:
    server = start_server(
        render_repository(plan_spec(FIXTURES / "ondemand" / "pipeline.yaml"), tmp_path / "r"), tmp_path
    )
    try:
        supervisor = supervisor_for(server, tmp_path)
        supervisor.tick()
        assert not supervisor.components["planner"].loaded
        supervisor.components["planner"].loaded = True  # it was loaded when the server died
        supervisor.components["planner"].instances = 1
        supervisor.restore(time.monotonic())
        states = {m.name: m.state for m in model_states(server.http_url, server.headers)}
        assert states["planner"] == "READY"
    finally:
        server.stop()


def test_stop_stops_the_runtime_and_the_restarted_server(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(EXAMPLE_SPEC), tmp_path / "repo")
    request = DeployRequest(
        repository=repo, name="stopped", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    started = Deployment.start(request)
    try:
        os.kill(started.state.pid or 0, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not Deployment.find("stopped").restarts() and time.monotonic() < deadline:
            time.sleep(0.2)
        current = Deployment.find("stopped")
        assert current.restarts(), "no restart recorded"
        new_pid, runtime_pid = current.state.pid, current.state.runtime_pid
    finally:
        result = CliRunner().invoke(cli, ["stop", "--name", "stopped"])
    assert result.exit_code == 0 and "stopped" in result.output
    assert not pid_running_tritonserver(new_pid) and group_members(new_pid or 0) == []
    assert runtime_pid is not None and not Path(f"/proc/{runtime_pid}").exists() or _zombie(runtime_pid)


def _zombie(pid: int | None) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_crash_loops_back_off() -> None:
    assert backoff_s(0) == 0
    assert [backoff_s(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 30]
