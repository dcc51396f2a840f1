"""Handlers of the bursty example: a light step both pipelines share, and a CPU-bound step per pipeline."""

from __future__ import annotations

import time

import numpy as np


class Parse:
    """Light: a few vector operations per batch, well under a millisecond."""

    def __init__(self, parameters: dict, device: str) -> None:
        pass

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": (x - x.mean(axis=1, keepdims=True)).astype(np.float32)}


class Spin:
    """CPU-bound and linear in rows, like a model that runs one row at a time: batching buys nothing,
    another instance (on a free core) does."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.seconds_per_row = float(parameters.get("ms_per_row", 7)) / 1000.0

    def __call__(self, y: np.ndarray) -> dict[str, np.ndarray]:
        deadline = time.perf_counter() + self.seconds_per_row * len(y)
        total = 0.0
        while time.perf_counter() < deadline:
            total += 1.0
        return {"z": y * 2}
