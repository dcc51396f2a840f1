"""The runtime's quarter-second reaction: a burst of waiting rows acts in one sample, steady load
makes no more decisions than the once-a-second windows alone, and the metrics it reads are parsed."""

from __future__ import annotations

from typing import Callable

from toolkit.runtime.policy import BURST_ROWS_PER_INSTANCE, QUIET_SAMPLES, Bounds, Component, Decision, Policy, Window
from toolkit.runtime.signals import SAMPLE_S, live_instances, pending_rows


def components(**counts: int) -> dict[str, Component]:
    return {name: Component(name, n, bounds=Bounds(1, 3, 60)) for name, n in counts.items()}


def apply(comps: dict[str, Component], decisions: list[Decision], now: float) -> None:
    for d in decisions:
        if d.action == "scale":
            comps[d.model].instances = d.instances
            comps[d.model].last_change = now
            comps[d.model].hot = comps[d.model].cold = 0


def simulate(
    comps: dict[str, Component],
    windows: Callable[[dict[str, Component]], dict[str, Window]],
    pending: Callable[[dict[str, Component], int], dict[str, float]],
    seconds: int,
    fast: bool,
    cores: float = 2,
) -> list[Decision]:
    """The supervisor's loop: a window every second, a sample every SAMPLE_S between them (fast)."""
    policy = Policy(cores=cores)
    decisions: list[Decision] = []
    per_window = round(1 / SAMPLE_S)
    for step in range(seconds * per_window):
        now = 100.0 + step * SAMPLE_S
        if step % per_window == 0:
            made = policy.decide(now, comps, windows(comps))
        elif fast:
            made = policy.burst(now, comps, pending(comps, step))
        else:
            made = []
        apply(comps, made, now)
        decisions += made
    return decisions


def test_a_burst_acts_in_one_sample_on_a_spare_core() -> None:
    comps = components(heavy=1, light=1)
    policy = Policy(cores=2)
    quiet = {"heavy": Window(seconds=1.0, requests=100, busy_s=0.8), "light": Window(seconds=1.0, busy_s=0.05)}
    assert policy.decide(10.0, comps, quiet) == []
    assert policy.burst(10.25, comps, {"heavy": 0.0}) == []
    (decision,) = policy.burst(10.5, comps, {"heavy": 30.0, "light": 0.0})
    assert decision.model == "heavy" and decision.instances == 2
    assert "burst: 30 rows waiting on 1 instance(s)" in decision.reason and "cores spare" in decision.reason
    assert comps["heavy"].burst_since == 10.5  # the first sample with a row waiting


def test_a_few_waiting_rows_are_no_burst_and_onset_resets_once_the_queue_stays_empty() -> None:
    comps = components(heavy=2)
    policy = Policy(cores=4)
    for step in range(40):
        rows = float(step % 2 * (2 * BURST_ROWS_PER_INSTANCE - 1))  # one row short of a burst, then none
        assert policy.burst(10.0 + step * SAMPLE_S, comps, {"heavy": rows}) == []
    assert comps["heavy"].burst_since == 10.25  # an empty sample between batches does not end it
    for step in range(QUIET_SAMPLES):
        policy.burst(20.0 + step * SAMPLE_S, comps, {"heavy": 0.0})
    assert comps["heavy"].burst_since is None


def test_a_burst_takes_a_quiet_components_instance_when_no_core_is_spare() -> None:
    comps = components(heavy=1, idle=2)
    policy = Policy(cores=2)
    policy.decide(10.0, comps, {"heavy": Window(seconds=1.0, busy_s=1.0), "other": Window(seconds=1.0, busy_s=0.9)})
    for step in range(QUIET_SAMPLES - 1):  # the idle one has not been quiet for long enough
        assert policy.burst(10.25 + step * SAMPLE_S, comps, {"heavy": 30.0, "idle": 0.0}) == []
    decisions = {d.model: d for d in policy.burst(11.25, comps, {"heavy": 30.0, "idle": 0.0})}
    assert decisions["idle"].instances == 1 and "gives an instance to heavy" in decisions["idle"].reason
    assert "nothing waiting for 4 samples in a row" in decisions["idle"].reason
    assert decisions["heavy"].instances == 2 and "takes idle's instance" in decisions["heavy"].reason


def test_a_burst_moving_away_gives_its_instance_before_the_donor_has_been_quiet_a_second() -> None:
    """The burst moves from classify to extract: the classifier's queue is empty at once and its
    pipeline's arrivals (now and forecast, read by the last scale-ahead sample) fit on one instance, so
    it gives an instance in the burst's first sample; without that forecast it must first be quiet."""
    comps = components(extractor=1, classifier=2)
    policy = Policy(cores=2, busy_cores=2.0)
    comps["extractor"].row_s = comps["classifier"].row_s = 0.007
    pending = {"extractor": 32.0, "classifier": 0.0}
    comps["classifier"].load_now, comps["classifier"].load_ahead = 1.3, 1.6  # still its burst's load
    assert policy.burst(40.25, comps, pending) == []
    comps["classifier"].load_now, comps["classifier"].load_ahead = 0.47, 0.1  # its clients left
    decisions = {d.model: d for d in policy.burst(40.5, comps, pending)}
    assert decisions["classifier"].instances == 1 and decisions["extractor"].instances == 2
    assert "takes classifier's instance" in decisions["extractor"].reason


def test_a_burst_on_a_component_that_reaches_every_core_takes_no_donor_instance() -> None:
    """An on-demand extractor loaded at 2 on 2 cores under a burst: a quiet classifier's second
    instance holds no core, so moving it would add an instance and no capacity."""
    comps = components(extractor=2, classifier=2)
    policy = Policy(cores=2, busy_cores=2.0)
    comps["extractor"].row_s = comps["classifier"].row_s = 0.007
    comps["classifier"].load_now, comps["classifier"].load_ahead = 0.47, 0.1
    pending = {"extractor": 32.0, "classifier": 0.0}
    assert policy.burst(40.5, comps, pending) == []
    comps["extractor"].instances = 1  # one instance reaches one core of two: the swap pays
    assert {d.model for d in policy.burst(41.0, comps, pending)} == {"extractor", "classifier"}


def test_steady_saturating_load_makes_no_more_decisions_than_the_windows_alone() -> None:
    def windows(comps: dict[str, Component]) -> dict[str, Window]:
        n = comps["heavy"].instances
        return {
            "heavy": Window(seconds=1.0, requests=100 * n, busy_s=0.98 * n, queue_s=2.0),
            "light": Window(seconds=1.0, requests=100, busy_s=0.05),
        }

    def pending(comps: dict[str, Component], step: int) -> dict[str, float]:
        return {"heavy": 32.0 - comps["heavy"].instances - step % 3, "light": float(step % 2)}

    fast = simulate(components(heavy=1, light=1), windows, pending, 60, fast=True)
    slow = simulate(components(heavy=1, light=1), windows, pending, 60, fast=False)
    assert len(fast) <= len(slow) and [(d.model, d.instances) for d in fast] == [("heavy", 2)]


def test_steady_moderate_load_makes_no_decision() -> None:
    def windows(comps: dict[str, Component]) -> dict[str, Window]:
        return {"c": Window(seconds=1.0, requests=200, busy_s=0.9 * comps["c"].instances, queue_s=0.3)}

    def pending(comps: dict[str, Component], step: int) -> dict[str, float]:
        return {"c": float(step % 4)}  # 0-3 rows waiting on 2 instances: fluctuation, not a burst

    assert simulate(components(c=2), windows, pending, 60, fast=True) == []
    assert simulate(components(c=2), windows, pending, 60, fast=False) == []


def test_pending_rows_take_the_larger_of_compound_and_triton_counts() -> None:
    text = "\n".join(
        [
            "# HELP compound_pending_requests Requests sent to a component",
            'compound_pending_requests{component="heavy",instance="orch_0_0",pipeline="a"} 3',
            'compound_pending_requests{component="heavy",instance="orch_0_1",pipeline="b"} 4',
            'nv_inference_pending_request_count{model="heavy",version="1"} 2',
            'nv_inference_pending_request_count{model="classifier",version="1"} 17',
            'nv_inference_request_success{model="classifier",version="1"} 900',
        ]
    )
    assert pending_rows(text) == {"heavy": 7.0, "classifier": 17.0}


def test_the_supervisor_grows_before_it_shrinks() -> None:
    from types import SimpleNamespace

    from toolkit.runtime.supervisor import Supervisor

    comps = components(donor=2, bottleneck=1, gpu=1)
    comps["gpu"].gpu = True
    decisions = [
        Decision("donor", "scale", 1, "gives an instance to bottleneck"),
        Decision("gpu", "scale", 2, "on a GPU"),
        Decision("bottleneck", "scale", 2, "takes donor's instance"),
    ]
    ordered = Supervisor._growing_first(SimpleNamespace(components=comps), decisions)  # type: ignore[arg-type]
    assert [d.model for d in ordered] == ["bottleneck", "donor", "gpu"]


def test_rows_a_light_step_drains_in_milliseconds_are_no_burst() -> None:
    comps = components(light=1, heavy=1)
    policy = Policy(cores=4)
    windows = {
        "light": Window(seconds=1.0, requests=200, busy_s=0.1),  # 0.5 ms a row: 16 rows are 8 ms of work
        "heavy": Window(seconds=1.0, requests=100, busy_s=0.7),  # 7 ms a row: 16 rows are 112 ms
    }
    policy.decide(10.0, comps, windows)
    (decision,) = policy.burst(10.25, comps, {"light": 16.0, "heavy": 16.0})
    assert decision.model == "heavy" and "112 ms of work" in decision.reason


def test_a_busy_step_with_an_empty_queue_gives_no_instance_to_a_burst() -> None:
    comps = components(parse=1, extractor=2, classifier=2)
    policy = Policy(cores=2)
    windows = {
        "parse": Window(seconds=1.0, requests=200, busy_s=0.9),
        "extractor": Window(seconds=1.0, requests=200, busy_s=1.4),  # 7 ms a row
        "classifier": Window(seconds=1.0, requests=100, busy_s=0.7),
    }
    policy.decide(10.0, comps, windows)
    pending = {"parse": 60.0, "extractor": 0.0, "classifier": 0.0}  # extractor starved by parse: busy, no queue
    rates = {"parse": 200.0, "extractor": 200.0, "classifier": 10.0}  # classifier's clients have left
    decisions: list[Decision] = []
    for step in range(QUIET_SAMPLES + 1):
        decisions += policy.burst(10.25 + step * SAMPLE_S, comps, pending, rates)
    moved = {d.model: d.instances for d in decisions}
    assert moved == {"parse": 2, "classifier": 1}  # 200/s x 7 ms = 1.4 cores would not fit on one extractor
    comps = components(parse=1, extractor=2, classifier=1)  # the classifier at its floor: no donor left
    policy.decide(20.0, comps, windows)
    for step in range(QUIET_SAMPLES + 1):
        assert policy.burst(20.25 + step * SAMPLE_S, comps, pending, rates) == []


def test_recent_rates_skip_restarted_and_new_counters() -> None:
    from toolkit.runtime.supervisor import recent_rates

    samples = [(0.0, {"a": 100.0, "b": 50.0}), (0.5, {"a": 150.0}), (1.0, {"a": 200.0, "b": 10.0, "c": 5.0})]
    assert recent_rates(samples) == {"a": 100.0}
    assert recent_rates(samples[:1]) is None


def test_served_requests_are_summed_per_model() -> None:
    from toolkit.runtime.signals import served

    text = 'nv_inference_request_success{model="a",version="1"} 7\n'
    text += 'nv_inference_request_success{model="a",version="2"} 3'
    assert served(text) == {"a": 10.0}


def test_instances_serving_are_counted_per_component_model_from_their_gauges() -> None:
    text = "\n".join(
        [
            'compound_instances{component="classifier",instance="classifier_0_0",model="classifier",pid="11"} 1',
            'compound_instances{component="classifier",instance="classifier_0_1",model="classifier",pid="12"} 1',
            'compound_instances{component="classifier",instance="classifier_0_1",model="classifier",pid="9"} 0',
            'compound_instances{component="parse",instance="fused_0_0",model="fused",pid="13"} 1',
        ]
    )
    assert live_instances(text) == {"classifier": 2.0}  # a finalised generation's 0; a fused step is not a model


def test_a_steady_noisy_pipeline_gives_no_instance_to_another_ones_burst() -> None:
    """The falling-arrivals donor is no noise detector: classify steady at 250/s with 10% sample
    noise (a Poisson count of 100 a sample) and its queue empty every other sample (both instances
    each taking a batch), while extract bursts for 100 s with no core spare: no instance moves."""
    import random

    from toolkit.runtime.forecast import ArrivalForecaster

    comps = components(parse=1, classifier=2, extractor=1)
    for name, ms in {"parse": 0.3, "classifier": 7.0, "extractor": 7.0}.items():
        comps[name].row_s = ms / 1e3
    pipelines = {"classify": ["parse", "classifier"], "extract": ["parse", "extractor"]}
    policy = Policy(cores=2, pipelines=pipelines, busy_cores=2.0)
    forecaster = ArrivalForecaster(sorted(pipelines))
    noise = random.Random(7)
    served = {"classify": 0.0, "extract": 0.0}
    for step in range(400):
        now = 10.0 + step * SAMPLE_S
        served["classify"] += max(0.0, noise.gauss(250.0, 25.0)) * SAMPLE_S
        served["extract"] += 140.0 * SAMPLE_S
        forecaster.observe(now, dict(served), {"extract": 32.0})
        policy.observe_arrivals(comps, forecaster.outlook(SAMPLE_S))
        queued = 0.0 if step % 2 else 12.0
        assert policy.burst(now, comps, {"extractor": 32.0, "classifier": queued, "parse": 0.0}) == [], step
