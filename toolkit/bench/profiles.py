"""The deployments `compound bench` compares, each a DeploymentPlan built from a modified spec, and
the request shape the load generator sends to each.

- static:    no dynamic batching, one instance per model, no cache; the CLIENT chains the models
             (one round trip per step; steps of one stage are sent concurrently).
- ensemble:  the generated ensemble without dynamic batching (declared instances and cache).
- optimized: the generated ensemble with dynamic batching and cache as declared, and instance
             counts planned from measured per-component cost (allocate.py).
- fused:     the pipeline with `fuse: true`: ONE Python model running every handler in-process on
             the merged dynamic batch, one instance per core (no hop between steps).
Only the benchmarked pipeline and its models are deployed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from toolkit.bench.chain import stages
from toolkit.bench.driver import Call
from toolkit.plan import DeploymentPlan, build_plan
from toolkit.plan.allocate import Allocation
from toolkit.spec import Instances, LoadedSpec, ModelSpec, PipelineSpec

SERVER_PROFILES = ("static", "ensemble", "optimized", "fused")
ALL_PROFILES = ("static", "ensemble", "optimized", "fused", "ceiling", "ray-serve")
GENERATED_PROFILES = ("optimized", "fused")  # what compound generates at its best: targets apply to these


@dataclass
class ServerProfile:
    name: str
    plan: DeploymentPlan
    request_stages: list[list[Call]]  # what one client request is
    instances: dict[str, int]
    batching: bool
    description: str


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


def build_profile(
    name: str, plan: DeploymentPlan, pipeline: str, allocation: Optional[Allocation] = None, cores: int = 1
) -> ServerProfile:
    used = plan.pipelines[pipeline].models
    models: dict[str, ModelSpec] = {}
    pipeline_spec: Optional[PipelineSpec] = None
    if name == "fused":  # one instance per core: each runs one batch through every handler at a time
        pipeline_spec = plan.spec.pipelines[pipeline].model_copy(
            update={"fuse": True, "instances": Instances(count=cores)}
        )
    for m in used:
        spec = plan.spec.models[m]
        if name == "static":
            models[m] = spec.model_copy(
                update={
                    "dynamic_batching": False,
                    "instances": Instances(count=1, kind=spec.instances.kind),
                    "cache": False,
                }
            )
        elif name == "ensemble":
            models[m] = spec.model_copy(update={"dynamic_batching": False})
        elif name == "optimized":
            if allocation is None:
                raise ValueError("the optimized profile needs an allocation")
            count = allocation.counts.get(m, spec.instances.count)
            models[m] = spec.model_copy(
                update={"instances": Instances(count=count, kind=spec.instances.kind, gpus=spec.instances.gpus)}
            )
        elif name == "fused":
            models[m] = spec
        else:
            raise ValueError(f"not a server profile: {name}")
    new_plan = _rebuild(plan, pipeline, models, pipeline_spec)
    request = _chained_request(new_plan, pipeline) if name == "static" else _ensemble_request(new_plan, pipeline)
    fused = new_plan.pipelines[pipeline].instances
    instances = {pipeline: fused.count} if fused else {m: new_plan.models[m].instance_count for m in used}
    batching = any(new_plan.spec.models[m].batching is not None for m in used)
    description = {
        "static": "no dynamic batching, 1 instance per model, client chains the models (one round trip per step)",
        "ensemble": "generated ensemble, no dynamic batching, declared instances",
        "optimized": "generated ensemble, dynamic batching and cache as declared, instances planned from measured cost",
        "fused": (
            f"fuse: true: one Python model runs every handler in-process on the dynamic batch, {cores} instance(s)"
        ),
    }[name]
    return ServerProfile(name, new_plan, request, instances, batching, description)


def tensor_datatypes(plan: DeploymentPlan, pipeline: str) -> dict[str, str]:
    """Every pipeline tensor's KServe v2 datatype (the static client sends intermediates too)."""
    return {t: spec.v2_datatype for t, spec in plan.pipelines[pipeline].tensors.items()}


# A spec's pipeline deployed exactly as its file says (batching, instances, fusion): `written` is the
# benchmarked spec, `tuned` the spec `compound tune` wrote (bench --tuned FILE).
SPEC_PROFILES = ("written", "tuned")


def spec_profile(name: str, plan: DeploymentPlan, pipeline: str) -> ServerProfile:
    """The pipeline of `plan`'s spec as written, with only its models; one call to the pipeline."""
    spec = plan.spec
    p = spec.pipelines[pipeline]
    used = list(dict.fromkeys(s.model for s in p.steps if hasattr(s, "model")))
    only = spec.model_copy(update={"pipelines": {pipeline: p}, "models": {m: spec.models[m] for m in used}})
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
    )
