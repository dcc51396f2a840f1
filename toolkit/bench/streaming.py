"""`compound bench` on a streaming pipeline: time to first token and tokens/s of the spec as written,
against one-stream-at-a-time serving of the same generator and against a static deployment whose
generation answers once, at the end.

Profiles (each rendered by compound from the spec, served by a local tritonserver, driven by the same
closed-loop streaming client, `toolkit.bench.stream_driver`, at each concurrency):

- ``streaming``: the spec as written. A streaming model with ``max_batch_size > 0`` and start/step
  runs continuous batching (one step for every stream in flight).
- ``fused``: the pipeline with ``fuse: true``: one decoupled model runs the steps before the streaming
  one in-process and the streaming loop itself, so a token is one hop from the loop to the client
  (an ensemble passes each response of its streaming step on through the ensemble scheduler).
- ``one-at-a-time``: the same repository with the streaming model's loop set to its plain generator
  and one stream per instance (``compound.stream: generator``, ``compound.max_streams: 1``): a
  request waits until the stream before it has ended. Needs a generator ``__call__``.
- ``static``: the streaming model replaced by a plain batched model (dynamic batching as declared)
  that runs the same handler to the end for every row of its batch and answers with the whole
  answer (`toolkit.bench.whole_answer`); its time to first token is the answer's latency.

The report: per profile and concurrency, time to first token p50/p95/p99, inter-token latency p50/p95,
tokens/s, streams completed/failed, server and client CPU; the ratios the streaming targets are judged
by (docs/streaming.md, "Bench").
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toolkit.bench.inputs import sample_rows
from toolkit.bench.machine import machine_info
from toolkit.bench.measure import ProcessCpu, pct, run_driver
from toolkit.bench.profiles import spec_profile, tensor_datatypes
from toolkit.bench.stream_driver import WHOLE_TOKENS, StreamJob
from toolkit.core.errors import CompoundError
from toolkit.plan import DeploymentPlan, build_plan, plan_spec
from toolkit.plan.graph import import_handler_module
from toolkit.plan.streaming import generator_call
from toolkit.spec.schema import LoadedSpec, ModelStep, TensorSpec

STREAM_PROFILES = ("streaming", "fused", "one-at-a-time", "static")
REQUESTS = 64  # distinct requests the clients cycle through
WHOLE_PACKAGE = "compound_whole"  # the static profile's handler package, in the bench's work folder
DESCRIPTIONS = {
    "streaming": "the spec as written: {mode}",
    "fused": "fuse: true: every step in one decoupled model, the streaming loop inside it (no ensemble hop per token)",
    "one-at-a-time": "the same generator, one stream at a time per instance (the next request waits for the end)",
    "static": "not streaming: the same handler run to its end per row, dynamic batching, the whole answer at once",
}


@dataclass
class StreamBenchSettings:
    spec: Path
    pipeline: str
    out: Path
    profiles: list[str] = field(default_factory=lambda: list(STREAM_PROFILES))
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    duration_s: float = 10.0
    warmup_s: float = 2.0
    protocol: str = "grpc"  # or "http" (server-sent events); the static profile always answers over gRPC
    command: str = ""


def is_streaming(spec: Path, pipeline: str) -> bool:
    """Whether `compound bench` measures this pipeline as a stream (its last step streams)."""
    plan = plan_spec(spec)
    return pipeline in plan.pipelines and plan.pipelines[pipeline].streaming


def streaming_model(plan: DeploymentPlan, pipeline: str) -> str:
    """The pipeline's streaming model (its last step's)."""
    found = [m for m in plan.pipelines[pipeline].models if plan.models[m].stream is not None]
    if not found:
        raise CompoundError(f"pipeline '{pipeline}' does not stream", hint="no model of it has stream: true")
    return found[-1]


class StreamBench:
    """Deploys each streaming profile in turn and measures it (see the module docstring)."""

    def __init__(self, settings: StreamBenchSettings, log: Callable[[str], None] = print) -> None:
        self.s = settings
        self.log = log
        unknown = [p for p in settings.profiles if p not in STREAM_PROFILES]
        if unknown:
            raise CompoundError(
                f"unknown profile(s) {unknown} for a streaming pipeline",
                hint=f"choose from {', '.join(STREAM_PROFILES)}",
            )
        if settings.protocol not in ("grpc", "http"):
            raise CompoundError(f"unknown protocol '{settings.protocol}'", hint="use grpc or http")
        self.plan = plan_spec(settings.spec)
        if settings.pipeline not in self.plan.pipelines:
            raise CompoundError(
                f"no pipeline '{settings.pipeline}' in {settings.spec}",
                hint=f"pipelines: {', '.join(sorted(self.plan.pipelines))}",
            )
        self.model = streaming_model(self.plan, settings.pipeline)
        self.out = settings.out.resolve()

    def run(self) -> dict[str, Any]:
        s = self.s
        work = self.out / "work"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        mode = self.plan.models[self.model].stream
        report: dict[str, Any] = {
            "spec": str(s.spec),
            "pipeline": s.pipeline,
            "streaming_model": self.model,
            "stream_mode": mode,
            "command": s.command,
            "machine": machine_info(),
            "settings": {
                "profiles": s.profiles,
                "concurrency": s.concurrency,
                "duration_s": s.duration_s,
                "warmup_s": s.warmup_s,
                "protocol": s.protocol,
                "requests": REQUESTS,
            },
            "profiles": {},
        }
        requests = self._requests()
        for name in s.profiles:
            self.log(f"profile {name} ...")
            try:
                report["profiles"][name] = self._profile(name, requests, work)
            except CompoundError as exc:
                report["profiles"][name] = {"error": exc.message, "hint": exc.hint}
                self.log(f"  failed: {exc.message}")
        report["ratios"] = stream_ratios(report)
        report["targets"] = stream_targets(report)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        (self.out / "results.md").write_text(format_stream_report(report) + "\n", encoding="utf-8")
        return report

    # --- profiles ---------------------------------------------------------------------------

    def _requests(self) -> list[list[tuple[str, str, list[int], list[Any]]]]:
        """Batch-1 requests from the spec folder's bench_inputs.json (else random rows)."""
        p = self.plan.pipelines[self.s.pipeline]
        rows = sample_rows(self.plan, self.s.pipeline, REQUESTS, seed=0)
        datatypes = tensor_datatypes(self.plan, self.s.pipeline)
        batched = p.max_batch_size > 0
        out = []
        for i in range(REQUESTS):
            tensors = []
            for name, array in rows.items():
                row = array[i : i + 1] if batched else array[i]
                flat = [v.decode("utf-8") if isinstance(v, bytes) else v.item() for v in np.asarray(row).reshape(-1)]
                tensors.append((name, datatypes[name], list(row.shape), flat))
            out.append(tensors)
        return out

    def _profile(self, name: str, requests: list[Any], work: Path) -> dict[str, Any]:
        from toolkit.repository.render import render_repository

        written = spec_profile("written", self.plan, self.s.pipeline).plan
        mode = self.plan.models[self.model].stream
        if name == "static":
            plan = whole_answer_plan(written, self.s.pipeline, self.model, work / "static-spec")
        elif name == "fused":
            plan = fused_plan(written, self.s.pipeline)
        else:
            plan = written
        if name == "one-at-a-time" and plan.pipelines[self.s.pipeline].kind == "fused":
            raise CompoundError("one-at-a-time: the pipeline is fused; its streaming loop lives in the fused model")
        if name == "one-at-a-time":
            self._check_generator()
        repo = render_repository(plan, self.out / "repos" / name)
        if name == "one-at-a-time":
            one_stream_at_a_time(repo / self.model / "config.pbtxt")
        description = DESCRIPTIONS[name].format(
            mode="continuous batching (start/step)" if mode == "batch" else "the plain generator, streams in turn"
        )
        result: dict[str, Any] = {"description": description, "repository": str(repo), "points": []}
        result.update(self._serve(name, repo, requests, work, result))
        return result

    def _check_generator(self) -> None:
        ref = self.plan.models[self.model].handler
        entry = ref.source if not ref.is_package else ref.source / "__init__.py"
        cls = getattr(import_handler_module(entry, self.plan.loaded.folder, fresh=False), ref.cls)
        if not generator_call(cls):
            raise CompoundError(
                f"one-at-a-time: handler of '{self.model}' has no generator __call__ (only start/step)",
                hint="give it a __call__ that yields, or leave one-at-a-time out of --profiles",
            )

    def _serve(self, name: str, repo: Path, requests: list[Any], work: Path, result: dict[str, Any]) -> dict[str, Any]:
        from toolkit.core.system import free_ports
        from toolkit.targets.local import LocalServer

        http, grpc, metrics = free_ports(3)
        began = time.perf_counter()
        points: list[dict[str, Any]] = []
        with LocalServer(
            repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=work / f"tritonserver-{name}.log"
        ) as server:
            result["ready_s"] = round(time.perf_counter() - began, 2)
            whole = name == "static"
            protocol = "grpc" if whole else self.s.protocol
            url = server.grpc_url if protocol == "grpc" else server.http_url
            cpu = ProcessCpu(server.pid) if server.pid else None
            probe = self._job(url, protocol, whole, requests, 1, 0.5, 0.0, work / f"probe-{name}.json")
            first = run_driver(probe, work, None, self.log, module="toolkit.bench.stream_driver")
            if not first["streams_completed"]:
                raise CompoundError(f"{name}: the first request failed: {first['errors']}")
            for c in self.s.concurrency:
                job = self._job(
                    url, protocol, whole, requests, c, self.s.duration_s, self.s.warmup_s, work / f"{name}-{c}.json"
                )
                loop = LoopTimes(server.metrics_url, self.model) if not whole else None
                point = run_driver(
                    job, work, cpu, self.log, module="toolkit.bench.stream_driver", on_mark=loop.mark if loop else None
                )
                if loop is not None:
                    point.update(loop.figures())
                if point.get("server_cpu_pct") and point["tokens"]:
                    point["server_cpu_ms_per_token"] = round(10.0 * point["server_cpu_pct"] / point["tokens_per_s"], 4)
                points.append(point)
                self.log("  " + point_line(point))
        return {"points": points}

    def _job(
        self,
        url: str,
        protocol: str,
        whole: bool,
        requests: list[Any],
        concurrency: int,
        duration_s: float,
        warmup_s: float,
        result: Path,
    ) -> StreamJob:
        return StreamJob(
            url=url,
            pipeline=self.s.pipeline,
            requests=requests,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            result=str(result),
            protocol=protocol,
            whole=whole,
        )


# --- the streaming loop's own view ---------------------------------------------------------------

FIRST_RESPONSE = "compound_stream_first_response_seconds_bucket"
INTER_RESPONSE = "compound_stream_inter_response_seconds_bucket"


class LoopTimes:
    """The streaming loop's own time to first response and gaps (templates/metrics.py's histograms,
    summed over the model's instances) over the measured window: what of the client's TTFT is the
    loop's (a wait for a place, start, the first step, the send) and what is the frontend's, the
    earlier steps' and the client's."""

    def __init__(self, metrics_url: str, component: str) -> None:
        self.url = metrics_url
        self.component = component
        self.snapshots: dict[str, dict[str, dict[float, float]]] = {}

    def mark(self, tag: str) -> None:
        from toolkit.runtime.streams import scrape

        text = scrape(self.url)
        if text is not None:
            self.snapshots[tag] = self._buckets(text)

    def _buckets(self, text: str) -> dict[str, dict[float, float]]:
        from toolkit.observe.canary import parse_metrics_lines

        found: dict[str, dict[float, float]] = {FIRST_RESPONSE: {}, INTER_RESPONSE: {}}
        for name, labels, value in parse_metrics_lines(text):
            if name in found and labels.get("component") == self.component and "le" in labels:
                bound = float(labels["le"])
                found[name][bound] = found[name].get(bound, 0.0) + value
        return found

    def figures(self) -> dict[str, Any]:
        start, end = self.snapshots.get("MEASURE_START"), self.snapshots.get("MEASURE_END")
        if start is None or end is None:
            return {}
        out = {}
        for key, name in (("loop_ttft_ms", FIRST_RESPONSE), ("loop_itl_ms", INTER_RESPONSE)):
            counts = {b: end[name].get(b, 0.0) - start[name].get(b, 0.0) for b in end[name]}
            out[key] = {f"p{q}": histogram_quantile(q / 100.0, counts) for q in (50, 95)}
        return out


def histogram_quantile(q: float, cumulative: dict[float, float]) -> Optional[float]:
    """Prometheus' histogram_quantile over cumulative bucket counts (upper bound in s -> count), in ms."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    total = cumulative[bounds[-1]]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return round(lower_bound * 1e3, 3)
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0.0
            return round((lower_bound + (bound - lower_bound) * share) * 1e3, 3)
        lower_bound, lower_count = bound, count
    return round(lower_bound * 1e3, 3)


# --- the variants -------------------------------------------------------------------------------


def one_stream_at_a_time(config: Path) -> None:
    """The streaming model's loop set to its plain generator, one stream per instance."""
    text = config.read_text(encoding="utf-8")
    for key, value in (("compound.stream", "generator"), ("compound.max_streams", "1")):
        text, found = re.subn(
            rf'(key: "{re.escape(key)}"\s*value \{{\s*string_value: )"[^"]*"', rf'\g<1>"{value}"', text
        )
        if not found:
            raise CompoundError(f"{config}: no parameter {key} (not a streaming component model)")
    config.write_text(text, encoding="utf-8")


def fused_plan(plan: DeploymentPlan, pipeline: str) -> DeploymentPlan:
    """The pipeline with fuse: true (its instances as the fused model's, when the spec declares them)."""
    p = plan.spec.pipelines[pipeline]
    if p.fuse is True:
        return plan
    fused = p.model_copy(update={"fuse": True})
    return build_plan(
        LoadedSpec(plan.spec.model_copy(update={"pipelines": {pipeline: fused}}), plan.loaded.path, {}), plan.device
    )


def whole_answer_plan(plan: DeploymentPlan, pipeline: str, model: str, folder: Path) -> DeploymentPlan:
    """The pipeline with its streaming model served whole (see toolkit.bench.whole_answer). Its handlers'
    code is copied to `folder` (the new spec's folder); the streaming handler's goes inside the wrapper
    package, so the stub imports both from the model's version folder."""
    spec = plan.spec
    p = spec.pipelines[pipeline]
    last = [s for s in p.steps if isinstance(s, ModelStep) and s.model == model]
    if not last:
        raise CompoundError(f"static: the streaming step '{model}' is not a plain step of '{pipeline}' (a branch?)")
    if folder.exists():
        shutil.rmtree(folder)
    package = folder / WHOLE_PACKAGE
    package.mkdir(parents=True)
    for name in plan.pipelines[pipeline].models:
        for rel, path in plan.models[name].handler.code_files().items():
            target = (package if name == model else folder) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    shutil.copyfile(Path(__file__).with_name("whole_answer.py"), package / "__init__.py")
    original = spec.models[model]
    outputs = {name: TensorSpec(dtype=t.dtype, dims=[-1, *t.dims[1:]]) for name, t in original.outputs.items()}
    outputs[WHOLE_TOKENS] = TensorSpec(dtype="int32", dims=[1])
    ref = plan.models[model].handler
    whole = original.model_copy(
        update={
            "handler": f"{WHOLE_PACKAGE}:WholeAnswer",
            "stream": False,
            "parameters": {**original.parameters, "compound_inner": f"{ref.module}:{ref.cls}"},
            "outputs": outputs,
            "warmup": False,  # a warmup row would generate a whole answer for nobody
        }
    )
    steps = [
        s.model_copy(update={"outputs": {**s.outputs, WHOLE_TOKENS: WHOLE_TOKENS}}) if s is last[-1] else s
        for s in p.steps
    ]
    new_pipeline = p.model_copy(update={"steps": steps, "outputs": [*p.outputs, WHOLE_TOKENS]})
    new_spec = spec.model_copy(update={"models": {**spec.models, model: whole}, "pipelines": {pipeline: new_pipeline}})
    return build_plan(LoadedSpec(new_spec, folder / plan.loaded.path.name, {}), plan.device)


# --- the report ---------------------------------------------------------------------------------


def _point(report: dict[str, Any], profile: str, concurrency: int) -> Optional[dict[str, Any]]:
    res = report["profiles"].get(profile) or {}
    return next((p for p in res.get("points", []) if p["concurrency"] == concurrency), None)


def stream_ratios(report: dict[str, Any]) -> dict[str, Optional[float]]:
    """Tokens/s and TTFT p95 at the highest concurrency over one stream, and across profiles."""
    levels = report["settings"]["concurrency"]
    top, low = max(levels), min(levels)

    def ratio(a: Optional[dict[str, Any]], b: Optional[dict[str, Any]], key: str, sub: str = "") -> Optional[float]:
        if not a or not b:
            return None
        x, y = (a[key][sub], b[key][sub]) if sub else (a[key], b[key])
        return round(x / y, 2) if y else None

    s_top, s_low = _point(report, "streaming", top), _point(report, "streaming", low)
    if top == low:
        s_low = None  # one level: nothing to scale against
    return {
        f"streaming_tokens_per_s_{top}_over_{low}": ratio(s_top, s_low, "tokens_per_s"),
        f"streaming_ttft_p95_{top}_over_{low}": ratio(s_top, s_low, "ttft_ms", "p95"),
        f"streaming_over_one_at_a_time_tokens_per_s_at_{top}": ratio(
            s_top, _point(report, "one-at-a-time", top), "tokens_per_s"
        ),
        f"one_at_a_time_over_streaming_ttft_p95_at_{top}": ratio(
            _point(report, "one-at-a-time", top), s_top, "ttft_ms", "p95"
        ),
        f"static_over_streaming_ttft_p95_at_{top}": ratio(_point(report, "static", top), s_top, "ttft_ms", "p95"),
        f"streaming_over_static_tokens_per_s_at_{top}": ratio(s_top, _point(report, "static", top), "tokens_per_s"),
    }


def stream_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The streaming targets (docs/streaming.md): measured at 16 streams against one, when both ran."""
    one, sixteen = _point(report, "streaming", 1), _point(report, "streaming", 16)
    if not one or not sixteen:
        return []
    tokens = sixteen["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else 0.0
    ttft = sixteen["ttft_ms"]["p95"] / one["ttft_ms"]["p95"] if one["ttft_ms"]["p95"] else 0.0
    failed = sum(p["streams_failed"] for r in report["profiles"].values() for p in r.get("points", []))
    return [
        {"target": "16 streams: tokens/s >= 6x one stream's", "value": round(tokens, 2), "met": tokens >= 6.0},
        {"target": "16 streams: TTFT p95 <= 2x one stream's", "value": round(ttft, 2), "met": 0 < ttft <= 2.0},
        {"target": "no failed stream", "value": failed, "met": failed == 0},
    ]


def point_line(p: dict[str, Any]) -> str:
    t, i = p["ttft_ms"], p["itl_ms"]
    return (
        f"c={p['concurrency']:>3}  {p['tokens_per_s']:8.1f} tokens/s  TTFT p50 {t['p50']:7.2f} p95 {t['p95']:7.2f}"
        f" p99 {t['p99']:7.2f} ms  ITL p50 {i['p50']:6.2f} p95 {i['p95']:6.2f} ms  streams {p['streams_completed']}"
        f" ok, {p['streams_failed']} failed  loop TTFT p95 {(p.get('loop_ttft_ms') or {}).get('p95', '-')} ms"
        f"  server CPU {pct(p.get('server_cpu_pct'))}"
        f"  client CPU {pct(p.get('client_cpu_pct'))}"
    )


def format_stream_report(report: dict[str, Any]) -> str:
    lines = [
        f"`{report['command'] or 'compound bench'}`: pipeline '{report['pipeline']}', streaming model"
        f" '{report['streaming_model']}' ({report['stream_mode']}), {report['settings']['protocol']},"
        f" {report['machine']['cores']} cores",
        "",
        "| profile | streams | tokens/s | TTFT p50 ms | TTFT p95 ms | TTFT p99 ms | ITL p50 ms | ITL p95 ms"
        " | loop TTFT p50/p95 ms | completed | failed | server CPU ms/token |",
        "|" + " --- |" * 12,
    ]
    for name, res in report["profiles"].items():
        if "error" in res:
            lines.append(f"| {name} | failed: {res['error']} |" + " |" * 10)
            continue
        for p in res["points"]:
            t, i = p["ttft_ms"], p["itl_ms"]
            loop = p.get("loop_ttft_ms") or {}
            lines.append(
                f"| {name} | {p['concurrency']} | {p['tokens_per_s']} | {t['p50']} | {t['p95']} | {t['p99']} |"
                f" {i['p50']} | {i['p95']} | {loop.get('p50', '-')}/{loop.get('p95', '-')} |"
                f" {p['streams_completed']} | {p['streams_failed']} |"
                f" {p.get('server_cpu_ms_per_token', '-')} |"
            )
    lines += ["", "ratios: " + json.dumps(report["ratios"])]
    for t in report["targets"]:
        lines.append(f"- {t['target']}: {t['value']} ({'met' if t['met'] else 'missed'})")
    return "\n".join(lines)
