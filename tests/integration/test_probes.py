"""The Kubernetes Deployment's probes, run as the kubelet runs them against a real server: they pass
while it serves, the liveness probe fails for a server that hangs (so the kubelet restarts it), and
a crashed server fails them all while its process, the container's main one, is gone (so the
container ends and the kubelet restarts it; readiness takes the pod out of the Services at once)."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import start_server
from toolkit.targets.kubernetes import KubernetesOptions, render_manifests
from toolkit.targets.local import LocalServer


def triton_probes(repo: Path) -> dict[str, dict[str, Any]]:
    files = render_manifests(repo, KubernetesOptions(name="textdemo", base_image="compound-base:bookworm", image="x:1"))
    pod = yaml.safe_load(files["deployment.yaml"])["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "tritonserver")
    return {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}


def probe(server: LocalServer, spec: dict[str, Any]) -> str:
    """One probe as the kubelet runs it: GET, success on 200-399 within timeoutSeconds (default 1)."""
    assert spec["httpGet"]["port"] == "http"
    url = f"http://{server.http_url}{spec['httpGet']['path']}"
    try:
        with urllib.request.urlopen(url, timeout=spec.get("timeoutSeconds", 1)) as answer:  # noqa: S310 - loopback
            return "success" if 200 <= answer.status < 400 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, TimeoutError) as exc:
        return f"failure: {exc}"


def test_the_probes_pass_while_serving_and_fail_for_a_hung_or_crashed_server(
    textdemo_repo: Path, tmp_path: Path
) -> None:
    probes = triton_probes(textdemo_repo)
    server = start_server(textdemo_repo, tmp_path)
    try:
        assert {kind: probe(server, spec) for kind, spec in probes.items()} == dict.fromkeys(probes, "success")
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)  # a hung server: the process is there, nothing answers
        try:
            started = time.monotonic()
            hung = probe(server, probes["livenessProbe"])
            assert hung.startswith("failure") and "timed out" in hung, hung
            assert time.monotonic() - started < probes["livenessProbe"]["timeoutSeconds"] + 1
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert probe(server, probes["livenessProbe"]) == "success"  # one success resets the kubelet's count
        os.kill(server.pid, signal.SIGSEGV)  # what the gRPC cancellation race does (server#7368)
        deadline = time.monotonic() + 10
        while server.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not server.alive() and server.process is not None and server.process.returncode == -signal.SIGSEGV
        for kind in ("readinessProbe", "livenessProbe"):
            assert probe(server, probes[kind]).startswith("failure"), kind  # connection refused
    finally:
        server.stop()
