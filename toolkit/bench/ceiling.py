"""The physical limit: no server, the same handlers chained in-process at the best batch size,
one worker process per core, all measuring over the same window. Reports requests (rows) per second."""

from __future__ import annotations

import multiprocessing
import queue
import time
from dataclasses import dataclass
from typing import Any

from toolkit.bench.chain import InProcessPipeline
from toolkit.bench.inputs import sample_rows
from toolkit.errors import CompoundError
from toolkit.plan import plan_spec


@dataclass(frozen=True)
class CeilingResult:
    throughput_rps: float
    batch: int
    workers: int
    per_worker_rps: tuple[float, ...]


def _worker(spec_path: str, pipeline: str, batch: int, warmup_s: float, duration_s: float, barrier: Any, results: Any) -> None:
    try:
        plan = plan_spec(spec_path)
        chain = InProcessPipeline(plan, pipeline)
        rows = sample_rows(plan, pipeline, batch, seed=2)
        chain.run(rows)
        barrier.wait()  # every worker loaded: start together
        began = time.perf_counter()
        while time.perf_counter() - began < warmup_s:
            chain.run(rows)
        done = 0
        began = time.perf_counter()
        while time.perf_counter() - began < duration_s:
            chain.run(rows)
            done += batch
        results.put(("ok", done / (time.perf_counter() - began)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def measure_ceiling(spec_path: str, pipeline: str, batch: int, workers: int, duration_s: float, warmup_s: float = 2.0, load_timeout_s: float = 120.0) -> CeilingResult:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    results = context.Queue()
    procs = [
        context.Process(target=_worker, args=(spec_path, pipeline, batch, warmup_s, duration_s, barrier, results), daemon=True)
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    rates: list[float] = []
    try:
        for _ in procs:
            try:
                status, value = results.get(timeout=load_timeout_s + warmup_s + duration_s)
            except queue.Empty:
                raise CompoundError("ceiling workers did not finish in time") from None
            if status != "ok":
                raise CompoundError(f"ceiling worker failed: {value}")
            rates.append(float(value))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return CeilingResult(sum(rates), batch, workers, tuple(rates))
