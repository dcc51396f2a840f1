"""The tuner's pure decisions (toolkit/tune/candidates.py): batch from cost curves and the SLO, candidate
structures whose specs validate and plan, threads, the measurement budget, and the choice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from toolkit.plan import build_plan, plan_spec
from toolkit.repository.render import render_files
from toolkit.spec.schema import LoadedSpec, load_spec
from toolkit.tune.candidates import (
    HOP_OVERHEAD_S,
    Candidate,
    Unit,
    apply_candidate,
    candidates,
    choose_batch,
    fill_batching,
    measurement_plan,
    predict_rps,
    spec_yaml,
    threads_for,
)
from toolkit.tune.search import choose

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tune"
SIZES = (1, 2, 4, 8, 16)


def curve(per_row_ms: float, batch1_ms: float) -> dict[int, float]:
    """Seconds per call: batch1_ms per row at 1, falling linearly in log-batch to per_row_ms at 16."""
    steps = len(SIZES) - 1
    return {b: b * (batch1_ms + (per_row_ms - batch1_ms) * i / steps) / 1e3 for i, b in enumerate(SIZES)}


CURVES = {
    "encode": curve(0.1, 0.3),
    "branch_a": curve(0.1, 0.3),
    "branch_b": curve(1.0, 3.0),  # heavy: ~70% of the compute
    "join": curve(0.1, 0.3),
}


def test_batch_is_the_cheapest_per_row_and_shrinks_to_fit_an_slo() -> None:
    assert choose_batch(CURVES, 16).batch == 16
    # the path of a batch: 3.9 ms at 1, 2 x 3.25 = 6.5 ms at 2, 4 x 2.6 = 10.4 ms at 4: half of 14 ms fits 2
    fitted = choose_batch(CURVES, 16, slo_p95_ms=14)
    assert fitted.batch == 2 and "fits half the 14 ms P95 SLO" in fitted.why
    tight = choose_batch(CURVES, 16, slo_p95_ms=1)
    assert tight.batch == 1 and "above half the SLO" in tight.why


def test_candidates_cover_every_structure_and_each_tuned_spec_plans(tmp_path: Path) -> None:
    loaded = load_spec(FIXTURE / "pipeline.yaml")
    plan = build_plan(loaded)
    batching, plans = candidates(plan.pipelines["fan"], CURVES, 2, {m: 1 for m in CURVES})
    assert plans[0].name == "as-written"
    kinds = {c.kind for c in plans}
    assert kinds == {"as-written", "ensemble", "fused", "partial"}
    ensemble = next(c for c in plans if c.kind == "ensemble")
    assert {u.name: u.count for u in ensemble.units}["branch_b"] == 2  # the heavy step gets both cores
    fused = next(c for c in plans if c.kind == "fused")
    assert fused.units[0].count == 2 and fused.units[0].fused
    partial = [c for c in plans if c.kind == "partial"]
    assert partial and all("branch_b" not in members for c in partial for _, members in c.groups)
    for candidate in plans:
        spec = apply_candidate(loaded.spec, "fan", candidate)
        tuned = build_plan(LoadedSpec(spec, loaded.path, {}))
        p = tuned.pipelines["fan"]
        if candidate.kind == "fused":
            assert p.kind == "fused" and p.instances is not None and p.instances.count == 2
        if candidate.kind == "partial":
            assert set(p.groups) == {g for g, _ in candidate.groups}
        if candidate.kind != "as-written":
            batching_of = tuned.spec.models["encode"].batching
            assert tuned.spec.models["encode"].max_batch_size == batching.batch
            assert batching_of is not None and batching_of.max_queue_delay_us == 0


def test_fill_batching_waits_for_each_instance_share_a_tenth_of_its_run() -> None:
    unit = {1: 0.010, 2: 0.018, 4: 0.032, 8: 0.060, 16: 0.100}
    # 64 clients over 2 instances: 32 each, above the batch: 16, whose run takes 100 ms -> 10 ms
    assert fill_batching(unit, 16, 2, 64) == (16, 10_000)
    # 12 clients over 2 instances: 6 rows, between the measured 4 and 8: 46 ms -> 4.6 ms
    assert fill_batching(unit, 16, 2, 12) == (6, 4_600)
    assert fill_batching(unit, 16, 2, 3) == (1, 0)  # one request each: nothing to wait for
    assert fill_batching({1: 5.0, 16: 80.0}, 16, 1, 64)[1] == 100_000  # capped


def test_fused_candidate_fills_its_batches_at_the_measured_concurrency(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "handlers.py", tmp_path / "handlers.py")
    loaded = load_spec(FIXTURE / "pipeline.yaml")
    plan = build_plan(loaded)
    _, plain = candidates(plan.pipelines["fan"], CURVES, 2, {m: 1 for m in CURVES})
    assert "fused-filled" not in {c.name for c in plain}  # no concurrency given: no wait to size
    _, plans = candidates(plan.pipelines["fan"], CURVES, 2, {m: 1 for m in CURVES}, concurrency=64)
    by_name = {c.name: c for c in plans}
    assert by_name["fused"].preferred_batch is None and by_name["fused"].queue_delay_us == 0  # kept beside it
    fused = by_name["fused-filled"]
    whole = sum(c[16] for c in CURVES.values())
    assert fused.kind == "fused" and fused.units == by_name["fused"].units
    assert fused.preferred_batch == 16 and fused.queue_delay_us == round(0.1 * whole * 1e6)
    assert "batches of 16" in fused.why and "below 32 clients" in fused.why
    assert all(c.preferred_batch is None for c in plans if c.name != "fused-filled")
    # 8 clients: 4 per instance, a batch of 4 predicted at its own (higher) cost per row
    _, few = candidates(plan.pipelines["fan"], CURVES, 2, {m: 1 for m in CURVES}, concurrency=8)
    small = next(c for c in few if c.name == "fused-filled")
    assert small.preferred_batch == 4 and small.predicted_rps < by_name["fused-filled"].predicted_rps
    for ranked in (plans, few):  # measured right after `fused` whatever its prediction
        names = [c.name for c in ranked]
        assert names.index("fused-filled") == names.index("fused") + 1, names
    spec = apply_candidate(loaded.spec, "fan", fused)
    path = tmp_path / "tuned.yaml"
    path.write_text(spec_yaml(spec, ["tuned"]))
    config = render_files(plan_spec(path))["fan/config.pbtxt"]
    text = config.decode() if isinstance(config, bytes) else config
    assert "preferred_batch_size: [ 16 ]" in text
    assert f"max_queue_delay_microseconds: {fused.queue_delay_us}" in text


def test_threaded_candidate_where_two_threads_pay(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "handlers.py", tmp_path / "handlers.py")
    loaded = load_spec(FIXTURE / "pipeline.yaml")
    plan = build_plan(loaded)
    fan = plan.pipelines["fan"]
    paying = {m: {2: 1.6} for m in CURVES}
    _, plans = candidates(fan, CURVES, 2, {m: 1 for m in CURVES}, paying, concurrency=64)
    names = [c.name for c in plans]
    assert names.index("fused-threaded") == names.index("fused-filled") + 1, names  # measured after fused
    threaded = plans[names.index("fused-threaded")]
    (unit,) = threaded.units
    assert threaded.kind == "fused" and (unit.count, unit.threads, unit.fused) == (1, 2, True)
    whole = sum(c[16] for c in CURVES.values())  # one instance takes all 64 clients: batches of 16
    assert threaded.preferred_batch == 16 and threaded.queue_delay_us == round(0.1 * whole * 1e6)
    assert "1.60x" in threaded.why
    # predicted at the measured speedup, not at two ideal threads
    row = sum(c[16] / 16 for c in CURVES.values()) + HOP_OVERHEAD_S
    assert threaded.predicted_rps == pytest.approx(1.6 / row)
    # the speedup is the whole call's, each step weighted by its cost: a light step that two threads
    # slow down does not veto it, the heavy step that they do not speed up does
    light_slower = {**paying, "join": {2: 0.9}}
    named = {c.name: c for c in candidates(fan, CURVES, 2, {}, light_slower, concurrency=64)[1]}
    one = {m: c[16] for m, c in CURVES.items()}
    weighted = sum(one.values()) / sum(one[m] / light_slower[m][2] for m in one)
    assert 1.2 < weighted < 1.6 and f"{weighted:.2f}x" in named["fused-threaded"].why
    heavy_flat = {**paying, "branch_b": {2: 1.1}}
    assert "fused-threaded" not in {c.name for c in candidates(fan, CURVES, 2, {}, heavy_flat, concurrency=64)[1]}
    # nor without the clients to size its batches, nor on one core
    assert "fused-threaded" not in {c.name for c in candidates(fan, CURVES, 2, {}, paying)[1]}
    assert "fused-threaded" not in {c.name for c in candidates(fan, CURVES, 1, {}, paying, concurrency=64)[1]}
    spec = apply_candidate(loaded.spec, "fan", threaded)
    path = tmp_path / "tuned.yaml"
    path.write_text(spec_yaml(spec, ["tuned"]))
    config = render_files(plan_spec(path))["fan/config.pbtxt"]
    text = config.decode() if isinstance(config, bytes) else config
    assert "count: 1" in text and "preferred_batch_size: [ 16 ]" in text
    assert 'key: "compound.threads"\n  value {\n    string_value: "2"' in text


def test_tuned_spec_yaml_reads_back_as_the_same_spec(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "handlers.py", tmp_path / "handlers.py")
    loaded = load_spec(FIXTURE / "pipeline.yaml")
    plan = build_plan(loaded)
    _, plans = candidates(plan.pipelines["fan"], CURVES, 2, {m: 1 for m in CURVES})
    partial = next(c for c in plans if c.kind == "partial")
    spec = apply_candidate(loaded.spec, "fan", partial)
    path = tmp_path / "tuned.yaml"
    path.write_text(spec_yaml(spec, ["tuned", "by a test"]))
    text = path.read_text()
    assert text.startswith("# tuned\n# by a test\nname: tunefix\n")
    assert "x: {dtype: fp32, dims: [64]}" in text  # short mappings stay on one line
    assert load_spec(path).spec == spec
    assert plan_spec(path).pipelines["fan"].groups


def test_threads_only_where_they_pay_and_fit() -> None:
    assert threads_for({2: 1.9}, count=1, cores=2) == 2
    assert threads_for({2: 1.2}, count=1, cores=2) == 1  # 60% efficient: instances do better
    assert threads_for({2: 1.9}, count=2, cores=2) == 1  # two instances already fill the cores
    assert threads_for({}, count=1, cores=8) == 1


def test_prediction_charges_one_hop_per_model() -> None:
    per_row = {"a": 1e-3, "b": 1e-3}
    split = predict_rps((Unit("a", ("a",), 1), Unit("b", ("b",), 1)), per_row, cores=2)
    fused = predict_rps((Unit("f", ("a", "b"), 2, fused=True),), per_row, cores=2)
    assert split == pytest.approx(2 / (2e-3 + 2 * HOP_OVERHEAD_S))
    assert fused == pytest.approx(2 / (2e-3 + HOP_OVERHEAD_S))


def test_measurement_plan_fits_the_budget() -> None:
    count, point, warmup = measurement_plan(5, budget_s=60, start_s=4)
    assert count == 5 and 2 <= point <= 10
    assert count * (4 + point + warmup) <= 60
    assert measurement_plan(5, budget_s=20, start_s=4)[0] == 3
    assert measurement_plan(5, budget_s=3, start_s=4) == (0, 0.0, 0.0)
    assert measurement_plan(2, budget_s=600, start_s=4)[1] == 10.0


def _candidate(name: str, kind: str = "ensemble") -> Candidate:
    return Candidate(name, kind, (), 16, 0, 0.0, "")


def test_choice_keeps_the_written_spec_unless_beaten_and_respects_the_slo() -> None:
    plans = [_candidate("as-written", "as-written"), _candidate("fused", "fused"), _candidate("ensemble")]

    def m(rps: float, p95: float, errors: int = 0) -> dict[str, float]:
        return {"throughput_rps": rps, "p95_ms": p95, "errors": errors}

    chosen, why = choose(plans, {"as-written": m(100, 50), "fused": m(300, 40), "ensemble": m(200, 30)}, None)
    assert chosen.name == "fused" and "3.00x the spec as written" in why
    chosen, _ = choose(plans, {"as-written": m(100, 50), "fused": m(300, 40), "ensemble": m(200, 30)}, 35)
    assert chosen.name == "ensemble"
    chosen, why = choose(plans, {"as-written": m(100, 50), "fused": m(101, 40)}, None)
    assert chosen.name == "as-written" and "kept" in why
    chosen, _ = choose(plans, {"as-written": m(100, 50), "fused": m(300, 40, errors=3)}, None)
    assert chosen.name == "as-written"
    # a few percent more throughput is a tie: the much shorter tail wins
    chosen, why = choose(plans, {"as-written": m(100, 50), "fused": m(104, 90), "ensemble": m(60, 20)}, None)
    assert chosen.name == "as-written" and "the lowest P95" in why and "fused: 104 req/s" in why
    chosen, why = choose(plans, {"as-written": m(100, 50), "fused": m(300, 40)}, 10)
    assert chosen.name == "fused" and "no candidate met the 10 ms P95 SLO" in why
