"""`--driver locust`: the project's own locustfile (loadtest/locustfile.py) as the load generator,
for users who want locust's reports. Locust spends more client CPU per request than the lean
async driver and counts its ramp-up, so the default driver is the one to quote numbers from.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from toolkit.bench.driver import Job
from toolkit.bench.machine import child_env, machine_busy_s
from toolkit.core.errors import CompoundError


def run_locust(job: Job, work: Path, server_cpu: Optional[Any]) -> dict[str, Any]:
    import psutil

    from toolkit.loadtest.runner import locust_command, read_locust_csv, run_flags

    if len(job.stages) != 1 or len(job.stages[0]) != 1:
        raise CompoundError(
            "--driver locust sends one pipeline request at a time; the static profile chains models from the client",
            hint="use --driver grpc for the static profile",
        )
    pipeline = job.stages[0][0].model
    prefix = work / f"locust-{pipeline}-{job.concurrency}"
    run_s = job.warmup_s + job.duration_s
    argv = locust_command(
        f"grpc://{job.url}",
        "--pipeline",
        pipeline,
        *run_flags(job.concurrency, job.concurrency, prefix, run_s),
        "--headless",
        "--only-summary",
    )
    with open(work / "locust.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        me = psutil.Process(proc.pid)
        began = time.perf_counter()
        server0 = server_cpu.seconds() if server_cpu else 0.0
        busy0 = machine_busy_s()
        client_s = 0.0
        while proc.poll() is None:
            try:
                t = me.cpu_times()
                client_s = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
            time.sleep(0.2)
        span = time.perf_counter() - began
        server_s = (server_cpu.seconds() - server0) if server_cpu else 0.0
        busy = machine_busy_s() - busy0
    if proc.returncode != 0:
        raise CompoundError(f"locust failed (exit {proc.returncode})", hint=f"log: {work / 'locust.log'}")
    stats = read_locust_csv(prefix)
    client_pct = 100.0 * client_s / span
    server_pct = 100.0 * server_s / span if server_cpu else None
    return {
        "concurrency": job.concurrency,
        "duration_s": run_s,
        "completed": stats.requests - stats.failures,
        "errors": stats.failures,
        "throughput_rps": stats.rps,
        "latency_ms": {
            "p50": stats.p50_ms,
            "p90": float("nan"),
            "p95": stats.p95_ms,
            "p99": stats.p99_ms,
            "mean": stats.avg_ms,
            "max": stats.max_ms,
        },
        "client_cpu_s": client_s,
        "client_cpu_pct": client_pct,
        "server_cpu_pct": server_pct,
        "other_cpu_pct": None if server_pct is None else max(0.0, 100.0 * busy / span - server_pct - client_pct),
        "error_samples": [r["error"] for r in stats.failure_reasons[:5]],
        "driver": "locust (includes ramp-up and warmup in its statistics)",
    }
