"""Request inputs for benchmarks: sample rows from the spec folder when it ships them, else random.

A spec folder may hold `bench_inputs.json` ({pipeline: {tensor: [row, ...]}}) so a benchmark sends
realistic requests (the rag example ships real questions); otherwise rows are random values of the
declared dtype and dims (variable dims become 8), which is what a matmul pipeline needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.errors import CompoundError
from toolkit.plan import DeploymentPlan
from toolkit.spec.schema import TensorSpec

SAMPLES_FILE = "bench_inputs.json"
_WORDS = "alpha beta gamma delta model server batch tensor latency queue cache graph".split()


def sample_rows(plan: DeploymentPlan, pipeline: str, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` request rows per pipeline input, batched on axis 0 (row i is request i)."""
    tensors = plan.spec.pipelines[pipeline].inputs
    shipped = _shipped_rows(plan.loaded.folder / SAMPLES_FILE, pipeline)
    rng = np.random.default_rng(seed)
    rows: dict[str, np.ndarray] = {}
    for name, spec in tensors.items():
        if shipped is not None and name in shipped:
            rows[name] = _from_samples(shipped[name], spec, count, name)
        else:
            rows[name] = _random(spec, count, rng)
    return rows


def _shipped_rows(path: Path, pipeline: str) -> dict[str, list[Any]] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompoundError(f"{path}: cannot read benchmark inputs: {exc}") from None
    found = data.get(pipeline) if isinstance(data, dict) else None
    return found if isinstance(found, dict) else None


def _from_samples(values: list[Any], spec: TensorSpec, count: int, name: str) -> np.ndarray:
    if not values:
        raise CompoundError(f"{SAMPLES_FILE}: tensor '{name}' has no sample rows")
    picked = [values[i % len(values)] for i in range(count)]
    if spec.dtype == "string":
        flat = [str(v).encode("utf-8") for v in picked]
        return np.array(flat, dtype=object).reshape(count, *[1 if d == -1 else d for d in spec.dims])
    return np.asarray(picked, dtype=spec.numpy_dtype).reshape(count, *[8 if d == -1 else d for d in spec.dims])


def _random(spec: TensorSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    shape = (count, *[8 if d == -1 else d for d in spec.dims])
    if spec.dtype == "string":
        words = rng.choice(_WORDS, size=shape)
        return np.vectorize(lambda w: f"{w} {rng.integers(1000)}".encode())(words).astype(object)
    if spec.dtype == "bool":
        return rng.random(shape) < 0.5
    if spec.dtype.startswith(("int", "uint")):
        return rng.integers(0, 100, size=shape).astype(spec.numpy_dtype)
    return rng.standard_normal(shape).astype(spec.numpy_dtype)
