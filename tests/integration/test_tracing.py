"""Tracing on a real tritonserver (--otlp-endpoint): every request's trace names every step that
ran for it, in an ensemble, a fused pipeline and an orchestrator with a switch, also when
concurrent requests share one batch; `compound infer --trace` prints the tree; the load test
reports the critical path. The spans arrive over real OTLP/HTTP at an in-process receiver."""

from __future__ import annotations

import functools
import secrets
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from click.testing import CliRunner

from tests.conftest import FIXTURES, start_server
from toolkit.cli.main import cli
from toolkit.loadtest.runner import LoadTestOptions, run_loadtest
from toolkit.observe.tracing import Span, SpanCollector, pipeline_span, span_tree
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.local import LocalServer
from toolkit.targets.server import crash_signal
from toolkit.targets.settings import Tracing
from toolkit.targets.state import DeploymentState, save_state

SHORT, LONG = "hi there", "a much longer text than four words"
CONCURRENCY = 16


class TracedServer:
    """The module's traced server. Triton 2.51's tracing can corrupt its heap under concurrent traced
    requests (seen once in a full run: `corrupted double-linked list`, SIGABRT, then a shutdown that
    hangs on open connections; the family of server#7795): a test that finds it aborted starts it
    again, once per module, and says so in a warning. A second abort fails the test."""

    def __init__(self, repo: Path, logs: pytest.TempPathFactory, collector: SpanCollector) -> None:
        self.repo, self.logs, self.collector = repo, logs, collector
        self.restarts = 0
        self.server = self._start()

    def _start(self) -> LocalServer:
        tracing = Tracing(self.collector.endpoint, 1, "tracing-test")
        return start_server(self.repo, self.logs.mktemp("tracing-logs"), tracing=tracing)

    def aborted(self) -> bool:
        log = self.server.log_path.read_text(errors="replace") if self.server.log_path.exists() else ""
        return not self.server.alive() or crash_signal(log) != ""

    def live(self) -> LocalServer:
        if self.aborted():
            self.restart()
        return self.server

    def restart(self) -> None:
        tail = self.server.log_tail(8)
        self.server.stop()
        if self.restarts:
            pytest.fail(f"tritonserver aborted again under traced load:\n{tail}")
        self.restarts += 1
        warnings.warn(f"tritonserver aborted under traced load (Triton 2.51), started again:\n{tail}", stacklevel=2)
        self.server = self._start()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedServer]:
    repo = render_repository(plan_spec(FIXTURES / "tracing" / "pipeline.yaml"), tmp_path_factory.mktemp("tr") / "repo")
    collector = SpanCollector()
    try:
        holder = TracedServer(repo, tmp_path_factory, collector)
    except BaseException:
        collector.close()
        raise
    try:
        yield holder
    finally:
        holder.server.stop()
        collector.close()


def survives_one_abort(test: Callable[[TracedServer], None]) -> Callable[[TracedServer], None]:
    """Run the test on a live server; where it failed because Triton aborted, once more on a new one."""

    @functools.wraps(test)
    def run(traced: TracedServer) -> None:
        traced.live()
        try:
            test(traced)
        except Exception:
            if not traced.aborted():
                raise
            traced.restart()
            test(traced)

    return run


def send(url: str, pipeline: str, text: str) -> str:
    """One request with a traceparent of its own; its trace id."""
    trace_id = secrets.token_hex(16)
    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        client.infer(pipeline, [tensor], headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    finally:
        client.close()
    return trace_id


def concurrent_traces(traced: TracedServer, pipeline: str) -> tuple[dict[str, list[Span]], dict[str, str]]:
    """CONCURRENCY requests at once, three rounds (long and short texts alternate): trace -> its
    spans, and trace -> the text sent."""
    server, collector = traced.server, traced.collector
    texts = [LONG if i % 2 else SHORT for i in range(CONCURRENCY)]
    sent: dict[str, str] = {}
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for _ in range(3):
            ids = list(pool.map(lambda text: send(server.http_url, pipeline, text), texts))
            sent.update(zip(ids, texts))
    for trace_id in sent:
        if traced.aborted():  # an aborted Triton may still answer, but exports no more spans
            raise RuntimeError(f"tritonserver aborted while the requests ran:\n{server.log_tail(8)}")
        collector.wait_for_trace(trace_id, timeout_s=15, quiet_s=0.5)
    traces = collector.traces()
    return {trace_id: traces.get(trace_id, []) for trace_id in sent}, sent


def names(spans: list[Span]) -> list[str]:
    return [span.name for span in spans]


@survives_one_abort
def test_ensemble_trace_names_every_step(traced: TracedServer) -> None:
    traces, _ = concurrent_traces(traced, "ens")
    for trace_id, spans in traces.items():
        top = pipeline_span(spans)
        assert top is not None and top.name == "ens", f"trace {trace_id}: {names(spans)}"
        steps = sorted(s.name for s in spans if s.parent_id == top.span_id)
        assert steps == ["fast", "join", "slow", "tok"], f"trace {trace_id}:\n{span_tree(spans)}"
        # the cached component's lookup is in the trace of every request of its batch
        assert any(s.name == "cache fast" for s in spans), f"trace {trace_id}:\n{span_tree(spans)}"


@survives_one_abort
def test_fused_trace_names_every_inline_step(traced: TracedServer) -> None:
    traces, _ = concurrent_traces(traced, "fused")
    merged = 0
    for trace_id, spans in traces.items():
        top = pipeline_span(spans)
        assert top is not None and top.name == "fused", f"trace {trace_id}: {names(spans)}"
        steps = {s.name: s for s in spans if s.parent_id == top.span_id and s.name.startswith("step ")}
        assert sorted(steps) == ["step fast", "step join", "step slow", "step tok"], span_tree(spans)
        cache = [s for s in spans if s.name == "cache fast"]
        assert len(cache) == 1 and cache[0].parent_id == steps["step fast"].span_id, span_tree(spans)
        merged += steps["step tok"].attributes["compound.requests"] > 1
    assert merged, "no two requests shared a batch: the merged case was not exercised"


@survives_one_abort
def test_orchestrator_trace_names_the_steps_each_request_ran(traced: TracedServer) -> None:
    """Every request of a merged batch has its own `call` spans, only for the branch its row took."""
    traces, texts = concurrent_traces(traced, "routed")
    merged = 0
    for trace_id, spans in traces.items():
        top = pipeline_span(spans)
        assert top is not None and top.name == "routed", f"trace {trace_id}: {names(spans)}"
        calls = sorted(s.name for s in spans if s.parent_id == top.span_id and s.name.startswith("call "))
        branch = "call slow" if texts[trace_id] == LONG else "call fast"
        assert calls == sorted(["call route", "call tok", branch]), f"{texts[trace_id]!r}:\n{span_tree(spans)}"
        merged += any(s.attributes.get("compound.requests", 1) > 1 for s in spans if s.name.startswith("call "))
    assert merged, "no two requests shared an orchestrator batch: the merged case was not exercised"


def test_infer_trace_prints_the_span_tree(traced: TracedServer, tmp_path: Path) -> None:
    """`compound infer --trace` receives the spans itself on the deployment's loopback endpoint."""
    server, collector = traced.live(), traced.collector
    state = DeploymentState(
        name="traced",
        target="local",
        repository=str(server.repository),
        host="127.0.0.1",
        http_port=server.endpoints.http_port,
        grpc_port=server.endpoints.grpc_port,
        metrics_port=server.endpoints.metrics_port,
        log_path=str(server.log_path),
        extra={"otlp_endpoint": collector.endpoint},
    )
    save_state(state)
    busy = CliRunner().invoke(cli, ["infer", "fused", "--trace", "--name", "traced", "--input", f"text={LONG}"])
    assert busy.exit_code != 0 and "another collector already listens" in busy.output
    collector.close()  # frees the port: the command listens there
    result = CliRunner().invoke(cli, ["infer", "fused", "--trace", "--name", "traced", "--input", f"text={LONG}"])
    assert result.exit_code == 0, result.output
    for expected in ("InferRequest", "fused", "step tok", "step slow", "cache fast", "critical path:", "slow"):
        assert expected in result.output, result.output


def test_loadtest_reports_the_critical_path(traced: TracedServer, tmp_path: Path) -> None:
    """The slow branch (5 ms of sleep) sets the ensemble's latency: the critical path says so."""
    server = traced.live()
    port = int(server.tracing.endpoint.rsplit(":", 1)[1]) if server.tracing else 0
    with SpanCollector(port=port) as collector:  # the module's receiver was closed by the test above
        options = LoadTestOptions(pipeline="ens", url=server.http_url, users=4, spawn_rate=4, run_time_s=3)
        options.traces = collector
        summary = run_loadtest(options, echo=lambda _: None, run_dir=tmp_path)
    path = summary.critical_paths["ens"]
    assert path["chain"] == ["tok", "slow", "join"] and path["traces"] > 10, path
    shares = {step["name"]: step["share"] for step in path["steps"]}
    assert shares["slow"] == max(shares.values()) and sum(shares.values()) == pytest.approx(1.0)
