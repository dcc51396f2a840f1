"""The streaming example served by the real tritonserver, through the bench's hand-written models
(benchmarks/streaming_model.py): continuous batching, one stream at a time and static answers all
give the tokens the handler gives in-process, with concurrent streams joining the batch."""

from __future__ import annotations

import sys
import threading
from typing import Any, Iterator

import numpy as np
import pytest

from tests.conftest import ROOT, start_server
from toolkit.client import grpc_client
from toolkit.loadtest.inputs import Request, Tensor
from toolkit.loadtest.streaming import grpc_request, grpc_stream
from toolkit.targets.local import LocalServer

sys.path.insert(0, str(ROOT / "benchmarks"))
from streaming import QUESTIONS, build_repository  # noqa: E402

PARAMETERS = {"max_tokens": 48, "min_tokens": 16, "hidden": 128, "seed": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    work = tmp_path_factory.mktemp("rag_stream_served")
    server = start_server(build_repository(work / "repo", PARAMETERS, 0.005), work)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def expected() -> dict[str, list[bytes]]:
    sys.path.insert(0, str(ROOT / "examples" / "rag_stream"))
    try:
        from stream_handlers import Generate, Retrieve
    finally:
        sys.path.remove(str(ROOT / "examples" / "rag_stream"))
    retrieve, generate = Retrieve({}, "cpu"), Generate(PARAMETERS, "cpu")
    answers = {}
    for question in QUESTIONS[:8]:
        query = np.array([[question.encode()]], dtype=object)
        answers[question] = [r["token"][0, 0] for r in generate(query=query, passage=retrieve(query)["passage"])]
    return answers


def stream_tokens(url: str, model: str, question: str) -> list[bytes]:
    client = grpc_client(url)
    tokens: list[bytes] = []
    try:
        request = grpc_request(model, Request((Tensor("query", "BYTES", (1,), (question,)),)))
        timing = grpc_stream(
            client,
            request,
            timeout=60.0,
            on_token=lambda response: tokens.append(response.raw_output_contents[0][4:]),  # BYTES: 4-byte length
        )
        assert timing.error is None, timing.error
        assert timing.tokens == len(tokens)
    finally:
        client.close()
    return tokens


@pytest.mark.parametrize("model", ["rag_batched", "rag_single"])
def test_concurrent_streams_get_the_in_process_tokens(
    served: LocalServer, expected: dict[str, list[bytes]], model: str
) -> None:
    got: dict[str, Any] = {}

    def ask(question: str) -> None:
        got[question] = stream_tokens(served.grpc_url, model, question)

    threads = [threading.Thread(target=ask, args=(q,)) for q in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert got == expected


def test_static_answers_carry_every_token_at_once(served: LocalServer, expected: dict[str, list[bytes]]) -> None:
    import tritonclient.grpc as grpcclient

    client = grpc_client(served.grpc_url)
    try:
        for question, tokens in list(expected.items())[:3]:
            infer_input = grpcclient.InferInput("query", [1, 1], "BYTES")
            infer_input.set_data_from_numpy(np.array([[question.encode()]], dtype=object))
            result = client.infer("rag_static", [infer_input])
            assert list(result.as_numpy("token")[0]) == tokens
            assert list(result.as_numpy("index")[0]) == list(range(len(tokens)))
    finally:
        client.close()
