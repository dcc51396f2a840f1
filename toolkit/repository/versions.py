"""Pipeline versions of a deployed repository: what changed between two renders, and the record
(`compound.versions.json` at the repository root) of which component models make up each version.

Pure bookkeeping on file contents, no server: `toolkit/update/apply.py` acts on what this decides.

Naming. Version 1 is the repository as `compound generate` wrote it (plain names). A component that
changes in version N is served as a new Triton model `<component>.vN` beside the old one (spec names
never hold a dot, so these never collide with a component); an unchanged component keeps the model it
had. Every pipeline version is kept as a hidden model folder `<pipeline>.vN` (its config, steps or
program pointing at that version's component models); the public `<pipeline>` folder holds a copy of
the current version, or the canary router.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from toolkit.repository.manifest import Manifest

VERSIONS_FILE = "compound.versions.json"
BOOK_FORMAT = 1
SKIPPED_PARTS = ("__pycache__",)


def versioned(name: str, version: int) -> str:
    """The Triton model serving `name` as introduced in `version` (version 1: the plain name)."""
    return name if version == 1 else f"{name}.v{version}"


def archive_name(pipeline: str, version: int) -> str:
    """The hidden model folder keeping one version of a pipeline (loaded only during a canary)."""
    return f"{pipeline}.v{version}"


def model_files(files: dict[str, bytes], model: str) -> dict[str, bytes]:
    """The files of one model folder, relative to it."""
    prefix = model + "/"
    return {
        path[len(prefix) :]: content
        for path, content in files.items()
        if path.startswith(prefix) and not any(part in SKIPPED_PARTS for part in path.split("/"))
    }


def _without_comments(text: bytes) -> bytes:
    """A config without its comment lines (generator version, spec line numbers): those change nothing
    Triton runs."""
    return b"\n".join(line for line in text.splitlines() if not line.lstrip().startswith(b"#"))


def fingerprint(files: dict[str, bytes], extra: str = "") -> str:
    """What decides a model's behaviour: every file of its folder (configs without comments), plus
    `extra` (a component's identity; a pipeline's component fingerprints)."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(files):
        if path.endswith(".pyc"):
            continue
        content = _without_comments(files[path]) if path.endswith("config.pbtxt") else files[path]
        digest.update(path.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()[:24]


_NAME_LINE = re.compile(rb'^name: "(?:[^"\\]|\\.)*"$', re.MULTILINE)
_STEP_MODEL = re.compile(rb'(model_name: )"([^"]*)"')


def rename_model(files: dict[str, bytes], name: str, callees: dict[str, str]) -> dict[str, bytes]:
    """One model folder's files (relative to it) served under `name`, calling component models by
    the names in `callees` (component -> Triton model): the config's name, an ensemble's steps, an
    orchestrator's program. Comments are kept; a line says which model this folder serves."""
    out: dict[str, bytes] = {}
    for path, content in files.items():
        if path == "config.pbtxt":
            content = _NAME_LINE.sub(b'name: "' + name.encode() + b'"', content, count=1)
            content = _STEP_MODEL.sub(
                lambda m: m.group(1) + b'"' + callees.get(m.group(2).decode(), m.group(2).decode()).encode() + b'"',
                content,
            )
        elif path.endswith("/program.json"):
            program = json.loads(content)
            if not program.get("handlers"):  # fused programs call no models: their steps are handler names
                program = _rename_program(program, callees)
            content = (json.dumps(program, indent=1, sort_keys=True) + "\n").encode()
        out[path] = content
    return out


def _rename_program(node: Any, callees: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_rename_program(item, callees) for item in node]
    if not isinstance(node, dict):
        return node
    renamed = {key: _rename_program(value, callees) for key, value in node.items()}
    if node.get("op") == "model" and not node.get("inline") and isinstance(node.get("model"), str):
        renamed["model"] = callees.get(node["model"], node["model"])
    for key in ("prewarm", "on_demand"):
        if isinstance(node.get(key), list):
            renamed[key] = [callees.get(m, m) for m in node[key]]
    return renamed


@dataclass
class Version:
    """One pipeline version: the Triton model serving each component and pipeline, and their
    fingerprints (what decides whether the next render changed them)."""

    number: int
    components: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {model, fingerprint}
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {folder, fingerprint, models}
    manifest: Manifest = field(default_factory=Manifest)  # compound.json while this version serves
    created: str = ""

    @property
    def callees(self) -> dict[str, str]:
        return {name: entry["model"] for name, entry in self.components.items()}

    def models(self) -> set[str]:
        """Every Triton model this version serves with: its component models and public pipelines."""
        return {entry["model"] for entry in self.components.values()} | set(self.pipelines)


@dataclass
class VersionRecord:
    """The repository's version record: every version, which serves (current), the canary under way,
    what each public pipeline folder holds now (a version's folder name, or "router"), and the
    versions that served in turn (what `rollback` returns to)."""

    versions: dict[int, Version] = field(default_factory=dict)
    current: int = 1
    canary: Optional[dict[str, Any]] = None  # {from, to, percent, shadow, pipelines}
    public: dict[str, str] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)  # versions that served in turn; rollback pops

    @property
    def latest(self) -> int:
        return max(self.versions)

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": BOOK_FORMAT,
                    "current": self.current,
                    "history": self.history,
                    "canary": self.canary,
                    "public": self.public,
                    "versions": {
                        str(n): {
                            "created": v.created,
                            "components": v.components,
                            "pipelines": v.pipelines,
                            "manifest": v.manifest.to_dict(),
                        }
                        for n, v in sorted(self.versions.items())
                    },
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> VersionRecord:
        data = json.loads(text)
        if data.get("format") != BOOK_FORMAT:
            raise ValueError(f"format {data.get('format')} is not {BOOK_FORMAT}")
        versions = {
            int(n): Version(
                int(n),
                v["components"],
                v["pipelines"],
                Manifest.from_dict(v.get("manifest", {}), f"{VERSIONS_FILE} (version {n})"),
                v.get("created", ""),
            )
            for n, v in data["versions"].items()
        }
        return cls(versions, data["current"], data.get("canary"), data.get("public", {}), data.get("history", []))


def describe_version(files: dict[str, bytes], manifest: Manifest) -> Version:
    """A render's components and pipelines with their fingerprints (component names as rendered;
    `next_version` decides the Triton models). A component's folder holds everything its identity
    covers (handler code, parameters and outputs in the config) and the rest of its config."""
    groups = manifest.fused_groups  # fused models an ensemble calls as one step: versioned like components
    components = {
        name: {"model": name, "fingerprint": fingerprint(model_files(files, name))}
        for name in [*manifest.models, *groups]
    }
    pipelines = {}
    for name, info in sorted(manifest.pipelines.items()):
        uses = [*info.models, *(g for g, group in groups.items() if group.pipeline == name)]
        extra = ",".join(f"{m}={components[m]['fingerprint']}" for m in sorted(uses) if m in components)
        pipelines[name] = {
            "folder": name,
            "fingerprint": fingerprint(model_files(files, name), extra),
            "models": list(uses),
            "kind": info.kind,
        }
    return Version(0, components, pipelines, manifest)


@dataclass
class Change:
    """What an update does: the new version, and what differs from the current one."""

    version: Version
    changed_components: list[str]
    removed_components: list[str]
    changed_pipelines: list[str]
    new_pipelines: list[str]
    removed_pipelines: list[str]

    @property
    def empty(self) -> bool:
        return not (
            self.changed_components
            or self.removed_components
            or self.changed_pipelines
            or self.new_pipelines
            or self.removed_pipelines
        )

    def summary(self) -> str:
        parts = []
        for label, names in (
            ("changed components", self.changed_components),
            ("removed components", self.removed_components),
            ("changed pipelines", self.changed_pipelines),
            ("new pipelines", self.new_pipelines),
            ("removed pipelines", self.removed_pipelines),
        ):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        return "; ".join(parts) or "nothing changed"


def next_version(record: VersionRecord, rendered: Version, taken: set[str]) -> Change:
    """The version an update to `rendered` makes: changed (or new) components get a model of their
    own, `<name>.vN` (the plain name if no folder has it yet); unchanged ones keep their model; a
    pipeline is changed when its own files or any of its components changed. `taken`: model folders
    that exist in the repository."""
    current = record.versions[record.current]
    number = record.latest + 1
    version = Version(number, manifest=rendered.manifest)
    changed = []
    for name, entry in rendered.components.items():
        before = current.components.get(name)
        if before is not None and before["fingerprint"] == entry["fingerprint"]:
            version.components[name] = dict(before)
        else:
            model = name if name not in taken else versioned(name, number)
            version.components[name] = {"model": model, "fingerprint": entry["fingerprint"]}
            changed.append(name)
    changed_pipelines: list[str] = []
    new_pipelines: list[str] = []
    for name, entry in rendered.pipelines.items():
        before = current.pipelines.get(name)
        if before is not None and before["fingerprint"] == entry["fingerprint"]:
            version.pipelines[name] = dict(before)
            continue
        version.pipelines[name] = {**entry, "folder": archive_name(name, number)}
        (changed_pipelines if before is not None else new_pipelines).append(name)
    return Change(
        version,
        changed,
        sorted(set(current.components) - set(rendered.components)),
        changed_pipelines,
        new_pipelines,
        sorted(set(current.pipelines) - set(rendered.pipelines)),
    )


def bootstrap(rendered_from_disk: Version) -> VersionRecord:
    """The record of a repository deployed before any update: version 1 is what is on disk, each
    pipeline's version-1 folder to be archived as `<pipeline>.v1`."""
    version = Version(1, rendered_from_disk.components, {}, rendered_from_disk.manifest)
    for name, entry in rendered_from_disk.pipelines.items():
        version.pipelines[name] = {**entry, "folder": archive_name(name, 1)}
    record = VersionRecord({1: version}, current=1, history=[1])
    record.public = {name: entry["folder"] for name, entry in version.pipelines.items()}
    return record


def serving_models(text: str) -> list[str]:
    """The models a server restarted on a repository with this record loads: the current version's,
    and during a canary the router's two pipeline versions and the new components."""
    record = VersionRecord.from_json(text)
    names = record.versions[record.current].models()
    if record.canary:
        new, old = record.versions[record.canary["to"]], record.versions[record.canary["from"]]
        names |= {entry["model"] for entry in new.components.values()}
        for pipeline in record.canary["pipelines"]:
            names |= {old.pipelines[pipeline]["folder"], new.pipelines[pipeline]["folder"]}
    return sorted(names)
