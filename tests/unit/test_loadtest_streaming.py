"""The streaming figures of a load test: per-stream timing, merging workers' records, the TTFT gate."""

from __future__ import annotations

import pytest

from toolkit.client import signature_from_config
from toolkit.core.errors import CompoundError
from toolkit.loadtest.streaming import (
    StreamRecorder,
    StreamStats,
    StreamTiming,
    check_ttft_slo,
    format_stream,
    read_sse,
    stream_gate,
)


def timing(sent: float, *arrivals: float, error: str | None = None) -> StreamTiming:
    return StreamTiming(sent, list(arrivals), error, ended=arrivals[-1] if arrivals else sent)


def test_a_decoupled_config_is_a_streaming_signature() -> None:
    config = {"name": "gen", "max_batch_size": 4, "model_transaction_policy": {"decoupled": True}}
    assert signature_from_config(config).decoupled
    assert not signature_from_config({"name": "once"}).decoupled


def test_timing_of_one_stream() -> None:
    t = timing(10.0, 10.02, 10.025, 10.035)
    assert t.tokens == 3 and t.ttft_ms == pytest.approx(20.0)
    assert t.itl_ms() == pytest.approx([5.0, 10.0])
    assert t.total_ms == pytest.approx(35.0)


def test_workers_records_merge_into_the_masters_figures() -> None:
    master, worker = StreamRecorder(), StreamRecorder()
    master.add(timing(0.0, 0.010, 0.012))
    worker.add(timing(0.0, 0.030, 0.031, 0.032))
    worker.add(timing(0.0, error="UNAVAILABLE: gone"))
    master.merge(worker.take())
    assert worker.tokens == 0 and worker.ttft_ms == []  # taken
    figures = master.figures()
    assert (figures.streams_completed, figures.streams_failed, figures.tokens) == (2, 1, 5)
    assert figures.tokens_per_stream == 2.5
    assert figures.ttft_p50_ms == pytest.approx(20.0) and figures.itl_p50_ms == pytest.approx(1.0)
    assert figures.tokens_per_s > 0


def test_server_sent_events_are_timed_and_errors_end_the_stream() -> None:
    events = [b'data: {"token": " a"}', b"", b'data: {"token": " b"}', b"", b'data: {"error": "boom"}']
    t = read_sse(iter(events), StreamTiming(0.0))
    assert t.tokens == 2 and t.error == "boom"
    assert read_sse(iter([]), StreamTiming(0.0)).error == "the stream ended without an event"


def test_ttft_gate() -> None:
    stats = StreamStats(streams_completed=3, ttft_p95_ms=40.0)
    assert stream_gate(stats, None) == []
    assert stream_gate(stats, 50.0) == []
    assert stream_gate(stats, 30.0) == ["TTFT p95 40 ms is above the SLO of 30 ms"]
    assert stream_gate(StreamStats(), 30.0) == ["no stream completed"]
    assert "TTFT p95" in format_stream(stats)


def test_ttft_slo_needs_a_streaming_pipeline() -> None:
    check_ttft_slo(None, False, "p")
    check_ttft_slo(10.0, True, "p")
    with pytest.raises(CompoundError, match="pipeline 'p' does not stream"):
        check_ttft_slo(10.0, False, "p")
    with pytest.raises(CompoundError, match="must be above 0"):
        check_ttft_slo(0.0, True, "p")
