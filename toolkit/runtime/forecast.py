"""The arrival rate of each pipeline, a short horizon ahead: what the runtime scales ahead of.

Method: Holt's linear (double exponential) smoothing over the 250 ms samples. Why: the question is
"how many rows per second will reach this pipeline when an instance started now is serving", 0.4-2.6 s
ahead (what a load takes on Triton 2.51, docs/runtime.md). At that horizon the series has a level and
a slope and no season (a daily cycle is invisible in 2 s), so a trend model is the smallest one that
answers: a plain moving average or EWMA lags a ramp by a constant number of samples times its slope
(it chases a rising load), Holt's trend term removes that lag, and its state is two numbers per
pipeline, updated in O(1) per sample with no fitting. Heavier models (ARIMA, Holt-Winters) need a
history and a season this horizon does not have. The smoothing constants are low enough that a
steady, noisy series (Poisson counts of a few dozen per sample) keeps a trend near zero, and the
policy acts only on a rise that is both sustained and large (toolkit/runtime/policy.py, `ahead`).

A pipeline's arrivals in one sample: the requests its Triton model answered since the last sample
(`nv_inference_request_success`) plus the growth of what waits in it (its pending rows): a request
that arrived and waits is an arrival the instances have not served yet. Pure: the supervisor feeds
it scraped counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

ALPHA = 0.5  # weight of a new sample in the level: a step shows within 2-3 samples
BETA = 0.1  # weight of a new slope: noise moves it little (0.2: a steady 100/s "rose" 20% in 5% of samples)
HORIZON_S = 1.5  # how far ahead the runtime scales: covers a scale-up's load (0.4-2.6 s measured, median ~1 s)


@dataclass
class Holt:
    """Holt's linear smoothing of one series sampled every `step_s` seconds."""

    alpha: float = ALPHA
    beta: float = BETA
    level: Optional[float] = None
    trend: float = 0.0  # per sample
    samples: int = 0
    last: Optional[float] = None  # the latest sample itself: a fall shows there a sample or two before the level

    def update(self, value: float) -> None:
        self.last = value
        if self.level is None:
            self.level, self.trend = value, 0.0
        else:
            previous = self.level
            self.level = self.alpha * value + (1 - self.alpha) * (previous + self.trend)
            self.trend = self.beta * (self.level - previous) + (1 - self.beta) * self.trend
        self.samples += 1

    def forecast(self, steps: float) -> float:
        """The value `steps` samples ahead (never below zero: a rate)."""
        return max(0.0, (self.level or 0.0) + steps * self.trend)


@dataclass(frozen=True)
class Outlook:
    """One pipeline's arrivals now and a horizon ahead."""

    rate: float  # smoothed requests/s now (Holt's level)
    forecast: float  # requests/s at now + horizon_s
    horizon_s: float
    samples: int
    latest: Optional[float] = None  # requests/s in the latest sample alone (None: not known)

    @property
    def rising(self) -> bool:
        return self.forecast > self.rate


@dataclass
class ArrivalForecaster:
    """Holt's smoothing of each pipeline's arrival rate from successive scrapes."""

    pipelines: list[str]
    horizon_s: float = HORIZON_S
    series: dict[str, Holt] = field(default_factory=dict)
    last: Optional[tuple[float, dict[str, float], dict[str, float]]] = None  # (time, served, pending)

    def observe(self, now: float, served: dict[str, float], pending: dict[str, float]) -> None:
        """One scrape: each pipeline's arrivals since the last one enter its series. A counter that went
        back (the model was reloaded) restarts that pipeline's series."""
        if self.last is not None:
            before, served_before, pending_before = self.last
            seconds = now - before
            for name in self.pipelines:
                if seconds <= 0 or name not in served or name not in served_before:
                    continue
                answered = served[name] - served_before[name]
                if answered < 0:
                    self.series.pop(name, None)
                    continue
                waiting = pending.get(name, 0.0) - pending_before.get(name, 0.0)
                self.series.setdefault(name, Holt()).update(max(0.0, answered + waiting) / seconds)
        self.last = (now, served, pending)

    def outlook(self, step_s: float) -> dict[str, Outlook]:
        """Each pipeline with a series: its rate now and `horizon_s` ahead (samples of `step_s`)."""
        steps = self.horizon_s / step_s
        return {
            name: Outlook(h.level or 0.0, h.forecast(steps), self.horizon_s, h.samples, h.last)
            for name, h in self.series.items()
        }
