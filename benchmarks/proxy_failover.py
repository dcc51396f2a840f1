"""A replica killed under load, behind Envoy (as compound deploys it) and behind HAProxy set up for the
same balancing, health check and retries (benchmarks/proxy.py's HAPROXY_CFG): two replicas of the
bundled example, 16 client threads with no client retries, closed-loop gRPC through the proxy for 8 s,
one replica's tritonserver SIGKILLed after 2 s. Counts the requests the clients saw fail.

Run (under a minute):

    .venv/bin/python benchmarks/proxy_failover.py --out benchmarks/results/proxy
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proxy import Haproxy  # noqa: E402
from tests.conftest import start_server  # noqa: E402
from tests.integration.test_proxy import Load  # noqa: E402
from toolkit.core.system import free_ports  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.targets.proxy import EnvoyProxy, Replica, default_workers  # noqa: E402


def one(setup: str, repo: Path, work: Path, seconds: float, kill_at_s: float) -> dict[str, Any]:
    work.mkdir(parents=True)
    servers = []
    proxy: Any = None
    try:
        for i in range(2):
            (work / f"replica{i}").mkdir()
            servers.append(start_server(repo, work / f"replica{i}"))
        replicas = [Replica("127.0.0.1", s.endpoints.http_port, s.endpoints.grpc_port) for s in servers]
        if setup == "envoy":
            http_port, grpc_port = free_ports(2)
            proxy = EnvoyProxy(replicas, http_port=http_port, grpc_port=grpc_port, workdir=work / "envoy").start()
        else:
            proxy = Haproxy(shutil.which("haproxy") or "haproxy", replicas, work, default_workers()).start()
        load = Load(proxy.grpc_url)
        victim = servers[1].pid
        load.run(seconds, during=lambda: os.kill(victim, signal.SIGKILL), at_s=kill_at_s)  # type: ignore[arg-type]
        result: dict[str, Any] = {"setup": setup, "ok": load.ok, "failed": load.failed, "errors": load.errors}
        if setup == "envoy":
            grpc = proxy.counters().clusters["grpc"]
            result.update(retried=grpc.retries, retry_overflow=grpc.retry_overflow, ejections=grpc.ejections)
        return result
    finally:
        if proxy is not None:
            proxy.stop()
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "proxy")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--kill-at", type=float, default=2.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compound-bench-failover-"))
    repo = render_repository(plan_spec(ROOT / "examples" / "textdemo" / "pipeline.yaml"), work / "repo")
    setups = ["envoy"] + (["haproxy"] if shutil.which("haproxy") else [])
    results = [one(setup, repo, work / setup, args.seconds, args.kill_at) for setup in setups]
    for r in results:
        print(f"{r['setup']:8} {r['ok']} ok, {r['failed']} failed {r['errors'][:2]}", flush=True)
    report = {
        "command": "python benchmarks/proxy_failover.py " + " ".join(sys.argv[1:]),
        "machine": "shared machine, 2 cores",
        "scenario": f"2 replicas, 16 gRPC client threads, no client retries, {args.seconds:g} s,"
        f" one replica SIGKILLed at {args.kill_at:g} s",
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
