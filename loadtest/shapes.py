"""Load shapes as locust ``LoadTestShape`` classes: constant, step ramp, spike and bursty on/off.

Each reads its knobs from locust's options (``-u``, ``-r``, ``-t`` and the compound options the
locustfile registers), at every tick, so values typed into the web UI apply. The schedule itself is
a pure function of the elapsed time (``users_at``), which is what the unit tests check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from locust import LoadTestShape

DEFAULT_PERIOD_S = 60  # step length x steps, or a spike cycle, when no run time is set


@dataclass(frozen=True)
class Knobs:
    users: int
    spawn_rate: float
    run_time: Optional[float]  # seconds; None runs until stopped
    shape: str = "constant"
    steps: int = 4
    burst_on: float = 5.0
    burst_off: float = 5.0

    @classmethod
    def from_options(cls, options: Any) -> Knobs:
        def get(name: str, default: Any) -> Any:
            value = getattr(options, name, None) if options is not None else None
            return default if value in (None, "") else value

        return cls(
            users=max(int(get("num_users", 1)), 0),
            spawn_rate=max(float(get("spawn_rate", 1.0)), 0.01),
            run_time=float(get("run_time", 0)) or None,
            shape=str(get("compound_shape", "constant")),
            steps=max(int(get("compound_steps", 4)), 1),
            burst_on=max(float(get("compound_burst_on", 5.0)), 0.1),
            burst_off=max(float(get("compound_burst_off", 5.0)), 0.0),
        )


class _CompoundShape(LoadTestShape):
    """Common tick: stop at the run time, else ask the schedule."""

    abstract: ClassVar[bool] = True
    use_common_options: ClassVar[bool] = True

    def knobs(self) -> Knobs:
        environment = getattr(self.runner, "environment", None)
        return Knobs.from_options(getattr(environment, "parsed_options", None))

    def tick(self) -> Optional[tuple[int, float]]:
        knobs = self.knobs()
        elapsed = self.get_run_time()
        if knobs.run_time is not None and elapsed >= knobs.run_time:
            return None
        return self.users_at(elapsed, knobs)

    @staticmethod
    def users_at(elapsed: float, knobs: Knobs) -> tuple[int, float]:
        raise NotImplementedError


class ConstantShape(_CompoundShape):
    """All users, ramped at the spawn rate, for the whole run."""

    @staticmethod
    def users_at(elapsed: float, knobs: Knobs) -> tuple[int, float]:
        return knobs.users, knobs.spawn_rate


class StepShape(_CompoundShape):
    """A staircase: users/steps more every run_time/steps seconds, to find the knee of the curve."""

    @staticmethod
    def users_at(elapsed: float, knobs: Knobs) -> tuple[int, float]:
        period = knobs.run_time or DEFAULT_PERIOD_S
        step_length = period / knobs.steps
        step = min(int(elapsed // step_length), knobs.steps - 1)
        return max(1, math.ceil(knobs.users * (step + 1) / knobs.steps)), knobs.spawn_rate


class SpikeShape(_CompoundShape):
    """A quarter of the users, then all of them at once for the middle fifth of each period."""

    @staticmethod
    def users_at(elapsed: float, knobs: Knobs) -> tuple[int, float]:
        period = knobs.run_time or DEFAULT_PERIOD_S
        phase = (elapsed % period) / period
        base = max(1, knobs.users // 4)
        if 0.4 <= phase < 0.6:
            return knobs.users, float(max(knobs.users, knobs.spawn_rate))
        return base, float(max(knobs.users, knobs.spawn_rate))


class BurstShape(_CompoundShape):
    """On/off bursts: every user at once for burst_on seconds, then none for burst_off — the
    bursty traffic of agents that fan out tool calls together and then think."""

    @staticmethod
    def users_at(elapsed: float, knobs: Knobs) -> tuple[int, float]:
        cycle = knobs.burst_on + knobs.burst_off
        rate = float(max(knobs.users, knobs.spawn_rate))
        if (elapsed % cycle) < knobs.burst_on:
            return knobs.users, rate
        return 0, rate


SHAPES: dict[str, type[_CompoundShape]] = {
    "constant": ConstantShape,
    "step": StepShape,
    "spike": SpikeShape,
    "burst": BurstShape,
}


class SelectedShape(_CompoundShape):
    """Whichever of SHAPES the ``--load-shape`` option names (the locustfile's one shape class)."""

    abstract: ClassVar[bool] = True

    @staticmethod
    def users_at(elapsed: float, knobs: Knobs) -> tuple[int, float]:
        return SHAPES.get(knobs.shape, ConstantShape).users_at(elapsed, knobs)
