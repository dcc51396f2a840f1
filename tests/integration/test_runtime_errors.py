"""The generic runtimes' failure handling on a real tritonserver (tests/fixtures/runtime): the
handler comes from the model's own folder whatever the server's working directory holds, a
poisoned request in a batch is found by bisection, outputs that would lose values or have the
wrong dims fail the request naming them, and an orchestrator feeds merged rows to a model that
takes no batch axis one row at a time.

One server, started from a working directory that holds a decoy `handlers.py`.
"""

from __future__ import annotations

import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from tests.conftest import start_server
from toolkit.client import infer
from toolkit.core.errors import CompoundError
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.local import LocalServer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "runtime"
BURST = 16  # counted's max_batch_size and preferred batch: the burst arrives as one execute()

# Same module and class names as the fixture's handlers, different answers.
DECOY = """
import numpy as np


class Decoy:
    def __init__(self, parameters, device):
        pass

    def __call__(self, **inputs):
        rows = next(iter(inputs.values())).shape[0]
        return {"y": np.full((rows, 1), -7, np.int32), "origin": np.full((rows, 1), b"decoy", dtype=object)}


Counted = Careless = Flat = Decoy
"""


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, Path]]:
    """(server, Counted's call log). The server inherits a working directory with the decoy."""
    folder = tmp_path_factory.mktemp("runtime")
    spec = yaml.safe_load((FIXTURE / "pipeline.yaml").read_text())
    call_log = folder / "counted-calls.log"
    spec["models"]["counted"]["parameters"]["call_log"] = str(call_log)
    shutil.copy(FIXTURE / "handlers.py", folder / "handlers.py")
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    repo = render_repository(plan_spec(folder / "pipeline.yaml"), folder / "repo")
    cwd = tmp_path_factory.mktemp("cwd-with-decoy")
    (cwd / "handlers.py").write_text(DECOY)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        server = start_server(repo, tmp_path_factory.mktemp("runtime-logs"))
    yield server, call_log
    server.stop()


def ints(*values: int) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.int32)


def test_the_handler_comes_from_the_model_folder_not_the_working_directory(runtime: tuple[LocalServer, Path]) -> None:
    server, _ = runtime
    out = infer("counted", server.http_url, {"x": ints(3)})
    assert out["origin"].tolist() == [[b"fixture"]], "served the decoy handlers.py of the server's working directory"
    assert out["y"].tolist() == [[6]]
    assert infer("flat", server.http_url, {"x": np.array([4], dtype=np.int32)})["y"].tolist() == [5]


def test_a_poisoned_request_is_found_by_bisection(runtime: tuple[LocalServer, Path]) -> None:
    server, call_log = runtime
    poisoned = 5

    def one(i: int) -> Union[np.ndarray, CompoundError]:
        try:
            return infer("counted", server.http_url, {"x": ints(-1 if i == poisoned else i)})["y"]
        except CompoundError as exc:
            return exc

    def executions() -> int:
        with httpclient.InferenceServerClient(server.http_url) as client:
            return int(client.get_inference_statistics("counted")["model_stats"][0]["execution_count"])

    def calls() -> int:
        return len(call_log.read_text().split()) if call_log.exists() else 0

    calls_before, executions_before = calls(), executions()
    with ThreadPoolExecutor(BURST) as pool:
        results = list(pool.map(one, range(BURST)))
    handler_calls, batches = calls() - calls_before, executions() - executions_before

    for i, result in enumerate(results):
        if i == poisoned:
            assert isinstance(result, CompoundError), result
            assert "model 'counted'" in str(result) and "poisoned input" in str(result)
        else:
            assert isinstance(result, np.ndarray), f"request {i}: {result}"
            assert result.tolist() == [[2 * i]]
    # One call per batch, plus two per halving on the way down to the poisoned request; rerunning
    # every request of its batch alone would cost one call per request (17 for one batch of 16).
    bisection = 2 * math.ceil(math.log2(BURST))
    assert handler_calls <= batches + bisection, (
        f"{handler_calls} handler calls for {batches} batches of {BURST} requests"
    )


def test_an_output_that_would_lose_values_or_has_wrong_dims_fails_naming_it(runtime: tuple[LocalServer, Path]) -> None:
    server, _ = runtime
    with pytest.raises(CompoundError) as truncated:
        infer("careless", server.http_url, {"x": ints(1)})
    assert "model 'careless'" in str(truncated.value) and "output 'y'" in str(truncated.value)
    assert "float64" in str(truncated.value) and "int32" in str(truncated.value)
    with pytest.raises(CompoundError) as wide:
        infer("careless", server.http_url, {"x": ints(2)})
    assert "output 'y'" in str(wide.value) and "[1]" in str(wide.value)
    out = infer("careless", server.http_url, {"x": ints(3, 4)})  # int64 into int32: no value lost
    assert out["y"].dtype == np.int32 and out["y"].tolist() == [[3], [4]]


def test_an_orchestrator_feeds_a_model_without_batch_axis_one_row_at_a_time(runtime: tuple[LocalServer, Path]) -> None:
    server, _ = runtime
    xs = np.array([[1, 2], [10, 20], [100, 200]], dtype=np.int32)  # 3 rows x 2 items: 6 calls of one row
    ys = infer("flat_map", server.http_url, {"xs": xs})["ys"]
    assert ys.shape == (3, 2, 1)
    assert ys[..., 0].tolist() == (xs + 1).tolist()
