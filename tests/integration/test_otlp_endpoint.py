"""--otlp-endpoint given as the collector's traces URL (http://HOST:PORT/v1/traces, as Triton's trace
config and most collectors' docs write it) on a real tritonserver: Triton's spans and the runtime's
(a fused pipeline's steps, inside the Python stubs) both reach the collector, which serves only
/v1/traces, so a doubled or missing path on either side would lose them."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from tests.conftest import FIXTURES
from toolkit.core.system import free_port
from toolkit.observe.tracing import ROOT_SPAN, SpanCollector, span_tree
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.local import LocalServer
from toolkit.targets.settings import Tracing


def send(url: str, pipeline: str, text: str) -> str:
    """One request with a sampled traceparent of its own (traced at any --trace-rate); its trace id."""
    trace_id = secrets.token_hex(16)
    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        client.infer(pipeline, [tensor], headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    finally:
        client.close()
    return trace_id


def test_a_traces_url_endpoint_gets_triton_and_runtime_spans(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(FIXTURES / "tracing" / "pipeline.yaml"), tmp_path / "repo")
    with SpanCollector() as collector:
        tracing = Tracing(collector.endpoint + "/v1/traces", 1000, "forms-test")
        assert tracing.endpoint == collector.endpoint
        server = LocalServer(
            repo,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            log_path=tmp_path / "tritonserver.log",
            tracing=tracing,
        )
        try:
            server.start()
            trace_id = send(server.http_url, "fused", "a text of five words")
            spans = collector.wait_for_trace(trace_id, timeout_s=20, quiet_s=1.0)
        finally:
            server.stop()
    names = {s.name for s in spans}
    assert ROOT_SPAN in names, span_tree(spans)  # Triton exported to base/v1/traces
    assert {"step tok", "step join"} <= names, span_tree(spans)  # so did the runtime, from the same base
    assert collector.rejected == 0
