"""An orchestrator whose callee takes no batch axis still takes every queued request at once: 32
concurrent requests reach its execute() together, the non-batching callee gets their rows one by
one, and the slow batching callee sees a few large batches instead of 32 small ones."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import numpy as np

from tests.conftest import FIXTURES, start_server
from toolkit.client import http_json, infer
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository


def executions(url: str, model: str) -> tuple[int, int]:
    _, stats = http_json(f"http://{url}/v2/models/{model}/stats")
    entry = stats["model_stats"][0]
    return int(entry["inference_count"]), int(entry["execution_count"])


def test_32_concurrent_requests_through_a_non_batching_callee(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(FIXTURES / "mixed_batching" / "pipeline.yaml"), tmp_path / "repo")
    server = start_server(repo, tmp_path)
    try:
        query = {"query": np.array([[b"four"]], dtype=object)}
        infer("mixed", server.http_url, query)
        before = executions(server.http_url, "slowbatch")
        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda _: infer("mixed", server.grpc_url, query, "grpc"), range(32)))
        elapsed = time.monotonic() - began
        after = executions(server.http_url, "slowbatch")
    finally:
        server.stop()
    assert all(np.allclose(r["score"], [[0.4]]) for r in results)
    inferences, runs = after[0] - before[0], after[1] - before[1]
    assert inferences == 32
    # Two requests at a time (one per orchestrator instance) would take 16 or more 100 ms calls.
    assert runs <= 8, f"{runs} calls of the 100 ms batching callee for 32 requests"
    print(f"32 concurrent requests in {elapsed:.2f} s ({32 / elapsed:.0f} req/s), {runs} slow calls")
    assert elapsed < 1.5, f"32 requests took {elapsed:.2f} s: they were not served together"
