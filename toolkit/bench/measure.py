"""Measurement shared by every benchmark: CPU seconds of a server and its stubs, the machine's busy
time, one load point run by the driver in its own process, and how a point is printed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from toolkit.bench.driver import Job
from toolkit.bench.machine import child_env, machine_busy_s
from toolkit.core.errors import CompoundError


class DriverJob(Protocol):
    """What run_driver needs of a load generator's job (driver.Job, stream_driver.StreamJob)."""

    result: str
    duration_s: float
    warmup_s: float
    timeout_s: float

    def dump(self, path: str | Path) -> None: ...


class ProcessCpu:
    """CPU seconds of a process and all its children (tritonserver + its Python stubs)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)

    def seconds(self) -> float:
        return sum(self.per_process().values())

    def per_process(self) -> dict[str, float]:
        """CPU seconds per process, keyed 'name[pid]' (a stub is named after its model)."""
        import psutil

        found: dict[str, float] = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                found[f"{_process_name(proc)}[{proc.pid}]"] = t.user + t.system
            except psutil.Error:
                continue
        return found


def _process_name(proc: Any) -> str:
    """tritonserver, stub:<model>, or the process title (Ray names its workers ray::<Actor>)."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - gone or inaccessible
        return "?"
    if not cmd:
        return proc.name()
    head = Path(cmd[0]).name
    if head == "triton_python_backend_stub" and len(cmd) > 1:
        return "stub:" + Path(cmd[1]).parent.parent.name
    if head.startswith("ray::"):
        return cmd[0].split()[0]
    if head.startswith("python") and len(cmd) > 2 and cmd[1] == "-m":
        return cmd[2]
    return head


def run_driver(
    job: DriverJob,
    work: Path,
    server_cpu: Optional[ProcessCpu],
    log: Callable[[str], None],
    module: str = "toolkit.bench.driver",
    on_mark: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """One load point in its own process (`python -m module JOB.json`, printing MEASURE_START and
    MEASURE_END around its measured window); server CPU sampled over that window, and `on_mark`
    called with each mark (what else the caller samples over the same window)."""
    job_file = work / "job.json"
    job.dump(job_file)
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(job_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    marks: dict[str, tuple[float, float, float]] = {}
    per_process: dict[str, dict[str, float]] = {}
    for line in proc.stdout or ():
        tag = line.strip()
        if tag in ("MEASURE_START", "MEASURE_END"):
            procs = server_cpu.per_process() if server_cpu else {}
            per_process[tag] = procs
            marks[tag] = (time.perf_counter(), sum(procs.values()), machine_busy_s())
            if on_mark is not None:
                on_mark(tag)
    _, err = proc.communicate(timeout=job.timeout_s + job.duration_s + job.warmup_s + 60)
    if proc.returncode != 0:
        raise CompoundError(f"load generator failed (exit {proc.returncode})", hint=err.strip()[-2000:])
    result = json.loads(Path(job.result).read_text())
    result["server_cpu_pct"] = result["other_cpu_pct"] = None
    if "MEASURE_START" in marks and "MEASURE_END" in marks:
        (t0, c0, b0), (t1, c1, b1) = marks["MEASURE_START"], marks["MEASURE_END"]
        span = max(t1 - t0, 1e-9)
        if server_cpu:
            result["server_cpu_pct"] = 100.0 * (c1 - c0) / span
            # everything else on the machine over the same window: benchmarks on a shared machine say so
            result["other_cpu_pct"] = max(
                0.0, 100.0 * (b1 - b0) / span - result["server_cpu_pct"] - result["client_cpu_pct"]
            )
            # matched by pid: a process may change its title meanwhile (Ray names a worker after its current task)
            before = {_pid(k): v for k, v in per_process["MEASURE_START"].items()}
            after = per_process["MEASURE_END"]
            shares = {k: 100.0 * (after[k] - before.get(_pid(k), 0.0)) / span for k in after}
            result["server_cpu_by_process_pct"] = {
                k: round(v, 1) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])[:12] if v >= 0.5
            }
    return result


def _pid(key: str) -> str:
    """The pid of a per_process key 'name[pid]'."""
    return key.rsplit("[", 1)[-1]


def pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}%"


def point_line(p: dict[str, Any]) -> str:
    lat = p["latency_ms"]
    return (
        f"c={p['concurrency']:>3}  {p['throughput_rps']:8.1f} req/s"
        f"  p50 {lat['p50']:7.2f}  p95 {lat['p95']:7.2f}  p99 {lat['p99']:7.2f} ms"
        f"  errors {p['errors']}  server CPU {pct(p.get('server_cpu_pct'))}  client CPU {pct(p['client_cpu_pct'])}"
        f"  other CPU {pct(p.get('other_cpu_pct'))}"
    )


def measure_server(
    plan: Any,
    pipeline: str,
    stages: list[list[Any]],
    rows_file: Path,
    concurrency: list[int],
    duration_s: float,
    warmup_s: float,
    repo_dir: Path,
    work: Path,
    name: str,
    log: Callable[[str], None],
    driver: str = "grpc",
) -> dict[str, Any]:
    """Render `plan`, start it on a local tritonserver (free ports), time the first response, run the
    load generator at each concurrency, stop the server (always). What `bench` measures each server
    profile with and `tune` each candidate with: one measurement, one code path."""
    from toolkit.bench.driver import first_response
    from toolkit.bench.profiles import tensor_datatypes
    from toolkit.core.system import free_ports
    from toolkit.repository.render import render_repository
    from toolkit.targets.local import LocalServer

    repo = render_repository(plan, repo_dir)
    http, grpc, metrics = free_ports(3)
    datatypes = tensor_datatypes(plan, pipeline)
    result: dict[str, Any] = {"repository": str(repo), "points": []}
    began = time.perf_counter()
    with LocalServer(
        repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=work / f"tritonserver-{name}.log"
    ) as server:
        ready_s = time.perf_counter() - began
        # http: the same KServe v2 binary requests the Ray Serve peer takes, to Triton's HTTP endpoint
        url, protocol = (
            (f"http://{server.http_url}", "http-v2") if driver == "http" else (server.grpc_url, "triton-grpc")
        )
        probe = Job(url, stages, datatypes, str(rows_file), 1, 0.0, 0.0, str(work / "probe.json"), protocol=protocol)
        until_first, first_latency = first_response(probe, timeout_s=60.0)
        result["ready_s"] = ready_s
        result["cold_start_s"] = ready_s + until_first
        result["first_request_ms"] = first_latency * 1e3
        log(
            f"  ready in {ready_s:.1f} s,"
            f" first response after {result['cold_start_s']:.1f} s ({first_latency * 1e3:.1f} ms)"
        )
        cpu = ProcessCpu(server.pid) if server.pid else None
        for c in concurrency:
            job = Job(
                url,
                stages,
                datatypes,
                str(rows_file),
                c,
                duration_s,
                warmup_s,
                str(work / f"result-{name}-{c}.json"),
                protocol=protocol,
            )
            if driver == "locust":
                from toolkit.bench.locust_driver import run_locust

                point = run_locust(job, work, cpu)
            else:
                point = run_driver(job, work, cpu, log)
            result["points"].append(point)
            log("  " + point_line(point))
    return result
