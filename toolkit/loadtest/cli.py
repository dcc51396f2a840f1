"""``compound loadtest``: the click command; all the work is in :mod:`toolkit.loadtest`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import click

from toolkit.client import DEFAULT_URLS
from toolkit.loadtest.runner import PROTOCOLS, SHAPES, LoadTestOptions, run_loadtest
from toolkit.units import parse_duration


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
@click.option("--run-time", default="30s", show_default=True, help="Length of the run: 45, 30s, 5m, 1h30m.")
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
@click.option("--max-failure-ratio", type=float, help="Fail (exit non-zero) when failures/requests is above this.")
@click.option("--workers", type=int, default=0, show_default=True, help="Locust worker processes (distributed mode).")
def loadtest(
    pipeline: str,
    url: Optional[str],
    protocol: str,
    users: int,
    spawn_rate: float,
    run_time: str,
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
    workers: int,
) -> None:
    """Load-test PIPELINE on a running server with locust, and report per-model Triton statistics."""
    if steps < 1:
        raise click.BadParameter("must be at least 1", param_hint="--steps")
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
        extra_env={
            "COMPOUND_STEPS": str(steps),
            "COMPOUND_BURST_ON": f"{parse_duration(burst_on, '--burst-on'):g}s",
            "COMPOUND_BURST_OFF": f"{parse_duration(burst_off, '--burst-off'):g}s",
        },
    )
    run_loadtest(options, echo=click.echo)
