"""Handlers of the bundled example: small numpy models that compute a whole batch at once.

Each class follows the compound handler contract: ``Handler(parameters, device)`` and
``handler(**inputs) -> {output: array}``, every array batched on axis 0.
"""

from __future__ import annotations

import zlib

import numpy as np


class Tokenizer:
    """Hashes words into a fixed-width id vector (0 pads)."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.width = int(parameters.get("width", 16))
        self.vocab = int(parameters.get("vocab", 4096))

    def __call__(self, text: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.zeros((text.shape[0], self.width), dtype=np.int64)
        for row, raw in enumerate(text[:, 0]):
            words = raw.decode("utf-8", errors="replace").lower().split()[: self.width]
            ids[row, : len(words)] = [1 + zlib.crc32(w.encode()) % (self.vocab - 1) for w in words]
        return {"ids": ids}


class _Embedding:
    def __init__(self, parameters: dict) -> None:
        rng = np.random.default_rng(int(parameters.get("seed", 0)))
        vocab, hidden = int(parameters.get("vocab", 4096)), int(parameters.get("hidden", 256))
        self.table = rng.standard_normal((vocab, hidden)).astype(np.float32)
        self.table[0] = 0.0  # padding

    def pooled(self, ids: np.ndarray) -> np.ndarray:
        counts = np.maximum((ids > 0).sum(axis=1, keepdims=True), 1).astype(np.float32)
        return self.table[ids].sum(axis=1) / counts


class Sentiment(_Embedding):
    """A linear sentiment score in (-1, 1) from mean word embeddings."""

    def __init__(self, parameters: dict, device: str) -> None:
        super().__init__(parameters)
        rng = np.random.default_rng(int(parameters.get("seed", 0)) + 100)
        self.weights = rng.standard_normal((self.table.shape[1], 1)).astype(np.float32) / 8.0

    def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return {"score": np.tanh(self.pooled(ids) @ self.weights)}


class Topic(_Embedding):
    """A softmax over a few topics from mean word embeddings."""

    def __init__(self, parameters: dict, device: str) -> None:
        super().__init__(parameters)
        topics = len(parameters.get("topics", [0, 0, 0, 0]))
        rng = np.random.default_rng(int(parameters.get("seed", 0)) + 200)
        self.weights = rng.standard_normal((self.table.shape[1], topics)).astype(np.float32) / 8.0

    def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        logits = self.pooled(ids) @ self.weights
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return {"topics": (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)}


class Verdict:
    """Joins both branches: '<positive|negative>/<topic>' and a confidence."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.topics = np.array(parameters.get("topics", ["news", "sport", "tech", "arts"]), dtype=object)

    def __call__(self, score: np.ndarray, topics: np.ndarray) -> dict[str, np.ndarray]:
        best = topics.argmax(axis=1)
        mood = np.where(score[:, 0] >= 0, "positive", "negative")
        labels = np.array([f"{m}/{t}".encode() for m, t in zip(mood, self.topics[best])], dtype=object)
        confidence = (np.abs(score[:, 0]) * topics.max(axis=1)).astype(np.float32)
        return {"label": labels.reshape(-1, 1), "confidence": confidence.reshape(-1, 1)}
