"""Per-component cost curves, measured in-process: seconds per handler call at batch sizes
1..max_batch_size. The planner (allocate.py) turns them into instance counts; the plots show them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from toolkit.bench.chain import InProcessPipeline
from toolkit.bench.inputs import sample_rows
from toolkit.plan import DeploymentPlan


@dataclass(frozen=True)
class CostCurve:
    """One model's measured cost: seconds per handler call at each batch size (fastest call)."""

    model: str
    batch_sizes: tuple[int, ...]
    seconds: tuple[float, ...]

    def per_row(self) -> dict[int, float]:
        return {b: s / b for b, s in zip(self.batch_sizes, self.seconds)}

    def at(self, batch: int) -> float:
        """Seconds per call at `batch`, interpolated linearly between measured sizes."""
        sizes, secs = self.batch_sizes, self.seconds
        if batch <= sizes[0]:
            return secs[0] * batch / sizes[0]
        for (b0, s0), (b1, s1) in zip(zip(sizes, secs), zip(sizes[1:], secs[1:])):
            if b0 <= batch <= b1:
                return s0 + (s1 - s0) * (batch - b0) / (b1 - b0)
        return secs[-1] * batch / sizes[-1]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def batch_sizes_up_to(max_batch: int) -> list[int]:
    """1, 2, 4, ... and max_batch itself."""
    sizes = []
    b = 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max(1, max_batch))
    return sizes


def profile_pipeline(
    plan: DeploymentPlan,
    pipeline: str,
    min_seconds: float = 0.3,
    min_calls: int = 3,
    max_calls: int = 200,
    chain: InProcessPipeline | None = None,
) -> dict[str, CostCurve]:
    """Time each model's handler on its real inputs (produced by the steps before it)."""
    chain = chain or InProcessPipeline(plan, pipeline)
    max_batch = max(1, plan.pipelines[pipeline].max_batch_size)
    sizes = batch_sizes_up_to(max_batch)
    rows = sample_rows(plan, pipeline, max_batch, seed=1)
    per_model_inputs = chain.model_inputs(rows)  # also warms every handler up once
    curves: dict[str, list[float]] = {m: [] for m in chain.models}
    for model in chain.models:
        handler = chain.handlers[model]
        for b in sizes:
            args = {k: np.ascontiguousarray(v[:b]) for k, v in per_model_inputs[model].items()}
            handler(**args)  # warm this batch shape
            samples: list[float] = []
            began = time.perf_counter()
            while len(samples) < max_calls and (len(samples) < min_calls or time.perf_counter() - began < min_seconds):
                start = time.perf_counter()
                handler(**args)
                samples.append(time.perf_counter() - start)
            # the fastest of several calls: another process taking the core only ever adds time
            curves[model].append(min(samples))
    return {m: CostCurve(m, tuple(sizes), tuple(s)) for m, s in curves.items()}


def chain_cpu_per_request(chain: InProcessPipeline, batch: int, min_seconds: float = 1.0, min_calls: int = 3) -> float:
    """CPU seconds per row of the whole chain at `batch`, in this process at its pools' current cap:
    what the handlers cost as ONE instance runs them, one after another at its threads, their weights
    sharing the caches, a pool's workers (and their spin) included. Unlike the cost curves (each
    handler alone, its fastest call, on one thread) it is what a served instance can at best spend.
    The median call's CPU time: another process adds little to it, and the fastest call would pick
    one the pool's spin happened to spare."""
    rows = sample_rows(chain.plan, chain.pipeline, batch, seed=2)
    chain.run(rows)  # warm this batch shape
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < min_calls or time.perf_counter() - began < min_seconds:
        start = time.process_time()
        chain.run(rows)
        samples.append(time.process_time() - start)
    return statistics.median(samples) / batch


def thread_scaling(
    plan: DeploymentPlan,
    pipeline: str,
    batch: int,
    threads: tuple[int, ...] = (2,),
    min_seconds: float = 0.2,
    chain: InProcessPipeline | None = None,
) -> dict[str, dict[int, float]]:
    """How much faster each handler's call at `batch` is with t native threads than with one: model
    -> {t: speedup}. Each setting loads a fresh handler under the cap, as a generated model does
    (`instances.threads`), so a handler that pins its own threads in __init__ shows no speedup."""
    from threadpoolctl import threadpool_limits

    from toolkit.bench.chain import load_handler

    chain = chain or InProcessPipeline(plan, pipeline)
    rows = sample_rows(plan, pipeline, batch, seed=1)
    per_model_inputs = chain.model_inputs(rows)
    found: dict[str, dict[int, float]] = {}
    for model in chain.models:
        args = {k: np.ascontiguousarray(v) for k, v in per_model_inputs[model].items()}
        seconds: dict[int, float] = {}
        for t in (1, *threads):
            with threadpool_limits(limits=t), _torch_threads(t):
                handler = load_handler(plan, model)
                handler(**args)
                samples: list[float] = []
                began = time.perf_counter()
                while len(samples) < 3 or (time.perf_counter() - began < min_seconds and len(samples) < 50):
                    start = time.perf_counter()
                    handler(**args)
                    samples.append(time.perf_counter() - start)
                seconds[t] = min(samples)
                close = getattr(handler, "close", None)
                if callable(close):
                    close()
        found[model] = {t: seconds[1] / seconds[t] for t in threads if seconds[t] > 0}
    return found


class _torch_threads:  # noqa: N801 - used as a context manager, like threadpool_limits
    """torch's own pool (not BLAS, so threadpoolctl misses it), when torch is already loaded."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.before: int | None = None

    def __enter__(self) -> None:
        import sys

        torch = sys.modules.get("torch")
        if torch is not None:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and self.before is not None:
            torch.set_num_threads(self.before)
