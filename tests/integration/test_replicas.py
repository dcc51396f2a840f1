"""Replicas behind the proxy, on real processes: `compound deploy --replicas 2` puts two tritonservers
behind Envoy on the public ports; one gRPC channel reaches both; a replica SIGKILLed under load costs
no request and serves again by itself; `compound restart` replaces them one at a time under load."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from click.testing import CliRunner

from tests.conftest import EXAMPLE_SPEC
from tests.integration.test_proxy import settled_shares
from toolkit.cli.main import cli
from toolkit.core.system import free_port
from toolkit.deployment.deployment import Deployment
from toolkit.observe.stats import fetch_stats
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.local import pid_running_tritonserver
from toolkit.targets.proxy import recorded_proxy_running
from toolkit.targets.settings import DeployRequest

NAME = "replicated"


def grpc_inputs() -> list[grpcclient.InferInput]:
    text = grpcclient.InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"I love this product"]], dtype=object))
    return [text]


class ClosedLoop:
    """Client threads without retries, each sending the next request once the last one answered."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.clients = url, clients
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        inputs = grpc_inputs()
        while not self.stopping.is_set():
            try:
                client.infer("classify", inputs, client_timeout=30)
                with self.lock:
                    self.ok += 1
            except Exception as exc:  # noqa: BLE001 - counted: the test asserts there are none
                with self.lock:
                    self.failed += 1
                    self.errors.append(str(exc)[:200])
        client.close()

    def __enter__(self) -> ClosedLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)


def served_per_replica(deployment: Deployment) -> list[int]:
    host = deployment.state.host
    return [fetch_stats(f"{host}:{s.http_port}")["classify"].success.count for s in deployment.state.server_records()]


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    repo = render_repository(plan_spec(EXAMPLE_SPEC), tmp_path_factory.mktemp("replicated") / "repo")
    request = DeployRequest(
        repository=repo, name=NAME, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), replicas=2
    )
    deployment = Deployment.start(request)
    yield deployment
    Deployment.find(NAME).stop()


def test_one_grpc_channel_reaches_every_replica(replicated: Deployment) -> None:
    assert len(replicated.state.server_records()) == 2 and recorded_proxy_running(replicated.state.proxy)
    before = served_per_replica(replicated)
    client = grpcclient.InferenceServerClient(replicated.endpoints.grpc_url)
    for _ in range(200):
        client.infer("classify", grpc_inputs())
    client.close()
    served = settled_shares(lambda: served_per_replica(replicated), before, 200)
    assert sum(served) == 200 and min(served) >= 60, served  # each >= 30%


def test_a_killed_replica_costs_no_request_and_comes_back(replicated: Deployment) -> None:
    victim = replicated.state.server_records()[1]
    with ClosedLoop(replicated.endpoints.grpc_url, 16) as load:
        time.sleep(2.0)
        os.kill(victim.pid or 0, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() - killed < 30:
            current = Deployment.find(NAME).state.server_records()[1]
            if current.pid != victim.pid and pid_running_tritonserver(current.pid) and Deployment.find(NAME).restarts():
                break
            time.sleep(0.2)
        back_s = time.monotonic() - killed
        time.sleep(2.0)
    assert load.failed == 0, (load.failed, load.ok, load.errors[:3])
    assert load.ok > 50
    assert back_s < 10, f"the killed replica served again only after {back_s:.1f} s"
    report = json.loads(CliRunner().invoke(cli, ["status", "--name", NAME, "--json"]).output)
    assert report["restarts"]["count"] >= 1 and report["restarts"]["last"]["server"] == 1
    grpc = report["proxy"]["protocols"]["grpc"]
    assert grpc["healthy_replicas"] >= 1 and grpc["replicas"] == 2
    assert grpc["retries"] + grpc["ejections"] + grpc["health_check_failures"] >= 1, grpc
    assert all(server["running"] for server in report["servers"])


def test_rolling_restart_fails_no_request(replicated: Deployment) -> None:
    before = [s.pid for s in Deployment.find(NAME).state.server_records()]
    with ClosedLoop(replicated.endpoints.grpc_url, 8) as load:
        time.sleep(1.0)
        result = CliRunner().invoke(cli, ["restart", "--name", NAME])
        time.sleep(1.0)
    assert result.exit_code == 0, result.output
    after = [s.pid for s in Deployment.find(NAME).state.server_records()]
    assert all(a != b for a, b in zip(after, before)) and all(pid_running_tritonserver(p) for p in after)
    assert load.failed == 0, (load.failed, load.ok, load.errors[:3])
    assert "replica 0 restarted" in result.output and "replica 1 restarted" in result.output


def test_status_shows_the_proxy_and_each_replica(replicated: Deployment) -> None:
    text = CliRunner().invoke(cli, ["status", "--name", NAME]).output
    assert "replica 0:" in text and "replica 1:" in text and "proxy:" in text, text
    assert Path(replicated.state.proxy.log_path).is_file()  # type: ignore[union-attr]
