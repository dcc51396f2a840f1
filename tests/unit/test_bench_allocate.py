"""Instance planning from given cost curves (no measurement, no server)."""

from __future__ import annotations

import pytest

from toolkit.plan.allocate import allocate, bottleneck, operating_batch


def linear(per_row_s: float, fixed_s: float = 0.0, sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> dict[int, float]:
    """A cost curve: a fixed per-call cost plus a per-row cost."""
    return {b: fixed_s + per_row_s * b for b in sizes}


def test_equal_costs_get_one_instance_each() -> None:
    curves = {"a": linear(1e-3), "b": linear(1e-3)}
    result = allocate(curves, cores=2, max_batch=32)
    assert result.counts == {"a": 1, "b": 1}


def test_dominant_model_gets_the_cores_it_can_use() -> None:
    curves = {"light": linear(1e-3), "heavy": linear(3e-3)}  # heavy: 75% of the compute
    result = allocate(curves, cores=2, max_batch=32)
    assert result.counts == {"light": 1, "heavy": 2}
    assert bottleneck(result.counts, result.per_request_s) == "heavy"


def test_counts_scale_with_cores_and_are_capped() -> None:
    curves = {"a": linear(1e-3), "b": linear(1e-3), "c": linear(6e-3)}  # c: 75%
    assert allocate(curves, cores=8, max_batch=32).counts == {"a": 1, "b": 1, "c": 6}
    assert allocate(curves, cores=8, max_batch=32, max_per_model=4).counts["c"] == 4
    assert allocate(curves, cores=1, max_batch=32).counts == {"a": 1, "b": 1, "c": 1}


def test_operating_batch_is_cheapest_per_row_within_max_batch() -> None:
    # a fixed per-call cost makes bigger batches cheaper per row
    curves = {"a": linear(1e-4, fixed_s=1e-3), "b": linear(1e-4, fixed_s=1e-3)}
    assert operating_batch(curves, max_batch=32) == 32
    assert operating_batch(curves, max_batch=8) == 8
    result = allocate(curves, cores=2, max_batch=8)
    assert result.batch == 8
    assert result.per_request_s["a"] == pytest.approx((1e-3 + 8e-4) / 8)


def test_flat_per_row_cost_prefers_the_smallest_batch() -> None:
    curves = {"a": linear(1e-3)}
    assert operating_batch(curves, max_batch=32) == 1


def test_predicted_throughput_is_cores_over_total_cost() -> None:
    curves = {"a": linear(1e-3), "b": linear(3e-3)}
    result = allocate(curves, cores=2, max_batch=32)
    assert result.predicted_rps == pytest.approx(2 / 4e-3)
    assert result.share["b"] == pytest.approx(0.75)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        allocate({}, cores=2, max_batch=8)
    with pytest.raises(ValueError):
        allocate({"a": linear(1e-3)}, cores=0, max_batch=8)
