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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from toolkit.client import api_key_headers, instance_count, model_config, model_states
from toolkit.core.errors import CompoundError
from toolkit.runtime.process import RuntimeProcess, read_restarts
from toolkit.targets.server import TritonServer, http_ready, missing_stubs, read_tail, target_class
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
        start the runtime beside them, record it all. Anything started is stopped on failure."""
        ensure_not_running(request.name)
        workdir = run_dir(request.name)
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        server = target_class(request.target).from_request(request, workdir)
        server.start()
        deployment = cls(server.deployment_state(request.name, workdir))
        deployment.state.servers = deployment.state.server_records()
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
        return any(self.servers_running()) or self.runtime_pid() is not None

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

    def log_tail(self, lines: int) -> str:
        return self.owner.recorded_log_tail(self.state, lines)

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
        dead: dict[str, str] = {}
        runtime = self.runtime_status() if running else None
        if running:
            try:
                seen = model_states(state.endpoints.http_url, api_key_headers(state.api_key))
            except CompoundError:  # between a crash and the restart: the server does not answer yet
                seen, running = [], False
            dead = self.dead_stubs([m.name for m in seen if m.state == "READY"])
            counts = {name: info["instances"] for name, info in (runtime or {}).get("models", {}).items()}
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
            from toolkit.update.apply import LiveDeployment, canary_report  # update sits above deployments

            canary = canary_report(LiveDeployment.of(state)) or []
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
            canary=canary,
        )

    # --- stopping -------------------------------------------------------------------------------

    def stop(self) -> bool:
        """Stop the runtime first (so it brings nothing back), then every server, and forget the
        deployment; False if nothing was running."""
        RuntimeProcess.stop(self.state.runtime_pid)
        records = self.state.server_records()
        stopped = [self.owner.stop_recorded(self.state.of_server(i)) for i in range(len(records))]
        forget_state(self.name)
        shutil.rmtree(self.state.workdir / "backends", ignore_errors=True)
        return any(stopped)


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
    )


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
