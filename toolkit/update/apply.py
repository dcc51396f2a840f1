"""`compound update / promote / rollback`: change a running deployment's components without downtime.

An update renders the spec, compares it with the repository's version record
(toolkit/repository/versions.py), writes the changed components as new models beside the old ones
(`<component>.vN`) and each changed pipeline's new version as a hidden model (`<pipeline>.vN`), loads
the new components (Triton warms them before the load returns), then switches: every changed
pipeline's public model is loaded again with the new version's config (Triton swaps a reloaded
model's instances without failing a request), and the components no version in service uses are
unloaded. Unchanged components are not touched. With `canary`, the public model instead becomes a
router (templates/router.py) over the old and the new pipeline versions; `promote` and `rollback`
are the same switch to the new or the old version. While it acts, the update holds the repository's
lock, which the adaptive runtime respects (it neither rescales nor heals meanwhile).
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from toolkit import __version__
from toolkit.core.errors import CompoundError
from toolkit.repository.manifest import Manifest
from toolkit.repository.render import template_env, templates_dir
from toolkit.repository.versions import (
    VERSIONS_FILE,
    Change,
    VersionRecord,
    bootstrap,
    describe_version,
    model_files,
    next_version,
    rename_model,
)
from toolkit.runtime.lock import update_lock
from toolkit.targets.fleet import ServerSet
from toolkit.targets.server import compile_python

ROUTER_INSTANCES = 2
DRAIN_QUIET_S = 1.0  # no call to a replaced model this long: its old callers have finished
DRAIN_TIMEOUT_S = 30.0
Log = Callable[[str], None]


@dataclass(frozen=True)
class LiveDeployment:
    """The running deployment an update acts on: its repository on this machine and its servers
    (every replica gets each load and unload, one after another)."""

    repository: Path
    http_url: str
    grpc_url: str
    metrics_url: str
    api_key: str
    servers: ServerSet

    @classmethod
    def of(cls, deployment: Any) -> LiveDeployment:
        """From a DeploymentState or a started TritonServer."""
        endpoints = deployment.endpoints
        records = deployment.server_records() if hasattr(deployment, "server_records") else []
        addresses = [(f"{endpoints.host}:{s.http_port}", f"{endpoints.host}:{s.grpc_port}") for s in records]
        return cls(
            Path(deployment.repository),
            endpoints.http_url,
            endpoints.grpc_url,
            endpoints.metrics_url,
            deployment.api_key,
            ServerSet.of(addresses or [(endpoints.http_url, endpoints.grpc_url)], deployment.api_key),
        )


# --- files -------------------------------------------------------------------------------------------


def read_folder(folder: Path) -> dict[str, bytes]:
    """A model folder's files, relative to it (no caches the backend wrote)."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def read_repository(repository: Path) -> dict[str, bytes]:
    files = {}
    for folder in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files.update({f"{folder.name}/{rel}": content for rel, content in read_folder(folder).items()})
    return files


def write_folder(repository: Path, name: str, files: dict[str, bytes]) -> None:
    """Write (or replace) one model folder: staged beside it, then swapped in by two renames. Readable
    by other users (a container's server reads the mounted repository as one)."""
    staging = repository / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    for rel, content in files.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_bytes(content)
        path.chmod(0o644)
    compile_python(staging)  # so the stub writes nothing into the folder Triton watches
    for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)  # noqa: S103 - the server (maybe another user in a container) reads it
    target = repository / name
    old = repository / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


def load_version_record(repository: Path) -> VersionRecord:
    """The repository's record; a repository never updated is version 1 as it lies on disk."""
    path = repository / VERSIONS_FILE
    if path.is_file():
        try:
            return VersionRecord.from_json(path.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise CompoundError(f"{path} is unreadable: {exc}", hint="regenerate and deploy again") from None
    return bootstrap(describe_version(read_repository(repository), Manifest.read(repository)))


def save_version_record(repository: Path, record: VersionRecord) -> None:
    write_text(repository / VERSIONS_FILE, record.to_json())
    record.versions[record.current].manifest.write(repository)


# --- the server ----------------------------------------------------------------------------------------


def _loaded(live: LiveDeployment) -> set[str]:
    return live.servers.ready_models()


def _load(live: LiveDeployment, names: list[str], what: str, one_by_one: bool = False) -> None:
    """Load models, in parallel unless `one_by_one`: pipelines are loaded in turn (an ensemble's load
    reloads its composing models, and concurrent such loads once aborted the Python backend,
    boost::interprocess::lock_exception, on Triton 2.51)."""
    if not names:
        return
    errors: dict[str, Optional[str]] = {}
    for batch in [[n] for n in names] if one_by_one else [names]:
        errors.update(live.servers.load({name: None for name in batch}))
    failed = {name: error for name, error in errors.items() if error is not None}
    if failed:
        lines = "\n  ".join(f"{name}: {error}" for name, error in sorted(failed.items()))
        raise CompoundError(f"could not load {what}:\n  {lines}", hint="see `compound logs`; nothing was switched")


def _unload(live: LiveDeployment, names: list[str], log: Log) -> None:
    for name in names:
        error = live.servers.unload(name)
        if error is not None:
            log(f"  warning: could not unload {name}: {error}")


def _drain(
    live: LiveDeployment, names: list[str], quiet_s: float = DRAIN_QUIET_S, timeout_s: float = DRAIN_TIMEOUT_S
) -> None:
    """Wait until nothing has called these models for `quiet_s`. A reloaded pipeline's old instances
    finish their requests in flight after the load returns, still calling the old components (an
    orchestrator's steps, an ensemble's later steps): unloading those at once fails such requests."""
    if not names:
        return

    def calls() -> dict[str, int]:
        counters = live.servers.stats()
        return {n: counters[n].success.count + counters[n].fail.count for n in names if n in counters}

    deadline = time.monotonic() + timeout_s
    before, quiet_since = calls(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = calls()
        if now != before:
            before, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


# --- the actions ---------------------------------------------------------------------------------------


def update(
    live: LiveDeployment,
    plan: Any,
    *,
    canary: Optional[float] = None,
    shadow: bool = False,
    log: Log = print,
) -> Change:
    """Bring the deployment to the rendered `plan` (a toolkit.plan DeploymentPlan): a full switch, or
    with `canary` a router sending that share of each changed pipeline's requests to the new version."""
    from toolkit.repository.render import manifest, render_files

    repo = live.repository
    if canary is not None and not 0 < canary <= 100:
        raise CompoundError(f"--canary {canary:g} is not a share of requests", hint="give a percent in (0, 100]")
    with update_lock(repo):
        record = load_version_record(repo)
        if record.canary:
            c = record.canary
            raise CompoundError(
                f"a canary (v{c['from']} -> v{c['to']}) is under way",
                hint="`compound promote` or `compound rollback` it first",
            )
        files = render_files(plan)
        rendered = describe_version(files, manifest(plan))
        taken = {p.name for p in repo.iterdir() if p.is_dir()}
        change = next_version(record, rendered, taken)
        if change.empty:
            log(f"up to date: version {record.current} already serves this spec")
            return change
        if canary is not None and (change.new_pipelines or change.removed_pipelines):
            raise CompoundError(
                f"a canary splits the requests of existing pipelines; this update "
                f"{'adds ' + ', '.join(change.new_pipelines) if change.new_pipelines else ''}"
                f"{'removes ' + ', '.join(change.removed_pipelines) if change.removed_pipelines else ''}",
                hint="update without --canary",
            )
        version = change.version
        number = version.number
        log(f"version {number}: {change.summary()}")
        _archive_current(repo, record)
        for name in change.changed_components:
            model = version.components[name]["model"]
            write_folder(repo, model, rename_model(model_files(files, name), model, {}))
            log(f"  component {name}: new model {model}")
        for name in change.changed_pipelines + change.new_pipelines:
            folder = version.pipelines[name]["folder"]
            write_folder(repo, folder, rename_model(model_files(files, name), folder, version.callees))
        version.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        version.manifest = rendered.manifest.renamed(version.callees)
        record.versions[number] = version
        save_version_record(repo, record)  # the new version is known; the current one still serves
        started = time.monotonic()
        new_models = [version.components[name]["model"] for name in change.changed_components]
        _load(live, new_models, f"the new models of version {number}")
        log(f"  loaded and warmed {', '.join(new_models) or 'no component'} in {time.monotonic() - started:.1f} s")
        if canary is None:
            _switch(live, record, number, log)
            record.history.append(number)
        else:
            _start_canary(live, record, number, change.changed_pipelines, canary, shadow, log)
        save_version_record(repo, record)
        return change


def promote(live: LiveDeployment, log: Log = print) -> int:
    """Move all traffic of the canary to its new version; returns that version."""
    with update_lock(live.repository):
        record = load_version_record(live.repository)
        if not record.canary:
            raise CompoundError("no canary is under way", hint="start one with `compound update SPEC --canary P`")
        target = int(record.canary["to"])
        _switch(live, record, target, log)
        record.history.append(target)
        save_version_record(live.repository, record)
        return target


def rollback(live: LiveDeployment, log: Log = print) -> int:
    """Back to the version before: the canary's old version, or the one the last update replaced."""
    with update_lock(live.repository):
        record = load_version_record(live.repository)
        if record.canary:
            target = int(record.canary["from"])
            _switch(live, record, target, log)
        else:
            if len(record.history) < 2:
                raise CompoundError(f"version {record.current} is the first: there is nothing to roll back to")
            target = record.history[-2]
            _switch(live, record, target, log)
            record.history.pop()
        save_version_record(live.repository, record)
        return target


def _archive_current(repo: Path, record: VersionRecord) -> None:
    """Keep the serving pipeline versions as hidden models before anything changes (version 1's
    were never written: they are the public folders as generated)."""
    current = record.versions[record.current]
    for name, entry in current.pipelines.items():
        folder = repo / entry["folder"]
        if not folder.is_dir() and record.public.get(name) == entry["folder"] and (repo / name).is_dir():
            write_folder(repo, entry["folder"], rename_model(read_folder(repo / name), entry["folder"], {}))


def _switch(live: LiveDeployment, record: VersionRecord, target: int, log: Log) -> None:
    """Serve version `target` in full: load its components, point every public pipeline that holds
    something else at it (a reload), unload what no longer serves."""
    repo = live.repository
    version = record.versions[target]
    loaded = _loaded(live)
    missing = sorted({entry["model"] for entry in version.components.values()} - loaded)
    started = time.monotonic()
    _load(live, missing, f"the models of version {target}")
    if missing:
        log(f"  loaded {', '.join(missing)} in {time.monotonic() - started:.1f} s")
    switched = []
    for name, entry in sorted(version.pipelines.items()):
        if record.public.get(name) != entry["folder"] or not (repo / name).is_dir():
            write_folder(repo, name, rename_model(read_folder(repo / entry["folder"]), name, {}))
            switched.append(name)
    started = time.monotonic()
    _load(live, switched, f"the pipelines of version {target}", one_by_one=True)
    for name in switched:
        record.public[name] = version.pipelines[name]["folder"]
    if switched:
        log(f"  switched {', '.join(switched)} to version {target} in {time.monotonic() - started:.1f} s")
    keep = version.models()
    ours = {entry["model"] for v in record.versions.values() for entry in v.components.values()}
    hidden = {entry["folder"] for v in record.versions.values() for entry in v.pipelines.values()}
    gone = [p for p in record.public if p not in version.pipelines]
    stale_pipelines = sorted(((hidden | set(gone)) & loaded) - keep)
    stale_components = sorted((ours & _loaded(live)) - keep)
    _drain(live, stale_pipelines + stale_components)
    _unload(live, stale_pipelines + stale_components, log)
    for name in gone:
        del record.public[name]
    if stale_pipelines or stale_components:
        log(f"  unloaded {', '.join(stale_pipelines + stale_components)}")
    record.current = target
    record.canary = None
    log(f"version {target} serves")


def _interface(text: bytes) -> tuple[int, list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    config = text_format.Parse(text.decode(), model_config_pb2.ModelConfig())

    def tensors(entries: Any) -> list[tuple[str, str, list[int]]]:
        return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in entries]

    return config.max_batch_size, tensors(config.input), tensors(config.output)


def router_files(
    pipeline: str, old: tuple[int, str], new: tuple[int, str], config: bytes, percent: float, shadow: bool
) -> dict[str, bytes]:
    """The public model of a pipeline during a canary: templates/router.py and its config."""
    max_batch_size, inputs, outputs = _interface(config)
    route = {
        "pipeline": pipeline,
        "old": old[1],
        "new": new[1],
        "old_version": f"v{old[0]}",
        "new_version": f"v{new[0]}",
        "percent": percent,
        "shadow": shadow,
    }
    text = (
        template_env()
        .get_template("router.pbtxt.j2")
        .render(
            version=__version__,
            pipeline=pipeline,
            old=old[1],
            new=new[1],
            old_version=old[0],
            new_version=new[0],
            percent=percent,
            shadow=shadow,
            max_batch_size=max_batch_size,
            inputs=inputs,
            outputs=outputs,
            instances=ROUTER_INSTANCES,
            route=json.dumps(route, sort_keys=True),
        )
    )
    return {"config.pbtxt": text.encode(), "1/model.py": (templates_dir() / "router.py").read_bytes()}


def _start_canary(
    live: LiveDeployment,
    record: VersionRecord,
    number: int,
    pipelines: list[str],
    percent: float,
    shadow: bool,
    log: Log,
) -> None:
    repo = live.repository
    old, new = record.versions[record.current], record.versions[number]
    routers: dict[str, dict[str, bytes]] = {}
    for name in pipelines:
        old_folder, new_folder = old.pipelines[name]["folder"], new.pipelines[name]["folder"]
        old_config = (repo / old_folder / "config.pbtxt").read_bytes()
        new_config = (repo / new_folder / "config.pbtxt").read_bytes()
        if _interface(old_config) != _interface(new_config):
            raise CompoundError(
                f"pipeline '{name}' changes its inputs, outputs or batching: one router cannot serve both versions",
                hint="update without --canary",
            )
        routers[name] = router_files(
            name, (record.current, old_folder), (number, new_folder), new_config, percent, shadow
        )
    hidden = sorted({old.pipelines[n]["folder"] for n in pipelines} | {new.pipelines[n]["folder"] for n in pipelines})
    _load(live, hidden, "the pipeline versions the canary routes to", one_by_one=True)
    for name, files in routers.items():
        write_folder(repo, name, files)
    started = time.monotonic()
    _load(live, sorted(routers), "the canary routers", one_by_one=True)
    for name in routers:
        record.public[name] = "router"
    record.canary = {"from": record.current, "to": number, "percent": percent, "shadow": shadow, "pipelines": pipelines}
    mode = "copied to" if shadow else "sent to"
    log(
        f"canary: {percent:g}% of the requests of {', '.join(pipelines)} {mode} version {number} "
        f"(routers loaded in {time.monotonic() - started:.1f} s); `compound promote` or `compound rollback` next"
    )
