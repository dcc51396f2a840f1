"""The machine a benchmark runs on: what it is, how busy it was, and the environment its child
processes (load generators, peers) get. Shared by every measuring module of bench and tune."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

REQUEST_POOL = 512  # distinct request rows a benchmark's client cycles through
# The native pools a generated Triton model caps per instance (templates/model.py, limit_native_threads).
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS")


def cap_native_threads(threads: int, environment: bool = True) -> None:
    """Cap this process's native pools as a generated Triton model caps its instance's
    (`instances.threads`): threadpoolctl for the pools already loaded and, with `environment`, the
    environment for pools loaded later (torch, tokenizers), which child processes inherit too."""
    if environment:
        for name in THREAD_ENV:
            os.environ[name] = str(threads)
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(), "platform": platform.platform()}


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (not idle, not waiting for I/O)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
