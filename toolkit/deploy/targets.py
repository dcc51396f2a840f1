"""`compound deploy/status/logs/stop` across targets: start one, record it, find it again later.

The three targets own their processes (LocalServer, DockerServer, KubernetesDeployment); this module
only chooses one, records what a later command needs (pid, container, manifests) and dispatches.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Sequence

from toolkit.deploy import base
from toolkit.errors import CompoundError

if TYPE_CHECKING:
    from toolkit.deploy.kubernetes import KubernetesDeployment

Target = Literal["local", "docker", "kubernetes"]
TARGETS: tuple[Target, ...] = ("local", "docker", "kubernetes")


@dataclass
class DeployRequest:
    """What `compound deploy` was asked for; fields a target does not use are ignored by it."""

    repository: Path
    name: str
    target: Target = "local"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    ready_timeout_s: float = 180.0
    # docker and kubernetes
    image: Optional[str] = None
    base_image: Optional[str] = None
    # docker
    network: Literal["bridge", "host"] = "bridge"
    gpus: Optional[bool] = None
    pip: Sequence[str] = ()
    # kubernetes
    kubernetes: dict[str, object] = field(default_factory=dict)
    context: Optional[str] = None
    manifests_dir: Optional[Path] = None


def run_dir(name: str) -> Path:
    """Where a recorded deployment keeps its log and working files."""
    return base.state_dir().parent / "run" / name


def ensure_not_running(name: str) -> None:
    try:
        previous = base.load_state(name)
    except CompoundError:
        return
    if is_running(previous):
        raise CompoundError(f"deployment '{name}' is already running (target {previous.target}, {previous.endpoints.describe()})", hint="`compound stop` it first, or pass --name")


def start(request: DeployRequest) -> base.DeploymentState:
    """Start the target detached from this process, wait until ready, record it."""
    ensure_not_running(request.name)
    workdir = run_dir(request.name)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    state = base.DeploymentState(
        name=request.name,
        target=request.target,
        repository=str(request.repository),
        host=request.host,
        http_port=request.http_port,
        grpc_port=request.grpc_port,
        metrics_port=request.metrics_port,
        log_path=str(workdir / "tritonserver.log"),
        extra={"workdir": str(workdir)},
    )
    if request.target == "local":
        from toolkit.deploy.local import LocalServer

        local = LocalServer(request.repository, host=request.host, http_port=request.http_port, grpc_port=request.grpc_port, metrics_port=request.metrics_port, workdir=workdir, ready_timeout_s=request.ready_timeout_s, detach=True)
        local.start()
        state.pid, state.log_path = local.pid, str(local.log_path)
    elif request.target == "docker":
        from toolkit.deploy.docker import DockerServer

        container = DockerServer(
            request.repository, host=request.host, http_port=request.http_port, grpc_port=request.grpc_port, metrics_port=request.metrics_port,
            name=f"compound-{request.name}", image=request.image, base_image=request.base_image, network=request.network, gpus=request.gpus,
            pip=request.pip, log_path=state.log_path, ready_timeout_s=request.ready_timeout_s, detach=True,
        )  # fmt: skip
        container.start()
        state.container = container.name
        state.extra["image"] = str(container.image)
    else:
        cluster = kubernetes_deployment(request, workdir)
        cluster.start()
        state.pid, state.log_path = cluster.port_forward_pid, str(cluster.log_path)
        state.extra.update(manifests=str(cluster.manifests_dir), namespace=cluster.options.namespace, k8s_name=cluster.name, image=str(cluster.options.image))
        if request.context:
            state.extra["context"] = request.context
    base.save_state(state)
    return state


def kubernetes_deployment(request: DeployRequest, workdir: Optional[Path] = None) -> "KubernetesDeployment":
    from toolkit.deploy.kubernetes import KubernetesDeployment, KubernetesOptions

    options = KubernetesOptions(name=request.name, image=request.image, base_image=request.base_image, startup_timeout_s=int(request.ready_timeout_s), **request.kubernetes)  # type: ignore[arg-type]
    manifests = request.manifests_dir or (workdir / "manifests" if workdir else None)
    return KubernetesDeployment(
        request.repository, options, manifests_dir=manifests, context=request.context, host=request.host,
        http_port=request.http_port, grpc_port=request.grpc_port, metrics_port=request.metrics_port,
        log_path=(workdir / "port-forward.log") if workdir else None, detach=True, delete_on_stop=True,
    )  # fmt: skip


def is_running(state: base.DeploymentState) -> bool:
    """The server process, container or port-forward that the record names is still there."""
    if state.target == "docker":
        from toolkit.deploy.docker import container_running

        return bool(state.container) and container_running(state.container)  # type: ignore[arg-type]
    if state.target == "kubernetes":
        from toolkit.deploy.kubernetes import port_forward_running

        return port_forward_running(state.pid)
    from toolkit.deploy.local import pid_running_tritonserver

    return pid_running_tritonserver(state.pid)


def log_tail(state: base.DeploymentState, lines: int) -> str:
    if state.target == "docker" and state.container:
        from toolkit.deploy.docker import container_log_tail

        return container_log_tail(state.container, lines) or base.read_tail(Path(state.log_path), lines)
    if state.target == "kubernetes":
        from toolkit.deploy.kubernetes import deployment_log_tail

        return deployment_log_tail(state.extra["k8s_name"], state.extra["namespace"], state.extra.get("context"), lines)
    return base.read_tail(Path(state.log_path), lines)


def stop(state: base.DeploymentState) -> bool:
    """Stop whatever the record names and forget it; False if nothing was running."""
    running = is_running(state)
    if state.target == "docker":
        from toolkit.deploy.docker import remove_container

        running = bool(state.container) and remove_container(state.container)  # type: ignore[arg-type]
    elif state.target == "kubernetes":
        from toolkit.deploy.kubernetes import stop_recorded

        stop_recorded(state.extra["manifests"], state.pid, state.extra.get("context"))
    elif state.pid is not None:
        from toolkit.deploy.local import stop_process

        running = stop_process(state.pid)
    base.forget_state(state.name)
    workdir = state.extra.get("workdir")
    if workdir:
        shutil.rmtree(Path(workdir) / "backends", ignore_errors=True)
    return running
