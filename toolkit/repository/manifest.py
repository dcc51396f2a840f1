"""compound.json: what a rendered repository holds, for everything that acts on it later.

`compound generate` (toolkit/repository/render.py) writes it at the repository root, where Triton
ignores plain files. Deploy reads which components want Redis and which start unloaded; the adaptive
runtime its bounds, threads and edges, and which models compute; the load test which components run
inside a fused model; the Kubernetes target what to scale and chart; `compound update` rewrites it
with the model names of the version in service (toolkit/repository/versions.py keeps one per
version). This module is its one reader and writer, so the file's shape lives in one place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from toolkit.core.errors import CompoundError

if TYPE_CHECKING:  # the planner is heavy (pydantic); its Device is only an annotation here
    from toolkit.plan import Device

FILE = "compound.json"  # at the repository root; its presence marks a folder compound generated


@dataclass(frozen=True)
class PipelineEntry:
    """How a pipeline is served: "ensemble", "orchestrator" or "fused", why, and its component models."""

    kind: str
    reason: str = ""
    models: list[str] = field(default_factory=list)
    streaming: bool = False  # its last step streams: a client or load test reads many responses per request


@dataclass(frozen=True)
class AutoscaleBounds:
    """The instances the adaptive runtime may give a model; min 0: loaded on demand, unloaded idle."""

    min: int
    max: int
    idle_s: float


@dataclass(frozen=True)
class FusedGroup:
    """A fused model an ensemble calls as one step (`fuse: [groups]`): its pipeline and components."""

    pipeline: str
    models: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CacheTiers:
    """A component's tiered output cache: the in-process tier's size, whether Redis backs it, the TTL."""

    memory_mb: float
    redis: bool
    ttl_s: float


@dataclass(frozen=True)
class Manifest:
    """The contents of compound.json. Component names are the spec's until an update renames them to
    the Triton models serving them (`renamed`)."""

    deployment: str = ""
    device: Device = "cpu"
    spec: str = ""  # the spec file's name
    generator: str = ""  # "compound <version>"
    models: list[str] = field(default_factory=list)  # components deployed as Triton models of their own
    pipelines: dict[str, PipelineEntry] = field(default_factory=dict)
    autoscale: dict[str, AutoscaleBounds] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)  # native thread pools per instance
    edges: list[tuple[str, str]] = field(default_factory=list)  # [producer, consumer]: whose load follows whose
    fused_groups: dict[str, FusedGroup] = field(default_factory=dict)
    tiered_cache: dict[str, CacheTiers] = field(default_factory=dict)

    # --- what the readers ask ------------------------------------------------------------------------

    @property
    def fused_models(self) -> dict[str, list[str]]:
        """Triton models that run components in-process -> those components: fused pipelines, then
        fuse groups (each sorted by name). They compute, unlike ensembles and orchestrators, whose
        time is their callees'."""
        out = {name: list(p.models) for name, p in sorted(self.pipelines.items()) if p.kind == "fused"}
        out.update((name, list(g.models)) for name, g in sorted(self.fused_groups.items()))
        return out

    @property
    def on_demand_models(self) -> list[str]:
        """Models that start unloaded (autoscale min 0)."""
        return sorted(name for name, bounds in self.autoscale.items() if bounds.min == 0)

    @property
    def redis_cached_models(self) -> list[str]:
        """Components whose tiered cache has a Redis tier (deploy needs --redis for them)."""
        return sorted(name for name, cache in self.tiered_cache.items() if cache.redis)

    def renamed(self, callees: Mapping[str, str]) -> Manifest:
        """This manifest with component names replaced by the Triton models serving them (after an
        update), so the runtime, `status` and the load test see the models that are loaded."""

        def name(component: str) -> str:
            return callees.get(component, component)

        return replace(
            self,
            models=[name(m) for m in self.models],
            pipelines={p: replace(e, models=[name(m) for m in e.models]) for p, e in self.pipelines.items()},
            autoscale={name(m): b for m, b in self.autoscale.items()},
            threads={name(m): n for m, n in self.threads.items()},
            edges=[(name(a), name(b)) for a, b in self.edges],
            fused_groups={name(g): info for g, info in self.fused_groups.items()},
            tiered_cache={name(m): c for m, c in self.tiered_cache.items()},
        )

    # --- the file ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON object; fused_groups and tiered_cache only when there are some."""
        out: dict[str, Any] = {
            "generator": self.generator,
            "deployment": self.deployment,
            "device": self.device,
            "spec": self.spec,
            "models": list(self.models),
            "pipelines": {
                n: {
                    "kind": p.kind,
                    "reason": p.reason,
                    "models": list(p.models),
                    **({"streaming": True} if p.streaming else {}),
                }
                for n, p in self.pipelines.items()
            },
            "autoscale": {n: {"min": b.min, "max": b.max, "idle_s": b.idle_s} for n, b in self.autoscale.items()},
            "threads": dict(self.threads),
            "edges": [[a, b] for a, b in self.edges],
        }
        if self.fused_groups:
            out["fused_groups"] = {
                n: {"pipeline": g.pipeline, "models": list(g.models)} for n, g in self.fused_groups.items()
            }
        if self.tiered_cache:
            out["tiered_cache"] = {
                n: {"memory_mb": c.memory_mb, "redis": c.redis, "ttl_s": c.ttl_s} for n, c in self.tiered_cache.items()
            }
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = FILE) -> Manifest:
        """A manifest from its JSON object; keys left out take their defaults (older files, tests).
        A value of the wrong shape is a CompoundError naming `source` and the key."""
        try:
            device = data.get("device", "cpu")
            if device not in ("cpu", "gpu"):
                raise ValueError(f"device {device!r} is neither cpu nor gpu")
            return cls(
                deployment=str(data.get("deployment") or ""),
                device="gpu" if device == "gpu" else "cpu",
                spec=str(data.get("spec") or ""),
                generator=str(data.get("generator") or ""),
                models=[str(m) for m in data.get("models") or []],
                pipelines={
                    str(n): PipelineEntry(
                        str(p["kind"]),
                        str(p.get("reason", "")),
                        [str(m) for m in p.get("models", [])],
                        bool(p.get("streaming", False)),
                    )
                    for n, p in (data.get("pipelines") or {}).items()
                },
                autoscale={
                    str(n): AutoscaleBounds(b["min"], b["max"], b["idle_s"])
                    for n, b in (data.get("autoscale") or {}).items()
                },
                threads={str(n): int(t) for n, t in (data.get("threads") or {}).items()},
                edges=[(str(a), str(b)) for a, b in data.get("edges") or []],
                fused_groups={
                    str(n): FusedGroup(str(g["pipeline"]), [str(m) for m in g.get("models", [])])
                    for n, g in (data.get("fused_groups") or {}).items()
                },
                tiered_cache={
                    str(n): CacheTiers(c["memory_mb"], bool(c["redis"]), c["ttl_s"])
                    for n, c in (data.get("tiered_cache") or {}).items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CompoundError(
                f"{source} is malformed: {type(exc).__name__}: {exc}", hint="generate the repository again"
            ) from None

    @classmethod
    def read(cls, repository: str | Path, *, missing_ok: bool = False) -> Manifest:
        """The repository's manifest. No file: a CompoundError (the folder was not generated by
        compound), or with `missing_ok` an empty manifest. An unreadable file is always an error."""
        path = Path(repository) / FILE
        if not path.is_file():
            if missing_ok:
                return cls()
            raise CompoundError(f"{repository} has no {FILE}: it was not generated by compound")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CompoundError(f"{path} is unreadable: {exc}", hint="generate the repository again") from None
        if not isinstance(data, dict):
            raise CompoundError(f"{path} is not a JSON object", hint="generate the repository again")
        return cls.from_dict(data, str(path))

    @classmethod
    def find(cls, repository: str | Path) -> Optional[Manifest]:
        """The manifest, or None where there is no readable one (a folder compound did not generate)."""
        try:
            return cls.read(repository)
        except CompoundError:
            return None

    def write(self, repository: str | Path) -> Path:
        """Replace the repository's manifest in one step: a reader (the runtime polls it) never sees
        half a file."""
        path = Path(repository) / FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
        return path
