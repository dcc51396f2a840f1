"""`compound bench SPEC --workload bursty|steady`: the same spec deployed twice in turn on the embedded
local server, once static (the counts the spec names, no runtime) and once adaptive (the runtime
beside it, as `compound deploy` runs it), each driven by the same schedule of phases.

Why a schedule: the runtime earns its keep when load moves. A static deployment sized for the quiet
hours queues in a burst; one sized for the burst holds idle instances the rest of the time. The
comparison is latency (overall and per phase) against instance-seconds, the cost the runtime trades.

Method. The load generator (toolkit/bench/workload_driver.py) runs in its own process and records
every request. Every second this process samples the runtime's status file (per-component instances,
its instance-second accounting). Instance-seconds are the step integral of those samples over the
schedule; the static deployment's are its fixed counts x the schedule's length. Server, runtime and
client CPU and the rest of the machine's busy time are measured over the same window, so a run on a
shared machine says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toolkit.bench.driver import Call, Job, first_response
from toolkit.bench.inputs import sample_rows
from toolkit.bench.machine import REQUEST_POOL, child_env, machine_busy_s, machine_info
from toolkit.bench.measure import ProcessCpu, pct
from toolkit.bench.workload_driver import Target, WorkloadJob
from toolkit.core.errors import CompoundError
from toolkit.plan import DeploymentPlan, plan_spec
from toolkit.runtime.pricing import Prices

WORKLOADS = ("bursty", "steady")
DEPLOYMENTS = ("static", "adaptive")
DEFAULT_BURST = 32
SAMPLE_S = 1.0
P95_TARGET = 0.5  # adaptive P95 / static P95 at equal or fewer instance-seconds
SAVING_TARGET = 0.7  # adaptive instance-seconds / static's at equal or lower P95
THROUGHPUT_TARGET = 1.7  # steady: adaptive throughput / static's
SAVING_P95 = 1.05  # ... the P95 the saving may cost: at most 1.05x static's
REACTION_TARGET_S = 0.5  # p50 of burst reactions: first queued request seen -> the new instance serving


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    concurrency: dict[str, int]  # pipeline -> closed-loop clients


def schedule(workload: str, pipelines: list[str], seconds: float, burst: int) -> list[Phase]:
    """bursty: quiet on A, a burst on A, the burst moves to B (A quiet), quiet again.
    steady: one long phase at the burst's concurrency on A, long enough for the runtime to scale."""
    a = pipelines[0]
    if workload == "steady":
        return [Phase(f"steady {a}", seconds, {a: burst})]
    b = pipelines[1]
    return [
        Phase("quiet", seconds, {a: 1}),
        Phase(f"burst {a}", seconds, {a: burst}),
        Phase(f"shift to {b}", seconds, {a: 1, b: burst}),
        Phase("quiet again", seconds, {a: 1}),
    ]


@dataclass
class WorkloadSettings:
    spec: Path
    out: Path
    workload: str = "bursty"
    pipelines: list[str] = field(default_factory=list)  # empty: the spec's first two (first one: steady)
    phase_s: float = 20.0
    burst: int = DEFAULT_BURST
    cores: float = 0  # the runtime's budget; 0: the cores this process may use
    command: str = ""
    prices: Prices = field(default_factory=Prices)  # for the cost per 1,000 requests (none: core-seconds only)

    @property
    def core_budget(self) -> float:
        return self.cores or len(os.sched_getaffinity(0))


class WorkloadRunner:
    def __init__(self, settings: WorkloadSettings, log: Callable[[str], None] = print) -> None:
        if settings.workload not in WORKLOADS:
            raise CompoundError(f"unknown workload '{settings.workload}'", hint=f"choose from {', '.join(WORKLOADS)}")
        self.s = settings
        self.log = log
        self.plan: DeploymentPlan = plan_spec(settings.spec)
        needed = 1 if settings.workload == "steady" else 2
        known = list(self.plan.pipelines)
        pipelines = list(dict.fromkeys(settings.pipelines)) or known[:needed]
        unknown = [p for p in pipelines if p not in known]
        if unknown:
            raise CompoundError(f"no pipeline {unknown} in {settings.spec}", hint=f"pipelines: {', '.join(known)}")
        if len(pipelines) < needed:
            raise CompoundError(
                f"the {settings.workload} workload needs {needed} different pipelines, got {', '.join(pipelines)}",
                hint=f"name them with --pipeline A,B (pipelines in {settings.spec}: {', '.join(known)})",
            )
        self.pipelines = pipelines[:needed]
        self.phases = schedule(settings.workload, self.pipelines, settings.phase_s, settings.burst)
        self.out = settings.out.resolve()
        self.work = self.out / "work"
        self.start_at = 0.0  # time.monotonic() at which the current deployment's schedule began

    def run(self) -> dict[str, Any]:
        s = self.s
        self.work.mkdir(parents=True, exist_ok=True)
        targets = []
        for p in self.pipelines:
            rows_file = self.work / f"rows-{p}.npz"
            np.savez(rows_file, **sample_rows(self.plan, p, REQUEST_POOL, seed=0))
            spec = self.plan.spec.pipelines[p]
            tensors = self.plan.pipelines[p].tensors
            targets.append(
                Target(p, {t: tensors[t].v2_datatype for t in spec.inputs}, list(spec.outputs), str(rows_file))
            )
        report: dict[str, Any] = {
            "spec": str(s.spec),
            "workload": s.workload,
            "command": s.command,
            "machine": machine_info(),
            "settings": {"pipelines": self.pipelines, "phase_s": s.phase_s, "burst": s.burst, "cores": s.core_budget},
            "phases": [asdict(p) for p in self.phases],
            "components": self._components(),
            "deployments": {},
        }
        for mode in DEPLOYMENTS:
            self.log(f"{mode}: deploying {s.spec} ...")
            try:
                result = self._deployment(mode, targets)
            except CompoundError as exc:
                self.log(f"  {mode} failed: {exc}")
                result = {"error": str(exc) + (f" ({exc.hint})" if getattr(exc, "hint", None) else "")}
            report["deployments"][mode] = result
            self._write(report)
        report["targets"] = evaluate_targets(report)
        self._write(report)
        try:
            report["plots"] = [str(write_plot(report, self.out))]
        except ImportError as exc:  # matplotlib is an extra: the measurements stand without plots
            report["plots"] = []
            self.log(f"plots skipped: {exc.name or 'matplotlib'} is not installed (pip install 'compound[bench]')")
        self._write(report)
        return report

    def _write(self, report: dict[str, Any]) -> None:
        (self.out / "results.json").write_text(json.dumps(report, indent=1))

    def _components(self) -> dict[str, dict[str, Any]]:
        """Every deployed component model (all hold instances, used by the workload or not): the
        spec's count, which the static deployment keeps, and the runtime's bounds."""
        found = {}
        for name in self.plan.deployed_models:
            model = self.plan.models[name]
            bounds = model.autoscale
            found[name] = {
                "count": model.instance_count,
                "autoscale": {"min": bounds.min, "max": bounds.max} if bounds else None,
                "threads": model.threads,
                "gpu": model.instance_kind == "KIND_GPU",
            }
        return found

    # --- one deployment -----------------------------------------------------------------------

    def _deployment(self, mode: str, targets: list[Target]) -> dict[str, Any]:
        from toolkit.core.system import free_ports
        from toolkit.repository.render import render_repository
        from toolkit.targets.local import LocalServer

        folder = self.work / mode
        folder.mkdir(parents=True, exist_ok=True)
        repo = render_repository(self.plan, self.out / "repos" / mode)
        http, grpc, metrics = free_ports(3)
        began = time.perf_counter()
        with LocalServer(
            repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=folder / "tritonserver.log"
        ) as server:
            ready_s = time.perf_counter() - began
            for target in targets:  # every pipeline answers before the clock starts
                probe = Job(
                    server.grpc_url,
                    [[Call(target.name, {t: t for t in target.inputs}, {t: t for t in target.outputs})]],
                    dict(target.inputs),
                    target.rows_file,
                    1,
                    0.0,
                    0.0,
                    str(folder / "probe.json"),
                )
                first_response(probe, timeout_s=60.0)
            runtime = _Runtime(server, folder, self.s.core_budget, self.log) if mode == "adaptive" else None
            try:
                if runtime is not None:
                    runtime.start()
                measured = self._drive(server, targets, folder, runtime)
            finally:
                decisions = runtime.stop(self.start_at) if runtime is not None else []
        fixed = {m: c["count"] for m, c in self._components().items()}
        result = analyse(measured, self.phases, fixed if runtime is None else None)
        result["ready_s"] = ready_s
        result.update(reserved(result, self._components(), sum(p.seconds for p in self.phases), self.s.prices))
        if runtime is not None:
            result["runtime"] = {"cores": self.s.core_budget, "decisions": decisions, "log": str(runtime.log_path)}
            result["reactions_s"] = [d["reaction_s"] for d in decisions if d.get("reaction_s") is not None]
        self.log("  " + summary_line(mode, result))
        return result

    def _drive(self, server: Any, targets: list[Target], folder: Path, runtime: Optional[_Runtime]) -> dict[str, Any]:
        """Run the schedule; sample the runtime and the server's CPU per process each second, and CPU
        at both ends of the window."""
        length = sum(p.seconds for p in self.phases)
        job = WorkloadJob(server.grpc_url, targets, [asdict(p) for p in self.phases], str(folder / "requests.json"))
        job.dump(folder / "job.json")
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolkit.bench.workload_driver", str(folder / "job.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        server_cpu = ProcessCpu(server.pid)
        by_process = CpuByProcess()
        samples: list[dict[str, Any]] = []
        cpu: dict[str, tuple[float, float, float]] = {}
        try:
            line = (proc.stdout.readline() if proc.stdout else "").split()
            start_at = self.start_at = float(line[1]) if len(line) == 2 and line[0] == "START" else time.monotonic()
            tick = 0
            while proc.poll() is None:
                due = start_at + tick * SAMPLE_S
                time.sleep(max(0.0, due - time.monotonic()))
                now = time.monotonic() - start_at
                if tick == 0 or (now >= length and "end" not in cpu):
                    cpu["start" if tick == 0 else "end"] = (
                        _server_cpu_s(server_cpu),
                        runtime.cpu_s() if runtime else 0.0,
                        machine_busy_s(),
                    )
                if now <= length + SAMPLE_S / 2:
                    by_process.sample(server_cpu.per_process(), first=tick == 0)
                    sample = runtime.sample() if runtime is not None else None
                    if sample is not None:
                        samples.append({"t": round(now, 3), **sample})
                tick += 1
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise CompoundError(f"load generator failed (exit {proc.returncode})", hint=(err or "").strip()[-2000:])
        measured = json.loads((folder / "requests.json").read_text())
        measured["samples"] = samples
        measured["server_cpu_by_process_pct"] = {k: 100.0 * v / length for k, v in by_process.seconds().items()}
        if "start" in cpu and "end" in cpu:
            (s0, r0, b0), (s1, r1, b1) = cpu["start"], cpu["end"]
            span = length
            measured["cpu_pct"] = {
                "server": 100.0 * (s1 - s0) / span,
                "runtime": 100.0 * (r1 - r0) / span,
                "client": measured["client_cpu_pct"],
                "other": max(
                    0.0, 100.0 * (b1 - b0) / span - 100.0 * (s1 - s0 + r1 - r0) / span - measured["client_cpu_pct"]
                ),
            }
        return measured


class CpuByProcess:
    """The server's CPU seconds per process name (tritonserver, stub:<model>) over the schedule,
    from samples each second: where the server's CPU goes, an orchestrator's stubs included, which
    hold no instance the runtime scales. A stub started after the first sample counts from zero; a
    stub removed between samples loses its last second (the server total, which counts reaped stubs,
    does not)."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def sample(self, per_process: dict[str, float], first: bool) -> None:
        for key, seconds in per_process.items():
            self.first.setdefault(key, seconds if first else 0.0)
            self.last[key] = seconds

    def seconds(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for key, seconds in self.last.items():
            name = key.rsplit("[", 1)[0]
            total[name] = total.get(name, 0.0) + seconds - self.first[key]
        return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def _server_cpu_s(server: ProcessCpu) -> float:
    """tritonserver and its live stubs, plus the stubs it has reaped (instances the runtime removed)."""
    try:
        reaped = server.root.cpu_times()
        gone = reaped.children_user + reaped.children_system
    except Exception:  # noqa: BLE001 - the server is gone: its live processes count nothing either
        gone = 0.0
    return server.seconds() + gone


class _Runtime:
    """The adaptive runtime beside a bench server, started as `compound deploy` starts it."""

    def __init__(self, server: Any, folder: Path, cores: float, log: Callable[[str], None]) -> None:
        self.server, self.folder, self.cores, self.log = server, folder, cores, log
        self.state = server.deployment_state(f"bench-{folder.name}", folder)
        self.status_path = folder / "runtime.json"
        self.log_path = folder / "runtime.log"
        self.process: Any = None
        self.started: Optional[float] = None  # time.monotonic() when the runtime started

    def start(self) -> None:
        from toolkit.deployment.deployment import runtime_config
        from toolkit.runtime.process import RuntimeProcess
        from toolkit.targets.settings import DeployRequest

        self.status_path.unlink(missing_ok=True)
        state_path = self.folder / "deployment.json"  # where the runtime finds the server's stubs to heal them
        fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the key
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self.state), handle)
        request = DeployRequest(repository=self.server.repository, name=self.state.name, cores=self.cores)
        config = runtime_config(self.state, request, state_path)
        config.supervise = False  # the bench owns its server: no keeper (which needs a deploy's request.json)
        pid = RuntimeProcess.launch(config)
        self.state.runtime_pid = pid
        import psutil

        self.process = psutil.Process(pid)
        deadline = time.monotonic() + 20
        while not self.status_path.is_file():  # its first tick: it has seen every model
            if time.monotonic() > deadline or not self.process.is_running():
                raise CompoundError("the adaptive runtime did not start", hint=_tail(self.log_path))
            time.sleep(0.1)

    def sample(self) -> Optional[dict[str, Any]]:
        try:
            status = json.loads(self.status_path.read_text())
            written = self.status_path.stat().st_mtime
        except (OSError, ValueError):
            return None
        if self.started is None:  # its clock: written at a tick, `uptime_s` after it started
            self.started = written - status["uptime_s"] - (time.time() - time.monotonic())
        return {
            "instances": {m: v["instances"] for m, v in status["models"].items()},
            "utilisation": {m: v["utilisation"] for m, v in status["models"].items()},
            "runtime_instance_s": status["total"]["instance_s"],
        }

    def cpu_s(self) -> float:
        try:
            t = self.process.cpu_times()
            return float(t.user + t.system)
        except Exception:  # noqa: BLE001 - gone: it counts nothing more
            return 0.0

    def stop(self, start_at: float) -> list[dict[str, Any]]:
        """End it; what it decided (from its last status), timed from the workload's start."""
        from toolkit.runtime.process import RuntimeProcess

        RuntimeProcess.stop(self.state.runtime_pid)
        try:
            decisions = list(json.loads(self.status_path.read_text()).get("decisions", []))
        except (OSError, ValueError):
            return []
        offset = (self.started - start_at) if self.started is not None else 0.0
        return [{**d, "t": round(d["t"] + offset, 2)} for d in decisions]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- analysis -------------------------------------------------------------------------------------


def _latency(latencies_s: np.ndarray) -> dict[str, Optional[float]]:
    if not len(latencies_s):
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ms = latencies_s * 1e3
    return {
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p95": round(float(np.percentile(ms, 95)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "max": round(float(ms.max()), 2),
    }


def _window(start: np.ndarray, latency: np.ndarray, ok: np.ndarray, lo: float, hi: float) -> dict[str, Any]:
    """Requests started in [lo, hi): completed per second of the window, failures, latency."""
    inside = (start >= lo) & (start < hi)
    good = inside & ok
    return {
        "requests": int(good.sum()),
        "failures": int((inside & ~ok).sum()),
        "throughput_rps": round(float(good.sum()) / max(hi - lo, 1e-9), 2),
        "latency_ms": _latency(latency[good]),
    }


def analyse(measured: dict[str, Any], phases: list[Phase], fixed: Optional[dict[str, int]]) -> dict[str, Any]:
    """Latency and throughput overall, per phase (and its second half, after the runtime had time to
    act) and per pipeline; per-second timelines; instance-seconds from the fixed counts or samples."""
    held = _held(fixed, measured.get("samples", []))
    rec = measured["records"]
    start = np.asarray(rec["start_s"], dtype=float)
    latency = np.asarray(rec["latency_s"], dtype=float)
    which = np.asarray(rec["pipeline"], dtype=int)
    ok = np.asarray(rec["ok"], dtype=bool)
    names = measured["pipelines"]
    length = sum(p.seconds for p in phases)
    result: dict[str, Any] = {"overall": _window(start, latency, ok, 0.0, length), "phases": []}
    lo = 0.0
    for phase in phases:
        hi = lo + phase.seconds
        entry = {"name": phase.name, **_window(start, latency, ok, lo, hi), "instance_s": round(held(lo, hi), 2)}
        entry["second_half"] = _window(start, latency, ok, lo + phase.seconds / 2, hi)
        entry["pipelines"] = {
            name: _window(start[which == i], latency[which == i], ok[which == i], lo, hi)
            for i, name in enumerate(names)
            if phase.concurrency.get(name)
        }
        result["phases"].append(entry)
        lo = hi
    seconds = int(np.ceil(length))
    done = start + latency
    result["timeline"] = {
        "t": list(range(seconds)),
        "rps": {
            name: np.histogram(done[(which == i) & ok], bins=seconds, range=(0, seconds))[0].tolist()
            for i, name in enumerate(names)
        },
        "p95_ms": [_latency(latency[ok & (done >= t) & (done < t + 1)])["p95"] for t in range(seconds)],
    }
    requests = result["overall"]["requests"]
    instance_s = held(0.0, length)
    if fixed is not None:
        result["instances"] = {"fixed": fixed}
    else:
        samples = measured.get("samples", [])
        result["instances"] = {"samples": samples}
        if len(samples) >= 2:
            result["runtime_instance_s"] = round(
                samples[-1]["runtime_instance_s"] - samples[0]["runtime_instance_s"], 2
            )
    result["instance_s"] = round(instance_s, 2)
    result["instance_s_per_1k_requests"] = round(1e3 * instance_s / requests, 3) if requests else None
    result["client_cpu_pct"] = round(measured["client_cpu_pct"], 1)
    result["cpu_pct"] = {k: round(v, 1) for k, v in measured.get("cpu_pct", {}).items()}
    result["server_cpu_by_process_pct"] = {
        k: round(v, 1) for k, v in measured.get("server_cpu_by_process_pct", {}).items()
    }
    result["error_samples"] = measured.get("error_samples", [])
    return result


def _held(fixed: Optional[dict[str, int]], samples: list[dict[str, Any]]) -> Callable[[float, float], float]:
    """Instance-seconds over [lo, hi): the fixed counts, or each sample's counts until the next sample
    (the first from the start, the last to the end)."""

    def held(lo: float, hi: float) -> float:
        if fixed is not None:
            return sum(fixed.values()) * (hi - lo)
        total = 0.0
        for k, sample in enumerate(samples):
            begin = -np.inf if k == 0 else sample["t"]
            end = np.inf if k + 1 == len(samples) else samples[k + 1]["t"]
            total += sum(sample["instances"].values()) * max(min(end, hi) - max(begin, lo), 0.0)
        return float(total)

    return held


def reserved(
    result: dict[str, Any], components: dict[str, dict[str, Any]], length: float, prices: Prices
) -> dict[str, Any]:
    """Core- and GPU-seconds of reserved capacity over the schedule (an instance holds `threads`
    cores, a GPU instance a GPU, busy or not) and, priced, the cost per 1,000 requests."""
    held = result["instances"]
    fixed, samples = held.get("fixed"), held.get("samples", [])

    def seconds(weight: Callable[[str], float]) -> float:
        weighted_fixed = {m: n * weight(m) for m, n in fixed.items()} if fixed is not None else None
        weighted = [{**s, "instances": {m: n * weight(m) for m, n in s["instances"].items()}} for s in samples]
        return _held(weighted_fixed, weighted)(0.0, length)

    def threads(m: str) -> float:
        return float(components.get(m, {}).get("threads", 1))

    def gpu(m: str) -> float:
        return 1.0 if components.get(m, {}).get("gpu") else 0.0

    core_s, gpu_s = seconds(threads), seconds(gpu)
    requests = result["overall"]["requests"]
    per_1k = prices.per_1k_requests(core_s, gpu_s, requests)
    return {
        "core_s": round(core_s, 2),
        "gpu_s": round(gpu_s, 2),
        "core_s_per_1k_requests": round(1e3 * core_s / requests, 3) if requests else None,
        "prices": prices.as_dict(),
        "cost_per_1k_requests": None if per_1k is None else round(per_1k, 6),
    }


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The workload's targets, met / missed with the measured values."""
    static, adaptive = report["deployments"].get("static", {}), report["deployments"].get("adaptive", {})
    if "error" in static or "error" in adaptive or not static or not adaptive:
        return []
    targets: list[dict[str, Any]] = []
    if report["workload"] == "steady":
        picks: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
            ("whole phase", lambda r: r["phases"][0]),
            ("second half", lambda r: r["phases"][0]["second_half"]),
        ]
        for label, pick in picks:
            ratio = pick(adaptive)["throughput_rps"] / max(pick(static)["throughput_rps"], 1e-9)
            burst = report["settings"]["burst"]
            targets.append(
                {
                    "target": f"steady c={burst}: adaptive throughput >= {THROUGHPUT_TARGET}x static ({label})",
                    "value": round(ratio, 2),
                    "met": ratio >= THROUGHPUT_TARGET,
                }
            )
        return targets
    p95 = adaptive["overall"]["latency_ms"]["p95"] / static["overall"]["latency_ms"]["p95"]
    cost = adaptive["instance_s"] / static["instance_s"]
    note = (
        f"P95 {adaptive['overall']['latency_ms']['p95']:.1f} vs {static['overall']['latency_ms']['p95']:.1f} ms, "
        f"instance-s {adaptive['instance_s']:.0f} vs {static['instance_s']:.0f}"
    )
    targets.append(
        {
            "target": f"bursty: adaptive P95 <= {P95_TARGET:.0%} of static's at equal or fewer instance-seconds",
            "value": {"p95_ratio": round(p95, 3), "instance_s_ratio": round(cost, 3)},
            "met": p95 <= P95_TARGET and cost <= 1.0,
            "note": note,
        }
    )
    targets.append(
        {
            "target": f"bursty: adaptive >= {1 - SAVING_TARGET:.0%} fewer instance-seconds at P95 <= {SAVING_P95:g}x",
            "value": {"p95_ratio": round(p95, 3), "instance_s_ratio": round(cost, 3)},
            "met": cost <= SAVING_TARGET and p95 <= SAVING_P95,
            "note": note,
        }
    )
    reactions = adaptive.get("reactions_s") or []
    p50 = float(np.median(reactions)) if reactions else None
    targets.append(
        {
            "target": f"bursty: reaction p50 <= {REACTION_TARGET_S:g} s (first queued request to the instance serving)",
            "value": None if p50 is None else round(p50, 3),
            "met": p50 is not None and p50 <= REACTION_TARGET_S,
            "note": f"{len(reactions)} reaction(s): " + ", ".join(f"{r:.2f}" for r in reactions) + " s",
        }
    )
    return targets


# --- what is printed --------------------------------------------------------------------------------


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_line(mode: str, result: dict[str, Any]) -> str:
    o, lat = result["overall"], result["overall"]["latency_ms"]
    return (
        f"{mode}: {o['throughput_rps']:.1f} req/s, p50 {_ms(lat['p50'])} ms, p95 {_ms(lat['p95'])} ms, "
        f"{o['failures']} failures, {result['instance_s']:.0f} instance-s"
    )


def format_table(report: dict[str, Any]) -> str:
    m = report["machine"]
    settings = report["settings"]
    lines = [
        f"{report['workload']} workload on {report['spec']}: {len(report['phases'])} phase(s) x "
        f"{settings['phase_s']:g} s, burst concurrency {settings['burst']}, runtime cores {settings['cores']:g}; "
        f"machine {m['cores']} cores, {m['cpu']}",
        "components (static count, autoscale): "
        + ", ".join(f"{n} {c['count']} {c['autoscale'] or 'fixed'}" for n, c in report["components"].items()),
    ]
    header = (
        f"{'deployment':<10} {'phase':<22} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'fails':>6} "
        f"{'inst-s':>7} {'2nd half req/s':>15} {'p95':>8}"
    )
    lines += [header, "-" * len(header)]
    for mode, res in report["deployments"].items():
        if "error" in res:
            lines.append(f"{mode:<10} not measured: {res['error']}")
            continue
        rows = [(p["name"], p, p["second_half"]) for p in res["phases"]]
        for name, w, half in [*rows, ("all", {**res["overall"], "instance_s": res["instance_s"]}, None)]:
            lat = w["latency_ms"]
            tail = f" {half['throughput_rps']:15.1f} {_ms(half['latency_ms']['p95']):>8}" if half else ""
            lines.append(
                f"{mode:<10} {name:<22} {w['throughput_rps']:8.1f} {_ms(lat['p50']):>8} {_ms(lat['p95']):>8} "
                f"{_ms(lat['p99']):>8} {w['failures']:>6} {w['instance_s']:7.1f}{tail}"
            )
        per_1k = res["instance_s_per_1k_requests"]
        cpu = res.get("cpu_pct", {})
        own = f", the runtime's own account {res['runtime_instance_s']:.1f}" if "runtime_instance_s" in res else ""
        priced = res.get("cost_per_1k_requests")
        lines.append(
            f"{'':<10} {res.get('core_s', 0):.0f} core-s reserved, "
            f"{res.get('core_s_per_1k_requests') or 0:.2f} per 1,000 requests"
            + (f"; cost {priced:.5f} per 1,000 requests" if priced is not None else "")
            + (f"; reactions {', '.join(f'{r:.2f}' for r in res['reactions_s'])} s" if res.get("reactions_s") else "")
        )
        lines.append(
            f"{'':<10} {'-' if per_1k is None else f'{per_1k:.2f}'} instance-seconds per 1,000 requests{own}; "
            f"CPU (% of a core) server {pct(cpu.get('server'))}, runtime {pct(cpu.get('runtime'))}, "
            f"client {pct(cpu.get('client'))}, rest of the machine {pct(cpu.get('other'))}"
        )
        if res.get("server_cpu_by_process_pct"):
            lines.append(
                f"{'':<10} server CPU by process (% of a core): "
                + ", ".join(f"{k} {v:.1f}%" for k, v in res["server_cpu_by_process_pct"].items())
            )
        for d in res.get("runtime", {}).get("decisions", []):
            took = f" [reaction {d['reaction_s']:.2f} s]" if d.get("reaction_s") is not None else ""
            lines.append(
                f"{'':<10} t={d['t']:>6.1f}  {d['model']}: {d['action']} -> {d['instances']}: {d['reason']}{took}"
            )
    if report.get("targets"):
        lines.append("targets:")
        for t in report["targets"]:
            extra = f" [{t['note']}]" if t.get("note") else ""
            lines.append(f"  {'met' if t['met'] else 'MISSED':>6}  {t['target']}: {t['value']}{extra}")
    return "\n".join(lines)


# --- the plot ---------------------------------------------------------------------------------------


def write_plot(report: dict[str, Any], out: Path) -> Path:
    """Over time: requests/s per pipeline, P95 per second, instances per component (static dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True, gridspec_kw={"height_ratios": [3, 2, 2]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style = {"static": "--", "adaptive": "-"}
    measured = {mode: res for mode, res in report["deployments"].items() if "timeline" in res}
    for mode, res in measured.items():
        timeline = res["timeline"]
        t = [x + 0.5 for x in timeline["t"]]
        for k, (name, rps) in enumerate(timeline["rps"].items()):
            window = np.ones(3)  # batches complete together: a moving average shows the rate, not the batches
            smooth = np.convolve(rps, window, mode="same") / np.convolve(np.ones(len(rps)), window, mode="same")
            axes[0].plot(t, smooth, style[mode], color=colours[k % len(colours)], label=f"{name} ({mode})")
        p95 = [np.nan if v is None else v for v in timeline["p95_ms"]]
        axes[1].plot(t, p95, style[mode], color="black" if mode == "adaptive" else "gray", label=mode)
    components = list(report["components"])
    for k, name in enumerate(components):
        colour = colours[(k + 3) % len(colours)]
        static = measured.get("static")
        if static:
            count = static["instances"]["fixed"].get(name, 0)
            length = len(static["timeline"]["t"])
            axes[2].plot([0, length], [count + 0.04 * k] * 2, "--", color=colour, label=f"{name} (static)")
        adaptive = measured.get("adaptive")
        if adaptive and adaptive["instances"].get("samples"):
            samples = adaptive["instances"]["samples"]
            axes[2].step(
                [s["t"] for s in samples],
                [s["instances"].get(name, 0) + 0.04 * k for s in samples],
                "-",
                where="post",
                color=colour,
                label=f"{name} (adaptive)",
            )
    edge = 0.0
    for phase in report["phases"]:
        for ax in axes:
            ax.axvline(edge, color="lightgray", linewidth=0.8)
        axes[0].annotate(phase["name"], (edge + 0.3, 1.0), xycoords=("data", "axes fraction"), fontsize=8, va="top")
        edge += phase["seconds"]
    axes[0].set_ylabel("completed requests/s\n(3-s moving average)")
    axes[0].legend(fontsize=7, ncol=2, loc="center right")
    axes[1].set_ylabel("P95 per second (ms)")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7, loc="upper right")
    bounds = [c["autoscale"]["max"] if c["autoscale"] else c["count"] for c in report["components"].values()]
    axes[2].set_ylim(0, max(bounds, default=1) + 0.5)
    axes[2].yaxis.get_major_locator().set_params(integer=True)
    axes[2].set_ylabel("instances")
    axes[2].set_xlabel("seconds since the workload began")
    axes[2].legend(fontsize=7, ncol=2, loc="upper right")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{report['workload']} workload, {report['spec']}: static (dashed) vs adaptive (solid)")
    fig.tight_layout()
    path = out / f"workload_{report['workload']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
