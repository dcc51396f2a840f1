"""The static baseline of `compound bench` on a streaming pipeline: the same streaming handler served as
a plain (non-decoupled) batched model that answers once, with the whole answer.

This file is copied, as the ``__init__.py`` of a package, into the bench's work folder beside a copy of
the streaming handler's own code (see :mod:`toolkit.bench.streaming`), and named as the static model's
handler. It must import nothing of compound: it runs inside Triton's Python stub.

Why batched: a static deployment of a generator batches whole answers across requests (dynamic
batching), which is its best case for tokens/s; every token then reaches the client at the end.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import numpy as np

INNER = "compound_inner"  # handler parameter: "module:Class" of the streaming handler, beside this file
TOKENS = "compound_tokens"  # the extra output: how many responses (tokens) each row's answer has


class WholeAnswer:
    """Runs the streaming handler to its end for every row of the batch and answers once: each output
    is the row's responses concatenated along the first axis after the batch (padded to the longest)."""

    def __init__(self, parameters: dict, device: str) -> None:
        settings = dict(parameters)
        module_name, _, cls_name = str(settings.pop(INNER)).partition(":")
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        cls = getattr(importlib.import_module(module_name), cls_name)
        self.inner: Any = cls(settings, device)
        self.stepping = callable(getattr(self.inner, "start", None)) and callable(getattr(self.inner, "step", None))

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        rows = int(next(iter(inputs.values())).shape[0])
        singles = [{name: array[i : i + 1] for name, array in inputs.items()} for i in range(rows)]
        answers: list[list[dict[str, np.ndarray]]] = [[] for _ in range(rows)]
        if self.stepping:  # one step for every row still generating, as continuous batching would
            states = [self.inner.start(**single) for single in singles]
            live = list(range(rows))
            while live:
                results = self.inner.step([states[i] for i in live])
                still = []
                for i, result in zip(live, results):
                    if result is not None:
                        answers[i].append(result)
                        still.append(i)
                live = still
        else:
            for i, single in enumerate(singles):
                answers[i] = list(self.inner(**single))
        return _concatenate(answers)


def _concatenate(answers: list[list[dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Row i's responses joined along their first axis, padded (zeros, empty strings) to the longest row."""
    out: dict[str, np.ndarray] = {TOKENS: np.array([[len(a)] for a in answers], dtype=np.int32)}
    first = next((a[0] for a in answers if a), None)
    if first is None:
        return out
    for name, sample in first.items():
        template = np.asarray(sample)[0]  # one response's row: its declared dims
        width = max(sum(np.asarray(r[name])[0].shape[0] for r in a) for a in answers)
        joined = np.zeros((len(answers), width, *template.shape[1:]), dtype=template.dtype)
        if template.dtype == object:
            joined[...] = b""
        for row, answer in enumerate(answers):
            if answer:
                values = np.concatenate([np.asarray(r[name])[0] for r in answer], axis=0)
                joined[row, : values.shape[0]] = values
        out[name] = joined
    return out
