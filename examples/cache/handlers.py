"""Handlers of the cache example: one expensive shared step (`Encoder`) and two cheap heads.

The encoder stands for what agents and retrieval pipelines share: an embedding model. It is a
dense MLP over hashed character trigrams, so its cost per row is real compute that a cache saves.
"""

from __future__ import annotations

import zlib

import numpy as np


class Encoder:
    """Text -> a unit vector: trigram hashing, then `layers` dense tanh layers of width `hidden`."""

    def __init__(self, parameters: dict, device: str) -> None:
        rng = np.random.default_rng(int(parameters.get("seed", 0)))
        self.buckets = int(parameters.get("buckets", 2048))
        hidden, layers, dim = (
            int(parameters.get("hidden", 1024)),
            int(parameters.get("layers", 4)),
            int(parameters["dim"]),
        )
        sizes = [self.buckets] + [hidden] * layers + [dim]
        self.weights = [
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32) for a, b in zip(sizes[:-1], sizes[1:])
        ]

    def features(self, text: np.ndarray) -> np.ndarray:
        counts = np.zeros((text.shape[0], self.buckets), dtype=np.float32)
        for row, raw in enumerate(text[:, 0]):
            word = raw.decode("utf-8", errors="replace").lower()
            for i in range(max(1, len(word) - 2)):
                counts[row, zlib.crc32(word[i : i + 3].encode()) % self.buckets] += 1.0
        return counts

    def __call__(self, text: np.ndarray) -> dict[str, np.ndarray]:
        x = self.features(text)
        for w in self.weights[:-1]:
            x = np.tanh(x @ w)
        x = x @ self.weights[-1]
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
        return {"vector": x.astype(np.float32)}


class Classifier:
    """A linear head: the best of a few labels."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.labels = np.array([label.encode() for label in parameters["labels"]], dtype=object)
        rng = np.random.default_rng(int(parameters.get("seed", 1)))
        self.weights = rng.standard_normal((int(parameters["dim"]), len(self.labels))).astype(np.float32)

    def __call__(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        best = (vector @ self.weights).argmax(axis=1)
        return {"label": self.labels[best].reshape(-1, 1)}


class Search:
    """Nearest documents of a fixed random corpus, by cosine similarity."""

    def __init__(self, parameters: dict, device: str) -> None:
        rng = np.random.default_rng(int(parameters.get("seed", 2)))
        docs = rng.standard_normal((int(parameters.get("documents", 1000)), int(parameters["dim"]))).astype(np.float32)
        self.docs = docs / np.linalg.norm(docs, axis=1, keepdims=True)
        self.k = int(parameters.get("k", 3))

    def __call__(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        scores = vector @ self.docs.T
        top = np.argsort(-scores, axis=1)[:, : self.k]
        return {"documents": top.astype(np.int64), "scores": np.take_along_axis(scores, top, axis=1)}
