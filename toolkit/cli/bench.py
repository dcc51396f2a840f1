"""`compound bench`: the click command; the work is in :mod:`toolkit.bench.runner`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import click
from click.core import ParameterSource

from toolkit.bench.profiles import ALL_PROFILES
from toolkit.core.errors import CompoundError
from toolkit.core.units import parse_duration
from toolkit.runtime.pricing import Prices


def _int_list(value: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers") from None
    if not items or any(i < 1 for i in items):
        raise click.BadParameter("concurrency levels must be positive integers")
    return items


@click.command("bench")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--pipeline",
    "-p",
    default=None,
    help="Pipeline to benchmark (a static DAG: ensemble). Required, except with --workload, which takes A,B "
    "(default: the spec's first two).",
)
@click.option(
    "--profiles",
    default=",".join(ALL_PROFILES),
    show_default=True,
    help="Comma-separated: " + ", ".join(ALL_PROFILES) + "; also written (the spec as written) and tuned (--tuned). "
    "A streaming pipeline has its own: streaming, one-at-a-time, static (default: all three).",
)
@click.option("--concurrency", default="1,4,16,64", show_default=True, help="Closed-loop client concurrency levels.")
@click.option("--duration", default="20s", show_default=True, help="Measured time per load point.")
@click.option("--warmup", default="3s", show_default=True, help="Unmeasured load before each point.")
@click.option(
    "--cores",
    type=int,
    default=0,
    help="Core budget for instance planning and the ceiling; with --workload, the runtime's (default: all).",
)
@click.option(
    "--driver",
    type=click.Choice(["grpc", "http", "locust"]),
    default="grpc",
    show_default=True,
    help="Load generator: lean gRPC client, the same over HTTP (KServe v2 binary tensors, the encoding the Ray Serve "
    "peer gets), or the project's locustfile.",
)
@click.option(
    "--keep-cache",
    is_flag=True,
    help="Keep the models' declared caches (off by default: the load cycles a fixed pool of request rows, so a "
    "cached profile would measure its hit rate). Figures are then labelled as including cache hits.",
)
@click.option(
    "--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"), show_default=True
)
@click.option(
    "--workload",
    type=click.Choice(["bursty", "steady"]),
    default=None,
    help="Instead of the profiles: the spec deployed static, then with the adaptive runtime (--cores), under "
    "a schedule of phases (bursty: quiet A, burst A, burst moves to B, quiet; steady: one burst on A). "
    "Burst concurrency: the largest --concurrency given, else 32.",
)
@click.option(
    "--tuned",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The spec `compound tune` wrote: the `tuned` profile deploys it as written (add tuned to --profiles).",
)
@click.option(
    "--phase-seconds", type=click.FloatRange(min=1.0), default=20.0, show_default=True, help="[--workload] Each phase."
)
@click.option(
    "--price-per-core-hour",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="PRICE",
    help="[--workload] What a reserved core costs an hour: the report adds the cost per 1,000 requests.",
)
@click.option(
    "--price-per-gpu-hour", type=click.FloatRange(min=0), default=0.0, metavar="PRICE", help="[--workload] Per GPU."
)
def bench(
    spec: Path,
    pipeline: Optional[str],
    profiles: str,
    concurrency: str,
    duration: str,
    warmup: str,
    cores: int,
    driver: str,
    keep_cache: bool,
    out: Path,
    workload: Optional[str],
    phase_seconds: float,
    tuned: Optional[Path],
    price_per_core_hour: float,
    price_per_gpu_hour: float,
) -> None:
    """Deploy each profile in turn and measure it with the same load generator; write a table,
    results.json and PNG plots to OUT. With --workload: static against adaptive under a schedule."""
    from toolkit.bench.runner import BenchRunner, Settings, format_table

    if workload:
        explicit = click.get_current_context().get_parameter_source("concurrency") != ParameterSource.DEFAULT
        burst = max(_int_list(concurrency)) if explicit else 0
        prices = Prices(price_per_core_hour, price_per_gpu_hour)
        _workload(spec, workload, pipeline, burst, phase_seconds, cores, out, prices)
        return
    if not pipeline:
        raise click.UsageError("Missing option '--pipeline' / '-p'.")
    from toolkit.bench.streaming import is_streaming

    if is_streaming(spec, pipeline):
        given = click.get_current_context().get_parameter_source
        _streaming(
            spec,
            pipeline,
            profiles if given("profiles") != ParameterSource.DEFAULT else None,
            _int_list(concurrency) if given("concurrency") != ParameterSource.DEFAULT else [1, 4, 16],
            parse_duration(duration, "--duration") if given("duration") != ParameterSource.DEFAULT else 10.0,
            parse_duration(warmup, "--warmup", allow_zero=True),
            driver,
            out,
        )
        return
    settings = Settings(
        spec=spec,
        pipeline=pipeline,
        out=out,
        profiles=[p.strip() for p in profiles.split(",") if p.strip()],
        concurrency=_int_list(concurrency),
        duration_s=parse_duration(duration, "--duration"),
        warmup_s=parse_duration(warmup, "--warmup", allow_zero=True),
        cores=cores,
        driver=driver,
        keep_cache=keep_cache,
        command="compound " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        tuned=tuned,
    )
    report = BenchRunner(
        settings, log=lambda m: click.echo(m, err=True)
    ).run()  # CompoundError: the CLI's main reports it
    click.echo(format_table(report))
    click.echo(f"\nwrote {out / 'results.json'}" + "".join(f", {p}" for p in report.get("plots", [])))
    _fail_if_any(report["profiles"], "profile", out)


def _streaming(
    spec: Path,
    pipeline: str,
    profiles: Optional[str],
    concurrency: list[int],
    duration_s: float,
    warmup_s: float,
    driver: str,
    out: Path,
) -> None:
    """A pipeline whose last step streams: its own profiles (streaming, one-at-a-time, static)."""
    from toolkit.bench.streaming import STREAM_PROFILES, StreamBench, StreamBenchSettings, format_stream_report

    if driver == "locust":
        raise CompoundError(
            "--driver locust: a streaming pipeline is benchmarked with the streaming client",
            hint="use --driver grpc (streams) or http (server-sent events); `compound loadtest` drives streams with"
            " locust",
        )
    settings = StreamBenchSettings(
        spec=spec,
        pipeline=pipeline,
        out=out,
        profiles=[p.strip() for p in profiles.split(",") if p.strip()] if profiles else list(STREAM_PROFILES),
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
        protocol=driver,
        command="compound " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    report = StreamBench(settings, log=lambda m: click.echo(m, err=True)).run()
    click.echo(format_stream_report(report))
    click.echo(f"\nwrote {out / 'results.json'}, {out / 'results.md'}")
    _fail_if_any(report["profiles"], "profile", out)


def _workload(
    spec: Path,
    workload: str,
    pipeline: Optional[str],
    burst: int,
    phase_seconds: float,
    cores: int,
    out: Path,
    prices: Prices,
) -> None:
    from toolkit.bench.workload import DEFAULT_BURST, WorkloadRunner, WorkloadSettings, format_table

    settings = WorkloadSettings(
        spec=spec,
        out=out,
        workload=workload,
        pipelines=[p.strip() for p in (pipeline or "").split(",") if p.strip()],
        phase_s=phase_seconds,
        burst=burst or DEFAULT_BURST,
        cores=cores,
        command="compound " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        prices=prices,
    )
    report = WorkloadRunner(settings, log=lambda m: click.echo(m, err=True)).run()
    click.echo(format_table(report))
    click.echo(f"\nwrote {out / 'results.json'}" + "".join(f", {p}" for p in report.get("plots", [])))
    _fail_if_any(report["deployments"], "deployment", out)


def _fail_if_any(results: dict[str, Any], what: str, out: Path) -> None:
    """A non-zero exit when any measured profile (deployment) failed: each failure is in the report."""
    failed = sorted(name for name, result in results.items() if "error" in result)
    if failed:
        raise CompoundError(
            f"{len(failed)} of {len(results)} {what}(s) failed: {', '.join(failed)}",
            hint=f"each failure is in the table above and in {out / 'results.json'}",
        )
