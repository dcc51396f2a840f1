"""`compound deploy/status/logs/stop` across targets: start one, record it, find it again later.

The three targets are `TritonServer` classes (LocalServer, DockerServer, KubernetesDeployment) that own
their processes and know how to find a recorded deployment of theirs again; this module only builds
one from the request, records it, and dispatches later commands to the recorded target's class.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from toolkit.client import instance_count, model_config
from toolkit.deploy import base
from toolkit.deploy.base import DeploymentState, DeployRequest, missing_stubs, target_class
from toolkit.errors import CompoundError


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


def start(request: DeployRequest) -> DeploymentState:
    """Start the target detached from this process, wait until ready, record it."""
    ensure_not_running(request.name)
    workdir = run_dir(request.name)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    server = target_class(request.target).from_request(request, workdir)
    server.start()
    state = server.deployment_state(request.name, workdir)
    state_path = base.save_state(state)
    if request.runtime and request.target != "kubernetes":  # in Kubernetes it runs in the pod
        try:
            state.extra["runtime_pid"] = str(start_runtime(request, state, workdir, state_path))
        except BaseException:
            stop(state)
            raise
        base.save_state(state)
    return state


def start_runtime(request: DeployRequest, state: DeploymentState, workdir: Path, state_path: Path) -> int:
    """The adaptive runtime beside the server, detached like it; its decisions go to runtime.log."""
    from toolkit.deploy.supervisor import LOG_FILE, RuntimeConfig

    endpoints = state.endpoints
    config = RuntimeConfig(
        name=state.name,
        repository=state.repository,
        http_url=endpoints.http_url,
        grpc_url=endpoints.grpc_url,
        metrics_url=endpoints.metrics_url,
        api_key=state.api_key,
        run_dir=str(workdir),
        cores=float(request.cores or len(os.sched_getaffinity(0))),
        gpus=request.gpu_budget or 0,
        state_file=str(state_path),
        otlp_endpoint=request.otlp_endpoint or "",
    )
    with open(workdir / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "toolkit.deploy.supervisor", str(config.save())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def runtime_running(state: DeploymentState) -> Optional[int]:
    """The pid of the deployment's runtime while it runs (checked: not a process that reused it)."""
    pid = int(state.extra.get("runtime_pid") or 0)
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return pid if b"toolkit.deploy.supervisor" in cmdline.read() else None
    except OSError:
        return None


def runtime_status(state: DeploymentState) -> Optional[dict[str, object]]:
    """What the runtime last wrote about each model, or None when it does not run."""
    from toolkit.deploy.supervisor import STATUS_FILE

    path = Path(state.extra.get("workdir", "")) / STATUS_FILE
    if runtime_running(state) is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except ValueError:
        return None


def stop_runtime(state: DeploymentState) -> None:
    pid = runtime_running(state)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while runtime_running(state) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if runtime_running(state) is not None:
        os.kill(pid, signal.SIGKILL)


def is_running(state: DeploymentState) -> bool:
    """The server process, container or port-forward that the record names is still there."""
    return target_class(state.target).recorded_running(state)


def log_tail(state: DeploymentState, lines: int) -> str:
    return target_class(state.target).recorded_log_tail(state, lines)


def stop(state: DeploymentState) -> bool:
    """Stop whatever the record names and forget it; False if nothing was running."""
    stop_runtime(state)
    running = target_class(state.target).stop_recorded(state)
    base.forget_state(state.name)
    workdir = state.extra.get("workdir")
    if workdir:
        shutil.rmtree(Path(workdir) / "backends", ignore_errors=True)
    return running


def dead_stubs(state: DeploymentState, loaded: list[str]) -> dict[str, str]:
    """Loaded Python models with fewer live backend stubs than their live config's CPU instances:
    model -> why. Seen in three looks half a second apart, so a stub caught starting (or a process
    list read while a container's processes change) is not called dead."""
    owner = target_class(state.target)
    expected: dict[str, int] = {}
    for name in loaded:
        config = model_config(state.endpoints.http_url, name)
        instances, gpu = instance_count(config)
        if config.get("backend") == "python" and not gpu:
            expected[name] = instances
    dead: Optional[dict[str, str]] = None
    for attempt in range(DEAD_STUB_LOOKS):
        live = owner.recorded_stubs(state)
        if live is None:
            return {}
        seen = missing_stubs(expected, live)
        dead = seen if dead is None else {m: why for m, why in seen.items() if m in dead}
        if not dead:
            return {}
        if attempt < DEAD_STUB_LOOKS - 1:
            time.sleep(0.5)
    return dead or {}


DEAD_STUB_LOOKS = 3
