"""Fused pipelines (`fuse: true`) on a real tritonserver: every handler of the pipeline runs
in-process in one Python model. Each fused pipeline must answer exactly what its ensemble or BLS
twin answers, batch requests together, name a failing step and keep serving, honour its timeout.

One server: the textdemo and agents examples merged into one spec (textdemo's handler module
renamed, since both are called `handlers.py`), with a `<name>_fused` twin of each pipeline.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from tests.conftest import start_server
from tests.integration.test_orchestrator import infer, strings, text
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.local import LocalServer

ROOT = Path(__file__).resolve().parents[2]
FUSED = {
    "classify": {"instances": {"count": 2}},
    "router": {},
    "refine": {},
    "rank": {},
    "rank_flat": {},
    "guarded": {},
}
TEXTS = ["I love this product", "terrible, awful service", "", "naïve café ☕ — 東京", "the match last night was great"]


def merged_spec(folder: Path) -> Path:
    agents = yaml.safe_load((ROOT / "examples/agents/pipeline.yaml").read_text())
    textdemo = yaml.safe_load((ROOT / "examples/textdemo/pipeline.yaml").read_text())
    shutil.copy(ROOT / "examples/agents/handlers.py", folder / "handlers.py")
    shutil.copy(ROOT / "examples/textdemo/handlers.py", folder / "textdemo_handlers.py")
    for model in textdemo["models"].values():
        model["handler"] = "textdemo_" + model["handler"]
    spec = {
        "name": "fused",
        "models": {**agents["models"], **textdemo["models"]},
        "pipelines": {**agents["pipelines"], **textdemo["pipelines"]},
    }
    for name, extra in FUSED.items():
        spec["pipelines"][f"{name}_fused"] = {**spec["pipelines"][name], "fuse": True, **extra}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def fused_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fused")
    return render_repository(plan_spec(merged_spec(folder)), folder / "repo")


@pytest.fixture(scope="module")
def fused_server(fused_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = start_server(fused_repo, tmp_path_factory.mktemp("fused-logs"))
    yield server
    server.stop()


@pytest.fixture()
def client(fused_server: LocalServer) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(fused_server.http_url, network_timeout=60.0, connection_timeout=60.0)
    yield c
    c.close()


def test_repository_holds_one_model_with_every_handler(fused_repo: Path) -> None:
    program = json.loads((fused_repo / "classify_fused/1/program.json").read_text())
    steps = program["body"]["steps"]
    assert [s["model"] for s in steps] == ["tok", "sentiment", "topic", "verdict"]
    assert all(s["inline"] for s in steps)
    assert set(program["handlers"]) == {"tok", "sentiment", "topic", "verdict"}
    assert program["handlers"]["tok"]["warmup"] == [1, 64]
    assert (fused_repo / "classify_fused/1/tok/textdemo_handlers.py").is_file()  # a code folder per model
    assert (fused_repo / "classify_fused/1/compound_component.py").read_bytes() == (
        ROOT / "templates/model.py"
    ).read_bytes()
    config = (fused_repo / "classify_fused/config.pbtxt").read_text()
    assert "# Why fused: fuse: true:" in config and "count: 2" in config and "kind: KIND_CPU" in config
    assert "max_queue_delay_microseconds: 500" in config  # the components' longest delay
    manifest = json.loads((fused_repo / "compound.json").read_text())
    assert manifest["pipelines"]["classify_fused"]["kind"] == "fused"
    assert manifest["pipelines"]["router_fused"]["kind"] == "fused"
    # every model here is also used by a pipeline that is not fused, so all are still deployed
    assert "tok" in manifest["models"] and (fused_repo / "tok/config.pbtxt").is_file()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_fused_static_dag_answers_what_the_ensemble_answers(fused_server: LocalServer, protocol: str) -> None:
    batch = strings(*TEXTS)
    if protocol == "http":
        c: Any = httpclient.InferenceServerClient(fused_server.http_url)
        module: Any = httpclient
    else:
        c, module = grpcclient.InferenceServerClient(fused_server.grpc_url), grpcclient
    try:
        results = {}
        for pipeline in ("classify", "classify_fused"):
            tensor = module.InferInput("text", list(batch.shape), "BYTES")
            tensor.set_data_from_numpy(batch)
            response = c.infer(pipeline, [tensor])
            results[pipeline] = {name: response.as_numpy(name) for name in ("label", "confidence", "score", "topics")}
    finally:
        c.close()
    for name, expected in results["classify"].items():
        got = results["classify_fused"][name]
        assert got.shape == expected.shape == (len(TEXTS), *expected.shape[1:])
        if expected.dtype == np.object_:
            assert got.tolist() == expected.tolist()
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_concurrent_requests_run_as_one_batch(
    fused_server: LocalServer, client: httpclient.InferenceServerClient
) -> None:
    def one(i: int) -> str:
        with httpclient.InferenceServerClient(fused_server.http_url) as c:
            return text(infer(c, "classify_fused", text=strings(f"request {i} {TEXTS[i % len(TEXTS)]}"))["label"])[0]

    before = client.get_inference_statistics("classify_fused")["model_stats"][0]
    with ThreadPoolExecutor(32) as pool:
        labels = list(pool.map(one, range(256)))
    after = client.get_inference_statistics("classify_fused")["model_stats"][0]
    assert len(labels) == 256 and all(labels)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 256
    assert executions < inferences, f"{executions} executions for {inferences} requests: nothing was batched"


def test_fused_control_flow_matches_the_orchestrator(client: httpclient.InferenceServerClient) -> None:
    queries = strings("what is 2 plus 2", "write code for a parser", "hello there")
    for pipeline in ("router", "router_fused"):
        out = infer(client, pipeline, query=queries)
        assert text(out["route"]) == ["math", "code", "chat"], pipeline
    assert text(infer(client, "router", query=queries)["answer"]) == text(
        infer(client, "router_fused", query=queries)["answer"]
    )
    loop = {"start": np.array([[0], [3]], dtype=np.int32), "target": np.array([[2], [40]], dtype=np.int32)}
    expected, got = infer(client, "refine", **loop), infer(client, "refine_fused", **loop)
    assert got["draft"].tolist() == expected["draft"].tolist() and got["done"].tolist() == expected["done"].tolist()
    passages = np.array([[b"alpha", b"beta gamma", b"delta"]], dtype=object)
    np.testing.assert_allclose(
        infer(client, "rank_fused", passages=passages)["scores"], infer(client, "rank", passages=passages)["scores"]
    )
    # rank_flat's callee takes no batch axis: fused, the pipeline does not either; orchestrated, it batches
    flat = infer(client, "rank_flat_fused", passages=passages[0])["scores"]
    np.testing.assert_allclose(flat, infer(client, "rank_flat", passages=passages)["scores"][0])


def test_a_failing_handler_names_the_step_and_the_server_keeps_serving(
    client: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as failure:
        infer(client, "router_fused", query=strings("fail"))
    message = str(failure.value)
    assert "pipeline 'router_fused': step steps.1.default.0 (model 'chatter') failed" in message
    assert "ValueError: asked to fail" in message and "handlers.py:" in message
    assert text(infer(client, "router_fused", query=strings("hello"))["answer"])


def test_timeout_is_checked_between_steps(client: httpclient.InferenceServerClient) -> None:
    passages = np.array([[b"sleep:200 a", b"sleep:200 b", b"sleep:200 c"]], dtype=object)  # 3 x 200 ms > 300 ms
    with pytest.raises(InferenceServerException) as failure:
        infer(client, "guarded_fused", passages=passages)
    assert (
        "pipeline 'guarded_fused' timed out after 300 ms (timeout_ms), before step steps.0.map.body.0 (slow_scorer)"
        in str(failure.value)
    )
    assert infer(client, "guarded_fused", passages=np.array([[b"quick"]], dtype=object))["scores"].shape == (1, 1, 1)
