"""The bursty bench's cost and reaction figures: core-seconds of reserved capacity, the price per
1,000 requests, the reaction-time target, and what `compound status` shows of them."""

from __future__ import annotations

from typing import Any

import pytest

from toolkit.bench.workload import CpuByProcess, evaluate_targets, format_table, reserved
from toolkit.core.errors import CompoundError
from toolkit.deployment.deployment import runtime_summary
from toolkit.runtime.pricing import Prices, cost_summary

COMPONENTS = {"a": {"threads": 2, "gpu": False}, "b": {"threads": 1, "gpu": True}}


def result(instances: dict[str, Any], requests: int = 10_000) -> dict[str, Any]:
    return {"instances": instances, "overall": {"requests": requests}}


def test_reserved_core_and_gpu_seconds_of_fixed_and_sampled_counts() -> None:
    prices = Prices(core_hour=0.036, gpu_hour=3.6)
    fixed = reserved(result({"fixed": {"a": 2, "b": 1}}), COMPONENTS, 100.0, prices)
    assert fixed["core_s"] == 500.0 and fixed["gpu_s"] == 100.0  # a: 2 x 2 threads, b: 1 (on a GPU too)
    assert fixed["core_s_per_1k_requests"] == 50.0
    assert fixed["cost_per_1k_requests"] == pytest.approx(1e3 * (500 * 0.036 + 100 * 3.6) / 3600 / 10_000)
    samples = [{"t": 0.0, "instances": {"a": 1, "b": 1}}, {"t": 50.0, "instances": {"a": 2, "b": 0}}]
    sampled = reserved(result({"samples": samples}), COMPONENTS, 100.0, Prices())
    assert sampled["core_s"] == 50 * (2 + 1) + 50 * 4 and sampled["gpu_s"] == 50.0
    assert sampled["cost_per_1k_requests"] is None  # unpriced: core-seconds only


def report(reactions: list[float], p95: float = 105.0, instance_s: float = 280.0) -> dict[str, Any]:
    def deployment(p95_ms: float, inst: float) -> dict[str, Any]:
        return {"overall": {"latency_ms": {"p95": p95_ms}}, "instance_s": inst}

    adaptive = deployment(p95, instance_s)
    adaptive["reactions_s"] = reactions
    return {"workload": "bursty", "deployments": {"static": deployment(100.0, 400.0), "adaptive": adaptive}}


def test_the_saving_may_cost_five_percent_of_p95_and_reactions_have_a_target() -> None:
    targets = {t["target"].split(" (")[0].split(" at ")[0]: t for t in evaluate_targets(report([0.3, 0.4, 1.2]))}
    saving = targets["bursty: adaptive >= 30% fewer instance-seconds"]
    assert saving["met"] and saving["value"]["p95_ratio"] == 1.05
    reaction = targets["bursty: reaction p50 <= 0.5 s"]
    assert reaction["met"] and reaction["value"] == 0.4 and "3 reaction(s)" in reaction["note"]
    missed = {t["target"].split(" (")[0]: t for t in evaluate_targets(report([], p95=110.0))}
    assert not missed["bursty: reaction p50 <= 0.5 s"]["met"]


def test_status_prices_the_runtimes_account() -> None:
    total = {"instance_s": 300.0, "core_s": 360.0, "gpu_s": 0.0, "requests": 20_000}
    summary = runtime_summary({"total": total, "prices": {"core_hour": 0.05, "gpu_hour": 0.0}, "models": {}})
    cost = summary["cost"]
    assert cost["core_s"] == 360.0 and cost["cost"] == pytest.approx(0.005)
    assert cost["per_1k_requests"] == pytest.approx(0.00025) and cost["core_s_per_1k_requests"] == 18.0
    assert "prices" not in cost_summary(total, Prices())  # nothing given: core-seconds, no price
    with pytest.raises(CompoundError, match="--price-per-core-hour"):
        Prices(core_hour=-1.0)


def test_the_table_shows_core_seconds_cost_and_reactions() -> None:
    def deployment(reasons: list[dict[str, Any]]) -> dict[str, Any]:
        lat = {"p50": 10.0, "p95": 20.0, "p99": 30.0}
        phase = {"name": "quiet", "throughput_rps": 100.0, "latency_ms": lat, "failures": 0, "instance_s": 10.0}
        return {
            "phases": [{**phase, "second_half": phase}],
            "overall": {"throughput_rps": 100.0, "latency_ms": lat, "failures": 0, "requests": 1000},
            "instance_s": 10.0,
            "instance_s_per_1k_requests": 10.0,
            "core_s": 20.0,
            "core_s_per_1k_requests": 20.0,
            "cost_per_1k_requests": 0.0002,
            "reactions_s": [d["reaction_s"] for d in reasons if "reaction_s" in d],
            "runtime": {"decisions": reasons},
        }

    decision = {"t": 21.3, "model": "c", "action": "scale", "instances": 2, "reason": "burst", "reaction_s": 0.41}
    text = format_table(
        {
            "workload": "bursty",
            "spec": "peak.yaml",
            "machine": {"cores": 2, "cpu": "cpu"},
            "settings": {"phase_s": 20.0, "burst": 32, "cores": 2.0},
            "phases": [{}],
            "components": {"c": {"count": 1, "autoscale": None}},
            "deployments": {"adaptive": deployment([decision])},
        }
    )
    assert "20 core-s reserved, 20.00 per 1,000 requests; cost 0.00020 per 1,000 requests" in text
    assert "reactions 0.41 s" in text and "c: scale -> 2: burst [reaction 0.41 s]" in text


def test_cpu_by_process_sums_stubs_per_model_and_counts_a_new_stub_from_zero() -> None:
    cpu = CpuByProcess()
    cpu.sample({"tritonserver[1]": 10.0, "stub:extract[2]": 3.0}, first=True)
    cpu.sample({"tritonserver[1]": 12.0, "stub:extract[2]": 3.5, "stub:extract[3]": 0.75}, first=False)
    cpu.sample({"tritonserver[1]": 13.0, "stub:extract[3]": 1.0}, first=False)  # stub 2 removed
    assert cpu.seconds() == {"tritonserver": 3.0, "stub:extract": 1.5}
