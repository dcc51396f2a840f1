"""The deployments `compound bench` compares, each a DeploymentPlan built from a modified spec, and
the request shape the load generator sends to each.

Baselines (what compound's output is judged against):
- static:    no dynamic batching, one instance per model, no cache; the CLIENT chains the models
             (one round trip per step; steps of one stage are sent concurrently).
- ensemble:  the deployment a Triton team would write by hand from the spec: the spec's models with
             their batching and instances exactly as written, one ensemble call per request.
Generated (what compound produces at its best; targets apply to these):
- optimized: the generated ensemble with the spec's batching, and instance counts planned from
             measured per-component cost (allocate.py).
- fused:     the pipeline with `fuse: true`: ONE Python model running every handler in-process on
             the merged dynamic batch, one instance per core (no hop between steps).
Every rebuild keeps what it does not mean to change (instances.kind, gpus, threads). Caches are off
in every profile unless `keep_cache`: the load generator cycles a fixed pool of request rows, so a
cached profile would be measured on its hit rate, not on serving.
Only the benchmarked pipeline and its models are deployed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from toolkit.bench.chain import stages
from toolkit.bench.driver import Call
from toolkit.plan import DeploymentPlan, build_plan
from toolkit.plan.allocate import Allocation
from toolkit.spec.schema import InstanceKind, Instances, LoadedSpec, ModelSpec, PipelineSpec

SERVER_PROFILES = ("static", "ensemble", "optimized", "fused")
RAY_PROFILES = ("ray-serve", "ray-serve-fused")
PYTRITON_PROFILE = "pytriton"  # the same handlers chained in one PyTriton @batch model (toolkit.bench.pytriton_peer)
ALL_PROFILES = ("static", "ensemble", "optimized", "fused", "ceiling", *RAY_PROFILES, PYTRITON_PROFILE)
BASELINES = ("static", "ensemble")  # every generated profile is reported against both
GENERATED_PROFILES = ("optimized", "fused")  # what compound generates at its best: targets apply to these

DESCRIPTIONS = {
    "static": "no dynamic batching, 1 instance per model, client chains the models (one round trip per step)",
    "ensemble": "the spec as written (its batching and instances), one ensemble call: what a Triton team writes",
    "optimized": "generated ensemble, the spec's batching, instances planned from measured cost",
    "fused": "fuse: true: one Python model runs every handler in-process on the dynamic batch, {cores} instance(s)",
}


@dataclass
class ServerProfile:
    name: str
    plan: DeploymentPlan
    request_stages: list[list[Call]]  # what one client request is
    instances: dict[str, int]
    batching: bool
    description: str
    cached: list[str] = field(default_factory=list)  # models whose declared cache is on in this profile
    cache_disabled: list[str] = field(default_factory=list)  # models whose declared cache was turned off


def _rebuild(
    plan: DeploymentPlan, pipeline: str, models: dict[str, ModelSpec], pipeline_spec: Optional[PipelineSpec] = None
) -> DeploymentPlan:
    spec = plan.spec.model_copy(
        update={"models": models, "pipelines": {pipeline: pipeline_spec or plan.spec.pipelines[pipeline]}}
    )
    return build_plan(LoadedSpec(spec, plan.loaded.path, {}), plan.device)


def _ensemble_request(plan: DeploymentPlan, pipeline: str) -> list[list[Call]]:
    p = plan.spec.pipelines[pipeline]
    return [[Call(pipeline, {t: t for t in p.inputs}, {t: t for t in p.outputs})]]


def _chained_request(plan: DeploymentPlan, pipeline: str) -> list[list[Call]]:
    return [
        [Call(step.model, dict(step.inputs), dict(step.outputs)) for step in stage.steps]
        for stage in stages(plan, pipeline)
    ]


def with_count(instances: Instances, count: int) -> Instances:
    """The same instance group (kind, gpus, threads) with another count."""
    return instances.model_copy(update={"count": count})


def fused_instances(plan: DeploymentPlan, pipeline: str, count: int) -> Instances:
    """The fused model's instance group at `count`: the pipeline's declared one if any, else the
    components' (a GPU if any runs on one, the most threads any declares)."""
    declared = plan.spec.pipelines[pipeline].instances
    if declared is not None:
        return with_count(declared, count)
    parts = [plan.spec.models[m].instances for m in plan.pipelines[pipeline].models]
    gpu = [p for p in parts if p.kind == "gpu"]
    kind: InstanceKind = "gpu" if gpu else ("auto" if any(p.kind == "auto" for p in parts) else "cpu")
    gpus = next((p.gpus for p in gpu + parts if p.gpus and p.kind != "cpu"), None)
    return Instances(count=count, kind=kind, gpus=gpus, threads=max((p.threads for p in parts), default=1))


def build_profile(
    name: str,
    plan: DeploymentPlan,
    pipeline: str,
    allocation: Optional[Allocation] = None,
    cores: int = 1,
    keep_cache: bool = False,
) -> ServerProfile:
    used = plan.pipelines[pipeline].models
    models: dict[str, ModelSpec] = {}
    pipeline_spec: Optional[PipelineSpec] = None
    if name == "fused":  # one instance per core: each runs one batch through every handler at a time
        pipeline_spec = plan.spec.pipelines[pipeline].model_copy(
            update={"fuse": True, "instances": fused_instances(plan, pipeline, cores)}
        )
    else:  # one model per step whatever the spec fuses: the static client calls the models themselves
        pipeline_spec = plan.spec.pipelines[pipeline].model_copy(update={"fuse": False, "instances": None})
    declared_cache = [m for m in used if plan.spec.models[m].cache]
    for m in used:
        spec = plan.spec.models[m]
        if name == "static":
            spec = spec.model_copy(
                update={"dynamic_batching": False, "instances": with_count(spec.instances, 1), "autoscale": None}
            )
        elif name == "optimized":
            if allocation is None:
                raise ValueError("the optimized profile needs an allocation")
            count = allocation.counts.get(m, spec.instances.count)
            spec = spec.model_copy(update={"instances": with_count(spec.instances, count)})
        elif name not in ("ensemble", "fused"):
            raise ValueError(f"not a server profile: {name}")
        if spec.cache and (name == "static" or not keep_cache):
            spec = spec.model_copy(update={"cache": False})
        models[m] = spec
    new_plan = _rebuild(plan, pipeline, models, pipeline_spec)
    request = _chained_request(new_plan, pipeline) if name == "static" else _ensemble_request(new_plan, pipeline)
    fused = new_plan.pipelines[pipeline].instances
    instances = {pipeline: fused.count} if fused else {m: new_plan.models[m].instance_count for m in used}
    batching = any(new_plan.spec.models[m].batching is not None for m in used)
    cached = [m for m in used if new_plan.spec.models[m].cache]
    return ServerProfile(
        name,
        new_plan,
        request,
        instances,
        batching,
        DESCRIPTIONS[name].format(cores=cores),
        cached=cached,
        cache_disabled=[m for m in declared_cache if m not in cached],
    )


def tensor_datatypes(plan: DeploymentPlan, pipeline: str) -> dict[str, str]:
    """Every pipeline tensor's KServe v2 datatype (the static client sends intermediates too)."""
    return {t: spec.v2_datatype for t, spec in plan.pipelines[pipeline].tensors.items()}


# A spec's pipeline deployed exactly as its file says (batching, instances, fusion): `written` is the
# benchmarked spec, `tuned` the spec `compound tune` wrote (bench --tuned FILE).
SPEC_PROFILES = ("written", "tuned")


def spec_profile(name: str, plan: DeploymentPlan, pipeline: str, keep_cache: bool = False) -> ServerProfile:
    """The pipeline of `plan`'s spec as written, with only its models; one call to the pipeline.
    Declared caches are off unless kept, as in every other profile (the load cycles a fixed pool)."""
    spec = plan.spec
    p = spec.pipelines[pipeline]
    used = list(dict.fromkeys(s.model for s in p.steps if hasattr(s, "model")))
    declared_cache = [m for m in used if spec.models[m].cache]
    models = {
        m: spec.models[m]
        if keep_cache or not spec.models[m].cache
        else spec.models[m].model_copy(update={"cache": False})
        for m in used
    }
    only = spec.model_copy(update={"pipelines": {pipeline: p}, "models": models})
    new_plan = build_plan(LoadedSpec(only, plan.loaded.path, {}), plan.device)
    pp = new_plan.pipelines[pipeline]
    if pp.kind == "fused" and pp.instances is not None:
        instances = {pipeline: pp.instances.count}
    else:
        instances = {g.name: g.instances.count for g in pp.groups.values() if g.instances is not None}
        instances.update({m: new_plan.models[m].instance_count for m in pp.direct_models})
    what = {"written": "the spec as written", "tuned": "the spec `compound tune` wrote"}[name]
    return ServerProfile(
        name,
        new_plan,
        _ensemble_request(new_plan, pipeline),
        instances,
        any(new_plan.spec.models[m].batching is not None for m in used),
        f"{what} ({plan.loaded.path.name}): its batching, instances and fusion as the file says ({pp.kind})",
        cached=[m for m in declared_cache if keep_cache],
        cache_disabled=[m for m in declared_cache if not keep_cache],
    )
