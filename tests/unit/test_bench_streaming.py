"""`compound bench` on a streaming pipeline, without a server: the static profile's whole-answer model
gives exactly the streamed tokens, the one-at-a-time variant rewrites only the loop's two parameters,
the ratios and targets read the right points, and bad input is refused with a clear message."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.bench.streaming import (
    WHOLE_PACKAGE,
    StreamBench,
    StreamBenchSettings,
    histogram_quantile,
    one_stream_at_a_time,
    stream_ratios,
    stream_targets,
    whole_answer_plan,
)
from toolkit.cli.main import cli
from toolkit.core.errors import CompoundError
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rag_stream"
SPEC = EXAMPLE / "pipeline.yaml"
QUESTIONS = ["How do bees make honey?", "What is propolis?", "Why does a colony swarm?"]


def test_the_static_model_answers_with_exactly_the_streamed_tokens(tmp_path: Path) -> None:
    plan = plan_spec(SPEC)
    static = whole_answer_plan(plan, "rag_stream", "generate", tmp_path / "static")
    model = static.spec.models["generate"]
    assert model.handler == f"{WHOLE_PACKAGE}:WholeAnswer" and not model.stream
    assert model.outputs["token"].dims == [-1] and model.outputs["compound_tokens"].dims == [1]
    assert static.spec.pipelines["rag_stream"].outputs == ["token", "index", "compound_tokens"]
    assert (tmp_path / "static" / WHOLE_PACKAGE / "stream_handlers" / "knowledge.txt").is_file()
    assert (tmp_path / "static" / "stream_handlers" / "__init__.py").is_file()  # retrieve's own copy

    sys.path.insert(0, str(tmp_path / "static"))
    sys.path.insert(0, str(EXAMPLE))
    try:
        whole_module = importlib.import_module(WHOLE_PACKAGE)
        whole = whole_module.WholeAnswer(model.parameters, "cpu")
        handlers = importlib.import_module("stream_handlers")
        retrieve = handlers.Retrieve({}, "cpu")
        generate = handlers.Generate(plan.spec.models["generate"].parameters, "cpu")
        query = np.array([[q.encode()] for q in QUESTIONS], dtype=object)
        passage = retrieve(query)["passage"]
        out = whole(query=query, passage=passage)
        for row in range(len(QUESTIONS)):
            streamed = [r["token"][0, 0] for r in generate(query=query[row : row + 1], passage=passage[row : row + 1])]
            count = int(out["compound_tokens"][row, 0])
            assert count == len(streamed)
            assert list(out["token"][row, :count]) == streamed
            assert all(t == b"" for t in out["token"][row, count:])  # padding to the longest answer
            assert list(out["index"][row, :count]) == list(range(count))
        assert "".join(t.decode() for t in out["token"][0]) == handlers.answer(generate, retrieve, QUESTIONS[0])
    finally:
        sys.path.remove(str(tmp_path / "static"))
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop(WHOLE_PACKAGE, None)


def test_one_at_a_time_rewrites_only_the_loop_parameters(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(SPEC), tmp_path / "repo")
    config = repo / "generate" / "config.pbtxt"
    before = config.read_text()
    one_stream_at_a_time(config)
    after = config.read_text()
    assert '"compound.stream"\n  value {\n    string_value: "generator"' in after
    assert '"compound.max_streams"\n  value {\n    string_value: "1"' in after
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 2 and len(before.splitlines()) == len(after.splitlines())
    with pytest.raises(CompoundError, match="compound.stream"):
        one_stream_at_a_time(repo / "retrieve" / "config.pbtxt")


def _point(c: int, tokens_per_s: float, ttft_p95: float, failed: int = 0) -> dict[str, Any]:
    return {
        "concurrency": c,
        "tokens_per_s": tokens_per_s,
        "ttft_ms": {"p50": ttft_p95 / 2, "p95": ttft_p95, "p99": ttft_p95},
        "streams_failed": failed,
    }


def test_ratios_and_targets_read_one_and_sixteen_streams() -> None:
    report = {
        "settings": {"concurrency": [1, 16]},
        "profiles": {
            "streaming": {"points": [_point(1, 100.0, 10.0), _point(16, 700.0, 18.0)]},
            "one-at-a-time": {"points": [_point(1, 110.0, 9.0), _point(16, 120.0, 150.0)]},
            "static": {"points": [_point(1, 300.0, 40.0), _point(16, 900.0, 90.0, failed=1)]},
        },
    }
    ratios = stream_ratios(report)
    assert ratios["streaming_tokens_per_s_16_over_1"] == 7.0
    assert ratios["streaming_ttft_p95_16_over_1"] == 1.8
    assert ratios["streaming_over_one_at_a_time_tokens_per_s_at_16"] == 5.83
    assert ratios["static_over_streaming_ttft_p95_at_16"] == 5.0
    targets = {t["target"]: t for t in stream_targets(report)}
    assert targets["16 streams: tokens/s >= 6x one stream's"]["met"]
    assert targets["16 streams: TTFT p95 <= 2x one stream's"]["met"]
    assert not targets["no failed stream"]["met"] and targets["no failed stream"]["value"] == 1
    single = {"settings": {"concurrency": [16]}, "profiles": report["profiles"]}
    assert stream_ratios(single)["streaming_tokens_per_s_16_over_16"] is None


def test_bad_settings_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(CompoundError, match="unknown profile"):
        StreamBench(StreamBenchSettings(SPEC, "rag_stream", tmp_path, profiles=["ensemble"]))
    with pytest.raises(CompoundError, match="no pipeline 'nope'"):
        StreamBench(StreamBenchSettings(SPEC, "nope", tmp_path))
    args = ["bench", str(SPEC), "-p", "rag_stream", "--driver", "locust", "-o", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "--driver locust" in result.output and "Traceback" not in result.output


def test_loop_times_are_quantiles_of_the_cumulative_buckets() -> None:
    buckets = {0.001: 10.0, 0.002: 90.0, 0.005: 100.0, float("inf"): 100.0}  # cumulative, seconds
    assert histogram_quantile(0.05, buckets) == 0.5  # inside the first bucket, from 0
    assert histogram_quantile(0.5, buckets) == 1.5  # 50 of 100: halfway through (1, 2] ms
    assert histogram_quantile(0.95, buckets) == 3.5
    assert histogram_quantile(0.5, {0.001: 0.0, float("inf"): 0.0}) is None  # nothing observed
    assert histogram_quantile(0.99, {0.001: 1.0, float("inf"): 2.0}) == 1.0  # beyond the last bound
