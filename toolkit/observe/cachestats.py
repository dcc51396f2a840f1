"""The tiered cache's figures for a load test, from Triton's Prometheus metrics before and after a run.

Every Python-backend instance that runs a cached component (templates/cache.py) exports cumulative
``compound_cache_*`` series labelled by component, tier ("memory" or "redis") and Triton instance.
Triton's statistics API knows nothing about them (they live inside the model, and may belong to a
step of a fused pipeline that is no Triton model at all), so the load test scrapes the metrics
endpoint at the same moments as the statistics snapshots and diffs the counters here. Everything is
a pure function except :func:`scrape`.
"""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from toolkit.repository.manifest import Manifest

PREFIX = "compound_cache_"
HITS = "compound_cache_hits_total"
MISSES = "compound_cache_misses_total"
STORED = "compound_cache_stored_bytes_total"
ERRORS = "compound_cache_errors_total"
MEMORY_BYTES = "compound_cache_memory_bytes"
MEMORY, REDIS = "memory", "redis"
SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Series:
    """One exported series: a metric of one component's tier in one Triton instance."""

    name: str
    component: str
    tier: str
    instance: str


Snapshot = dict[Series, float]


# --- parsing --------------------------------------------------------------------------------------

# name{labels} value [timestamp]; label values are quoted with \\, \" and \n escapes
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _labels(text: str) -> dict[str, str]:
    return {
        key: re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], value) for key, value in _LABEL.findall(text or "")
    }


def parse_metrics(text: str) -> Snapshot:
    """The ``compound_cache_*`` samples of a Prometheus text exposition, keyed by series.

    A small parser rather than prometheus_client's: that package is not installed with locust, and
    only plain samples of our own counters and gauge matter here (other families and malformed lines
    are skipped, never fatal: the cache columns are a bonus to the load test report)."""
    result: Snapshot = {}
    for line in text.splitlines():
        if not line.startswith(PREFIX):
            continue  # comments (# HELP, # TYPE), blank lines and Triton's own nv_* families
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        labels = _labels(match.group("labels"))
        series = Series(
            match.group("name"), labels.get("component", ""), labels.get("tier", ""), labels.get("instance", "")
        )
        result[series] = result.get(series, 0.0) + value
    return result


# --- the delta ------------------------------------------------------------------------------------


def counter_delta(before: Optional[float], after: float) -> float:
    """What a counter grew by; one that went down restarted (its instance was reloaded) and counts
    from zero, so an unload between the snapshots never gives a negative figure."""
    if before is None or after < before:
        return max(after, 0.0)
    return after - before


Place = tuple[str, Optional[str]]  # (component, the model running it as a step; None: its own model)


def diff(
    before: Snapshot, after: Snapshot, place: Callable[[Series], Place] = lambda s: (s.component, None)
) -> dict[tuple[Place, str], dict[str, float]]:
    """Counter growth summed over instances, per (place, tier) and metric name.

    Each series is diffed on its own before summing: an instance that vanished (unloaded) or
    restarted must not cancel out another's growth. Gauges are left out (see :func:`gauges`)."""
    result: dict[tuple[Place, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for series, value in after.items():
        if series.name.endswith("_total"):
            result[(place(series), series.tier)][series.name] += counter_delta(before.get(series), value)
    return {key: dict(values) for key, values in result.items()}


def gauges(
    after: Snapshot, name: str = MEMORY_BYTES, place: Callable[[Series], Place] = lambda s: (s.component, None)
) -> dict[Place, float]:
    """A gauge's value at the end of the run, summed over instances, per place."""
    result: dict[Place, float] = defaultdict(float)
    for series, value in after.items():
        if series.name == name:
            result[place(series)] += value
    return dict(result)


# --- figures per component ------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheFigures:
    """One component's cache during the run, in rows of a batch (not requests)."""

    component: str
    step_of: Optional[str]  # the Triton model that runs it as a step (fused), None if it is a model itself
    memory_tier: bool
    redis_tier: bool
    lookups: int  # rows asked of the first tier
    hits_memory: int
    hits_redis: int
    computed: int  # rows no tier answered (a row repeated in one batch is computed once, but counted each time)
    hit_pct: float
    redis_errors: int  # Redis calls that failed (their rows were computed)
    stored_bytes_memory: int
    stored_bytes_redis: int
    memory_bytes: int  # what the in-process tiers held at the end, all instances together

    @property
    def label(self) -> str:
        return f"{self.component} (step in {self.step_of})" if self.step_of else self.component


def fused_steps(manifest: Manifest) -> dict[str, str]:
    """Component -> the fused model (pipeline or fuse group) that runs it, from a repository's
    compound.json; components that are also deployed as models of their own are left out (their name
    is a Triton model)."""
    deployed = set(manifest.models)
    steps: dict[str, str] = {}
    for fused, components in manifest.fused_models.items():
        for model in components:
            if model not in deployed:
                steps.setdefault(model, fused)
    return steps


def _host_model(instances: Iterable[str], models: Iterable[str]) -> Optional[str]:
    """The Triton model whose instances ("<model>_<group>_<n>") ran the component, if one fits."""
    names = sorted(models, key=len, reverse=True)
    for instance in sorted(instances):
        for model in names:
            if instance.startswith(model + "_"):
                return model
    return None


def figures(
    before: Snapshot,
    after: Snapshot,
    models: Iterable[str] = (),
    steps: Optional[Mapping[str, str]] = None,
) -> list[CacheFigures]:
    """Per component that used its cache during the run, sorted by name.

    ``models`` are the server's Triton model names (a component among them is a model; any other is
    a step, hosted by the model whose instances report it, else the one ``steps`` names)."""
    models = set(models)

    def place(series: Series) -> Place:
        """A series of a component is a step's when another model's instance reports it (a fused
        model); the same component may also run as a model of its own: two rows."""
        host = _host_model([series.instance], models) or (steps or {}).get(series.component)
        return (series.component, None if host in (None, series.component) else host)

    delta = diff(before, after, place)
    memory_held = gauges(after, place=place)
    tiers: dict[Place, set[str]] = defaultdict(set)
    for series in after:
        tiers[place(series)].add(series.tier)
    result = []
    for where in sorted({p for p, _ in delta}, key=lambda p: (p[0], p[1] or "")):
        component, step_of = where
        mem = delta.get((where, MEMORY), {})
        red = delta.get((where, REDIS), {})
        if not any(mem.values()) and not any(red.values()):
            continue  # a cache this run did not touch (another pipeline's component)
        has_memory, has_redis = MEMORY in tiers[where], REDIS in tiers[where]
        first = mem if has_memory else red
        lookups = int(first.get(HITS, 0) + first.get(MISSES, 0))
        hits = int(mem.get(HITS, 0)), int(red.get(HITS, 0))
        result.append(
            CacheFigures(
                component=component,
                step_of=step_of,
                memory_tier=has_memory,
                redis_tier=has_redis,
                lookups=lookups,
                hits_memory=hits[0],
                hits_redis=hits[1],
                computed=max(lookups - sum(hits), 0),
                hit_pct=round(100.0 * sum(hits) / lookups, 1) if lookups else 0.0,
                redis_errors=int(red.get(ERRORS, 0)),
                stored_bytes_memory=int(mem.get(STORED, 0)),
                stored_bytes_redis=int(red.get(STORED, 0)),
                memory_bytes=int(memory_held.get(where, 0)),
            )
        )
    return result


# --- table columns --------------------------------------------------------------------------------


def columns(cache: list[CacheFigures]) -> list[tuple[str, str]]:
    """The cache columns the table needs: none without cache figures, a tier's hits only when some
    component has that tier, Redis errors only when there were any."""
    if not cache:
        return []
    result = []
    if any(f.memory_tier for f in cache):
        result.append(("hits_memory", "Hits mem"))
    if any(f.redis_tier for f in cache):
        result.append(("hits_redis", "Hits redis"))
    result += [("computed", "Computed"), ("hit_pct", "Hit %")]
    if any(f.redis_errors for f in cache):
        result.append(("redis_errors", "Redis errors"))
    return result


def merge_rows(
    rows: list[dict[str, Any]],
    models: list[str],
    cache: list[CacheFigures],
    model_keys: list[str],
    blank: str = "-",
) -> list[dict[str, Any]]:
    """The breakdown's rows (one per name in ``models``) with cache columns added: a component that
    is a row gets its figures there, any other (a fused step, a model outside the breakdown) a row
    of its own, after its host's row when that is in the table. Cells a row has no figure for are
    ``blank``."""
    keys = [key for key, _ in columns(cache)]
    if not keys:
        return rows
    by_component = {f.component: f for f in cache}
    extra: dict[Optional[str], list[CacheFigures]] = defaultdict(list)
    for f in cache:
        if f.component not in models:
            extra[f.step_of if f.step_of in models else None].append(f)

    def cells(f: Optional[CacheFigures]) -> dict[str, Any]:
        return {key: getattr(f, key) if f is not None else blank for key in keys}

    def own_row(f: CacheFigures) -> dict[str, Any]:
        return {**{key: blank for key in model_keys}, "model": f.label, **cells(f)}

    result = []
    for row, model in zip(rows, models):
        result.append({**row, **cells(by_component.get(model))})
        result += [own_row(f) for f in extra.pop(model, [])]
    for leftover in extra.values():
        result += [own_row(f) for f in leftover]
    return result


# --- fetching -------------------------------------------------------------------------------------


def scrape(url: Optional[str], timeout: float = SCRAPE_TIMEOUT_S) -> Optional[Snapshot]:
    """The cache series on a metrics endpoint; None when there is no URL or it cannot be read (the
    load test then simply has no cache columns)."""
    if not url:
        return None
    if "://" not in url:
        url = f"http://{url}"
    if not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the user's server URL
            if response.status != 200:
                return None
            return parse_metrics(response.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return None
