"""Handlers of the adaptive-runtime fixture: one light, one that burns CPU per row."""

from __future__ import annotations

import time

import numpy as np


class Front:
    def __init__(self, parameters: dict, device: str) -> None:
        pass

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": x + 1}


class Spin:
    """CPU-bound and linear in rows: batching buys nothing, instances (on free cores) do."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.seconds_per_row = float(parameters.get("ms_per_row", 8)) / 1000.0

    def __call__(self, y: np.ndarray) -> dict[str, np.ndarray]:
        deadline = time.perf_counter() + self.seconds_per_row * len(y)
        total = 0.0
        while time.perf_counter() < deadline:
            total += 1.0
        return {"z": y * 2}
