"""Trace spans per stream on a real tritonserver (--otlp-endpoint): every sampled stream of a streaming
component, of an ensemble ending in one and of a fused streaming pipeline is one `compound.stream`
span under Triton's span of its request, timed from arrival to the last response, with its responses,
time to the first and how it ended (completed, cancelled). Spans arrive over real OTLP/HTTP."""

from __future__ import annotations

import secrets
import time
from typing import Iterator

import numpy as np
import pytest

from tests.conftest import FIXTURES, start_server
from toolkit.observe.tracing import Span, SpanCollector
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.stream_client import stream_infer
from toolkit.targets.local import LocalServer
from toolkit.targets.settings import Tracing


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, SpanCollector]]:
    work = tmp_path_factory.mktemp("stream-tracing")
    repo = render_repository(plan_spec(FIXTURES / "streaming" / "pipeline.yaml"), work / "repo")
    collector = SpanCollector()
    try:
        server = start_server(repo, work, tracing=Tracing(collector.endpoint, 1, "stream-tracing-test"))
    except BaseException:
        collector.close()
        raise
    try:
        yield server, collector
    finally:
        server.stop()
        collector.close()


def stream_spans(collector: SpanCollector, trace_id: str, sent_ns: int) -> tuple[list[Span], list[Span]]:
    """(the request's trace, its compound.stream spans), once the stream span has arrived.

    Over gRPC, Triton 2.51 now and then starts a trace of its own instead of continuing the client's
    `traceparent` (6 streams in 130 of this fixture, docs/observability.md). The request's trace is
    then the only one whose root began after `sent_ns`: the tests here send one request at a time."""
    deadline = time.monotonic() + 15
    while True:
        spans = collector.wait_for_trace(trace_id, timeout_s=5, quiet_s=0.5)
        if not spans:
            later = [
                trace
                for trace in collector.traces().values()
                if any(s.name == "InferRequest" and s.start_ns >= sent_ns for s in trace)
            ]
            spans = later[0] if len(later) == 1 else []
        streams = [s for s in spans if s.name == "compound.stream"]
        if streams or time.monotonic() > deadline:
            return spans, streams
        time.sleep(0.2)


def headers() -> tuple[str, dict[str, str]]:
    trace_id = secrets.token_hex(16)
    return trace_id, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


@pytest.mark.parametrize(
    ("model", "inputs", "streamer"),
    [
        ("stepper", {"n": np.array([[5]], np.int32)}, "stepper"),
        ("counter", {"n": np.array([[5]], np.int32)}, "counter"),
        ("step_stream", {"prompt": np.array([[b"one two three four five"]], dtype=object)}, "stepper"),
        ("fused_step", {"prompt": np.array([[b"one two three four five"]], dtype=object)}, "stepper"),
    ],
)
def test_each_stream_is_one_span_under_its_request(
    traced: tuple[LocalServer, SpanCollector], model: str, inputs: dict[str, np.ndarray], streamer: str
) -> None:
    server, collector = traced
    trace_id, sent_headers = headers()
    sent_ns = time.time_ns()
    responses = list(stream_infer(model, server.grpc_url, inputs, headers=sent_headers))
    assert len(responses) == 5
    spans, streams = stream_spans(collector, trace_id, sent_ns)
    assert len(streams) == 1, [s.name for s in spans]
    (span,) = streams
    by_id = {s.span_id: s for s in spans}
    assert span.parent_id in by_id, "the stream span hangs under Triton's span of the request"
    assert span.attributes["compound.model"] == streamer
    assert span.attributes["compound.responses"] == 5
    assert span.attributes["compound.outcome"] == "completed"
    first_ms = span.attributes["compound.first_response_ms"]
    assert 0 < first_ms < (span.end_ns - span.start_ns) / 1e6
    assert span.end_ns - span.start_ns >= 4 * 20e6 * 0.9  # five responses 20 ms apart (the fixture's delay)


def test_a_cancelled_stream_says_so(traced: tuple[LocalServer, SpanCollector]) -> None:
    server, collector = traced
    trace_id, sent_headers = headers()
    sent_ns = time.time_ns()
    stream = stream_infer("counter", server.grpc_url, {"n": np.array([[500]], np.int32)}, headers=sent_headers)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()  # type: ignore[attr-defined]
    _, streams = stream_spans(collector, trace_id, sent_ns)
    assert [s.attributes["compound.outcome"] for s in streams] == ["cancelled"]
    assert 3 <= streams[0].attributes["compound.responses"] < 500
