"""A deployment: the thing `compound deploy` starts and `status`, `logs`, `restart` and `stop` act on.

One `Deployment` owns what runs for it: its servers (one `TritonServer` per replica, of one target),
the L7 proxy in front of them when there are replicas, and the runtime beside them (the adaptive
runtime, which also restarts a crashed server), together with their recorded state. Commands talk to
it alone; they never walk between targets, state files and the runtime themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from toolkit.client import api_key_headers, instance_count, model_config, model_states
from toolkit.core.errors import CompoundError
from toolkit.core.system import free_ports, read_tail
from toolkit.observe.canary import canary_report
from toolkit.runtime.keeper import planned_restart_path
from toolkit.runtime.pricing import Prices, cost_summary
from toolkit.runtime.process import RuntimeProcess, read_restarts
from toolkit.targets.proxy import (
    EnvoyProxy,
    Replica,
    check_listen_ports,
    recorded_counters,
    recorded_proxy_running,
    stop_recorded_proxy,
)
from toolkit.targets.server import TritonServer, grpc_ready, http_ready, missing_stubs, new_api_key, target_class
from toolkit.targets.settings import DeployRequest, Endpoints, save_request
from toolkit.targets.state import (
    LOG_FILE,
    STATUS_FILE,
    DeploymentState,
    RuntimeConfig,
    forget_state,
    load_state,
    recorded_names,
    save_state,
    state_dir,
    state_path,
)

DEAD_STUB_LOOKS = 3
ROTATION_SETTLE_S = 1.0  # one health-check interval of the proxy


def run_dir(name: str) -> Path:
    """Where a recorded deployment keeps its logs and working files."""
    return state_dir().parent / "run" / name


@dataclass
class ModelStatus:
    name: str
    state: str  # READY, UNHEALTHY, UNAVAILABLE, LOADING ...
    instances: Optional[int]
    reason: str = ""


@dataclass
class DeploymentStatus:
    """What `compound status` shows, and `status --json` prints as one object for scripts."""

    name: str
    condition: str  # ready | degraded | running, not ready | not running
    target: str
    repository: str
    endpoints: dict[str, str]
    log: str
    servers: list[dict[str, Any]] = field(default_factory=list)
    models: list[ModelStatus] = field(default_factory=list)
    restarts: dict[str, Any] = field(default_factory=dict)
    runtime: Optional[dict[str, Any]] = None
    proxy: Optional[dict[str, Any]] = None
    canary: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 ready, 1 not running, 3 running but some model does not serve."""
        return {"not running": 1, "degraded": 3}.get(self.condition, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "condition": self.condition,
            "target": self.target,
            "repository": self.repository,
            "endpoints": self.endpoints,
            "log": self.log,
            "servers": self.servers,
            "models": [vars(m) for m in self.models],
            "restarts": self.restarts,
            "runtime": self.runtime,
            "proxy": self.proxy,
            "canary": self.canary,
        }


class Deployment:
    """A recorded deployment, started by `Deployment.start` or found again by `Deployment.find`."""

    def __init__(self, state: DeploymentState) -> None:
        self.state = state

    # --- finding one ----------------------------------------------------------------------------

    @classmethod
    def find(cls, name: Optional[str] = None) -> Deployment:
        """The named deployment, or the only one recorded (a clear error otherwise)."""
        return cls(load_state(name))

    @classmethod
    def recorded(cls) -> list[Deployment]:
        """Every deployment recorded here (unreadable records are skipped)."""
        found = []
        for name in recorded_names():
            try:
                found.append(cls(load_state(name)))
            except CompoundError:
                continue
        return found

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def endpoints(self) -> Endpoints:
        return self.state.endpoints

    @property
    def owner(self) -> type[TritonServer]:
        return target_class(self.state.target)

    # --- starting -------------------------------------------------------------------------------

    @classmethod
    def start(cls, request: DeployRequest) -> Deployment:
        """Start the servers detached from this process, wait until every one is ready and warm,
        start the proxy in front of them when replicas were asked for, then the runtime beside them,
        and record it all. Anything started is stopped on failure."""
        ensure_not_running(request.name)
        workdir = run_dir(request.name)
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        if request.replicas is None:
            server = target_class(request.target).from_request(request, workdir)
            server.start()
            state = server.deployment_state(request.name, workdir)
            state.servers = state.server_records()
        else:
            state = start_replicas(request, workdir)
        deployment = cls(state)
        save_state(deployment.state)
        try:
            save_request(request, workdir)
            if request.target != "kubernetes":  # in Kubernetes it runs in the pod
                deployment.start_runtime(request)
        except BaseException:
            deployment.stop()
            raise
        return deployment

    def start_runtime(self, request: DeployRequest) -> None:
        """The runtime beside the servers, detached like them; its decisions and restarts go to runtime.log."""
        config = runtime_config(self.state, request, state_path(self.name))
        self.state.runtime_pid = RuntimeProcess.launch(config)
        save_state(self.state)

    # --- watching -------------------------------------------------------------------------------

    def servers_running(self) -> list[bool]:
        records = self.state.server_records()
        return [self.owner.recorded_running(self.state.of_server(i)) for i in range(len(records))]

    def running(self) -> bool:
        """Any of its servers still runs (or the runtime, about to bring one back)."""
        return any(self.servers_running()) or recorded_proxy_running(self.state.proxy) or self.runtime_pid() is not None

    def runtime_pid(self) -> Optional[int]:
        return RuntimeProcess.alive(self.state.runtime_pid)

    def runtime_status(self) -> Optional[dict[str, Any]]:
        """What the runtime last wrote about each model, or None when it does not run."""
        path = self.state.workdir / STATUS_FILE
        if self.runtime_pid() is None or not path.is_file():
            return None
        try:
            status: dict[str, Any] = json.loads(path.read_text())
        except ValueError:
            return None
        return status

    def restarts(self) -> list[dict[str, Any]]:
        """Every server restart the runtime made, oldest first (why, when, how long it was down)."""
        return read_restarts(self.state.workdir)

    def logs(self, lines: int) -> str:
        """The server's log tail, the last crash (if any), then the runtime's decisions."""
        parts = []
        records = self.state.server_records()
        for index in range(len(records)):
            header = f"--- server {index} ({records[index].log_path}) ---\n" if len(records) > 1 else ""
            parts.append(header + self.owner.recorded_log_tail(self.state.of_server(index), lines))
        restarts = self.restarts()
        if restarts:
            last = restarts[-1]
            parts.append(f"--- last crash ({len(restarts)} restart(s)): {last['reason']} ---")
            crash_log = Path(last.get("crash_log", ""))
            if crash_log.is_file():
                parts.append(read_tail(crash_log, lines))
        runtime_log = self.state.workdir / LOG_FILE
        if runtime_log.is_file():
            parts.append(f"--- adaptive runtime: {runtime_log} ---")
            parts.append(read_tail(runtime_log, lines))
        return "\n".join(parts)

    def dead_stubs(self, loaded: list[str]) -> dict[str, str]:
        """Loaded Python models with fewer live backend stubs than their live config's CPU instances:
        model -> why. Seen in three looks half a second apart, so a stub caught starting (or a process
        list read while a container's processes change) is not called dead."""
        expected: dict[str, int] = {}
        for name in loaded:
            config = model_config(self.endpoints.http_url, name)
            instances, gpu = instance_count(config)
            if config.get("backend") == "python" and not gpu:
                expected[name] = instances
        dead: Optional[dict[str, str]] = None
        for attempt in range(DEAD_STUB_LOOKS):
            live = self.owner.recorded_stubs(self.state)
            if live is None:
                return {}
            seen = missing_stubs(expected, live)
            dead = seen if dead is None else {m: why for m, why in seen.items() if m in dead}
            if not dead:
                return {}
            if attempt < DEAD_STUB_LOOKS - 1:
                time.sleep(0.5)
        return dead or {}

    def status(self) -> DeploymentStatus:
        state = self.state
        up = self.servers_running()
        running = any(up)
        ready = running and http_ready(state.endpoints)
        models: list[ModelStatus] = []
        runtime = self.runtime_status() if running else None
        if running:
            try:
                models = self._models(runtime)
            except (CompoundError, OSError):  # between a crash and the restart: the server does not answer
                models, running = [], False
        unhealthy = any(m.state != "READY" for m in models)
        if ready and not unhealthy:
            condition = "ready"
        elif running and unhealthy:
            condition = "degraded"
        elif running or self.runtime_pid() is not None:
            condition = "running, not ready"
        else:
            condition = "not running"
        canary: list[str] = []
        if running and state.target != "kubernetes":
            metrics = [f"http://{state.host}:{s.metrics_port}/metrics" for s in state.server_records()]
            canary = canary_report(Path(state.repository), state.endpoints.http_url, metrics) or []
        restarts = self.restarts()
        return DeploymentStatus(
            name=state.name,
            condition=condition,
            target=state.target,
            repository=state.repository,
            endpoints={
                "http": state.endpoints.http_url,
                "grpc": state.endpoints.grpc_url,
                "metrics": state.endpoints.metrics_url,
            },
            log=state.log_path,
            servers=[
                {
                    "http": f"{state.host}:{record.http_port}",
                    "grpc": f"{state.host}:{record.grpc_port}",
                    "pid": record.pid,
                    "container": record.container,
                    "running": alive,
                }
                for record, alive in zip(state.server_records(), up)
            ],
            models=models,
            restarts={"count": len(restarts), "last": restarts[-1] if restarts else None},
            runtime=runtime_summary(runtime) if runtime is not None else None,
            proxy=proxy_summary(self.state) if state.proxy is not None else None,
            canary=canary,
        )

    # --- restarting -----------------------------------------------------------------------------

    def restart(self, log: Callable[[str], None] = print, timeout_s: float = 300.0) -> None:
        """A rolling restart: one server at a time is stopped (Triton drains what it serves; the proxy
        retries on another replica what it could not take) and started again by the runtime's keeper;
        the next one goes only once this one is warm and back in the proxy's rotation. With a single
        server and no proxy, clients see it down while it restarts."""
        if self.runtime_pid() is None:
            raise CompoundError(
                f"the runtime of '{self.name}' does not run, so nothing would start its servers again",
                hint="see `compound logs`; `compound stop` and `compound deploy` it again",
            )
        if self.state.proxy is None:
            log("warning: one server and no proxy: it does not serve while it restarts (deploy with --replicas N)")
        for index in range(len(self.state.server_records())):
            view = self.state.of_server(index)
            old = self.state.server_records()[index]
            began = time.monotonic()
            planned_restart_path(self.state.workdir, index).write_text("")
            self.owner.halt_recorded(view)
            deadline = began + timeout_s
            while time.monotonic() < deadline:
                self.state = load_state(self.name)
                new = self.state.server_records()[index]
                fresh = (new.pid, new.container) != (old.pid, old.container) or self.owner.target == "docker"
                if fresh and self.owner.recorded_running(self.state.of_server(index)) and self._in_rotation(index):
                    break
                time.sleep(0.2)
            else:
                raise CompoundError(
                    f"replica {index} of '{self.name}' did not serve again within {timeout_s:.0f} s",
                    hint="see `compound logs`",
                )
            time.sleep(ROTATION_SETTLE_S)  # the proxy's connections to it are up before the next replica goes
            log(f"replica {index} restarted: serving again after {time.monotonic() - began:.1f} s")

    def _in_rotation(self, index: int) -> bool:
        """The server answers ready, and the proxy (if any) counts it healthy on both protocols."""
        view = self.state.of_server(index)
        if not http_ready(view.endpoints) or not grpc_ready(view.endpoints):
            return False
        if self.state.proxy is None:
            return True
        counters = recorded_counters(self.state.proxy)
        if counters is None:
            return False
        ports = {"http": view.http_port, "grpc": view.grpc_port}
        return all(counters.host(protocol, f"{self.state.host}:{port}").healthy for protocol, port in ports.items())

    def _models(self, runtime: Optional[dict[str, Any]]) -> list[ModelStatus]:
        """Every model as the server serves it, with its instance count (the runtime's, else its config's)."""
        state = self.state
        seen = model_states(state.endpoints.http_url, api_key_headers(state.api_key))
        dead = self.dead_stubs([m.name for m in seen if m.state == "READY"])
        counts = {name: info["instances"] for name, info in (runtime or {}).get("models", {}).items()}
        models: list[ModelStatus] = []
        for model in seen:
            if model.name in dead and model.state == "READY":
                shown, reason = "UNHEALTHY", f"{dead[model.name]}: requests to it fail until it is loaded again"
            elif model.healthy:
                shown, reason = "READY", ""
            elif model.state == "READY":
                shown, reason = "UNHEALTHY", "loaded, but not ready to serve; see `compound logs`"
            else:
                shown, reason = model.state, model.reason
            instances = counts.get(model.name)
            if instances is None and model.state == "READY":
                instances = instance_count(model_config(state.endpoints.http_url, model.name))[0]
            models.append(ModelStatus(model.name, shown, instances, reason))
        return models

    # --- stopping -------------------------------------------------------------------------------

    def stop(self) -> bool:
        """Stop the runtime first (so it brings nothing back), then every server, and forget the
        deployment; False if nothing was running."""
        RuntimeProcess.stop(self.state.runtime_pid)
        if state_path(self.name).is_file():  # the runtime may have restarted a server meanwhile
            self.state = load_state(self.name)
        records = self.state.server_records()
        stopped = [self.owner.stop_recorded(self.state.of_server(i)) for i in range(len(records))]
        stopped.append(stop_recorded_proxy(self.state.proxy.pid) if self.state.proxy else False)
        forget_state(self.name)
        shutil.rmtree(self.state.workdir / "backends", ignore_errors=True)
        return any(stopped)


def start_replicas(request: DeployRequest, workdir: Path) -> DeploymentState:
    """N servers on ports of their own (replica 0 keeps the deployment's metrics port), one key for
    all, started together and each waited for until warm; then the proxy on the public HTTP and gRPC
    ports. Returns the state recording them all; stops everything it started if any part fails."""
    count = request.replicas or 1
    if request.target == "kubernetes":
        raise CompoundError("--replicas with --target kubernetes is the pod count", hint="see docs/deploy.md")
    owner = target_class(request.target)
    key = request.api_key or new_api_key()
    check_listen_ports(request.host, request.http_port, request.grpc_port)  # the proxy's, before any server starts
    ports = free_ports(3 * count, request.host)
    servers: list[TritonServer] = []
    for index in range(count):
        http, grpc, metrics = ports[3 * index : 3 * index + 3]
        replica = replace(
            request,
            http_port=http,
            grpc_port=grpc,
            metrics_port=request.metrics_port if index == 0 else metrics,
            api_key=key,
        )
        servers.append(owner.from_request(replica, workdir, replica=index))
    proxy: Optional[EnvoyProxy] = None
    try:
        for server in servers:
            server.preflight()
            server.launch()
        for server in servers:
            server.wait_ready()
        proxy = EnvoyProxy(
            [Replica(request.host, s.endpoints.http_port, s.endpoints.grpc_port) for s in servers],
            http_port=request.http_port,
            grpc_port=request.grpc_port,
            listen_host=request.host,
            deployment=request.name,
            workdir=workdir / "proxy",
            detach=True,
        ).start()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    views = [server.deployment_state(request.name, workdir) for server in servers]
    state = views[0]
    state.servers = [view.server_records()[0] for view in views]
    state.http_port, state.grpc_port = request.http_port, request.grpc_port
    state.proxy = proxy.record()
    return state


def ensure_not_running(name: str) -> None:
    try:
        previous = Deployment.find(name)
    except CompoundError:
        return
    if previous.running():
        raise CompoundError(
            f"deployment '{name}' is already running (target {previous.state.target}, {previous.endpoints.describe()})",
            hint="`compound stop` it first, or pass --name",
        )


def runtime_config(state: DeploymentState, request: DeployRequest, state_file: Path) -> RuntimeConfig:
    """What the runtime of a deployment needs: its servers, key, run folder, budget, and its state file
    (to find the servers' stubs through their target, and to record a restarted server)."""
    endpoints = state.endpoints
    return RuntimeConfig(
        name=state.name,
        repository=state.repository,
        http_url=endpoints.http_url,
        grpc_url=endpoints.grpc_url,
        metrics_url=endpoints.metrics_url,
        api_key=state.api_key,
        run_dir=str(state.workdir),
        cores=float(request.cores or len(os.sched_getaffinity(0))),
        gpus=request.gpu_budget or 0,
        state_file=str(state_file),
        otlp_endpoint=request.otlp_endpoint or "",
        scale=request.runtime,
        servers=[[f"{state.host}:{s.http_port}", f"{state.host}:{s.grpc_port}"] for s in state.server_records()],
        prices=Prices(request.price_per_core_hour, request.price_per_gpu_hour).as_dict(),
    )


def proxy_summary(state: DeploymentState) -> dict[str, Any]:
    """The proxy's own counters for `compound status`: per protocol, and per replica."""
    record = state.proxy
    assert record is not None
    counters = recorded_counters(record)
    summary: dict[str, Any] = {
        "pid": record.pid,
        "admin": f"http://127.0.0.1:{record.admin_port}",
        "running": recorded_proxy_running(record),
        "log": record.log_path,
    }
    if counters is not None:
        summary["protocols"] = {name: vars(cluster) for name, cluster in sorted(counters.clusters.items())}
        summary["replicas"] = [vars(host) for host in counters.hosts]
        summary["client_requests"] = counters.client_requests
        summary["client_5xx"] = counters.client_5xx
    return summary


def runtime_summary(runtime: dict[str, Any]) -> dict[str, Any]:
    """The runtime's own status, as `status --json` names it: instance-seconds in total and per component."""
    total = runtime.get("total", {})
    return {
        "pid": runtime.get("pid"),
        "uptime_s": runtime.get("uptime_s"),
        "cores": runtime.get("cores"),
        "scaling": runtime.get("scaling", True),
        "instance_seconds": float(total.get("instance_s", 0.0)),
        "core_seconds": float(total.get("core_s", 0.0)),
        "gpu_seconds": float(total.get("gpu_s", 0.0)),
        "requests": int(total.get("requests", 0)),
        "cost": cost_summary(total, Prices.of(runtime.get("prices"))),
        "components": {
            name: {
                "instances": info["instances"],
                "state": info["state"],
                "autoscale": info["autoscale"],
                "utilisation": info["utilisation"],
                "instance_seconds": float(info["instance_s"]),
                "core_seconds": float(info["core_s"]),
                "last_decision": info["last_decision"],
            }
            for name, info in runtime.get("models", {}).items()
        },
    }
