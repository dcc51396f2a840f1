"""What `compound deploy` records so later commands find the deployment again: the state file
(mode 0600 in a 0700 folder: it holds the deployment's API key)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from toolkit.core.errors import CompoundError
from toolkit.targets.settings import Endpoints

# the runtime's files in the deployment's run folder
INTERVAL_S = 1.0
STATUS_FILE = "runtime.json"
LOG_FILE = "runtime.log"
CONFIG_FILE = "runtime-config.json"


@dataclass
class ServerRecord:
    """One tritonserver of a deployment (a replica, or the only server): its own ports, and how its
    process or container is found again."""

    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: str
    pid: Optional[int] = None
    container: Optional[str] = None


@dataclass
class ProxyRecord:
    """The L7 proxy in front of a deployment's replicas (on the deployment's public ports)."""

    pid: int
    admin_port: int
    log_path: str
    config_path: str


@dataclass
class DeploymentState:
    """Recorded by `compound deploy` so later commands find the deployment again. The top-level
    ports are the public ones (the proxy's when there are replicas); `pid`, `container` and
    `log_path` are the first server's, `servers` lists every server."""

    name: str
    target: str
    repository: str
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: str
    pid: Optional[int] = None
    container: Optional[str] = None
    api_key: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    servers: list[ServerRecord] = field(default_factory=list)
    proxy: Optional[ProxyRecord] = None
    runtime_pid: Optional[int] = None

    def __post_init__(self) -> None:
        self.servers = [s if isinstance(s, ServerRecord) else ServerRecord(**s) for s in self.servers]
        if isinstance(self.proxy, dict):
            self.proxy = ProxyRecord(**self.proxy)

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.host, self.http_port, self.grpc_port, self.metrics_port)

    @property
    def workdir(self) -> Path:
        """The deployment's run folder: logs, the runtime's files, crash records."""
        return Path(self.extra.get("workdir", ""))

    def server_records(self) -> list[ServerRecord]:
        """Every server; a state recorded before replicas existed has its one server at the top level."""
        if self.servers:
            return self.servers
        return [
            ServerRecord(self.http_port, self.grpc_port, self.metrics_port, self.log_path, self.pid, self.container)
        ]

    def of_server(self, index: int) -> DeploymentState:
        """This state seen as if server `index` were the whole deployment: what a target's
        `recorded_*` methods take."""
        server = self.server_records()[index]
        return replace(
            self,
            http_port=server.http_port,
            grpc_port=server.grpc_port,
            metrics_port=server.metrics_port,
            log_path=server.log_path,
            pid=server.pid,
            container=server.container,
            servers=[server],
            proxy=None,
        )


def state_dir() -> Path:
    root = os.environ.get("COMPOUND_STATE_DIR") or str(Path.home() / ".compound" / "deployments")
    return Path(root)


def save_state(state: DeploymentState) -> Path:
    """Written 0600 in a 0700 folder: the state holds the deployment's API key."""
    state_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    return write_state(state, state_path(state.name))


def write_state(state: DeploymentState, path: Path) -> Path:
    """Atomically (a reader never sees half a state), mode 0600."""
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(asdict(state), indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def load_state(name: Optional[str] = None) -> DeploymentState:
    """The named deployment, or the only one recorded."""
    known = recorded_names()
    if name is None:
        if not known:
            raise CompoundError("no deployment is recorded", hint="start one with `compound deploy DIR`")
        if len(known) > 1:
            raise CompoundError(f"several deployments are recorded: {', '.join(known)}", hint="name one with --name")
        name = known[0]
    path = state_path(name)
    if not path.is_file():
        hint = f"known: {', '.join(known)}" if known else "start one with `compound deploy DIR`"
        raise CompoundError(f"no deployment named '{name}' is recorded", hint=hint)
    try:
        return read_state(path)
    except (ValueError, TypeError) as exc:
        raise CompoundError(f"deployment state {path} is unreadable: {exc}", hint="remove it") from None


def recorded_names() -> list[str]:
    """Every deployment recorded here, by name."""
    folder = state_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def state_path(name: str) -> Path:
    return state_dir() / f"{name}.json"


def read_state(path: Path) -> DeploymentState:
    return DeploymentState(**json.loads(path.read_text()))


def forget_state(name: str) -> None:
    state_path(name).unlink(missing_ok=True)


@dataclass
class RuntimeConfig:
    """What the runtime process needs; written by `compound deploy` into the deployment's run folder."""

    name: str
    repository: str
    http_url: str
    grpc_url: str
    metrics_url: str
    api_key: str
    run_dir: str
    cores: float
    gpus: int = 0
    interval_s: float = INTERVAL_S
    state_file: str = ""  # the deployment's state (to find its stubs through its target)
    stubs: str = "state"  # "state": through the recorded target; "proc": every process here (a pod)
    otlp_endpoint: str = ""  # with tracing: each load, scale and heal action becomes a span there
    scale: bool = True  # False (a static deployment): instance counts stay; crashed servers still restart
    supervise: bool = True  # restart a server whose process or container died (local and Docker)
    servers: list[list[str]] = field(default_factory=list)  # [http_url, grpc_url] of each replica; [] = the one above
    prices: dict[str, float] = field(default_factory=dict)  # {core_hour, gpu_hour}: what status prices the account at

    def save(self) -> Path:
        path = Path(self.run_dir) / CONFIG_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the key
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RuntimeConfig:
        return cls(**json.loads(Path(path).read_text()))
