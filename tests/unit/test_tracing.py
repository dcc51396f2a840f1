"""Host-side tracing: the OTLP receiver (real protocol, both encodings, over real HTTP), the runtime's
span recorder (templates/tracing.py) exporting to it, critical paths, and the deploy arguments."""

from __future__ import annotations

import http.client
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from toolkit.core.errors import CompoundError
from toolkit.observe.tracing import (
    BETWEEN,
    Span,
    SpanCollector,
    critical_path,
    decode_export,
    format_critical_paths,
    summarize_critical_paths,
)
from toolkit.targets.settings import Tracing

ROOT = Path(__file__).resolve().parents[2]
TRACE = "0af7651916cd43dd8448eb211c80319c"


def triton_json(spans: list[tuple[str, str, str, str, int, int, dict[str, Any]]]) -> bytes:
    """An export as Triton 2.51's exporter writes it (OTLP JSON: camelCase, hex ids, int64 as strings)."""

    def attribute(key: str, value: Any) -> dict[str, Any]:
        kind = "intValue" if isinstance(value, int) else "stringValue"
        return {"key": key, "value": {kind: str(value)}}

    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [attribute("service.name", "textdemo")]},
                    "scopeSpans": [
                        {
                            "scope": {"name": "triton-server"},
                            "spans": [
                                {
                                    "traceId": trace,
                                    "spanId": span_id,
                                    **({"parentSpanId": parent} if parent else {}),
                                    "name": name,
                                    "kind": 2,
                                    "startTimeUnixNano": str(start),
                                    "endTimeUnixNano": str(end),
                                    "attributes": [attribute(k, v) for k, v in attributes.items()],
                                }
                                for trace, span_id, parent, name, start, end, attributes in spans
                            ],
                        }
                    ],
                }
            ]
        }
    ).encode()


def ms(value: float) -> int:
    return int(1_000_000_000_000 + value * 1e6)


def ensemble_trace() -> list[tuple[str, str, str, str, int, int, dict[str, Any]]]:
    """tok -> (sentiment, topic) -> verdict, where topic is the slower branch and each step's span
    closes a moment after the next one opened (as Triton's do)."""
    model = "triton.model_name"
    return [
        (TRACE, "a" * 16, "", "InferRequest", ms(0), ms(10), {}),
        (TRACE, "b" * 16, "a" * 16, "classify", ms(0.1), ms(9.9), {model: "classify"}),
        (TRACE, "c" * 16, "b" * 16, "tok", ms(0.2), ms(2.1), {model: "tok"}),
        (TRACE, "d" * 16, "c" * 16, "compute", ms(1.0), ms(1.9), {}),
        (TRACE, "e" * 16, "b" * 16, "sentiment", ms(2.0), ms(4.0), {model: "sentiment"}),
        (TRACE, "f" * 16, "b" * 16, "topic", ms(2.0), ms(7.1), {model: "topic"}),
        (TRACE, "1" * 16, "b" * 16, "verdict", ms(7.0), ms(9.5), {model: "verdict"}),
    ]


def test_json_is_read_as_protobuf_reads_it() -> None:
    """The field-by-field JSON reader and opentelemetry-proto's parser agree on a Triton export."""
    body = triton_json(ensemble_trace())
    fast = decode_export(body, json_body=True)
    strict = decode_export(body, json_body=True, through_proto=True)
    assert fast == strict and len(fast) == 7
    assert fast[1].attributes == {"triton.model_name": "classify"} and fast[1].parent_id == "a" * 16
    assert fast[0].service == "textdemo" and fast[0].parent_id == ""


def test_a_garbage_attribute_value_keeps_the_span() -> None:
    """Triton now and then writes '\\x00' as an int attribute: the batch's spans must survive it."""
    document = json.loads(triton_json(ensemble_trace()[:2]))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["attributes"].append(
        {"key": "triton.trace_parent_id", "value": {"intValue": "\x00"}}
    )
    spans = decode_export(json.dumps(document).encode(), json_body=True)
    assert [s.name for s in spans] == ["InferRequest", "classify"]


def post(port: int, body: bytes, content_type: str, expect_continue: bool = False) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    if expect_continue:
        headers["Expect"] = "100-continue"
    connection.request("POST", "/v1/traces", body, headers)
    status = connection.getresponse().status
    connection.close()
    return status


def test_collector_receives_both_encodings_over_http() -> None:
    binary = ExportTraceServiceRequest()
    span = binary.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes.fromhex(TRACE), bytes.fromhex("2" * 16), "step tok"
    span.start_time_unix_nano, span.end_time_unix_nano = 5, 9
    with SpanCollector() as collector:
        assert post(collector.port, binary.SerializeToString(), "application/x-protobuf") == 200
        assert post(collector.port, triton_json(ensemble_trace()), "application/json", expect_continue=True) == 200
        assert post(collector.port, b"{not json", "application/json") == 200  # kept, judged when read
        spans = collector.spans()
        assert collector.rejected == 1 and "not an OTLP" in collector.errors[0]
    assert len(spans) == 8 and {s.trace_id for s in spans} == {TRACE}
    assert any(s.name == "step tok" and s.duration_ms == 4e-6 for s in spans)


def test_critical_path_of_a_fan_out() -> None:
    spans = decode_export(triton_json(ensemble_trace()), json_body=True)
    path = critical_path(spans)
    assert [step.name for step in path] == ["tok", "topic", "verdict", BETWEEN]
    assert path[1].ms == pytest.approx(5.0)  # topic up to where verdict started (7.0), not its span's end
    assert sum(step.share for step in path) == pytest.approx(1.0)


def test_critical_path_summary_per_pipeline() -> None:
    spans = decode_export(triton_json(ensemble_trace()), json_body=True)
    orphan = [Span(TRACE[::-1], "9" * 16, "8" * 16, "tok", 0, 5, attributes={"triton.model_name": "tok"})]
    summaries = summarize_critical_paths([spans, orphan])  # a trace without its root is not a request
    assert list(summaries) == ["classify"]
    summary = summaries["classify"]
    assert summary.chain == ["tok", "topic", "verdict"] and summary.traces == 1
    table = format_critical_paths(summaries)
    assert "critical path  classify: tok -> topic -> verdict" in table and "topic" in table


def load_runtime_tracing() -> Any:
    spec = importlib.util.spec_from_file_location("compound_tracing_under_test", ROOT / "templates" / "tracing.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runtime_span_goes_under_every_request_of_a_merged_batch() -> None:
    """One piece of work shared by two sampled requests (and one not sampled) is recorded once per
    sampled request, under its span; what runs inside nests under each copy."""
    tracing = load_runtime_tracing()
    first = (bytes.fromhex(TRACE), bytes.fromhex("a" * 16))
    second = (bytes.fromhex("1" * 32), bytes.fromhex("b" * 16))
    with SpanCollector() as collector:
        tracing.configure(collector.endpoint, "unit")
        with tracing.span("step tok", [first, None, second, first], model="tok", rows=3) as opened:
            opened.set("note", "x")
            with tracing.span("cache tok", model="tok"):
                time.sleep(0.001)
        with tracing.root_span("runtime scale", model="tok"):
            pass
        tracing.flush()
        spans = collector.spans()
    steps = [s for s in spans if s.name == "step tok"]
    caches = [s for s in spans if s.name == "cache tok"]
    assert sorted((s.trace_id, s.parent_id) for s in steps) == sorted([(TRACE, "a" * 16), ("1" * 32, "b" * 16)])
    assert all(s.attributes["compound.requests"] == 2 and s.attributes["compound.note"] == "x" for s in steps)
    assert sorted((c.trace_id, c.parent_id) for c in caches) == sorted((s.trace_id, s.span_id) for s in steps)
    assert all(c.service == "unit" and c.duration_ms >= 1.0 for c in caches)
    (scale,) = [s for s in spans if s.name == "runtime scale"]
    assert scale.parent_id == "" and scale.trace_id not in (TRACE, "1" * 32)


def test_runtime_records_nothing_without_a_sampled_parent() -> None:
    tracing = load_runtime_tracing()
    with SpanCollector() as collector:
        tracing.configure(collector.endpoint, "unit")
        with tracing.span("step tok", [None, None]):
            pass
        with tracing.span("cache tok"):  # no span open around it
            pass
        tracing.flush()
        assert collector.spans() == []


def test_tracing_arguments_and_bad_endpoints() -> None:
    tracing = Tracing("http://127.0.0.1:4318", 4, "textdemo")
    args = tracing.server_args()
    assert "mode=opentelemetry" in args and "rate=4" in args
    assert "opentelemetry,url=http://127.0.0.1:4318/v1/traces" in args
    assert "opentelemetry,resource=service.name=textdemo" in args
    assert tracing.environment() == {
        "COMPOUND_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "COMPOUND_TRACE_SERVICE": "textdemo",
    }
    for bad in ("127.0.0.1:4318", "grpc://collector:4317", "http://"):  # a /v1/traces URL is fine: test_otlp_endpoint
        with pytest.raises(CompoundError, match="--otlp-endpoint"):
            Tracing(bad)
    with pytest.raises(CompoundError, match="--trace-rate"):
        Tracing("http://c:4318", 0)


def test_a_low_trace_rate_warns_of_triton_2_51s_crash() -> None:
    """Triton 2.51 crashes when it traces hundreds of requests a second (server#7795): deploy says so."""
    from toolkit.targets.settings import SAFE_TRACE_RATE, tracing_warning

    warning = tracing_warning(1)
    assert warning is not None and "server#7795" in warning and f"--trace-rate {SAFE_TRACE_RATE}" in warning
    assert tracing_warning(SAFE_TRACE_RATE) is None
