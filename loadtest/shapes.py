"""Load shapes as locust ``LoadTestShape`` classes: constant, step ramp, spike, bursty on/off and soak.

Each reads its knobs from locust's options (``-u``, ``-r``, ``-t`` and the compound options the
locustfile registers), at every tick, so values typed into the web UI apply. The schedule itself is
a pure function of the elapsed time (``users_at``; None ends the test), which is what the unit tests
check. The soak's report (per-window latency, p95 drift, server memory) is built from a ``Timeline``,
kept here as pure data so it is tested the same way; the locustfile feeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from locust import LoadTestShape

DEFAULT_PERIOD_S = 60  # step length x steps, or a spike cycle, when no run time is set
SOAK_DEFAULT_S = 20 * 60  # a soak with no run time still ends: long enough for leaks and drift to show
DEFAULT_WINDOW_S = 60.0  # a soak report's time resolution
DRIFT_WINDOWS = 2  # p95 drift compares the first and the last this many windows


@dataclass(frozen=True)
class Knobs:
    users: int
    spawn_rate: float
    run_time: Optional[float]  # seconds; None runs until stopped
    shape: str = "constant"
    steps: int = 4
    burst_on: float = 5.0
    burst_off: float = 5.0
    target_rps: float = 0.0  # 0: closed loop (no pause between requests); else users share this rate
    window: float = DEFAULT_WINDOW_S

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
            target_rps=max(float(get("compound_target_rps", 0.0)), 0.0),
            window=max(float(get("compound_window", DEFAULT_WINDOW_S)), 1.0),
        )

    def pacing_s(self) -> float:
        """Seconds from one request's start to the same user's next, so that `users` users together
        offer target_rps (locust's constant_pacing); 0 when closed loop."""
        return self.users / self.target_rps if self.target_rps > 0 and self.users > 0 else 0.0


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
    def users_at(elapsed: float, knobs: Knobs) -> Optional[tuple[int, float]]:
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


class SoakShape(_CompoundShape):
    """A constant load for a long run (20 minutes unless -t says otherwise), to catch what only time shows:
    memory that grows, latency that drifts, failures that start late. Meant for about half of the peak
    throughput a step run found, so the server is busy but never saturated: -u users, and --target-rps
    for an exact offered rate. It ends by itself even without -t."""

    @staticmethod
    def users_at(elapsed: float, knobs: Knobs) -> Optional[tuple[int, float]]:
        if elapsed >= (knobs.run_time or SOAK_DEFAULT_S):
            return None
        return max(knobs.users, 1), knobs.spawn_rate


SHAPES: dict[str, type[_CompoundShape]] = {
    "constant": ConstantShape,
    "step": StepShape,
    "spike": SpikeShape,
    "burst": BurstShape,
    "soak": SoakShape,
}


class SelectedShape(_CompoundShape):
    """Whichever of SHAPES the ``--load-shape`` option names (the locustfile's one shape class)."""

    abstract: ClassVar[bool] = True

    @staticmethod
    def users_at(elapsed: float, knobs: Knobs) -> Optional[tuple[int, float]]:
        return SHAPES.get(knobs.shape, ConstantShape).users_at(elapsed, knobs)


# --- the soak report ------------------------------------------------------------------------------


def round_ms(ms: float) -> int:
    """Locust's bucketing (2 significant digits above 100 ms), so histograms stay small over hours."""
    if ms < 100:
        return int(round(ms))
    if ms < 1000:
        return int(round(ms, -1))
    return int(round(ms, -2))


@dataclass
class LatencyWindow:
    """One window's requests as a histogram of rounded milliseconds: merges across locust workers."""

    requests: int = 0
    failures: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    max_ms: float = 0.0

    def add(self, ms: float, failed: bool) -> None:
        self.requests += 1
        self.failures += int(failed)
        bucket = round_ms(ms)
        self.histogram[bucket] = self.histogram.get(bucket, 0) + 1
        self.max_ms = max(self.max_ms, ms)

    def merge(self, other: LatencyWindow) -> None:
        self.requests += other.requests
        self.failures += other.failures
        for bucket, count in other.histogram.items():
            self.histogram[int(bucket)] = self.histogram.get(int(bucket), 0) + count
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, q: float) -> float:
        """The smallest bucket at or below which a fraction q of the requests finished."""
        if not self.requests:
            return 0.0
        wanted, seen = q * self.requests, 0
        for bucket in sorted(self.histogram):
            seen += self.histogram[bucket]
            if seen >= wanted:
                return float(bucket)
        return float(max(self.histogram))

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "histogram": self.histogram,
            "max_ms": self.max_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyWindow:
        histogram = {int(k): int(v) for k, v in data.get("histogram", {}).items()}
        return cls(int(data["requests"]), int(data["failures"]), histogram, float(data.get("max_ms", 0.0)))


class Timeline:
    """Requests in fixed windows from the start of the test: what a soak report plots and compares."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, end_s: Optional[float] = None) -> None:
        self.window_s = window_s
        self.end_s = end_s  # requests that start later raced the stop: they would make a stub last window
        self.windows: dict[int, LatencyWindow] = {}

    def add(self, offset_s: float, ms: float, failed: bool) -> None:
        if self.end_s is not None and offset_s >= self.end_s:
            return
        index = max(int(offset_s // self.window_s), 0)
        self.windows.setdefault(index, LatencyWindow()).add(ms, failed)

    def merge(self, payload: dict[str, Any]) -> None:
        """Fold in another process's windows (a locust worker's report to the master)."""
        for index, data in payload.items():
            self.windows.setdefault(int(index), LatencyWindow()).merge(LatencyWindow.from_json(data))

    def take(self) -> dict[str, Any]:
        """This process's windows as JSON, and forget them (a worker ships each report once)."""
        payload = {str(i): w.to_json() for i, w in self.windows.items()}
        self.windows = {}
        return payload

    def rows(self) -> list[dict[str, Any]]:
        """One row per window, empty windows included (a stall is a finding, not a gap)."""
        if not self.windows:
            return []
        rows = []
        for index in range(max(self.windows) + 1):
            w = self.windows.get(index, LatencyWindow())
            rows.append({
                "start_s": round(index * self.window_s, 3),
                "requests": w.requests,
                "failures": w.failures,
                "rps": round(w.requests / self.window_s, 2),
                "p50_ms": w.percentile(0.5),
                "p95_ms": w.percentile(0.95),
                "max_ms": round(w.max_ms, 2),
            })  # fmt: skip
        return rows

    def drift(self, count: int = DRIFT_WINDOWS) -> Optional[dict[str, Any]]:
        """p95 over the first `count` windows after the ramp-up window against the last `count`; None
        when the run is too short to have both. A ratio well above 1 means latency crept up."""
        indexes = list(range(max(self.windows) + 1)) if self.windows else []
        steady = indexes[1:] if len(indexes) > 2 else indexes  # window 0 holds the ramp-up
        count = min(count, len(steady) // 2)
        if count < 1:
            return None
        first, last = LatencyWindow(), LatencyWindow()
        for index in steady[:count]:
            first.merge(self.windows.get(index, LatencyWindow()))
        for index in steady[-count:]:
            last.merge(self.windows.get(index, LatencyWindow()))
        p95_first, p95_last = first.percentile(0.95), last.percentile(0.95)
        return {
            "first_windows_s": [round(i * self.window_s, 3) for i in steady[:count]],
            "last_windows_s": [round(i * self.window_s, 3) for i in steady[-count:]],
            "first_p95_ms": p95_first,
            "last_p95_ms": p95_last,
            "ratio": round(p95_last / p95_first, 3) if p95_first else None,
            "first_failures": first.failures,
            "last_failures": last.failures,
        }
