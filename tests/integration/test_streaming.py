"""Streaming components on a real tritonserver: every response of a stream, in order, over gRPC and
HTTP server-sent events; continuous batching that really batches; cancellation that ends the work.

One server for the module (tests/fixtures/streaming): two ensembles ending in a streaming step (a
generator, a start/step handler), an orchestrator whose switch branches end in one, and the streaming
models themselves (called directly: the only path on which Triton 2.51 passes a client's cancellation
on to the model).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import FIXTURES, start_server
from toolkit.cli.main import cli
from toolkit.core.errors import CompoundError
from toolkit.plan import plan_spec
from toolkit.plan.graph import import_handler_module
from toolkit.repository.render import render_repository
from toolkit.stream_client import stream_infer
from toolkit.targets.local import LocalServer

SPEC = FIXTURES / "streaming" / "pipeline.yaml"
PROMPTS = ["count", "count a b", "count a b c d e f"]  # 1, 3 and 6 responses


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    repo = render_repository(plan_spec(SPEC), tmp_path_factory.mktemp("streaming") / "repo")
    started = start_server(repo, tmp_path_factory.mktemp("streaming-logs"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def handlers() -> Any:
    return import_handler_module(SPEC.parent / "handlers.py", SPEC.parent, fresh=False)


def url(server: LocalServer, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def prompt(text: str) -> dict[str, np.ndarray]:
    return {"prompt": np.array([[text.encode()]], dtype=object)}


def tokens_of(responses: list[dict[str, np.ndarray]]) -> list[tuple[int, str]]:
    return [(int(r["token"][0, 0]), r["text"][0, 0].decode()) for r in responses]


def in_process(handlers: Any, model: str, text: str) -> list[tuple[int, str]]:
    """What the handlers make for this prompt when called here, without a server."""
    n = handlers.Prep({}, "cpu")(prompt(text)["prompt"])["n"]
    if model == "counter":
        produced = list(handlers.Counter({}, "cpu")(n))
    else:
        stepper = handlers.Stepper({}, "cpu")
        state = stepper.start(n)
        produced = []
        while (result := stepper.step([state])[0]) is not None:
            produced.append(result)
    return tokens_of(produced)


def live_generators(server: LocalServer) -> int:
    """The counter's generators alive in its process, as a fresh one-token stream reports (itself included)."""
    (response,) = list(stream_infer("counter", server.grpc_url, {"n": np.array([[1]], dtype=np.int32)}))
    return int(response["live"][0, 0])


def wait_for(condition: Any, timeout_s: float, step_s: float = 0.05) -> Optional[float]:
    """Seconds until condition() held, or None when it did not within timeout_s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(step_s)
    return None


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(
    ("pipeline", "model", "lead"),
    [
        ("count_stream", "counter", ""),
        ("step_stream", "stepper", ""),
        ("routed", "counter", ""),
        ("routed", "stepper", "step"),
        ("routed", "counter", "solo"),  # a callee without a batch axis
    ],
)
def test_every_response_in_order(
    server: LocalServer, handlers: Any, protocol: str, pipeline: str, model: str, lead: str
) -> None:
    for text in PROMPTS:
        if lead:
            text = text.replace("count", lead, 1)
        responses = list(stream_infer(pipeline, url(server, protocol), prompt(text), protocol))  # type: ignore[arg-type]
        assert tokens_of(responses) == in_process(handlers, model, text), (pipeline, protocol, text)
        assert all(r["token"].shape == (1, 1) and r["token"].dtype == np.int64 for r in responses)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_plain_branch_answers_once(server: LocalServer, protocol: str) -> None:
    responses = list(stream_infer("routed", url(server, protocol), prompt("other words"), protocol))  # type: ignore[arg-type]
    assert tokens_of(responses) == [(-1, "none")]


@pytest.mark.parametrize("pipeline", ["step_stream", "fused_step"])
def test_continuous_batching_steps_concurrent_streams_together(
    server: LocalServer, handlers: Any, pipeline: str
) -> None:
    text = "count " * 12  # 12 responses each, 20 ms a step
    results: dict[int, list[dict[str, np.ndarray]]] = {}

    def run(i: int) -> None:
        results[i] = list(stream_infer(pipeline, server.grpc_url, prompt(text)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    expected = in_process(handlers, "stepper", text)
    assert sorted(results) == list(range(8))
    assert all(tokens_of(r) == expected for r in results.values())
    batches = [int(r["batch"][0, 0]) for responses in results.values() for r in responses]
    # one step call carried several streams: 8 streams one at a time would only ever show 1
    assert max(batches) >= 4, batches
    assert sum(b > 1 for b in batches) > len(batches) // 2, batches


def test_a_stream_that_joins_late_is_stepped_with_the_others(server: LocalServer) -> None:
    long = threading.Thread(
        target=lambda: list(stream_infer("stepper", server.grpc_url, {"n": np.array([[40]], np.int32)}))
    )
    long.start()
    time.sleep(0.2)  # the long stream is in flight
    responses = list(stream_infer("stepper", server.grpc_url, {"n": np.array([[3]], np.int32)}))
    long.join(30)
    assert [int(r["batch"][0, 0]) for r in responses] == [2, 2, 2]


def test_cancelling_a_stream_closes_its_generator_within_a_step(server: LocalServer) -> None:
    assert live_generators(server) == 1
    for _ in range(10):  # many cancelled streams, one after another (Triton 2.51: do not race cancellations)
        stream = stream_infer("counter", server.grpc_url, {"n": np.array([[500]], np.int32)})  # 10 s if left alone
        assert [int(next(stream)["token"][0, 0]) for _ in range(3)] == [0, 1, 2]
        stream.close()  # cancels the request on the server
        # a step is 20 ms; the fresh stream that measures needs a few more
        assert wait_for(lambda: live_generators(server) == 1, timeout_s=2.0) is not None
    assert live_generators(server) == 1  # nothing leaked


@pytest.mark.parametrize(("model", "inputs"), [("stepper", {"n": 500}), ("fused_step", {"prompt": 500})])
def test_cancelled_streams_leave_the_continuous_batch(server: LocalServer, model: str, inputs: dict[str, int]) -> None:
    def request(n: int) -> dict[str, np.ndarray]:
        return {"n": np.array([[n]], np.int32)} if "n" in inputs else prompt("count " * n)

    streams = [stream_infer(model, server.grpc_url, request(500)) for _ in range(4)]
    for stream in streams:
        next(stream)
    for stream in streams:
        stream.close()
    time.sleep(0.3)
    (alone,) = list(stream_infer(model, server.grpc_url, request(1)))
    assert int(alone["batch"][0, 0]) == 1  # the cancelled states left the batch


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_failing_generator_ends_its_stream_with_the_handler_named(server: LocalServer, protocol: str) -> None:
    received: list[dict[str, np.ndarray]] = []
    with pytest.raises(CompoundError) as failure:
        for response in stream_infer("failing", url(server, protocol), {"n": np.array([[5]], np.int32)}, protocol):  # type: ignore[arg-type]
            received.append(response)
    assert [int(r["token"][0, 0]) for r in received] == [0, 1]
    message = str(failure.value)
    assert "handlers:Counter" in message and "token 2 is the one this counter fails at" in message
    assert "handlers.py:" in message
    assert live_generators(server) == 1  # the failed generator is closed, the server keeps serving


def test_plain_infer_of_a_streaming_pipeline_says_to_stream(server: LocalServer) -> None:
    result = CliRunner().invoke(cli, ["infer", "count_stream", "--url", server.http_url, "--input", "prompt=count a"])
    assert result.exit_code != 0
    assert "--stream" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cli_streams_and_summarises(server: LocalServer, protocol: str) -> None:
    result = CliRunner().invoke(
        cli,
        ["infer", "count_stream", "--stream", "--protocol", protocol, "--url", url(server, protocol)]
        + ["--input", "prompt=count a b"],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line for line in lines if line.startswith("{")] == [
        f'{{"live": [[1]], "text": [["tok{i}"]], "token": [[{i}]]}}' for i in range(3)
    ]
    assert lines[-1].startswith("3 response(s): first after ") and "responses/s, total " in lines[-1]


def test_cancelling_through_an_orchestrator_reaches_the_generator(server: LocalServer) -> None:
    """Triton 2.51 cannot cancel a BLS request: the orchestrator marks its callee's stream cancelled
    instead (a file named by the stream's request id), and the callee's loop ends it within a step."""
    for _ in range(5):
        stream = stream_infer("routed", server.grpc_url, prompt("count " * 200))  # 200 responses, 4 s
        next(stream)
        stream.close()
        assert wait_for(lambda: live_generators(server) == 1, timeout_s=1.5) is not None
    folder = Path("/dev/shm/compound-cancelled") if Path("/dev/shm").is_dir() else None
    if folder is not None and folder.is_dir():  # every mark is removed once its callee ended
        assert wait_for(lambda: not list(folder.glob("compound-stream-*")), timeout_s=2.0) is not None


def test_cancelling_through_an_ensemble_ends_with_the_stream(server: LocalServer) -> None:
    """Triton 2.51's ensemble passes no cancellation on to its streaming step: the client's stream ends,
    the generator runs to its own end (bounded by its length), then leaves."""
    stream = stream_infer("count_stream", server.grpc_url, prompt("count " * 40))  # 40 responses, 0.8 s
    next(stream)
    stream.close()
    assert wait_for(lambda: live_generators(server) == 1, timeout_s=10.0) is not None


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_model_without_a_batch_axis_streams(server: LocalServer, protocol: str) -> None:
    responses = list(stream_infer("solo", url(server, protocol), {"n": np.array([3], np.int32)}, protocol))  # type: ignore[arg-type]
    assert [int(r["token"][0]) for r in responses] == [0, 1, 2]
    assert responses[0]["token"].shape == (1,)


def test_repository_marks_streaming_models_decoupled(server: LocalServer) -> None:
    repo = Path(server.repository)
    for name in ("counter", "stepper", "count_stream", "step_stream", "routed", "fused_step"):
        assert "decoupled: true" in (repo / name / "config.pbtxt").read_text(), name
    assert "decoupled" not in (repo / "prep" / "config.pbtxt").read_text()
    assert (repo / "counter" / "1" / "compound_stream.py").is_file()
    assert not (repo / "prep" / "1" / "compound_stream.py").exists()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tensors_of_several_elements_and_rows_keep_their_shape(server: LocalServer, protocol: str) -> None:
    """SSE carries every tensor flattened: the client sends inputs flat and restores outputs from the dims."""
    inputs = {
        "v": np.array([[1.5, 2, 3], [4, 5, 6]], dtype=np.float32),
        "words": np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object),
    }
    responses = list(stream_infer("repeat", url(server, protocol), inputs, protocol))  # type: ignore[arg-type]
    assert len(responses) == 2
    for k, response in enumerate(responses):
        assert response["v"].dtype == np.float32
        np.testing.assert_array_equal(response["v"], inputs["v"] * (k + 1))
        assert response["words"].shape == (2, 2) and response["words"].tolist() == inputs["words"].tolist()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_loop_then_a_streaming_step(server: LocalServer, protocol: str) -> None:
    """The loop grows the word count by one at least once, up to 4, then the stepper streams that many tokens."""
    for text, count in (("count", 4), ("count a b c d e", 7)):
        responses = list(stream_infer("looped", url(server, protocol), prompt(text), protocol))  # type: ignore[arg-type]
        assert tokens_of(responses) == [(i, f"tok{i}") for i in range(count)], text


def test_an_orchestrator_timeout_ends_the_stream_and_its_generator(server: LocalServer) -> None:
    received: list[dict[str, np.ndarray]] = []
    with pytest.raises(CompoundError, match=r"timed out after 300 ms"):
        for response in stream_infer("timed", server.grpc_url, prompt("count " * 200)):  # 4 s left alone
            received.append(response)
    assert 3 <= len(received) < 20
    assert wait_for(lambda: live_generators(server) == 1, timeout_s=1.5) is not None
