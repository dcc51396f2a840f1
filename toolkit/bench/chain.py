"""Run a pipeline's handlers in-process, step by step, with no server: what profiling, the
ceiling and the Ray Serve peer all build on, so every profile runs exactly the same user code.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.bench.machine import cap_native_threads
from toolkit.core.errors import CompoundError
from toolkit.plan import DeploymentPlan, EnsembleStep, import_handler_module


@dataclass(frozen=True)
class Stage:
    """Steps whose inputs are all ready together (the ensemble runs them in parallel)."""

    index: int
    steps: tuple[EnsembleStep, ...]


def stages(plan: DeploymentPlan, pipeline: str) -> list[Stage]:
    """The pipeline's steps grouped by stage; benchmarks need a static DAG (an ensemble)."""
    p = plan.pipelines.get(pipeline)
    if p is None:
        known = ", ".join(sorted(plan.pipelines))
        raise CompoundError(f"no pipeline '{pipeline}' in {plan.loaded.path} (pipelines: {known})")
    if p.kind != "ensemble":
        raise CompoundError(
            f"pipeline '{pipeline}' is an orchestrated pipeline ({p.reason});"
            " `compound bench` compares ensemble deployments",
            hint="benchmark a pipeline without switch/loop/map steps",
        )
    grouped: dict[int, list[EnsembleStep]] = {}
    for step in p.steps:
        grouped.setdefault(step.stage, []).append(step)
    return [Stage(i, tuple(grouped[i])) for i in sorted(grouped)]


def load_handler(plan: DeploymentPlan, model: str, device: str = "cpu") -> Any:
    """Instantiate a model's handler the way the generated model.py does (spec folder on sys.path)."""
    ref = plan.models[model].handler
    folder = plan.loaded.folder.resolve()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # handlers may import their siblings at call time too
    try:
        module = import_handler_module(
            ref.source / "__init__.py" if ref.is_package else ref.source, folder, fresh=False
        )
        return getattr(module, ref.cls)(dict(plan.models[model].spec.parameters), device)
    except Exception as exc:  # noqa: BLE001 - user code
        raise CompoundError(
            f"model '{model}': cannot load handler {ref.module}:{ref.cls}: {type(exc).__name__}: {exc}"
        ) from None


def model_threads(plan: DeploymentPlan, pipeline: str) -> int:
    """The largest `instances.threads` among the pipeline's models."""
    return max((plan.models[m].threads for m in plan.pipelines[pipeline].models), default=1)


def served_threads(plan: DeploymentPlan, pipeline: str) -> int:
    """The threads of the instances that run the pipeline's handlers: a fused pipeline's (or its
    fuse groups') own `instances.threads`, else its models'."""
    p = plan.pipelines[pipeline]
    groups = [g.instances.threads for g in p.groups.values() if g.instances is not None]
    if p.instances is not None:
        groups.append(p.instances.threads)
    return max([*groups, model_threads(plan, pipeline)])


class InProcessPipeline:
    """A pipeline's handlers chained in this process; `run` also times each model call."""

    def __init__(self, plan: DeploymentPlan, pipeline: str, threads: int | None = None) -> None:
        self.plan = plan
        self.pipeline = pipeline
        self.stages = stages(plan, pipeline)
        self.models = plan.pipelines[pipeline].models
        # the pools capped as a generated instance caps them (one fused instance: the largest
        # `instances.threads`, or `threads`), before the handlers load and again after: what the
        # cost curves and the ceiling measure is what an instance runs, not a pool for the machine
        self.threads = threads or model_threads(plan, pipeline)
        cap_native_threads(self.threads, environment=False)
        self.handlers = {m: load_handler(plan, m) for m in self.models}
        cap_native_threads(self.threads, environment=False)
        self.outputs = list(plan.spec.pipelines[pipeline].outputs)

    def run(self, inputs: dict[str, np.ndarray], timings: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """All pipeline tensors for one batch; adds each model's wall seconds into `timings`."""
        env = dict(inputs)
        for stage in self.stages:
            for step in stage.steps:
                args = {name: env[tensor] for name, tensor in step.inputs.items()}
                start = time.perf_counter()
                result = self.handlers[step.model](**args)
                if timings is not None:
                    timings[step.model] = timings.get(step.model, 0.0) + time.perf_counter() - start
                for out_name, tensor in step.outputs.items():
                    env[tensor] = np.asarray(result[out_name])
        return env

    def model_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Each model's own input arrays for this batch of pipeline inputs (for profiling)."""
        env = self.run(inputs)
        found: dict[str, dict[str, np.ndarray]] = {}
        for stage in self.stages:
            for step in stage.steps:
                found.setdefault(step.model, {name: env[tensor] for name, tensor in step.inputs.items()})
        return found
