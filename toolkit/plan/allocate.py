"""Instance planning from measured cost curves: give the slower components more instances so each
can use its share of the cores, within a core budget. Pure functions, unit-tested.

Model: one instance runs one handler call at a time on one core (handlers cap their own threads).
At the operating batch size b (the cheapest per row, up to max_batch_size) model m costs c_m
core-seconds per request. With all `cores` busy the pipeline serves X = cores / sum(c) requests/s,
and model m then keeps X * c_m = cores * c_m / sum(c) instances busy: it needs that many, rounded
up, or it becomes the bottleneck while cores sit idle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

EPSILON = 1e-9


@dataclass(frozen=True)
class Allocation:
    counts: dict[str, int]
    batch: int  # the operating batch size the costs were taken at
    per_request_s: dict[str, float]  # core-seconds per request of each model at `batch`
    share: dict[str, float]  # each model's share of the pipeline's compute
    predicted_rps: float  # cores / sum of per-request costs: the compute-bound limit

    def explain(self) -> list[str]:
        return [
            f"{m}: {self.per_request_s[m] * 1e3:.3f} ms/request at batch {self.batch} "
            f"({self.share[m]:.0%} of compute) -> {self.counts[m]} instance(s)"
            for m in self.counts
        ]


def operating_batch(curves: Mapping[str, Mapping[int, float]], max_batch: int) -> int:
    """The batch size (<= max_batch) with the lowest total per-request cost over all models.

    `curves` maps model -> {batch size: seconds per call}; every model must be measured at the
    same batch sizes. Ties go to the smaller batch (less queueing for the same cost).
    """
    sizes = sorted(set.intersection(*(set(c) for c in curves.values())) if curves else set())
    sizes = [b for b in sizes if b <= max(1, max_batch)]
    if not sizes:
        raise ValueError("cost curves share no batch size within max_batch")
    best, best_cost = sizes[0], math.inf
    for b in sizes:
        cost = sum(c[b] / b for c in curves.values())
        if cost < best_cost * (1 - 0.02):  # a smaller batch within 2% wins
            best, best_cost = b, cost
    return best


def allocate(
    curves: Mapping[str, Mapping[int, float]],
    cores: int,
    max_batch: int,
    max_per_model: int | None = None,
) -> Allocation:
    """Instance counts per model: ceil(cores * share), at least 1, at most `max_per_model`
    (default: `cores`, since more single-threaded instances than cores cannot run at once)."""
    if cores < 1:
        raise ValueError("cores must be >= 1")
    if not curves:
        raise ValueError("no cost curves")
    cap = max_per_model if max_per_model is not None else cores
    batch = operating_batch(curves, max_batch)
    per_request = {m: c[batch] / batch for m, c in curves.items()}
    total = sum(per_request.values())
    share = {m: (v / total if total > 0 else 1 / len(per_request)) for m, v in per_request.items()}
    counts = {m: max(1, min(cap, math.ceil(cores * s - EPSILON))) for m, s in share.items()}
    predicted = cores / total if total > 0 else math.inf
    return Allocation(counts, batch, per_request, share, predicted)


def bottleneck(counts: Mapping[str, int], per_request_s: Mapping[str, float]) -> str:
    """The model with the most work per instance: the one that saturates first."""
    return max(counts, key=lambda m: per_request_s[m] / counts[m])


def curves_from_samples(
    batch_sizes: Sequence[int], seconds: Mapping[str, Sequence[float]]
) -> dict[str, dict[int, float]]:
    """Pair each model's measured seconds with the batch sizes they were measured at."""
    return {m: dict(zip(batch_sizes, s)) for m, s in seconds.items()}
