"""The adaptive runtime's policy, decision by decision, on windows of statistics it could have read."""

from __future__ import annotations

from toolkit.runtime.policy import COOLDOWN_S, DOWN_AFTER, UP_AFTER, Bounds, Component, Policy, Window


def saturated(seconds: float = 1.0, instances: int = 1) -> Window:
    """Busy the whole window on every instance, 100 requests each waiting 20 ms for 7 ms of work."""
    return Window(seconds=seconds, requests=100, busy_s=0.98 * seconds * instances, queue_s=2.0)


def quiet(seconds: float = 1.0, busy_s: float = 0.05) -> Window:
    return Window(seconds=seconds, requests=10, busy_s=busy_s, queue_s=0.0)


def components(**counts: int) -> dict[str, Component]:
    return {name: Component(name, n, bounds=Bounds(1, 3, 60)) for name, n in counts.items()}


def run(
    policy: Policy, comps: dict[str, Component], windows: dict[str, Window], ticks: int, start: float = 0.0
) -> list:
    decisions = []
    for tick in range(ticks):
        decisions += policy.decide(start + tick, comps, windows)
        for d in decisions[-2:]:
            if d.action == "scale":
                comps[d.model].instances = d.instances
                comps[d.model].last_change = start + tick
    return decisions


def test_a_bottleneck_with_a_spare_core_gets_an_instance_after_the_hysteresis() -> None:
    comps = components(heavy=1, light=1)
    windows = {"heavy": saturated(), "light": quiet()}
    policy = Policy(cores=2)
    assert policy.decide(10.0, comps, windows) == []  # one saturated window is not enough
    (decision,) = policy.decide(11.0, comps, windows)
    assert UP_AFTER == 2 and decision.model == "heavy" and decision.instances == 2
    assert "utilisation 0.98" in decision.reason and "20.0 ms queued per request" in decision.reason


def test_busy_without_waiting_is_not_a_bottleneck() -> None:
    comps = components(heavy=1)
    windows = {"heavy": Window(seconds=1.0, requests=100, busy_s=0.98, queue_s=0.001)}
    policy = Policy(cores=2)
    assert run(policy, comps, windows, 5) == []  # 0.01 ms queued: nothing waits


def test_without_a_spare_core_an_idle_components_instance_moves() -> None:
    comps = components(heavy=1, idle=2)
    windows = {"heavy": saturated(), "idle": quiet(), "other": Window(seconds=1.0, busy_s=0.9)}
    decisions = run(Policy(cores=2), comps, windows, 3, start=10.0)
    moved = {d.model: d for d in decisions}
    assert moved["idle"].instances == 1 and "gives an instance to heavy" in moved["idle"].reason
    assert moved["heavy"].instances == 2 and "takes idle's instance" in moved["heavy"].reason


def test_nothing_to_take_and_no_spare_core_changes_nothing() -> None:
    comps = components(heavy=1, busy=1)
    windows = {"heavy": saturated(), "busy": Window(seconds=1.0, requests=100, busy_s=0.95, queue_s=0.0)}
    assert run(Policy(cores=2), comps, windows, 4) == []


def test_downstream_grows_with_its_upstream_before_its_queue_does() -> None:
    comps = components(up=1, down=1)
    windows = {"up": saturated(), "down": Window(seconds=1.0, requests=100, busy_s=0.6, queue_s=0.0)}
    policy = Policy(cores=4, downstream={"up": ["down"]})
    decisions = run(policy, comps, windows, 2, start=10.0)
    by_model = {d.model: d for d in decisions}
    assert by_model["up"].instances == 2
    assert by_model["down"].instances == 2 and "downstream of up" in by_model["down"].reason  # 0.6 x 2 / 0.75 -> 2


def test_an_instance_goes_when_the_rest_would_carry_the_load() -> None:
    comps = components(c=2)
    windows = {"c": Window(seconds=1.0, requests=20, busy_s=1.2, queue_s=0.0)}  # 0.6 each; 1.2 on one
    assert run(Policy(cores=2), comps, windows, DOWN_AFTER + 2, start=100.0) == []  # above DOWN_TO: stays
    waiting = {"c": Window(seconds=1.0, requests=20, busy_s=0.7, queue_s=0.5)}  # would fit, but requests wait
    assert run(Policy(cores=2), comps, waiting, DOWN_AFTER + 2, start=100.0) == []
    windows = {"c": Window(seconds=1.0, requests=20, busy_s=0.7, queue_s=0.0)}  # one client's 0.7 of a core
    decisions = run(Policy(cores=2), comps, windows, DOWN_AFTER, start=100.0)
    assert [(d.model, d.instances) for d in decisions] == [("c", 1)]
    assert "1 would carry it at 0.70" in decisions[0].reason


def test_cooldown_and_bounds() -> None:
    comps = components(heavy=3)
    windows = {"heavy": saturated(instances=3)}
    assert run(Policy(cores=8), comps, windows, 4) == []  # already at max
    comps = components(heavy=1)
    comps["heavy"].last_change = 10.0
    policy = Policy(cores=4)
    assert policy.decide(10.5, comps, {"heavy": saturated()}) == []
    assert policy.decide(11.0, comps, {"heavy": saturated()}) == []
    assert policy.decide(10.0 + COOLDOWN_S, comps, {"heavy": saturated()})  # settled again


def test_idle_on_demand_components_are_unloaded_and_fixed_ones_never_touched() -> None:
    agent = Component("agent", 1, bounds=Bounds(0, 1, 30), last_request=0.0)
    fixed = Component("fixed", 1, bounds=None)
    comps = {"agent": agent, "fixed": fixed}
    policy = Policy(cores=2)
    assert policy.decide(20.0, comps, {"agent": Window(seconds=1.0), "fixed": saturated()}) == []
    (decision,) = policy.decide(31.0, comps, {"agent": Window(seconds=1.0), "fixed": saturated()})
    assert decision.action == "unload" and decision.model == "agent" and "idle_s 30" in decision.reason


def test_an_idle_on_demand_component_due_to_unload_within_the_cooldown_is_not_scaled_down_first() -> None:
    agent = Component("agent", 2, bounds=Bounds(0, 3, 5), last_request=0.0, cold=DOWN_AFTER)
    policy = Policy(cores=2)
    assert policy.decide(4.0, {"agent": agent}, {"agent": Window(seconds=1.0)}) == []  # unloads at 5 s
    (decision,) = policy.decide(5.0, {"agent": agent}, {"agent": Window(seconds=1.0)})
    assert decision.action == "unload"
    patient = Component("patient", 2, bounds=Bounds(0, 3, 60), last_request=0.0, cold=DOWN_AFTER)
    (decision,) = policy.decide(4.0, {"patient": patient}, {"patient": Window(seconds=1.0)})
    assert decision.action == "scale" and decision.instances == 1  # its unload is a minute away


def test_a_queue_many_times_the_work_needs_one_window() -> None:
    comps = components(heavy=1)
    flooded = {"heavy": Window(seconds=1.0, requests=100, busy_s=0.99, queue_s=12.0)}  # 120 ms queued for 10 ms
    (decision,) = Policy(cores=2).decide(10.0, comps, flooded)
    assert decision.model == "heavy" and decision.instances == 2


def test_gpu_components_are_bounded_by_the_gpu_budget_not_by_cores() -> None:
    comps = components(vision=1, other=1)
    comps["vision"].gpu = comps["other"].gpu = True
    windows = {"vision": saturated(), "cpu": Window(seconds=1.0, busy_s=2.0)}  # no core spare
    decisions = run(Policy(cores=2, gpus=3), comps, windows, UP_AFTER, start=10.0)
    assert [(d.model, d.instances) for d in decisions] == [("vision", 2)]
    assert "3 of 3 GPU instances" in decisions[0].reason
    comps = components(vision=1, other=2)  # 1 + 2 = the budget
    comps["vision"].gpu = comps["other"].gpu = True
    assert run(Policy(cores=2, gpus=3), comps, windows, 4) == []
