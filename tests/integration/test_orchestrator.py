"""Generated BLS orchestrators on a real tritonserver: every control-flow form, errors, timeout,
trace forwarding, and 32 concurrent clients on a router without deadlock.

One server for the whole file, built from examples/agents (see its pipeline.yaml for the hooks:
the text `fail` makes a callee raise, `sleep:<ms>` makes it slow).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from toolkit.core.system import free_port
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.local import LocalServer

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "examples" / "agents" / "pipeline.yaml"


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, Path]]:
    """The agents repository served once; tracing is configured but off until a test enables it."""
    work = tmp_path_factory.mktemp("agents")
    repo = render_repository(plan_spec(AGENTS), work / "repo")
    trace_file = work / "trace.json"
    server = LocalServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=work / "tritonserver.log",
        extra_args=[
            "--trace-config",
            f"triton,file={trace_file}",
            "--trace-config",
            "triton,log-frequency=1",
            "--trace-config",
            "level=OFF",
            "--trace-config",
            "rate=1",
        ],
    )
    server.start()
    try:
        yield server, trace_file
    finally:
        server.stop()


@pytest.fixture()
def client(agents: tuple[LocalServer, Path]) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(agents[0].http_url, network_timeout=60.0, connection_timeout=60.0)
    yield c
    c.close()


def strings(*texts: str) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], dtype=object)


def infer(client: httpclient.InferenceServerClient, model: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    request = []
    for name, array in inputs.items():
        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        request.append(tensor)
    result = client.infer(model, request)
    return {out["name"]: result.as_numpy(out["name"]) for out in result.get_response()["outputs"]}


def text(array: np.ndarray) -> list[str]:
    return [v.decode() for v in array.reshape(-1)]


def test_repository_has_an_orchestrator_per_control_flow_pipeline(agents: tuple[LocalServer, Path]) -> None:
    repo = agents[0].repository
    manifest = json.loads((repo / "compound.json").read_text())
    for name in ("router", "triage", "refine", "rank", "guarded", "rank_flat"):
        assert manifest["pipelines"][name]["kind"] == "orchestrator"
        assert "cannot branch or loop" in manifest["pipelines"][name]["reason"]
        assert (repo / name / "1" / "program.json").is_file()


@pytest.mark.parametrize(
    ("query", "route", "answer"),
    [
        ("what is 2 + 2", "math", "math: what is 2 + 2"),
        ("fix my python bug", "code", "code: fix my python bug"),
        ("hello there", "chat", "chat: hello there"),  # no case matches: default
    ],
)
def test_switch_takes_each_branch_and_default(
    client: httpclient.InferenceServerClient, query: str, route: str, answer: str
) -> None:
    out = infer(client, "router", query=strings(query))
    assert text(out["route"]) == [route]
    assert text(out["answer"]) == [answer]


def test_switch_on_an_int_tensor(client: httpclient.InferenceServerClient) -> None:
    short = infer(client, "triage", query=strings("hi"))
    long = infer(client, "triage", query=strings("a rather long question, surely"))
    assert (short["size"].tolist(), text(short["answer"])) == ([[0]], ["chat: hi"])
    assert (long["size"].tolist(), text(long["answer"])) == ([[1]], ["code: a rather long question, surely"])


def test_batched_request_routes_each_row_on_its_own(client: httpclient.InferenceServerClient) -> None:
    out = infer(client, "router", query=strings("hello", "what is 3", "python code"))
    assert text(out["route"]) == ["chat", "math", "code"]
    assert text(out["answer"]) == ["chat: hello", "math: what is 3", "code: python code"]


def test_loop_stops_when_until_is_true(client: httpclient.InferenceServerClient) -> None:
    out = infer(client, "refine", start=np.array([[0]], dtype=np.int32), target=np.array([[3]], dtype=np.int32))
    assert out["draft"].tolist() == [[3]]  # 3 rounds of +1, then done
    assert out["done"].tolist() == [[True]]


def test_loop_stops_at_max_iterations(client: httpclient.InferenceServerClient) -> None:
    out = infer(client, "refine", start=np.array([[10]], dtype=np.int32), target=np.array([[100]], dtype=np.int32))
    assert out["draft"].tolist() == [[15]]  # max_iterations: 5
    assert out["done"].tolist() == [[False]]


def test_loop_rows_of_one_batch_leave_at_different_rounds(client: httpclient.InferenceServerClient) -> None:
    start = np.array([[0], [10], [2], [4]], dtype=np.int32)
    target = np.array([[3], [100], [3], [1]], dtype=np.int32)
    out = infer(client, "refine", start=start, target=target)
    assert out["draft"].tolist() == [[3], [15], [3], [5]]
    assert out["done"].tolist() == [[True], [False], [True], [True]]


def test_map_over_n_items_equals_n_single_calls(client: httpclient.InferenceServerClient) -> None:
    passages = ["a", "bbbb", "cc", "dddddddd", "eee"]
    mapped = infer(client, "rank", passages=np.array([[p.encode() for p in passages]], dtype=object))
    singles = [infer(client, "scorer", passage=strings(p))["score"] for p in passages]
    assert mapped["scores"].shape == (1, len(passages), 1)
    np.testing.assert_array_equal(mapped["scores"], np.stack(singles, axis=1))


def test_map_over_a_model_without_batch_axis(client: httpclient.InferenceServerClient) -> None:
    """A callee with max_batch_size 0: the orchestrator still batches, and calls it one row at a time."""
    passages = np.array([[b"a", b"bbb", b"cc"]], dtype=object)
    out = infer(client, "rank_flat", passages=passages)
    assert out["scores"].tolist() == [[[1.0], [3.0], [2.0]]]


def test_map_items_run_concurrently(client: httpclient.InferenceServerClient) -> None:
    """Four 400 ms items: one after another they would take 1.6 s; issued together, far less."""
    started = time.monotonic()
    out = infer(client, "rank", passages=np.array([[b"sleep:400"] * 4], dtype=object))
    elapsed = time.monotonic() - started
    assert out["scores"].shape == (1, 4, 1)
    assert elapsed < 1.4, f"map items look sequential: {elapsed:.2f} s for 4 x 400 ms"


def test_callee_error_names_the_step_and_server_keeps_serving(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        infer(client, "router", query=strings("fail"))
    message = str(raised.value)
    assert "pipeline 'router'" in message and "step steps.1.default.0 (model 'chatter')" in message
    assert "asked to fail" in message

    with pytest.raises(InferenceServerException) as raised:
        infer(client, "rank", passages=np.array([[b"ok", b"fail", b"fine"]], dtype=object))
    assert "step steps.0.map.body.0 (model 'scorer')" in str(raised.value)
    assert "failed items: " in str(raised.value) and "1" in str(raised.value).split("failed items: ")[1]

    assert text(infer(client, "router", query=strings("still there?"))["answer"]) == ["chat: still there?"]
    assert infer(client, "rank", passages=np.array([[b"ok"]], dtype=object))["scores"].tolist() == [[[2.0]]]


def test_a_failing_request_does_not_fail_the_requests_merged_with_it(agents: tuple[LocalServer, Path]) -> None:
    """Requests that reach one execute() run as one batch; a batch that fails is retried request
    by request, so only the bad request gets the error. (The bad requests go to chatter, the good
    ones to math_solver: a callee's own dynamic batch failing as a whole is the component model's
    behaviour, the same under an ensemble, and not what this tests.)"""
    server, _ = agents
    outcomes: dict[int, str] = {}

    def send(index: int) -> None:
        c = httpclient.InferenceServerClient(server.http_url, network_timeout=60.0)
        query = "fail" if index % 2 else f"what is {index} sleep:30"
        try:
            outcomes[index] = text(infer(c, "router", query=strings(query))["answer"])[0]
        except InferenceServerException as exc:
            outcomes[index] = f"error: {exc}"
        finally:
            c.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for index in range(8):
        if index % 2:
            assert "asked to fail" in outcomes[index]
        else:
            assert outcomes[index] == f"math: what is {index} sleep:30"


def test_timeout_is_honoured(client: httpclient.InferenceServerClient) -> None:
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as raised:
        infer(client, "guarded", passages=np.array([[b"sleep:1500"]], dtype=object))
    elapsed = time.monotonic() - started
    assert "timed out after 300 ms" in str(raised.value)
    assert "steps.0.map.body.0 (slow_scorer)" in str(raised.value)
    assert elapsed < 1.2, f"the 300 ms timeout fired after {elapsed:.2f} s"
    time.sleep(1.3)  # let slow_scorer finish that sleep; then the pipeline works within its budget
    assert infer(client, "guarded", passages=np.array([[b"ok"]], dtype=object))["scores"].tolist() == [[[2.0]]]


def test_trace_context_reaches_the_steps(
    agents: tuple[LocalServer, Path], client: httpclient.InferenceServerClient
) -> None:
    server, trace_file = agents
    # the trace API is restricted: it takes the deployment's key
    client.update_trace_settings(model_name="router", settings={"trace_level": ["TIMESTAMPS"]}, headers=server.headers)
    try:
        infer(client, "router", query=strings("what is 7"))
    finally:
        client.update_trace_settings(model_name="router", settings={"trace_level": ["OFF"]}, headers=server.headers)
    traces: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        traces = [
            t for f in sorted(trace_file.parent.glob(trace_file.name + "*")) for t in json.loads(f.read_text() or "[]")
        ]
        if sum("model_name" in t for t in traces) >= 3:
            break
        time.sleep(0.1)
    named = {t["id"]: t for t in traces if "model_name" in t}
    parents = [t for t in named.values() if t["model_name"] == "router"]
    assert parents, f"no trace of the orchestrator in {trace_file}"
    children = {t["model_name"] for t in named.values() if t.get("parent_id") == parents[-1]["id"]}
    assert children == {"route", "math_solver"}


def test_32_concurrent_clients_on_a_router_do_not_deadlock(agents: tuple[LocalServer, Path]) -> None:
    """Saturation: 32 clients fill both orchestrator instances' batches (2 x max_batch_size 16)
    while every callee is slowed down; every request must still complete, correctly."""
    server, _ = agents
    queries = ["what is 1 sleep:20", "python code sleep:20", "hello sleep:20", "what is 2", "def f", "hi"]
    expected = {q: ("math" if "what" in q else "code" if ("python" in q or "def" in q) else "chat") for q in queries}
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()

    def worker(index: int) -> None:
        c = httpclient.InferenceServerClient(server.http_url, network_timeout=60.0, connection_timeout=60.0)
        try:
            for round_ in range(8):
                query = queries[(index + round_) % len(queries)]
                out = infer(c, "router", query=strings(query))
                ok = text(out["route"]) == [expected[query]] and text(out["answer"]) == [f"{expected[query]}: {query}"]
                with lock:
                    done[0] += 1
                    if not ok:
                        failures.append(f"{query!r} -> {out}")
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            with lock:
                failures.append(f"client {index}: {type(exc).__name__}: {exc}")
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    stuck = sum(thread.is_alive() for thread in threads)
    assert stuck == 0, f"{stuck} clients still waiting after 120 s: deadlock? ({done[0]} of 256 requests done)"
    assert not failures, failures[:5]
    assert done[0] == 32 * 8
    assert server.alive()
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("router")["model_stats"][0]
    assert int(stats["execution_count"]) < int(stats["inference_count"]), (
        "requests were never merged into one execute()"
    )
