"""Candidate plans for `compound tune`, from measured cost curves: pure decisions, unit-tested.

The cost model is the one `compound bench` plans instances with (allocate.py): each handler's
seconds per call at batch sizes 1..max_batch_size, measured in-process on real inputs. From it:

- the operating batch (the cheapest per row), lowered until a batch's path fits the P95 SLO;
- per candidate structure, the Triton models it deploys ("units": a component, or several steps
  fused into one model) and their instance counts (each unit's share of the cores, allocate());
- a predicted throughput, used only to order candidates for measurement: the measured figures on
  the real server decide.

Structures: the spec as written (the baseline, always measured); an ensemble with planned instances;
the whole pipeline fused (one hop), also filled (waiting for each instance's share of the clients)
and threaded (half the instances at two threads each); partially fused (light neighbouring steps
fused into one model, the heavy or GPU steps kept separate with their own instances).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from toolkit.plan.allocate import allocate, operating_batch
from toolkit.plan.graph import PipelinePlan
from toolkit.spec.schema import DynamicBatching, FuseGroup, Instances, Spec

# Server CPU one request costs per Python model it passes through (request and response marshalled
# through shared memory, a stub's execute()): ~1.3 ms over the 5 hops of the light fan-out ensemble
# (docs/benchmarks.md). It is what fusing saves, so it orders fused, partial and ensemble plans.
HOP_OVERHEAD_S = 0.25e-3
# A step with this share of the pipeline's compute or more is "heavy": partial fusion keeps it apart.
HEAVY_SHARE = 0.35
# A handler "uses threads well" when t threads make a call at least this fraction of t times faster.
THREADS_EFFICIENCY = 0.75
# A fused model's queue waits for its share of the clients' requests (their answers go out, they come
# back) at most this fraction of the time its batch then takes to run: with no delay, a closed loop's
# batches fragment (an idle instance takes the first request back, alone), and on a pipeline whose
# cost per row falls with the batch that costs more CPU per request than the wait costs latency.
FILL_DELAY_SHARE = 0.1
FILL_DELAY_MAX_US = 100_000
# `fused-threaded` (half the instances, two threads each) is worth measuring when two threads make the
# pipeline's call at the operating batch (its steps weighted by their cost) at least this much faster:
# fewer instances then each take a larger batch (a call's fixed work, such as packing a weight matrix,
# once for more rows) and read their weights once for two cores, which the per-row prediction cannot
# price (docs/tune.md).
THREADED_MIN_SPEEDUP = 1.2
# Variants of `fused` that differ from it in how their batches fill, which a prediction at ideal
# batches cannot rank (it put the filled plan last while it served the most): they are measured right
# after `fused`, so a budget that measures one measures them all.
AFTER_FUSED = ("fused-filled", "fused-threaded")


@dataclass(frozen=True)
class Unit:
    """One Triton model a candidate deploys for the pipeline: a component, or fused steps."""

    name: str
    models: tuple[str, ...]
    count: int
    threads: int = 1
    fused: bool = False


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: str  # as-written | ensemble | fused | partial
    units: tuple[Unit, ...]
    max_batch: int  # the components' max_batch_size (0: left as written)
    queue_delay_us: Optional[int]  # None: left as written
    predicted_rps: float
    why: str
    groups: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())  # partial: (group name, models)
    preferred_batch: Optional[int] = None  # the components' preferred batch size (None: none)

    def describe(self) -> str:
        parts = []
        for u in self.units:
            label = f"[{' + '.join(u.models)}]" if u.fused else u.name
            parts.append(f"{label} x{u.count}" + (f" ({u.threads} threads)" if u.threads > 1 else ""))
        return ", ".join(parts)


@dataclass(frozen=True)
class Batching:
    batch: int  # the operating batch: max_batch_size of the tuned components
    why: str


def choose_batch(
    curves: Mapping[str, Mapping[int, float]], max_batch: int, slo_p95_ms: Optional[float] = None
) -> Batching:
    """The cheapest batch per row (allocate.operating_batch); with an SLO, the largest batch at or
    below it whose path (every step one after another at that batch) takes at most half the SLO,
    leaving the other half to queueing."""
    best = operating_batch(curves, max_batch)
    cost = {m: c[best] / best * 1e3 for m, c in curves.items()}
    why = f"batch {best}: the lowest total cost per row ({sum(cost.values()):.2f} ms)"
    if slo_p95_ms is None:
        return Batching(best, why)
    sizes = sorted(b for b in set.intersection(*(set(c) for c in curves.values())) if b <= best)
    fitting = [b for b in sizes if sum(c[b] for c in curves.values()) * 1e3 <= slo_p95_ms / 2]
    if not fitting:
        path = sum(c[sizes[0]] for c in curves.values()) * 1e3
        return Batching(sizes[0], f"batch {sizes[0]}: even one row's path takes {path:.1f} ms, above half the SLO")
    chosen = fitting[-1]
    if chosen == best:
        return Batching(best, why + f"; its path ({sum(c[best] for c in curves.values()) * 1e3:.1f} ms) fits the SLO")
    path = sum(c[chosen] for c in curves.values()) * 1e3
    return Batching(
        chosen, f"batch {chosen}: the largest whose path ({path:.1f} ms) fits half the {slo_p95_ms:g} ms P95 SLO"
    )


def _at(curve: Mapping[int, float], batch: int) -> float:
    """Seconds per call at `batch`, linear between the measured sizes (beyond them: per row)."""
    sizes = sorted(curve)
    below = max((b for b in sizes if b <= batch), default=sizes[0])
    above = min((b for b in sizes if b >= batch), default=sizes[-1])
    if above == below:
        return curve[below] * batch / below
    return curve[below] + (curve[above] - curve[below]) * (batch - below) / (above - below)


def fill_batching(unit_curve: Mapping[int, float], batch: int, count: int, concurrency: int) -> tuple[int, int]:
    """(preferred batch size, queue delay in us) for one batched model of `count` instances under a
    closed loop of `concurrency` clients: each instance's share of the requests in flight (at most
    `batch`) is the batch to wait for, and the wait is FILL_DELAY_SHARE of that batch's run time (from
    the unit's cost curve), so it fills when the clients keep up and costs little when they do not.
    A share of one row needs no wait: (1, 0)."""
    share = max(1, min(batch, concurrency // max(1, count)))
    if share <= 1:
        return 1, 0
    seconds = _at(unit_curve, share)
    return share, min(FILL_DELAY_MAX_US, max(1, round(FILL_DELAY_SHARE * seconds * 1e6)))


def threads_for(speedups: Mapping[int, float], count: int, cores: int) -> int:
    """The most threads (measured) that stay efficient and fit the cores beside the unit's instances."""
    best = 1
    for t, speedup in sorted(speedups.items()):
        if t > 1 and speedup >= THREADS_EFFICIENCY * t and count * t <= cores:
            best = t
    return best


def predict_rps(units: Sequence[Unit], per_row: Mapping[str, float], cores: int) -> float:
    """Requests/s the plan can serve: bounded by all cores (compute plus one hop per unit) and by
    each unit's instances (a unit with n instances serves at most n / its cost per row)."""
    cost = {u.name: sum(per_row[m] for m in u.models) + HOP_OVERHEAD_S for u in units}
    bound = cores / sum(cost.values())
    for u in units:
        bound = min(bound, u.count * u.threads / cost[u.name])
    return bound


def _unit_curves(
    groups: Sequence[tuple[str, Sequence[str]]], curves: Mapping[str, Mapping[int, float]]
) -> dict[str, dict[int, float]]:
    return {name: {b: sum(curves[m][b] for m in models) for b in curves[models[0]]} for name, models in groups}


def _units(
    groups: Sequence[tuple[str, Sequence[str]]],
    curves: Mapping[str, Mapping[int, float]],
    batch: int,
    cores: int,
    speedups: Mapping[str, Mapping[int, float]],
    gpu: frozenset[str] = frozenset(),
) -> tuple[Unit, ...]:
    """Instances per unit from the shared cost model (allocate: ceil of the unit's share of the cores);
    a GPU step gets one instance per GPU of its own (its cost is not the cores')."""
    cpu_groups = [(n, ms) for n, ms in groups if not set(ms) & gpu]
    counts = allocate(_unit_curves(cpu_groups, curves), cores, batch).counts if cpu_groups else {}
    units = []
    for name, models in groups:
        fused = len(models) > 1
        count = counts.get(name, 1)
        members = [dict(speedups.get(m, {})) for m in models]
        common = {t: min(s.get(t, 0.0) for s in members) for t in set().union(*members)} if members else {}
        units.append(Unit(name, tuple(models), count, threads_for(common, count, cores), fused))
    return tuple(units)


def partial_groupings(pipeline: PipelinePlan, heavy: set[str]) -> list[list[list[str]]]:
    """Ways to fuse the light steps around the heavy ones, each a list of units (lists of models, in
    execution order): the light steps that run before a heavy one fused, and those after; or those
    that do not wait on a heavy one, and those that do. Both splits keep every group contiguous (no
    step outside it runs between two of its steps), so the ensemble stays a DAG."""
    order = [s.model for s in pipeline.steps]
    ancestors: dict[str, set[str]] = {}
    by_index = {s.index: s.model for s in pipeline.steps}
    for step in pipeline.steps:
        direct = [by_index[i] for i in pipeline.joins.get(step.index, [])]
        ancestors[step.model] = set(direct).union(*(ancestors[d] for d in direct))
    light = [m for m in order if m not in heavy]
    before_heavy = [m for m in light if any(m in ancestors[h] for h in heavy)]
    independent = [m for m in light if not (ancestors[m] & heavy)]
    found: list[list[list[str]]] = []
    for first in (before_heavy, independent):
        rest = [m for m in light if m not in first]
        units = [first, rest] + [[h] for h in order if h in heavy]
        units = [u for u in units if u]
        if not any(len(u) > 1 for u in units):
            continue  # nothing fused: that is the ensemble
        key = sorted(sorted(u) for u in units)
        if key not in [sorted(sorted(u) for u in f) for f in found]:
            found.append(sorted(units, key=lambda u: order.index(u[0])))
    return found


def candidates(
    pipeline: PipelinePlan,
    curves: Mapping[str, Mapping[int, float]],
    cores: int,
    written_counts: Mapping[str, int],
    speedups: Optional[Mapping[str, Mapping[int, float]]] = None,
    slo_p95_ms: Optional[float] = None,
    gpu: frozenset[str] = frozenset(),
    taken_names: frozenset[str] = frozenset(),
    concurrency: Optional[int] = None,
) -> tuple[Batching, list[Candidate]]:
    """Every candidate plan for one static pipeline, the spec as written first, then by predicted
    throughput (highest first). With the `concurrency` the plans are measured at, also `fused-filled`:
    the fused plan whose batching waits for each instance's share of the requests (fill_batching), and
    `fused-threaded` where two threads pay (_threaded_candidate)."""
    speedups = speedups or {}
    max_batch = max(1, pipeline.max_batch_size)
    batching = choose_batch(curves, max_batch, slo_p95_ms)
    b = batching.batch
    per_row = {m: curves[m][b] / b for m in pipeline.models}
    written_batch = operating_batch(curves, max_batch)
    written_row = {m: curves[m][written_batch] / written_batch for m in pipeline.models}
    written_units = tuple(Unit(m, (m,), written_counts.get(m, 1)) for m in pipeline.models)
    result = [
        Candidate(
            "as-written",
            "as-written",
            written_units,
            0,
            None,
            predict_rps(written_units, written_row, cores),
            "the spec as written: its batching, instances and fusion (the baseline)",
        )
    ]
    ensemble = _units([(m, [m]) for m in pipeline.models], curves, b, cores, speedups, gpu)
    result.append(
        Candidate(
            "ensemble",
            "ensemble",
            ensemble,
            b,
            0,
            predict_rps(ensemble, per_row, cores),
            "one model per step, instances from each step's share of the compute",
        )
    )
    if not set(pipeline.models) & gpu:
        fused = _units([(pipeline.name, list(pipeline.models))], curves, b, cores, speedups)
        result.append(
            Candidate(
                "fused",
                "fused",
                fused,
                b,
                0,
                predict_rps(fused, per_row, cores),
                "every step in one model (one hop), one instance per core",
            )
        )
        whole = _unit_curves([(pipeline.name, list(pipeline.models))], curves)[pipeline.name]
        if concurrency is not None:
            share, delay_us = fill_batching(whole, b, fused[0].count, concurrency)
            if share > 1:
                # predicted at the share's cost per row: it only differs from `fused` in its batches
                filled_row = {m: _at(curves[m], share) / share for m in pipeline.models}
                result.append(
                    Candidate(
                        "fused-filled",
                        "fused",
                        fused,
                        b,
                        delay_us,
                        predict_rps(fused, filled_row, cores),
                        f"fused, each instance waiting up to {delay_us} us for batches of {share} (its share of"
                        f" {concurrency} clients); below {share * fused[0].count} clients the wait leaves an instance"
                        " idle",
                        preferred_batch=share,
                    )
                )
        threaded = _threaded_candidate(pipeline, curves, whole, b, cores, fused[0], speedups, concurrency)
        if threaded is not None:
            result.append(threaded)
    total = sum(per_row.values())
    heavy = {m for m in pipeline.models if total > 0 and per_row[m] / total >= HEAVY_SHARE} | set(gpu)
    heavy &= set(pipeline.models)
    if heavy and len(pipeline.models) > 2:
        for k, grouping in enumerate(partial_groupings(pipeline, heavy)):
            named: list[tuple[str, list[str]]] = []
            groups: list[tuple[str, tuple[str, ...]]] = []
            for models in grouping:
                if len(models) == 1:
                    named.append((models[0], models))
                    continue
                name = _group_name(pipeline.name, len(groups) + 1, taken_names)
                named.append((name, models))
                groups.append((name, tuple(models)))
            units = _units(named, curves, b, cores, speedups, gpu)
            kept = ", ".join(sorted(heavy))
            result.append(
                Candidate(
                    f"partial-{k + 1}",
                    "partial",
                    units,
                    b,
                    0,
                    predict_rps(units, per_row, cores),
                    f"light steps fused around {kept} ({', '.join(f'{p:.0%}' for p in _shares(heavy, per_row))}"
                    " of the compute), which keeps its own instances",
                    tuple(groups),
                )
            )
    baseline, rest = result[0], result[1:]
    ranked = sorted((c for c in rest if c.name not in AFTER_FUSED), key=lambda c: -c.predicted_rps)
    at = next((i + 1 for i, c in enumerate(ranked) if c.name == "fused"), len(ranked))
    ranked[at:at] = [c for name in AFTER_FUSED for c in rest if c.name == name]
    return batching, [baseline, *ranked]


def _threaded_candidate(
    pipeline: PipelinePlan,
    curves: Mapping[str, Mapping[int, float]],
    whole: Mapping[int, float],
    batch: int,
    cores: int,
    fused: Unit,
    speedups: Mapping[str, Mapping[int, float]],
    concurrency: Optional[int],
) -> Optional[Candidate]:
    """The fused plan with half its instances at two threads each, waiting for each instance's share
    of the clients; None where two threads do not pay (THREADED_MIN_SPEEDUP for the whole call at
    `batch`, measured in-process) or the fused plan already runs one instance."""
    if concurrency is None or fused.count < 2 or fused.threads > 1:
        return None
    # the pipeline's call at `batch` with two threads against one, each step weighted by its cost (a
    # trivial join that two threads slow down does not veto a pipeline whose heavy steps they double)
    at_two = {m: speedups.get(m, {}).get(2, 0.0) for m in pipeline.models}
    if not at_two or min(at_two.values()) <= 0:
        return None
    one = {m: _at(curves[m], batch) for m in pipeline.models}
    two = sum(one[m] / at_two[m] for m in pipeline.models)
    speedup = sum(one.values()) / two if two > 0 else 0.0
    if speedup < THREADED_MIN_SPEEDUP:
        return None
    unit = Unit(fused.name, fused.models, fused.count // 2, 2, True)
    share, delay_us = fill_batching(whole, batch, unit.count, concurrency)
    row = sum(_at(curves[m], share) / share for m in pipeline.models) + HOP_OVERHEAD_S
    predicted = min(cores / row, unit.count * speedup / row)
    return Candidate(
        "fused-threaded",
        "fused",
        (unit,),
        batch,
        delay_us,
        predicted,
        f"fused, {unit.count} instance(s) at 2 threads ({speedup:.2f}x at batch {batch} in-process), each waiting"
        f" up to {delay_us} us for batches of {share}: fewer, larger batches, each step's weights read once for"
        " two cores",
        preferred_batch=share if share > 1 else None,
    )


def _shares(heavy: set[str], per_row: Mapping[str, float]) -> list[float]:
    total = sum(per_row.values()) or 1.0
    return [per_row[m] / total for m in sorted(heavy)]


def _group_name(pipeline: str, k: int, taken: frozenset[str]) -> str:
    name = f"{pipeline}_fused{k}"
    while name in taken:
        name += "_"
    return name


def measurement_plan(
    count: int, budget_s: float, start_s: float, max_point_s: float = 10.0, min_point_s: float = 2.0
) -> tuple[int, float, float]:
    """(candidates to measure, seconds measured per candidate, warmup seconds) that fit `budget_s`,
    each candidate also paying `start_s` to start its server: as many as fit at `min_point_s`, each
    measured as long as the budget allows, up to `max_point_s`."""
    if count < 1 or budget_s <= 0:
        return 0, 0.0, 0.0

    def cost(point: float) -> float:
        return start_s + point + warmup(point)

    def warmup(point: float) -> float:
        return min(2.0, max(0.5, point / 4))

    fits = min(count, int(budget_s // cost(min_point_s)))
    if fits < 1:
        return 0, 0.0, 0.0
    point = min_point_s
    while point + 0.5 <= max_point_s and fits * cost(point + 0.5) <= budget_s:
        point += 0.5
    return fits, point, warmup(point)


def apply_candidate(spec: Spec, pipeline: str, candidate: Candidate) -> Spec:
    """The spec with one pipeline planned as `candidate` (the same schema a user writes): its
    components' batching and instances, and its fusion (none, whole, or groups)."""
    if candidate.kind == "as-written":
        return spec
    p = spec.pipelines[pipeline]
    models = dict(spec.models)
    unit_of = {m: u for u in candidate.units for m in u.models}
    for name in dict.fromkeys(unit_of):
        model = models[name]
        update: dict[str, Any] = {}
        if model.max_batch_size > 0 and candidate.max_batch > 0:
            update["max_batch_size"] = candidate.max_batch
            if model.dynamic_batching is not False and candidate.queue_delay_us is not None:
                preferred = [candidate.preferred_batch] if candidate.preferred_batch else []
                update["dynamic_batching"] = DynamicBatching(
                    max_queue_delay_us=candidate.queue_delay_us, preferred_batch_sizes=preferred
                )
        unit = unit_of[name]
        if not unit.fused:
            count = unit.count
            if model.autoscale is not None:  # the count the runtime starts from stays within its bounds
                count = max(max(model.autoscale.min, 1), min(model.autoscale.max, count))
            update["instances"] = model.instances.model_copy(update={"count": count, "threads": unit.threads})
        models[name] = model.model_copy(update=update)
    if candidate.kind == "fused":
        unit = candidate.units[0]
        pipeline_update: dict[str, Any] = {
            "fuse": True,
            "instances": Instances(count=unit.count, threads=unit.threads),
        }
    elif candidate.kind == "partial":
        by_name = {u.name: u for u in candidate.units}
        pipeline_update = {
            "fuse": [
                FuseGroup(
                    name=group,
                    steps=list(members),
                    instances=Instances(count=by_name[group].count, threads=by_name[group].threads),
                )
                for group, members in candidate.groups
            ],
            "instances": None,
        }
    else:
        pipeline_update = {"fuse": False, "instances": None}
    pipelines = {**spec.pipelines, pipeline: p.model_copy(update=pipeline_update)}
    return spec.model_copy(update={"models": models, "pipelines": pipelines})


def spec_yaml(spec: Spec, header: Sequence[str] = ()) -> str:
    """A spec as YAML in the schema users write: what the file set (or the tuner chose), no defaults
    spelled out, keys in the schema's order, short mappings and lists on one line."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_FlowMap, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
    data = _strip_defaults(spec)
    body = yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=None, width=110, allow_unicode=True)
    lines = [f"# {line}" if line else "#" for line in header]
    return "\n".join(lines) + ("\n" if lines else "") + body


class _FlowMap(dict[str, Any]):
    """A mapping of plain values (a tensor's type, an instance group): written on one line."""


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(not isinstance(v, (dict, list, tuple)) for v in value)
    return not isinstance(value, dict)


def _strip_defaults(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        out: dict[str, Any] = {}
        for name in type(value).model_fields:
            if name not in value.model_fields_set:
                continue
            item = getattr(value, name)
            if item is None:
                continue
            out[name] = _strip_defaults(item)
        return _FlowMap(out) if all(_is_plain(v) for v in out.values()) else out
    if isinstance(value, dict):
        return {k: _strip_defaults(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strip_defaults(v) for v in value]
    return value
