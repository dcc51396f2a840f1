"""`compound loadtest` on a streaming pipeline: real locust streams against a real tritonserver serving
a hand-written decoupled Python model (tests/fixtures/stream_loadtest), over gRPC and HTTP SSE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner, Result

from tests.conftest import FIXTURES, start_server
from toolkit.cli.main import cli
from toolkit.client import fetch_signature
from toolkit.loadtest.streaming import streams
from toolkit.targets.local import LocalServer

TOKENS = 8  # the fixture's `tokens` parameter
DELAY_MS = 5.0


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    repo = tmp_path_factory.mktemp("stream_loadtest") / "repo"
    shutil.copytree(FIXTURES / "stream_loadtest", repo, ignore=shutil.ignore_patterns("README.md", "__pycache__"))
    server = start_server(repo, tmp_path_factory.mktemp("stream_loadtest-logs"))
    yield server
    server.stop()


def run(url: str, tmp_path: Path, *extra: str) -> tuple[Result, dict[str, Any]]:
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(
        cli,
        ["loadtest", "tokens", "--url", url, "--users", "8", "--spawn-rate", "8", "--run-time", "4s"]
        + ["--json", str(summary), *extra],
    )
    return result, json.loads(summary.read_text()) if summary.exists() else {}


def check_stream_figures(summary: dict[str, Any]) -> None:
    stream = summary["latency"]["stream"]
    assert stream["streams_completed"] > 20 and stream["streams_failed"] == 0, stream
    assert stream["tokens_per_stream"] == TOKENS
    assert stream["tokens"] == TOKENS * stream["streams_completed"]
    # the model sleeps DELAY_MS before every token: the first comes after one delay, then one per delay
    assert DELAY_MS * 0.8 <= stream["ttft_p50_ms"] <= stream["ttft_p95_ms"] <= stream["ttft_p99_ms"], stream
    assert DELAY_MS * 0.8 <= stream["itl_p50_ms"] <= stream["itl_p95_ms"] < 20 * DELAY_MS, stream
    assert stream["tokens_per_s"] > 0
    # the whole stream, not its first token, is the run's latency
    assert summary["latency"]["p50_ms"] >= TOKENS * DELAY_MS * 0.8
    assert summary["latency"]["requests"] == stream["streams_completed"]


def test_the_server_config_says_the_pipeline_streams(stream_server: LocalServer) -> None:
    for url, protocol in ((stream_server.http_url, "http"), (stream_server.grpc_url, "grpc")):
        signature = fetch_signature("tokens", url, protocol)  # type: ignore[arg-type]
        assert signature.decoupled and streams(url, protocol, signature)


def test_grpc_streams_report_ttft_itl_and_tokens(stream_server: LocalServer, tmp_path: Path) -> None:
    result, summary = run(stream_server.grpc_url, tmp_path, "--protocol", "grpc", "--ttft-p95-slo-ms", "5000")
    assert result.exit_code == 0, result.output
    check_stream_figures(summary)
    assert summary["passed"] is True
    for header in ("Streaming", "TTFT p95", "ITL p50", "Tokens/s", "Streams ok"):
        assert header in result.output


def test_http_server_sent_events_with_workers(stream_server: LocalServer, tmp_path: Path) -> None:
    result, summary = run(stream_server.http_url, tmp_path, "--workers", "2")
    assert result.exit_code == 0, result.output
    check_stream_figures(summary)  # merged from both workers


def test_ttft_slo_gate_fails_the_run(stream_server: LocalServer, tmp_path: Path) -> None:
    result, summary = run(
        stream_server.grpc_url, tmp_path, "--protocol", "grpc", "--run-time", "2s", "--ttft-p95-slo-ms", "0.01"
    )
    assert result.exit_code == 3, result.output
    assert "TTFT p95" in result.output and "above the SLO of 0.01 ms" in result.output
    assert summary["passed"] is False and summary["violations"]


def test_ttft_slo_on_a_pipeline_that_does_not_stream_is_a_clear_error(textdemo_server: LocalServer) -> None:
    result = CliRunner().invoke(
        cli, ["loadtest", "classify", "--url", textdemo_server.http_url, "--ttft-p95-slo-ms", "100"]
    )
    assert result.exit_code == 1, result.output
    assert "--ttft-p95-slo-ms: pipeline 'classify' does not stream" in result.output
    assert "Traceback" not in result.output
