"""`compound update`, `compound promote`, `compound rollback`: thin commands over toolkit/update/apply.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click

from toolkit.cli.options import name_option
from toolkit.core.errors import CompoundError

if TYPE_CHECKING:
    from toolkit.targets.state import DeploymentState
    from toolkit.update.apply import LiveDeployment


def _live(name: Optional[str]) -> tuple[DeploymentState, LiveDeployment]:
    from toolkit.deployment.deployment import Deployment
    from toolkit.update.apply import LiveDeployment

    deployment = Deployment.find(name)
    state = deployment.state
    if state.target == "kubernetes":
        raise CompoundError(
            "a Kubernetes deployment is updated by a rolling update of its pods",
            hint="`compound update SPEC --target kubernetes` (see docs/update.md)",
        )
    if not deployment.running():
        raise CompoundError(f"deployment '{state.name}' is not running", hint="`compound deploy` it first")
    return state, LiveDeployment.of(state)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@name_option()
@click.option(
    "--canary",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    metavar="P",
    help="Send P% of each changed pipeline's requests to the new version; promote or rollback later.",
)
@click.option(
    "--shadow", is_flag=True, help="Copy requests (P%, default all) to the new version; compare, never return."
)
@click.option(
    "--target",
    type=click.Choice(["recorded", "kubernetes"]),
    default="recorded",
    show_default=True,
    help="kubernetes: render the manifests of a rolling update (with --manifests-dir; applied with --apply).",
)
@click.option("--manifests-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option(
    "--apply", "apply_", is_flag=True, help="[kubernetes] kubectl apply the manifests and wait for the rollout."
)
def update(
    spec: str,
    name: Optional[str],
    canary: Optional[float],
    shadow: bool,
    target: str,
    manifests_dir: Optional[Path],
    apply_: bool,
) -> None:
    """Bring the running deployment to SPEC without downtime: only the changed components get new
    models, loaded and warmed beside the old ones before traffic moves."""
    from toolkit.plan import plan_spec

    if target == "kubernetes":
        _kubernetes(spec, name, manifests_dir, apply_)
        return
    state, live = _live(name)
    from toolkit.repository.manifest import Manifest
    from toolkit.update.apply import update as run_update

    plan = plan_spec(spec, Manifest.read(live.repository).device)
    if shadow and canary is None:
        canary = 100.0
    started = time.monotonic()
    change = run_update(live, plan, canary=canary, shadow=shadow, log=click.echo)
    if not change.empty:
        click.echo(f"done in {time.monotonic() - started:.1f} s")


@click.command()
@name_option()
def promote(name: Optional[str]) -> None:
    """Move all traffic of the canary to the new version and unload the old one."""
    from toolkit.update.apply import promote as run_promote

    _, live = _live(name)
    run_promote(live, log=click.echo)


@click.command()
@name_option()
def rollback(name: Optional[str]) -> None:
    """Return to the previous version (the canary's old one, or the one the last update replaced)."""
    from toolkit.update.apply import rollback as run_rollback

    _, live = _live(name)
    run_rollback(live, log=click.echo)


def _kubernetes(spec: str, name: Optional[str], manifests_dir: Optional[Path], apply_: bool) -> None:
    """Regenerate the repository and the manifests: a new image digest in the pod template makes
    Kubernetes replace the pods one by one (maxUnavailable 0: a new pod serves, all models warm,
    before an old one goes)."""
    from toolkit.plan import plan_spec
    from toolkit.repository.render import render_files, write_repository
    from toolkit.targets.kubernetes import KubernetesOptions, render_manifests, write_manifests
    from toolkit.targets.state import load_state

    state = None
    try:
        state = load_state(name)
    except CompoundError:
        if apply_:
            raise
    plan = plan_spec(spec, "cpu")
    if state is not None and state.target == "kubernetes":
        repository = Path(state.repository)
        manifests_dir = manifests_dir or Path(state.extra["manifests"])
        options = KubernetesOptions(
            name=state.name,
            namespace=state.extra.get("namespace", "default"),
            balancer=state.extra.get("balancer") == "true",  # recorded since the balancer exists; none before
        )
        options.api_key = state.api_key
    else:
        if manifests_dir is None:
            raise CompoundError(
                "no Kubernetes deployment is recorded", hint="give --manifests-dir to write the manifests"
            )
        repository = manifests_dir.parent / f"{plan.name}-repository"
        options = KubernetesOptions(name=name or plan.name)
    write_repository(render_files(plan), repository)
    written = write_manifests(render_manifests(repository, options), manifests_dir)
    click.echo(f"wrote {written}: pods roll one by one (maxUnavailable 0) to image {options.image or 'rebuilt'}")
    if apply_:
        from toolkit.targets.kubernetes import kubectl

        if state is None or state.target != "kubernetes":
            raise CompoundError(
                f"--apply needs a Kubernetes deployment; '{name or plan.name}' is not one",
                hint="`compound deploy --target kubernetes` it first, or drop --apply",
            )
        kubectl(["apply", "-k", str(written)], context=state.extra.get("context"))
        kubectl(
            ["rollout", "status", f"deployment/{state.extra['k8s_name']}", "-n", options.namespace],
            context=state.extra.get("context"),
            timeout_s=900,
        )
        click.echo("rollout complete")
    else:
        click.echo(f"next: kubectl apply -k {written}")
