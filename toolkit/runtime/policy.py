"""The adaptive runtime's policy: from one window of Triton's statistics per component, which
component gets an instance, which gives one back, which on-demand component is unloaded. Pure:
the supervisor (toolkit/runtime/supervisor.py) measures and acts; this only decides, with a reason a
person can check against the numbers.

Why these signals. A Python component's instances are processes; one instance runs one batch at a
time. `busy` (time its instances spent executing batches, each batch once) over the window and the
instance count give its utilisation. Utilisation alone cannot tell a component that is busy from
one that is the bottleneck, so scaling up also needs requests waiting: queue time per request at
least half the busy time per request (Triton's pending-request gauge, read once a window, proved too
noisy to trigger on by itself: one closed-loop client showed pending requests with 0.1 ms queued).
Measured on this project's 2-core machines (docs/runtime.md): a CPU-bound, non-batching component
at concurrency 32 sits at utilisation 0.92-1.04 with 100+ ms queued per request against 7 ms of
work, its light neighbours below 0.2; a second instance served 1.83-1.91x.

Scaling down asks whether the load would still fit: a component goes from n to n-1 instances when
its measured load (utilisation x n) spread over n-1 stays below DOWN_TO with nothing waiting, for
DOWN_AFTER windows in a row; the same test, in the last window, picks the component that gives an
instance to a bottleneck when no core is spare (a bottleneck should not wait for the slower
scale-down; measured on the bursty workload, each window a burst waits costs P95). "Nothing
waiting" is what makes 0.9 safe: a component that one client keeps at 0.8 of a core on 2 instances
gives one away (measured: the other was idle, and queueing stayed at zero); one whose requests queue
keeps it. Hysteresis: up after UP_AFTER saturated windows in a row (one, when requests queue
SEVERE_QUEUE_RATIO times as long as they compute), and no change to a component within COOLDOWN_S
of the last (a reload must settle before its numbers mean
anything). Capacity: a new instance needs half a core of measured spare capacity, where busy cores
are counted over the models that compute (components and fused pipelines; an ensemble's or
orchestrator's "compute" is its callees' time, and would count them again). Without spare capacity
an instance comes from a donor, but only to a component whose instances do not yet reach every core
(an idle instance holds no core, so a swap beyond that adds an instance and no capacity).
Downstream components grow with their upstream in proportion to their own measured load before
their queues grow.

Streaming components (toolkit/runtime/streams.py) are measured by their streams in flight instead:
execute() returns before a stream ends, so busy and queue time show nothing. Their utilisation is
streams / (instances x max_streams); saturated at HIGH_UTILISATION, severe when as many streams wait
for a place as run, spare as above with none waiting (streams within the places).

Bursts do not wait for a window: `burst` decides from one 250 ms sample of the rows waiting per
component (a window needs a second, two for the hysteresis; measured on the bursty workload, those
1.1-1.4 s at one instance while 32 clients queue set the run's P95). It only adds, within the same
cooldown, bounds and capacity rules, and needs rows that are both many per instance and worth
BURST_WAIT_S of work, so steady load triggers nothing the windows would not.

Rises are met ahead, along the graph: `ahead` turns each pipeline's forecast arrival rate
(toolkit/runtime/forecast.py, Holt's smoothing a load's time ahead) into the instances each of its
components needs at its measured time per row, and grows a component before its queue builds; only a
sustained rise of AHEAD_RISE acts, so a steady series (noise around a level) makes no decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from toolkit.repository.manifest import AutoscaleBounds
from toolkit.runtime.forecast import Outlook

HIGH_UTILISATION = 0.75  # an instance busier than this, with requests waiting, is saturated
DOWN_TO = 0.9  # an instance goes when, nothing waiting, the rest would stay below this each
QUEUE_RATIO = 0.5  # queue time per request / busy time per request that counts as waiting
SEVERE_QUEUE_RATIO = 4.0  # ... and that makes one saturated window enough
MIN_REQUESTS = 5  # fewer requests in a window say nothing about waiting
UP_AFTER = 2  # saturated windows in a row before adding an instance
DOWN_AFTER = 5  # spare windows in a row before removing one
COOLDOWN_S = 3.0  # no second change to a component within this time
SPARE_FOR_NEW_INSTANCE = 0.5  # cores of measured spare capacity a new single-threaded instance needs
BURST_ROWS_PER_INSTANCE = 4  # rows waiting per instance, in one 250 ms sample, that make a burst
BURST_WAIT_S = 0.05  # ... and the wait those rows add at the measured work per row: less is not worth an instance
QUIET_SAMPLES = 4  # samples in a row with nothing waiting (1 s) before a component gives a burst an instance
# A donor for a burst whose pipelines' arrivals in the latest sample fell this far below their smoothed
# level (which counts that sample at ALPHA 0.5: a third below the level before it), with nothing waiting:
# clients that left partway through the sample, which still counts them; a steady series' sample noise
# stays inside it (tests/unit/test_burst_policy.py)
FALL = 0.2
AHEAD_RISE = 0.15  # a forecast this much above the arrival rate now is a rise, not noise (tests/unit/test_forecast.py)
AHEAD_AFTER = 2  # samples in a row (0.5 s) the forecast must need more instances before scaling ahead
AHEAD_MIN_SAMPLES = 4  # a pipeline's series needs a second of samples before its forecast counts
# Scale-ahead prices a forecast at the least time per row of this many recent windows: other work on the
# machine only ever inflates a window's figure, and an inflated one made a scale-ahead the windows undid.
ROW_MEMORY_WINDOWS = 10

Action = Literal["scale", "unload"]


Bounds = AutoscaleBounds  # a component's bounds are its compound.json autoscale entry


@dataclass(frozen=True)
class Window:
    """One component over one interval, from the difference of two statistics snapshots."""

    seconds: float
    requests: int = 0
    busy_s: float = 0.0  # instances executing batches
    queue_s: float = 0.0  # summed over requests
    streams: Optional[float] = None  # a streaming component: its streams in flight (running or waiting)

    def busy_cores(self) -> float:
        return self.busy_s / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Component:
    """What the runtime tracks of one model between windows."""

    name: str
    instances: int
    threads: int = 1
    bounds: Optional[Bounds] = None  # None: fixed (measured and accounted, never scaled)
    loaded: bool = True
    gpu: bool = False  # its instances run on GPUs: bounded by the GPU budget, not by cores
    max_streams: int = 0  # a streaming component: streams per instance (0: not streaming)
    last_change: float = -math.inf
    last_request: float = 0.0
    hot: int = 0  # saturated windows in a row
    cold: int = 0  # idle windows in a row
    utilisation: float = 0.0
    last_decision: str = ""
    pending: float = 0.0  # rows waiting on it, last sample
    quiet: int = 0  # samples in a row with nothing waiting
    burst_since: Optional[float] = None  # first sample with a row waiting after a quiet second
    burst: bool = False  # being grown for a burst (its load: at least a core per instance)
    row_s: Optional[float] = None  # busy time per row, last window with enough requests to say
    recent_rows_s: list[float] = field(default_factory=list)  # row_s of the last ROW_MEMORY_WINDOWS windows
    recent_rate: Optional[float] = None  # requests/s over the last second of samples (None: not known)
    ahead: int = 0  # samples in a row whose forecast needed more instances than it has
    load_now: Optional[float] = None  # cores its pipelines' arrivals need now (None: no forecast)
    load_ahead: Optional[float] = None  # ... and a horizon ahead
    load_latest: Optional[float] = None  # ... and in the latest sample alone (a fall shows here first)

    loading: bool = False  # a rescale's load is still under way (the runtime does not wait for it)

    @property
    def autoscaled(self) -> bool:
        return self.bounds is not None

    @property
    def least_row_s(self) -> Optional[float]:
        """The least busy time per row of the recent windows (the last one's when none is kept)."""
        return min(self.recent_rows_s) if self.recent_rows_s else self.row_s

    def settled(self, now: float) -> bool:
        """May change now: autoscaled, loaded, no load under way, and its last change COOLDOWN_S old."""
        return self.autoscaled and self.loaded and not self.loading and now - self.last_change >= COOLDOWN_S

    @property
    def floor(self) -> int:
        return max(self.bounds.min, 1) if self.bounds else self.instances


Donor = tuple[Component, str]  # a component that gives an instance, and why it may


@dataclass(frozen=True)
class Decision:
    model: str
    action: Action
    instances: int  # after the change (0 for unload)
    reason: str


@dataclass
class Policy:
    cores: float
    downstream: dict[str, list[str]] = field(default_factory=dict)  # component -> components it feeds
    gpus: int = 0  # GPU instances all components together may run; 0: only each one's autoscale.max
    busy_cores: float = 0.0  # over the compute models, in the last window
    pipelines: dict[str, list[str]] = field(default_factory=dict)  # pipeline model -> its component steps

    def observe(self, now: float, components: dict[str, Component], windows: dict[str, Window]) -> None:
        """Update each component's utilisation and streaks from this window."""
        for name, component in components.items():
            window = windows.get(name)
            if window is None or not component.loaded:
                component.hot = component.cold = 0
                continue
            if window.requests or window.streams:  # a stream in flight is a request not yet answered
                component.last_request = now
            if window.requests >= MIN_REQUESTS:
                component.row_s = window.busy_s / window.requests
                component.recent_rows_s = [*component.recent_rows_s, component.row_s][-ROW_MEMORY_WINDOWS:]
            if component.max_streams and window.streams is not None:
                self._observe_streams(component, window.streams)
                continue
            component.utilisation = window.busy_cores() / max(component.instances, 1)
            saturated = component.utilisation >= HIGH_UTILISATION and self._waiting(window)
            # a queue several times the work is no fluctuation: one window is evidence enough
            severe = saturated and window.queue_s >= SEVERE_QUEUE_RATIO * window.busy_s
            component.hot = UP_AFTER if severe else component.hot + 1 if saturated else 0
            spare = component.autoscaled and not self._waiting(window) and self._spare_instance(component)
            component.cold = component.cold + 1 if spare else 0

    def _observe_streams(self, component: Component, streams: float) -> None:
        places = max(component.instances, 1) * component.max_streams
        component.utilisation = streams / places
        saturated = component.utilisation >= HIGH_UTILISATION
        component.hot = UP_AFTER if streams >= 2 * places else component.hot + 1 if saturated else 0
        spare = component.autoscaled and streams <= places and self._spare_instance(component)
        component.cold = component.cold + 1 if spare else 0

    @staticmethod
    def _waiting(window: Window) -> bool:
        if window.requests < MIN_REQUESTS:
            return False
        return window.queue_s / window.requests >= QUEUE_RATIO * window.busy_s / window.requests

    @staticmethod
    def _spare_instance(component: Component) -> bool:
        """The load would fit in one instance fewer (and the floor allows it)."""
        n = component.instances
        return n > component.floor and component.utilisation * n / (n - 1) < DOWN_TO

    def decide(self, now: float, components: dict[str, Component], windows: dict[str, Window]) -> list[Decision]:
        self.observe(now, components, windows)
        spare = self.cores - sum(w.busy_cores() for w in windows.values())
        self.busy_cores = self.cores - spare
        decisions: dict[str, Decision] = {}

        def settled(c: Component) -> bool:
            return c.settled(now) and c.name not in decisions

        def queue_ms(c: Component) -> float:
            w = windows.get(c.name)
            return 1e3 * w.queue_s / w.requests if w and w.requests else 0.0

        bottlenecks = sorted(
            (
                c
                for c in components.values()
                if settled(c) and c.bounds is not None and c.hot >= UP_AFTER and c.instances < c.bounds.max
            ),
            key=queue_ms,
            reverse=True,
        )
        for component in bottlenecks:
            n = component.instances
            streams = windows[component.name].streams if component.name in windows else None
            if component.max_streams and streams is not None:
                why = (
                    f"utilisation {component.utilisation:.2f} per instance: {streams:g} streams in flight "
                    f"for {n} x {component.max_streams} places"
                )
            else:
                why = (
                    f"utilisation {component.utilisation:.2f} per instance and "
                    f"{queue_ms(component):.1f} ms queued per request"
                )
            spare = self._grow(component, why, spare, components, settled, decisions, self._donor)

        for component in components.values():
            if not settled(component):
                continue
            bounds = component.bounds
            assert bounds is not None  # settled() implies autoscaled
            idle_for = now - component.last_request
            if bounds.min == 0 and idle_for >= bounds.idle_s:
                decisions[component.name] = Decision(
                    component.name, "unload", 0, f"no request for {idle_for:.0f} s (idle_s {bounds.idle_s:g})"
                )
            elif (
                component.cold >= DOWN_AFTER
                and component.instances > component.floor
                # an unload due within the cooldown would wait for it, after a removal (about a second)
                # that it makes pointless (measured once on the bursty workload: 2 -> 1, unloaded 3 s later)
                and not (bounds.min == 0 and idle_for + COOLDOWN_S >= bounds.idle_s)
            ):
                n = component.instances
                decisions[component.name] = Decision(
                    component.name,
                    "scale",
                    n - 1,
                    f"utilisation {component.utilisation:.2f} on {n} instances for {component.cold} windows: "
                    f"{n - 1} would carry it at {component.utilisation * n / (n - 1):.2f}",
                )
        return list(decisions.values())

    def _grow(
        self,
        component: Component,
        why: str,
        spare: float,
        components: dict[str, Component],
        settled: Callable[[Component], bool],
        decisions: dict[str, Decision],
        donor_of: Callable[..., Optional[Donor]],
    ) -> float:
        """One more instance for a bottleneck: on a spare core, else one a donor gives; its downstream
        components grow with it. Returns the spare cores left."""
        n = component.instances
        if component.gpu:
            on_gpus = sum(c.instances for c in components.values() if c.gpu and c.loaded)
            if self.gpus and on_gpus >= self.gpus:
                return spare
            budget = f"; {on_gpus + 1} of {self.gpus} GPU instances" if self.gpus else ""
            decisions[component.name] = Decision(component.name, "scale", n + 1, f"{why}{budget}")
        elif spare >= SPARE_FOR_NEW_INSTANCE * component.threads:
            taken = component.threads * max(component.utilisation, 1.0 if component.burst else 0.0)
            decisions[component.name] = Decision(component.name, "scale", n + 1, f"{why}; {spare:.2f} cores spare")
            spare -= taken
        elif n * component.threads >= self.cores:
            # its instances already reach every core: an idle donor instance holds no core, so taking
            # one would add an instance (instance-seconds) and no capacity (measured: an on-demand
            # component loaded at 2 for a burst on 2 cores took a third, and served no more)
            return spare
        else:
            found = donor_of(components, settled, exclude=component.name)
            if found is None:
                return spare
            donor, because = found
            decisions[donor.name] = Decision(
                donor.name,
                "scale",
                donor.instances - 1,
                f"gives an instance to {component.name} (utilisation {donor.utilisation:.2f}; {because})",
            )
            decisions[component.name] = Decision(
                component.name, "scale", n + 1, f"{why}; no spare core, takes {donor.name}'s instance"
            )
        self._grow_downstream(component, n, components, settled, decisions)
        return spare

    def burst(
        self,
        now: float,
        components: dict[str, Component],
        pending: dict[str, float],
        rates: Optional[dict[str, float]] = None,
    ) -> list[Decision]:
        """From one sample of the rows waiting per component (pushed every 250 ms): a component whose
        waiting rows jump past BURST_ROWS_PER_INSTANCE per instance, and past BURST_WAIT_S of work at
        its measured time per row (a light step drains a dozen rows in milliseconds), gets an instance
        now, without waiting for a window. Also tracks each component's burst onset (the first sample with a row waiting
        after QUIET_SAMPLES with none) and its quiet streak (samples with nothing waiting)."""
        for name, component in components.items():
            rows = pending.get(name, 0.0) if component.loaded else 0.0
            component.pending = rows
            component.recent_rate = rates.get(name) if rates is not None else None
            component.quiet = component.quiet + 1 if rows <= 0 else 0
            if rows > 0:
                component.burst_since = now if component.burst_since is None else component.burst_since
            elif component.quiet >= QUIET_SAMPLES:  # one empty sample is a batch just taken, not the end
                component.burst_since = None
        decisions: dict[str, Decision] = {}

        def settled(c: Component) -> bool:
            return c.settled(now) and c.name not in decisions

        bursting = sorted(
            (
                c
                for c in components.values()
                if settled(c)
                and c.instances < c.bounds.max  # type: ignore[union-attr]
                and c.pending >= BURST_ROWS_PER_INSTANCE * max(c.instances, 1)
                and (c.row_s is None or c.pending * c.row_s / max(c.instances, 1) >= BURST_WAIT_S)
            ),
            key=lambda c: c.pending / max(c.instances, 1),
            reverse=True,
        )
        spare = self.cores - self.busy_cores
        for component in bursting:
            component.burst = True
            why = f"burst: {component.pending:.0f} rows waiting on {component.instances} instance(s)"
            if component.row_s is not None:
                why += f", {1e3 * component.pending * component.row_s / component.instances:.0f} ms of work"
            spare = self._grow(component, why, spare, components, settled, decisions, self._burst_donor)
            component.burst = False
        return list(decisions.values())

    def ahead(self, now: float, components: dict[str, Component], outlooks: dict[str, Outlook]) -> list[Decision]:
        """Scale ahead along the graph: each component's arrivals are its pipelines' (a step per row of
        the pipeline), so the pipelines' forecast rates, through the component's measured busy time per
        row, give the instances it needs a horizon ahead. A component whose forecast needs more than it
        has, on a rise of at least AHEAD_RISE, for AHEAD_AFTER samples in a row, gets one more instance
        now, before its queue builds: on a spare core or from a component whose own forecast fits in one
        instance fewer. "Needs" is the load over DOWN_TO per instance, the threshold the window policy
        gives an instance back below, so a forecast that comes true is never undone by the next windows;
        steady load has no rise and makes no decision here."""
        decisions: dict[str, Decision] = {}
        rising: dict[str, tuple[float, float, int]] = {}
        arrivals = self.observe_arrivals(components, outlooks)
        for name, component in components.items():
            if name not in arrivals or component.load_ahead is None:
                component.ahead = 0
                continue
            rate, forecast = arrivals[name]
            need = math.ceil(component.load_ahead / (DOWN_TO * component.threads) - 1e-9)
            if forecast >= (1 + AHEAD_RISE) * rate and forecast > 0 and need > component.instances:
                component.ahead += 1
                rising[name] = (rate, forecast, need)
            else:
                component.ahead = 0

        def settled(c: Component) -> bool:
            return c.settled(now) and c.name not in decisions

        ready = sorted(
            (
                c
                for c in components.values()
                if c.name in rising and c.ahead >= AHEAD_AFTER and settled(c) and c.instances < c.bounds.max  # type: ignore[union-attr]
            ),
            key=lambda c: (c.load_ahead or 0.0) / max(c.instances, 1),
            reverse=True,
        )
        spare = self.cores - self.busy_cores
        horizon = next(iter(outlooks.values())).horizon_s if outlooks else 0.0
        for component in ready:
            rate, forecast, need = rising[component.name]
            row_s = component.least_row_s
            assert row_s is not None
            why = (
                f"scale-ahead: arrivals {rate:.0f}/s rising, forecast {forecast:.0f}/s in {horizon:g} s "
                f"needs {need} instance(s) at {1e3 * row_s:.1f} ms/row"
            )
            component.burst = True  # taken at a core: its load is about to grow past what it has
            spare = self._grow(component, why, spare, components, settled, decisions, self._forecast_donor)
            component.burst = False
            component.ahead = 0
        return list(decisions.values())

    def observe_arrivals(
        self, components: dict[str, Component], outlooks: dict[str, Outlook]
    ) -> dict[str, tuple[float, float]]:
        """Each component's arrivals are its pipelines' (a step per row of the pipeline): priced at its
        least recent time per row, they set its load now, a horizon ahead and in the latest sample
        (`load_*`, None where no pipeline's series counts yet). Called every sample before `burst`, so
        a burst's donor is judged on this sample's arrivals, not the last one's. Returns each priced
        component's arrivals now and forecast (requests/s)."""
        priced: dict[str, tuple[float, float]] = {}
        for name, component in components.items():
            component.load_now = component.load_ahead = component.load_latest = None
            counted = [
                (outlooks[p], steps.count(name))
                for p, steps in self.pipelines.items()
                if name in steps and p in outlooks and outlooks[p].samples >= AHEAD_MIN_SAMPLES
            ]
            row_s = component.least_row_s
            if not counted or row_s is None or not component.loaded:
                continue
            rate = sum(o.rate * k for o, k in counted)
            forecast = sum(o.forecast * k for o, k in counted)
            component.load_now, component.load_ahead = rate * row_s, forecast * row_s
            if all(o.latest is not None for o, _ in counted):
                component.load_latest = sum((o.latest or 0.0) * k for o, k in counted) * row_s
            priced[name] = (rate, forecast)
        return priced

    def _forecast_donor(
        self, components: dict[str, Component], settled: Callable[[Component], bool], exclude: str
    ) -> Optional[Donor]:
        """For a scale-ahead: an autoscaled component above its floor with nothing waiting whose load,
        now and forecast, fits in one instance fewer (a burst moving away from its pipeline). "Now" is
        the latest sample where that is lower than the smoothed level: clients that left show there a
        sample or two before Holt's level falls, and the forecast (its falling trend) must fit too."""

        def load(c: Component) -> float:
            assert c.load_now is not None and c.load_ahead is not None
            now = c.load_now if c.load_latest is None else min(c.load_now, c.load_latest)
            return max(now, c.load_ahead)

        def fits(c: Component) -> bool:
            if c.load_now is None or c.load_ahead is None:
                return False
            return load(c) / ((c.instances - 1) * c.threads) < DOWN_TO

        idle = [
            c
            for c in components.values()
            if c.name != exclude and settled(c) and c.instances > c.floor and c.pending <= 0 and fits(c)
        ]
        if not idle:
            return None
        donor = min(idle, key=lambda c: c.load_ahead or 0.0)
        return donor, f"its arrivals, now and forecast, need {load(donor):.2f} cores: {donor.instances - 1} carry them"

    def _burst_donor(
        self, components: dict[str, Component], settled: Callable[[Component], bool], exclude: str
    ) -> Optional[Donor]:
        """For a burst: a quiet donor, else one whose pipelines' arrivals, now and forecast, fit in one
        instance fewer, else one whose arrivals are falling sharply (a burst moving away from it: its
        clients left this sample or the one before, long before it has been quiet for a second)."""
        return (
            self._quiet_donor(components, settled, exclude)
            or self._forecast_donor(components, settled, exclude)
            or self._falling_donor(components, settled, exclude)
        )

    def _falling_donor(
        self, components: dict[str, Component], settled: Callable[[Component], bool], exclude: str
    ) -> Optional[Donor]:
        """For a burst: an autoscaled component above its floor with nothing waiting whose pipelines'
        arrivals in the latest sample fell FALL below their smoothed level: its clients left partway
        through the sample, which still counts them, so its load does not fit in one fewer yet but
        will in the next sample. If it was noise, the windows give the instance back (a move and its
        undoing); waiting costs the burst a quarter second at one instance."""
        falling = [
            c
            for c in components.values()
            if c.name != exclude
            and settled(c)
            and c.instances > c.floor
            and c.pending <= 0
            and c.load_now is not None
            and c.load_latest is not None
            and c.load_now > 0
            and c.load_latest <= (1 - FALL) * c.load_now
        ]
        if not falling:
            return None
        donor = min(falling, key=lambda c: (c.load_latest or 0.0) / (c.load_now or 1.0))
        fell = (donor.load_latest or 0.0) / (donor.load_now or 1.0)
        return donor, f"its arrivals in the latest sample at {fell:.0%} of their level, nothing waiting: clients left"

    def _quiet_donor(
        self, components: dict[str, Component], settled: Callable[[Component], bool], exclude: str
    ) -> Optional[Donor]:
        """For a burst: an autoscaled component above its floor with nothing waiting for a second and
        whose load of that second would fit in one instance fewer. Both: an ensemble step downstream
        of a starved step has an empty queue while it is busy."""

        def fits(c: Component) -> bool:
            if c.recent_rate is None or c.row_s is None:
                return self._spare_instance(c)
            return c.recent_rate * c.row_s / (c.instances - 1) < DOWN_TO

        idle = [
            c
            for c in components.values()
            if c.name != exclude and settled(c) and c.instances > c.floor and c.quiet >= QUIET_SAMPLES and fits(c)
        ]
        if not idle:
            return None
        donor = min(idle, key=lambda c: c.utilisation)
        return donor, f"nothing waiting for {donor.quiet} samples in a row"

    def _donor(
        self, components: dict[str, Component], settled: Callable[[Component], bool], exclude: str
    ) -> Optional[Donor]:
        idle = [c for c in components.values() if c.name != exclude and settled(c) and c.cold >= 1]
        if not idle:
            return None
        donor = min(idle, key=lambda c: c.utilisation)
        return donor, f"spare for {donor.cold} window(s)"

    def _grow_downstream(
        self,
        upstream: Component,
        before: int,
        components: dict[str, Component],
        settled: Callable[[Component], bool],
        decisions: dict[str, Decision],
    ) -> None:
        """An upstream component going from n to n+1 instances sends (n+1)/n times the load on: grow
        each downstream component now to what that load needs at HIGH_UTILISATION."""
        growth = (before + 1) / max(before, 1)
        for name in self.downstream.get(upstream.name, []):
            down = components.get(name)
            if down is None or not settled(down):
                continue
            assert down.bounds is not None
            needed = math.ceil(down.utilisation * down.instances * growth / HIGH_UTILISATION - 1e-9)
            target = min(needed, down.bounds.max)
            if target > down.instances:
                decisions[name] = Decision(
                    name,
                    "scale",
                    target,
                    f"downstream of {upstream.name}, which grows {before}->{before + 1}: "
                    f"its load of {down.utilisation * down.instances:.2f} cores will grow {growth:.2f}x",
                )
