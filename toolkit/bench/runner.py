"""Orchestrates `compound bench`: profile the handlers, plan instances, deploy each profile in
turn, drive it with the same load generator at each concurrency, then write JSON, plots, a table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toolkit.bench.ceiling import measure_ceiling
from toolkit.bench.chain import InProcessPipeline, model_threads, served_threads
from toolkit.bench.costs import CostCurve, chain_cpu_per_request, profile_pipeline
from toolkit.bench.inputs import sample_rows
from toolkit.bench.machine import REQUEST_POOL, cap_native_threads, machine_info
from toolkit.bench.measure import measure_server, pct
from toolkit.bench.profiles import (
    ALL_PROFILES,
    BASELINES,
    GENERATED_PROFILES,
    PYTRITON_PROFILE,
    RAY_PROFILES,
    SERVER_PROFILES,
    SPEC_PROFILES,
    build_profile,
    spec_profile,
)
from toolkit.core.errors import CompoundError
from toolkit.plan import DeploymentPlan, plan_spec
from toolkit.plan.allocate import Allocation, allocate

SHARED_MACHINE_PCT = 25.0  # other processes' CPU (% of a core) above which a peer comparison is not established


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
    keep_cache: bool = False  # keep declared caches: figures then include hits on the cycled request pool
    command: str = ""
    tuned: Optional[Path] = None  # the `tuned` profile's spec (what `compound tune` wrote)

    @property
    def core_budget(self) -> int:
        return self.cores or os.cpu_count() or 1


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
        if settings.driver not in ("grpc", "http", "locust"):
            raise CompoundError(f"unknown driver '{settings.driver}'", hint="use grpc, http or locust")
        self.plan: DeploymentPlan = plan_spec(settings.spec)
        if settings.pipeline not in self.plan.pipelines:
            raise CompoundError(
                f"no pipeline '{settings.pipeline}' in {settings.spec}",
                hint=f"pipelines: {', '.join(sorted(self.plan.pipelines))}",
            )
        self.out = settings.out.resolve()

    def _tuned_as_served(self, batch: int) -> dict[str, Any]:
        """With the tuned profile: its handlers chained in-process as its instance runs them (its
        threads, batch `batch`), CPU per request, beside the cost curves' compute (each handler alone
        on one thread). Server CPU over this figure is what serving costs, not the plan's threads."""
        s = self.s
        if "tuned" not in s.profiles or s.tuned is None:
            return {}
        # the spec's own steps (a tuned plan may be fused, which has no step list), the tuned threads
        chain = InProcessPipeline(self.plan, s.pipeline, threads=served_threads(plan_spec(s.tuned), s.pipeline))
        try:
            cpu = chain_cpu_per_request(chain, batch, min_seconds=max(1.0, 3 * s.profile_seconds))
        finally:
            cap_native_threads(model_threads(self.plan, s.pipeline), environment=False)  # as the cost curves ran
        ms = round(cpu * 1e3, 3)
        self.log(f"  tuned handlers as served: {ms:.2f} ms CPU per request, batch {batch}, {chain.threads} thread(s)")
        return {"tuned_as_served": {"threads": chain.threads, "batch": batch, "cpu_ms_per_request": ms}}

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
                "keep_cache": s.keep_cache,
                "request_pool": REQUEST_POOL,
            },
            "compute": {**_compute_summary(curves, allocation), **self._tuned_as_served(allocation.batch)},
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
                elif name == PYTRITON_PROFILE:
                    from toolkit.bench.pytriton_peer import run_pytriton_profile

                    result = run_pytriton_profile(self.plan, s.pipeline, s, rows_file, work, self.log)
                else:
                    from toolkit.bench.rayserve import run_ray_profile

                    result = run_ray_profile(
                        self.plan,
                        s.pipeline,
                        s,
                        rows_file,
                        work,
                        self.log,
                        allocation.counts,
                        fused=name == "ray-serve-fused",
                    )
            except CompoundError as exc:
                self.log(f"  {name} failed: {exc}")
                result = {"error": str(exc) + (f" ({exc.hint})" if getattr(exc, "hint", None) else "")}
            report["profiles"][name] = result
            (self.out / "results.json").write_text(json.dumps(report, indent=1, default=_jsonable))
        report["summary"] = summarize(report)
        report["targets"] = evaluate_targets(report)
        if "tuned" in report["profiles"]:
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
            profile = spec_profile(name, source, s.pipeline, keep_cache=s.keep_cache)
        else:
            profile = build_profile(
                name, self.plan, s.pipeline, allocation, cores=s.core_budget, keep_cache=s.keep_cache
            )
        result: dict[str, Any] = {
            "description": profile.description,
            "instances": profile.instances,
            "dynamic_batching": profile.batching,
        }
        if profile.cached:  # say so wherever the figure is shown: it measures hits on a repeated pool
            result["cache_hits_included"] = (
                f"cache on for {', '.join(profile.cached)}: requests cycle {REQUEST_POOL} rows, so figures include"
                " cache hits"
            )
        if profile.cache_disabled:
            result["cache_disabled"] = profile.cache_disabled
            self.log(f"  declared cache turned off for the comparison: {', '.join(profile.cache_disabled)}")
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
        self.log(
            f"  {res.throughput_rps:.0f} req/s at batch {res.batch} on {res.workers} worker process(es),"
            f" {res.cpu_ms_per_request:.3f} ms of CPU per request"
        )
        return {
            "description": (
                f"no server: handlers chained in-process at batch {res.batch},"
                f" {res.workers} worker process(es), one per core, {res.cpu_ms_per_request:.2f} ms of CPU per request"
            ),
            "throughput_rps": res.throughput_rps,
            "batch": res.batch,
            "workers": res.workers,
            "per_worker_rps": list(res.per_worker_rps),
            "cpu_ms_per_request": round(res.cpu_ms_per_request, 3),
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


def _points(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    res = report["profiles"].get(name)
    return res.get("points", []) if isinstance(res, dict) else []


def summarize(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each measured profile's peak, over each baseline's peak (static, and the spec as written) and
    over the in-process ceiling: the ratios every generated profile is judged by."""
    peaks = {name: _best(_points(report, name)) for name in report["profiles"]}
    ceiling = report["profiles"].get("ceiling", {})
    ceiling_rps = ceiling.get("throughput_rps") if isinstance(ceiling, dict) else None
    summary: dict[str, dict[str, Any]] = {}
    for name, best in peaks.items():
        if best is None:
            continue
        row: dict[str, Any] = {
            "peak_rps": round(best["throughput_rps"], 1),
            "concurrency": best["concurrency"],
            "p95_ms": round(best["latency_ms"]["p95"], 2),
        }
        for base in BASELINES:
            other = peaks.get(base)
            row[f"x_{base}"] = round(best["throughput_rps"] / other["throughput_rps"], 2) if other else None
        row["of_ceiling"] = round(best["throughput_rps"] / ceiling_rps, 3) if ceiling_rps else None
        # server CPU per request at that point: what the serving path costs, even when the machine is shared
        served = _server_cpu_ms(best)
        row["server_cpu_ms_per_request"] = round(served, 3) if served else None
        if report["profiles"][name].get("cache_hits_included"):
            row["cache_hits_included"] = report["profiles"][name]["cache_hits_included"]
        summary[name] = row
    return summary


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark targets, each with measured values and met / missed / not measured."""
    profiles = report["profiles"]
    targets: list[dict[str, Any]] = []

    def points(name: str) -> list[dict[str, Any]]:
        return _points(report, name)

    static_best, ceiling = _best(points("static")), profiles.get("ceiling", {})
    ensemble_best = _best(points("ensemble"))
    for name in GENERATED_PROFILES:
        best = _best(points(name))
        if best is None:
            continue
        cached = profiles[name].get("cache_hits_included")
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
        if ensemble_best and name != "ensemble":
            ratio = best["throughput_rps"] / ensemble_best["throughput_rps"]
            targets.append(
                {
                    "target": f"{name} vs ensemble (the spec as written) throughput >= 1.5x",
                    "value": round(ratio, 2),
                    "met": ratio >= 1.5,
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
        targets += _cpu_targets(name, best, report["compute"], ceiling)
        for peer in RAY_PROFILES:
            targets += _peer_target(name, peer, points(name), profiles.get(peer))
        if name == "fused":
            targets += _pytriton_target(best, profiles.get(PYTRITON_PROFILE))
        if cached:
            for t in targets:
                if t["target"].startswith(name + " ") and "note" not in t:
                    t["note"] = "includes cache hits"
    return targets


def _server_cpu_ms(point: dict[str, Any]) -> Optional[float]:
    cpu = point.get("server_cpu_pct")
    return 10.0 * cpu / point["throughput_rps"] if cpu else None


def _ceiling_cpu_ms(ceiling: Any) -> Optional[float]:
    return ceiling.get("cpu_ms_per_request") if isinstance(ceiling, dict) else None


def _cpu_targets(name: str, best: dict[str, Any], compute: dict[str, Any], ceiling: Any) -> list[dict[str, Any]]:
    """Server CPU per request at the peak against what the handlers cost: timed alone in-process at
    the best batch (the cost curves), and computing the same batches side by side in the ceiling's
    workers (the caches shared as in a server), and for `tuned`, its handlers chained in-process at
    its threads (`compute.tuned_as_served`). The serving path's cost is what is left over; it is
    judged where compute dominates a request (>= 5 ms), as the ceiling target is."""
    return [target for _, target in _cpu_ratios(name, best, compute, ceiling)]


def _cpu_ratios(
    name: str, best: dict[str, Any], compute: dict[str, Any], ceiling: Any
) -> list[tuple[str, dict[str, Any]]]:
    """_cpu_targets' targets, each with its key in tuned_ratios' `server_cpu_per_request`."""
    served = _server_cpu_ms(best)
    if not served:
        return []
    alone = compute["per_request_ms_best"]
    applies = alone >= 5.0
    where = f"server CPU {served:.2f} ms per request at c={best['concurrency']}"

    def against(key: str, reference: str, ms: float, note: str) -> tuple[str, dict[str, Any]]:
        target = {
            "target": f"{name} server CPU per request <= 1.3x {reference}",
            "value": round(served / ms, 2),
            "met": served / ms <= 1.3,
            "applies": applies,
            "note": f"{where}; {note}",
        }
        return key, target

    ratios = [
        against(
            "x_compute_alone",
            f"the handlers' compute (timed alone, batch {compute['best_batch']})",
            alone,
            f"compute {alone:.2f} ms",
        )
    ]
    in_ceiling = _ceiling_cpu_ms(ceiling)
    if in_ceiling:
        ratios.append(
            against(
                "x_ceiling",
                "the ceiling's (the same handlers in-process, side by side)",
                in_ceiling,
                f"ceiling {in_ceiling:.2f} ms ({in_ceiling / alone:.2f}x the compute timed alone)",
            )
        )
    as_served = compute.get("tuned_as_served") if name == "tuned" else None
    if as_served:
        chained = as_served["cpu_ms_per_request"]
        ratios.append(
            against(
                "x_handlers_as_served",
                "its handlers' as its instance runs them"
                f" (chained in-process, {as_served['threads']} thread(s), batch {as_served['batch']})",
                chained,
                f"handlers chained {chained:.2f} ms ({chained / alone:.2f}x the compute timed alone)",
            )
        )
    return ratios


def _peer_target(
    name: str, peer: str, ours: list[dict[str, Any]], result: Optional[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`name` against one Ray Serve deployment: throughput at a P95 no higher than the peer's peak point."""
    if result is None:
        return []
    label = f"{name} >= 1.5x {peer} throughput at equal or lower P95"
    peer_best = _best(result.get("points", []))
    if peer_best is None:
        return [{"target": label, "value": None, "met": None, "note": result.get("error", "not measured")}]
    eligible = [p for p in ours if p["latency_ms"]["p95"] <= peer_best["latency_ms"]["p95"]]
    ours_best = max(eligible, key=lambda p: p["throughput_rps"], default=None)
    value = (ours_best["throughput_rps"] if ours_best else 0.0) / peer_best["throughput_rps"]
    target: dict[str, Any] = {"target": label, "value": round(value, 2), "met": value >= 1.5}
    # A peer runs many more processes than a Triton deployment; when something else shares the cores, the
    # kernel's split between them, not the serving path, decides the ratio: no verdict then.
    other = max((p.get("other_cpu_pct") or 0.0) for p in (peer_best, ours_best) if p is not None)
    if other > SHARED_MACHINE_PCT:
        target["met"] = None
        target["note"] = (
            f"not established: the machine was shared during the run (other CPU {other:.0f}% of a core at the"
            " compared points); compare server CPU per request instead"
        )
    return [target]


def _pytriton_target(fused: dict[str, Any], result: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fused profile against PyTriton on the same handlers: peak over peak, with both server
    CPU costs per request in the note (the reason when the ratio falls short)."""
    if result is None:
        return []
    label = f"fused >= 1.2x {PYTRITON_PROFILE} throughput (peak over peak)"
    peer = _best(result.get("points", []))
    if peer is None:
        return [{"target": label, "value": None, "met": None, "note": result.get("error", "not measured")}]
    value = fused["throughput_rps"] / peer["throughput_rps"]
    target: dict[str, Any] = {"target": label, "value": round(value, 2), "met": value >= 1.2}
    costs = [
        f"{who} {served:.3f} ms at c={p['concurrency']}"
        for who, p in (("fused", fused), (PYTRITON_PROFILE, peer))
        if (served := _server_cpu_ms(p))
    ]
    if costs:
        target["note"] = "server CPU per request: " + ", ".join(costs)
    other = max((p.get("other_cpu_pct") or 0.0) for p in (fused, peer))
    if other > SHARED_MACHINE_PCT:
        target["met"] = None
        target["note"] = target.get("note", "") + (
            f"; not established: the machine was shared (other CPU {other:.0f}% of a core at the compared points)"
        )
    return [target]


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
        f"{'profile':<15} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
        f" {'srv CPU':>8} {'cli CPU':>8} {'other':>6}"
    )
    lines += [header, "-" * len(header)]
    for name, res in report["profiles"].items():
        if "error" in res:
            lines.append(f"{name:<15} not measured: {res['error']}")
            continue
        if "points" not in res:
            lines.append(
                f"{name:<15} {'-':>5} {res['throughput_rps']:9.1f} {'':>8} {'':>8} {'':>8} {'':>6} {'':>8} {'':>8}"
                f"  ({res['description']})"
            )
            continue
        for p in res["points"]:
            lat = p["latency_ms"]
            lines.append(
                f"{name:<15} {p['concurrency']:>5} {p['throughput_rps']:9.1f}"
                f" {lat['p50']:8.2f} {lat['p95']:8.2f} {lat['p99']:8.2f} {p['errors']:>6} "
                f"{pct(p.get('server_cpu_pct')):>8} {pct(p['client_cpu_pct']):>8} {pct(p.get('other_cpu_pct')):>6}"
            )
        if "cold_start_s" in res:
            lines.append(
                f"{'':<15} cold start {res['cold_start_s']:.2f} s (ready {res['ready_s']:.2f} s),"
                f" first request {res['first_request_ms']:.1f} ms"
            )
        if res.get("cache_hits_included"):
            lines.append(f"{'':<15} NOTE: {res['cache_hits_included']}")
    if report.get("summary"):
        lines.append(
            "peaks (each profile at its best concurrency), over static, over ensemble (the spec as written),"
            " as a fraction of the ceiling, and the server's CPU time per request there:"
        )
        header = (
            f"{'profile':<15} {'req/s':>9} {'conc':>5} {'p95 ms':>8} {'x static':>9} {'x ensemble':>11} {'ceiling':>8}"
            f" {'CPU ms/req':>11}"
        )
        lines += [header, "-" * len(header)]
        for name, row in report["summary"].items():
            notes = row.get("cache_hits_included", "")
            lines.append(
                f"{name:<15} {row['peak_rps']:9.1f} {row['concurrency']:>5} {row['p95_ms']:8.2f}"
                f" {_ratio(row.get('x_static')):>9} {_ratio(row.get('x_ensemble')):>11}"
                f" {_frac(row.get('of_ceiling')):>8} {_ms(row.get('server_cpu_ms_per_request')):>11}"
                + (f"  ({notes})" if notes else "")
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


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _frac(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def tuned_ratios(report: dict[str, Any]) -> dict[str, Any]:
    """The tuned profile against every other profile of the same bench run: peak over peak, and at
    each concurrency both measured; against the ceiling, as a fraction. Figures of one run only."""
    profiles = report["profiles"]

    def points(name: str) -> dict[int, float]:
        res = profiles.get(name)
        if not isinstance(res, dict) or "points" not in res:
            return {}
        return {p["concurrency"]: p["throughput_rps"] for p in res["points"] if p["completed"] > 0}

    tuned = points("tuned")
    if not tuned:
        return {}
    peak = max(tuned.values())
    ratios: dict[str, Any] = {"tuned_peak_rps": round(peak, 1)}
    for name in profiles:
        if name == "tuned":
            continue
        other = points(name)
        if other:
            ratios[f"vs_{name}"] = {
                "peak": round(peak / max(other.values()), 2),
                **{f"c={c}": round(tuned[c] / other[c], 2) for c in sorted(other) if c in tuned and other[c] > 0},
            }
        elif isinstance(profiles[name], dict) and profiles[name].get("throughput_rps"):
            ceiling = profiles[name]["throughput_rps"]
            ratios[f"of_{name}"] = {
                "peak": round(peak / ceiling, 3),
                **{f"c={c}": round(v / ceiling, 3) for c, v in sorted(tuned.items())},
            }
    best = _best(profiles["tuned"]["points"])
    served = _server_cpu_ms(best) if best else None
    if best and served:
        ratios["server_cpu_per_request"] = {
            "ms": round(served, 3),
            **{key: t["value"] for key, t in _cpu_ratios("tuned", best, report["compute"], profiles.get("ceiling"))},
        }
    return ratios
