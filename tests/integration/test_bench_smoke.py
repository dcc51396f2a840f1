"""A short real run of `compound bench` on the synthetic example: four profiles (the static and
ensemble baselines, optimized, fused), one concurrency, a few seconds each. Checks that the table,
results.json (with every generated profile over both baselines) and the PNG plots come out and are
sane."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("matplotlib")
pytest.importorskip("psutil")

from toolkit.cli.bench import bench  # noqa: E402

SPEC = Path(__file__).resolve().parents[2] / "examples" / "synthetic" / "pipeline.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        bench,
        [
            str(SPEC),
            "--pipeline",
            "fanout",
            "--profiles",
            "static,ensemble,optimized,fused",
            "--concurrency",
            "4",
            "--duration",
            "2s",
            "--warmup",
            "0.5s",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "optimized" in result.output and "static" in result.output

    report = json.loads((out / "results.json").read_text())
    assert report["pipeline"] == "fanout"
    assert set(report["profiles"]) == {"static", "ensemble", "optimized", "fused"}
    assert set(report["allocation"]["counts"]) == {"encode", "branch_a", "branch_b", "branch_c", "join"}
    assert all(n >= 1 for n in report["allocation"]["counts"].values())
    assert report["compute"]["per_request_ms_batch1"] > 0
    for name in ("static", "ensemble", "optimized", "fused"):
        profile = report["profiles"][name]
        assert "error" not in profile, profile
        assert profile["cold_start_s"] > 0 and profile["first_request_ms"] > 0
        [point] = profile["points"]
        assert point["concurrency"] == 4
        assert point["errors"] == 0, point["error_samples"]
        assert point["completed"] > 10 and point["throughput_rps"] > 5
        lat = point["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert point["client_cpu_pct"] > 0
        assert point["server_cpu_pct"] is not None and point["server_cpu_pct"] > 0
    # static chains the models from the client: one round trip per step
    assert report["profiles"]["static"]["dynamic_batching"] is False
    assert report["profiles"]["optimized"]["dynamic_batching"] is True
    # ensemble is the spec as written: its batching and its instance counts
    assert report["profiles"]["ensemble"]["dynamic_batching"] is True
    assert report["profiles"]["ensemble"]["instances"] == {m: 1 for m in report["allocation"]["counts"]}
    assert report["profiles"]["fused"]["dynamic_batching"] is True
    assert any(t["target"].startswith("optimized vs static") for t in report["targets"])
    assert any(t["target"].startswith("fused vs static") for t in report["targets"])
    # every profile's peak over both baselines, from the measured points
    summary = report["summary"]
    for name in ("optimized", "fused"):
        peak = max(p["throughput_rps"] for p in report["profiles"][name]["points"])
        for base in ("static", "ensemble"):
            base_peak = report["profiles"][base]["points"][0]["throughput_rps"]
            assert summary[name][f"x_{base}"] == pytest.approx(peak / base_peak, abs=0.01)
        assert any(t["target"].startswith(f"{name} vs ensemble (the spec as written)") for t in report["targets"])
    assert "x ensemble" in result.output

    plots = [Path(p) for p in report["plots"]]
    assert {p.name for p in plots} == {"latency_vs_throughput.png", "component_breakdown.png"}
    for plot in plots:
        data = plot.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_bench_fails_when_a_profile_fails_and_runs_without_matplotlib(tmp_path: Path) -> None:
    """A profile that cannot be measured (Ray Serve, not installed by the test extra; or a broken
    one) makes `compound bench` exit non-zero after writing its report; without matplotlib the
    measurements still come out, without plots."""
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if matplotlib were not installed
        "from toolkit.cli.main import main; sys.argv = ['compound'] + sys.argv[1:]; main()\n"
    )
    out = tmp_path / "bench"
    args = ["bench", str(SPEC), "-p", "fanout", "--profiles", "ceiling,ray-serve", "--duration", "1s", "--warmup", "0s"]
    with_ray = importlib.util.find_spec("ray") is not None
    if with_ray:  # an unknown peer fails the same way everywhere
        args[args.index("ceiling,ray-serve")] = "ceiling"
    done = subprocess.run(
        [sys.executable, "-c", script, *args, "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert "plots skipped: matplotlib is not installed" in done.stderr
    report = json.loads((out / "results.json").read_text())
    assert report["plots"] == [] and report["profiles"]["ceiling"]["throughput_rps"] > 0
    assert report["profiles"]["ceiling"]["cpu_ms_per_request"] > 0  # the workers' own CPU time
    if not with_ray:
        assert done.returncode == 1 and "1 of 2 profile(s) failed: ray-serve" in done.stderr


def test_bench_http_driver_and_the_fused_ray_peer(tmp_path: Path) -> None:
    """The same KServe v2 binary requests go to Triton's HTTP endpoint (--driver http) and, where
    ray[serve] is installed, to the fused Ray Serve deployment; both answer every request."""
    with_ray = importlib.util.find_spec("ray") is not None
    profiles = "fused,ray-serve-fused" if with_ray else "fused"
    out = tmp_path / "bench"
    args = [str(SPEC), "-p", "fanout", "--profiles", profiles, "--driver", "http", "--cores", "2"]
    args += ["--concurrency", "4", "--duration", "2s", "--warmup", "0.5s", "--out", str(out)]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    for name in profiles.split(","):
        [point] = report["profiles"][name]["points"]
        assert point["errors"] == 0, point["error_samples"]
        assert point["completed"] > 10
    if with_ray:
        ray = report["profiles"]["ray-serve-fused"]
        assert ray["instances"] == {"fanout": 2} and ray["threads"] == {"fanout": 1}
        assert ray["ray_env"]["RAY_worker_niceness"] == "0"


def test_a_tuned_spec_at_two_threads_is_served_and_judged_against_its_handlers_as_served(tmp_path: Path) -> None:
    """`--tuned` with a fused pipeline at one instance of two threads: the instance (whose generated
    runtime parks its BLAS pool between long calls) answers every request, and bench times the same
    handlers chained in-process at those two threads, the reference for what serving adds."""
    import yaml

    spec = yaml.safe_load(SPEC.read_text())
    spec["pipelines"]["fanout"].update({"fuse": True, "instances": {"count": 1, "threads": 2}})
    tuned = SPEC.parent / f".bench-smoke-{tmp_path.name}.tuned.yaml"  # beside handlers.py, as tune writes it
    tuned.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        args = [str(SPEC), "-p", "fanout", "--profiles", "tuned", "--tuned", str(tuned)]
        args += ["--concurrency", "8", "--duration", "2s", "--warmup", "0.5s", "--out", str(tmp_path / "bench")]
        result = CliRunner().invoke(bench, args, catch_exceptions=False)
    finally:
        tuned.unlink()
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench" / "results.json").read_text())
    [point] = report["profiles"]["tuned"]["points"]
    assert point["errors"] == 0 and point["completed"] > 10, point["error_samples"]
    as_served = report["compute"]["tuned_as_served"]
    assert as_served["threads"] == 2 and as_served["batch"] == report["compute"]["best_batch"]
    assert as_served["cpu_ms_per_request"] > 0
    assert report["tuned_ratios"]["server_cpu_per_request"]["x_handlers_as_served"] > 0
    assert "tuned handlers as served" in result.output
