"""What a deployment is asked for: its endpoints, tracing and cache settings, and `DeployRequest`,
the whole of `compound deploy`'s options. Checked here, before anything starts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from toolkit.core.errors import CompoundError
from toolkit.observe.tracing import TRACES_PATH

Target = Literal["local", "docker", "kubernetes"]
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
    # the adaptive runtime (local, docker): scales on by default; static deployments keep their instance
    # counts (the runtime still restarts a crashed server)
    runtime: bool = True
    cores: Optional[float] = None  # the cores the runtime may fill (default: those this process may use)
    gpu_budget: Optional[int] = None
    price_per_core_hour: float = 0.0  # what a reserved core costs an hour (0: core-seconds, unpriced)
    price_per_gpu_hour: float = 0.0
    # the shared tier of components' tiered caches (local, docker, kubernetes)
    redis_url: Optional[str] = None
    # OpenTelemetry tracing (local, docker, kubernetes): Triton's spans and the runtime's, 1 in trace_rate
    otlp_endpoint: Optional[str] = None
    trace_rate: int = 1
    # local and docker: N servers behind an L7 proxy on the public HTTP and gRPC ports (None: one server, no proxy)
    replicas: Optional[int] = None
    # the deployment's key: None makes a new one (a server restarted by the runtime keeps the old one)
    api_key: Optional[str] = None

    def __post_init__(self) -> None:
        """The endpoint as its base URL, so that the server and the adaptive runtime, each handed it
        on its own, agree whichever form was given."""
        if self.otlp_endpoint:
            self.otlp_endpoint = check_otlp_endpoint(self.otlp_endpoint)

    def server_options(self) -> dict[str, Any]:
        """The keyword arguments every TritonServer takes, as asked for."""
        return {
            "api_key": self.api_key,
            "host": self.host,
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "ready_timeout_s": self.ready_timeout_s,
            "redis_url": self.redis_url,
            "tracing": Tracing(self.otlp_endpoint, self.trace_rate, self.name) if self.otlp_endpoint else None,
        }


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


REQUEST_FILE = "request.json"


def save_request(request: DeployRequest, run_dir: Path) -> Path:
    """What the deployment was asked for, kept in its run folder so that the runtime can start a
    crashed server again exactly as `compound deploy` did (the key stays in the state file only)."""
    values = {name: getattr(request, name) for name in request.__dataclass_fields__}
    values.update(repository=str(request.repository), pip=list(request.pip), api_key=None)
    values["manifests_dir"] = str(request.manifests_dir) if request.manifests_dir else None
    path = run_dir / REQUEST_FILE
    path.write_text(json.dumps(values, indent=2, sort_keys=True, default=str))
    return path


def load_request(run_dir: Path) -> DeployRequest:
    values = json.loads((run_dir / REQUEST_FILE).read_text())
    values["repository"] = Path(values["repository"])
    if values.get("manifests_dir"):
        values["manifests_dir"] = Path(values["manifests_dir"])
    return DeployRequest(**values)
