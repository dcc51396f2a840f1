"""A short real run of `compound bench --workload bursty`: the bursty example deployed static, then
with the adaptive runtime, under phases of 3 s at small concurrency. Checks that both deployments are
measured without failures, that instance-seconds are accounted, and that the runtime's instance
series, the table, results.json and the plot come out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("psutil")

from toolkit.cli.main import cli  # noqa: E402

SPEC = Path(__file__).resolve().parents[2] / "examples" / "bursty" / "pipeline.yaml"
PHASE_S = 3.0


def test_bursty_workload_static_against_adaptive(tmp_path: Path) -> None:
    out = tmp_path / "bursty"
    args = ["bench", str(SPEC), "--workload", "bursty", "--phase-seconds", "3", "--concurrency", "4", "--out", str(out)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "static" in result.output and "adaptive" in result.output and "targets:" in result.output

    report = json.loads((out / "results.json").read_text())
    assert report["workload"] == "bursty" and report["settings"]["burst"] == 4
    assert report["settings"]["pipelines"] == ["classify", "extract"]
    assert [p["name"] for p in report["phases"]] == ["quiet", "burst classify", "shift to extract", "quiet again"]
    assert set(report["components"]) == {"parse", "classifier", "extractor"}
    length = 4 * PHASE_S
    for mode in ("static", "adaptive"):
        res = report["deployments"][mode]
        assert "error" not in res, res
        overall = res["overall"]
        assert overall["failures"] == 0, res["error_samples"]
        assert overall["requests"] > 50 and overall["throughput_rps"] > 5
        lat = overall["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert len(res["phases"]) == 4
        assert all(p["requests"] > 0 and p["failures"] == 0 for p in res["phases"])
        # the burst and the shift each load their pipeline; the quiet phases only the first one
        assert set(res["phases"][2]["pipelines"]) == {"classify", "extract"}
        assert set(res["phases"][0]["pipelines"]) == {"classify"}
        assert sum(res["timeline"]["rps"]["extract"][: int(PHASE_S * 2)]) == 0
        assert sum(res["timeline"]["rps"]["extract"]) > 0
        assert res["instance_s"] > 0 and res["instance_s_per_1k_requests"] > 0
        by_process = res["server_cpu_by_process_pct"]  # where the server's CPU went, stub by stub
        assert by_process["tritonserver"] > 0 and by_process["stub:classifier"] > 0, by_process
        assert sum(p["instance_s"] for p in res["phases"]) == pytest.approx(res["instance_s"], rel=0.01)
    static, adaptive = report["deployments"]["static"], report["deployments"]["adaptive"]
    assert static["instances"]["fixed"] == {"parse": 1, "classifier": 1, "extractor": 1}
    assert static["instance_s"] == pytest.approx(3 * length)
    samples = adaptive["instances"]["samples"]
    assert len(samples) >= length - 1, samples
    assert all(set(s["instances"]) == {"parse", "classifier", "extractor"} for s in samples)
    assert all(1 <= n <= 3 for s in samples for n in s["instances"].values())
    assert adaptive["instance_s"] >= 3 * length * 0.95  # never below the floor of one instance each
    assert adaptive["runtime_instance_s"] == pytest.approx(adaptive["instance_s"], rel=0.25)
    assert Path(adaptive["runtime"]["log"]).is_file()
    assert {t["target"].split(":")[0] for t in report["targets"]} == {"bursty"}
    if report["plots"]:  # matplotlib is an extra
        assert Path(report["plots"][0]).read_bytes().startswith(b"\x89PNG")
