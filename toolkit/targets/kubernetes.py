"""The Kubernetes target: manifests for Triton serving a baked repository, applied with kubectl.

Rendered from templates/k8s/*.yaml.j2: a Deployment (probes on Triton's health endpoints, GPU limits
when any model is KIND_GPU), a Service, a Prometheus Operator PodMonitor and a KEDA ScaledObject that
scales on per-model queue signals; or, with kserve, a ServingRuntime + InferenceService instead.
`start()` applies them, waits for the rollout and port-forwards the Service to loopback so the rest
of compound (infer, loadtest) talks to the cluster as to a local server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from toolkit import __version__
from toolkit.core.errors import CompoundError, ServerError
from toolkit.core.system import free_port
from toolkit.observe.dashboard import dashboard_json, render_dashboard
from toolkit.targets.balancer import ENVOY_IMAGE, balancer_values
from toolkit.targets.docker import context_tag, default_base_image, gpu_models, render_build_context
from toolkit.targets.server import TritonServer, check_repository, new_api_key, triton_args, uses_response_cache
from toolkit.targets.settings import DeployRequest, Tracing, check_redis_url
from toolkit.targets.state import DeploymentState

KUBECTL_TIMEOUT_S = 60.0
DASHBOARD_FILE = "grafana-dashboard.json"
MISSING_CRD = {
    "ScaledObject": "install KEDA (https://keda.sh), or pass --no-autoscale",
    "PodMonitor": "install the Prometheus Operator, or pass --no-monitor",
    "ServingRuntime": "install KServe, or leave out --kserve",
    "InferenceService": "install KServe, or leave out --kserve",
}


@dataclass
class KubernetesOptions:
    """Everything about the cluster side; defaults suit a small CPU deployment."""

    name: str
    namespace: str = "default"
    image: Optional[str] = None  # default: [registry/]compound-<name>:<hash of the build context>, built locally
    registry: Optional[str] = None  # push the built image there (e.g. registry.example.com/team)
    base_image: Optional[str] = None
    image_pull_policy: str = "IfNotPresent"
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 4
    cpu: str = "2"
    memory: str = "4Gi"
    gpus_per_pod: int = 1
    shm_size: str = "1Gi"
    autoscale: bool = True
    monitor: bool = True
    kserve: bool = False
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    queue_target_us: int = 50_000  # mean queue wait of the worst model that triggers a scale-up
    pending_per_replica: int = 16
    window: str = "1m"
    scrape_interval: str = "15s"
    monitor_labels: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: int = 600
    exit_timeout_s: int = 30
    restrict_apis: bool = True  # model control, shared memory, logging, trace behind the Secret's key
    api_key: str = ""  # written into the Secret; generated when empty
    runtime: bool = True  # the adaptive runtime as a sidecar in each pod
    run_as_user: int = 1000  # the image's unprivileged user (templates/docker/Dockerfile.j2)
    redis_url: str = ""  # the shared tier of tiered caches; with redis_deployment: the one rendered here
    redis_deployment: bool = False  # render a Redis Deployment and Service beside Triton
    redis_image: str = "redis:7.4-alpine"
    redis_memory: str = "1Gi"
    tmp_size: str = "1Gi"  # the emptyDir at /tmp, the only path besides /dev/shm Triton writes to
    otlp_endpoint: str = ""  # OTLP/HTTP collector (base or /v1/traces URL) for Triton's and the runtime's spans
    trace_rate: int = 1
    balancer: bool = True  # Envoy in front of the pods (toolkit.targets.balancer): gRPC calls balanced one by one
    envoy_image: str = ENVOY_IMAGE
    envoy_replicas: int = 2
    cluster_domain: str = "cluster.local"  # the headless Service's DNS name ends in it


def pod_selector(name: str, namespace: str) -> str:
    """PromQL label matchers of the Deployment's pods (<name>-<replicaset hash>-<pod hash>), as
    Prometheus Operator labels their series: what the ScaledObject and the dashboard select."""
    return f'namespace="{namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"'


def k8s_name(text: str) -> str:
    """An RFC 1123 label: what Deployments, Services and CRs accept as a name."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].rstrip("-")
    if not name or not name[0].isalpha():
        name = f"compound-{name}".rstrip("-")[:63]
    return name


def default_image(repository: Path, options: KubernetesOptions) -> str:
    """The tag `ensure_image` gives the repository baked onto the base: stable across renders."""
    base = options.base_image or default_base_image()
    return context_tag(image_repository(options), render_build_context(base, repository=repository))


def image_repository(options: KubernetesOptions) -> str:
    prefix = f"{options.registry.rstrip('/')}/" if options.registry else ""
    return f"{prefix}compound-{k8s_name(options.name)}"


API_KEY_ENV = "COMPOUND_API_KEY"  # from the Secret; Kubernetes expands $(VAR) in args


def pod_triton_args(
    repository: Path, options: KubernetesOptions, *, http: int = 8000, grpc: int = 8001, metrics: int = 8002
) -> list[str]:
    """tritonserver's arguments in the pod; the key is read from the Secret through the environment."""
    key = f"$({API_KEY_ENV})" if options.restrict_apis else ""
    args = triton_args("/models", (http, grpc, metrics), api_key=key, exit_timeout_s=options.exit_timeout_s)
    if uses_response_cache(repository):
        args += ["--cache-config", "local,size=67108864"]
    tracing = pod_tracing(options)
    if tracing is not None:
        args += tracing.server_args()
    return args


def pod_tracing(options: KubernetesOptions) -> Optional[Tracing]:
    return Tracing(options.otlp_endpoint, options.trace_rate, options.name) if options.otlp_endpoint else None


def pod_cores(cpu: str) -> float:
    """A Kubernetes CPU quantity ("2", "1.5", "500m") in cores."""
    text = str(cpu).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise CompoundError(f"--cpu {cpu!r} is not a Kubernetes CPU quantity", hint="e.g. 2, 1.5 or 500m") from None


def pod_runtime_config(name: str, options: KubernetesOptions) -> dict[str, Any]:
    """The adaptive runtime's configuration inside a pod: the server on loopback, the repository baked
    at /models, the pod's CPU request as its budget, stubs found through the shared process namespace;
    no key here (it comes from the Secret through the environment)."""
    from toolkit.targets.state import RuntimeConfig

    config = RuntimeConfig(
        name=name,
        repository="/models",
        http_url="127.0.0.1:8000",
        grpc_url="127.0.0.1:8001",
        metrics_url="http://127.0.0.1:8002/metrics",
        api_key="",
        run_dir="/tmp/compound-runtime",  # noqa: S108 - the pod's own emptyDir at /tmp
        cores=pod_cores(options.cpu),
        gpus=options.gpus_per_pod,
        stubs="proc",
        otlp_endpoint=tracing.endpoint if (tracing := pod_tracing(options)) else "",
    )
    return {key: value for key, value in vars(config).items() if key not in ("api_key", "state_file")}


def pod_redis_url(name: str, options: KubernetesOptions) -> str:
    """What the pods' COMPOUND_REDIS_URL says: the given URL, else the Redis rendered beside them."""
    if options.redis_url:
        return check_redis_url(options.redis_url)
    if options.redis_deployment:
        return f"redis://{name}-redis.{options.namespace}.svc:6379/0"
    return ""


def redis_maxmemory(limit: str) -> str:
    """Redis' maxmemory at 80% of the container's limit (LRU eviction before the OOM killer)."""
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}
    for suffix, factor in units.items():
        if limit.endswith(suffix) and limit[: -len(suffix)].isdigit():
            return str(int(int(limit[: -len(suffix)]) * factor * 0.8))
    if limit.isdigit():
        return str(int(int(limit) * 0.8))
    raise CompoundError(f"redis memory {limit!r} is not a Kubernetes quantity", hint="give e.g. 512Mi or 2Gi")


def render_manifests(repository: str | Path, options: KubernetesOptions) -> dict[str, str]:
    """File name -> YAML text. Every document is parsed back before anything is returned."""
    from toolkit.repository.manifest import Manifest
    from toolkit.repository.render import template_env

    repo = Path(repository).resolve()
    check_repository(repo)
    if options.min_replicas > options.max_replicas:
        raise CompoundError(f"--min-replicas {options.min_replicas} is above --max-replicas {options.max_replicas}")
    name = k8s_name(options.name)
    manifest = Manifest.read(repo, missing_ok=True)
    gpu = gpu_models(repo)
    image = options.image or default_image(repo, options)
    tracing = pod_tracing(options)
    selector = {"app.kubernetes.io/name": "tritonserver", "app.kubernetes.io/instance": name}
    labels = {**selector, "app.kubernetes.io/managed-by": "compound", "app.kubernetes.io/version": __version__}
    scaled_models = (
        list(manifest.models)
        + [p for p, v in manifest.pipelines.items() if v.kind != "ensemble"]
        + list(manifest.fused_groups)
    )  # Python models that queue
    model_match = f',model=~"{"|".join(scaled_models)}"' if scaled_models else ""
    pods = pod_selector(name, options.namespace)
    values: dict[str, Any] = {
        "version": __version__,
        "source": manifest.spec or repo.name,
        "name": name,
        "runtime_name": f"{name}-triton",
        "namespace": options.namespace,
        "labels": labels,
        "selector": selector,
        "monitor_labels": {**labels, **options.monitor_labels},
        "image": image,
        "image_pull_policy": options.image_pull_policy,
        "replicas": options.replicas,
        "min_replicas": options.min_replicas,
        "max_replicas": options.max_replicas,
        "args": pod_triton_args(repo, options),
        "kserve_args": pod_triton_args(repo, options, http=8080, grpc=9000),
        "cpu": options.cpu,
        "memory": options.memory,
        "gpus": options.gpus_per_pod if gpu else 0,
        "gpu_models": gpu,
        "shm_size": options.shm_size,
        "startup_failure_threshold": max(1, options.startup_timeout_s // 5),
        "exit_timeout_s": options.exit_timeout_s,
        "repository_digest": image.rsplit(":", 1)[-1],
        "prometheus_url": options.prometheus_url,
        "queue_target_us": options.queue_target_us,
        "pending_per_replica": options.pending_per_replica,
        "window": options.window,
        "scrape_interval": options.scrape_interval,
        "selector_promql": pods + model_match,
        "run_as_user": options.run_as_user,
        "tmp_size": options.tmp_size,
        "secret_name": f"{name}-key" if options.restrict_apis else "",
        "api_key": options.api_key or new_api_key(),
        "runtime_args": ["--inline", json.dumps(pod_runtime_config(name, options))] if options.runtime else [],
        "redis_name": f"{name}-redis",
        "redis_url": pod_redis_url(name, options),
        "trace_env": sorted(tracing.environment().items()) if tracing is not None else [],
        "redis_image": options.redis_image,
        "redis_memory": options.redis_memory,
        "redis_maxmemory": redis_maxmemory(options.redis_memory),
    }
    env = template_env()
    env.filters["q"] = lambda value: json.dumps(str(value), ensure_ascii=False)
    values["balancer"] = options.balancer and not options.kserve
    if values["balancer"]:
        values.update(
            balancer_values(
                env,
                values,
                image=options.envoy_image,
                replicas=options.envoy_replicas,
                cluster_domain=options.cluster_domain,
            )
        )
    if options.kserve:
        wanted = ["kserve"]
    else:
        wanted = (
            ["deployment", "service"]
            + (["envoy-deployment"] if values["balancer"] else [])
            + (["secret"] if options.restrict_apis else [])
            + (["podmonitor"] if options.monitor else [])
            + (["scaledobject"] if options.autoscale else [])
            + (["redis"] if options.redis_deployment else [])
        )
    files = {f"{stem}.yaml": env.get_template(f"k8s/{stem}.yaml.j2").render(**values) for stem in wanted}
    if options.monitor and not options.kserve:
        dashboard = render_dashboard(name, manifest, pods)
        values["dashboard"] = dashboard_json(dashboard)
        values["dashboard_file"] = DASHBOARD_FILE
        files["grafana-dashboard.yaml"] = env.get_template("k8s/grafana-dashboard.yaml.j2").render(**values)
    files["kustomization.yaml"] = (
        f"# Generated by compound {__version__}: `kubectl apply -k` this folder (what `compound deploy` runs).\n"
        + yaml.safe_dump(
            {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": sorted(files)},
            sort_keys=False,
        )
    )
    if options.monitor and not options.kserve:
        files[DASHBOARD_FILE] = values["dashboard"]  # for Grafana's "Import dashboard"; not a resource
    for file_name, text in files.items():
        if file_name == DASHBOARD_FILE:
            continue
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise CompoundError(f"internal error: rendered {file_name} is not valid YAML: {exc}") from None
        if not documents or not all(isinstance(d, dict) and d.get("kind") for d in documents):
            raise CompoundError(f"internal error: rendered {file_name} holds no Kubernetes object")
    return files


def write_manifests(files: dict[str, str], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.yaml"), *out.glob(DASHBOARD_FILE)]:
        if stale.name not in files and "compound" in stale.read_text(errors="replace")[:200]:
            stale.unlink()  # a manifest an earlier render wrote (e.g. before --no-autoscale)
    for file_name, text in files.items():
        target = out / file_name
        if file_name == "secret.yaml":  # holds the deployment's key
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        else:
            target.write_text(text)
    return out


def kubectl(
    args: list[str], *, context: Optional[str] = None, timeout_s: float = KUBECTL_TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kubectl")
    if binary is None:
        raise CompoundError(
            "kubectl is not installed",
            hint="install it (https://kubernetes.io/docs/tasks/tools/), or use --dry-run to write the manifests only",
        )
    argv = [binary, *(["--context", context] if context else []), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CompoundError(
            f"`kubectl {' '.join(args)}` did not finish in {timeout_s:.0f} s",
            hint="check the cluster, or use --dry-run",
        ) from None
    if check and done.returncode != 0:
        raise CompoundError(
            f"`kubectl {' '.join(args)}` failed: {(done.stderr or done.stdout).strip()}", hint=_crd_hint(done.stderr)
        )
    return done


def _crd_hint(stderr: str) -> Optional[str]:
    for kind, hint in MISSING_CRD.items():
        if f'kind "{kind}"' in stderr or f"kind {kind}" in stderr:
            return hint
    return None


def cluster_reachable(context: Optional[str] = None) -> tuple[bool, str]:
    """Whether kubectl's current (or named) context answers, and if not, why."""
    done = kubectl(["get", "--raw", "/readyz", "--request-timeout=5s"], context=context, timeout_s=15, check=False)
    lines = (done.stderr or done.stdout).strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else ""


class KubernetesDeployment(TritonServer):
    """Owns one applied set of manifests and a kubectl port-forward to its Service."""

    target = "kubernetes"

    def __init__(
        self,
        repository: str | Path,
        options: KubernetesOptions,
        *,
        manifests_dir: Optional[str | Path] = None,
        context: Optional[str] = None,
        build: bool = True,
        host: str = "127.0.0.1",
        http_port: Optional[int] = None,
        grpc_port: Optional[int] = None,
        metrics_port: Optional[int] = None,
        log_path: Optional[str | Path] = None,
        detach: bool = False,
        delete_on_stop: bool = True,
    ) -> None:
        name = k8s_name(options.name)
        manifests = Path(manifests_dir) if manifests_dir else Path(tempfile.mkdtemp(prefix=f"compound-k8s-{name}-"))
        super().__init__(
            repository,
            host=host,
            http_port=http_port or free_port(host),
            grpc_port=grpc_port or free_port(host),
            metrics_port=metrics_port or free_port(host),
            log_path=Path(log_path) if log_path else manifests / "port-forward.log",
            ready_timeout_s=60.0,
            detach=detach,
            api_key=options.api_key or None,
        )
        self.log_path: Path
        self.options = options
        self.options.api_key = self.api_key if options.restrict_apis else ""
        self.name = name
        self.manifests_dir = manifests
        self.context = context
        self.build = build
        self.delete_on_stop = delete_on_stop
        self.port_forward: Optional[subprocess.Popen[bytes]] = None
        self.applied = False

    def render(self) -> Path:
        """Write the manifests only (what --dry-run does)."""
        return write_manifests(render_manifests(self.repository, self.options), self.manifests_dir)

    def preflight(self) -> None:
        super().preflight()
        if self.options.kserve:
            raise CompoundError(
                "--kserve writes the ServingRuntime and InferenceService only",
                hint="add --dry-run, then `kubectl apply -k` the manifests folder",
            )
        reachable, why = cluster_reachable(self.context)
        if not reachable:
            raise CompoundError(
                f"no Kubernetes cluster is reachable through kubectl ({why or 'no answer'})",
                hint="set KUBECONFIG or --context, or pass --dry-run to only write the manifests (to --manifests-dir)",
            )

    def launch(self) -> None:
        """Build (and push) the image, apply, wait for the rollout, port-forward."""
        if self.options.image is None:
            self.options.image = self._build_image()
        self.render()
        kubectl(["apply", "-k", str(self.manifests_dir)], context=self.context)
        self.applied = True
        rollout = [
            "rollout",
            "status",
            f"deployment/{self.name}",
            "-n",
            self.options.namespace,
            f"--timeout={self.options.startup_timeout_s}s",
        ]
        kubectl(rollout, context=self.context, timeout_s=self.options.startup_timeout_s + 30)
        self._port_forward()

    def launch_failure(self) -> Optional[CompoundError]:
        if self.port_forward is not None and self.port_forward.poll() is not None:
            return ServerError("kubectl port-forward exited", _tail(self.log_path), hint=f"log: {self.log_path}")
        return None

    def stop(self) -> None:
        if self.port_forward is not None:
            if self.port_forward.poll() is None:
                self.port_forward.terminate()
                try:
                    self.port_forward.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.port_forward.kill()
                    self.port_forward.wait()
            self.port_forward = None
        if self.applied and self.delete_on_stop:
            kubectl(
                ["delete", "-k", str(self.manifests_dir), "--ignore-not-found", "--wait=false"],
                context=self.context,
                check=False,
            )
            self.applied = False

    def log_tail(self, lines: int = 40) -> str:
        return deployment_log_tail(self.name, self.options.namespace, self.context, lines)

    def alive(self) -> bool:
        return self.port_forward is not None and self.port_forward.poll() is None

    def describe(self) -> str:
        return f"`kubectl logs deployment/{self.name} -n {self.options.namespace}`"

    @classmethod
    def from_request(
        cls, request: DeployRequest, workdir: Optional[Path] = None, replica: Optional[int] = None
    ) -> KubernetesDeployment:
        """Also what --dry-run renders from (no workdir: the manifests go where the request says)."""
        options = KubernetesOptions(
            name=request.name,
            image=request.image,
            base_image=request.base_image,
            startup_timeout_s=int(request.ready_timeout_s),
            redis_url=request.redis_url or "",
            otlp_endpoint=request.otlp_endpoint or "",
            trace_rate=request.trace_rate,
            # DeployRequest.kubernetes is dict[str, object]: the fields are checked by KubernetesOptions' __init__
            **request.kubernetes,  # type: ignore[arg-type]
        )
        return cls(
            request.repository,
            options,
            manifests_dir=request.manifests_dir or (workdir / "manifests" if workdir else None),
            context=request.context,
            host=request.host,
            http_port=request.http_port,
            grpc_port=request.grpc_port,
            metrics_port=request.metrics_port,
            log_path=(workdir / "port-forward.log") if workdir else None,
            detach=True,
            delete_on_stop=True,
        )

    def record(self, state: DeploymentState) -> None:
        state.pid, state.log_path = self.port_forward_pid, str(self.log_path)
        state.extra.update(
            manifests=str(self.manifests_dir),
            namespace=self.options.namespace,
            k8s_name=self.name,
            image=str(self.options.image),
            balancer="true" if self.options.balancer else "",
        )
        if self.context:
            state.extra["context"] = self.context

    @classmethod
    def recorded_running(cls, state: DeploymentState) -> bool:
        return port_forward_running(state.pid)

    @classmethod
    def recorded_log_tail(cls, state: DeploymentState, lines: int) -> str:
        return deployment_log_tail(state.extra["k8s_name"], state.extra["namespace"], state.extra.get("context"), lines)

    @classmethod
    def stop_recorded(cls, state: DeploymentState) -> bool:
        running = port_forward_running(state.pid)
        stop_recorded(state.extra["manifests"], state.pid, state.extra.get("context"))
        return running

    def _build_image(self) -> str:
        from toolkit.targets.docker import connect, ensure_image

        if not self.build:
            raise CompoundError(
                "no --image given, and this deployment was told not to build one",
                hint="pass --image REGISTRY/NAME:TAG that the cluster can pull",
            )
        client = connect()
        base = self.options.base_image or default_base_image()
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        tag = ensure_image(
            client,
            base,
            name=image_repository(self.options),
            repository=self.repository,
            log_path=self.manifests_dir / "docker-build.log",
        )
        if self.options.registry:
            repository, version = tag.rsplit(":", 1)
            for line in client.images.push(repository, version, stream=True, decode=True):
                if "error" in line:
                    raise CompoundError(
                        f"pushing {tag} failed: {line['error']}",
                        hint=f"`docker login {self.options.registry.split('/')[0]}`, "
                        "or push it yourself and pass --image",
                    )
        return tag

    def _port_forward(self) -> None:
        kubectl_bin = shutil.which("kubectl") or "kubectl"
        argv = [
            kubectl_bin,
            *(["--context", self.context] if self.context else []),
            "port-forward",
            "-n",
            self.options.namespace,
            f"service/{self.name}",
            f"{self.endpoints.http_port}:8000",
            f"{self.endpoints.grpc_port}:8001",
            f"{self.endpoints.metrics_port}:8002",
            "--address",
            self.endpoints.host,
        ]
        with open(self.log_path, "ab") as log:
            self.port_forward = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.detach
            )

    @property
    def port_forward_pid(self) -> Optional[int]:
        return self.port_forward.pid if self.port_forward else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# Helpers for `compound status|logs|stop` on a deployment recorded with target kubernetes.


def port_forward_running(pid: Optional[int]) -> bool:
    """Whether pid is still our `kubectl port-forward` (not a process that reused the pid)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            parts = cmdline.read().split(b"\0")
    except OSError:
        return False
    return any(p.endswith(b"kubectl") for p in parts) and b"port-forward" in parts


def deployment_log_tail(name: str, namespace: str, context: Optional[str] = None, lines: int = 50) -> str:
    done = kubectl(["logs", "-n", namespace, f"deployment/{name}", f"--tail={lines}"], context=context, check=False)
    return done.stdout or done.stderr


def stop_recorded(manifests_dir: str, port_forward_pid: Optional[int], context: Optional[str] = None) -> None:
    """`compound stop` for target kubernetes: end the port-forward, delete what was applied."""
    if port_forward_pid is not None and port_forward_running(port_forward_pid):
        try:
            os.kill(port_forward_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if Path(manifests_dir).is_dir():
        kubectl(["delete", "-k", manifests_dir, "--ignore-not-found", "--wait=false"], context=context, check=False)
