"""templates/model.py, the generic component wrapper, run in-process against the fake pb_utils:
batching (concatenate, one call, slice back), variable-dim grouping, errors pinned by bisection,
output checks, and the handler loaded from its own folder whatever else is importable."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pytest

from tests.unit import fake_pb_utils as fake

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "model.py"

HANDLERS = '''
import numpy as np

ORIGIN = b"model folder"


class Double:
    """y = 2x; raises on any x equal to parameters["fail_on"], or on batches over parameters["most"]."""

    def __init__(self, parameters, device):
        self.calls = []
        self.fail_on = parameters.get("fail_on")
        self.most = parameters.get("most")

    def __call__(self, x):
        self.calls.append(x.shape)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ValueError(f"refuses {self.fail_on}")
        if self.most is not None and x.shape[0] > self.most:
            raise MemoryError(f"{x.shape[0]} rows do not fit")
        return {"y": x * 2, "origin": np.full((x.shape[0], 1), ORIGIN, dtype=object)}
'''

DECOY = """
import numpy as np


class Double:
    def __init__(self, parameters, device):
        self.calls = []

    def __call__(self, x):
        return {"y": x * 0 - 1, "origin": np.full((x.shape[0], 1), b"decoy", dtype=object)}
"""


@pytest.fixture()
def pb() -> Iterator[ModuleType]:
    with fake.installed() as module:
        yield module


def tensor(name: str, triton_type: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": triton_type, "dims": dims}


def make_model(
    folder: Path,
    *,
    inputs: Optional[list[dict[str, Any]]] = None,
    outputs: Optional[list[dict[str, Any]]] = None,
    max_batch_size: int = 16,
    parameters: Optional[dict[str, Any]] = None,
    handlers: str = HANDLERS,
    name: str = "double",
    metrics: bool = False,
) -> Any:
    """A component model laid out as in a repository (<name>/1/model.py beside handlers.py) and
    initialized as the stub would."""
    version = folder / name / "1"
    version.mkdir(parents=True)
    shutil.copy(TEMPLATE, version / "model.py")
    if metrics:  # as rendered repositories have it
        shutil.copy(TEMPLATE.with_name("metrics.py"), version / "compound_metrics.py")
    (version / "handlers.py").write_text(textwrap.dedent(handlers))
    config = {
        "name": name,
        "max_batch_size": max_batch_size,
        "input": inputs or [tensor("x", "TYPE_INT32", [1])],
        "output": outputs or [tensor("y", "TYPE_INT32", [1]), tensor("origin", "TYPE_STRING", [1])],
        "parameters": {
            "compound.handler": {"string_value": "handlers:Double"},
            "compound.handler_parameters": {"string_value": json.dumps(parameters or {})},
        },
    }
    sys.path.append(str(version))  # as the stub does, behind what sys.path already holds
    module = fake.load_template(version / "model.py", f"model_{name}_{id(folder)}")
    model = module.TritonPythonModel()
    args = {"model_config": json.dumps(config), "model_name": name, "model_instance_kind": "CPU"}
    model.initialize({**args, "model_instance_name": f"{name}_0_0"})
    return model


def ints(*values: int) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.int32)


# --- batching ----------------------------------------------------------------------------------


def test_requests_of_one_execute_run_as_one_call_and_are_sliced_back(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path)
    responses = model.execute([fake.request(x=ints(1)), fake.request(x=ints(2, 3)), fake.request(x=ints(4, 5, 6))])
    assert model.runner.handler.calls == [(6, 1)]
    assert [fake.outputs(r)["y"].tolist() for r in responses] == [[[2]], [[4], [6]], [[8], [10], [12]]]
    assert all(fake.outputs(r)["y"].dtype == np.int32 for r in responses)


def test_requests_whose_variable_dims_differ_run_in_groups(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, inputs=[tensor("x", "TYPE_INT32", [-1])], outputs=[tensor("y", "TYPE_INT32", [-1])])
    a, b, c = np.ones((1, 3), np.int32), np.full((2, 5), 2, np.int32), np.full((1, 3), 3, np.int32)
    responses = model.execute([fake.request(x=a), fake.request(x=b), fake.request(x=c)])
    assert sorted(model.runner.handler.calls) == [(2, 3), (2, 5)]
    for response, sent in zip(responses, (a, b, c)):
        assert fake.outputs(response)["y"].tolist() == (sent * 2).tolist()


def test_a_model_without_batch_axis_gets_one_request_per_call(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(
        tmp_path, max_batch_size=0, inputs=[tensor("x", "TYPE_INT32", [2])], outputs=[tensor("y", "TYPE_INT32", [2])]
    )
    responses = model.execute([fake.request(x=np.array([1, 2], np.int32)), fake.request(x=np.array([3, 4], np.int32))])
    assert model.runner.handler.calls == [(1, 2), (1, 2)]  # the handler always sees a batch axis
    assert [fake.outputs(r)["y"].tolist() for r in responses] == [[2, 4], [6, 8]]


# --- errors: bisection --------------------------------------------------------------------------


@pytest.mark.parametrize("count, bad", [(16, [5]), (64, [0, 63]), (13, [12])])
def test_bad_requests_are_found_by_bisection(pb: ModuleType, tmp_path: Path, count: int, bad: list[int]) -> None:
    model = make_model(tmp_path, parameters={"fail_on": -1})
    values = [-1 if i in bad else i for i in range(count)]
    responses = model.execute([fake.request(x=ints(v)) for v in values])
    for i, response in enumerate(responses):
        if i in bad:
            message = fake.error(response)
            assert message.startswith("model 'double': ValueError: refuses -1 (at handlers.py:")
        else:
            assert fake.outputs(response)["y"].tolist() == [[2 * i]]
    calls = len(model.runner.handler.calls)
    # the merged call, then at most two calls per halving for each bad request (rerunning each
    # request alone would cost count + 1)
    assert calls <= 1 + 2 * len(bad) * math.ceil(math.log2(count)), calls
    if bad == [5]:
        assert calls == 1 + 2 * 4


def test_a_batch_the_handler_cannot_take_whole_is_halved_until_it_fits(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, parameters={"most": 4})
    responses = model.execute([fake.request(x=ints(i)) for i in range(16)])
    assert [fake.outputs(r)["y"].tolist() for r in responses] == [[[2 * i]] for i in range(16)]
    assert [rows for rows, _ in model.runner.handler.calls] == [16, 8, 4, 4, 8, 4, 4]


def test_errors_stay_within_their_variable_dims_group(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(
        tmp_path,
        inputs=[tensor("x", "TYPE_INT32", [-1])],
        outputs=[tensor("y", "TYPE_INT32", [-1])],
        parameters={"fail_on": -1},
    )
    requests = [fake.request(x=np.array([[1, 1]], np.int32)), fake.request(x=np.array([[-1, 2, 3]], np.int32))]
    requests.append(fake.request(x=np.array([[4, 5, 6]], np.int32)))
    first, poisoned, third = model.execute(requests)
    assert fake.outputs(first)["y"].tolist() == [[2, 2]]
    assert "refuses -1" in fake.error(poisoned)
    assert fake.outputs(third)["y"].tolist() == [[8, 10, 12]]


# --- output checks ------------------------------------------------------------------------------

OUTPUT_TYPES = {
    "int32": ("TYPE_INT32", np.int32),
    "uint8": ("TYPE_UINT8", np.uint8),
    "int8": ("TYPE_INT8", np.int8),
    "fp32": ("TYPE_FP32", np.float32),
    "fp16": ("TYPE_FP16", np.float16),
    "int64": ("TYPE_INT64", np.int64),
    "bool": ("TYPE_BOOL", np.bool_),
    "string": ("TYPE_STRING", np.object_),
}


def run_returning(folder: Path, declared: str, dims: list[int], value: Callable[[int], Any], rows: int = 2) -> Any:
    """The response of a model declaring one output `y` whose handler returns value(rows)."""
    model = make_model(folder, outputs=[tensor("y", OUTPUT_TYPES[declared][0], dims)])
    model.runner.handler = lambda x: {"y": value(x.shape[0])}
    return model.execute([fake.request(x=ints(*range(rows)))])[0]


@pytest.mark.parametrize(
    "declared, value, expected",
    [
        ("int32", lambda n: np.arange(n).reshape(n, 1), [[0], [1]]),  # int64 from numpy
        ("uint8", lambda n: [[200]] * n, [[200], [200]]),  # Python ints
        ("int64", lambda n: [[True]] * n, [[1], [1]]),  # Python bools
        ("fp32", lambda n: np.full((n, 1), 0.25), [[0.25], [0.25]]),  # float64
        ("fp16", lambda n: [[0.5]] * n, [[0.5], [0.5]]),
        ("fp32", lambda n: np.ones((n, 1), np.int32), [[1.0], [1.0]]),  # ints into floats lose nothing
        ("bool", lambda n: np.ones((n, 1)) > 0, [[True], [True]]),
        ("string", lambda n: np.array([["é"]] * n), [[b"\xc3\xa9"], [b"\xc3\xa9"]]),  # str: UTF-8 bytes
        ("string", lambda n: [[b"b"]] * n, [[b"b"], [b"b"]]),
    ],
)
def test_outputs_convert_when_no_value_changes(
    pb: ModuleType, tmp_path: Path, declared: str, value: Any, expected: Any
) -> None:
    y = fake.outputs(run_returning(tmp_path, declared, [1], value))["y"]
    assert y.dtype == OUTPUT_TYPES[declared][1]
    assert y.tolist() == expected


@pytest.mark.parametrize(
    "declared, value, words",
    [
        ("int32", lambda n: np.full((n, 1), 1.5), ["is float64", "declares int32"]),
        ("int64", lambda n: np.ones((n, 1), np.float32), ["is float32", "declares int64"]),
        ("int8", lambda n: [[300]] * n, ["values from 300 to 300", "int8"]),
        ("uint8", lambda n: [[-1]] * n, ["values from -1 to -1", "uint8"]),
        ("bool", lambda n: np.ones((n, 1), np.int64), ["is int64", "declares bool"]),
        ("fp32", lambda n: np.array([[b"1.0"]] * n, dtype=object), ["is object", "declares float32"]),
        ("string", lambda n: np.ones((n, 1), np.int32), ["is int32", "BYTES"]),
    ],
)
def test_outputs_that_would_change_value_fail_the_request_naming_them(
    pb: ModuleType, tmp_path: Path, declared: str, value: Any, words: list[str]
) -> None:
    message = fake.error(run_returning(tmp_path, declared, [1], value))
    assert message.startswith("model 'double': output 'y' ")
    for word in words:
        assert word in message
    assert "(at model.py" not in message  # where the wrapper noticed says nothing to the user


@pytest.mark.parametrize(
    "dims, shape, ok",
    [
        ([1], (2, 1), True),
        ([1], (2, 2), False),
        ([1], (2,), False),
        ([-1], (2, 7), True),
        ([2, -1], (2, 2, 5), True),
        ([2, -1], (2, 3, 5), False),
        ([2, -1], (2, 2), False),
    ],
)
def test_output_dims_are_checked_after_the_batch_axis(
    pb: ModuleType, tmp_path: Path, dims: list[int], shape: tuple[int, ...], ok: bool
) -> None:
    response = run_returning(tmp_path, "int32", dims, lambda n: np.zeros(shape, np.int32))
    if ok:
        assert fake.outputs(response)["y"].shape == shape
    else:
        message = fake.error(response)
        assert f"output 'y' has shape {list(shape)}" in message and f"declared dims {dims}" in message


def test_outputs_must_keep_the_batch_and_be_there(pb: ModuleType, tmp_path: Path) -> None:
    message = fake.error(run_returning(tmp_path, "int32", [1], lambda n: np.zeros((n + 1, 1), np.int32)))
    assert "output 'y' has shape (3, 1); its first axis must be the batch of 2" in message
    model = make_model(tmp_path / "missing")
    model.runner.handler = lambda x: {"z": x}
    assert "handler returned no output 'y' (got ['z'])" in fake.error(model.execute([fake.request(x=ints(1))])[0])


def test_dims_given_as_strings_are_read(pb: ModuleType, tmp_path: Path) -> None:
    """Protobuf's JSON writes int64 fields as strings; the wrapper accepts either."""
    model = make_model(tmp_path, outputs=[tensor("y", "TYPE_INT32", ["1"]), tensor("origin", "TYPE_STRING", ["1"])])
    assert model.runner.outputs[0][2] == [1]
    assert fake.outputs(model.execute([fake.request(x=ints(1))])[0])["y"].tolist() == [[2]]


# --- where the handler comes from ---------------------------------------------------------------


def test_the_handler_comes_from_the_model_folder_not_the_working_directory(
    pb: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "handlers.py").write_text(DECOY)
    monkeypatch.chdir(cwd)
    sys.path.insert(0, "")  # as the stub has it: the working directory ahead of the version folder
    sys.path.insert(1, str(cwd))
    model = make_model(tmp_path / "repo")
    assert fake.outputs(model.execute([fake.request(x=ints(3))])[0])["origin"].tolist() == [[b"model folder"]]


def test_a_module_of_the_same_name_already_imported_does_not_shadow_the_handler(pb: ModuleType, tmp_path: Path) -> None:
    first = make_model(tmp_path / "a", handlers=HANDLERS.replace("model folder", "first"), name="first")
    second = make_model(tmp_path / "b", handlers=HANDLERS.replace("model folder", "second"), name="second")
    assert fake.outputs(first.execute([fake.request(x=ints(1))])[0])["origin"].tolist() == [[b"first"]]
    assert fake.outputs(second.execute([fake.request(x=ints(1))])[0])["origin"].tolist() == [[b"second"]]


def test_handler_runners_load_same_named_modules_from_their_own_code_folders(pb: ModuleType, tmp_path: Path) -> None:
    """What a fused model does: several handlers in one process, each module (and the helper and
    package modules it imports) from its own folder, though their names collide."""
    component = fake.load_template(TEMPLATE, "compound_component")
    for tag in ("a", "b"):
        folder = tmp_path / tag
        (folder / "tools").mkdir(parents=True)
        (folder / "helpers.py").write_text(f"TAG = {tag!r}\n")
        (folder / "tools" / "__init__.py").write_text("")
        (folder / "tools" / "names.py").write_text(f"NAME = 'tools of {tag}'\n")
        (folder / "handlers.py").write_text(
            textwrap.dedent(
                """
                import numpy as np

                import helpers
                from tools.names import NAME


                class Tagged:
                    def __init__(self, parameters, device):
                        from tools import names  # imports in __init__ resolve from the same folder

                        self.tag = f"{helpers.TAG}/{NAME}/{names.NAME}"

                    def __call__(self, x):
                        return {"tag": np.full((x.shape[0], 1), self.tag.encode(), dtype=object)}
                """
            )
        )
    outputs = [("tag", np.dtype(object), [1])]
    runners = {
        tag: component.HandlerRunner(tag, "handlers:Tagged", {}, "cpu", outputs, code_dir=str(tmp_path / tag))
        for tag in ("a", "b")
    }
    for tag, runner in runners.items():
        ((name, array),) = runner({"x": ints(1)}, 1)
        assert array.tolist() == [[f"{tag}/tools of {tag}/tools of {tag}".encode()]]


def test_the_old_two_element_outputs_are_accepted_unchecked(pb: ModuleType, tmp_path: Path) -> None:
    version = tmp_path / "p" / "1"
    version.mkdir(parents=True)
    shutil.copy(TEMPLATE, version / "compound_component.py")
    (version / "handlers.py").write_text(textwrap.dedent(HANDLERS))
    component = fake.load_template(version / "compound_component.py", "compound_component")
    runner = component.HandlerRunner("double", "handlers:Double", {}, "cpu", [["y", "int32"]])  # default: its folder
    ((name, y),) = runner({"x": np.ones((2, 3), np.int32)}, 2)
    assert name == "y" and y.tolist() == [[2, 2, 2], [2, 2, 2]]


def test_each_instance_counts_itself_on_the_metrics_endpoint_while_loaded(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, metrics=True)
    (labels, metric), *others = fake.series("compound_instances")
    assert not others and metric.value == 1.0
    assert labels == {"component": "double", "model": "double", "instance": "double_0_0", "pid": str(os.getpid())}
    model.finalize()
    assert metric.value == 0.0


def test_a_repository_without_the_metrics_module_still_serves(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path)  # compound_metrics.py absent: a repository rendered before it existed
    assert model.metrics is None and not fake.METRICS
    model.finalize()
