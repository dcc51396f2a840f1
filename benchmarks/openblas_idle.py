"""What OpenBLAS's idle workers cost between calls: CPU and wall time per call of a 2-thread workload
with a pause after each call (a served instance's wait for its next batch), under OpenBLAS's default
idle timeout (its workers spin 2**28 cycles, about 0.1 s, before they sleep) and under shorter ones
(OPENBLAS_THREAD_TIMEOUT=N: 2**N cycles; 4, the least, sleeps at once), and `park`: the default,
with the pool stopped after each call as the generated runtime does (templates/model.py,
`BlasPark`). OpenBLAS reads the variable when it loads, so each setting runs in a process of its
own. Workloads: `matmul`, one 64 x 1024 x 1024 matmul (the synthetic heavy step's shape); `chain`,
the synthetic `fanout_heavy` pipeline's handlers at batch 64, whose numpy work between matmuls
(tanh, sums) runs on one thread. Run:

    .venv/bin/python benchmarks/openblas_idle.py --gaps-ms 5,20
    .venv/bin/python benchmarks/openblas_idle.py --workload chain --gaps-ms 60 --timeouts default,park --rounds 3

Measured, and what serving made of it: docs/benchmarks.md ("OpenBLAS's idle workers").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

CHECKOUT = Path(__file__).resolve().parents[1]
HEAVY = ["heavy_encode", "heavy_branch_a", "heavy_branch_b", "heavy_branch_c", "heavy_join"]


def workload(name: str) -> tuple[Callable[[], object], int]:
    """The call to time and how many times to call it."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((64, 1024)).astype(np.float32)
    if name == "matmul":
        weights = rng.standard_normal((1024, 1024)).astype(np.float32)
        return (lambda: rows @ weights), 100
    import yaml

    sys.path.insert(0, str(CHECKOUT / "examples" / "synthetic"))
    from handlers import Chain

    models = yaml.safe_load((CHECKOUT / "examples" / "synthetic" / "pipeline.yaml").read_text())["models"]
    encode, branch_a, branch_b, branch_c, join = (Chain(models[m]["parameters"], "cpu") for m in HEAVY)

    def chain() -> object:
        h = encode(x=rows)["h"]
        return join(a=branch_a(h=h)["a"], b=branch_b(h=h)["b"], c=branch_c(h=h)["c"])

    return chain, 8


def pool_stopper() -> Callable[[], object]:
    """What BlasPark calls after a long execute(): numpy's OpenBLAS `blas_thread_shutdown_`."""
    import ctypes

    from threadpoolctl import threadpool_info

    [pool] = [p for p in threadpool_info() if p.get("internal_api") == "openblas"]
    return ctypes.CDLL(pool["filepath"]).blas_thread_shutdown_  # type: ignore[no-any-return]


def one_setting(name: str, gap_s: float, park: bool) -> None:
    """In the child: CPU and wall time per call, printed as one line."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=2)
    call, calls = workload(name)
    stop = pool_stopper() if park else None
    for _ in range(2):
        call()
    cpu_start, busy = time.process_time(), 0.0
    for _ in range(calls):
        began = time.perf_counter()
        call()
        busy += time.perf_counter() - began
        if stop is not None:
            stop()
        time.sleep(gap_s)
    cpu = time.process_time() - cpu_start
    timeout = "park" if park else os.environ.get("OPENBLAS_THREAD_TIMEOUT", "default")
    print(
        f"{name}  timeout {timeout:>7}  pause {1e3 * gap_s:4.0f} ms  CPU per call {1e3 * cpu / calls:7.2f} ms"
        f"  wall per call {1e3 * busy / calls:7.2f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gaps-ms", default="5,20", help="pauses after each call, comma-separated")
    parser.add_argument(
        "--timeouts", default="default,4", help="OPENBLAS_THREAD_TIMEOUT values ('default': unset; 'park': parked)"
    )
    parser.add_argument("--workload", choices=("matmul", "chain"), default="matmul")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every setting, alternating")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--park", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        one_setting(args.workload, args.child, args.park)
        return
    for _ in range(args.rounds):
        for gap_ms in (float(g) for g in args.gaps_ms.split(",")):
            for timeout in args.timeouts.split(","):
                env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
                if timeout not in ("default", "park"):
                    env["OPENBLAS_THREAD_TIMEOUT"] = timeout
                command = [sys.executable, __file__, "--workload", args.workload, "--child", str(gap_ms / 1e3)]
                command += ["--park"] if timeout == "park" else []
                subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()
