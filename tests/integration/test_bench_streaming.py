"""A short real run of `compound bench` on the streaming RAG example: its four profiles on real servers,
one stream each for a second. Checks that every profile streamed (or, static, answered whole) without
a failure, that the static answers carry as many tokens per answer as the streams, and that the
report (table, results.json, results.md) says it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("psutil")

from toolkit.cli.main import cli  # noqa: E402

SPEC = Path(__file__).resolve().parents[2] / "examples" / "rag_stream" / "pipeline.yaml"


def test_bench_streaming_profiles(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        cli,
        ["bench", str(SPEC), "-p", "rag_stream", "--concurrency", "1,2", "--duration", "1.5s", "--warmup", "0.3s"]
        + ["--out", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert report["streaming_model"] == "generate" and report["stream_mode"] == "batch"
    assert list(report["profiles"]) == ["streaming", "fused", "one-at-a-time", "static"]
    per_answer = {}
    for name, profile in report["profiles"].items():
        assert "error" not in profile, profile
        assert [p["concurrency"] for p in profile["points"]] == [1, 2]
        for point in profile["points"]:
            assert point["streams_completed"] > 0 and point["streams_failed"] == 0, (name, point)
            assert point["tokens_per_s"] > 0 and point["ttft_ms"]["p95"] >= point["ttft_ms"]["p50"] > 0
            assert point["server_cpu_pct"] is not None
        per_answer[name] = profile["points"][0]["tokens_per_stream"]
        if name != "static":  # streamed: tokens arrive one by one
            assert profile["points"][0]["itl_ms"]["p50"] > 0
    # the same handler answers the same questions: whole answers are as long as streamed ones
    assert per_answer["static"] == pytest.approx(per_answer["streaming"], rel=0.35)
    assert set(report["ratios"]) >= {"streaming_tokens_per_s_2_over_1", "static_over_streaming_ttft_p95_at_2"}
    table = (out / "results.md").read_text()
    assert "| one-at-a-time | 2 |" in table and "| static | 1 |" in table
    assert "tokens/s" in result.output
