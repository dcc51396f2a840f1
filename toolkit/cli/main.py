"""The `compound` command: a thin layer that parses, calls the library and prints.

Every user-facing failure is a CompoundError, turned into one message and a non-zero exit here.
"""

from __future__ import annotations

import importlib
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from toolkit import __version__
from toolkit.cli.options import name_option
from toolkit.core.errors import CompoundError

if TYPE_CHECKING:
    from toolkit.deployment.deployment import Deployment
    from toolkit.targets.settings import DeployRequest, Target

PORT = click.IntRange(1, 65535)


class _Group(click.Group):
    """Maps CompoundError to a clean message and its exit code (2 for spec problems), and imports the
    commands that live beside their stage (loadtest, bench) only when they run or are listed, so
    `compound --version` and the light commands stay quick."""

    lazy_commands = {
        "loadtest": "toolkit.cli.loadtest:loadtest",
        "bench": "toolkit.cli.bench:bench",
        "update": "toolkit.cli.update:update",
        "promote": "toolkit.cli.update:promote",
        "rollback": "toolkit.cli.update:rollback",
        "tune": "toolkit.cli.tune:tune",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name in self.lazy_commands:
            module, name = self.lazy_commands[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module), name)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CompoundError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="compound")
def cli() -> None:
    """Compound AI pipelines to NVIDIA Triton deployments, proven under load."""


def _plan(spec: str, device: str) -> Any:
    from toolkit.plan import plan_spec

    plan = plan_spec(spec, device)  # type: ignore[arg-type]
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    return plan


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--device",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help="Where `instances.kind: auto` models run.",
)
def validate(spec: str, device: str) -> None:
    """Check SPEC and report every problem found (exit 2 if any)."""
    plan = _plan(spec, device)
    click.echo(f"{spec}: ok — deployment '{plan.name}', {len(plan.models)} model(s), {len(plan.pipelines)} pipeline(s)")
    for name, pipeline in sorted(plan.pipelines.items()):
        click.echo(f"  {name}: {pipeline.kind} — {pipeline.reason}")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Repository folder to write (replaced atomically).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help="Instance kind for `instances.kind: auto` models (KIND_CPU or KIND_GPU).",
)
@click.option(
    "--tune",
    "tune_budget",
    is_flag=False,
    flag_value="10m",
    default=None,
    help="Tune first (`compound tune`, all static pipelines, all cores; optional budget, default 10m), write "
    "SPEC's folder/<stem>.tuned.yaml and its report, and generate from it.",
)
def generate(spec: str, out_dir: str, device: str, tune_budget: Optional[str]) -> None:
    """Write a Triton model repository for SPEC into OUT_DIR."""
    from toolkit.repository.render import render_files, write_repository

    if tune_budget is not None:
        from toolkit.cli.tune import run_tune
        from toolkit.tune.search import tuned_spec_path

        tuned = tuned_spec_path(Path(spec))
        run_tune(Path(spec), tuned, gpus=1 if device == "gpu" else 0, budget=tune_budget)
        spec = str(tuned)
    plan = _plan(spec, device)
    files = render_files(plan)
    written = write_repository(files, out_dir)
    for name, pipeline in sorted(plan.pipelines.items()):
        click.echo(f"{name}: {pipeline.kind} ({pipeline.reason})")
    click.echo(f"wrote {written} ({len(plan.models)} model(s), {len(plan.pipelines)} pipeline(s), {len(files)} files)")


def _ports(func: Any) -> Any:
    func = click.option("--metrics-port", type=PORT, default=8002, show_default=True)(func)
    func = click.option("--grpc-port", type=PORT, default=8001, show_default=True)(func)
    func = click.option("--http-port", type=PORT, default=8000, show_default=True)(func)
    func = click.option("--host", default="127.0.0.1", show_default=True, help="Address the server binds to.")(func)
    return func


def _deployment_name(repository: Path) -> str:
    from toolkit.repository.manifest import Manifest

    return str(
        Manifest.read(repository, missing_ok=True).deployment
        or re.sub(r"[^a-z0-9_-]", "-", repository.name.lower())
        or "default"
    )


def _reject_other_targets_options(ctx: click.Context, target: str) -> None:
    """A flag given for another target is a mistake worth naming, not something to ignore."""
    for param in ctx.command.params:
        scope = re.match(r"\[([a-z, ]+)\]", getattr(param, "help", None) or "")
        if (
            scope
            and target not in scope.group(1)
            and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE
        ):
            raise CompoundError(
                f"{param.opts[0]} applies to --target {scope.group(1).replace(', ', ' or ')}, not {target}"
            )


@cli.command()
@click.argument("repository", type=click.Path(file_okay=False))
@click.option(
    "--target",
    type=click.Choice(["local", "docker", "kubernetes"]),
    default="local",
    show_default=True,
    help="local: the embedded tritonserver; docker: one container (Docker SDK); kubernetes: kubectl apply.",
)
@_ports
@name_option("Deployment name (default: the spec's name).")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=180.0,
    show_default=True,
    help="Seconds to wait until every model is ready.",
)
@click.option(
    "--adaptive/--static",
    "runtime",
    default=True,
    show_default=True,
    help="[local, docker] Let the adaptive runtime beside the server change the models (autoscaling, on-demand "
    "models, self-healing); --static keeps the counts the spec names. Either way the runtime restarts a "
    "crashed server and accounts the cost.",
)
@click.option(
    "--cores",
    type=click.FloatRange(min=0.5),
    default=None,
    help="[local, docker] Cores the runtime may fill with instances  [default: the cores this machine lets us use]",
)
@click.option(
    "--gpu-budget",
    type=click.IntRange(0),
    default=None,
    help="[local, docker] GPU instances the runtime may run in all (KIND_GPU components)  "
    "[default: each model's autoscale.max only]",
)
@click.option(
    "--price-per-core-hour",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="PRICE",
    help="[local, docker] What a reserved core costs an hour: `compound status` prices the runtime's core-seconds "
    "and shows the cost per 1,000 requests",
)
@click.option(
    "--price-per-gpu-hour",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="PRICE",
    help="[local, docker] What a GPU costs an hour (the runtime's GPU-seconds), as --price-per-core-hour",
)
@click.option(
    "--redis",
    "redis_url",
    default=None,
    metavar="URL",
    help="Redis shared by the tiered caches of components with `cache: {redis: true}` (redis://HOST:PORT[/DB]); "
    "from a bridge-networked container, 127.0.0.1 is the container itself.",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    metavar="URL",
    help="OpenTelemetry collector, its OTLP/HTTP base URL or its traces URL (http://127.0.0.1:4318 or "
    "http://127.0.0.1:4318/v1/traces: the same collector): Triton's spans and the runtime's (fused steps, "
    "orchestrator calls, cache lookups) go to its /v1/traces. From a bridge-networked container, 127.0.0.1 is "
    "the container itself.",
)
@click.option(
    "--trace-rate",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="With --otlp-endpoint: trace 1 request in N.",
)
@click.option(
    "--redis-deployment",
    is_flag=True,
    help="[kubernetes] Also render a Redis Deployment and Service, and point the pods at it (unless --redis).",
)
@click.option("--image", default=None, help="[docker, kubernetes] Use this image instead of building one.")
@click.option(
    "--base-image",
    default=None,
    help="[docker, kubernetes] Base for the built image (default: the NGC tritonserver matching the wheel).",
)
@click.option(
    "--pip",
    "pip_requirements",
    multiple=True,
    metavar="REQUIREMENT",
    help="[docker] Extra pip requirement for your handlers. Repeatable.",
)
@click.option(
    "--network",
    type=click.Choice(["bridge", "host"]),
    default="bridge",
    show_default=True,
    help="[docker] bridge publishes the ports on --host; host shares the host's network.",
)
@click.option(
    "--gpus/--no-gpus", default=None, help="[docker] Give the container the GPUs (default: when a model is KIND_GPU)."
)
@click.option("--namespace", default="default", show_default=True, help="[kubernetes]")
@click.option("--context", default=None, help="[kubernetes] kubectl context (default: the current one).")
@click.option("--registry", default=None, help="[kubernetes] Push the built image here (e.g. ghcr.io/me).")
@click.option("--dry-run", is_flag=True, help="[kubernetes] Only write the manifests (to --manifests-dir).")
@click.option(
    "--manifests-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="[kubernetes] Where the manifests go (default with --dry-run: ./<name>-k8s).",
)
@click.option(
    "--replicas",
    type=click.IntRange(1),
    default=None,
    help="[local, docker, kubernetes] local/docker: N servers on their own ports behind an Envoy proxy on the "
    "public HTTP and gRPC ports (per-request balancing, health checks, retry on another replica); kubernetes: "
    "pods without autoscaling (default 1).",
)
@click.option(
    "--min-replicas", type=click.IntRange(0), default=1, show_default=True, help="[kubernetes] KEDA lower bound."
)
@click.option(
    "--max-replicas", type=click.IntRange(1), default=4, show_default=True, help="[kubernetes] KEDA upper bound."
)
@click.option("--cpu", default="2", show_default=True, help="[kubernetes] CPU request per pod.")
@click.option("--memory", default="4Gi", show_default=True, help="[kubernetes] Memory request and limit per pod.")
@click.option(
    "--gpus-per-pod",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="[kubernetes] nvidia.com/gpu per pod when a model is KIND_GPU.",
)
@click.option(
    "--queue-target-us",
    type=click.IntRange(1),
    default=50_000,
    show_default=True,
    help="[kubernetes] Scale up when the worst model's mean queue wait exceeds this.",
)
@click.option(
    "--prometheus-url",
    default="http://prometheus-operated.monitoring.svc:9090",
    show_default=True,
    help="[kubernetes] Prometheus that KEDA queries.",
)
@click.option(
    "--autoscale/--no-autoscale", default=True, show_default=True, help="[kubernetes] Write a KEDA ScaledObject."
)
@click.option(
    "--monitor/--no-monitor",
    default=True,
    show_default=True,
    help="[kubernetes] Write a Prometheus Operator PodMonitor.",
)
@click.option(
    "--balancer/--no-balancer",
    default=True,
    show_default=True,
    help="[kubernetes] Put Envoy in front of the pods, balancing every request (gRPC calls one by one, not "
    "connections) over the ready pods, with health checks and retries on another pod.",
)
@click.option(
    "--envoy-image",
    default="envoyproxy/envoy:v1.40-latest",
    show_default=True,
    help="[kubernetes] The balancer's Envoy image.",
)
@click.option(
    "--kserve",
    is_flag=True,
    help="[kubernetes] Write a KServe ServingRuntime + InferenceService instead (with --dry-run).",
)
def deploy(
    repository: str,
    target: Target,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    name: Optional[str],
    timeout_s: float,
    **options: Any,
) -> None:
    """Start Triton on REPOSITORY in the background and wait until every model is warm and ready."""
    from toolkit.deployment import deployment as deployments
    from toolkit.targets.server import check_repository
    from toolkit.targets.settings import DeployRequest, check_otlp_endpoint, check_redis_url

    _reject_other_targets_options(click.get_current_context(), target)
    repo = Path(repository).resolve()
    check_repository(repo)
    name = name or _deployment_name(repo)
    kubernetes = {
        key: options[key]
        for key in (
            "namespace",
            "registry",
            "replicas",
            "min_replicas",
            "max_replicas",
            "cpu",
            "memory",
            "gpus_per_pod",
            "queue_target_us",
            "prometheus_url",
            "autoscale",
            "monitor",
            "kserve",
            "redis_deployment",
            "balancer",
            "envoy_image",
        )
    }
    if target == "kubernetes" and kubernetes["replicas"] is None:
        kubernetes["replicas"] = 1
    request = DeployRequest(
        repository=repo,
        name=name,
        replicas=options["replicas"] if target != "kubernetes" else None,
        target=target,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        ready_timeout_s=timeout_s,
        image=options["image"],
        base_image=options["base_image"],
        network=options["network"],
        gpus=options["gpus"],
        pip=options["pip_requirements"],
        kubernetes=kubernetes,
        context=options["context"],
        manifests_dir=options["manifests_dir"],
        runtime=options["runtime"],
        cores=options["cores"],
        gpu_budget=options["gpu_budget"],
        price_per_core_hour=options["price_per_core_hour"],
        price_per_gpu_hour=options["price_per_gpu_hour"],
        redis_url=check_redis_url(options["redis_url"]) if options["redis_url"] else None,
        otlp_endpoint=check_otlp_endpoint(options["otlp_endpoint"]) if options["otlp_endpoint"] else None,
        trace_rate=options["trace_rate"],
    )
    _warn_about_redis(repo, request)
    _warn_about_trace_rate(request.otlp_endpoint, request.trace_rate)
    if options["dry_run"]:
        if target != "kubernetes":
            raise CompoundError("--dry-run only applies to --target kubernetes")
        from toolkit.targets.kubernetes import KubernetesDeployment

        request.manifests_dir = request.manifests_dir or Path.cwd() / f"{name}-k8s"
        cluster = KubernetesDeployment.from_request(request)
        written = cluster.render()
        click.echo(f"wrote {written} ({', '.join(sorted(p.name for p in written.iterdir()))})")
        if options["image"] is None:
            click.echo(
                f"note: the manifests name image {cluster.options.image}, which --dry-run did not build or push; "
                "pass --image with one the cluster can pull, or deploy without --dry-run (it builds the image, "
                "and pushes it with --registry)",
                err=True,
            )
        click.echo(f"next: kubectl apply -k {written}")
        return
    click.echo(f"starting '{name}' on target {target} ...")
    started = time.monotonic()
    state = deployments.Deployment.start(request).state
    click.echo(
        f"'{name}' ready in {time.monotonic() - started:.1f} s: {state.endpoints.describe()} (log: {state.log_path})"
    )
    click.echo(
        "next: compound infer PIPELINE --url " + state.endpoints.http_url + " --input NAME=VALUE;  compound stop"
    )


def _warn_about_trace_rate(otlp_endpoint: Optional[str], rate: int) -> None:
    """Tracing every request can crash Triton 2.51 under load: a line, not a refusal (it is fine for
    light traffic, and the way to debug requests one by one)."""
    from toolkit.targets.settings import tracing_warning

    warning = tracing_warning(rate) if otlp_endpoint else None
    if warning:
        click.echo(f"warning: {warning}", err=True)


def _warn_about_redis(repository: Path, request: DeployRequest) -> None:
    """A Redis tier nobody can reach, or a Redis nobody uses: worth a line, not a refusal (the cache
    works without its shared tier)."""
    from toolkit.targets.server import redis_cached_models

    wanting = redis_cached_models(repository)
    has_redis = request.redis_url or request.kubernetes.get("redis_deployment")
    if wanting and not has_redis:
        click.echo(
            f"warning: {', '.join(wanting)} cache(s) in Redis but no --redis was given: memory tier only", err=True
        )
    elif has_redis and not wanting:
        click.echo("warning: --redis given, but no component has `cache: {redis: true}`: nothing will use it", err=True)


@cli.command()
@click.argument("repository", type=click.Path(file_okay=False))
@_ports
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=180.0,
    show_default=True,
    help="Seconds to wait until every model is ready.",
)
@click.option("--redis", "redis_url", default=None, metavar="URL", help="Redis for the tiered caches (see deploy).")
@click.option("--otlp-endpoint", default=None, metavar="URL", help="OpenTelemetry collector (see deploy).")
@click.option("--trace-rate", type=click.IntRange(1), default=1, show_default=True, help="Trace 1 request in N.")
def serve(
    repository: str,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    timeout_s: float,
    redis_url: Optional[str],
    otlp_endpoint: Optional[str],
    trace_rate: int,
) -> None:
    """Run Triton on REPOSITORY in the foreground until Ctrl-C."""
    from toolkit.targets.local import LocalServer
    from toolkit.targets.settings import Tracing

    _warn_about_trace_rate(otlp_endpoint, trace_rate)
    server = LocalServer(
        repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        ready_timeout_s=timeout_s,
        redis_url=redis_url,
        tracing=Tracing(otlp_endpoint, trace_rate, _deployment_name(Path(repository))) if otlp_endpoint else None,
    )
    with server:
        click.echo(f"ready: {server.endpoints.describe()} (log: {server.log_path}); Ctrl-C stops")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while server.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            click.echo("stopping ...")
            return
        raise CompoundError("tritonserver exited unexpectedly", hint=f"log tail:\n{server.log_tail()}")


def _chosen(name: Optional[str]) -> Optional[Deployment]:
    """The named deployment, or the only one recorded; None (after listing them, as `docker ps`
    does) when several are recorded and none was named."""
    from toolkit.deployment import deployment as deployments

    if name is not None:
        return deployments.Deployment.find(name)
    recorded = deployments.Deployment.recorded()
    if len(recorded) == 1:
        return recorded[0]
    if not recorded:
        return deployments.Deployment.find(None)  # the usual error: nothing is recorded
    _list_deployments(recorded)
    return None


def _list_deployments(recorded: list[Deployment]) -> None:
    rows = [("NAME", "TARGET", "CONDITION", "ENDPOINTS")]
    for deployment in recorded:
        condition = "running" if deployment.running() else "not running"
        rows.append((deployment.name, deployment.state.target, condition, deployment.endpoints.describe()))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])


@cli.command()
@name_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts and dashboards).")
def status(name: Optional[str], as_json: bool) -> None:
    """Show whether the recorded deployment runs and how each model is (exit 1 if the server does not
    run, 3 if it runs but a model does not serve). With several deployments and no --name: list them."""
    deployment = _chosen(name)
    if deployment is None:
        if as_json:
            raise CompoundError("several deployments are recorded", hint="name one with --name")
        return
    report = deployment.status()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
        sys.exit(report.exit_code)
    where = ", ".join(f"container {s['container']}" if s["container"] else f"pid {s['pid']}" for s in report.servers)
    click.echo(f"{report.name}: {report.condition} (target {report.target}, {where})")
    click.echo(f"  repository: {report.repository}")
    click.echo(f"  endpoints:  {deployment.endpoints.describe()}")
    click.echo(f"  log:        {report.log}")
    if len(report.servers) > 1:
        for index, server in enumerate(report.servers):
            click.echo(
                f"  replica {index}: HTTP {server['http']} gRPC {server['grpc']}"
                f" {'running' if server['running'] else 'NOT RUNNING'}"
            )
    if report.proxy is not None:
        _echo_proxy(report.proxy)
    for model in report.models:
        line = model.state + (f" ({model.reason})" if model.reason else "")
        click.echo(f"  model {model.name}: {line}")
    for text in report.canary:
        click.echo(text)
    restarts = report.restarts
    if restarts["count"]:
        last = restarts["last"]
        click.echo(f"  restarts:   {restarts['count']}; last at {last['at']}: {last['reason']}")
    runtime = report.runtime
    if runtime is not None:
        scale = "" if runtime["scaling"] else ", static (instance counts fixed)"
        click.echo(
            f"  runtime:    pid {runtime['pid']}, {runtime['cores']:g} cores, up {runtime['uptime_s']:.0f} s{scale}; "
            f"{runtime['instance_seconds']:.0f} instance-s, {runtime['core_seconds']:.0f} core-s,"
            f" {runtime['requests']} requests"
        )
        cost = runtime.get("cost") or {}
        if cost.get("prices"):
            per_1k = cost["per_1k_requests"]
            click.echo(
                f"  cost:       {cost['cost']:.4f} for {cost['core_s']:.0f} core-s and {cost['gpu_s']:.0f} GPU-s"
                " reserved"
                f" (per core-hour {cost['prices']['core_hour']:g}, per GPU-hour {cost['prices']['gpu_hour']:g});"
                + (f" {per_1k:.5f} per 1,000 requests" if per_1k is not None else " no request yet")
            )
        for model, info in runtime["components"].items():
            bounds = info["autoscale"]
            scaled = f"autoscale {bounds['min']}..{bounds['max']}" if bounds else "fixed"
            click.echo(
                f"    {model}: {info['instances']} instance(s), {info['state']}, {scaled},"
                f" utilisation {info['utilisation']:.2f}, {info['instance_seconds']:.0f} instance-s"
                + (f"; last: {info['last_decision']}" if info["last_decision"] else "")
            )
    elif report.condition != "not running" and report.target != "kubernetes":
        click.echo("  runtime:    not running (it stopped: see `compound logs`)")
    sys.exit(report.exit_code)


def _echo_proxy(proxy: dict[str, Any]) -> None:
    state = "running" if proxy["running"] else "NOT RUNNING"
    click.echo(f"  proxy:      envoy pid {proxy['pid']}, {state}, admin {proxy['admin']}")
    for protocol, c in proxy.get("protocols", {}).items():
        click.echo(
            f"    {protocol}: {c['healthy_replicas']}/{c['replicas']} replicas healthy, {c['requests']} requests,"
            f" {c['retries']} retried ({c['retry_overflow']} refused), {c['responses_5xx']} failed upstream,"
            f" {c['ejections']} ejections, {c['health_check_failures']} failed health checks"
        )


@cli.command()
@name_option()
@click.option("-n", "--lines", type=click.IntRange(1), default=50, show_default=True)
def logs(name: Optional[str], lines: int) -> None:
    """Print the tail of the deployment's server log, its last crash, then the runtime's decisions."""
    deployment = _chosen(name)
    if deployment is not None:
        click.echo(deployment.logs(lines))


@cli.command()
@name_option()
def restart(name: Optional[str]) -> None:
    """Restart the deployment's servers one at a time (a rolling restart): each is warm and back in the
    proxy's rotation before the next goes, so a deployment with --replicas fails no request."""
    deployment = _chosen(name)
    if deployment is None:
        sys.exit(1)
    deployment.restart(log=click.echo)
    click.echo(f"{deployment.name}: every server restarted")


@cli.command()
@name_option()
@click.option("--all", "stop_all", is_flag=True, help="Stop every recorded deployment.")
def stop(name: Optional[str], stop_all: bool) -> None:
    """Stop the recorded deployment (its runtime, servers and proxy; remove its container, delete its
    Kubernetes objects) and forget it. With nothing recorded: says so, exit 0."""
    from toolkit.deployment import deployment as deployments

    if stop_all and name:
        raise CompoundError("--all and --name exclude each other", hint="give one of them")
    recorded = deployments.Deployment.recorded()
    if not recorded and name is None:
        click.echo("no deployment is running")
        return
    if stop_all:
        chosen = recorded
    else:
        one = _chosen(name)
        if one is None:
            click.echo("several deployments are recorded: name one with --name, or stop them all with --all")
            sys.exit(1)
        chosen = [one]
    for deployment in chosen:
        click.echo(f"{deployment.name}: {'stopped' if deployment.stop() else 'was not running'}")


@cli.command()
@click.argument("pipeline")
@click.option(
    "--url",
    default=None,
    help="HOST:PORT of Triton's HTTP (or gRPC) endpoint  [default: 127.0.0.1:8000, gRPC 127.0.0.1:8001]",
)
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option(
    "--input",
    "pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="An input value (strings as is; numbers or JSON lists otherwise). Repeatable.",
)
@click.option(
    "--data",
    "data_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON file of {input: value}; a leading batch axis is optional.",
)
@click.option(
    "--trace",
    is_flag=True,
    help="Also print the request's span tree with durations and its critical path. The deployment must send its "
    "spans to a loopback --otlp-endpoint nothing else listens on: this command receives them there.",
)
@name_option("With --trace: the deployment (default: the only one).")
@click.option(
    "--stream",
    is_flag=True,
    help="PIPELINE streams (its last step has stream: true): print each response as a JSON line as it arrives,"
    " then the time to the first response, responses per second and the total.",
)
def infer(
    pipeline: str,
    url: Optional[str],
    protocol: str,
    pairs: tuple[str, ...],
    data_file: Optional[Path],
    trace: bool,
    name: Optional[str],
    stream: bool,
) -> None:
    """Run PIPELINE once and print its outputs as JSON."""
    from toolkit.client import DEFAULT_URLS, fetch_signature, parse_cli_inputs, to_jsonable
    from toolkit.client import infer as run_inference

    if stream:
        if trace:
            raise click.UsageError("--stream and --trace do not go together yet: trace one response with plain infer")
        from toolkit.stream_client import print_stream

        url = url or DEFAULT_URLS[protocol]
        signature = fetch_signature(pipeline, url, protocol)  # type: ignore[arg-type]
        print_stream(pipeline, url, parse_cli_inputs(list(pairs), data_file, signature), protocol, signature)  # type: ignore[arg-type]
        return
    collector = None
    if trace:
        from toolkit.observe.tracing import deployment_collector
        from toolkit.targets.state import load_state

        state = load_state(name)
        collector = deployment_collector(state)
        url = url or (state.endpoints.http_url if protocol == "http" else state.endpoints.grpc_url)
    url = url or DEFAULT_URLS[protocol]
    try:
        signature = fetch_signature(pipeline, url, protocol)  # type: ignore[arg-type]
        if signature.decoupled:
            raise CompoundError(
                f"'{pipeline}' streams (its last step has stream: true): it answers with many responses",
                hint=f"compound infer {pipeline} --stream ...",
            )
        inputs = parse_cli_inputs(list(pairs), data_file, signature)
        headers = collector.new_traceparent() if collector is not None else None
        outputs = run_inference(pipeline, url, inputs, protocol, headers=headers)  # type: ignore[arg-type]
        rows = [
            f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}"
            for key, value in to_jsonable(outputs).items()
        ]
        click.echo("{\n" + ",\n".join(rows) + "\n}")
        if collector is not None and headers is not None:
            click.echo(collector.describe_trace(headers["traceparent"]))
    finally:
        if collector is not None:
            collector.close()


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Scaffold a new pipeline project (spec + handlers) in DIRECTORY that deploys as is."""
    from toolkit.repository.scaffold import scaffold

    written = scaffold(directory)
    click.echo(f"created {directory}: {', '.join(p.name for p in written)}")
    click.echo(
        f"next: compound generate {directory / 'pipeline.yaml'} -o {directory / 'model_repository'}"
        f" && compound deploy {directory / 'model_repository'}"
    )


def main() -> None:
    cli(prog_name="compound")


if __name__ == "__main__":
    main()
