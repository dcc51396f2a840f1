"""The generated repository on a real tritonserver: HTTP, gRPC, batching, joins, errors."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from toolkit.client import infer
from toolkit.core.errors import CompoundError
from toolkit.targets.local import LocalServer

TEXTS = ["I love this product", "héllo wörld — ünïcode ✓", "", "the same words", "the same words"]


def strings(values: list[str]) -> np.ndarray:
    return np.array([[v.encode("utf-8")] for v in values], dtype=object)


def reference(texts: list[str]) -> dict[str, np.ndarray]:
    """The same handlers run in-process: what the pipeline must return."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / "textdemo" / "handlers.py"
    module_spec = importlib.util.spec_from_file_location("_textdemo_reference", path)
    assert module_spec and module_spec.loader
    handlers = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(handlers)
    ids = handlers.Tokenizer({"width": 16, "vocab": 4096}, "cpu")(text=strings(texts))["ids"]
    score = handlers.Sentiment({"vocab": 4096}, "cpu")(ids=ids)["score"]
    topics = handlers.Topic({"vocab": 4096, "topics": ["news", "sport", "tech", "arts"]}, "cpu")(ids=ids)["topics"]
    joined = handlers.Verdict({"topics": ["news", "sport", "tech", "arts"]}, "cpu")(score=score, topics=topics)
    return {"score": score, "topics": topics, **joined}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_batch_with_unicode_and_empty_strings(textdemo_server: LocalServer, protocol: str) -> None:
    url = textdemo_server.http_url if protocol == "http" else textdemo_server.grpc_url
    outputs = infer("classify", url, {"text": strings(TEXTS)}, protocol)  # type: ignore[arg-type]
    expected = reference(TEXTS)
    assert outputs["label"].shape == (len(TEXTS), 1)
    np.testing.assert_allclose(outputs["score"], expected["score"], rtol=1e-5)
    np.testing.assert_allclose(outputs["topics"], expected["topics"], rtol=1e-5)
    assert list(outputs["label"][:, 0]) == list(expected["label"][:, 0])
    assert outputs["score"][2, 0] == 0.0  # the empty string reached the model as an empty string
    assert outputs["label"][3, 0] == outputs["label"][4, 0]


def test_fan_out_and_join(textdemo_server: LocalServer) -> None:
    """Both branches of the fan-out reach the join: the label combines sentiment and topic."""
    outputs = infer("classify", textdemo_server.http_url, {"text": strings(["a fine day for sport"])})
    mood, topic = outputs["label"][0, 0].decode().split("/")
    assert mood == ("positive" if outputs["score"][0, 0] >= 0 else "negative")
    assert topic == ["news", "sport", "tech", "arts"][int(outputs["topics"][0].argmax())]
    assert outputs["confidence"][0, 0] == pytest.approx(
        abs(outputs["score"][0, 0]) * outputs["topics"][0].max(), rel=1e-5
    )


def test_two_pipelines_share_models(textdemo_server: LocalServer) -> None:
    full = infer("classify", textdemo_server.grpc_url, {"text": strings(TEXTS)}, "grpc")
    partial = infer("sentiment_only", textdemo_server.grpc_url, {"text": strings(TEXTS)}, "grpc")
    assert set(partial) == {"score"}
    np.testing.assert_array_equal(full["score"], partial["score"])


def test_dynamic_batching_batches_under_concurrency(textdemo_server: LocalServer) -> None:
    """Triton's statistics API: fewer executions than inferences means requests shared a batch."""
    client = grpcclient.InferenceServerClient(textdemo_server.grpc_url)
    before = _model_stats(client, "sentiment")

    def call(i: int) -> None:
        tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(strings([f"request number {i}"]))
        client.infer("classify", [tensor])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(160)))
    after = _model_stats(client, "sentiment")
    client.close()
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 160
    assert executions < inferences, f"{executions} executions for {inferences} inferences: no batching"


def _model_stats(client: grpcclient.InferenceServerClient, model: str) -> dict[str, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {"inference_count": int(stats["inference_count"]), "execution_count": int(stats["execution_count"])}


def test_handler_error_fails_only_its_requests(faulty_server: LocalServer) -> None:
    """A batch that contains 'boom' fails with the handler's message; others succeed; server lives."""
    client = grpcclient.InferenceServerClient(faulty_server.grpc_url)

    def call(text: str) -> object:
        tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(strings([text]))
        try:
            return client.infer("shout", [tensor]).as_numpy("upper")[0, 0]
        except InferenceServerException as exc:
            return exc

    with pytest.raises(CompoundError, match="fragile refuses 'boom'"):
        infer("shout", faulty_server.http_url, {"text": strings(["boom"])})
    # fragile waits up to 100 ms to batch: 'boom' shares a batch with the others, yet fails alone
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, ["ok one", "boom", "ok two", "ok three"]))
    assert isinstance(results[1], InferenceServerException)
    assert [results[0], results[2], results[3]] == [b"OK ONE", b"OK TWO", b"OK THREE"]
    assert "model 'fragile'" in str(results[1]) and "RuntimeError" in str(results[1])
    after = [call(t) for t in ["still alive", "ünï"]]
    assert after == [b"STILL ALIVE", "ÜNÏ".encode()]
    client.close()


def test_non_batching_model_with_variable_dims(faulty_server: LocalServer) -> None:
    outputs = infer("matrix", faulty_server.http_url, {"values": np.array([1.5, 2.5, 3.0], dtype=np.float32)})
    assert outputs["total"].tolist() == [7.0]


def test_instance_thread_pools_are_capped(faulty_server: LocalServer) -> None:
    """instances.threads sizes the instance's BLAS pool (already loaded by the stub), OpenMP and
    tokenizers: without it each instance would start a thread per core."""
    outputs = infer("threads", faulty_server.http_url, {"probe": np.array([[1]], dtype=np.int32)})
    report = json.loads(outputs["report"][0, 0])
    assert report == {"blas": 2, "omp": "2", "tokenizers": "true"}


def test_unknown_pipeline_named(textdemo_server: LocalServer) -> None:
    with pytest.raises(CompoundError, match="nope"):
        infer("nope", textdemo_server.http_url, {"text": strings(["x"])})


def test_server_failing_at_start_shows_log_tail(tmp_path: Path) -> None:
    from tests.conftest import FIXTURES, start_server
    from toolkit.core.errors import ServerError
    from toolkit.plan import plan_spec
    from toolkit.repository.render import render_repository

    repo = render_repository(plan_spec(FIXTURES / "broken_init" / "pipeline.yaml"), tmp_path / "repo")
    with pytest.raises(ServerError) as caught:
        start_server(repo, tmp_path)
    message = str(caught.value)
    assert "exited" in message and "broken" in message
    assert "weights file missing" in message  # the handler's own error, from the log tail


def test_port_in_use_is_named(textdemo_server: LocalServer, tmp_path: Path) -> None:
    server = LocalServer(
        textdemo_server.repository,
        http_port=textdemo_server.endpoints.http_port,
        grpc_port=1,
        metrics_port=2,
        workdir=tmp_path,
    )
    with pytest.raises(CompoundError, match=f"port {textdemo_server.endpoints.http_port} .* already in use") as caught:
        server.start()
    assert "--http-port" in str(caught.value)


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(CompoundError, match="does not exist"):
        LocalServer(tmp_path / "nope").start()


def test_stopping_a_crashed_server_removes_its_orphaned_stubs(tmp_path: Path) -> None:
    """A server that dies by a signal (Triton 2.51 crashes under traced load) can leave Python-backend
    stubs behind in its process group, orphaned; stop() must not leave them running."""
    import os
    import signal
    import time

    from tests.conftest import start_server
    from toolkit.core.system import command_line
    from toolkit.targets.local import group_members
    from toolkit.targets.server import is_stub

    server = start_server(Path(__file__).resolve().parents[2] / "model_repository", tmp_path)
    assert server.pid is not None
    pgid = server.pid
    stubs = [pid for pid in group_members(pgid) if is_stub(command_line(pid))]
    assert stubs
    # a stub that cannot notice its server died (seen after Triton 2.51's crashes: stubs hung on the
    # shared memory the dying server held, for hours); a stopped process stands in for one
    os.kill(stubs[0], signal.SIGSTOP)
    os.kill(pgid, signal.SIGKILL)  # as a crash would
    time.sleep(0.5)
    assert not server.alive()  # a health check saw it dead (and reaped it)
    assert stubs[0] in group_members(pgid)  # the hung stub outlived its server
    server.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid in group_members(pgid) for pid in stubs):
        time.sleep(0.1)
    assert [pid for pid in stubs if pid in group_members(pgid)] == []
