"""Partial fusion and `compound tune` on the real tritonserver.

- A pipeline with a fuse group answers exactly what its unfused twin and the handlers chained
  in-process answer, on one server.
- `compound generate --tune 40s` measures candidates on real servers within its budget, writes a
  tuned spec in the user's schema (it validates and plans) and a report, generates from it, and
  leaves no server running.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient
import yaml
from click.testing import CliRunner

from tests.conftest import start_server
from tests.integration.test_orchestrator import infer
from toolkit.bench.chain import InProcessPipeline
from toolkit.cli.main import cli
from toolkit.plan import plan_spec
from toolkit.repository.manifest import Manifest
from toolkit.repository.render import render_repository

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tune"


def test_fuse_group_answers_like_the_unfused_pipeline(tmp_path: Path) -> None:
    plan = plan_spec(FIXTURE / "pipeline.yaml")
    repo = render_repository(plan, tmp_path / "repo")
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((24, 64)).astype(np.float32)
    expected = InProcessPipeline(plan, "fan").run({"x": rows})["y"]
    server = start_server(repo, tmp_path)
    try:
        client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        for batch in (rows[:1], rows[:5], rows[:16]):
            plain = infer(client, "fan", x=batch)["y"]
            fused = infer(client, "fan_partial", x=batch)["y"]
            np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(fused, expected[: len(batch)], rtol=1e-4, atol=1e-5)

        # concurrent single-row requests are merged by the group's dynamic batcher, still row-exact
        def one(i: int) -> np.ndarray:
            c = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
            try:
                return infer(c, "fan_partial", x=rows[i : i + 1])["y"]
            finally:
                c.close()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(len(rows))))
        np.testing.assert_allclose(np.concatenate(answers), expected, rtol=1e-4, atol=1e-5)
        stats = client.get_inference_statistics("fan_light")["model_stats"][0]
        assert int(stats["inference_count"]) >= len(rows) + 22  # every request of the group went through it
        client.close()
    finally:
        server.stop()
    assert Manifest.read(repo).fused_groups["fan_light"].models == ["branch_a", "join"]


def _servers_under(folder: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "tritonserver" in cmd and str(folder) in cmd:
            found.append(proc)
    return found


def test_generate_tune_measures_candidates_within_budget_and_writes_a_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"  # the tuner's work folder (its repositories) lands here
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    folder = tmp_path / "spec"
    folder.mkdir()
    shutil.copy(FIXTURE / "handlers.py", folder / "handlers.py")
    data = yaml.safe_load((FIXTURE / "pipeline.yaml").read_text())
    del data["pipelines"]["fan_partial"]
    spec = folder / "pipeline.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))

    began = time.perf_counter()
    result = CliRunner().invoke(cli, ["generate", str(spec), "-o", str(tmp_path / "repo"), "--tune", "40s"])
    elapsed = time.perf_counter() - began
    assert result.exit_code == 0, result.output
    assert elapsed < 40 + 15, elapsed  # the budget, plus loading the spec and rendering once more

    tuned = folder / "pipeline.tuned.yaml"
    report = json.loads((folder / "pipeline.tuned.report.json").read_text())
    assert report["elapsed_s"] <= 40
    fan = report["pipelines"]["fan"]
    measured = {c["name"]: c for c in fan["candidates"] if "throughput_rps" in c}
    assert "as-written" in measured and len(measured) >= 2, fan["candidates"]
    assert all(c["throughput_rps"] > 0 and c["errors"] == 0 for c in measured.values())
    assert {c["kind"] for c in fan["candidates"]} >= {"as-written", "ensemble", "fused", "partial"}
    assert fan["choice"] in measured
    best = max(measured.values(), key=lambda c: c["throughput_rps"])
    chosen = measured[fan["choice"]]
    assert chosen["throughput_rps"] >= best["throughput_rps"] / 1.03  # the best, or as written within noise

    text = tuned.read_text()
    assert text.startswith("# Tuned by `compound tune` from pipeline.yaml")
    plan = plan_spec(tuned)  # the same schema: it validates and plans
    assert set(plan.spec.models) == set(data["models"])
    md = (folder / "pipeline.tuned.report.md").read_text()
    assert "| as-written |" in md and f"**Choice: {fan['choice']}**" in md
    manifest = Manifest.read(tmp_path / "repo")
    assert manifest.spec == "pipeline.tuned.yaml"
    assert "tuning took" in result.output or "wrote" in result.output
    assert _servers_under(scratch) == [], "tune left a server running"
    assert list(scratch.glob("compound-tune-*")) == []  # and removed its work folder
