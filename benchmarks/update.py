"""`compound update` under load: steady p99 vs p99 during updates and rollbacks (closed loop,
concurrency 16, gRPC), failed requests, the canary's measured share over 400 requests, and the
router's overhead (p50 of the ensemble through the canary router vs direct). All figures of one run.

Each update and rollback runs in a process of its own, as `compound update` / `compound rollback`
do, so the load generator's threads do not share an interpreter lock with the switch's rendering.
`--cycles N` updates and rolls back N times on one server (each cycle a new version).

    python benchmarks/update.py [--cycles 3] [--out benchmarks/results/update]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Optional

import numpy as np
import tritonclient.grpc as grpcclient

from tests.conftest import start_server
from tests.integration.load import Load
from tests.integration.test_update import PIPELINES, answer, write_spec, x_input
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.update.apply import LiveDeployment, promote, rollback, update

STEADY_S = 6.0
AFTER_S = 1.0  # the old instances finish and stop after the switch returns


def p99(latencies: list[tuple[float, float]], start: float, end: float) -> float:
    window = [s for t, s in latencies if start <= t < end]
    return float(np.percentile(window, 99) * 1000) if window else float("nan")


def _act(live: LiveDeployment, spec: Optional[str], pipe: Connection) -> None:
    """In its own process: plan (as the CLI does before acting), say ready, switch when told."""
    plan = plan_spec(spec) if spec else None
    lines: list[str] = []
    pipe.send("ready")
    pipe.recv()
    if plan is not None:
        update(live, plan, log=lines.append)
    else:
        rollback(live, log=lines.append)
    pipe.send(lines)


def switch_under_load(server, live: LiveDeployment, spec: Optional[Path]) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Update to `spec` (or roll back when None) under the load; the p99 before and during."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_act, args=(live, str(spec) if spec else None, theirs))
    with Load(server.grpc_url, 16, lambda i: (PIPELINES[i % len(PIPELINES)], x_input())) as load:
        process.start()
        assert ours.recv() == "ready"
        time.sleep(STEADY_S)
        began = time.monotonic()
        ours.send("go")
        lines = ours.recv()
        ended = time.monotonic()
        time.sleep(AFTER_S)
    process.join()
    steady = p99(load.latencies, began - STEADY_S + 1.0, began)
    during = p99(load.latencies, began, ended + AFTER_S)
    return {
        "requests": load.done,
        "failed": len(load.errors),
        "switch_s": round(ended - began, 2),
        "steady_p99_ms": round(steady, 2),
        "switch_p99_ms": round(during, 2),
        "ratio": round(during / steady, 2),
        "log": lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "update")
    parser.add_argument("--cycles", type=int, default=3, help="updates and rollbacks under load, in turn")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compound-update-bench-"))
    repo = render_repository(plan_spec(write_spec(work / "v0", 0)), work / "repo")
    server = start_server(repo, work)
    live = LiveDeployment.of(server)
    quiet = lambda line: None  # noqa: E731
    results: dict[str, object] = {"machine": f"{platform.node()} ({os.cpu_count()} cores)", "concurrency": 16}
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        runs: dict[str, list[dict[str, object]]] = {"update": [], "rollback": []}
        for cycle in range(args.cycles):
            runs["update"].append(switch_under_load(server, live, write_spec(work / f"u{cycle}", cycle + 1)))
            runs["rollback"].append(switch_under_load(server, live, None))
        for kind, entries in runs.items():
            ratios = [float(e["ratio"]) for e in entries]  # type: ignore[arg-type]
            results[kind] = {
                "ratios": ratios,
                "median_ratio": round(statistics.median(ratios), 2),
                "failed": sum(int(e["failed"]) for e in entries),  # type: ignore[call-overload]
                "runs": entries,
            }
        lat_direct = []
        for _ in range(400):
            t = time.perf_counter()
            answer(client, "chain")
            lat_direct.append(time.perf_counter() - t)
        update(live, plan_spec(write_spec(work / "canary", 1)), canary=20, log=quiet)
        shares, lat_router = {}, []
        for pipeline in PIPELINES:
            answers = []
            for _ in range(400):
                t = time.perf_counter()
                answers.append(answer(client, pipeline))
                if pipeline == "chain":
                    lat_router.append(time.perf_counter() - t)
            shares[pipeline] = round(100.0 * sum(1 for a in answers if a == 4.0) / 400, 2)
        results["canary_20_share_percent"] = shares
        results["router_overhead"] = {
            "chain_p50_direct_ms": round(float(np.median(lat_direct)) * 1000, 3),
            "chain_p50_through_router_ms": round(float(np.median(lat_router)) * 1000, 3),
        }
        promote(live, log=quiet)
        results["after_promote"] = [answer(client, p) for p in PIPELINES]
        client.close()
    finally:
        server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v if k not in runs else {**v, "runs": "..."} for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
