"""`compound tune`: the click command; the work is in :mod:`toolkit.tune.search`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import click

from toolkit.core.units import parse_duration


def tune_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options `tune` and `generate --tune` share."""
    for option in reversed(
        [
            click.option(
                "--pipeline",
                "-p",
                "pipelines",
                multiple=True,
                help="Pipeline to tune (repeat for several; default: every static pipeline).",
            ),
            click.option("--cores", type=int, default=0, help="Cores the deployment may use (default: all)."),
            click.option("--gpus", type=int, default=0, show_default=True, help="GPUs the deployment may use."),
            click.option(
                "--p95-slo-ms", type=click.FloatRange(min=0, min_open=True), default=None, help="P95 latency bound."
            ),
            click.option(
                "--concurrency",
                type=click.IntRange(min=1),
                default=64,
                show_default=True,
                help="Closed-loop clients each candidate is measured with.",
            ),
            click.option("--budget", default="10m", show_default=True, help="Time the whole tuning may take."),
        ]
    ):
        func = option(func)
    return func


def run_tune(
    spec: Path,
    out: Path,
    *,
    pipelines: tuple[str, ...] = (),
    cores: int = 0,
    gpus: int = 0,
    p95_slo_ms: Optional[float] = None,
    concurrency: int = 64,
    budget: str = "10m",
    report: Optional[Path] = None,
) -> dict[str, Any]:
    """Tune SPEC into OUT and say what was chosen; the options by name, with `tune_options`' defaults
    (what `generate --tune` uses)."""
    from toolkit.tune.search import Tuner, TuneSettings, is_tty

    settings = TuneSettings(
        spec=spec,
        out=out,
        pipelines=list(pipelines),
        cores=cores,
        gpus=gpus,
        slo_p95_ms=p95_slo_ms,
        concurrency=concurrency,
        budget_s=parse_duration(budget, "--budget"),
        report=report,
        command="compound " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    tuner = Tuner(settings, log=lambda m: click.echo(m, err=True), show_bar=is_tty())
    result = tuner.run()
    for name, pipeline in result["pipelines"].items():
        click.echo(f"{name}: {pipeline['choice']} — {pipeline['why']}")
    json_path, md_path = tuner.report_paths()
    click.echo(f"wrote {out}, {md_path}, {json_path} (tuning took {result['elapsed_s']:.0f} s)")
    return result


@click.command("tune")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The tuned spec to write (in SPEC's folder: handlers are found relative to it).",
)
@tune_options
@click.option(
    "--report",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the report (default: beside the tuned spec).",
)
def tune(
    spec: Path,
    out: Path,
    pipelines: tuple[str, ...],
    cores: int,
    gpus: int,
    p95_slo_ms: Optional[float],
    concurrency: int,
    budget: str,
    report: Optional[Path],
) -> None:
    """Measure candidate plans of SPEC's pipelines on the real server and write the best as a spec
    (same schema) to OUTPUT, with a report of every candidate and why the choice."""
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
    run_tune(
        spec,
        out,
        pipelines=pipelines,
        cores=cores,
        gpus=gpus,
        p95_slo_ms=p95_slo_ms,
        concurrency=concurrency,
        budget=budget,
        report=report,
    )
