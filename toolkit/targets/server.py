"""What every deployment target shares: one Triton server's life (start, wait until ready, stop, log
tail, context manager), the arguments every tritonserver gets, the deployment's API key, and the state
file that `status`/`logs`/`stop` act on. Targets (local, docker, kubernetes) extend `TritonServer`."""

from __future__ import annotations

import abc
import importlib
import re
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

from toolkit.client import API_KEY_HEADER, api_key_headers
from toolkit.core.errors import CompoundError, ServerError
from toolkit.core.system import port_in_use, read_tail
from toolkit.repository.manifest import Manifest
from toolkit.repository.versions import VERSIONS_FILE, serving_models
from toolkit.targets.settings import (
    REDIS_URL_ENV,
    RUNTIME_GRPC_ENV,
    RUNTIME_KEY_ENV,
    DeployRequest,
    Endpoints,
    Tracing,
    check_redis_url,
)
from toolkit.targets.state import DeploymentState, ServerRecord

READY_POLL_INTERVAL_S = 0.25
# Triton 2.51's Python backend sometimes aborts at start-up when several models' stubs initialise at
# once on a loaded machine (seen a few times in hundreds of starts here); a second start succeeds.
TRANSIENT_START_FAILURE = "boost::interprocess::lock_exception"
DEFAULT_READY_TIMEOUT_S = 180.0
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# Triton APIs that change or expose the server beyond serving: only clients holding the deployment's
# key may use them (compound's own commands do). Inference, health, metadata and statistics stay open.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")


def http_ready(endpoints: Endpoints, timeout_s: float = 1.0) -> bool:
    """Triton's /v2/health/ready: true once every model is loaded (and warmed)."""
    url = f"http://{endpoints.http_url}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def grpc_ready(endpoints: Endpoints, timeout_s: float = 2.0) -> bool:
    """Triton's gRPC ServerReady: its gRPC endpoint serves too (it may start after the HTTP one)."""
    import tritonclient.grpc as grpcclient

    try:
        client = grpcclient.InferenceServerClient(endpoints.grpc_url)
        try:
            return bool(client.is_server_ready(client_timeout=timeout_s))
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False


def uses_response_cache(repository: Path) -> bool:
    """Triton refuses `response_cache` in a config unless the server was started with a cache."""
    return any("response_cache" in p.read_text(errors="replace") for p in repository.glob("*/config.pbtxt"))


def load_failures(log_text: str) -> str:
    """The models Triton failed to load, pulled out of its log for the error message."""
    failures = [line.strip() for line in log_text.splitlines() if "failed to load" in line or "UNAVAILABLE:" in line]
    return (":\n  " + "\n  ".join(failures[-5:])) if failures else ""


def new_api_key() -> str:
    return secrets.token_urlsafe(24)


def check_repository(repository: Path) -> None:
    if not repository.is_dir():
        raise CompoundError(
            f"model repository {repository} does not exist", hint="generate one with `compound generate SPEC -o DIR`"
        )
    if not any((child / "config.pbtxt").is_file() for child in repository.iterdir() if child.is_dir()):
        raise CompoundError(
            f"{repository} is not a Triton model repository (no <model>/config.pbtxt)",
            hint="generate one with `compound generate SPEC -o DIR`",
        )


def triton_args(
    model_repository: str,
    ports: tuple[int, int, int],
    *,
    address: Optional[str] = None,
    api_key: str = "",
    exit_timeout_s: int = 10,
) -> list[str]:
    """The arguments every compound tritonserver gets, wherever it runs: strict readiness (ready means
    every model loaded and warmed), fail fast on a bad model, and the restricted APIs behind the key."""
    args = ["--model-repository", model_repository]
    for protocol, port in zip(("http", "grpc", "metrics"), ports):
        if address is not None:
            args += [f"--{protocol}-address", address]
        args += [f"--{protocol}-port", str(port)]
    args += [
        "--disable-auto-complete-config",
        "--strict-readiness",
        "true",
        "--exit-on-error",
        "true",
        "--exit-timeout-secs",
        str(exit_timeout_s),
        "--log-verbose",
        "0",
    ]
    if api_key:
        apis = ",".join(RESTRICTED_APIS)
        args += [
            f"--http-restricted-api={apis}:{API_KEY_HEADER}={api_key}",
            f"--grpc-restricted-protocol={apis}:{API_KEY_HEADER}={api_key}",
        ]
    return args


class TritonServer(abc.ABC):
    """One Triton serving a repository, wherever it runs. `start` checks, launches, then blocks until
    /v2/health/ready (every model loaded and warmed) or raises with the log's tail, stopping what it
    started; `stop` always cleans up. Subclasses say how to launch, how a launch fails, how to stop,
    and how a recorded deployment of theirs is found again by `compound status/logs/stop`."""

    target: ClassVar[str]

    def __init__(
        self,
        repository: str | Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        log_path: Optional[str | Path] = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        detach: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        extra_args: Sequence[str] = (),
        api_key: Optional[str] = None,
        redis_url: Optional[str] = None,
        tracing: Optional[Tracing] = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.redis_url = check_redis_url(redis_url) if redis_url else None
        self.tracing = tracing
        self.endpoints = Endpoints(host, http_port, grpc_port, metrics_port)
        self.log_path = Path(log_path) if log_path is not None else None
        self.ready_timeout_s = ready_timeout_s
        self.detach = detach  # outlive this Python process (compound deploy); stop() still cleans up
        self.cache_bytes = cache_bytes
        self.extra_args = list(extra_args)
        self.api_key = new_api_key() if api_key is None else api_key  # "" turns the restriction off

    @property
    def http_url(self) -> str:
        return self.endpoints.http_url

    @property
    def grpc_url(self) -> str:
        return self.endpoints.grpc_url

    @property
    def metrics_url(self) -> str:
        return self.endpoints.metrics_url

    @property
    def headers(self) -> dict[str, str]:
        """What an HTTP client needs to use the restricted APIs of this server."""
        return api_key_headers(self.api_key)

    @property
    def grpc_headers(self) -> dict[str, str]:
        """The same for a gRPC client (metadata)."""
        return api_key_headers(self.api_key, "grpc")

    def server_args(self, model_repository: str, ports: tuple[int, int, int], address: Optional[str]) -> list[str]:
        args = triton_args(model_repository, ports, address=address, api_key=self.api_key)
        args += model_control_args(self.repository)
        if uses_response_cache(self.repository):
            args += ["--cache-config", f"local,size={self.cache_bytes}"]
        if self.tracing is not None:
            args += self.tracing.server_args()
        return args + self.extra_args

    def runtime_environment(self, grpc_port: Optional[int] = None) -> dict[str, str]:
        """What the generated runtimes inside the server need to load on-demand models themselves
        (their own server's gRPC endpoint and the key): environment variables, which no Triton API
        exposes, unlike the repository's files."""
        environment = {
            RUNTIME_GRPC_ENV: f"127.0.0.1:{grpc_port or self.endpoints.grpc_port}",
            RUNTIME_KEY_ENV: self.api_key,
        }
        if self.redis_url:
            environment[REDIS_URL_ENV] = self.redis_url  # templates/cache.py reads it
        if self.tracing is not None:
            environment.update(self.tracing.environment())
        return environment

    def start(self) -> TritonServer:
        """Preflight, launch, wait until ready; a start-up abort Triton 2.51 is known to make at random
        (TRANSIENT_START_FAILURE, several Python models initialising at once under load) is tried once
        more, any other failure raises with the log's tail."""
        self.preflight()
        for attempt in (1, 2):
            self.launch()
            try:
                self.wait_ready()
                return self
            except ServerError:
                transient = TRANSIENT_START_FAILURE in self.log_tail(200)
                self.stop()
                if attempt == 2 or not transient:
                    raise
            except BaseException:
                self.stop()
                raise
        return self

    def preflight(self) -> None:
        """Everything that can be wrong before anything starts."""
        check_repository(self.repository)
        for flag, port in (
            ("--http-port", self.endpoints.http_port),
            ("--grpc-port", self.endpoints.grpc_port),
            ("--metrics-port", self.endpoints.metrics_port),
        ):
            if port_in_use(self.endpoints.host, port):
                raise CompoundError(
                    f"port {port} on {self.endpoints.host} is already in use",
                    hint=f"pick another with {flag}, or stop what holds it (`compound stop`)",
                )

    @abc.abstractmethod
    def launch(self) -> None:
        """Start the server (process, container, rollout) without waiting for it to be ready."""

    @abc.abstractmethod
    def launch_failure(self) -> Optional[CompoundError]:
        """The error to raise if what `launch` started has already died, else None."""

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def log_tail(self, lines: int = 40) -> str: ...

    @abc.abstractmethod
    def alive(self) -> bool: ...

    def describe(self) -> str:
        """How a person finds the log."""
        return f"full log: {self.log_path}"

    def wait_ready(self, timeout_s: Optional[float] = None) -> None:
        limit = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            failure = self.launch_failure()
            if failure is not None:
                raise failure
            if http_ready(self.endpoints):
                return
            time.sleep(READY_POLL_INTERVAL_S)
        raise ServerError(
            f"{self.target} server was not ready after {limit:.0f} s", self.log_tail(), hint=self.describe()
        )

    @classmethod
    @abc.abstractmethod
    def from_request(cls, request: DeployRequest, workdir: Path, replica: Optional[int] = None) -> TritonServer:
        """A server for `compound deploy`: detached from the CLI's process, files under `workdir`;
        `replica` numbers it among several (its own log and container name)."""

    def deployment_state(self, name: str, workdir: Path) -> DeploymentState:
        """What `compound deploy` records of this (started) server for later commands."""
        state = DeploymentState(
            name=name,
            target=self.target,
            repository=str(self.repository),
            host=self.endpoints.host,
            http_port=self.endpoints.http_port,
            grpc_port=self.endpoints.grpc_port,
            metrics_port=self.endpoints.metrics_port,
            log_path=str(self.log_path),
            api_key=self.api_key,
            extra={"workdir": str(workdir)},
        )
        if self.tracing is not None:
            state.extra.update(otlp_endpoint=self.tracing.endpoint, trace_rate=str(self.tracing.rate))
        self.record(state)
        return state

    def record(self, state: DeploymentState) -> None:  # noqa: B027 - a hook: most targets add nothing
        """Fill in what a later `compound status/logs/stop` needs to find this server again."""

    @classmethod
    @abc.abstractmethod
    def recorded_running(cls, state: DeploymentState) -> bool:
        """Whether the process, container or port-forward a record names is still there."""

    @classmethod
    def recorded_log_tail(cls, state: DeploymentState, lines: int) -> str:
        return read_tail(Path(state.log_path), lines)

    @classmethod
    def recorded_stubs(cls, state: DeploymentState) -> Optional[dict[str, int]]:
        """Live Python stubs per model of a recorded deployment, or None where they cannot be seen.
        Triton keeps a model READY after its stub dies (until a request finds out): this is how we know."""
        return None

    @classmethod
    @abc.abstractmethod
    def stop_recorded(cls, state: DeploymentState) -> bool:
        """Stop what a record names; False if nothing was running."""

    @classmethod
    def halt_recorded(cls, state: DeploymentState) -> None:
        """Stop the recorded server so that `restart_recorded` can start it again (a rolling restart)."""
        cls.stop_recorded(state)

    @classmethod
    def exit_reason(cls, state: DeploymentState) -> str:
        """Why the recorded server is gone, in words (the signal, when its log or exit status says)."""
        return crash_signal(read_tail(Path(state.log_path), 200)) or "the server exited"

    @classmethod
    def restart_recorded(
        cls, state: DeploymentState, request: DeployRequest, on_launch: Optional[Callable[[ServerRecord], None]] = None
    ) -> ServerRecord:
        """Start the recorded (dead) server again, on the same ports with the same repository and key,
        and return once it is ready and warm. `request` is what `compound deploy` was asked for, with
        this server's ports and the deployment's key; `on_launch` hears of the new process as soon as
        it exists."""
        raise CompoundError(f"the {cls.target} target does not restart servers itself")

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


SIGNAL_NAMES = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


def signal_name(number: int) -> str:
    return SIGNAL_NAMES.get(number, f"signal {number}")


def crash_signal(log_text: str) -> str:
    """The fatal signal Triton's own handler logged ("Signal (11) received."), in words, or ""."""
    found = re.findall(r"Signal \((\d+)\) received", log_text)
    if not found:
        return ""
    frames = [line.strip() for line in log_text.splitlines() if re.match(r"\s*\d+# ", line)]
    where = f" in {frames[1].split(' ', 1)[1]}" if len(frames) > 1 else ""
    return f"crashed: {signal_name(int(found[-1]))}{where}"


def is_stub(argv: list[str]) -> bool:
    """A Python-backend stub's command line: the stub binary, then <repository>/<model>/<version>/model.py."""
    return len(argv) > 1 and Path(argv[0]).name == "triton_python_backend_stub"


def stub_counts(command_lines: list[list[str]]) -> dict[str, int]:
    """Live Python-backend stubs per model, from process command lines: a stub's first argument is
    <repository>/<model>/<version>/model.py."""
    counts: dict[str, int] = {}
    for argv in command_lines:
        if is_stub(argv):
            model = Path(argv[1]).parent.parent.name
            counts[model] = counts.get(model, 0) + 1
    return counts


def missing_stubs(expected: dict[str, int], live: dict[str, int]) -> dict[str, str]:
    """Models with fewer live stubs than instances: model -> how many are alive, in words."""
    return {m: f"{live.get(m, 0)} of {n} backend process(es) alive" for m, n in expected.items() if live.get(m, 0) < n}


def redis_cached_models(repository: Path) -> list[str]:
    """Components whose tiered cache has a Redis tier, from the repository's compound.json."""
    return Manifest.read(repository, missing_ok=True).redis_cached_models


def on_demand_models(repository: Path) -> list[str]:
    """Models that start unloaded (autoscale.min 0), from the repository's compound.json."""
    return Manifest.read(repository, missing_ok=True).on_demand_models


def model_control_args(repository: Path) -> list[str]:
    """Explicit model control: the adaptive runtime loads, rescales and reloads models one by one.
    Every model is loaded at start but the on-demand ones, which the first request that needs them
    loads."""
    on_demand = set(on_demand_models(repository))
    versions = repository / VERSIONS_FILE
    if versions.is_file():  # updated: the version in service (toolkit/repository/versions.py), not every folder
        names = [name for name in serving_models(versions.read_text()) if name not in on_demand]
        return ["--model-control-mode=explicit", *(f"--load-model={name}" for name in names)]
    if not on_demand:
        return ["--model-control-mode=explicit", "--load-model=*"]
    names = sorted(p.parent.name for p in repository.glob("*/config.pbtxt") if p.parent.name not in on_demand)
    return ["--model-control-mode=explicit", *(f"--load-model={name}" for name in names)]


def compile_python(folder: Path) -> None:
    """Write the bytecode of every Python file under `folder` now, with this interpreter (the one the
    local stub embeds). Why: a stub importing a model writes `__pycache__` into the model's folder
    after Triton took its timestamps, so Triton 2.51 takes the folder for a changed model and restarts
    it whenever an ensemble using it is loaded again (`compound update`). With valid bytecode present
    the stub writes nothing (its embedded interpreter ignores PYTHONDONTWRITEBYTECODE). A read-only
    or unwritable folder is left as it is: such a folder gets no bytecode from the stub either."""
    import compileall

    compileall.compile_dir(str(folder), quiet=2, workers=1)


def redact_key(argv: Sequence[str]) -> list[str]:
    """A command line fit for a log: the restricted-API settings without the key."""
    return [
        arg.rsplit("=", 1)[0] + "=<key>" if arg.startswith("--") and "restricted" in arg and "=" in arg else arg
        for arg in argv
    ]


# target name -> the TritonServer subclass that owns it
TARGETS: dict[str, str] = {
    "local": "toolkit.targets.local:LocalServer",
    "docker": "toolkit.targets.docker:DockerServer",
    "kubernetes": "toolkit.targets.kubernetes:KubernetesDeployment",
}


def target_class(target: str) -> type[TritonServer]:
    """The class that owns servers of one target, imported only when that target is used (the docker
    SDK and kubectl helpers stay out of a local deployment)."""
    where = TARGETS.get(target)
    if where is None:
        raise CompoundError(f"unknown target '{target}'", hint=f"use one of {', '.join(TARGETS)}")
    module, name = where.split(":")
    owner: type[TritonServer] = getattr(importlib.import_module(module), name)
    return owner
