"""The physical limit: no server, the same handlers chained in-process at the best batch size,
one worker process per core, all measuring over the same window. Reports requests (rows) per second,
and the CPU time the workers spent per request: what the handlers cost computing the same batches
side by side on the same cores (their weights sharing the caches), the bound a server's CPU per
request is judged against beside the handlers' compute timed alone.

Workers are plain subprocesses (``python -m toolkit.bench.ceiling``) rather than multiprocessing
children, so they never re-run the caller's main module: each loads the handlers, says LOADED,
waits for GO on stdin (all start together), and prints its rate as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

from toolkit.bench.machine import child_env
from toolkit.core.errors import CompoundError


@dataclass(frozen=True)
class CeilingResult:
    throughput_rps: float
    batch: int
    workers: int
    per_worker_rps: tuple[float, ...]
    cpu_ms_per_request: float  # every worker's CPU time (all its threads) over the requests they answered


def measure_ceiling(
    spec_path: str,
    pipeline: str,
    batch: int,
    workers: int,
    duration_s: float,
    warmup_s: float = 2.0,
    load_timeout_s: float = 120.0,
) -> CeilingResult:
    argv = [
        sys.executable,
        "-m",
        "toolkit.bench.ceiling",
        spec_path,
        pipeline,
        str(batch),
        str(warmup_s),
        str(duration_s),
    ]
    procs = [
        subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
        )
        for _ in range(workers)
    ]
    try:
        for p in procs:
            line = p.stdout.readline().strip() if p.stdout else ""
            if line != "LOADED":
                err = p.stderr.read() if p.stderr else ""
                raise CompoundError(f"ceiling worker failed to load the handlers: {line or err.strip()[-1000:]}")
        for p in procs:
            if p.stdin:
                p.stdin.write("GO\n")
                p.stdin.flush()
        rates, cpu_s, done = [], 0.0, 0
        for p in procs:
            out, err = p.communicate(timeout=warmup_s + duration_s + load_timeout_s)
            if p.returncode != 0:
                raise CompoundError(f"ceiling worker failed (exit {p.returncode})", hint=err.strip()[-1000:])
            measured = json.loads(out.strip().splitlines()[-1])
            rates.append(float(measured["rps"]))
            cpu_s += float(measured["cpu_s"])
            done += int(measured["done"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return CeilingResult(sum(rates), batch, workers, tuple(rates), 1e3 * cpu_s / max(done, 1))


def _worker(spec_path: str, pipeline: str, batch: int, warmup_s: float, duration_s: float) -> None:
    from toolkit.bench.chain import InProcessPipeline
    from toolkit.bench.inputs import sample_rows
    from toolkit.plan import plan_spec

    plan = plan_spec(spec_path)
    chain = InProcessPipeline(plan, pipeline)
    rows = sample_rows(plan, pipeline, batch, seed=2)
    chain.run(rows)
    print("LOADED", flush=True)
    sys.stdin.readline()  # GO
    began = time.perf_counter()
    while time.perf_counter() - began < warmup_s:
        chain.run(rows)
    done = 0
    began, cpu_began = time.perf_counter(), time.process_time()
    while time.perf_counter() - began < duration_s:
        chain.run(rows)
        done += batch
    cpu_s = time.process_time() - cpu_began
    print(json.dumps({"rps": done / (time.perf_counter() - began), "cpu_s": cpu_s, "done": done}), flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
