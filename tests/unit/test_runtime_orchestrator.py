"""templates/orchestrator.py, the generic BLS/fused runtime, run in-process against the fake
pb_utils on programs compiled from a small spec: switch, loop, map, merged requests, errors pinned
by bisection, models without a batch axis fed row by row, and fused (inline) handlers with their
output checks and their own code folders."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from tests.unit import fake_pb_utils as fake
from toolkit.plan import plan_spec
from toolkit.repository.render import render_files

SPEC = """
name: programs
models:
  route:
    handler: handlers:Route
    inputs: {query: {dtype: string, dims: [1]}}
    outputs: {route: {dtype: string, dims: [1]}}
    max_batch_size: 16
  shout:
    handler: handlers:Shout
    inputs: {query: {dtype: string, dims: [1]}}
    outputs: {answer: {dtype: string, dims: [1]}}
    max_batch_size: 16
  whisper:
    handler: handlers:Whisper
    inputs: {query: {dtype: string, dims: [1]}}
    outputs: {answer: {dtype: string, dims: [1]}}
    max_batch_size: 16
  step:
    handler: handlers:Step
    parameters: {target: 3}
    inputs: {n: {dtype: int32, dims: [1]}}
    outputs: {n: {dtype: int32, dims: [1]}, done: {dtype: bool, dims: [1]}}
    max_batch_size: 16
  score:
    handler: handlers:Score
    inputs: {item: {dtype: int32, dims: [1]}}
    outputs: {score: {dtype: fp32, dims: [1]}}
    max_batch_size: 16
  flat:
    handler: handlers:Score
    inputs: {item: {dtype: int32, dims: [1]}}
    outputs: {score: {dtype: fp32, dims: [1]}}
    max_batch_size: 0
pipelines:
  router:
    inputs: {query: {dtype: string, dims: [1]}}
    outputs: [route, answer]
    steps:
      - model: route
        inputs: {query: query}
        outputs: {route: route}
      - switch: route
        cases:
          loud: [{model: shout, inputs: {query: query}, outputs: {answer: answer}}]
        default: [{model: whisper, inputs: {query: query}, outputs: {answer: answer}}]
  router_fused:
    fuse: true
    inputs: {query: {dtype: string, dims: [1]}}
    outputs: [route, answer]
    steps:
      - model: route
        inputs: {query: query}
        outputs: {route: route}
      - switch: route
        cases:
          loud: [{model: shout, inputs: {query: query}, outputs: {answer: answer}}]
        default: [{model: whisper, inputs: {query: query}, outputs: {answer: answer}}]
  counter:
    inputs: {start: {dtype: int32, dims: [1]}}
    outputs: [n, done]
    steps:
      - loop:
          max_iterations: 10
          until: done
          carry: {n: start}
          body: [{model: step, inputs: {n: n}, outputs: {n: n, done: done}}]
  rank:
    inputs: {items: {dtype: int32, dims: [-1]}}
    outputs: [scores]
    steps:
      - map:
          over: items
          body: [{model: score, inputs: {item: items}, outputs: {score: scores}}]
  rank_flat:
    inputs: {items: {dtype: int32, dims: [-1]}}
    outputs: [scores]
    steps:
      - map:
          over: items
          body: [{model: flat, inputs: {item: items}, outputs: {score: scores}}]
  flat_chain:
    inputs: {item: {dtype: int32, dims: [1]}, query: {dtype: string, dims: [1]}}
    outputs: [score, route]
    steps:
      - model: route
        inputs: {query: query}
        outputs: {route: route}
      - switch: route
        cases:
          loud: [{model: flat, inputs: {item: item}, outputs: {score: score}}]
        default: [{model: flat, inputs: {item: item}, outputs: {score: score}}]
  fan_fused:
    fuse: true
    inputs: {query: {dtype: string, dims: [1]}}
    outputs: [route, loud, quiet]
    steps:
      - {model: route, inputs: {query: query}, outputs: {route: route}}
      - {model: shout, inputs: {query: query}, outputs: {answer: loud}}
      - {model: whisper, inputs: {query: query}, outputs: {answer: quiet}}
"""

HANDLERS = """
import numpy as np


def texts(array):
    return [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in array[:, 0]]


class Route:
    def __init__(self, parameters, device):
        pass

    def __call__(self, query):
        return {"route": np.array([[b"loud" if t.endswith("!") else b"quiet"] for t in texts(query)], dtype=object)}


class Shout:
    def __init__(self, parameters, device):
        pass

    def __call__(self, query):
        if any(t == "fail!" for t in texts(query)):
            raise ValueError("asked to fail")
        return {"answer": np.array([[t.upper()] for t in texts(query)])}  # str: the wrapper encodes it


class Whisper:
    def __init__(self, parameters, device):
        pass

    def __call__(self, query):
        if any(t == "fail" for t in texts(query)):
            raise ValueError("asked to fail")
        return {"answer": np.array([[t.lower().encode()] for t in texts(query)], dtype=object)}


class Step:
    def __init__(self, parameters, device):
        self.target = int(parameters.get("target", 3))

    def __call__(self, n):
        n = n + 1
        return {"n": n, "done": n >= self.target}


class Score:
    def __init__(self, parameters, device):
        pass

    def __call__(self, item):
        return {"score": item * 0.5}  # float64 into fp32
"""


LOADED: list[Any] = []  # models the current test loaded: unloaded after it (their metrics threads stop)


@pytest.fixture()
def pb() -> Iterator[ModuleType]:
    with fake.installed() as module:
        yield module
        while LOADED:
            model = LOADED.pop()
            if model.metrics is not None:
                model.metrics.unloaded()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """The spec's repository as rendered, on disk (its handlers run in-process for fused pipelines)."""
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "pipeline.yaml").write_text(SPEC)
    (tmp_path / "spec" / "handlers.py").write_text(HANDLERS)
    root = tmp_path / "repo"
    for path, content in render_files(plan_spec(tmp_path / "spec" / "pipeline.yaml")).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    return root


def register_callees(handlers_source: str = HANDLERS) -> dict[str, fake.Callee]:
    """Fake component models that compute what the spec's handlers compute. `flat` (max_batch_size
    0) checks that it gets one row without the batch axis, as Triton would insist."""
    namespace: dict[str, Any] = {}
    exec(compile(handlers_source, "handlers.py", "exec"), namespace)  # the test's own source

    def batched(handler: Any) -> Callable[[fake.Arrays], fake.Arrays]:
        def call(arrays: fake.Arrays) -> fake.Arrays:
            return {name: _bytes(np.asarray(value)) for name, value in handler(**arrays).items()}

        return call

    def flat(arrays: fake.Arrays) -> fake.Arrays:
        assert arrays["item"].shape == (1,), f"flat got {arrays['item'].shape}: dims [1], no batch axis"
        return {"score": (arrays["item"] * 0.5).astype(np.float32)}

    parameters = {"step": {"target": 3}}
    for model, cls in (
        ("route", "Route"),
        ("shout", "Shout"),
        ("whisper", "Whisper"),
        ("step", "Step"),
        ("score", "Score"),
    ):
        fake.CALLEES[model] = fake.Callee(batched(namespace[cls](parameters.get(model, {}), "cpu")))
    fake.CALLEES["flat"] = fake.Callee(flat)
    return fake.CALLEES


def _bytes(array: np.ndarray) -> np.ndarray:
    return np.char.encode(array, "utf-8").astype(object) if array.dtype.kind == "U" else array


def load(repo: Path, pipeline: str) -> Any:
    sys.path.append(str(repo / pipeline / "1"))  # as the stub does, behind what sys.path already holds
    module = fake.load_template(repo / pipeline / "1" / "model.py", f"orchestrator_{pipeline}_{id(repo)}")
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps({"name": pipeline, "parameters": {}}),
            "model_repository": str(repo / pipeline),
            "model_version": "1",
            "model_name": pipeline,
            "model_instance_kind": "CPU",
        }
    )
    LOADED.append(model)
    return model


def execute(model: Any, *requests: Any) -> list[Any]:
    return fake.run(model.execute(list(requests)))


def strings(*texts: str) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], dtype=object)


def ints(*values: int) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.int32)


def rows_per_call(model: str) -> list[int]:
    return [next(iter(arrays.values())).shape[0] for arrays in fake.CALLEES[model].calls]


# --- control flow -------------------------------------------------------------------------------


def test_switch_runs_each_branch_once_on_its_rows(pb: ModuleType, repo: Path) -> None:
    register_callees()
    (response,) = execute(load(repo, "router"), fake.request(query=strings("hi!", "Hello", "yo!")))
    out = fake.outputs(response)
    assert out["route"].tolist() == [[b"loud"], [b"quiet"], [b"loud"]]
    assert out["answer"].tolist() == [[b"HI!"], [b"hello"], [b"YO!"]]
    assert rows_per_call("route") == [3] and rows_per_call("shout") == [2] and rows_per_call("whisper") == [1]


def test_requests_with_the_same_shapes_run_merged(pb: ModuleType, repo: Path) -> None:
    register_callees()
    model = load(repo, "router")
    responses = execute(model, *(fake.request(query=strings(t)) for t in ("a!", "B", "c", "d!")))
    assert [fake.outputs(r)["answer"].tolist() for r in responses] == [[[b"A!"]], [[b"b"]], [[b"c"]], [[b"D!"]]]
    assert rows_per_call("route") == [4]  # one call per step for the merged batch


def test_loop_retires_rows_as_they_finish(pb: ModuleType, repo: Path) -> None:
    register_callees()
    (response,) = execute(load(repo, "counter"), fake.request(start=ints(0, 1, 5)))
    out = fake.outputs(response)
    assert out["n"].tolist() == [[3], [3], [6]] and out["done"].tolist() == [[True]] * 3
    assert rows_per_call("step") == [3, 2, 1]


def test_map_runs_items_concurrently_and_stacks_them(pb: ModuleType, repo: Path) -> None:
    register_callees()
    items = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    (response,) = execute(load(repo, "rank"), fake.request(items=items))
    scores = fake.outputs(response)["scores"]
    assert scores.shape == (2, 3, 1) and scores[..., 0].tolist() == (items * 0.5).tolist()
    assert rows_per_call("score") == [2, 2, 2] and fake.CALLEES["score"].most_in_flight == 3


# --- a callee without a batch axis ----------------------------------------------------------------


def test_merged_rows_reach_a_model_without_batch_axis_one_request_per_row(pb: ModuleType, repo: Path) -> None:
    register_callees()
    items = np.array([[1, 2], [10, 20], [100, 200]], dtype=np.int32)
    (response,) = execute(load(repo, "rank_flat"), fake.request(items=items))
    scores = fake.outputs(response)["scores"]
    assert scores.shape == (3, 2, 1) and scores[..., 0].tolist() == (items * 0.5).tolist()
    assert len(fake.CALLEES["flat"].calls) == 6
    assert fake.CALLEES["flat"].most_in_flight == 6  # every row of every item at once


def test_requests_merged_before_a_model_without_batch_axis_are_split_back(pb: ModuleType, repo: Path) -> None:
    register_callees()
    requests = [fake.request(item=ints(i), query=strings(q)) for i, q in ((1, "a!"), (2, "b"), (3, "c!"), (4, "d"))]
    responses = execute(load(repo, "flat_chain"), *requests)
    assert [fake.outputs(r)["score"].tolist() for r in responses] == [[[0.5]], [[1.0]], [[1.5]], [[2.0]]]
    assert rows_per_call("route") == [4]
    assert sorted(arrays["item"].tolist() for arrays in fake.CALLEES["flat"].calls) == [[1], [2], [3], [4]]


def test_rows_of_different_shapes_from_a_model_without_batch_axis_name_the_step(pb: ModuleType, repo: Path) -> None:
    register_callees()
    fake.CALLEES["flat"] = fake.Callee(lambda arrays: {"score": np.zeros(int(arrays["item"][0]), np.float32)})
    (response,) = execute(load(repo, "rank_flat"), fake.request(items=np.array([[1], [2]], dtype=np.int32)))
    message = fake.error(response)
    assert "step steps.0.map.body.0 (model 'flat'): rows produced 'score' with different shapes" in message


# --- errors -----------------------------------------------------------------------------------------


def test_a_failing_request_is_found_by_bisection_and_fails_alone(pb: ModuleType, repo: Path) -> None:
    register_callees()
    queries = [f"q{i}" for i in range(16)]
    queries[5] = "fail"
    responses = execute(load(repo, "router"), *(fake.request(query=strings(q)) for q in queries))
    for i, response in enumerate(responses):
        if i == 5:
            assert fake.error(response) == (
                "pipeline 'router': step steps.1.default.0 (model 'whisper') failed: "
                "model 'whisper': ValueError: asked to fail"
            )
        else:
            assert fake.outputs(response)["answer"].tolist() == [[f"q{i}".encode()]]
    # every run starts at `route`: the merged run, then two runs per halving (4 for 16 requests),
    # where retrying each request alone would take 16 more
    assert len(fake.CALLEES["route"].calls) == 1 + 2 * 4


def test_a_missing_case_fails_only_its_request(pb: ModuleType, repo: Path) -> None:
    register_callees()
    fake.CALLEES["flat"] = fake.Callee(lambda arrays: {"wrong": arrays["item"]})
    requests = [fake.request(item=ints(1), query=strings("x"))]
    (response,) = execute(load(repo, "flat_chain"), *requests)
    assert "step steps.1.default.0 (model 'flat') returned no output 'score'" in fake.error(response)


# --- which thread runs the program --------------------------------------------------------------------


def test_a_program_with_one_call_at_a_time_runs_in_the_stubs_thread_with_blocking_calls(
    pb: ModuleType, repo: Path
) -> None:
    """No parallel steps, no map, batching callees, no timeout: execute() is a plain method (the stub
    calls it in its own thread) and every call blocks; a switch whose rows take both branches still
    runs each branch once (the event loop finishes what waits)."""
    register_callees()
    for pipeline in ("router", "counter"):
        model = load(repo, pipeline)
        assert not inspect.iscoroutinefunction(model.execute), pipeline
    (response,) = execute(load(repo, "router"), fake.request(query=strings("hi!", "Hello", "yo!")))
    assert fake.outputs(response)["answer"].tolist() == [[b"HI!"], [b"hello"], [b"YO!"]]
    assert [fake.CALLEES[m].blocking_calls for m in ("route", "shout", "whisper")] == [1, 1, 1]


def test_programs_that_overlap_calls_keep_the_backends_event_loop(pb: ModuleType, repo: Path) -> None:
    """A map (items at once), a model without a batch axis (rows at once), or a timeout (cut short
    while a call runs) needs async_exec on the backend's loop."""
    register_callees()
    for pipeline in ("rank", "rank_flat", "flat_chain"):
        assert inspect.iscoroutinefunction(load(repo, pipeline).execute), pipeline
    model = load(repo, "router")
    module = sys.modules[type(model).__module__]
    assert module._one_call_at_a_time(model.program)
    assert not module._one_call_at_a_time({**model.program, "timeout_ms": 100})
    (response,) = execute(load(repo, "rank"), fake.request(items=np.array([[1, 2]], dtype=np.int32)))
    assert fake.outputs(response)["scores"][..., 0].tolist() == [[0.5, 1.0]]
    assert fake.CALLEES["score"].blocking_calls == 0 and fake.CALLEES["score"].most_in_flight == 2


def test_a_timeout_set_on_a_blocking_program_is_still_enforced_before_each_call(pb: ModuleType, repo: Path) -> None:
    register_callees()
    model = load(repo, "counter")
    model.timeout_s = 0.0
    (response,) = execute(model, fake.request(start=ints(0)))
    assert "timed out after 0 ms" in fake.error(response) and not fake.CALLEES["step"].calls


# --- fused (inline) -----------------------------------------------------------------------------------


def test_fused_handlers_run_in_process(pb: ModuleType, repo: Path) -> None:
    model = load(repo, "router_fused")
    assert set(model.inline) == {"route", "shout", "whisper"}
    responses = execute(model, fake.request(query=strings("hi!", "Hello")), fake.request(query=strings("x")))
    assert fake.outputs(responses[0])["answer"].tolist() == [[b"HI!"], [b"hello"]]
    assert fake.outputs(responses[1])["answer"].tolist() == [[b"x"]]
    assert not fake.CALLEES  # nothing went over BLS


def test_fused_steps_side_by_side_run_in_order_without_the_event_loop(pb: ModuleType, repo: Path) -> None:
    """Inline steps never wait: steps of one stage run one after another in list order, as the
    tasks would, with no task, gather or loop round (execute() returns at its first step)."""
    model = load(repo, "fan_fused")
    assert model.program["body"]["in_order"] is True
    order: list[str] = []
    for name in ("route", "shout", "whisper"):
        runner = model.inline[name]
        runner.handler = (lambda h, n: lambda **kw: order.append(n) or h(**kw))(runner.handler, name)
    model.loop.run_until_complete = None  # the loop is never needed
    responses = model.execute([fake.request(query=strings("hi!", "Hello")), fake.request(query=strings("x"))])
    assert order == ["route", "shout", "whisper"]
    first = fake.outputs(responses[0])
    assert first["loud"].tolist() == [[b"HI!"], [b"HELLO"]] and first["quiet"].tolist() == [[b"hi!"], [b"hello"]]
    assert fake.outputs(responses[1])["route"].tolist() == [[b"quiet"]]
    # a failing step fails the batch with its name, as before (bisection down to the bad request)
    model.inline["shout"].handler = lambda **kw: (_ for _ in ()).throw(ValueError("no"))
    (response,) = model.execute([fake.request(query=strings("x"))])
    assert "(model 'shout') failed" in fake.error(response)
    # a router (calls another model, not inline) is not marked
    assert "in_order" not in load(repo, "router").program["body"]


def test_fused_failure_is_pinned_by_bisection_and_names_the_step(pb: ModuleType, repo: Path) -> None:
    model = load(repo, "router_fused")
    calls: list[int] = []
    route = model.inline["route"].handler
    model.inline["route"].handler = lambda query: calls.append(query.shape[0]) or route(query)
    responses = execute(model, *(fake.request(query=strings("fail!" if i == 2 else f"q{i}!")) for i in range(8)))
    assert "step steps.1.cases.loud.0 (model 'shout') failed: model 'shout': ValueError: asked to fail" in fake.error(
        responses[2]
    )
    assert [fake.outputs(r)["answer"].tolist() for i, r in enumerate(responses) if i != 2] == [
        [[f"Q{i}!".encode()]] for i in range(8) if i != 2
    ]
    assert calls == [8, 4, 4, 2, 2, 1, 1]


def without_output_dims(repo: Path, pipeline: str) -> None:
    """program.json's handler outputs in the older [name, dtype] form (no dims to check)."""
    path = repo / pipeline / "1" / "program.json"
    program = json.loads(path.read_text())
    for entry in program["handlers"].values():
        entry["outputs"] = [[name, dtype] for name, dtype, *_ in entry["outputs"]]
    path.write_text(json.dumps(program))


@pytest.mark.parametrize("dims_in_program", [False, True])
def test_fused_outputs_are_checked_like_a_component_models(pb: ModuleType, repo: Path, dims_in_program: bool) -> None:
    if not dims_in_program:
        without_output_dims(repo, "router_fused")
    model = load(repo, "router_fused")
    model.inline["whisper"].handler = lambda query: {"answer": np.ones((query.shape[0], 1), np.int32)}
    (response,) = execute(model, fake.request(query=strings("a")))
    assert "(model 'whisper') failed: model 'whisper': output 'answer' is int32" in fake.error(response)
    model.inline["whisper"].handler = lambda query: {"answer": np.full((query.shape[0], 2), b"x", dtype=object)}
    (response,) = execute(model, fake.request(query=strings("a")))
    if dims_in_program:
        assert (
            "output 'answer' has shape [1, 2]: after the batch axis it must match the declared dims [1]"
            in fake.error(response)
        )
    else:
        assert fake.outputs(response)["answer"].shape == (1, 2)  # the old form names no dims: unchecked


def test_fused_handlers_with_the_same_module_name_load_from_their_own_code_folders(pb: ModuleType, repo: Path) -> None:
    """Each model's handler code in <version>/<model>/, named in program.json's `code` (several
    `handlers.py`, each importing its own `helpers`): every step runs its own."""
    version = repo / "router_fused" / "1"
    path = version / "program.json"
    program = json.loads(path.read_text())
    assert not (version / "handlers.py").exists()  # nothing to fall back on beside the runtime
    for model, entry in program["handlers"].items():
        folder = version / model
        assert entry["code"] == model and (folder / "handlers.py").is_file()  # as the generator lays it out
        (folder / "helpers.py").write_text(f"TAG = {model!r}\n")
        source = HANDLERS.replace("import numpy as np\n", "import numpy as np\n\nimport helpers\n", 1)
        source = source.replace("[[t.upper()]", "[[helpers.TAG + ':' + t.upper()]").replace(
            "[[t.lower().encode()]", "[[(helpers.TAG + ':' + t.lower()).encode()]"
        )
        (folder / "handlers.py").write_text(source)
        entry["code"] = model
    path.write_text(json.dumps(program))
    (response,) = execute(load(repo, "router_fused"), fake.request(query=strings("hi!", "Hello")))
    assert fake.outputs(response)["answer"].tolist() == [[b"shout:HI!"], [b"whisper:hello"]]


def test_the_component_wrapper_is_loaded_from_beside_the_runtime(
    pb: ModuleType, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "compound_component.py").write_text("raise ImportError('the decoy compound_component was imported')\n")
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(cwd))
    model = load(repo, "router_fused")
    assert fake.outputs(execute(model, fake.request(query=strings("a")))[0])["answer"].tolist() == [[b"a"]]


def test_timeout_is_not_bisected(pb: ModuleType, repo: Path) -> None:
    register_callees()
    model = load(repo, "router")
    model.timeout_s = 0.0  # already past when the first step starts
    responses = execute(model, *(fake.request(query=strings(f"q{i}")) for i in range(4)))
    assert all("timed out after 0 ms" in fake.error(r) for r in responses)
    assert len(fake.CALLEES["route"].calls) <= 1


def test_the_spec_fixture_is_what_the_tests_expect(repo: Path) -> None:
    """The compiled programs have the shapes these tests rely on."""
    flat = json.loads((repo / "rank_flat" / "1" / "program.json").read_text())
    assert flat["batching"] is True and flat["body"]["steps"][0]["body"]["steps"][0]["batching"] is False
    fused = json.loads((repo / "router_fused" / "1" / "program.json").read_text())
    assert set(fused["handlers"]) == {"route", "shout", "whisper"}
    assert (repo / "router_fused" / "1" / "compound_component.py").is_file()


# --- metrics ----------------------------------------------------------------------------------------


def step_series(name: str) -> dict[tuple[str, str, str], Any]:
    """(pipeline, step, component) -> a histogram's observations, a counter's value."""
    return {
        (labels["pipeline"], labels["step"], labels["component"]): (
            metric.observations if metric.kind == "HISTOGRAM" else metric.value
        )
        for labels, metric in fake.series(name)
    }


def test_every_step_call_is_timed_and_sized_and_counted_pending_while_awaited(pb: ModuleType, repo: Path) -> None:
    callees = register_callees()
    model = load(repo, "router")
    seen: list[int] = []
    shout = callees["shout"].fn

    def watched(arrays: fake.Arrays) -> fake.Arrays:
        seen.append(model.metrics.pending("router", "shout"))  # while the orchestrator awaits it
        return shout(arrays)

    callees["shout"].fn = watched
    execute(model, *(fake.request(query=strings(t)) for t in ("a!", "B", "c!")))
    model.metrics.flush()
    rows = step_series("compound_step_rows_total")
    assert rows == {
        ("router", "steps.0", "route"): 3.0,
        ("router", "steps.1.cases.loud.0", "shout"): 2.0,
        ("router", "steps.1.default.0", "whisper"): 1.0,
    }
    assert step_series("compound_step_duration_seconds_count") == {key: 1.0 for key in rows}
    assert seen == [2] and model.metrics.pending("router", "shout") == 0
    pending = {labels["component"]: metric.value for labels, metric in fake.series("compound_pending_requests")}
    assert pending == {"route": 0.0, "shout": 0.0, "whisper": 0.0}
    assert not fake.series("compound_instances")  # an orchestrator runs no component itself
    model.finalize()


def test_a_fused_pipeline_times_its_inline_steps_and_counts_its_components_instances(
    pb: ModuleType, repo: Path
) -> None:
    model = load(repo, "router_fused")
    instances = {(labels["component"], labels["model"]): m.value for labels, m in fake.series("compound_instances")}
    assert instances == {(component, "router_fused"): 1.0 for component in ("route", "shout", "whisper")}
    execute(model, fake.request(query=strings("hi!", "Hello")), fake.request(query=strings("x")))
    model.metrics.flush()
    assert step_series("compound_step_rows_total") == {
        ("router_fused", "steps.0", "route"): 3.0,  # the merged batch, in one call
        ("router_fused", "steps.1.cases.loud.0", "shout"): 1.0,
        ("router_fused", "steps.1.default.0", "whisper"): 2.0,
    }
    execute(model, fake.request(query=strings("again")))
    model.metrics.flush()
    model.metrics.flush()  # a second push adds nothing
    assert step_series("compound_step_rows_total")[("router_fused", "steps.0", "route")] == 4.0
    calls = {step: n for (_, step, _), n in step_series("compound_step_duration_seconds_count").items()}
    assert calls == {"steps.0": 2.0, "steps.1.cases.loud.0": 1.0, "steps.1.default.0": 2.0}
    assert all(0 <= s < 5 for s in step_series("compound_step_duration_seconds_sum").values())
    buckets = [
        m.value for labels, m in fake.series("compound_step_duration_seconds_bucket") if labels["step"] == "steps.0"
    ]
    assert len(buckets) == 16 and buckets == sorted(buckets) and buckets[-1] == 2.0  # cumulative, le=+Inf last
    assert model.metrics.durations("router_fused", "steps.0", "route")[0] == 2  # no IPC per call: pushed
    model.finalize()
    assert {m.value for _, m in fake.series("compound_instances")} == {0.0}  # unloaded: no instance left
