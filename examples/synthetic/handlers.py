"""Handlers of the synthetic benchmark pipeline: matmul chains whose cost is set in `parameters`.

Each model sums its inputs, then applies `layers` dense layers of width `dim` (tanh), the whole chain
`repeat` times (cost without the memory of more weights). One row costs about
``repeat * layers * dim**2`` multiply-adds; at batch size 1 a layer is a memory-bound matrix-vector
product, at larger batches a compute-bound matrix-matrix product, which is what dynamic batching
buys on real models too. BLAS threads are the instance's (`instances.threads`, default 1, which
compound's runtime applies before a handler loads), so instance counts and the tuner, not hidden BLAS
pools, decide how the cores are shared; a `threads` parameter pins them in the handler instead.
"""

from __future__ import annotations

import numpy as np


def limit_blas_threads(threads: int) -> None:
    """Cap BLAS threads in this process (one model instance = one core is the planner's model)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without threadpoolctl BLAS keeps its own default
        return
    threadpool_limits(limits=threads, user_api="blas")


SMALL_BATCH = 8


class Chain:
    """sum(inputs) -> `repeat` x `layers` x tanh(x @ W) -> output `output`."""

    def __init__(self, parameters: dict, device: str) -> None:
        self.dim = int(parameters.get("dim", 512))
        self.layers = int(parameters.get("layers", 2))
        self.repeat = int(parameters.get("repeat", 1))
        self.output = str(parameters.get("output", "y"))
        out_dim = int(parameters.get("out_dim", self.dim))
        if "threads" in parameters:
            limit_blas_threads(int(parameters["threads"]))
        rng = np.random.default_rng(int(parameters.get("seed", 0)))
        widths = [self.dim] * self.layers + [out_dim]
        if self.repeat > 1 and out_dim != self.dim:
            raise ValueError("repeat > 1 needs out_dim == dim")
        scale = 1.0 / np.sqrt(self.dim)
        self.weights = [
            (rng.standard_normal((widths[i], widths[i + 1])) * scale).astype(np.float32) for i in range(self.layers)
        ]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        arrays = list(inputs.values())
        x = arrays[0].astype(np.float32, copy=True)
        for other in arrays[1:]:
            x += other
        if x.shape[0] < SMALL_BATCH:
            # OpenBLAS's sgemm is several times slower per row at 2..7 rows than its matrix-vector
            # kernel; row by row keeps the cost curve monotone, as a tuned model runtime would.
            x = np.concatenate([self._chain(row[np.newaxis]) for row in x]) if x.shape[0] else x
        else:
            x = self._chain(x)
        return {self.output: x.astype(np.float32, copy=False)}

    def _chain(self, x: np.ndarray) -> np.ndarray:
        for _ in range(self.repeat):
            for w in self.weights:
                x = np.tanh(x @ w)
        return x
