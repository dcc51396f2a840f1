"""The arrival-rate forecast the runtime scales ahead of: Holt's smoothing meets a ramp where a plain
moving average chases it, keeps a steady noisy series flat, and counts arrivals from scraped counters."""

from __future__ import annotations

import random

from toolkit.runtime.forecast import HORIZON_S, ArrivalForecaster, Holt
from toolkit.runtime.policy import AHEAD_AFTER, AHEAD_MIN_SAMPLES, AHEAD_RISE
from toolkit.runtime.signals import SAMPLE_S

STEPS = HORIZON_S / SAMPLE_S


def test_holt_meets_a_ramp_where_an_ewma_lags_it() -> None:
    holt, ewma = Holt(), 100.0
    for k in range(40):
        value = 100.0 + 10.0 * k  # +40 requests/s per second
        holt.update(value)
        ewma = 0.5 * value + 0.5 * ewma
    truth = 100.0 + 10.0 * (39 + STEPS)
    assert abs(holt.forecast(STEPS) - truth) / truth < 0.03
    assert (truth - ewma) / truth > 0.1  # the moving average is behind by its lag plus the horizon


def test_a_steady_noisy_series_shows_no_sustained_rise() -> None:
    """100 requests/s in binomial counts (about Poisson, 25 a sample): the policy's rise, AHEAD_RISE
    above the level for AHEAD_AFTER samples in a row, never shows over 100 s."""
    rng = random.Random(7)
    holt = Holt()
    streak = sustained = 0
    for _ in range(400):
        count = sum(1 for _ in range(400) if rng.random() < 0.0625)
        holt.update(count / SAMPLE_S)
        rising = holt.samples > AHEAD_MIN_SAMPLES and holt.forecast(STEPS) >= (1 + AHEAD_RISE) * (holt.level or 0.0)
        streak = streak + 1 if rising else 0
        sustained += streak == AHEAD_AFTER
    assert sustained == 0


def test_a_rise_from_idle_shows_within_a_second() -> None:
    holt = Holt()
    for _ in range(8):
        holt.update(0.0)
    samples = 0
    while holt.forecast(STEPS) < (1 + AHEAD_RISE) * (holt.level or 0.0) or samples < AHEAD_AFTER:
        holt.update(140.0)
        samples += 1
    assert samples <= 4 and holt.forecast(STEPS) > 140.0


def test_arrivals_are_requests_answered_plus_the_growth_of_what_waits() -> None:
    forecaster = ArrivalForecaster(["classify"])
    forecaster.observe(0.0, {"classify": 100.0}, {})
    forecaster.observe(0.25, {"classify": 125.0}, {"classify": 5.0})  # 25 answered, 5 more waiting
    (outlook,) = forecaster.outlook(SAMPLE_S).values()
    assert outlook.rate == 120.0 and outlook.samples == 1
    forecaster.observe(0.5, {"classify": 3.0}, {})  # reloaded: its counter restarted
    assert forecaster.outlook(SAMPLE_S) == {}
    forecaster.observe(0.75, {"classify": 28.0}, {})
    assert forecaster.outlook(SAMPLE_S)["classify"].rate == 100.0


def test_a_pipeline_the_server_does_not_count_has_no_series() -> None:
    forecaster = ArrivalForecaster(["classify"])
    forecaster.observe(0.0, {"other": 1.0}, {})
    forecaster.observe(0.25, {"other": 9.0}, {})
    assert forecaster.outlook(SAMPLE_S) == {}
