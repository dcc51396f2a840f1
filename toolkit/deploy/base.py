"""What every deployment target shares: one Triton server's life (start, wait until ready, stop, log
tail, context manager), the arguments every tritonserver gets, the deployment's API key, and the state
file that `status`/`logs`/`stop` act on. Targets (local, docker, kubernetes) extend `TritonServer`."""

from __future__ import annotations

import abc
import importlib
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Sequence

from toolkit.client import API_KEY_HEADER, api_key_headers
from toolkit.errors import CompoundError, ServerError
from toolkit.plan.versions import VERSIONS_FILE, serving_models
from toolkit.render import read_manifest
from toolkit.system import port_in_use
from toolkit.tracing import TRACES_PATH

Target = Literal["local", "docker", "kubernetes"]
READY_POLL_INTERVAL_S = 0.25
DEFAULT_READY_TIMEOUT_S = 180.0
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# Triton APIs that change or expose the server beyond serving: only clients holding the deployment's
# key may use them (compound's own commands do). Inference, health, metadata and statistics stay open.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
RUNTIME_GRPC_ENV = "COMPOUND_TRITON_GRPC"
RUNTIME_KEY_ENV = "COMPOUND_API_KEY"
REDIS_URL_ENV = "COMPOUND_REDIS_URL"  # the shared cache tier (templates/cache.py reads the same name)
OTLP_ENDPOINT_ENV = "COMPOUND_OTLP_ENDPOINT"  # where the runtime's own spans go (templates/tracing.py)
TRACE_SERVICE_ENV = "COMPOUND_TRACE_SERVICE"


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
    # the adaptive runtime (local, docker): on by default; static deployments turn it off
    runtime: bool = True
    cores: Optional[float] = None  # the cores the runtime may fill (default: those this process may use)
    gpu_budget: Optional[int] = None
    # the shared tier of components' tiered caches (local, docker, kubernetes)
    redis_url: Optional[str] = None
    # OpenTelemetry tracing (local, docker, kubernetes): Triton's spans and the runtime's, 1 in trace_rate
    otlp_endpoint: Optional[str] = None
    trace_rate: int = 1

    def __post_init__(self) -> None:
        """The endpoint as its base URL, so that the server and the adaptive runtime, each handed it
        on its own, agree whichever form was given."""
        if self.otlp_endpoint:
            self.otlp_endpoint = check_otlp_endpoint(self.otlp_endpoint)

    def server_options(self) -> dict[str, Any]:
        """The keyword arguments every TritonServer takes, as asked for."""
        return {
            "host": self.host,
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "ready_timeout_s": self.ready_timeout_s,
            "redis_url": self.redis_url,
            "tracing": Tracing(self.otlp_endpoint, self.trace_rate, self.name) if self.otlp_endpoint else None,
        }


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
    api_key: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.host, self.http_port, self.grpc_port, self.metrics_port)


def state_dir() -> Path:
    root = os.environ.get("COMPOUND_STATE_DIR") or str(Path.home() / ".compound" / "deployments")
    return Path(root)


def save_state(state: DeploymentState) -> Path:
    """Written 0600 in a 0700 folder: the state holds the deployment's API key."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{state.name}.json"
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(asdict(state), indent=2, sort_keys=True))
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


def new_api_key() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Tracing:
    """OpenTelemetry tracing of a deployment: Triton's own spans (every request, its models, an
    ensemble's steps, an orchestrator's calls) and compound's runtime spans, both as OTLP/HTTP to
    the collector at `endpoint` (its base URL or its /v1/traces URL: kept as the base, see
    check_otlp_endpoint). 1 request in `rate` is traced."""

    endpoint: str
    rate: int = 1
    service: str = "compound"

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoint", check_otlp_endpoint(self.endpoint))
        if self.rate < 1:
            raise CompoundError(f"--trace-rate {self.rate}: must be 1 or more (1 traces every request)")

    @property
    def traces_url(self) -> str:
        return self.endpoint + TRACES_PATH

    def server_args(self) -> list[str]:
        """Triton's OpenTelemetry mode. TIMESTAMPS level: a span per model with its compute span.
        Spans leave in batches every second (Triton's default of 5 s makes `infer --trace` wait), from
        a queue large enough for a second of a busy server (the default 2048 drops spans at ~200
        requests/s of a 5-step ensemble)."""
        return [
            "--trace-config",
            "mode=opentelemetry",
            "--trace-config",
            f"rate={self.rate}",
            "--trace-config",
            "level=TIMESTAMPS",
            "--trace-config",
            f"opentelemetry,url={self.traces_url}",
            "--trace-config",
            f"opentelemetry,resource=service.name={self.service}",
            "--trace-config",
            "opentelemetry,bsp_schedule_delay=1000",
            "--trace-config",
            "opentelemetry,bsp_max_queue_size=65536",
            "--trace-config",
            "opentelemetry,bsp_max_export_batch_size=4096",
        ]

    def environment(self) -> dict[str, str]:
        """What compound's runtime inside the server reads (templates/tracing.py)."""
        return {OTLP_ENDPOINT_ENV: self.endpoint, TRACE_SERVICE_ENV: self.service}


# Triton 2.51 (the embedded server) can free a trace while still holding its lock, when a traced
# request's last trace release drops the last reference (server#7795, fixed in 2.57 by server#8144):
# the heap corrupts and the server dies (SIGSEGV/SIGABRT). Measured here with every request traced
# under gRPC load at 16 clients: an ensemble died within seconds, a fused pipeline within 30 s; over
# HTTP, and at 1 request in 10 over gRPC, the server held for 60 s (docs/observability.md).
SAFE_TRACE_RATE = 1000


def tracing_warning(rate: int) -> Optional[str]:
    """Why tracing 1 request in `rate` may crash Triton 2.51 under load, or None for a small sample."""
    if rate >= SAFE_TRACE_RATE:
        return None
    return (
        f"--trace-rate {rate}: Triton 2.51 can crash (a race in its trace release, server#7795, fixed in 2.57) "
        "under sustained traced load, the sooner the more requests it traces: measured within seconds at rate 1 "
        f"and within a minute at rate 10; under sustained load use --trace-rate {SAFE_TRACE_RATE} or more (a "
        "request that sends a W3C traceparent is traced at any rate, so `compound infer --trace` still works)"
    )


def check_otlp_endpoint(url: str) -> str:
    """The collector's OTLP/HTTP base URL, from either form people give: the base URL, or the
    traces URL ending in /v1/traces (how Triton's trace config and most collectors' docs write it).
    The one place the form is settled: Triton is given base + /v1/traces (Tracing.traces_url),
    compound's runtime the base (COMPOUND_OTLP_ENDPOINT; templates/tracing.py appends the path).
    Anything but an http(s) URL with a host is a CompoundError naming --otlp-endpoint."""
    text = url.strip()
    scheme, _, rest = text.partition("://")
    if scheme not in ("http", "https") or not rest.split("/", 1)[0]:
        raise CompoundError(
            f"--otlp-endpoint {url!r} is not an OTLP/HTTP URL",
            hint="give the collector's URL, e.g. http://127.0.0.1:4318 or http://127.0.0.1:4318/v1/traces",
        )
    base = text.rstrip("/")
    if base.endswith(TRACES_PATH):
        base = base[: -len(TRACES_PATH)].rstrip("/")
    return base


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
        self.preflight()
        self.launch()
        try:
            self.wait_ready()
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
    def from_request(cls, request: DeployRequest, workdir: Path) -> TritonServer:
        """A server for `compound deploy`: detached from the CLI's process, files under `workdir`."""

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

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    caches = read_manifest(repository).get("tiered_cache", {})
    return sorted(name for name, cache in caches.items() if cache.get("redis"))


def check_redis_url(url: str) -> str:
    """The URL as given, if redis-py can use it; else a CompoundError naming --redis."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise CompoundError(
            f"--redis {url!r} is not a Redis URL", hint="give redis://HOST:PORT[/DB] (or rediss://, unix:///path)"
        )
    if scheme != "unix" and not url.split("://", 1)[1].split("/", 1)[0]:
        raise CompoundError(f"--redis {url!r} names no host", hint="give redis://HOST:PORT[/DB]")
    return url


def on_demand_models(repository: Path) -> list[str]:
    """Models that start unloaded (autoscale.min 0), from the repository's compound.json."""
    autoscale = read_manifest(repository).get("autoscale", {})
    return sorted(name for name, bounds in autoscale.items() if bounds.get("min") == 0)


def model_control_args(repository: Path) -> list[str]:
    """Explicit model control: the adaptive runtime loads, rescales and reloads models one by one.
    Every model is loaded at start but the on-demand ones, which the first request that needs them
    loads."""
    on_demand = set(on_demand_models(repository))
    versions = repository / VERSIONS_FILE
    if versions.is_file():  # updated: the version in service (toolkit/plan/versions.py), not every folder
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
    "local": "toolkit.deploy.local:LocalServer",
    "docker": "toolkit.deploy.docker:DockerServer",
    "kubernetes": "toolkit.deploy.kubernetes:KubernetesDeployment",
}


def target_class(target: str) -> type[TritonServer]:
    """The class that owns servers of one target, imported only when that target is used (the docker
    SDK and kubectl helpers stay out of a local deployment)."""
    where = TARGETS.get(target)
    if where is None:
        raise CompoundError(f"unknown target '{target}'", hint=f"use one of {', '.join(TARGETS)}")
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
