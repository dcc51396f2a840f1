"""What OpenBLAS's idle workers cost between calls: CPU per call of a 2-thread matmul (batch 64 x 1024
x 1024, the synthetic heavy step's shape) with a pause after each call, under OpenBLAS's default
idle timeout (its workers spin 2**28 cycles, about 0.1 s, before they sleep) and with
OPENBLAS_THREAD_TIMEOUT=4 (they sleep at once). OpenBLAS reads the variable when it loads, so each
setting runs in a process of its own. Run:

    .venv/bin/python benchmarks/openblas_idle.py --gaps-ms 5,20

Measured, and what serving made of it: docs/benchmarks.md ("OpenBLAS's idle workers").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CALLS = 100


def one_setting(gap_s: float) -> None:
    """In the child: CPU and wall time per call, printed as one line."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=2)
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((1024, 1024)).astype(np.float32)
    rows = rng.standard_normal((64, 1024)).astype(np.float32)
    for _ in range(5):
        rows @ weights
    cpu_start, busy = time.process_time(), 0.0
    for _ in range(CALLS):
        began = time.perf_counter()
        rows @ weights
        busy += time.perf_counter() - began
        time.sleep(gap_s)
    cpu = time.process_time() - cpu_start
    timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "default")
    print(
        f"timeout {timeout:>7}  pause {1e3 * gap_s:4.0f} ms  CPU per call {1e3 * cpu / CALLS:6.2f} ms"
        f"  wall per call {1e3 * busy / CALLS:5.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gaps-ms", default="5,20", help="pauses after each call, comma-separated")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        one_setting(args.child)
        return
    for gap_ms in (float(g) for g in args.gaps_ms.split(",")):
        for timeout in (None, "4"):
            env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
            if timeout is not None:
                env["OPENBLAS_THREAD_TIMEOUT"] = timeout
            subprocess.run([sys.executable, __file__, "--child", str(gap_ms / 1e3)], env=env, check=True)


if __name__ == "__main__":
    main()
