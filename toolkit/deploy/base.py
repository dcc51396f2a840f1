"""What every deployment target offers, and the state file that `status`/`logs`/`stop` act on."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Protocol

from toolkit.errors import CompoundError

READY_POLL_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def describe(self) -> str:
        return f"HTTP {self.http_url}  gRPC {self.grpc_url}  metrics {self.metrics_url}"


class Deployment(Protocol):
    """A running Triton with a repository loaded: local process, container or cluster."""

    endpoints: Endpoints

    def start(self) -> "Deployment": ...

    def stop(self) -> None: ...

    def log_tail(self, lines: int = 40) -> str: ...


@dataclass
class DeploymentState:
    """Recorded by `compound deploy` so later commands find the server it started."""

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
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.host, self.http_port, self.grpc_port, self.metrics_port)


def state_dir() -> Path:
    root = os.environ.get("COMPOUND_STATE_DIR") or str(Path.home() / ".compound" / "deployments")
    return Path(root)


def save_state(state: DeploymentState) -> Path:
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{state.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def load_state(name: Optional[str] = None) -> DeploymentState:
    """The named deployment, or the only one recorded."""
    folder = state_dir()
    known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    if name is None:
        if not known:
            raise CompoundError("no deployment is recorded", hint="start one with `compound deploy DIR`")
        if len(known) > 1:
            raise CompoundError(f"several deployments are recorded: {', '.join(known)}", hint="name one with --name")
        name = known[0]
    path = folder / f"{name}.json"
    if not path.is_file():
        hint = f"known: {', '.join(known)}" if known else "start one with `compound deploy DIR`"
        raise CompoundError(f"no deployment named '{name}' is recorded", hint=hint)
    try:
        return DeploymentState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise CompoundError(f"deployment state {path} is unreadable: {exc}", hint="remove it") from None


def forget_state(name: str) -> None:
    (state_dir() / f"{name}.json").unlink(missing_ok=True)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_ready(endpoints: Endpoints, timeout_s: float = 1.0) -> bool:
    """Triton's /v2/health/ready: true once every model is loaded (and warmed)."""
    url = f"http://{endpoints.http_url}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def read_tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def uses_response_cache(repository: Path) -> bool:
    """Triton refuses `response_cache` in a config unless the server was started with a cache."""
    return any("response_cache" in p.read_text(errors="replace") for p in repository.glob("*/config.pbtxt"))


def load_failures(log_text: str) -> str:
    """The models Triton failed to load, pulled out of its log for the error message."""
    failures = [line.strip() for line in log_text.splitlines() if "failed to load" in line or "UNAVAILABLE:" in line]
    return (":\n  " + "\n  ".join(failures[-5:])) if failures else ""
