"""Handlers: `Handler(parameters, device)`, called with whole batches (axis 0) of numpy arrays."""

from __future__ import annotations

import numpy as np


class Clean:
    def __init__(self, parameters: dict, device: str) -> None:
        self.device = device

    def __call__(self, text: np.ndarray) -> dict[str, np.ndarray]:
        cleaned = [" ".join(t.decode("utf-8", "replace").split()).encode() for t in text[:, 0]]
        return {"clean": np.array(cleaned, dtype=object).reshape(-1, 1)}


class Count:
    def __init__(self, parameters: dict, device: str) -> None:
        self.lowercase = bool(parameters.get("lowercase", True))

    def __call__(self, clean: np.ndarray) -> dict[str, np.ndarray]:
        counts = [len(t.split()) for t in clean[:, 0]]
        return {"words": np.array(counts, dtype=np.int64).reshape(-1, 1)}
