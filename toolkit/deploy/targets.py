"""`compound deploy/status/logs/stop` across targets: start one, record it, find it again later.

The three targets are `TritonServer` classes (LocalServer, DockerServer, KubernetesDeployment) that own
their processes and know how to find a recorded deployment of theirs again; this module only builds
one from the request, records it, and dispatches later commands to the recorded target's class.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from toolkit.deploy import base
from toolkit.deploy.base import DeploymentState, DeployRequest
from toolkit.errors import CompoundError

# target name -> the TritonServer subclass that owns it
TARGETS: dict[str, str] = {
    "local": "toolkit.deploy.local:LocalServer",
    "docker": "toolkit.deploy.docker:DockerServer",
    "kubernetes": "toolkit.deploy.kubernetes:KubernetesDeployment",
}


def run_dir(name: str) -> Path:
    """Where a recorded deployment keeps its log and working files."""
    return base.state_dir().parent / "run" / name


def ensure_not_running(name: str) -> None:
    try:
        previous = base.load_state(name)
    except CompoundError:
        return
    if is_running(previous):
        raise CompoundError(
            f"deployment '{name}' is already running (target {previous.target}, {previous.endpoints.describe()})",
            hint="`compound stop` it first, or pass --name",
        )


def target_class(target: str) -> type[base.TritonServer]:
    """The class that owns servers of one target, imported only when that target is used (the docker
    SDK and kubectl helpers stay out of a local deployment)."""
    where = TARGETS.get(target)
    if where is None:
        raise CompoundError(f"unknown target '{target}'", hint=f"use one of {', '.join(TARGETS)}")
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def start(request: DeployRequest) -> DeploymentState:
    """Start the target detached from this process, wait until ready, record it."""
    ensure_not_running(request.name)
    workdir = run_dir(request.name)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    server = target_class(request.target).from_request(request, workdir)
    server.start()
    state = DeploymentState(
        name=request.name,
        target=request.target,
        repository=str(request.repository),
        host=request.host,
        http_port=server.endpoints.http_port,
        grpc_port=server.endpoints.grpc_port,
        metrics_port=server.endpoints.metrics_port,
        log_path=str(server.log_path),
        api_key=server.api_key,
        extra={"workdir": str(workdir)},
    )
    server.record(state)
    base.save_state(state)
    return state


def is_running(state: DeploymentState) -> bool:
    """The server process, container or port-forward that the record names is still there."""
    return target_class(state.target).recorded_running(state)


def log_tail(state: DeploymentState, lines: int) -> str:
    return target_class(state.target).recorded_log_tail(state, lines)


def stop(state: DeploymentState) -> bool:
    """Stop whatever the record names and forget it; False if nothing was running."""
    running = target_class(state.target).stop_recorded(state)
    base.forget_state(state.name)
    workdir = state.extra.get("workdir")
    if workdir:
        shutil.rmtree(Path(workdir) / "backends", ignore_errors=True)
    return running


def dead_stubs(state: DeploymentState) -> dict[str, str]:
    """Models of a running deployment that have fewer live Python stubs than instances: model -> why."""
    live = target_class(state.target).recorded_stubs(state)
    if live is None:
        return {}
    expected = base.python_instances(Path(state.repository))
    return {
        model: f"{live.get(model, 0)} of {count} backend process(es) alive"
        for model, count in expected.items()
        if live.get(model, 0) < count
    }
