"""The `pytriton` profile of `compound bench` for real: the handlers of a two-step pipeline bound in
one PyTriton `@batch` model (its own tritonserver, its own process), driven by the same gRPC driver
as the other profiles, its whole process tree's CPU measured, and every process of it stopped after.
A handler that cannot load makes the profile fail with the handler's error, not a hang."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from click.testing import CliRunner

pytest.importorskip("pytriton")

from toolkit.bench.pytriton_peer import run_pytriton_profile  # noqa: E402
from toolkit.cli.bench import bench  # noqa: E402
from toolkit.core.errors import CompoundError  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402

HANDLERS = """
import numpy as np


class Scale:
    def __init__(self, parameters, device):
        if parameters.get("fail"):
            raise RuntimeError("weights missing")
        self.factor = float(parameters["factor"])

    def __call__(self, x):
        return {"y": x * self.factor}
"""

SPEC = """
name: tiny
models:
  double:
    handler: handlers:Scale
    parameters: {factor: 2, fail: %s}
    inputs: {x: {dtype: fp32, dims: [4]}}
    outputs: {y: {dtype: fp32, dims: [4]}}
    max_batch_size: 16
    dynamic_batching: {max_queue_delay_us: 200}
  triple:
    handler: handlers:Scale
    parameters: {factor: 3}
    inputs: {x: {dtype: fp32, dims: [4]}}
    outputs: {y: {dtype: fp32, dims: [4]}}
    max_batch_size: 16
    dynamic_batching: {max_queue_delay_us: 500}
pipelines:
  chain:
    inputs: {x: {dtype: fp32, dims: [4]}}
    outputs: [z]
    steps:
      - {model: double, inputs: {x: x}, outputs: {y: h}}
      - {model: triple, inputs: {x: h}, outputs: {y: z}}
"""


def write_spec(folder: Path, fail: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handlers.py").write_text(HANDLERS)
    (folder / "pipeline.yaml").write_text(SPEC % ("true" if fail else "false"))
    return folder / "pipeline.yaml"


def run_bench(spec: Path, out: Path) -> tuple[int, str]:
    args = [str(spec), "-p", "chain", "--profiles", "pytriton", "--cores", "2", "--concurrency", "4"]
    args += ["--duration", "1.5s", "--warmup", "0.3s", "--out", str(out)]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    return result.exit_code, result.output


def test_pytriton_profile_serves_the_chained_handlers_and_stops_everything(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    code, output = run_bench(write_spec(tmp_path / "spec"), out)
    assert code == 0, output
    report = json.loads((out / "results.json").read_text())
    profile = report["profiles"]["pytriton"]
    assert "error" not in profile, profile
    # the fused profile's settings: one instance per core, the pipeline's batch size, the longest delay
    assert profile["instances"] == {"chain": 2} and profile["threads"] == {"chain": 1}
    config = json.loads((out / "work" / "pytriton-config.json").read_text())
    assert config["max_batch_size"] == 16 and config["max_queue_delay_us"] == 500
    [point] = profile["points"]
    assert point["errors"] == 0, point["error_samples"]
    assert point["completed"] > 10 and point["server_cpu_pct"] > 0
    by_process = point["server_cpu_by_process_pct"]
    assert any(k.startswith("toolkit.bench.pytriton_peer[") for k in by_process), by_process
    assert any(k.startswith("tritonserver[") for k in by_process), by_process
    assert report["summary"]["pytriton"]["server_cpu_ms_per_request"] > 0
    assert "pytriton" in output
    pids = [int(k.rsplit("[", 1)[1].rstrip("]")) for k in by_process]
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert (out / "work" / "pytriton-tritonserver.log").stat().st_size > 0


def test_pytriton_profile_fails_clearly_when_a_handler_cannot_load(tmp_path: Path) -> None:
    plan = plan_spec(write_spec(tmp_path / "spec", fail=True))
    settings = SimpleNamespace(core_budget=1, concurrency=[1], duration_s=1.0, warmup_s=0.0, driver="grpc")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(CompoundError) as caught:
        run_pytriton_profile(plan, "chain", settings, work / "rows.npz", work, lambda line: None)
    assert "PyTriton did not start (it exited with code 1)" in str(caught.value)
    assert "weights missing" in str(caught.value) and "pytriton.log" in str(caught.value.hint)
