"""Tiny numpy handlers for the `agents` example: a router, three answerers, a refiner that loops,
and a scorer mapped over passages. Two test hooks are built in, on purpose:

* any text ``fail`` makes Answer/Score raise (a callee error the orchestrator must name);
* any text ``sleep:<ms>`` makes them sleep that long first (timeouts and saturation).
"""

from __future__ import annotations

import time

import numpy as np


def _text(raw: object) -> str:
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def _hooks(texts: list[str]) -> None:
    """Sleep as long as the longest `sleep:<ms>` asks, and raise on `fail`: test hooks."""
    delays = [int(t.split("sleep:", 1)[1].split()[0]) for t in texts if "sleep:" in t]
    if delays:
        time.sleep(max(delays) / 1000.0)
    if any(t.strip() == "fail" for t in texts):
        raise ValueError("asked to fail ('fail' in the input)")


class Route:
    """Picks a route per query: 'math' (a word of digits), 'code' (a code word), else 'chat'."""

    CODE_WORDS = ("def", "class", "python", "code", "bug")

    def __init__(self, parameters: dict, device: str) -> None:
        self.code_words = tuple(parameters.get("code_words", self.CODE_WORDS))

    def __call__(self, query: np.ndarray) -> dict[str, np.ndarray]:
        routes = []
        for raw in query[:, 0]:
            words = _text(raw).lower().split()
            if any(word.isdigit() for word in words):
                routes.append(b"math")
            elif any(word in self.code_words for word in words):
                routes.append(b"code")
            else:
                routes.append(b"chat")
        return {"route": np.array(routes, dtype=object).reshape(-1, 1)}


class Answer:
    """'<tag>: <query>' - stands in for a specialised model behind one branch."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.tag = str(parameters.get("tag", "answer"))

    def __call__(self, query: np.ndarray) -> dict[str, np.ndarray]:
        texts = [_text(raw) for raw in query[:, 0]]
        _hooks(texts)
        answers = [f"{self.tag}: {t}".encode() for t in texts]
        return {"answer": np.array(answers, dtype=object).reshape(-1, 1)}


class Length:
    """0 for a short text (under `limit` characters), 1 for a long one: an integer route."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.limit = int(parameters.get("limit", 20))

    def __call__(self, query: np.ndarray) -> dict[str, np.ndarray]:
        sizes = [[int(len(_text(raw)) >= self.limit)] for raw in query[:, 0]]
        return {"size": np.array(sizes, dtype=np.int32)}


class Refine:
    """One improvement round: draft + 1; done once the draft reaches the target."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.step = int(parameters.get("step", 1))

    def __call__(self, draft: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        improved = (draft + self.step).astype(np.int32)
        return {"improved": improved, "done": improved >= target}


class Score:
    """A passage's score: its length in characters (stands in for a cross-encoder)."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.scale = float(parameters.get("scale", 1.0))

    def __call__(self, passage: np.ndarray) -> dict[str, np.ndarray]:
        texts = [_text(raw) for raw in passage[:, 0]]
        _hooks(texts)
        scores = np.array([[len(t) * self.scale] for t in texts], dtype=np.float32)
        return {"score": scores}
