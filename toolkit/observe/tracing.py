"""Traces on the host side: an OTLP/HTTP receiver, span trees and the critical path.

Triton (``--trace-config mode=opentelemetry``) and compound's own runtime (templates/tracing.py)
both export spans as OTLP/HTTP protobuf (an ``ExportTraceServiceRequest`` POSTed to
``/v1/traces``). ``SpanCollector`` is a small in-process receiver of that real protocol, used by
``compound infer --trace``, ``compound loadtest`` and the tests: it decodes every request with
opentelemetry-proto, keeps the spans, and groups them by trace. ``span_tree`` prints one trace
with durations; ``critical_path`` says which chain of steps set a request's end-to-end latency.
"""

from __future__ import annotations

import base64
import gzip
import json
import secrets
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional

from toolkit.core.errors import CompoundError

TRACES_PATH = "/v1/traces"
ROOT_SPAN = "InferRequest"  # Triton's span of a whole request, from arrival to response
# Spans compound's runtime emits (templates/tracing.py): their names start with one of these.
STEP_SPAN = "step "
CACHE_SPAN = "cache "
CALL_SPAN = "call "


@dataclass
class Span:
    """One received span, ids as lowercase hex ('' for no parent)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    service: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def decode_export(body: bytes, json_body: bool = False, through_proto: bool = False) -> list[Span]:
    """The spans of one OTLP ExportTraceServiceRequest, in either encoding OTLP/HTTP allows: binary
    protobuf (compound's runtime), decoded by opentelemetry-proto, or its JSON mapping (Triton's
    exporter sends application/json). JSON is read field by field as OTLP's JSON encoding names them:
    protobuf's generic JSON parser takes a third of a millisecond per span, longer than a busy server
    takes to make one. `through_proto` parses JSON into the protobuf message instead (the tests hold
    both ways to the same spans)."""
    if json_body and not through_proto:
        return _decode_json(json.loads(body))
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    if json_body:
        from google.protobuf import json_format

        json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), request)
    else:
        request.ParseFromString(body)
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _any_value(kv.value) for kv in resource_spans.resource.attributes}
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        name=span.name,
                        start_ns=int(span.start_time_unix_nano),
                        end_ns=int(span.end_time_unix_nano),
                        service=service,
                        attributes={kv.key: _any_value(kv.value) for kv in span.attributes},
                    )
                )
    return spans


def _field(message: dict[str, Any], name: str, default: Any = None) -> Any:
    """A field of OTLP JSON under its lowerCamelCase name, or the proto name receivers must also accept."""
    if name in message:
        return message[name]
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    return message.get(snake, default)


def _json_value(value: dict[str, Any]) -> Any:
    for kind, item in value.items():
        if kind in ("intValue", "int_value", "doubleValue", "double_value"):
            try:
                return int(item) if kind.startswith("int") else float(item)
            except (TypeError, ValueError):
                # Triton 2.51 now and then writes a garbage byte as triton.trace_parent_id ('\x00'),
                # which fails a strict parser on the whole batch: keep the span, with the raw value.
                return item
        if kind in ("arrayValue", "array_value"):
            return [_json_value(v) for v in item.get("values", [])]
        if kind in ("kvlistValue", "kvlist_value"):
            return _json_attributes(item.get("values", []))
        return item  # stringValue, boolValue, bytesValue
    return None


def _json_attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _json_value(item.get("value") or {}) for item in items}


def _decode_json(document: dict[str, Any]) -> list[Span]:
    spans: list[Span] = []
    for resource_spans in _field(document, "resourceSpans", []):
        resource = _json_attributes(_field(_field(resource_spans, "resource", {}), "attributes", []))
        service = str(resource.get("service.name", ""))
        for scope_spans in _field(resource_spans, "scopeSpans", []):
            for span in _field(scope_spans, "spans", []):
                spans.append(
                    Span(
                        trace_id=str(_field(span, "traceId", "")).lower(),
                        span_id=str(_field(span, "spanId", "")).lower(),
                        parent_id=str(_field(span, "parentSpanId", "")).lower(),
                        name=str(_field(span, "name", "")),
                        start_ns=int(_field(span, "startTimeUnixNano", 0)),
                        end_ns=int(_field(span, "endTimeUnixNano", 0)),
                        service=service,
                        attributes=_json_attributes(_field(span, "attributes", [])),
                    )
                )
    return spans


_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(document: Any) -> Any:
    """OTLP's JSON encoding writes trace and span ids as hex, where protobuf's JSON mapping of bytes
    expects base64: convert them in place before parsing."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key in _ID_KEYS and isinstance(value, str):
                document[key] = base64.b64encode(bytes.fromhex(value)).decode() if value else ""
            else:
                _hex_ids_to_base64(value)
    elif isinstance(document, list):
        for item in document:
            _hex_ids_to_base64(item)
    return document


class SpanCollector:
    """An OTLP/HTTP trace receiver on a loopback port, kept in this process (a context manager).

    Exporters POST to ``endpoint`` + /v1/traces. Receiving only keeps the body (a busy server exports
    thousands of spans a second, and a slow answer makes its exporter drop them); bodies are decoded
    when spans are read. A body that is not a valid ExportTraceServiceRequest is counted in
    ``rejected`` and its error kept in ``errors``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self._bodies: list[tuple[bytes, bool]] = []
        self.received_at = 0.0  # time.monotonic() of the last export received
        self.rejected = 0
        self.errors: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1: exporters send large batches with `Expect: 100-continue` and wait for the
            # interim answer, which http.server only gives in 1.1 (else the body never comes).
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self._body()
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if self.path.split("?")[0] != TRACES_PATH:
                        self.send_error(404, f"only {TRACES_PATH} is served")
                        return
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                except Exception as exc:  # noqa: BLE001 - a malformed export is the sender's problem
                    self.send_error(400, f"cannot decompress the body: {exc}")
                    return
                json_body = "json" in (self.headers.get("Content-Type") or "").lower()
                with collector._lock:
                    collector._bodies.append((body, json_body))
                    collector.received_at = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                # One export per connection: a kept-alive one would outlive close() and hand the
                # next exports to a collector nobody reads (exporters send once a second at most).
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

            def _body(self) -> bytes:
                if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def log_message(self, *args: Any) -> None:  # quiet: this is a library
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise CompoundError(f"cannot listen for traces on {host}:{port}: {exc}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """What to give `compound deploy --otlp-endpoint` (the base URL; base + /v1/traces works too)."""
        host = self._server.server_address[0]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{self.port}"

    def spans(self) -> list[Span]:
        """Every span received so far (decoding the bodies that arrived since the last call)."""
        with self._lock:
            bodies, self._bodies = self._bodies, []
        decoded: list[Span] = []
        failures: list[str] = []
        for body, json_body in bodies:
            try:
                decoded.extend(decode_export(body, json_body))
            except Exception as exc:  # noqa: BLE001 - a malformed export is the sender's problem
                failures.append(f"not an OTLP ExportTraceServiceRequest: {exc}")
        with self._lock:
            self._spans.extend(decoded)
            self.rejected += len(failures)
            self.errors.extend(failures)
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._bodies.clear()

    def settle(self, quiet_s: float = 1.5, timeout_s: float = 20.0) -> None:
        """Wait until no export arrived for `quiet_s` (the exporters' last batches are in)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and time.monotonic() - max(self.received_at, 0.0) < quiet_s:
            time.sleep(0.1)

    def traces(self) -> dict[str, list[Span]]:
        """Spans by trace id, each trace in start order."""
        grouped: dict[str, list[Span]] = {}
        for span in self.spans():
            grouped.setdefault(span.trace_id, []).append(span)
        for spans in grouped.values():
            spans.sort(key=lambda s: (s.start_ns, s.end_ns))
        return grouped

    def wait_for(self, condition: Callable[[SpanCollector], bool], timeout_s: float = 10.0) -> bool:
        """Poll until `condition(self)` holds (exporters batch: spans arrive a moment after the request)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if condition(self):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def new_traceparent(self) -> dict[str, str]:
        """A W3C traceparent header naming a fresh, sampled trace (Triton keeps the client's trace id)."""
        return {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"}

    def wait_for_trace(self, trace_id: str, timeout_s: float = 10.0, quiet_s: float = 1.5) -> list[Span]:
        """The spans of one trace, once its root has arrived and nothing new came for `quiet_s`
        (Triton and the runtime export in batches, each on its own schedule)."""
        deadline = time.monotonic() + timeout_s
        count, changed = -1, time.monotonic()
        while time.monotonic() < deadline:
            spans = [span for span in self.spans() if span.trace_id == trace_id]
            if len(spans) != count:
                count, changed = len(spans), time.monotonic()
            rooted = any(span.name == "InferRequest" for span in spans)
            if rooted and time.monotonic() - changed >= quiet_s:
                break
            time.sleep(0.1)
        return sorted((span for span in self.spans() if span.trace_id == trace_id), key=lambda s: s.start_ns)

    def describe_trace(self, traceparent: str, timeout_s: float = 10.0) -> str:
        """`compound infer --trace`'s report: the span tree with durations, then the critical path."""
        trace_id = traceparent.split("-")[1]
        spans = self.wait_for_trace(trace_id, timeout_s)
        if not spans:
            return (
                f"trace {trace_id}: no spans arrived in {timeout_s:g} s (with --trace-rate N above 1, only 1 "
                "request in N is traced; over gRPC, Triton 2.51 starts a trace of its own for a few requests in "
                "a hundred: --protocol http keeps the request's trace id)"
            )
        lines = [f"trace {trace_id} ({len(spans)} spans)", span_tree(spans)]
        path = critical_path(spans)
        if len(path) > 1:
            lines += ["", "critical path:"]
            lines += [f"  {step.name:<28} {step.ms:>9.3f} ms {step.share:>7.1%}" for step in path]
        return "\n".join(lines)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SpanCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def deployment_collector(state: Any) -> SpanCollector:
    """A collector on the recorded deployment's OTLP endpoint, for `infer --trace` and `loadtest`:
    possible when the deployment sends its spans to a loopback port nothing else listens on."""
    endpoint = state.extra.get("otlp_endpoint") if state is not None else None
    if not endpoint:
        raise CompoundError(
            f"deployment '{state.name}' does not trace",
            hint="deploy it with --otlp-endpoint http://127.0.0.1:PORT (a free port: compound receives the spans "
            "there when asked to)",
        )
    url = urllib.parse.urlsplit(endpoint)
    if url.hostname not in LOOPBACK_HOSTS or url.port is None:
        raise CompoundError(
            f"deployment '{state.name}' sends its spans to {endpoint}, not to a loopback port compound can listen on",
            hint="read its traces in that collector, or deploy with --otlp-endpoint http://127.0.0.1:PORT",
        )
    try:
        return SpanCollector(url.hostname, url.port)
    except CompoundError:
        raise CompoundError(
            f"deployment '{state.name}' sends its spans to {endpoint}, where another collector already listens",
            hint="read its traces there, or stop that collector",
        ) from None


def runtime_tracing(endpoint: str, service: str) -> Any:
    """templates/tracing.py for a process outside the server (the adaptive runtime), exporting to
    `endpoint`: the runtime's load, scale and heal actions become spans of their own traces."""
    import importlib.util

    from toolkit.repository.render import templates_dir

    path = templates_dir() / "tracing.py"
    spec = importlib.util.spec_from_file_location("compound_tracing", path)
    if spec is None or spec.loader is None:
        raise CompoundError(f"cannot load the tracing runtime from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.configure(endpoint, service)
    return module


# --- reading traces --------------------------------------------------------------------------


def children_of(spans: Iterable[Span]) -> dict[str, list[Span]]:
    """parent span id -> its children in start order; roots ('' or a parent not in the trace) under ''."""
    spans = list(spans)
    ids = {span.span_id for span in spans}
    children: dict[str, list[Span]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else ""
        children.setdefault(parent, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s.start_ns, -s.end_ns))
    return children


def span_tree(spans: Iterable[Span]) -> str:
    """One trace as an indented tree: offset from the trace's start and duration per span."""
    spans = list(spans)
    if not spans:
        return "(no spans)"
    start = min(span.start_ns for span in spans)
    children = children_of(spans)
    lines: list[str] = []

    def walk(span: Span, depth: int) -> None:
        label = "  " * depth + span.name
        detail = _detail(span)
        offset = (span.start_ns - start) / 1e6
        lines.append(f"{label:<48} {offset:>9.3f} ms  {span.duration_ms:>9.3f} ms{detail}")
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    lines.append(f"{'span':<48} {'start':>12}  {'duration':>12}")
    for root in children.get("", []):
        walk(root, 0)
    return "\n".join(lines)


def _detail(span: Span) -> str:
    keys = ("compound.pipeline", "compound.model", "compound.tier", "compound.hit", "compound.rows", "model_name")
    parts = [f"{key.split('.')[-1]}={span.attributes[key]}" for key in keys if key in span.attributes]
    return ("  " + " ".join(parts)) if parts else ""


def step_of(span: Span) -> Optional[str]:
    """The component a compound runtime span stands for: ``step <model>`` (a fused step) or
    ``call <model>`` (an orchestrator's call, recorded for every request of a merged batch)."""
    model = span.attributes.get("compound.model")
    if model and (span.name.startswith(STEP_SPAN) or span.name.startswith(CALL_SPAN)):
        return str(model)
    return None


def pipeline_span(spans: list[Span]) -> Optional[Span]:
    """The span of the model the client called (Triton's, under its InferRequest span)."""
    children = children_of(spans)
    for root in children.get("", []):
        if root.name != ROOT_SPAN:
            continue  # a trace whose root span was lost: not a whole request
        for child in children.get(root.span_id, []):
            if "triton.model_name" in child.attributes:
                return child
    return None


@dataclass
class PathStep:
    """One link of a critical path: the step, its time on the path and its share of the latency."""

    name: str
    ms: float
    share: float


BETWEEN = "(between steps)"


def critical_path(spans: list[Span]) -> list[PathStep]:
    """The chain of steps that set one request's end-to-end latency (its root span, InferRequest).

    Steps are compound's ``step``/``call`` spans where the pipeline has them (fused pipelines and
    orchestrators), else Triton's model spans under the pipeline's (an ensemble's steps). Walking
    back from the end of the root: among the steps that started before the current point, the one
    that finished last is what the work after it waited for, so it is on the path (up to the current
    point: Triton closes a step's span a moment after the next step has started), and the walk goes
    on from its start. Time the chain does not cover (queueing before the first step, hops and
    marshalling between steps, the response) is reported as "(between steps)"."""
    if not spans:
        return []
    children = children_of(spans)
    roots = children.get("", [])
    root = max(roots, key=lambda s: s.end_ns - s.start_ns)
    candidates = _step_spans(spans, children)
    total = max(1, root.end_ns - root.start_ns)
    path: list[PathStep] = []
    point = root.end_ns
    covered = 0
    candidates = [(name, span) for name, span in candidates if span.start_ns >= root.start_ns]
    while True:
        before = [(name, span) for name, span in candidates if span.start_ns < point]
        if not before:
            break
        name, span = max(before, key=lambda item: (min(item[1].end_ns, point), -item[1].start_ns))
        width = min(span.end_ns, point) - span.start_ns
        path.append(PathStep(name, width / 1e6, width / total))
        covered += width
        point = span.start_ns
        candidates = [(n, s) for n, s in candidates if s.start_ns < point]
    path.reverse()
    rest = max(0, total - covered)
    path.append(PathStep(BETWEEN, rest / 1e6, rest / total))
    return path


def _step_spans(spans: list[Span], children: dict[str, list[Span]]) -> list[tuple[str, Span]]:
    compound = [(name, span) for span in spans if (name := step_of(span)) is not None]
    if compound:
        return compound
    top = pipeline_span(spans)
    if top is None:
        return []
    found: list[tuple[str, Span]] = []
    stack = list(children.get(top.span_id, []))
    while stack:
        span = stack.pop()
        model = span.attributes.get("triton.model_name")
        if model is not None:
            found.append((str(model), span))  # an ensemble step; its compute span is inside it
        else:
            stack.extend(children.get(span.span_id, []))
    return found


@dataclass
class PathSummary:
    """The critical paths of one pipeline's traced requests: the most frequent chain, how often it
    set the latency, and per step of it the mean time on the path and mean share of the latency."""

    pipeline: str
    traces: int
    chain: list[str]
    chain_count: int
    steps: list[PathStep]
    mean_latency_ms: float


def summarize_critical_paths(traces: Iterable[list[Span]]) -> dict[str, PathSummary]:
    """Pipeline -> its critical-path summary, over every trace whose pipeline span is known."""
    by_pipeline: dict[str, list[tuple[list[PathStep], float]]] = {}
    for spans in traces:
        top = pipeline_span(spans)
        if top is None:
            continue
        path = critical_path(spans)
        roots = children_of(spans).get("", [])
        latency = max((r.end_ns - r.start_ns for r in roots), default=0) / 1e6
        by_pipeline.setdefault(str(top.attributes["triton.model_name"]), []).append((path, latency))
    summaries: dict[str, PathSummary] = {}
    for pipeline, paths in sorted(by_pipeline.items()):
        chains: dict[tuple[str, ...], list[list[PathStep]]] = {}
        for path, _ in paths:
            chains.setdefault(tuple(step.name for step in path if step.name != BETWEEN), []).append(path)
        chain, members = max(chains.items(), key=lambda item: (len(item[1]), len(item[0])))
        steps = [
            PathStep(
                name,
                sum(path[i].ms for path in members) / len(members),
                sum(path[i].share for path in members) / len(members),
            )
            for i, name in enumerate([*chain, BETWEEN])
        ]
        summaries[pipeline] = PathSummary(
            pipeline=pipeline,
            traces=len(paths),
            chain=list(chain),
            chain_count=len(members),
            steps=steps,
            mean_latency_ms=sum(latency for _, latency in paths) / len(paths),
        )
    return summaries


def format_critical_paths(summaries: dict[str, PathSummary]) -> str:
    """The load test's critical-path table: per pipeline, the chain that set the latency most
    often and each link's mean time and share of the end-to-end latency."""
    lines: list[str] = []
    for summary in summaries.values():
        chain = " -> ".join(summary.chain) or "(no step spans)"
        lines.append(
            f"critical path  {summary.pipeline}: {chain}  (in {summary.chain_count} of {summary.traces} traced "
            f"requests, mean latency {summary.mean_latency_ms:.2f} ms)"
        )
        lines.append(f"  {'step':<28} {'mean ms':>9} {'share':>7}")
        for step in summary.steps:
            lines.append(f"  {step.name:<28} {step.ms:>9.3f} {step.share:>7.1%}")
    return "\n".join(lines)
