"""A request that waits in a model's queue longer than its queue timeout is rejected by Triton with an
error that says so, and the server keeps serving (spec `queue_timeout_ms`, toolkit.plan.graph)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import FIXTURES, start_server
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.local import LocalServer

SLOW_S = 0.6  # the fixture's handler sleeps this long per call; the pipeline's queue timeout is 150 ms


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    repo = render_repository(
        plan_spec(FIXTURES / "queue_timeout" / "pipeline.yaml"), tmp_path_factory.mktemp("queue-timeout") / "repo"
    )
    server = start_server(repo, tmp_path_factory.mktemp("queue-timeout-logs"))
    yield server
    server.stop()


def _grpc(server: LocalServer, model: str, value: float, timeout_us: Optional[int] = None) -> tuple[float, str]:
    """(elapsed s, '' or the error) of one gRPC request."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    started = time.monotonic()
    try:
        result = client.infer(model, [tensor], timeout=timeout_us)
        assert result.as_numpy("y")[0, 0] == pytest.approx(value)
        return time.monotonic() - started, ""
    except InferenceServerException as exc:
        return time.monotonic() - started, f"{exc.status()}: {exc.message()}"
    finally:
        client.close()


def _http(server: LocalServer, model: str, value: float) -> tuple[float, str]:
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    started = time.monotonic()
    try:
        client.infer(model, [tensor])
        return time.monotonic() - started, ""
    except InferenceServerException as exc:
        return time.monotonic() - started, f"{exc.status()}: {exc.message()}"
    finally:
        client.close()


def _second_waits(first: object, second: object) -> tuple[tuple[float, str], tuple[float, str]]:
    """Send `first`, then (while it runs) `second`; both are (callable, args)."""
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(*first)  # type: ignore[misc]
        time.sleep(0.15)  # the first is executing: the second queues behind it
        waiting = pool.submit(*second)  # type: ignore[misc]
        return running.result(timeout=30), waiting.result(timeout=30)


def test_a_request_queued_past_the_timeout_is_rejected_and_the_server_keeps_serving(slow_server: LocalServer) -> None:
    for send in (_grpc, _http):
        first, second = _second_waits((send, slow_server, "slow_pipe", 1.0), (send, slow_server, "slow_pipe", 2.0))
        print(f"{send.__name__}: first {first}, second {second}")
        assert first[1] == "", first
        assert "timeout" in second[1].lower(), second  # Triton: "Request timeout expired"
        assert second[0] < SLOW_S + 0.5, "rejected no later than the batcher's next look at the queue"
        assert slow_server.alive()
        assert _grpc(slow_server, "slow_pipe", 3.0)[1] == "", "the next request is served"


def test_the_model_own_value_applies_when_called_directly_and_a_request_may_only_shorten_it(
    slow_server: LocalServer,
) -> None:
    """Called directly, `slow` has the smaller of its own 400 ms and its pipeline's 150 ms: the pipeline
    value reaches the model whoever calls it (one queue). A request's own `timeout` parameter of 10 s
    does not lengthen it."""
    first, second = _second_waits((_grpc, slow_server, "slow", 1.0), (_grpc, slow_server, "slow", 2.0, 10_000_000))
    assert first[1] == "" and "timeout" in second[1].lower(), (first, second)
    config = grpcclient.InferenceServerClient(slow_server.grpc_url).get_model_config("slow").config
    policy = config.dynamic_batching.default_queue_policy
    assert (policy.default_timeout_microseconds, policy.allow_timeout_override) == (150_000, True)
