"""Per-model breakdown of a compound pipeline from Triton's statistics API, taken before and after a run.

Triton keeps cumulative counters per model (``/v2/models/stats``): requests, executions, inferences
and nanoseconds spent queued and computing. The difference of two snapshots tells, for the traffic
in between, how well each composing model batched and where the time went; the pipeline's own
counters (the ensemble or the orchestrator) give the end-to-end server time each step is a share of.
Everything here is a pure function except :func:`fetch_stats`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from toolkit.client import grpc_client, http_json, strip_scheme
from toolkit.core.errors import CompoundError
from toolkit.observe import cachestats
from toolkit.observe.cachestats import CacheFigures

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


@dataclass(frozen=True)
class Duration:
    """One of Triton's (count, total nanoseconds) pairs."""

    count: int = 0
    ns: int = 0

    def __sub__(self, other: Duration) -> Duration:
        return Duration(self.count - other.count, self.ns - other.ns)

    def __add__(self, other: Duration) -> Duration:
        return Duration(self.count + other.count, self.ns + other.ns)


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one model (all its versions summed)."""

    name: str
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()
    cache_hit: Duration = Duration()
    cache_miss: Duration = Duration()
    batch_executions: dict[int, int] = field(default_factory=dict)  # batch size -> executions
    busy_ns: int = 0  # time instances spent executing batches (each batch once, unlike compute_*)

    def __sub__(self, other: ModelCounters) -> ModelCounters:
        return _combine(self, other, -1)

    def __add__(self, other: ModelCounters) -> ModelCounters:
        return _combine(self, other, 1)


def _combine(a: ModelCounters, b: ModelCounters, sign: int) -> ModelCounters:
    durations = {
        name: Duration(
            getattr(a, name).count + sign * getattr(b, name).count, getattr(a, name).ns + sign * getattr(b, name).ns
        )
        for name in _DURATIONS
    }
    sizes = set(a.batch_executions) | set(b.batch_executions)
    batches = {s: a.batch_executions.get(s, 0) + sign * b.batch_executions.get(s, 0) for s in sizes}
    return ModelCounters(
        name=a.name,
        inference_count=a.inference_count + sign * b.inference_count,
        execution_count=a.execution_count + sign * b.execution_count,
        batch_executions={s: n for s, n in sorted(batches.items()) if n},
        busy_ns=a.busy_ns + sign * b.busy_ns,
        **durations,
    )


def _int(value: Any) -> int:
    """gRPC's JSON renders int64 as strings and leaves zeros out; HTTP's gives ints."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _duration(raw: Any) -> Duration:
    raw = raw if isinstance(raw, dict) else {}
    return Duration(_int(raw.get("count")), _int(raw.get("ns")))


def parse_stats(payload: dict[str, Any]) -> dict[str, ModelCounters]:
    """Counters per model name from a statistics response, HTTP or gRPC (as JSON) alike."""
    result: dict[str, ModelCounters] = {}
    for entry in payload.get("model_stats", []) or []:
        name = str(entry.get("name", ""))
        if not name:
            continue
        inference = entry.get("inference_stats", {}) or {}
        batches: dict[int, int] = {}
        busy = 0
        for batch in entry.get("batch_stats", []) or []:
            size = _int(batch.get("batch_size"))
            batches[size] = batches.get(size, 0) + _duration(batch.get("compute_infer")).count
            busy += sum(_duration(batch.get(part)).ns for part in ("compute_input", "compute_infer", "compute_output"))
        counters = ModelCounters(
            name=name,
            inference_count=_int(entry.get("inference_count")),
            execution_count=_int(entry.get("execution_count")),
            batch_executions=batches,
            busy_ns=busy,
            **{key: _duration(inference.get(key)) for key in _DURATIONS},
        )
        result[name] = result[name] + counters if name in result else counters
    return result


def diff(before: dict[str, ModelCounters], after: dict[str, ModelCounters]) -> dict[str, ModelCounters]:
    """What happened between two snapshots; a model missing before counts from zero."""
    return {name: now - before.get(name, ModelCounters(name)) for name, now in after.items()}


# --- the breakdown --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelBreakdown:
    """One composing model's share of the run."""

    model: str
    requests: int
    failures: int
    executions: int
    inferences: int
    avg_batch: float
    max_batch: int
    cache_hits: int
    queue_ms: float  # per request (cache hits count as zero)
    compute_ms: float  # per request: input + infer + output (each request carries its batch's time)
    latency_ms: float  # per request, all time in the model (success ns / count)
    share: float  # latency_ms / end-to-end, 0..1 (parallel branches overlap, so shares may sum above 1)


@dataclass(frozen=True)
class Breakdown:
    pipeline: str
    requests: int  # pipeline requests the server completed successfully
    failures: int  # as Triton counts them (an ensemble counts a failed step and itself: up to twice)
    end_to_end_ms: float  # the pipeline's own average server-side latency per request
    models: list[ModelBreakdown]
    bottleneck: Optional[str]  # the composing model with the most time per request
    cache: list[CacheFigures] = field(default_factory=list)  # tiered cache per component (toolkit.observe.cachestats)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_request_ms(d: Duration, requests: int) -> float:
    return d.ns / requests / 1e6 if requests > 0 else 0.0


def model_breakdown(counters: ModelCounters, end_to_end_ms: float) -> ModelBreakdown:
    """Times are averaged over every successful request, cache hits included, so the columns add up
    and a cached model shows how little it really costs."""
    requests = counters.success.count
    compute = counters.compute_input + counters.compute_infer + counters.compute_output
    executions = counters.execution_count
    latency = _per_request_ms(counters.success, requests)
    return ModelBreakdown(
        model=counters.name,
        requests=requests,
        failures=counters.fail.count,
        executions=executions,
        inferences=counters.inference_count,
        avg_batch=round(counters.inference_count / executions, 2) if executions > 0 else 0.0,
        max_batch=max((s for s, n in counters.batch_executions.items() if n > 0), default=0),
        cache_hits=counters.cache_hit.count,
        queue_ms=round(_per_request_ms(counters.queue, requests), 3),
        compute_ms=round(_per_request_ms(compute, requests), 3),
        latency_ms=round(latency, 3),
        share=round(latency / end_to_end_ms, 3) if end_to_end_ms > 0 else 0.0,
    )


def breakdown(
    pipeline: str,
    before: dict[str, ModelCounters],
    after: dict[str, ModelCounters],
    composing: Optional[list[str]] = None,
) -> Breakdown:
    """Per-model table for the traffic between two snapshots.

    ``composing`` lists the pipeline's models in step order (from its config); models that took
    requests during the run but are not listed (an orchestrator's calls) are added after them. A
    pipeline that calls no model (fused) is its own only row.
    """
    delta = diff(before, after)
    own = delta.get(pipeline, ModelCounters(pipeline))
    end_to_end = _per_request_ms(own.success, own.success.count)
    names = [n for n in (composing or []) if n != pipeline]
    names += sorted(
        n for n, c in delta.items() if n != pipeline and n not in names and (c.success.count or c.fail.count)
    )
    if not names:
        names = [pipeline]  # a fused pipeline calls nothing: its own model does all the work
    models = [model_breakdown(delta.get(n, ModelCounters(n)), end_to_end) for n in names]
    busy = [m for m in models if m.requests > 0]
    bottleneck = max(busy, key=lambda m: m.latency_ms).model if busy else None
    return Breakdown(
        pipeline=pipeline,
        requests=own.success.count,
        failures=own.fail.count,
        end_to_end_ms=round(end_to_end, 3),
        models=models,
        bottleneck=bottleneck,
    )


# --- rendering ------------------------------------------------------------------------------------

COLUMNS: list[tuple[str, str]] = [
    ("model", "Model"),
    ("requests", "Requests"),
    ("executions", "Executions"),
    ("avg_batch", "Avg batch"),
    ("max_batch", "Max batch"),
    ("cache_hits", "Cache hits"),
    ("queue_ms", "Queue ms/req"),
    ("compute_ms", "Compute ms/req"),
    ("latency_ms", "Total ms/req"),
    ("share_pct", "Share of e2e %"),
]


def columns(b: Breakdown) -> list[tuple[str, str]]:
    """COLUMNS, and the tiered cache's when the run has cache figures (none otherwise)."""
    return COLUMNS + cachestats.columns(b.cache)


def rows(b: Breakdown) -> list[dict[str, Any]]:
    """Table rows (dicts keyed like columns(b)), the bottleneck marked, for text, HTML and the web UI;
    cache figures of components that are no row (fused steps) come as rows of their own."""
    result = []
    for m in b.models:
        row: dict[str, Any] = {key: getattr(m, key) for key, _ in COLUMNS if key != "share_pct"}
        row["share_pct"] = round(m.share * 100, 1)
        if m.model == b.bottleneck:
            row["model"] = f"{m.model} (bottleneck)"
        result.append(row)
    return cachestats.merge_rows(result, [m.model for m in b.models], b.cache, [key for key, _ in COLUMNS])


def format_table(b: Breakdown) -> str:
    """A plain-text table for the terminal."""
    header = [title for _, title in columns(b)]
    body = [[str(r[key]) for key, _ in columns(b)] for r in rows(b)]
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h) for i, h in enumerate(header)]
    lines = [
        f"Pipeline '{b.pipeline}': {b.requests} requests succeeded on the server ({b.failures} failures counted "
        f"by Triton), {b.end_to_end_ms:.2f} ms end-to-end per request (server side)",
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in body]
    lines.append(f"Bottleneck: {b.bottleneck}" if b.bottleneck else "Bottleneck: none (no requests reached the models)")
    if b.cache:
        lines.append(
            "Tiered cache, in rows: Hits answered by each tier, Computed by the handler "
            "('Cache hits' is Triton's response cache)"
        )
    return "\n".join(lines)


def to_html(b: Breakdown) -> str:
    """A self-contained HTML section, appended to locust's report."""
    from html import escape

    head = "".join(f"<th>{escape(title)}</th>" for _, title in columns(b))
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(r[key]))}</td>" for key, _ in columns(b)) + "</tr>" for r in rows(b)
    )
    return (
        '<section id="compound-models" style="font-family:sans-serif;margin:2em">'
        f"<h2>Pipeline '{escape(b.pipeline)}': per-model breakdown</h2>"
        f"<p>{b.requests} requests succeeded on the server ({b.failures} failures counted by Triton), "
        f"{b.end_to_end_ms:.2f} ms end-to-end per request (server side). "
        f"Bottleneck: <b>{escape(b.bottleneck or 'none')}</b></p>"
        f'<table border="1" cellpadding="4" style="border-collapse:collapse"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></section>"
    )


# --- fetching -------------------------------------------------------------------------------------


def fetch_stats(url: str, protocol: str = "http", timeout: float = 5.0) -> dict[str, ModelCounters]:
    """A snapshot of every model's counters; ``url`` is host:port of the given protocol's endpoint."""
    try:
        if protocol == "grpc":
            client = grpc_client(url)
            try:
                payload = client.get_inference_statistics(as_json=True, client_timeout=timeout)
            finally:
                client.close()
        else:
            status, payload = http_json(f"http://{strip_scheme(url)}/v2/models/stats", timeout=timeout)
            if status != 200:
                raise CompoundError(f"HTTP {status}: {payload}")
    except Exception as exc:  # noqa: BLE001 - any transport error means the same thing here
        raise CompoundError(f"cannot read model statistics from {url} ({protocol}): {exc}") from None
    return parse_stats(payload)
