"""The hardened default on a real server: Triton's repository, shared-memory, logging and trace APIs
answer only to the deployment's key; inference, health, metadata and statistics stay open."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from toolkit.client import http_json, infer, model_states
from toolkit.targets.local import LocalServer


def test_unkeyed_clients_cannot_touch_shared_memory_or_models(textdemo_server: LocalServer) -> None:
    base = f"http://{textdemo_server.http_url}"
    status, _ = http_json(
        f"{base}/v2/systemsharedmemory/region/evil/register", {"key": "/evil", "offset": 0, "byte_size": 64}
    )
    assert status in (401, 403)
    status, _ = http_json(f"{base}/v2/repository/models/sentiment/unload", {})
    assert status in (401, 403)
    status, _ = http_json(f"{base}/v2/logging", {"log_verbose_level": 1})
    assert status in (401, 403)
    status, _ = http_json(f"{base}/v2/repository/models/sentiment/unload", {}, headers={"compound-key": "wrong"})
    assert status in (401, 403)

    grpc = grpcclient.InferenceServerClient(textdemo_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as refused:
            grpc.unload_model("sentiment")
        assert "restricted" in str(refused.value)
        with pytest.raises(InferenceServerException):
            grpc.register_system_shared_memory("evil", "/evil", 64)
    finally:
        grpc.close()
    # nothing was unloaded: the model and the pipeline still serve
    states = {m.name: m for m in model_states(textdemo_server.http_url, textdemo_server.headers)}
    assert states["sentiment"].healthy and states["classify"].healthy
    outputs = infer("classify", textdemo_server.http_url, {"text": np.array([[b"still serving"]], dtype=object)})
    assert outputs["label"].shape == (1, 1)


def test_open_apis_stay_open_and_the_key_opens_the_rest(textdemo_server: LocalServer) -> None:
    base = f"http://{textdemo_server.http_url}"
    for path in ("/v2/health/ready", "/v2", "/v2/models/classify", "/v2/models/stats", "/v2/models/classify/config"):
        status, _ = http_json(base + path)
        assert status == 200, path
    client = httpclient.InferenceServerClient(textdemo_server.http_url)
    try:
        index = client.get_model_repository_index(headers=textdemo_server.headers)
        assert {m["name"] for m in index} >= {"classify", "sentiment", "tok"}
    finally:
        client.close()
    grpc = grpcclient.InferenceServerClient(textdemo_server.grpc_url)
    try:
        names = {m.name for m in grpc.get_model_repository_index(headers=textdemo_server.grpc_headers).models}
        assert "classify" in names
    finally:
        grpc.close()
