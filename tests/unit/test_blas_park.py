"""BlasPark (templates/model.py): after a long execute() of an instance at several threads, numpy's
OpenBLAS workers are stopped instead of spinning until the next batch, and come back at the next
threaded call with the same results. Run in a child process: parking changes the process's BLAS pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, os, sys, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
sys.path.insert(0, sys.argv[1])
from tests.unit import fake_pb_utils as fake

def tasks():
    return len(os.listdir("/proc/self/task"))

threadpool_limits(limits=2)
rows = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
weights = np.random.default_rng(1).standard_normal((512, 512)).astype(np.float32)
expected = rows @ weights

during = []

def execute(requests):
    began = time.monotonic()
    while time.monotonic() - began < float(sys.argv[2]):
        out = rows @ weights
    during.append(tasks())
    return [out]

with fake.installed():
    module = fake.load_template(os.path.join(sys.argv[1], "templates", "model.py"), "compound_component")
    park = module.BlasPark(int(sys.argv[3]))
    wrapped = park.after(execute)
    pools = [p for p in threadpool_info() if p.get("internal_api") == "openblas"]
    before = tasks()
    first = wrapped([])[0]
    parked = tasks()
    second = wrapped([])[0]
print(json.dumps({
    "active": park.active, "same_function": wrapped is execute, "before": before, "parked": parked,
    "during": during, "results_equal": bool(np.allclose(first, expected) and np.allclose(second, expected)),
    "pthreads": bool(pools) and pools[0].get("threading_layer") == "pthreads",
}))
"""


def run_child(call_s: float, threads: int, **env: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(call_s), str(threads)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    if not report["pthreads"]:
        pytest.skip("numpy's BLAS here is not OpenBLAS with pthreads")
    return report


def test_a_long_execute_parks_the_pool_and_the_next_call_restarts_it() -> None:
    report = run_child(0.05, threads=2)
    assert report["active"] and not report["same_function"]
    assert report["before"] > 1  # this thread and OpenBLAS's workers
    assert report["parked"] == 1  # the workers stopped
    assert report["during"][1] == 2  # the next call restarted one, for the instance's 2 threads
    assert report["results_equal"]


def test_a_short_execute_keeps_the_pool() -> None:
    report = run_child(0.0005, threads=2)
    assert report["active"]
    assert report["parked"] == report["before"] > 1


@pytest.mark.parametrize(("threads", "env"), [(1, {}), (2, {"COMPOUND_BLAS_PARK": "0"})])
def test_one_thread_or_the_opt_out_leaves_execute_as_it_is(threads: int, env: dict[str, str]) -> None:
    report = run_child(0.05, threads=threads, **env)
    assert not report["active"] and report["same_function"]
    assert report["parked"] == report["before"]
