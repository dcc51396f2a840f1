"""The deployments `compound bench` compares: each profile changes only what it says it changes.

A rebuild that silently resets a field (threads, gpus, kind) makes the comparison unfair: a model
declared with 4 threads measured with 1, or a GPU model moved off its GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.bench.profiles import BASELINES, GENERATED_PROFILES, SERVER_PROFILES, build_profile
from toolkit.plan import plan_spec
from toolkit.plan.allocate import allocate

HANDLER = """
class Id:
    def __init__(self, parameters, device):
        pass

    def __call__(self, **inputs):
        return {"y" if "x" in inputs else "z": next(iter(inputs.values()))}
"""

SPEC = """
name: prof
models:
  first:
    handler: handlers:Id
    inputs: {{x: {{dtype: fp32, dims: [4]}}}}
    outputs: {{y: {{dtype: fp32, dims: [4]}}}}
    max_batch_size: 16
    dynamic_batching: {{max_queue_delay_us: 300}}
    instances: {{count: 3, kind: {kind}, gpus: [1], threads: 4}}
    cache: {cache}
  second:
    handler: handlers:Id
    inputs: {{y: {{dtype: fp32, dims: [4]}}}}
    outputs: {{z: {{dtype: fp32, dims: [4]}}}}
    max_batch_size: 16
    dynamic_batching: {{max_queue_delay_us: 300}}
    instances: {{count: 2, threads: 2}}
pipelines:
  p:
    inputs: {{x: {{dtype: fp32, dims: [4]}}}}
    outputs: [z]
    steps:
      - {{model: first, inputs: {{x: x}}, outputs: {{y: y}}}}
      - {{model: second, inputs: {{y: y}}, outputs: {{z: z}}}}
"""


def _plan(tmp_path: Path, kind: str = "gpu", cache: str = "false"):  # noqa: ANN202 - a DeploymentPlan
    (tmp_path / "handlers.py").write_text(HANDLER)
    (tmp_path / "pipeline.yaml").write_text(SPEC.format(kind=kind, cache=cache))
    return plan_spec(tmp_path / "pipeline.yaml")


def _allocation():  # noqa: ANN202 - an Allocation
    return allocate({"first": {1: 0.001, 16: 0.004}, "second": {1: 0.001, 16: 0.004}}, 4, 16)


def test_baselines_and_generated_profiles_are_server_profiles() -> None:
    assert set(BASELINES) <= set(SERVER_PROFILES) and set(GENERATED_PROFILES) <= set(SERVER_PROFILES)


@pytest.mark.parametrize("name", ["static", "ensemble", "optimized"])
def test_rebuilds_keep_threads_kind_and_gpus(tmp_path: Path, name: str) -> None:
    plan = _plan(tmp_path)
    profile = build_profile(name, plan, "p", _allocation(), cores=4)
    first, second = profile.plan.models["first"], profile.plan.models["second"]
    assert (first.threads, second.threads) == (4, 2)
    assert first.instance_kind == "KIND_GPU" and first.gpus == (1,)
    assert second.instance_kind == "KIND_CPU"


def test_ensemble_is_the_spec_as_written(tmp_path: Path) -> None:
    """The hand-written deployment: batching, queue delays and instance counts exactly as declared."""
    plan = _plan(tmp_path)
    profile = build_profile("ensemble", plan, "p", cores=4)
    assert profile.batching and profile.instances == {"first": 3, "second": 2}
    for m in ("first", "second"):
        assert profile.plan.models[m].spec.batching == plan.spec.models[m].batching
        assert profile.plan.models[m].spec.max_batch_size == 16
    assert [[c.model for c in stage] for stage in profile.request_stages] == [["p"]]


def test_static_is_one_unbatched_instance_chained_by_the_client(tmp_path: Path) -> None:
    profile = build_profile("static", _plan(tmp_path), "p", cores=4)
    assert not profile.batching and profile.instances == {"first": 1, "second": 1}
    assert [[c.model for c in stage] for stage in profile.request_stages] == [["first"], ["second"]]


def test_optimized_takes_the_planned_counts(tmp_path: Path) -> None:
    allocation = _allocation()
    profile = build_profile("optimized", _plan(tmp_path), "p", allocation, cores=4)
    assert profile.instances == {m: allocation.counts[m] for m in ("first", "second")}


def test_fused_keeps_the_components_kind_and_threads(tmp_path: Path) -> None:
    profile = build_profile("fused", _plan(tmp_path), "p", cores=3)
    group = profile.plan.pipelines["p"].instances
    assert group is not None and group.count == 3 and profile.instances == {"p": 3}
    assert group.kind == "KIND_GPU" and group.gpus == (1,) and group.threads == 4


def test_fused_keeps_the_pipelines_declared_instances(tmp_path: Path) -> None:
    plan = _plan(tmp_path, kind="auto")
    from toolkit.spec.schema import Instances

    plan.spec.pipelines["p"] = plan.spec.pipelines["p"].model_copy(update={"instances": Instances(count=1, threads=3)})
    group = build_profile("fused", plan, "p", cores=2).plan.pipelines["p"].instances
    assert group is not None and (group.kind, group.count, group.threads) == ("KIND_CPU", 2, 3)


@pytest.mark.parametrize("cache", ["true", "{memory_mb: 8}"])
def test_declared_caches_are_off_unless_kept(tmp_path: Path, cache: str) -> None:
    """The load generator cycles a fixed pool of rows: a cache would turn the figure into a hit rate."""
    plan = _plan(tmp_path, kind="auto", cache=cache)
    for name in SERVER_PROFILES:
        profile = build_profile(name, plan, "p", _allocation(), cores=2)
        assert not profile.plan.spec.models["first"].cache, name
        assert profile.cached == [] and profile.cache_disabled == ["first"], name
    kept = build_profile("ensemble", plan, "p", cores=2, keep_cache=True)
    assert kept.plan.spec.models["first"].cache and kept.cached == ["first"] and kept.cache_disabled == []
    assert build_profile("static", plan, "p", cores=2, keep_cache=True).cached == []  # static never caches
