"""`compound update` under load: steady p99 vs p99 during an update and a rollback (closed loop,
concurrency 16, gRPC), failed requests, the canary's measured share over 400 requests, and the
router's overhead (p50 of the ensemble through the canary router vs direct). All figures of one run.

    python benchmarks/update.py [--out benchmarks/results/update]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tests.conftest import start_server
from tests.integration.load import Load
from tests.integration.test_update import PIPELINES, answer, write_spec, x_input
from toolkit.deploy.update import Live, promote, rollback, update
from toolkit.plan import plan_spec
from toolkit.render import render_repository

STEADY_S = 6.0


def p99(latencies: list[tuple[float, float]], start: float, end: float) -> float:
    window = [s for t, s in latencies if start <= t < end]
    return float(np.percentile(window, 99) * 1000) if window else float("nan")


def switch_under_load(server, action) -> dict[str, float]:  # type: ignore[no-untyped-def]
    with Load(server.grpc_url, 16, lambda i: (PIPELINES[i % 3], x_input())) as load:
        time.sleep(STEADY_S)
        began = time.monotonic()
        action()
        ended = time.monotonic()
        time.sleep(1.0)
    steady = p99(load.latencies, began - STEADY_S + 1.0, began)
    during = p99(load.latencies, began, ended + 1.0)
    return {
        "requests": load.done,
        "failed": len(load.errors),
        "switch_s": round(ended - began, 2),
        "steady_p99_ms": round(steady, 2),
        "switch_p99_ms": round(during, 2),
        "ratio": round(during / steady, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "update")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compound-update-bench-"))
    repo = render_repository(plan_spec(write_spec(work / "v0", 0)), work / "repo")
    server = start_server(repo, work)
    live = Live.of(server)
    quiet = lambda line: None  # noqa: E731
    results: dict[str, object] = {"machine": f"{platform.node()} (shared by other jobs)", "concurrency": 16}
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        results["update"] = switch_under_load(
            server, lambda: update(live, plan_spec(write_spec(work / "v1", 1)), log=quiet)
        )
        results["rollback"] = switch_under_load(server, lambda: rollback(live, log=quiet))
        lat_direct = []
        for _ in range(400):
            t = time.perf_counter()
            answer(client, "chain")
            lat_direct.append(time.perf_counter() - t)
        update(live, plan_spec(write_spec(work / "v2", 1)), canary=20, log=quiet)
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
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
