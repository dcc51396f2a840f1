"""What a scale-up costs today: the time of a load with a changed instance count, and what Triton
creates and destroys for it.

On the bursty example's CPU-bound `classifier` (7 ms of one core per row, a warmup of batch 1 and
16 declared): each transition (1->2, 2->3, 3->2, 2->1, 1->3) is one `load` with a config override,
as the runtime issues it, timed from the request to its answer (Triton answers once the new
instances are initialised, warmed up and serving). It counts the instances Triton initialised and
finalised for it in the server's log, and times the same transitions without the warmup. Run:

    .venv/bin/python benchmarks/scale_up_cost.py --rounds 3

`--under-load C` times 1->2 while C closed-loop gRPC clients drive the `classify` pipeline (a burst):
with the spec's warmup in the config, and as the runtime rescales (`rescaled`: no `model_warmup`),
each beside when the new instance served (the first 250 ms in which the pipeline's completions
reached 1.5x their rate before the load):

    .venv/bin/python benchmarks/scale_up_cost.py --under-load 32 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import copy
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.client import load_models, model_config  # noqa: E402
from toolkit.core.system import free_port  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.runtime.supervisor import rescaled  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402

SPEC = ROOT / "examples" / "bursty" / "pipeline.yaml"
MODEL = "classifier"
TRANSITIONS = [(1, 2), (2, 3), (3, 2), (2, 1), (1, 3), (3, 1)]


def rescale(server: LocalServer, config: dict[str, Any], count: int, log: Path) -> tuple[float, int, int]:
    """One load with `count` instances: seconds, instances initialised, instances finalised."""
    config = copy.deepcopy(config)
    for group in config.get("instance_group") or []:
        group["count"] = count
    before = log.read_text(errors="replace")
    began = time.monotonic()
    error = load_models(server.grpc_url, {MODEL: config}, server.api_key)[MODEL]
    took = time.monotonic() - began
    if error is not None:
        raise SystemExit(f"load of {MODEL} with {count} instance(s) failed: {error}")
    time.sleep(0.5)  # the log's lines of this load
    added = log.read_text(errors="replace")[len(before) :]
    initialised = added.count(f"TRITONBACKEND_ModelInstanceInitialize: {MODEL}_")
    finalised = added.count("TRITONBACKEND_ModelInstanceFinalize")  # logged at verbose levels only
    return took, initialised, finalised


def drive(url: str, clients: int, stop: threading.Event, done: list[float]) -> None:
    """Closed-loop clients on the `classify` pipeline until `stop`; each answer's time into `done`."""

    async def go() -> None:
        import tritonclient.grpc.aio as grpcclient

        client = grpcclient.InferenceServerClient(url)
        x = grpcclient.InferInput("x", [1, 8], "FP32")
        x.set_data_from_numpy(np.ones((1, 8), np.float32))

        async def loop() -> None:
            while not stop.is_set():
                await client.infer("classify", [x])
                done.append(time.monotonic())

        await asyncio.gather(*[loop() for _ in range(clients)])
        await client.close()

    asyncio.run(go())


def under_load(server: LocalServer, warm: dict[str, Any], clients: int, rounds: int, log: Path) -> None:
    """1->2 under a burst: the load's time and when the new instance served, with and without warmup."""
    stop, done = threading.Event(), []  # type: ignore[var-annotated]
    worker = threading.Thread(target=drive, args=(server.grpc_url, clients, stop, done), daemon=True)
    worker.start()
    time.sleep(3.0)
    results: dict[str, list[tuple[float, float, int]]] = {}
    try:
        for label, config in (("spec's warmup", warm), ("rescaled()", rescaled(copy.deepcopy(warm), 1))):
            rescale(server, config, 1, log)  # without warmup: reloads the model whole, once
            for _ in range(rounds):
                time.sleep(2.0)
                began = time.monotonic()
                before = (bisect.bisect(done, began) - bisect.bisect(done, began - 1.0)) / 1.0
                took, initialised, _ = rescale(server, config, 2, log)
                serving = took
                for k in range(int(took / 0.25) + 8):
                    lo, hi = began + 0.25 * k, began + 0.25 * (k + 1)
                    if (bisect.bisect(done, hi) - bisect.bisect(done, lo)) * 4 >= 1.5 * before:
                        serving = 0.25 * (k + 1)
                        break
                results.setdefault(label, []).append((took, serving, initialised))
                time.sleep(2.0)
                rescale(server, config, 1, log)
    finally:
        stop.set()
        worker.join(timeout=10)
    for label, rows in results.items():
        print(
            f"under {clients} clients, {label:<14} 1->2: load returned median "
            f"{statistics.median(r[0] for r in rows):.2f} s ({', '.join(f'{r[0]:.2f}' for r in rows)}), "
            f"new instance serving median {statistics.median(r[1] for r in rows):.2f} s "
            f"({', '.join(f'{r[1]:.2f}' for r in rows)}); instances initialised {', '.join(str(r[2]) for r in rows)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--under-load", type=int, default=0, metavar="C", help="time 1->2 under C clients")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compound-scale-"))
    repo = render_repository(plan_spec(SPEC), work / "repo")
    log = work / "tritonserver.log"
    server = LocalServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), workdir=work, log_path=log
    )
    with server:
        warm = model_config(server.http_url, MODEL)
        if args.under_load:
            under_load(server, warm, args.under_load, args.rounds, log)
            return
        cold = {**copy.deepcopy(warm), "model_warmup": []}
        for label, config in (("with warmup", warm), ("without warmup", cold)):
            times: dict[tuple[int, int], list[float]] = {t: [] for t in TRANSITIONS}
            counts: dict[tuple[int, int], tuple[int, int]] = {}
            rescale(server, config, 1, log)
            for _ in range(args.rounds):
                for before, after in TRANSITIONS:
                    took, initialised, finalised = rescale(server, config, after, log)
                    times[(before, after)].append(took)
                    counts[(before, after)] = (initialised, finalised)
            for (before, after), seconds in times.items():
                initialised, finalised = counts[(before, after)]
                print(
                    f"{label:<15} {before}->{after}: median {statistics.median(seconds):.2f} s "
                    f"(min {min(seconds):.2f}, max {max(seconds):.2f}); instances initialised {initialised}, "
                    f"finalised {finalised}"
                )


if __name__ == "__main__":
    main()
