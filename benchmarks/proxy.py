"""What the proxy in front of replicas costs: the bundled example (examples/textdemo, pipeline
`classify`, an ensemble of four components) on ONE embedded Triton, loaded directly and through the
proxy in front of it (Envoy as compound deploys it, toolkit/targets/proxy.py; and HAProxy configured
for the same per-request gRPC balancing, health check and retries, where it is installed), all on the
same cores. Closed-loop load from the project's load generator (its own process) over gRPC and
HTTP at each concurrency; the setups are measured in short turns, rotated each round, so the
machine's drift hits all alike. CPU per request of the server (tritonserver and its stubs), the proxy
and the client, from psutil over each measuring window.

Two ratios to the direct server, both the median over rounds: the measured throughput ratio, and
the CPU-bound one, server CPU per request direct over server plus proxy CPU per request proxied:
the throughput left when the server and the proxy share cores the server fills, as in a deployment.
On a machine shared with other work the first swings with the others' load; the second much less.

Run (about 5 minutes on 2 cores):

    .venv/bin/python benchmarks/proxy.py --out benchmarks/results/proxy [--no-haproxy]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server  # noqa: E402
from toolkit.bench.driver import Call, Job  # noqa: E402
from toolkit.bench.measure import ProcessCpu, point_line, run_driver  # noqa: E402
from toolkit.core.system import OwnedProcess, free_ports  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.targets.proxy import EnvoyProxy, Replica, default_workers  # noqa: E402

TEXTS = [
    "I love this product",
    "terrible, awful service",
    "the match last night was great",
    "new phone release next week",
    "the gallery opens a new exhibition",
]
OUTPUTS = ("label", "confidence", "score", "topics")

HAPROXY_CFG = """\
# HAProxy set up like compound's Envoy: per-request balancing (HTTP mode, HTTP/2 to the gRPC port),
# /v2/health/ready checked on the replica's HTTP port every second, retries on another replica when the
# connection fails or no answer came, no logging.
global
    nbthread {threads}
    maxconn 8000
defaults
    mode http
    timeout connect 1s
    timeout client 300s
    timeout server 300s
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response
frontend http
    bind {host}:{http_port}
    default_backend replicas_http
frontend grpc
    bind {host}:{grpc_port} proto h2
    default_backend replicas_grpc
backend replicas_http
    balance leastconn
    option httpchk GET /v2/health/ready
    http-reuse always
{http_servers}
backend replicas_grpc
    balance leastconn
    option httpchk GET /v2/health/ready
{grpc_servers}
"""
HTTP_SERVER = "    server r{i} {host}:{http} check inter 1s fall 2 rise 1"
GRPC_SERVER = "    server r{i} {host}:{grpc} proto h2 check port {http} check-proto h1 inter 1s fall 2 rise 1"


class Haproxy(OwnedProcess):
    """HAProxy in front of replicas, for comparison (the `haproxy` of the operating system)."""

    def __init__(self, binary: str, replicas: list[Replica], work: Path, threads: int) -> None:
        self.binary = binary
        self.http_port, self.grpc_port = free_ports(2)
        self.config = work / "haproxy.cfg"
        self.log = work / "haproxy.log"
        host = "127.0.0.1"
        servers = [{"i": i, "host": r.host, "http": r.http_port, "grpc": r.grpc_port} for i, r in enumerate(replicas)]
        self.config.write_text(
            HAPROXY_CFG.format(
                threads=threads,
                host=host,
                http_port=self.http_port,
                grpc_port=self.grpc_port,
                http_servers="\n".join(HTTP_SERVER.format(**s) for s in servers),
                grpc_servers="\n".join(GRPC_SERVER.format(**s) for s in servers),
            )
        )
        self.http_url, self.grpc_url = f"{host}:{self.http_port}", f"{host}:{self.grpc_port}"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def start(self) -> Haproxy:
        subprocess.run([self.binary, "-c", "-f", str(self.config)], check=True, capture_output=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"haproxy did not become ready: {self.log.read_text()[-2000:]}")


class Roles(ProcessCpu):
    """CPU seconds of the server (tritonserver and its stubs) and of each proxy, keyed 'role[pid]'."""

    def __init__(self, server_pid: int, proxies: dict[str, int]) -> None:
        import psutil

        self.server = psutil.Process(server_pid)
        self.proxies = {name: psutil.Process(pid) for name, pid in proxies.items()}

    def per_process(self) -> dict[str, float]:
        import psutil

        found: dict[str, float] = {}
        roots = [("server", self.server), *self.proxies.items()]
        for role, root in roots:
            for proc in [root, *root.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                found[f"{role}[{proc.pid}]"] = times.user + times.system
        return found


def role_cpu_pct(point: dict[str, Any], role: str) -> float:
    shares = point.get("server_cpu_by_process_pct") or {}
    return float(sum(v for k, v in shares.items() if k.split("[", 1)[0] == role))


def measure(url: str, protocol: str, concurrency: int, args: argparse.Namespace, work: Path, cpu: Roles) -> dict:
    job = Job(
        url=f"http://{url}" if protocol == "http" else url,
        stages=[[Call("classify", {"text": "text"}, {n: n for n in OUTPUTS})]],
        datatypes={"text": "BYTES"},
        rows_file=str(work / "rows.npz"),
        concurrency=concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        result=str(work / "result.json"),
        protocol="http-v2" if protocol == "http" else "triton-grpc",
    )
    return run_driver(job, work, cpu, lambda line: None)


def per_request_ms(cpu_pct: float, rps: float) -> float:
    return round(10.0 * cpu_pct / rps, 4) if rps else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "proxy")
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--no-haproxy", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="compound-bench-proxy-"))
    repo = render_repository(plan_spec(ROOT / "examples" / "textdemo" / "pipeline.yaml"), work / "repo")
    texts = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(20_000)]  # distinct: no response-cache shortcut
    np.savez(work / "rows.npz", text=np.array([[t.encode()] for t in texts], dtype=object))
    haproxy_binary = None if args.no_haproxy else shutil.which("haproxy")
    workers = default_workers()
    server = start_server(repo, work)
    envoy: Optional[EnvoyProxy] = None
    haproxy: Optional[Haproxy] = None
    runs: list[dict[str, Any]] = []
    try:
        ep = server.endpoints
        http_port, grpc_port = free_ports(2)
        replicas = [Replica(ep.host, ep.http_port, ep.grpc_port)]
        envoy = EnvoyProxy(
            replicas,
            http_port=http_port,
            grpc_port=grpc_port,
            workdir=work / "envoy",
            deployment="textdemo",
            workers=workers,
        ).start()
        setups = {"direct": (server.http_url, server.grpc_url), "envoy": (envoy.http_url, envoy.grpc_url)}
        pids = {"envoy": envoy.pid}
        if haproxy_binary:
            haproxy = Haproxy(haproxy_binary, replicas, work, workers).start()
            setups["haproxy"] = (haproxy.http_url, haproxy.grpc_url)
            pids["haproxy"] = haproxy.pid
        assert server.pid is not None
        cpu = Roles(server.pid, {k: v for k, v in pids.items() if v is not None})
        names = list(setups)
        for protocol in args.protocols.split(","):
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                for round_ in range(args.rounds):
                    order = names[round_ % len(names) :] + names[: round_ % len(names)]
                    for setup in order:
                        http_url, grpc_url = setups[setup]
                        point = measure(
                            http_url if protocol == "http" else grpc_url, protocol, concurrency, args, work, cpu
                        )
                        point.update(setup=setup, protocol=protocol, round=round_)
                        point["server_only_cpu_pct"] = role_cpu_pct(point, "server")
                        point["proxy_cpu_pct"] = role_cpu_pct(point, setup) if setup != "direct" else 0.0
                        runs.append(point)
                        print(
                            f"{protocol:4} {setup:7} round {round_}: {point_line(point)}"
                            f"  proxy CPU {point['proxy_cpu_pct']:.0f}%",
                            flush=True,
                        )
        alive = {"server": server.alive(), "envoy": envoy.alive(), "haproxy": haproxy.alive() if haproxy else None}
        envoy_counters = envoy.counters()
    finally:
        if haproxy is not None:
            haproxy.stop()
        if envoy is not None:
            envoy.stop()
        server.stop()

    table = []
    for protocol in args.protocols.split(","):
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            mine = [r for r in runs if r["protocol"] == protocol and r["concurrency"] == concurrency]
            for setup in names:
                points = [r for r in mine if r["setup"] == setup]
                ratios, cpu_ratios = [], []
                for round_ in range(args.rounds):
                    direct = next(r for r in mine if r["setup"] == "direct" and r["round"] == round_)
                    this = next(r for r in points if r["round"] == round_)
                    ratios.append(this["throughput_rps"] / direct["throughput_rps"])
                    cost = per_request_ms(this["server_only_cpu_pct"] + this["proxy_cpu_pct"], this["throughput_rps"])
                    cpu_ratios.append(per_request_ms(direct["server_only_cpu_pct"], direct["throughput_rps"]) / cost)
                rps = statistics.mean(r["throughput_rps"] for r in points)
                table.append(
                    {
                        "protocol": protocol,
                        "concurrency": concurrency,
                        "setup": setup,
                        "throughput_rps": round(rps, 1),
                        "ratio_to_direct": round(statistics.median(ratios), 4),
                        "ratios_per_round": [round(x, 4) for x in ratios],
                        "cpu_bound_ratio_to_direct": round(statistics.median(cpu_ratios), 4),
                        "cpu_bound_ratios_per_round": [round(x, 4) for x in cpu_ratios],
                        "p50_ms": round(statistics.mean(r["latency_ms"]["p50"] for r in points), 2),
                        "p99_ms": round(statistics.mean(r["latency_ms"]["p99"] for r in points), 2),
                        "errors": sum(r["errors"] for r in points),
                        "server_cpu_ms_per_request": per_request_ms(
                            statistics.mean(r["server_only_cpu_pct"] for r in points), rps
                        ),
                        "proxy_cpu_ms_per_request": per_request_ms(
                            statistics.mean(r["proxy_cpu_pct"] for r in points), rps
                        ),
                        "client_cpu_ms_per_request": per_request_ms(
                            statistics.mean(r["client_cpu_pct"] for r in points), rps
                        ),
                        "other_cpu_pct": round(statistics.mean(r["other_cpu_pct"] or 0.0 for r in points), 1),
                    }
                )
    report = {
        "example": "examples/textdemo, pipeline classify (ensemble of 4 Python components), closed-loop load",
        "command": "python benchmarks/proxy.py " + " ".join(sys.argv[1:]),
        "machine": "shared machine, 2 cores (other work ran meanwhile: other_cpu_pct); compare within this run",
        "proxy_workers": workers,
        "haproxy": subprocess.run([haproxy_binary, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
        if haproxy_binary
        else None,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "alive_at_end": alive,
        "envoy_counters": {
            p: vars(c) for p, c in envoy_counters.clusters.items()
        },  # retries/overflow should be 0: no replica died
        "summary": table,
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "| protocol | clients | setup | req/s | of direct (measured) | of direct (CPU-bound) | p50 ms | p99 ms"
        " | errors | server CPU ms/req | proxy CPU ms/req | client CPU ms/req | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['protocol']} | {row['concurrency']} | {row['setup']} | {row['throughput_rps']:.0f}"
            f" | {100 * row['ratio_to_direct']:.1f}% | {100 * row['cpu_bound_ratio_to_direct']:.1f}%"
            f" | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']}"
            f" | {row['server_cpu_ms_per_request']:.3f} | {row['proxy_cpu_ms_per_request']:.3f}"
            f" | {row['client_cpu_ms_per_request']:.3f} | {row['other_cpu_pct']:.0f}% |"
        )
    text = "\n".join(lines)
    (args.out / "results.md").write_text(
        f"# The proxy's cost (generated by benchmarks/proxy.py)\n\n`{report['command']}` on the {report['machine']}."
        f"\nOne replica; proxy workers: {workers}; {args.rounds} rounds of {args.duration:g} s per point;"
        " ratios are medians over rounds (CPU-bound: server CPU/request direct over server + proxy CPU/request"
        " proxied); others' CPU: what other work on the machine used meanwhile, of 200%.\n\n" + text + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
