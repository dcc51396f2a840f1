"""How bench reports its figures: every measured profile over both baselines (static, and ensemble:
the spec as written), peers compared at equal or lower P95, cached figures labelled."""

from __future__ import annotations

from typing import Any

from toolkit.bench.runner import _cpu_targets, evaluate_targets, format_table, summarize, tuned_ratios


def _point(c: int, rps: float, p95: float) -> dict[str, Any]:
    lat = {"p50": p95 / 2, "p90": p95 * 0.9, "p95": p95, "p99": p95 * 1.1, "mean": p95 / 2, "max": p95 * 1.2}
    return {
        "concurrency": c,
        "throughput_rps": rps,
        "completed": int(rps * 5),
        "errors": 0,
        "latency_ms": lat,
        "client_cpu_pct": 10.0,
        "server_cpu_pct": 150.0,
        "other_cpu_pct": 0.0,
    }


def _report(**extra: Any) -> dict[str, Any]:
    profiles: dict[str, Any] = {
        "static": {"description": "s", "points": [_point(4, 100.0, 50.0), _point(16, 80.0, 300.0)]},
        "ensemble": {"description": "e", "points": [_point(4, 150.0, 30.0), _point(16, 200.0, 90.0)]},
        "fused": {"description": "f", "points": [_point(4, 300.0, 15.0), _point(16, 600.0, 30.0)]},
        "ceiling": {"description": "c", "throughput_rps": 1000.0},
        "ray-serve-fused": {"description": "r", "points": [_point(4, 100.0, 40.0), _point(16, 150.0, 120.0)]},
    }
    for name, fields in extra.items():
        profiles[name.replace("_", "-")].update(fields)
    return {
        "pipeline": "p",
        "spec": "spec.yaml",
        "machine": {"cores": 2, "cpu": "cpu"},
        "compute": {"per_request_ms_batch1": 1.0, "per_request_ms_best": 0.5, "best_batch": 32},
        "allocation": {"counts": {"a": 1}},
        "profiles": profiles,
    }


def test_peaks_over_both_baselines_and_the_ceiling() -> None:
    summary = summarize(_report())
    assert summary["fused"] == {
        "peak_rps": 600.0,
        "concurrency": 16,
        "p95_ms": 30.0,
        "x_static": 6.0,  # 600 / static's peak 100 (at c=4), not / static at c=16
        "x_ensemble": 3.0,
        "of_ceiling": 0.6,
        "server_cpu_ms_per_request": 2.5,  # 150% of a core over 600 req/s
    }
    assert summary["ensemble"]["x_ensemble"] == 1.0 and summary["static"]["x_static"] == 1.0
    assert "ceiling" not in summary  # no load points: it is the reference, not a row


def test_targets_name_both_baselines_and_each_peer() -> None:
    report = _report()
    report["summary"] = summarize(report)
    targets = {t["target"]: t for t in evaluate_targets(report)}
    assert targets["fused vs static throughput >= 4x"]["value"] == 6.0
    assert targets["fused vs ensemble (the spec as written) throughput >= 1.5x"]["value"] == 3.0
    peer = targets["fused >= 1.5x ray-serve-fused throughput at equal or lower P95"]
    assert peer["value"] == 4.0 and peer["met"]  # fused at c=16 (p95 30 <= 120) over the peer's 150
    table = format_table(report)
    assert "x ensemble" in table and "6.00x" in table and "3.00x" in table


def test_cached_figures_are_labelled() -> None:
    note = "cache on for a: requests cycle 512 rows, so figures include cache hits"
    report = _report(fused={"cache_hits_included": note})
    report["summary"] = summarize(report)
    report["targets"] = evaluate_targets(report)
    assert report["summary"]["fused"]["cache_hits_included"] == note
    assert all(t.get("note") for t in report["targets"] if t["target"].startswith("fused vs"))
    table = format_table(report)
    assert table.count("include cache hits") >= 2  # under the profile's points and in the peaks table


def test_no_verdict_against_a_peer_when_the_machine_was_shared() -> None:
    report = _report()
    for point in report["profiles"]["ray-serve-fused"]["points"]:
        point["other_cpu_pct"] = 90.0
    [peer] = [t for t in evaluate_targets(report) if "ray-serve-fused" in t["target"]]
    assert peer["met"] is None and peer["value"] == 4.0 and "not established" in peer["note"]
    report["summary"] = summarize(report)
    report["targets"] = evaluate_targets(report)
    assert "n/a  fused >= 1.5x ray-serve-fused" in format_table(report)


def test_fused_against_pytriton_peak_over_peak_with_both_cpu_costs() -> None:
    report = _report()
    report["profiles"]["pytriton"] = {"description": "p", "points": [_point(4, 200.0, 20.0), _point(16, 400.0, 40.0)]}
    [target] = [t for t in evaluate_targets(report) if "pytriton" in t["target"]]
    assert target["target"] == "fused >= 1.2x pytriton throughput (peak over peak)"
    assert target["value"] == 1.5 and target["met"]  # 600 over 400, each at its own best concurrency
    assert target["note"] == "server CPU per request: fused 2.500 ms at c=16, pytriton 3.750 ms at c=16"
    report["profiles"]["pytriton"] = {"error": "PyTriton did not start"}
    [target] = [t for t in evaluate_targets(report) if "pytriton" in t["target"]]
    assert target["met"] is None and target["note"] == "PyTriton did not start"
    report["summary"] = summarize(report)
    assert "pytriton        not measured: PyTriton did not start" in format_table(report)


def test_server_cpu_per_request_against_the_handlers_alone_and_the_ceilings() -> None:
    """Where compute dominates (>= 5 ms a request), server CPU per request is judged against the
    handlers timed alone and against the ceiling's workers computing the same batches side by side."""
    report = _report()
    report["compute"]["per_request_ms_best"] = 10.0
    report["profiles"]["fused"]["points"][1]["server_cpu_pct"] = 780.0  # 13 ms a request at 600 req/s
    report["profiles"]["ceiling"]["cpu_ms_per_request"] = 11.0
    targets = {t["target"]: t for t in evaluate_targets(report)}
    alone = targets["fused server CPU per request <= 1.3x the handlers' compute (timed alone, batch 32)"]
    assert alone["value"] == 1.3 and alone["met"] and alone["applies"]
    together = targets[
        "fused server CPU per request <= 1.3x the ceiling's (the same handlers in-process, side by side)"
    ]
    assert together["value"] == 1.18 and together["met"]
    assert (
        together["note"] == "server CPU 13.00 ms per request at c=16; ceiling 11.00 ms (1.10x the compute timed alone)"
    )
    report["compute"]["per_request_ms_best"] = 0.5  # a light pipeline: overhead is all there is, not judged here
    assert all(t["applies"] is False for t in evaluate_targets(report) if "server CPU per request" in t["target"])


def test_the_tuned_profile_reports_its_server_cpu_against_both() -> None:
    report = _report()
    report["compute"]["per_request_ms_best"] = 10.0
    report["profiles"]["ceiling"]["cpu_ms_per_request"] = 12.5
    report["profiles"]["tuned"] = {"description": "t", "points": [_point(64, 100.0, 50.0)]}  # 15 ms a request
    assert tuned_ratios(report)["server_cpu_per_request"] == {"ms": 15.0, "x_compute_alone": 1.5, "x_ceiling": 1.2}


def test_the_tuned_profile_is_judged_against_its_handlers_as_its_instance_runs_them() -> None:
    """The tuned plan's handlers chained in-process at its threads: what is left over is serving's."""
    report = _report()
    report["compute"]["per_request_ms_best"] = 10.0
    report["compute"]["tuned_as_served"] = {"threads": 2, "batch": 64, "cpu_ms_per_request": 12.0}
    report["profiles"]["ceiling"]["cpu_ms_per_request"] = 12.5
    report["profiles"]["tuned"] = {"description": "t", "points": [_point(64, 100.0, 50.0)]}  # 15 ms a request
    [_, _, served] = _cpu_targets(
        "tuned", report["profiles"]["tuned"]["points"][0], report["compute"], {"cpu_ms_per_request": 12.5}
    )
    assert served["target"] == (
        "tuned server CPU per request <= 1.3x its handlers' as its instance runs them"
        " (chained in-process, 2 thread(s), batch 64)"
    )
    assert served["value"] == 1.25 and served["met"] and served["applies"]
    assert served["note"].endswith("handlers chained 12.00 ms (1.20x the compute timed alone)")
    assert tuned_ratios(report)["server_cpu_per_request"] == {
        "ms": 15.0,
        "x_compute_alone": 1.5,
        "x_ceiling": 1.2,
        "x_handlers_as_served": 1.25,
    }
    # measured for the tuned spec's instances only: the generated profiles are not judged by it
    assert not any("instance runs them" in t["target"] for t in evaluate_targets(report))
