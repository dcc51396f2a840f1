"""`compound tune`: profile every handler in-process, build candidate plans from the cost curves
(toolkit/tune/candidates.py), measure the promising ones on the real server with the bench load generator
(measure.measure_server), and write the winner as a spec in the user's own schema plus a report.

Within a time budget: the handlers are profiled first (a few seconds), then as many candidates as
fit are measured, the spec as written first (the baseline every choice is compared against), then
by predicted throughput. Every server is started by measure_server and stopped before it returns,
whatever happens, so tuning never leaves one running.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toolkit.bench.chain import InProcessPipeline
from toolkit.bench.costs import profile_pipeline, thread_scaling
from toolkit.bench.driver import Call
from toolkit.bench.inputs import sample_rows
from toolkit.bench.machine import REQUEST_POOL, machine_info
from toolkit.bench.measure import measure_server
from toolkit.core.errors import CompoundError
from toolkit.plan import DeploymentPlan, Device, build_plan
from toolkit.spec.schema import LoadedSpec, Spec, load_spec
from toolkit.tune.candidates import Candidate, apply_candidate, candidates, measurement_plan, spec_yaml

SERVER_START_GUESS_S = 4.0  # start + first response + stop, until one candidate has been timed
RESERVE_S = 5.0  # kept back for writing the spec and report
KEEP_WRITTEN_WITHIN = 0.02  # a plan must beat the spec as written by more than this to replace it
TIE_WITHIN = 0.05  # plans this close to the best throughput are a tie, settled by the lower P95


@dataclass
class TuneSettings:
    spec: Path
    out: Path
    pipelines: list[str] = field(default_factory=list)  # empty: every static pipeline
    cores: int = 0  # 0: os.cpu_count()
    gpus: int = 0
    slo_p95_ms: Optional[float] = None
    concurrency: int = 64
    budget_s: float = 600.0
    report: Optional[Path] = None  # default: beside the tuned spec, <stem>.report.{json,md}
    command: str = ""

    @property
    def core_budget(self) -> int:
        import os

        return self.cores or os.cpu_count() or 1


class Progress:
    """A progress bar on a terminal (rich), plain lines otherwise; every message is logged either way."""

    def __init__(self, log: Callable[[str], None], total: int, show_bar: bool) -> None:
        self.log = log
        self.bar: Any = None
        self.total = total
        if show_bar:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

                self.bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(),
                    console=Console(stderr=True),
                )
                self.task = self.bar.add_task("tuning", total=total)
                self.bar.start()
            except ImportError:
                self.bar = None

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        else:
            self.log(message)

    def step(self, description: str, advance: int = 0, total: Optional[int] = None) -> None:
        if self.bar is not None:
            if total is not None:
                self.bar.update(self.task, total=total)
            self.bar.update(self.task, description=description, advance=advance)
        else:
            self.log(description)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Tuner:
    def __init__(self, settings: TuneSettings, log: Callable[[str], None] = print, show_bar: bool = False) -> None:
        self.s = settings
        self.log = log
        self.show_bar = show_bar
        self.loaded = load_spec(settings.spec)
        self.device: Device = "gpu" if settings.gpus > 0 else "cpu"
        self.plan = build_plan(self.loaded, self.device)
        out = settings.out.resolve()
        if out.parent != settings.spec.resolve().parent:
            raise CompoundError(
                f"-o {settings.out}: the tuned spec must be written in the spec's folder ({settings.spec.parent})",
                hint="handlers (and bench_inputs.json) are found relative to the spec's folder; "
                f"e.g. -o {settings.spec.parent / (settings.spec.stem + '.tuned.yaml')}",
            )
        if out == settings.spec.resolve():
            raise CompoundError(f"-o {settings.out} is the spec itself", hint="write the tuned spec to another file")
        if settings.budget_s < 10:
            raise CompoundError(f"--budget {settings.budget_s:g}s is too short to measure anything", hint="give 30s+")
        self.pipelines = self._pipelines()

    def _pipelines(self) -> list[str]:
        static = [p for p in self.plan.pipelines if self._unfused(p).pipelines[p].kind == "ensemble"]
        if not self.s.pipelines:
            if not static:
                raise CompoundError(
                    f"{self.s.spec}: no static pipeline to tune",
                    hint="tune measures static DAGs (no switch/loop/map); orchestrated pipelines keep their plan",
                )
            return static
        for p in self.s.pipelines:
            if p not in self.plan.pipelines:
                raise CompoundError(
                    f"no pipeline '{p}' in {self.s.spec}", hint=f"pipelines: {', '.join(sorted(self.plan.pipelines))}"
                )
            if p not in static:
                raise CompoundError(
                    f"pipeline '{p}' has control flow (switch/loop/map): tune measures static pipelines",
                    hint="its plan stays as written; `fuse: true` is the fast path for such pipelines",
                )
        return list(dict.fromkeys(self.s.pipelines))

    def _unfused(self, pipeline: str, spec: Optional[Spec] = None) -> DeploymentPlan:
        """The plan with only `pipeline` and its models, unfused: what is profiled in-process."""
        spec = spec or self.loaded.spec
        p = spec.pipelines[pipeline].model_copy(update={"fuse": False, "instances": None})
        used = _step_models(spec, pipeline)
        only = spec.model_copy(update={"pipelines": {pipeline: p}, "models": {m: spec.models[m] for m in used}})
        return build_plan(LoadedSpec(only, self.loaded.path, {}), self.device)

    def _deployable(self, spec: Spec, pipeline: str) -> DeploymentPlan:
        """The candidate spec with only `pipeline` and its models: what one measurement deploys."""
        used = _step_models(spec, pipeline)
        only = spec.model_copy(
            update={"pipelines": {pipeline: spec.pipelines[pipeline]}, "models": {m: spec.models[m] for m in used}}
        )
        return build_plan(LoadedSpec(only, self.loaded.path, {}), self.device)

    def run(self) -> dict[str, Any]:
        s = self.s
        began = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix="compound-tune-"))
        progress = Progress(self.log, total=len(self.pipelines), show_bar=self.show_bar)
        tuned = self.loaded.spec
        report: dict[str, Any] = {
            "spec": str(s.spec),
            "tuned_spec": str(s.out),
            "command": s.command,
            "machine": machine_info(),
            "settings": {
                "cores": s.core_budget,
                "gpus": s.gpus,
                "p95_slo_ms": s.slo_p95_ms,
                "concurrency": s.concurrency,
                "budget_s": s.budget_s,
            },
            "pipelines": {},
        }
        try:
            for k, pipeline in enumerate(self.pipelines):
                left = s.budget_s - (time.perf_counter() - began) - RESERVE_S
                share = left / (len(self.pipelines) - k)
                result = self._tune_pipeline(pipeline, share, work, progress)
                report["pipelines"][pipeline] = result
                tuned = apply_candidate(tuned, pipeline, result["_choice"])
        finally:
            progress.close()
            shutil.rmtree(work, ignore_errors=True)
        report["elapsed_s"] = round(time.perf_counter() - began, 1)
        for result in report["pipelines"].values():
            result.pop("_choice")
        self._write(tuned, report)
        return report

    def _tune_pipeline(self, pipeline: str, budget_s: float, work: Path, progress: Progress) -> dict[str, Any]:
        s = self.s
        began = time.perf_counter()
        base = self._unfused(pipeline)
        progress.step(f"{pipeline}: profiling handlers in-process", advance=0)
        chain = InProcessPipeline(base, pipeline)
        profile_s = 0.3 if budget_s >= 240 else 0.1
        curves = profile_pipeline(base, pipeline, min_seconds=profile_s, chain=chain)
        table = {m: dict(zip(c.batch_sizes, c.seconds)) for m, c in curves.items()}
        written = self.plan.pipelines[pipeline]
        written_counts = {m: self.plan.models[m].instance_count for m in written.models}
        gpu = frozenset(m for m in written.models if self.plan.models[m].instance_kind == "KIND_GPU")
        taken = frozenset(self.loaded.spec.models) | frozenset(self.loaded.spec.pipelines)
        batching, _ = candidates(base.pipelines[pipeline], table, s.core_budget, written_counts, None, s.slo_p95_ms)
        speedups: dict[str, dict[int, float]] = {}
        if s.core_budget >= 2:
            speedups = thread_scaling(base, pipeline, batching.batch, (2,), min_seconds=profile_s, chain=chain)
        del chain
        batching, plans = candidates(
            base.pipelines[pipeline],
            table,
            s.core_budget,
            written_counts,
            speedups,
            s.slo_p95_ms,
            gpu,
            taken,
            concurrency=s.concurrency,
        )
        progress.step(f"{pipeline}: profiled in {time.perf_counter() - began:.0f} s", advance=1)
        for m, c in curves.items():
            per_row = ", ".join(f"{b}: {sec / b * 1e3:.3f}" for b, sec in zip(c.batch_sizes, c.seconds))
            progress.say(f"  {m}: ms per row at batch {{{per_row}}}")
        progress.say(f"  {batching.why}")
        for candidate in plans:
            progress.say(
                f"  candidate {candidate.name}: {candidate.describe()} (predicted {candidate.predicted_rps:.0f} req/s)"
            )

        rows_file = work / f"rows-{pipeline}.npz"
        np.savez(rows_file, **sample_rows(base, pipeline, REQUEST_POOL, seed=0))
        p = self.loaded.spec.pipelines[pipeline]
        stages = [[Call(pipeline, {t: t for t in p.inputs}, {t: t for t in p.outputs})]]
        measured: dict[str, dict[str, Any]] = {}
        start_s = SERVER_START_GUESS_S
        left = budget_s - (time.perf_counter() - began)
        count, point_s, warmup_s = measurement_plan(len(plans), left, start_s)
        if count == 0:
            raise CompoundError(
                f"pipeline '{pipeline}': the budget left after profiling ({left:.0f} s) measures no candidate",
                hint="give a longer --budget",
            )
        progress.total += count
        progress.step(f"{pipeline}: measuring {count} of {len(plans)} candidates", total=progress.total)
        for k, candidate in enumerate(plans):
            # re-plan with the measured start time: shorter points rather than fewer candidates, down to the minimum
            fits, replanned, _ = measurement_plan(len(plans) - k, budget_s - (time.perf_counter() - began), start_s)
            if fits == 0:
                measured[candidate.name] = {"skipped": "not measured: outside the time budget"}
                continue
            point_s = min(point_s, replanned)
            warmup_s = min(2.0, max(0.5, point_s / 4))
            progress.step(f"{pipeline}: measuring {candidate.name} ({k + 1}/{count})")
            spec = apply_candidate(self.loaded.spec, pipeline, candidate)
            t0 = time.perf_counter()
            try:
                result = measure_server(
                    self._deployable(spec, pipeline),
                    pipeline,
                    stages,
                    rows_file,
                    [s.concurrency],
                    point_s,
                    warmup_s,
                    work / "repos" / f"{pipeline}-{candidate.name}",
                    work,
                    f"{pipeline}-{candidate.name}",
                    lambda m: None,
                )
                point = result["points"][0]
                measured[candidate.name] = {
                    "throughput_rps": point["throughput_rps"],
                    "p50_ms": point["latency_ms"]["p50"],
                    "p95_ms": point["latency_ms"]["p95"],
                    "errors": point["errors"],
                    "server_cpu_pct": point.get("server_cpu_pct"),
                    "client_cpu_pct": point.get("client_cpu_pct"),
                    "other_cpu_pct": point.get("other_cpu_pct"),
                    "cold_start_s": result["cold_start_s"],
                    "duration_s": point_s,
                }
                start_s = max(1.0, time.perf_counter() - t0 - point_s - warmup_s)
                progress.say(
                    f"  {candidate.name}: {point['throughput_rps']:.1f} req/s, p95 {point['latency_ms']['p95']:.1f} ms"
                    f" at c={s.concurrency} (errors {point['errors']})"
                )
            except CompoundError as exc:
                measured[candidate.name] = {"error": str(exc)}
                progress.say(f"  {candidate.name} failed: {exc}")
            progress.step(f"{pipeline}: measured {candidate.name}", advance=1)
        choice, why = choose(plans, measured, s.slo_p95_ms)
        progress.say(f"{pipeline}: chose {choice.name}: {why}")
        return {
            "cost_curves_s": {m: c.to_json() for m, c in curves.items()},
            "thread_speedup": speedups,
            "batching": {"batch": batching.batch, "why": batching.why},
            "measurement": {"concurrency": s.concurrency, "duration_s": point_s, "warmup_s": warmup_s},
            "candidates": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "plan": c.describe(),
                    "why": c.why,
                    "max_batch_size": c.max_batch or None,
                    "max_queue_delay_us": c.queue_delay_us,
                    "preferred_batch_size": c.preferred_batch,
                    "fuse_groups": {g: list(ms) for g, ms in c.groups},
                    "predicted_rps": round(c.predicted_rps, 1),
                    **measured.get(c.name, {}),
                }
                for c in plans
            ],
            "choice": choice.name,
            "why": why,
            "elapsed_s": round(time.perf_counter() - began, 1),
            "_choice": choice,
        }

    def _write(self, tuned: Spec, report: dict[str, Any]) -> None:
        s = self.s
        header = [
            f"Tuned by `compound tune` from {s.spec.name} on {report['machine']['cores']} cores"
            f" ({report['machine']['cpu'] or 'unknown CPU'}), concurrency {s.concurrency}"
            + (f", P95 SLO {s.slo_p95_ms:g} ms" if s.slo_p95_ms else "")
            + ".",
        ]
        for name, result in report["pipelines"].items():
            header.append(f"{name}: {result['choice']}: {result['why']}")
        header.append(
            f"Candidates and measurements: {self.report_paths()[1].name}. Comments of the original are not kept."
        )
        text = spec_yaml(tuned, header)
        out = s.out.resolve()
        staging = out.with_name(f".{out.name}.tmp")
        staging.write_text(text, encoding="utf-8")
        try:
            build_plan(load_spec(staging), self.device)  # it must plan as it did here
        except Exception:
            staging.unlink(missing_ok=True)
            raise
        staging.replace(out)
        json_path, md_path = self.report_paths()
        json_path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
        md_path.write_text(format_report(report), encoding="utf-8")

    def report_paths(self) -> tuple[Path, Path]:
        folder = self.s.report or self.s.out.resolve().parent
        stem = self.s.out.stem
        return folder / f"{stem}.report.json", folder / f"{stem}.report.md"


def _step_models(spec: Spec, pipeline: str) -> list[str]:
    from toolkit.spec.schema import ModelStep

    return list(dict.fromkeys(s.model for s in spec.pipelines[pipeline].steps if isinstance(s, ModelStep)))


def choose(
    plans: list[Candidate], measured: dict[str, dict[str, Any]], slo_p95_ms: Optional[float]
) -> tuple[Candidate, str]:
    """The highest measured throughput among the candidates that served without errors within the
    SLO (those within TIE_WITHIN of it tie, and the lowest P95 wins: a few percent of throughput is
    not worth a much longer tail); the spec as written stays unless another plan beats it by more
    than KEEP_WRITTEN_WITHIN."""
    by_name = {c.name: c for c in plans}
    ok = {n: m for n, m in measured.items() if "throughput_rps" in m and m["errors"] == 0 and m["throughput_rps"] > 0}
    if not ok:
        return plans[0], "no candidate was measured without errors: the spec is kept as written"
    eligible = {n: m for n, m in ok.items() if slo_p95_ms is None or m["p95_ms"] <= slo_p95_ms}
    if not eligible:
        best = min(ok, key=lambda n: ok[n]["p95_ms"])
        return by_name[best], (
            f"no candidate met the {slo_p95_ms:g} ms P95 SLO; {best} came closest"
            f" (p95 {ok[best]['p95_ms']:.1f} ms, {ok[best]['throughput_rps']:.0f} req/s)"
        )
    fastest = max(eligible, key=lambda n: eligible[n]["throughput_rps"])
    top = eligible[fastest]["throughput_rps"]
    written = eligible.get("as-written")
    slo = f" within the {slo_p95_ms:g} ms P95 SLO" if slo_p95_ms else ""
    if written and fastest != "as-written" and top / written["throughput_rps"] <= 1 + KEEP_WRITTEN_WITHIN:
        return by_name["as-written"], (
            f"no plan beat the spec as written by more than {KEEP_WRITTEN_WITHIN:.0%}"
            f" ({fastest}: {top / written['throughput_rps']:.2f}x): kept"
        )
    best = min(
        (n for n in eligible if eligible[n]["throughput_rps"] * (1 + TIE_WITHIN) >= top),
        key=lambda n: eligible[n]["p95_ms"],
    )
    why = f"the highest measured throughput{slo}"
    if best != fastest:
        why = (
            f"within {TIE_WITHIN:.0%} of the highest throughput{slo} ({fastest}: {top:.0f} req/s,"
            f" p95 {eligible[fastest]['p95_ms']:.1f} ms), the lowest P95"
        )
    why += f": {eligible[best]['throughput_rps']:.0f} req/s, p95 {eligible[best]['p95_ms']:.1f} ms"
    if written and best != "as-written":
        why += f", {eligible[best]['throughput_rps'] / written['throughput_rps']:.2f}x the spec as written"
    return by_name[best], why


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: per pipeline, the cost model, every candidate measured, the choice."""
    s = report["settings"]
    lines = [
        f"# compound tune: {report['spec']} -> {report['tuned_spec']}",
        "",
        f"{report['machine']['cores']} cores ({report['machine']['cpu'] or 'unknown CPU'}); budget {s['cores']} cores,"
        f" {s['gpus']} GPU(s); concurrency {s['concurrency']}"
        + (f"; P95 SLO {s['p95_slo_ms']:g} ms" if s["p95_slo_ms"] else "")
        + f"; tuning took {report['elapsed_s']:.0f} s of a {s['budget_s']:.0f} s budget.",
        "",
    ]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    for name, result in report["pipelines"].items():
        m = result["measurement"]
        lines += [
            f"## {name}",
            "",
            f"Batching: {result['batching']['why']}. Each candidate measured {m['duration_s']:g} s after"
            f" {m['warmup_s']:g} s of warmup, closed loop of {m['concurrency']} clients (bench's load generator).",
            "",
            "| candidate | plan | predicted req/s | req/s | p50 ms | p95 ms | errors | server CPU |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in result["candidates"]:
            if "throughput_rps" in c:
                cpu = "-" if c.get("server_cpu_pct") is None else f"{c['server_cpu_pct']:.0f}%"
                lines.append(
                    f"| {c['name']} | {c['plan']} | {c['predicted_rps']:.0f} | {c['throughput_rps']:.1f} |"
                    f" {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | {c['errors']} | {cpu} |"
                )
            else:
                lines.append(
                    f"| {c['name']} | {c['plan']} | {c['predicted_rps']:.0f} |"
                    f" {c.get('error') or c.get('skipped', '-')} | | | | |"
                )
        lines += ["", f"**Choice: {result['choice']}** — {result['why']}.", ""]
        for c in result["candidates"]:
            lines.append(f"- {c['name']}: {c['why']}")
        lines.append("")
    return "\n".join(lines)


def tuned_spec_path(spec: Path) -> Path:
    """Where `generate --tune` writes the tuned spec: beside the spec, <stem>.tuned.yaml."""
    return spec.with_name(f"{spec.stem}.tuned.yaml")


def is_tty() -> bool:
    return sys.stderr.isatty()
