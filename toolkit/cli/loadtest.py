"""``compound loadtest``: the click command; all the work is in :mod:`toolkit.loadtest`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from toolkit.client import DEFAULT_URLS, Protocol, strip_scheme
from toolkit.core.units import parse_duration
from toolkit.loadtest.runner import PROTOCOLS, SHAPES, LoadTestOptions, run_loadtest

if TYPE_CHECKING:
    from toolkit.targets.state import DeploymentState


@click.command("loadtest")
@click.argument("pipeline")
@click.option(
    "--url",
    metavar="HOST:PORT",
    help="The server's HTTP or gRPC endpoint (see --protocol)  [default: 127.0.0.1:8000, gRPC 127.0.0.1:8001]",
)
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option(
    "--users", type=int, default=16, show_default=True, help="Concurrent closed-loop users (peak, for shapes)."
)
@click.option("--spawn-rate", type=float, default=8.0, show_default=True, help="Users started per second.")
@click.option(
    "--run-time", default=None, help="Length of the run: 45, 30s, 5m, 1h30m  [default: 30s; 20m with --shape soak]"
)
@click.option("--shape", type=click.Choice(SHAPES), default="constant", show_default=True, help="Load shape.")
@click.option("--steps", type=int, default=4, show_default=True, help="Steps of the step shape.")
@click.option("--burst-on", default="5s", show_default=True, help="Burst shape: length of a burst.")
@click.option("--burst-off", default="5s", show_default=True, help="Burst shape: quiet time between bursts.")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False), help="JSONL file, one request a line, cycled.")
@click.option(
    "--headless/--ui", default=True, show_default=True, help="Print a final table, or open locust's dashboard."
)
@click.option(
    "--web-port", type=int, default=8089, show_default=True, help="Dashboard port (--ui), bound to 127.0.0.1."
)
@click.option(
    "--csv", "csv_prefix", type=click.Path(path_type=Path), metavar="PREFIX", help="Write locust's CSV files."
)
@click.option(
    "--html", type=click.Path(path_type=Path, dir_okay=False), metavar="REPORT.html", help="Write an HTML report."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="SUMMARY.json",
    help="Write the summary with the per-model breakdown.",
)
@click.option("--p95-slo-ms", type=float, help="Fail (exit non-zero) when p95 latency is above this.")
@click.option(
    "--ttft-p95-slo-ms",
    type=float,
    help="Streaming pipelines: fail (exit non-zero) when the p95 time to first token is above this.",
)
@click.option("--max-failure-ratio", type=float, help="Fail (exit non-zero) when failures/requests is above this.")
@click.option("--workers", type=int, default=0, show_default=True, help="Locust worker processes (distributed mode).")
@click.option(
    "--target-rps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Pace the users to this offered rate instead of a closed loop (a soak at half of peak).",
)
@click.option("--window", default="1m", show_default=True, help="Timeline window (--timeline).")
@click.option(
    "--timeline",
    "timeline",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write per-window requests, failures, p50/p95/max, the p95 drift from the first to the last "
    "windows, and the server's memory (RSS per process) to this JSON file.",
)
@click.option(
    "--server-pid",
    type=int,
    default=None,
    help="tritonserver's pid, for --timeline's memory samples  [default: the recorded local deployment's]",
)
@click.option(
    "--metrics-url",
    metavar="URL",
    default=None,
    help="Triton's metrics endpoint, for the tiered cache's columns (skipped when unreachable)  "
    "[default: the recorded deployment's when --url targets it, else 127.0.0.1:8002 without --url]",
)
@click.option(
    "--critical-path/--no-critical-path",
    "critical_path",
    default=True,
    show_default=True,
    help="When the recorded deployment traces to a loopback --otlp-endpoint: receive its spans during the run and "
    "report per pipeline the chain of steps that set the latency, with each step's share.",
)
def loadtest(
    pipeline: str,
    url: Optional[str],
    protocol: Protocol,  # click.Choice(PROTOCOLS)
    users: int,
    spawn_rate: float,
    run_time: Optional[str],
    shape: str,
    steps: int,
    burst_on: str,
    burst_off: str,
    data: Optional[Path],
    headless: bool,
    web_port: int,
    csv_prefix: Optional[Path],
    html: Optional[Path],
    json_path: Optional[Path],
    p95_slo_ms: Optional[float],
    max_failure_ratio: Optional[float],
    ttft_p95_slo_ms: Optional[float],
    workers: int,
    target_rps: Optional[float],
    window: str,
    timeline: Optional[Path],
    server_pid: Optional[int],
    metrics_url: Optional[str],
    critical_path: bool,
) -> None:
    """Load-test PIPELINE on a running server with locust, and report per-model Triton statistics.

    A soak: `--shape soak --target-rps R --timeline soak.json` (20 minutes unless --run-time says
    otherwise) reports failures, the p95 drift from the first to the last minutes, and the memory of
    every server process at the start and the end.

    A streaming pipeline (served as a decoupled model) is driven one stream per request, over gRPC or
    HTTP server-sent events, and reports time to first token, inter-token latency and tokens/s;
    `--ttft-p95-slo-ms` gates on the first token."""
    if steps < 1:
        raise click.BadParameter("must be at least 1", param_hint="--steps")
    run_time = run_time or (SOAK_RUN_TIME if shape == "soak" else DEFAULT_RUN_TIME)
    extra_env = {
        "COMPOUND_STEPS": str(steps),
        "COMPOUND_BURST_ON": f"{parse_duration(burst_on, '--burst-on'):g}s",
        "COMPOUND_BURST_OFF": f"{parse_duration(burst_off, '--burst-off'):g}s",
        "COMPOUND_WINDOW": f"{parse_duration(window, '--window'):g}s",
    }
    if target_rps is not None:
        extra_env["COMPOUND_TARGET_RPS"] = f"{target_rps:g}"
    if timeline is not None:
        extra_env["COMPOUND_TIMELINE"] = str(timeline.resolve())
        pid = server_pid or recorded_server_pid()
        if pid:
            extra_env["COMPOUND_SERVER_PID"] = str(pid)
    metrics_url, cache_steps = cache_source(url, protocol, metrics_url)
    options = LoadTestOptions(
        pipeline=pipeline,
        url=url or DEFAULT_URLS[protocol],
        protocol=protocol,
        users=users,
        spawn_rate=spawn_rate,
        run_time_s=math.ceil(parse_duration(run_time, "--run-time")),
        shape=shape,
        data=data,
        ui=not headless,
        web_port=web_port,
        workers=workers,
        csv_prefix=csv_prefix,
        html=html,
        json_path=json_path,
        p95_slo_ms=p95_slo_ms,
        max_failure_ratio=max_failure_ratio,
        ttft_p95_slo_ms=ttft_p95_slo_ms,
        extra_env=extra_env,
        metrics_url=metrics_url,
        cache_steps=cache_steps,
    )
    options.traces = trace_collector(url, protocol) if critical_path else None
    try:
        run_loadtest(options, echo=click.echo)
    finally:
        if options.traces is not None:
            options.traces.close()
    if timeline is not None and timeline.is_file():
        click.echo(soak_summary(timeline))


DEFAULT_RUN_TIME = "30s"
SOAK_RUN_TIME = "20m"


def recorded_state() -> Optional[DeploymentState]:
    """The only recorded deployment, if there is one."""
    from toolkit.core.errors import CompoundError
    from toolkit.targets.state import load_state

    try:
        return load_state(None)
    except CompoundError:
        return None


def recorded_server_pid() -> Optional[int]:
    """The tritonserver of the only recorded local deployment, if there is one."""
    state = recorded_state()
    return state.pid if state is not None and state.target == "local" else None


_LOOPBACK = {"127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]"}  # noqa: S104 - compared, never bound


def _same_endpoint(a: str, b: str) -> bool:
    """host:port pairs naming the same server (a server bound to 0.0.0.0 answers on loopback)."""
    host_a, _, port_a = strip_scheme(a).rpartition(":")
    host_b, _, port_b = strip_scheme(b).rpartition(":")
    return port_a == port_b and (host_a == host_b or {host_a, host_b} <= _LOOPBACK)


def cache_source(url: Optional[str], protocol: str, metrics_url: Optional[str]) -> tuple[Optional[str], dict[str, str]]:
    """Where the tiered cache's metrics are, and the fused steps of the repository served (for their
    rows' names): the recorded deployment's when the run targets it, else Triton's default metrics
    port when no --url was given; --metrics-url wins. A wrong guess only costs the cache columns."""
    from toolkit.observe.cachestats import fused_steps
    from toolkit.repository.manifest import Manifest

    target = url or DEFAULT_URLS[protocol]
    state = recorded_state()
    if state is not None:
        endpoints = state.endpoints
        if _same_endpoint(target, endpoints.grpc_url if protocol == "grpc" else endpoints.http_url):
            return metrics_url or endpoints.metrics_url, fused_steps(Manifest.find(state.repository) or Manifest())
    return metrics_url or (None if url else DEFAULT_METRICS_URL), {}


def trace_collector(url: Optional[str], protocol: str) -> Any:
    """A SpanCollector on the recorded deployment's OTLP endpoint when the run targets a deployment
    that traces to a loopback port; else None (with a note when it traces elsewhere)."""
    from toolkit.core.errors import CompoundError
    from toolkit.observe.tracing import deployment_collector

    state = recorded_state()
    if state is None or not state.extra.get("otlp_endpoint"):
        return None
    served = state.endpoints.grpc_url if protocol == "grpc" else state.endpoints.http_url
    if not _same_endpoint(url or DEFAULT_URLS[protocol], served):
        return None
    try:
        return deployment_collector(state)
    except CompoundError as exc:
        click.echo(f"note: no critical path: {exc}", err=True)
        return None


DEFAULT_METRICS_URL = "http://127.0.0.1:8002/metrics"  # what `compound deploy` binds by default


def soak_summary(timeline: Path) -> str:
    """Failures, p95 drift and memory growth from a --timeline file, in words."""
    import json

    report = json.loads(timeline.read_text(encoding="utf-8"))
    windows = report.get("windows") or []
    failures = sum(int(w.get("failures", 0)) for w in windows)
    lines = [
        f"Timeline: {timeline} ({len(windows)} window(s) of {report.get('window_s', 0):g} s, {failures} failure(s))"
    ]
    drift = report.get("p95_drift")
    if drift:
        lines.append(
            f"  p95 drift: {drift['first_p95_ms']:.1f} ms in the first windows, {drift['last_p95_ms']:.1f} ms in "
            f"the last: x{drift['ratio']}"
        )
    rss = report.get("server_rss")
    if rss and not rss.get("error"):
        growth = 100.0 * rss["growth_mb"] / rss["start_total_mb"] if rss["start_total_mb"] else 0.0
        lines.append(
            f"  server memory (RSS, server and stubs): {rss['start_total_mb']:.0f} MB at the start, "
            f"{rss['end_total_mb']:.0f} MB at the end ({growth:+.1f}%)"
        )
    elif rss:
        lines.append(f"  server memory: {rss['error']}")
    return "\n".join(lines)
