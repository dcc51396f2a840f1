"""The Ray Serve peer takes the same request bytes as Triton's HTTP endpoint (KServe v2 with binary
tensor data): what tritonclient encodes, the peer decodes; what the peer answers, tritonclient parses."""

from __future__ import annotations

import numpy as np

from toolkit.bench.driver import decode_v2_request, encode_v2_response, v2_request, v2_response_arrays


def test_request_round_trip_numeric_and_strings() -> None:
    inputs = {
        "x": np.arange(8, dtype=np.float32).reshape(2, 4),
        "q": np.array([[b"what is triton?"], [b"\xc3\xa9t\xc3\xa9"]], dtype=np.object_),
        "k": np.array([[3], [5]], dtype=np.int64),
    }
    body, headers = v2_request(inputs, {"x": "FP32", "q": "BYTES", "k": "INT64"}, ["y"])
    decoded = decode_v2_request(body, headers["Inference-Header-Content-Length"])
    assert set(decoded) == {"x", "q", "k"}
    np.testing.assert_array_equal(decoded["x"], inputs["x"])
    assert decoded["x"].dtype == np.float32 and decoded["k"].dtype == np.int64
    assert decoded["q"].shape == (2, 1) and list(decoded["q"].ravel()) == list(inputs["q"].ravel())


def test_response_parses_with_tritonclient() -> None:
    outputs = {"y": np.ones((3, 16), dtype=np.float32), "answer": np.array([[b"a"], [b"bc"], [b""]], dtype=np.object_)}
    body, headers = encode_v2_response(outputs)
    parsed = v2_response_arrays(body, headers["Inference-Header-Content-Length"], ["y", "answer"])
    np.testing.assert_array_equal(parsed["y"], outputs["y"])
    assert parsed["answer"].shape == (3, 1) and list(parsed["answer"].ravel()) == [b"a", b"bc", b""]
