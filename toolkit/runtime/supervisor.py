"""The adaptive runtime: one process beside each deployment that keeps its servers up and adapts them.

A few times a second the keeper (toolkit/runtime/keeper.py) checks that every server still runs and
starts a dead one again, after which the runtime gives it back its live state. Every SAMPLE_S
(250 ms) between intervals it reads the rows waiting per component from the metrics endpoint and
gives a burst an instance at once (toolkit/runtime/signals.py, the policy's `burst`). Every interval
it reads Triton's statistics, the repository index and the live Python stubs, then (unless the
deployment is static, whose models nothing changes):
- heals: a component with fewer live stubs than instances (a stub killed, OOM) is reloaded;
- scales: the policy (toolkit/runtime/policy.py) moves instances between components; a rescale is
  a load with a config override, which Triton applies without failing a request;
- unloads on-demand components idle for `idle_s` (the generated orchestrator loads them again, in
  parallel with every other cold component the request can reach, when a request needs them);
- accounts instance-, core- and GPU-seconds per component.
It talks to Triton only through toolkit.client, with the deployment's key. `compound status` reads
its status file, `compound logs` its decisions, `compound stop` ends it.

Run by `compound deploy` as `python -m toolkit.runtime.supervisor RUN_DIR/runtime-config.json`; tests
drive `Supervisor.tick()` directly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from toolkit.client import (
    http_json,
    instance_count,
)
from toolkit.core.errors import CompoundError
from toolkit.observe.stats import ModelCounters
from toolkit.repository.manifest import FILE as MANIFEST_FILE
from toolkit.repository.manifest import Manifest
from toolkit.runtime.forecast import ArrivalForecaster
from toolkit.runtime.keeper import Keeper
from toolkit.runtime.lock import runtime_may_act
from toolkit.runtime.policy import QUIET_SAMPLES, Bounds, Component, Decision, Policy, Window
from toolkit.runtime.signals import SAMPLE_S, scrape
from toolkit.runtime.streams import max_streams_of, with_streams
from toolkit.targets.fleet import ServerSet
from toolkit.targets.server import missing_stubs, stub_counts, target_class
from toolkit.targets.state import LOG_FILE, STATUS_FILE, DeploymentState, RuntimeConfig, read_state

GONE_AFTER_S = 10.0  # unsupervised (a pod's sidecar): the server not answering this long ends the runtime
WATCH_INTERVAL_S = 0.25  # how often the keeper looks at the servers


@dataclass
class Account:
    instance_s: float = 0.0
    core_s: float = 0.0
    gpu_s: float = 0.0
    requests: int = 0
    heals: int = 0


@dataclass
class Loading:
    """A rescale whose load runs in the background."""

    future: concurrent.futures.Future[Optional[str]]
    decision: Decision
    before: int  # instances before it
    decided: float  # the runtime's clock at the decision
    began: float  # time.monotonic() at the load's start
    onset: Optional[float]  # the burst's first queued request seen, if a burst
    wanted: float  # instances the gauges must show once the added ones serve
    served_at: Optional[float] = None


@dataclass
class Supervisor:
    config: RuntimeConfig
    stubs: Callable[[], Optional[dict[str, int]]] = lambda: None
    log: Callable[[str], None] = print
    components: dict[str, Component] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    gpu_models: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        addresses = [tuple(pair) for pair in self.config.servers] or [(self.config.http_url, self.config.grpc_url)]
        self.servers = ServerSet.of(addresses, self.config.api_key)  # type: ignore[arg-type]
        self._read_manifest()
        self.previous: Optional[dict[str, ModelCounters]] = None
        self.previous_at = time.monotonic()
        self.decisions: list[dict[str, Any]] = []
        self.generation = 0
        self.suspects: set[str] = set()  # components short of stubs in the last window
        self.served: list[tuple[float, dict[str, float]]] = []  # requests served per model, last samples
        self.tracing: Any = None
        self.background_loads = False  # scale-ups on a thread (the running process); tests drive tick() in line
        self.loads: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self.loading: dict[str, Loading] = {}  # scale-ups whose load has not returned
        self.serving: dict[str, float] = {}  # instances seen serving per component model, last sample
        if self.config.otlp_endpoint:
            from toolkit.observe.tracing import runtime_tracing

            self.tracing = runtime_tracing(self.config.otlp_endpoint, f"{self.config.name}-runtime")

    def _read_manifest(self) -> None:
        """The component models the runtime acts on; read again when `compound update` rewrote it."""
        path = Path(self.config.repository) / MANIFEST_FILE
        self.manifest_mtime = path.stat().st_mtime_ns if path.is_file() else 0
        manifest = Manifest.read(self.config.repository, missing_ok=True)
        self.bounds: dict[str, Bounds] = dict(manifest.autoscale)
        self.threads: dict[str, int] = dict(manifest.threads)
        self.scaled_models: list[str] = list(manifest.models)
        # what computes: components and fused models (pipelines and groups). An ensemble's or
        # orchestrator's own "compute" time is its callees' (every request's whole path), so counting it
        # would double every core.
        self.compute_models = set(self.scaled_models) | set(manifest.fused_models)
        downstream: dict[str, list[str]] = {}
        for producer, consumer in manifest.edges:
            downstream.setdefault(producer, []).append(consumer)
        # pipelines served by a Triton model of their own name whose steps are separate components: their
        # arrivals are what the runtime forecasts and scales those components ahead of
        pipelines = {
            name: [m for m in entry.models if m in self.scaled_models]
            for name, entry in manifest.pipelines.items()
            if entry.kind != "fused"
        }
        pipelines = {name: steps for name, steps in pipelines.items() if steps}
        self.policy = Policy(self.config.cores, downstream, gpus=self.config.gpus, pipelines=pipelines)
        self.forecaster = ArrivalForecaster(sorted(pipelines))
        for name in set(self.components) - set(self.scaled_models):  # replaced by an update
            del self.components[name]

    # --- one interval -------------------------------------------------------------------------

    def tick(self, now: Optional[float] = None) -> list[Decision]:
        """Measure, heal, decide, act, account; returns what it decided."""
        now = time.monotonic() if now is None else now
        path = Path(self.config.repository) / MANIFEST_FILE
        if path.is_file() and path.stat().st_mtime_ns != self.manifest_mtime:
            self._read_manifest()
        self._collect_loads(now)
        loaded = self._refresh_components(now)
        counters = self.servers.stats()
        seconds = max(now - self.previous_at, 1e-3)
        windows = {name: w for name, w in self._windows(counters, seconds).items() if name in self.compute_models}
        windows = with_streams(windows, self.components, self.config.metrics_url)  # streaming components only
        self._account(windows, seconds)
        self.previous, self.previous_at = counters, now
        with runtime_may_act(self.config.repository) as may_act:
            # static: nothing changes the models; `compound update` acting: measure only
            if not may_act or not self.config.scale:
                self.write_status(now)
                return []
            self._heal(loaded, now)
            decisions = self.policy.decide(now, self.components, windows)
            for decision in self._growing_first(decisions):
                self._apply(decision, now)
        self.write_status(now)
        return decisions

    def react(self, now: Optional[float] = None) -> list[Decision]:
        """Between windows, every SAMPLE_S: read the rows waiting per component and give a burst an
        instance at once (the policy's `burst`); nothing when the deployment is static."""
        now = time.monotonic() if now is None else now
        if not self.config.scale or not self.components:
            return []
        read = scrape(self.config.metrics_url)
        if read is None:
            return []
        pending, served, serving = read
        self._collect_loads(now, serving)
        self.served.append((now, served))
        self.served = self.served[-(QUIET_SAMPLES + 1) :]  # a second of samples
        rates = recent_rates(self.served)
        self.forecaster.observe(now, served, pending)
        outlooks = self.forecaster.outlook(SAMPLE_S)
        self.policy.observe_arrivals(self.components, outlooks)  # a burst's donor is judged on this sample
        with runtime_may_act(self.config.repository) as may_act:
            decisions = self.policy.burst(now, self.components, pending, rates) if may_act else []
            if may_act and not decisions:  # a sample with no burst: ahead of a rise (one change at a time)
                decisions = self.policy.ahead(now, self.components, outlooks)
            for decision in self._growing_first(decisions):
                self._apply(decision, now)
        if decisions:
            self.write_status(now)
        return decisions

    def _growing_first(self, decisions: list[Decision]) -> list[Decision]:
        """Grow before shrinking: each load blocks until done, and an instance removed takes about as
        long as one added (measured on Triton 2.51: 1.0 s to remove, 0.8 s to add one), so a donor
        shrinking first would hold the bottleneck's new instance back by a second. For a moment the
        cores hold one instance more than the budget; a GPU one is never grown onto a GPU not freed yet."""

        def grows(d: Decision) -> bool:
            c = self.components.get(d.model)
            return c is not None and d.action == "scale" and d.instances > c.instances and not c.gpu

        return sorted(decisions, key=lambda d: not grows(d))

    def _refresh_components(self, now: float) -> set[str]:
        """Track every component model; pick up ones loaded since (an orchestrator loading an
        on-demand component) with the instance count of their live config."""
        # the index alone (one request a server), not model_states(), which asks each model for readiness too
        loaded = self.servers.ready_models()
        for name in self.scaled_models:
            component = self.components.get(name)
            if name in loaded and (component is None or not component.loaded):
                config = self.servers.config(name)
                instances, gpu = instance_count(config)
                if gpu:
                    self.gpu_models.add(name)
                if component is None:
                    component = Component(
                        name, instances, self.threads.get(name, 1), self.bounds.get(name), last_request=now, gpu=gpu
                    )
                    self.components[name] = component
                else:
                    component.gpu = gpu
                    component.instances, component.loaded, component.last_request = instances, True, now
                    self._record(now, name, "loaded", instances, "loaded on demand by a request that needed it")
                component.max_streams = max_streams_of(config)  # streaming: scaled on its streams in flight
            elif name not in loaded and component is not None and component.loaded:
                component.loaded = False
            elif component is None:
                self.components[name] = Component(
                    name, 0, self.threads.get(name, 1), self.bounds.get(name), loaded=False
                )
        return loaded

    def _windows(self, counters: dict[str, ModelCounters], seconds: float) -> dict[str, Window]:
        windows = {}
        for name, now in counters.items():
            before = (self.previous or {}).get(name)
            delta = now - before if before is not None else None
            if delta is None or delta.success.count < 0 or delta.busy_ns < 0:
                delta = now if self.previous is not None else None  # a reload restarted its counters
            if delta is None:
                continue
            windows[name] = Window(
                seconds=seconds,
                requests=delta.success.count + delta.fail.count,
                busy_s=delta.busy_ns / 1e9,
                queue_s=delta.queue.ns / 1e9,
            )
        return windows

    def _account(self, windows: dict[str, Window], seconds: float) -> None:
        for name, component in self.components.items():
            account = self.accounts.setdefault(name, Account())
            if component.loaded:
                account.instance_s += component.instances * seconds
                account.core_s += component.instances * component.threads * seconds
                if name in self.gpu_models:
                    account.gpu_s += component.instances * seconds
            if name in windows:
                account.requests += windows[name].requests

    def _heal(self, loaded: set[str], now: float) -> None:
        live = self.stubs()
        if live is None:
            return
        replicas = len(self.servers.servers)  # stubs are counted over every server
        expected = {
            name: c.instances * replicas
            for name, c in self.components.items()
            if c.loaded and name in loaded and name not in self.gpu_models and not c.loading
        }
        seen = missing_stubs(expected, live)
        # dead in two windows in a row: a stub caught starting (a reload, a rescale) is not dead
        dead = {name: why for name, why in seen.items() if name in self.suspects}
        self.suspects = set(seen) - set(dead)
        if not dead:
            return
        with self._span("runtime heal", ",".join(sorted(dead)), reason="; ".join(dead.values())):
            errors = self.servers.load({name: self._fresh_config(name) for name in dead})
        for name, why in dead.items():
            self.accounts.setdefault(name, Account()).heals += 1
            outcome = "reloaded" if errors[name] is None else f"reload failed: {errors[name]}"
            self._record(now, name, "heal", self.components[name].instances, f"{why}; {outcome}")
            self.components[name].last_change = now

    def _fresh_config(self, name: str) -> dict[str, Any]:
        """The live config with a new generation number: Triton may treat a reload of an unchanged
        model as a no-op that leaves its dead stub dead; a changed config always restarts it."""
        config = self.servers.config(name)
        self.generation += 1
        config.setdefault("parameters", {})["compound.generation"] = {"string_value": str(self.generation)}
        return config

    def _span(self, name: str, model: str, **attributes: Any) -> Any:
        """A span of one runtime action, in a trace of its own (no request caused it)."""
        if self.tracing is None:
            return contextlib.nullcontext()
        return self.tracing.root_span(name, model=model, **attributes)

    def _apply(self, decision: Decision, now: float) -> None:
        with self._span(
            f"runtime {decision.action}", decision.model, instances=decision.instances, reason=decision.reason
        ):
            self._apply_decision(decision, now)

    def _apply_decision(self, decision: Decision, now: float) -> None:
        component = self.components[decision.model]
        if decision.action == "unload":
            error = self.servers.unload(decision.model)
            if error is None:
                component.loaded = False
        else:
            config = rescaled(self.servers.config(decision.model), decision.instances)
            grows = decision.instances > component.instances
            if self.background_loads:
                self._load_in_background(decision, component, config, now, grows)
                return
            error = self.servers.load({decision.model: config})[decision.model]
            if error is None:
                component.instances = decision.instances
        component.last_change = now
        component.hot = component.cold = 0
        outcome = decision.reason if error is None else f"{decision.reason}; FAILED: {error}"
        reaction = None
        if decision.action == "scale" and error is None and grows and component.burst_since is not None:
            # the load returns once the new instances serve: from the first queued request seen to here
            served = time.monotonic()
            reaction = max(0.0, served - component.burst_since)
            outcome += f"; serving {reaction:.2f} s after the first queued request (load {served - now:.2f} s)"
            component.burst_since = None
        component.last_decision = f"{decision.action} -> {decision.instances}: {outcome}"
        self._record(now, decision.model, decision.action, decision.instances, outcome, reaction)

    def _load_in_background(
        self, decision: Decision, component: Component, config: dict[str, Any], now: float, grows: bool
    ) -> None:
        """A rescale's load on a thread of its own: measured on Triton 2.51 under a burst, the new
        instance serves 0.25-0.5 s after the load begins, but the load returns 0.3-4.1 s later still
        (Triton swaps the model's instance list only once its queue lets it), and a donor's removal
        takes about a second; waiting for either held the runtime's loop (and its samples) that long.
        An added instance counts from now (reserved capacity, starting), a removed one until its load
        returns; a scale-up's reaction is taken when the instance is seen serving (`_collect_loads`)."""
        if self.loads is None:
            self.loads = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="rescale")
        began = time.monotonic()
        future = self.loads.submit(lambda: self.servers.load({decision.model: config})[decision.model])
        # serving once the gauges show the added instances over what they showed before (a finalised
        # process's series may linger)
        replicas = max(len(self.servers.servers), 1)
        base = self.serving.get(decision.model)
        added = (decision.instances - component.instances) * replicas
        wanted = base + added if base is not None else float(decision.instances * replicas)
        self.loading[decision.model] = Loading(
            future, decision, component.instances, now, began, component.burst_since, wanted
        )
        if grows:
            component.burst_since = None  # this burst's onset goes with its load; a later one starts anew
            component.instances = decision.instances
        else:
            self.loading[decision.model].onset = None  # a removal has no reaction
        component.loading, component.last_change = True, now
        component.hot = component.cold = 0

    def _collect_loads(self, now: float, serving: Optional[dict[str, float]] = None) -> None:
        """Scale-ups under way: the reaction when the added instances are seen serving (their processes'
        `compound_instances`), the outcome when the load has returned, recorded at the decision's time."""
        if serving is not None:
            self.serving = serving
        for name, load in list(self.loading.items()):
            component = self.components[name]
            seen = (serving or {}).get(name)
            if load.served_at is None and seen is not None and seen >= load.wanted:
                load.served_at = time.monotonic()
            if not load.future.done():
                continue
            del self.loading[name]
            component.loading = False
            error = load.future.exception() or load.future.result()
            took = time.monotonic() - load.began
            outcome, reaction_s = load.decision.reason, None
            if error is not None:
                component.instances = load.before
                outcome += f"; FAILED: {error}"
            elif load.decision.instances < load.before:
                component.instances = load.decision.instances
            elif load.onset is not None:
                served_at = load.served_at if load.served_at is not None else time.monotonic()
                reaction_s = max(0.0, served_at - load.onset)
                seen_how = "seen serving" if load.served_at is not None else "not seen serving before its load returned"
                outcome += (
                    f"; serving {reaction_s:.2f} s after the first queued request ({seen_how} "
                    f"{served_at - load.began:.2f} s after the load began; the load returned after {took:.2f} s)"
                )
            component.last_decision = f"{load.decision.action} -> {load.decision.instances}: {outcome}"
            self._record(load.decided, name, load.decision.action, load.decision.instances, outcome, reaction_s)
            self.write_status(now)

    def _record(
        self, now: float, model: str, action: str, instances: int, reason: str, reaction_s: Optional[float] = None
    ) -> None:
        entry: dict[str, Any] = {
            "t": round(now - self.started, 2),
            "model": model,
            "action": action,
            "instances": instances,
            "reason": reason,
        }
        if reaction_s is not None:
            entry["reaction_s"] = round(reaction_s, 3)
        self.decisions.append(entry)
        if model in self.components and action in ("heal", "loaded"):
            self.components[model].last_decision = f"{action}: {reason}"
        self.log(f"{time.strftime('%H:%M:%S')} {model}: {action} -> {instances} instance(s): {reason}")

    # --- what `compound status` shows ------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        models: dict[str, dict[str, Any]] = {}
        for name, c in sorted(self.components.items()):
            account = self.accounts.get(name, Account())
            models[name] = {
                "instances": c.instances if c.loaded else 0,
                "state": "loaded"
                if c.loaded
                else "unloaded (on demand)"
                if c.bounds and c.bounds.min == 0
                else "unloaded",
                "autoscale": asdict(c.bounds) if c.bounds else None,
                "utilisation": round(c.utilisation, 3),
                "last_decision": c.last_decision,
                **{
                    key: round(value, 2) if isinstance(value, float) else value
                    for key, value in asdict(account).items()
                },
            }
        total = {
            key: round(sum(m[key] for m in models.values()), 2) for key in ("instance_s", "core_s", "gpu_s", "requests")
        }
        return {
            "deployment": self.config.name,
            "pid": os.getpid(),
            "uptime_s": round(now - self.started, 1),
            "cores": self.config.cores,
            "models": models,
            "total": total,
            "prices": self.config.prices,
            "scaling": self.config.scale,
            "decisions": self.decisions[-50:],
            # each pipeline's arrivals as the forecast sees them: requests/s now and HORIZON_S ahead
            "arrivals": {
                name: {"rate": round(o.rate, 1), "forecast": round(o.forecast, 1), "horizon_s": o.horizon_s}
                for name, o in sorted(self.forecaster.outlook(SAMPLE_S).items())
            },
        }

    def write_status(self, now: float) -> None:
        path = Path(self.config.run_dir) / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(now), indent=1))
        tmp.replace(path)

    # --- the process -----------------------------------------------------------------------------

    def restore(self, now: float, server: Optional[int] = None) -> None:
        """After a server restart: the live state it had before its crash (on that server alone, or
        on every server). The version in service and a running canary come back with the
        repository's files; the instance counts the runtime chose and the on-demand components that
        were loaded come back here."""
        self.previous = None  # a new server counts from zero
        servers = self.servers if server is None else self.servers.only(server)
        loaded = servers.ready_models()
        missing: dict[str, Optional[dict[str, Any]]] = {
            name: None for name, c in self.components.items() if c.loaded and name not in loaded
        }
        if missing:
            for name, error in servers.load(missing).items():
                self._record(now, name, "restore", 0, "loaded again" if error is None else f"load FAILED: {error}")
        rescaled: dict[str, Optional[dict[str, Any]]] = {}
        for name, component in self.components.items():
            if not component.loaded:
                continue
            config = servers.config(name)
            if instance_count(config)[0] != component.instances:
                for group in config.get("instance_group") or []:
                    group["count"] = component.instances
                rescaled[name] = config
        if rescaled:
            for name, error in servers.load(rescaled).items():
                outcome = "instance count restored" if error is None else f"FAILED: {error}"
                self._record(now, name, "restore", self.components[name].instances, outcome)

    def prepare(self, now: float) -> None:
        """Once, at the start: reload each loaded autoscaled component whose live config has a
        `model_warmup` without it (see `rescaled`), so that its first rescale, under a burst, adds an
        instance instead of reloading the whole component. Done while the deployment is new and idle."""
        with runtime_may_act(self.config.repository) as may_act:
            if not may_act:
                return
            configs: dict[str, Optional[dict[str, Any]]] = {}
            for name, component in self.components.items():
                if component.autoscaled and component.loaded and not component.gpu:
                    config = self.servers.config(name)
                    if config.get("model_warmup"):
                        configs[name] = rescaled(config, component.instances)
            if not configs:
                return
            began = time.monotonic()
            errors = self.servers.load(configs)
        took = time.monotonic() - began
        for name, error in sorted(errors.items()):
            outcome = f"reloaded without model_warmup in {took:.2f} s" if error is None else f"FAILED: {error}"
            self._record(
                now,
                name,
                "prepare",
                self.components[name].instances,
                f"{outcome}: later rescales add or remove instances alone",
            )
            self.components[name].last_change = now

    def run(self, keeper: Optional[Keeper] = None) -> None:
        """Until a signal says stop: the keeper looks at the servers every WATCH_INTERVAL_S, the
        runtime ticks every interval. Without a keeper (a pod, whose server Kubernetes restarts) the
        runtime ends once the server has been gone for GONE_AFTER_S."""
        stopping = []

        def on_signal(*_: object) -> None:
            stopping.append(True)
            if keeper is not None and keeper.restarting:
                raise SystemExit(0)  # abort a start under way: the server being started is stopped with it

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        last_seen = next_tick = next_sample = time.monotonic()
        prepared = not self.config.scale
        self.background_loads = True
        cores, interval = self.config.cores, self.config.interval_s
        mode = "" if self.config.scale else ", static (instance counts fixed)"
        self.log(f"runtime for '{self.config.name}' started: {cores:g} cores, interval {interval:g} s{mode}")
        while not stopping:
            began = time.monotonic()
            for index in keeper.check(began) if keeper is not None else []:
                try:
                    self.restore(time.monotonic(), index)
                except (CompoundError, OSError) as exc:
                    self.log(f"restoring the live state of server {index} after its restart failed: {exc}")
                next_tick = time.monotonic()
            if began >= next_tick:
                next_tick = began + interval
                try:
                    self.tick(began)
                    last_seen = began
                    if not prepared:
                        prepared = True
                        self.prepare(time.monotonic())
                except (CompoundError, OSError) as exc:
                    if keeper is None and began - last_seen > GONE_AFTER_S:
                        self.log(f"server gone for {GONE_AFTER_S:.0f} s ({exc}); runtime ends")
                        break
            elif began >= next_sample:
                try:
                    self.react(began)
                except (CompoundError, OSError) as exc:
                    self.log(f"reacting to a burst failed: {exc}")
            if began >= next_sample:
                next_sample = began + SAMPLE_S
            pause = min(next_tick, next_sample, time.monotonic() + WATCH_INTERVAL_S) - time.monotonic()
            time.sleep(max(0.0, pause))
        if self.loads is not None:
            self.loads.shutdown(wait=True)
            self._collect_loads(time.monotonic())
        self.write_status(time.monotonic())
        self.log("runtime stopped")


def rescaled(config: dict[str, Any], instances: int) -> dict[str, Any]:
    """A live config with another instance count and no `model_warmup`. Why without: measured on
    Triton 2.51 under a burst, a new instance serves queued requests as soon as its stub is initialised,
    and its warmup requests wait behind them, so the load, which returns only once the warmup has run,
    returned 2.5-14.6 s after the instance served and held the runtime's loop that long. A rescale keeps
    the running instances (Triton initialises only the added ones) only when nothing else in the
    config changed, so the warmup stays off for every rescale: the component's first one reloads it
    whole, every later one adds or removes instances alone."""
    config.pop("model_warmup", None)
    for group in config.get("instance_group") or []:
        group["count"] = instances
    return config


def recent_rates(samples: list[tuple[float, dict[str, float]]]) -> Optional[dict[str, float]]:
    """Requests/s per model between the first and the last sample; a model whose counter went back
    (a reload restarted it) or that is new has no rate."""
    (first, before), (last, after) = samples[0], samples[-1]
    if last - first <= 0:
        return None
    return {m: (n - before[m]) / (last - first) for m, n in after.items() if m in before and n >= before[m]}


def all_stubs(state: DeploymentState) -> Optional[dict[str, int]]:
    """Live Python stubs per model, summed over every server of a recorded deployment (None where a
    server's cannot be seen)."""
    owner = target_class(state.target)
    total: dict[str, int] = {}
    for index in range(len(state.server_records())):
        live = owner.recorded_stubs(state.of_server(index))
        if live is None:
            return None
        for model, count in live.items():
            total[model] = total.get(model, 0) + count
    return total


def server_live(http_url: str) -> bool:
    status, _ = http_json(f"http://{http_url}/v2/health/live", timeout=2.0)
    return status == 200


def main(argv: list[str]) -> None:
    """`python -m toolkit.runtime.supervisor CONFIG.json`, or `--inline JSON` (a pod's sidecar, whose
    key comes from the environment: a Secret)."""
    from toolkit.targets.local import all_command_lines
    from toolkit.targets.settings import REQUEST_FILE, RUNTIME_KEY_ENV

    if argv[:1] == ["--inline"] and len(argv) == 2:
        config = RuntimeConfig(**json.loads(argv[1]))
    elif len(argv) == 1:
        config = RuntimeConfig.load(argv[0])
    else:
        raise SystemExit("usage: python -m toolkit.runtime.supervisor CONFIG.json | --inline JSON")
    config.api_key = config.api_key or os.environ.get(RUNTIME_KEY_ENV, "")
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    log_file = open(Path(config.run_dir) / LOG_FILE, "a", buffering=1)  # noqa: SIM115 - the process's own log

    def log(line: str) -> None:
        log_file.write(line + "\n")
        if config.stubs == "proc":
            print(line, flush=True)  # a sidecar's log is its output: `kubectl logs ... -c runtime`

    state = None
    if config.stubs == "state" and config.state_file and Path(config.state_file).is_file():
        state = read_state(Path(config.state_file))

    def stubs() -> Optional[dict[str, int]]:
        if config.stubs == "proc":
            return stub_counts(all_command_lines())
        return all_stubs(state) if state is not None else None

    keeper = None
    supervisable = (
        state is not None and state.target != "kubernetes" and (Path(config.run_dir) / REQUEST_FILE).is_file()
    )
    if config.supervise and config.stubs == "state" and supervisable:
        keeper = Keeper(Path(config.state_file), Path(config.run_dir), log=log)

        def stubs() -> Optional[dict[str, int]]:  # the keeper's state: it has the restarted servers' pids
            return all_stubs(keeper.state) if keeper is not None else None

    Supervisor(config, stubs=stubs, log=log).run(keeper)


if __name__ == "__main__":
    main(sys.argv[1:])
