"""Orchestrates `compound bench`: profile the handlers, plan instances, deploy each profile in
turn, drive it with the same load generator at each concurrency, then write JSON, plots, a table.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toolkit.bench.ceiling import measure_ceiling
from toolkit.bench.chain import InProcessPipeline
from toolkit.bench.inputs import sample_rows
from toolkit.bench.measure import measure_server, pct
from toolkit.bench.profile import CostCurve, profile_pipeline
from toolkit.bench.profiles import (
    ALL_PROFILES,
    GENERATED_PROFILES,
    SERVER_PROFILES,
    SPEC_PROFILES,
    build_profile,
    spec_profile,
)
from toolkit.errors import CompoundError
from toolkit.plan import DeploymentPlan, plan_spec
from toolkit.plan.allocate import Allocation, allocate

REQUEST_POOL = 512  # distinct request rows the client cycles through


@dataclass
class Settings:
    spec: Path
    pipeline: str
    out: Path
    profiles: list[str] = field(default_factory=lambda: list(ALL_PROFILES))
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    duration_s: float = 20.0
    warmup_s: float = 3.0
    cores: int = 0  # 0: os.cpu_count()
    driver: str = "grpc"
    profile_seconds: float = 0.3
    command: str = ""
    tuned: Optional[Path] = None  # the `tuned` profile's spec (what `compound tune` wrote)

    @property
    def core_budget(self) -> int:
        return self.cores or os.cpu_count() or 1


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


class BenchRunner:
    def __init__(self, settings: Settings, log: Callable[[str], None] = print) -> None:
        self.s = settings
        self.log = log
        unknown = [p for p in settings.profiles if p not in ALL_PROFILES + SPEC_PROFILES]
        if unknown:
            raise CompoundError(
                f"unknown profile(s) {unknown}", hint=f"choose from {', '.join(ALL_PROFILES + SPEC_PROFILES)}"
            )
        if "tuned" in settings.profiles and settings.tuned is None:
            raise CompoundError("the tuned profile needs --tuned FILE", hint="the spec `compound tune` wrote")
        if settings.driver not in ("grpc", "locust"):
            raise CompoundError(f"unknown driver '{settings.driver}'", hint="use grpc or locust")
        self.plan: DeploymentPlan = plan_spec(settings.spec)
        if settings.pipeline not in self.plan.pipelines:
            raise CompoundError(
                f"no pipeline '{settings.pipeline}' in {settings.spec}",
                hint=f"pipelines: {', '.join(sorted(self.plan.pipelines))}",
            )
        self.out = settings.out.resolve()

    def run(self) -> dict[str, Any]:
        s = self.s
        self.out.mkdir(parents=True, exist_ok=True)
        work = self.out / "work"
        work.mkdir(exist_ok=True)
        self.log(f"profiling handlers of '{s.pipeline}' in-process ...")
        chain = InProcessPipeline(self.plan, s.pipeline)
        curves = profile_pipeline(self.plan, s.pipeline, min_seconds=s.profile_seconds, chain=chain)
        del chain
        max_batch = max(1, self.plan.pipelines[s.pipeline].max_batch_size)
        allocation = allocate(
            {m: dict(zip(c.batch_sizes, c.seconds)) for m, c in curves.items()}, s.core_budget, max_batch
        )
        for line in allocation.explain():
            self.log(f"  {line}")
        rows_file = work / "rows.npz"
        np.savez(rows_file, **sample_rows(self.plan, s.pipeline, REQUEST_POOL, seed=0))
        report: dict[str, Any] = {
            "spec": str(s.spec),
            "pipeline": s.pipeline,
            "command": s.command,
            "machine": machine_info(),
            "settings": {
                "profiles": s.profiles,
                "concurrency": s.concurrency,
                "duration_s": s.duration_s,
                "warmup_s": s.warmup_s,
                "core_budget": s.core_budget,
                "driver": s.driver,
            },
            "compute": _compute_summary(curves, allocation),
            "cost_curves": {m: c.to_json() for m, c in curves.items()},
            "allocation": {
                "counts": allocation.counts,
                "batch": allocation.batch,
                "share": allocation.share,
                "predicted_rps": allocation.predicted_rps,
            },
            "profiles": {},
        }
        for name in s.profiles:
            self.log(f"profile {name} ...")
            try:
                if name in SERVER_PROFILES or name in SPEC_PROFILES:
                    result = self._server_profile(name, allocation, rows_file, work)
                elif name == "ceiling":
                    result = self._ceiling(allocation)
                else:
                    from toolkit.bench.rayserve import run_ray_profile

                    result = run_ray_profile(self.plan, s.pipeline, s, rows_file, work, self.log, allocation.counts)
            except CompoundError as exc:
                self.log(f"  {name} failed: {exc}")
                result = {"error": str(exc) + (f" ({exc.hint})" if getattr(exc, "hint", None) else "")}
            report["profiles"][name] = result
            (self.out / "results.json").write_text(json.dumps(report, indent=1, default=_jsonable))
        report["targets"] = evaluate_targets(report)
        if "tuned" in report["profiles"]:
            from toolkit.bench.tune import tuned_ratios

            report["tuned_ratios"] = tuned_ratios(report)
        (self.out / "results.json").write_text(json.dumps(report, indent=1, default=_jsonable))
        try:
            from toolkit.bench.plots import write_plots

            report["plots"] = [str(p) for p in write_plots(report, self.out)]
        except ImportError as exc:  # matplotlib is an extra: the measurements stand without plots
            report["plots"] = []
            self.log(f"plots skipped: {exc.name or 'matplotlib'} is not installed (pip install 'compound[bench]')")
        (self.out / "results.json").write_text(json.dumps(report, indent=1, default=_jsonable))
        return report

    def _server_profile(self, name: str, allocation: Allocation, rows_file: Path, work: Path) -> dict[str, Any]:
        s = self.s
        if name in SPEC_PROFILES:
            source = plan_spec(s.tuned) if name == "tuned" and s.tuned else self.plan
            profile = spec_profile(name, source, s.pipeline)
        else:
            profile = build_profile(name, self.plan, s.pipeline, allocation, cores=s.core_budget)
        result: dict[str, Any] = {
            "description": profile.description,
            "instances": profile.instances,
            "dynamic_batching": profile.batching,
        }
        measured = measure_server(
            profile.plan,
            s.pipeline,
            profile.request_stages,
            rows_file,
            s.concurrency,
            s.duration_s,
            s.warmup_s,
            self.out / "repos" / name,
            work,
            name,
            self.log,
            s.driver,
        )
        return {**result, **measured}

    def _ceiling(self, allocation: Allocation) -> dict[str, Any]:
        s = self.s
        res = measure_ceiling(
            str(s.spec), s.pipeline, allocation.batch, s.core_budget, s.duration_s, warmup_s=min(s.warmup_s, 3.0)
        )
        self.log(f"  {res.throughput_rps:.0f} req/s at batch {res.batch} on {res.workers} worker process(es)")
        return {
            "description": (
                f"no server: handlers chained in-process at batch {res.batch},"
                f" {res.workers} worker process(es), one per core"
            ),
            "throughput_rps": res.throughput_rps,
            "batch": res.batch,
            "workers": res.workers,
            "per_worker_rps": list(res.per_worker_rps),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _compute_summary(curves: dict[str, CostCurve], allocation: Allocation) -> dict[str, Any]:
    batch1 = sum(c.seconds[0] / c.batch_sizes[0] for c in curves.values())
    return {
        "per_request_ms_batch1": batch1 * 1e3,
        "per_request_ms_best": sum(allocation.per_request_s.values()) * 1e3,
        "best_batch": allocation.batch,
    }


def _best(points: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    ok = [p for p in points if p["completed"] > 0]
    return max(ok, key=lambda p: p["throughput_rps"]) if ok else None


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark targets, each with measured values and met / missed / not measured."""
    profiles = report["profiles"]
    targets: list[dict[str, Any]] = []

    def points(name: str) -> list[dict[str, Any]]:
        return profiles.get(name, {}).get("points", []) if isinstance(profiles.get(name), dict) else []

    static_best, ceiling, ray_best = _best(points("static")), profiles.get("ceiling", {}), _best(points("ray-serve"))
    for name in GENERATED_PROFILES:
        best = _best(points(name))
        if best is None:
            continue
        if static_best:
            ratio = best["throughput_rps"] / static_best["throughput_rps"]
            targets.append(
                {"target": f"{name} vs static throughput >= 4x", "value": round(ratio, 2), "met": ratio >= 4.0}
            )
            same = [p for p in points(name) if p["concurrency"] == static_best["concurrency"]]
            if same:
                frac = same[0]["latency_ms"]["p95"] / static_best["latency_ms"]["p95"]
                targets.append(
                    {
                        "target": (
                            f"{name} P95 at static's peak load (c={static_best['concurrency']}) <= 40% of static's"
                        ),
                        "value": round(frac, 3),
                        "met": frac <= 0.4,
                    }
                )
        if isinstance(ceiling, dict) and ceiling.get("throughput_rps"):
            frac = best["throughput_rps"] / ceiling["throughput_rps"]
            compute = report["compute"]["per_request_ms_best"]
            targets.append(
                {
                    "target": f"{name} >= 80% of ceiling (where a request's compute >= 5 ms)",
                    "value": round(frac, 3),
                    "met": frac >= 0.8,
                    "applies": compute >= 5.0,
                    "note": (
                        f"compute per request {compute:.2f} ms at batch {report['compute']['best_batch']};"
                        f" client CPU at that point {best['client_cpu_pct']:.0f}% of a core"
                    ),
                }
            )
        if ray_best:
            eligible = [p for p in points(name) if p["latency_ms"]["p95"] <= ray_best["latency_ms"]["p95"]]
            value = max((p["throughput_rps"] for p in eligible), default=0.0) / ray_best["throughput_rps"]
            targets.append(
                {
                    "target": f"{name} >= 1.5x Ray Serve throughput at equal or lower P95",
                    "value": round(value, 2),
                    "met": value >= 1.5,
                }
            )
        elif "ray-serve" in profiles:
            targets.append(
                {
                    "target": f"{name} >= 1.5x Ray Serve throughput at equal or lower P95",
                    "value": None,
                    "met": None,
                    "note": profiles["ray-serve"].get("error", "not measured"),
                }
            )
    return targets


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['pipeline']} ({report['spec']}) on {report['machine']['cores']} cores, {report['machine']['cpu']}"
    ]
    comp = report["compute"]
    lines.append(
        f"compute per request: {comp['per_request_ms_batch1']:.2f} ms at batch 1,"
        f" {comp['per_request_ms_best']:.2f} ms at batch {comp['best_batch']};"
        f" planned instances {report['allocation']['counts']}"
    )
    lines.append("CPU: % of one core; other = the rest of the machine during the same window (should be ~0)")
    header = (
        f"{'profile':<10} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
        f" {'srv CPU':>8} {'cli CPU':>8} {'other':>6}"
    )
    lines += [header, "-" * len(header)]
    for name, res in report["profiles"].items():
        if "error" in res:
            lines.append(f"{name:<10} not measured: {res['error']}")
            continue
        if "points" not in res:
            lines.append(
                f"{name:<10} {'-':>5} {res['throughput_rps']:9.1f} {'':>8} {'':>8} {'':>8} {'':>6} {'':>8} {'':>8}"
                f"  ({res['description']})"
            )
            continue
        for p in res["points"]:
            lat = p["latency_ms"]
            lines.append(
                f"{name:<10} {p['concurrency']:>5} {p['throughput_rps']:9.1f}"
                f" {lat['p50']:8.2f} {lat['p95']:8.2f} {lat['p99']:8.2f} {p['errors']:>6} "
                f"{pct(p.get('server_cpu_pct')):>8} {pct(p['client_cpu_pct']):>8} {pct(p.get('other_cpu_pct')):>6}"
            )
        if "cold_start_s" in res:
            lines.append(
                f"{'':<10} cold start {res['cold_start_s']:.2f} s (ready {res['ready_s']:.2f} s),"
                f" first request {res['first_request_ms']:.1f} ms"
            )
    if report.get("tuned_ratios"):
        lines.append("tuned against the other profiles of this run (throughput ratios; of_ceiling: fraction):")
        for key, value in report["tuned_ratios"].items():
            lines.append(f"  {key}: {value}")
    if report.get("targets"):
        lines.append("targets:")
        for t in report["targets"]:
            state = "n/a" if t["met"] is None or t.get("applies") is False else ("met" if t["met"] else "MISSED")
            extra = f" [{t['note']}]" if t.get("note") else ""
            if t.get("applies") is False:
                extra += " (target does not apply: compute < 5 ms)"
            lines.append(f"  {state:>6}  {t['target']}: {t['value']}{extra}")
    return "\n".join(lines)
