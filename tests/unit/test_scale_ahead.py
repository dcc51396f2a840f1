"""Scaling ahead along the graph: a pipeline's rising arrival rate, forecast a load's time ahead and
turned into instances at each step's measured time per row, grows the steps before their queues
build; a steady series, noisy or saturating, makes no more decisions than the policy without it."""

from __future__ import annotations

import random
from typing import Callable

from toolkit.runtime.forecast import ArrivalForecaster, Outlook
from toolkit.runtime.policy import AHEAD_AFTER, AHEAD_MIN_SAMPLES, Bounds, Component, Decision, Policy, Window
from toolkit.runtime.signals import SAMPLE_S
from toolkit.runtime.supervisor import rescaled

PIPELINES = {"classify": ["parse", "classifier"], "extract": ["parse", "extractor"]}


def components(**counts: int) -> dict[str, Component]:
    return {name: Component(name, n, bounds=Bounds(1, 3, 60)) for name, n in counts.items()}


def apply(comps: dict[str, Component], decisions: list[Decision], now: float) -> None:
    for d in decisions:
        if d.action == "scale":
            comps[d.model].instances = d.instances
            comps[d.model].last_change = now
            comps[d.model].hot = comps[d.model].cold = 0


def outlook(rate: float, forecast: float) -> Outlook:
    return Outlook(rate, forecast, 1.5, AHEAD_MIN_SAMPLES)


def measured(comps: dict[str, Component], **row_ms: float) -> None:
    for name, ms in row_ms.items():
        comps[name].row_s = ms / 1e3


def test_a_rising_pipeline_grows_its_step_before_its_queue_builds() -> None:
    comps = components(parse=1, classifier=1, extractor=1)
    measured(comps, parse=0.3, classifier=7.0, extractor=7.0)
    policy = Policy(cores=2, pipelines=PIPELINES, busy_cores=0.8)
    rising = {"classify": outlook(100.0, 180.0), "extract": outlook(0.0, 0.0)}
    for step in range(AHEAD_AFTER - 1):  # one sample is not yet a rise
        assert policy.ahead(10.0 + step * SAMPLE_S, comps, rising) == []
    (decision,) = policy.ahead(10.5, comps, rising)
    assert decision.model == "classifier" and decision.instances == 2
    assert decision.reason.startswith(
        "scale-ahead: arrivals 100/s rising, forecast 180/s in 1.5 s needs 2 instance(s) at 7.0 ms/row"
    )
    assert "cores spare" in decision.reason
    assert comps["parse"].load_ahead is not None and comps["parse"].load_ahead < 0.1  # light: nothing to grow


def test_a_forecast_is_priced_at_the_least_recent_time_per_row() -> None:
    """A window inflated by other work on the machine (9.3 ms a row instead of 7) must not turn a rise
    that one instance carries into a scale-ahead the next windows undo."""
    comps = components(parse=1, classifier=1, extractor=1)
    policy = Policy(cores=2, pipelines=PIPELINES, busy_cores=0.8)
    for busy_s in (0.70, 0.71, 0.93):  # 100 rows a window: 7.0, 7.1, then 9.3 ms a row
        policy.observe(1.0, comps, {"classifier": Window(seconds=1.0, requests=100, busy_s=busy_s)})
    assert comps["classifier"].row_s is not None and abs(comps["classifier"].row_s - 0.0093) < 1e-9
    assert abs((comps["classifier"].least_row_s or 0.0) - 0.007) < 1e-9
    rising = {"classify": outlook(90.0, 120.0), "extract": outlook(0.0, 0.0)}  # 120/s x 7 ms = 0.84: fits
    for step in range(2 * AHEAD_AFTER):
        assert policy.ahead(10.0 + step * SAMPLE_S, comps, rising) == []
    assert comps["classifier"].load_ahead is not None and abs(comps["classifier"].load_ahead - 0.84) < 1e-9


def test_a_shared_step_counts_every_pipeline_it_serves() -> None:
    comps = components(parse=1, classifier=1, extractor=1)
    measured(comps, parse=4.0, classifier=1.0, extractor=1.0)
    policy = Policy(cores=4, pipelines=PIPELINES)
    both = {"classify": outlook(100.0, 130.0), "extract": outlook(100.0, 130.0)}
    for step in range(AHEAD_AFTER):
        made = policy.ahead(10.0 + step * SAMPLE_S, comps, both)
    assert [(d.model, d.instances) for d in made] == [("parse", 2)]  # 260/s x 4 ms = 1.04 cores


def test_a_forecast_below_what_the_instances_carry_or_a_flat_one_makes_no_decision() -> None:
    comps = components(parse=1, classifier=1, extractor=1)
    measured(comps, parse=0.3, classifier=7.0, extractor=7.0)
    policy = Policy(cores=2, pipelines=PIPELINES)
    for step in range(8):
        now = 10.0 + step * SAMPLE_S
        assert policy.ahead(now, comps, {"classify": outlook(50.0, 110.0)}) == []  # rising, 0.77 cores: fits
        assert policy.ahead(now, comps, {"classify": outlook(200.0, 210.0)}) == []  # saturated, flat: the windows'


def test_the_burst_moving_away_gives_the_rising_pipeline_its_instance() -> None:
    comps = components(parse=1, classifier=2, extractor=1)
    measured(comps, parse=0.3, classifier=7.0, extractor=7.0)
    policy = Policy(cores=2, pipelines=PIPELINES, busy_cores=2.0)
    shift = {"classify": outlook(110.0, 60.0), "extract": outlook(70.0, 160.0)}
    for step in range(AHEAD_AFTER):
        made = {d.model: d for d in policy.ahead(10.0 + step * SAMPLE_S, comps, shift)}
    assert made["extractor"].instances == 2 and "takes classifier's instance" in made["extractor"].reason
    assert made["classifier"].instances == 1
    comps["classifier"].pending = 3.0  # rows still waiting: not a donor
    comps["extractor"].last_change = comps["classifier"].last_change = -1e9
    comps["extractor"].instances = 1
    for step in range(AHEAD_AFTER):
        assert policy.ahead(20.0 + step * SAMPLE_S, comps, shift) == []


def test_a_burst_shifting_pipelines_takes_the_donor_in_the_sample_its_clients_are_seen_gone() -> None:
    """The burst moves from classify to extract as the supervisor sees it, a sample every 250 ms: 32
    clients on classify (250/s), then a sample they left partway through (`mixed`), then only the one
    that stays (100/s), while extract's 32 clients queue on one extractor with no core spare. Holt's
    level reaches one classifier instance's load three samples after the shift (docs/runtime.md: a
    1.0 s reaction); the latest sample alone, two (the first all of whose 250 ms they were gone); a
    fall of FALL or more in the shift's own sample, one."""
    assert shift_donation(mixed=150.0) == (8, "clients left")  # left a third of the way in: 40% below
    assert shift_donation(mixed=190.0) == (9, "1 carry them")  # left late in the sample: the next one fits


def shift_donation(mixed: float) -> tuple[int, str]:
    """The sample in which the classifier gives the extractor its instance, and the end of its reason."""
    comps = components(parse=1, classifier=2, extractor=1)
    measured(comps, parse=0.3, classifier=7.0, extractor=7.0)
    policy = Policy(cores=2, pipelines=PIPELINES, busy_cores=2.0)
    forecaster = ArrivalForecaster(["classify", "extract"])
    served = {"classify": 0.0, "extract": 0.0}
    classify = [250.0] * 8 + [mixed, 100.0, 100.0, 100.0]
    extract = [0.0] * 8 + [40.0, 140.0, 140.0, 140.0]
    for step, (a, b) in enumerate(zip(classify, extract)):
        now = 10.0 + step * SAMPLE_S
        served = {"classify": served["classify"] + a * SAMPLE_S, "extract": served["extract"] + b * SAMPLE_S}
        waiting = 32.0 if b else 0.0
        forecaster.observe(now, served, {"extract": waiting})
        policy.observe_arrivals(comps, forecaster.outlook(SAMPLE_S))
        queued = 20.0 if a == 250.0 else 0.0  # the classifier's queue empties once its clients leave
        made = {d.model: d for d in policy.burst(now, comps, {"extractor": waiting, "classifier": queued})}
        if made:
            assert made["classifier"].instances == 1 and "takes classifier's instance" in made["extractor"].reason
            return step, made["classifier"].reason.rstrip(")").rsplit(": ", 1)[-1]
    raise AssertionError("the classifier gave no instance")


def simulate(
    arrivals: Callable[[int], float],
    windows: Callable[[dict[str, Component]], dict[str, Window]],
    seconds: int,
    ahead: bool,
) -> list[Decision]:
    """The supervisor's loop over one pipeline (`chain`: light -> heavy): a window every second, a
    sample every SAMPLE_S between them feeding the forecaster with the pipeline's served counter."""
    comps = components(light=1, heavy=1)
    policy = Policy(cores=2, pipelines={"chain": ["light", "heavy"]})
    forecaster = ArrivalForecaster(["chain"])
    served = 0.0
    decisions: list[Decision] = []
    per_window = round(1 / SAMPLE_S)
    for step in range(seconds * per_window):
        now = 100.0 + step * SAMPLE_S
        served += arrivals(step)
        forecaster.observe(now, {"chain": served}, {})
        if step % per_window == 0:
            made = policy.decide(now, comps, windows(comps))
        else:
            outlooks = forecaster.outlook(SAMPLE_S)
            policy.observe_arrivals(comps, outlooks)
            made = policy.burst(now, comps, {})
            if ahead and not made:
                made = policy.ahead(now, comps, outlooks)
        apply(comps, made, now)
        decisions += made
    return decisions


def test_steady_noisy_load_near_an_instance_makes_no_more_decisions_than_without_the_forecast() -> None:
    """0.8 of a core on one instance (what one client keeps the bursty example's classifier at), in
    Poisson-like counts: the window policy leaves it alone, and so does the forecast."""
    rng = random.Random(3)

    def arrivals(step: int) -> float:
        return float(sum(1 for _ in range(200) if rng.random() < 0.145))  # ~29 a sample, 116/s

    def windows(comps: dict[str, Component]) -> dict[str, Window]:
        return {
            "heavy": Window(seconds=1.0, requests=116, busy_s=0.8, queue_s=0.01),
            "light": Window(seconds=1.0, requests=116, busy_s=0.03),
        }

    with_forecast = simulate(arrivals, windows, 120, ahead=True)
    without = simulate(arrivals, windows, 120, ahead=False)
    assert with_forecast == without == []


def test_steady_saturating_load_makes_no_more_decisions_than_without_the_forecast() -> None:
    def arrivals(step: int) -> float:
        return 35.0 + step % 3  # 140/s against one heavy instance, flat

    def windows(comps: dict[str, Component]) -> dict[str, Window]:
        n = comps["heavy"].instances
        return {
            "heavy": Window(seconds=1.0, requests=140, busy_s=min(0.98 * n, 1.0), queue_s=2.0 if n == 1 else 0.0),
            "light": Window(seconds=1.0, requests=140, busy_s=0.04),
        }

    with_forecast = simulate(arrivals, windows, 60, ahead=True)
    without = simulate(arrivals, windows, 60, ahead=False)
    assert len(with_forecast) <= len(without)
    assert [(d.model, d.instances) for d in with_forecast] == [(d.model, d.instances) for d in without]


def test_a_ramp_is_met_before_the_windows_see_a_queue() -> None:
    """Arrivals ramping from 40/s by 40/s each second against 7 ms per row: one instance runs out at
    about 130/s (0.9 of a core); the forecast grows heavy while the queue is still empty."""

    def arrivals(step: int) -> float:
        return (40.0 + 40.0 * step * SAMPLE_S) * SAMPLE_S

    def windows(comps: dict[str, Component]) -> dict[str, Window]:
        return {"heavy": Window(seconds=1.0, requests=100, busy_s=0.7), "light": Window(seconds=1.0, busy_s=0.02)}

    made = simulate(arrivals, windows, 4, ahead=True)
    assert [(d.model, d.instances) for d in made] == [("heavy", 2)]
    assert "scale-ahead" in made[0].reason
    assert simulate(arrivals, windows, 4, ahead=False) == []


def test_a_rescale_sets_every_group_count_and_drops_the_warmup() -> None:
    live = {
        "name": "classifier",
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "model_warmup": [{"name": "classifier_warmup_batch_1", "batch_size": 1}],
    }
    config = rescaled(live, 2)
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}] and "model_warmup" not in config
    assert rescaled(config, 1)["instance_group"][0]["count"] == 1  # idempotent on a config without one
