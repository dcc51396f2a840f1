"""The pipeline graph: step order, fan-out and joins, type checks along every edge, and the choice
between a Triton ensemble (static DAG, fastest) and a generated BLS orchestrator (data-dependent
control flow). Every problem found is collected, so users fix a spec in one round.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, TypeVar, Union

from toolkit.core.errors import Problem, SpecError
from toolkit.plan.streaming import StreamChecker, StreamMode, model_problems, stream_mode
from toolkit.spec.schema import (
    Autoscale,
    LoadedSpec,
    LoopStep,
    MapStep,
    ModelSpec,
    ModelStep,
    PipelineSpec,
    Spec,
    SwitchStep,
    TensorSpec,
    load_spec,
)

Device = Literal["cpu", "gpu"]
AnyStep = Union[ModelStep, SwitchStep, LoopStep, MapStep]
# An orchestrator whose callees all take one request at a time still merges what queues up for it.
UNBATCHED_ORCHESTRATOR_BATCH = 64


@dataclass(frozen=True)
class HandlerRef:
    """Where a model's handler lives, so its code can be copied into the repository."""

    module: str
    cls: str
    source: Path  # a module file, or a package folder
    is_package: bool
    stream: Optional[StreamMode] = None  # streaming models: the handler protocol (see plan/streaming.py)

    def code_files(self) -> dict[str, Path]:
        """The handler's code, as it is copied beside its model: relative path -> file."""
        if not self.is_package:
            return {Path(*self.module.split(".")).with_suffix(".py").as_posix(): self.source}
        root = self.source
        for _ in self.module.split(".")[1:]:
            root = root.parent  # up to the top-level package folder
        top = self.module.split(".")[0]
        return {
            f"{top}/{path.relative_to(root).as_posix()}": path
            for path in sorted(root.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        }


@dataclass(frozen=True)
class ModelPlan:
    name: str
    spec: ModelSpec
    handler: HandlerRef
    instance_kind: Literal["KIND_CPU", "KIND_GPU"]
    instance_count: int
    gpus: Optional[tuple[int, ...]]
    threads: int  # native threads per instance (see Instances.threads)
    autoscale: Optional[Autoscale] = None  # the adaptive runtime's bounds; None: fixed instance_count

    @property
    def stream(self) -> Optional[StreamMode]:
        """How a streaming model's handler streams (None: one response per request)."""
        return self.handler.stream


@dataclass(frozen=True)
class EnsembleStep:
    """One model call in an ensemble, with the outputs nothing consumes already dropped."""

    index: int
    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    stage: int  # steps of one stage have all their inputs ready together: they run in parallel


@dataclass(frozen=True)
class InstanceGroup:
    """Where a fused pipeline's one model runs (component models carry theirs in ModelPlan)."""

    kind: Literal["KIND_CPU", "KIND_GPU"]
    count: int
    gpus: Optional[tuple[int, ...]] = None
    threads: int = 1


@dataclass
class PipelinePlan:
    name: str
    spec: PipelineSpec
    kind: Literal["ensemble", "orchestrator", "fused"]
    reason: str
    tensors: dict[str, TensorSpec]  # every pipeline-level tensor and its type
    max_batch_size: int
    models: list[str]  # composing models, in first-use order
    steps: list[EnsembleStep] = field(default_factory=list)  # ensembles only, in execution order
    joins: dict[int, list[int]] = field(default_factory=dict)  # step index -> producer step indexes
    instances: Optional[InstanceGroup] = None  # fused pipelines only
    # `fuse: [groups]` (ensembles only): each group is a fused model of its own, planned like a fused
    # pipeline; `calls`/`call_joins` are then the ensemble's steps with each group as ONE step
    groups: dict[str, PipelinePlan] = field(default_factory=dict)
    calls: list[EnsembleStep] = field(default_factory=list)
    call_joins: dict[int, list[int]] = field(default_factory=dict)
    streaming: bool = False  # its last step streams: the pipeline's model is decoupled (many responses)

    @property
    def fan_out(self) -> dict[int, list[int]]:
        """Producer step index -> the steps that consume its outputs (more than one: a fan-out)."""
        return fan_out_of(self.joins)

    @property
    def served_steps(self) -> list[EnsembleStep]:
        """The ensemble's own steps: component steps, with each fuse group as one step."""
        return self.calls if self.groups else self.steps

    @property
    def served_joins(self) -> dict[int, list[int]]:
        return self.call_joins if self.groups else self.joins

    @property
    def direct_models(self) -> list[str]:
        """Component models the pipeline calls as models of their own (not inside a fused model)."""
        if self.kind == "fused":
            return []
        inside = {m for group in self.groups.values() for m in group.models}
        return [m for m in self.models if m not in inside]


def fan_out_of(joins: dict[int, list[int]]) -> dict[int, list[int]]:
    consumers: dict[int, list[int]] = {}
    for consumer, producers in joins.items():
        for producer in producers:
            consumers.setdefault(producer, []).append(consumer)
    return {k: sorted(v) for k, v in sorted(consumers.items())}


@dataclass
class DeploymentPlan:
    loaded: LoadedSpec
    device: Device
    models: dict[str, ModelPlan]
    pipelines: dict[str, PipelinePlan]
    warnings: list[str] = field(default_factory=list)

    @property
    def spec(self) -> Spec:
        return self.loaded.spec

    @property
    def name(self) -> str:
        return self.loaded.spec.name

    @property
    def deployed_models(self) -> list[str]:
        """Component models that become Triton models of their own: all but those that only fused
        pipelines and fuse groups use (their handlers run inside the fused model)."""
        fused = {m for p in self.pipelines.values() for m in p.models if m not in p.direct_models}
        served = {m for p in self.pipelines.values() for m in p.direct_models}
        return sorted(m for m in self.models if m not in fused or m in served)

    @property
    def fused_groups(self) -> dict[str, PipelinePlan]:
        """Every pipeline's fuse groups (fused models called by an ensemble), by model name."""
        return {name: group for p in self.pipelines.values() for name, group in p.groups.items()}


def plan_spec(path: str | Path, device: Device = "cpu") -> DeploymentPlan:
    """Load, validate and plan a spec; raise SpecError with every problem found."""
    return build_plan(load_spec(path), device)


def build_plan(loaded: LoadedSpec, device: Device = "cpu") -> DeploymentPlan:
    problems: list[Problem] = []
    warnings: list[str] = []
    spec = loaded.spec

    for name in sorted(set(spec.models) & set(spec.pipelines)):
        problems.append(
            Problem(
                loaded.where("pipelines", name),
                f"pipeline '{name}' has the same name as a model: Triton model names must be unique",
            )
        )

    models: dict[str, ModelPlan] = {}
    for name, model in spec.models.items():
        for loc, message in model_problems(name, model):
            problems.append(Problem(loaded.where("models", name, *loc), message))
        handler = _check_handler(loaded, name, model, problems)
        if handler is not None:
            models[name] = _plan_model(name, model, handler, device)

    pipelines: dict[str, PipelinePlan] = {}
    for name, pipeline in spec.pipelines.items():
        checker = _PipelineChecker(loaded, name, pipeline, problems, warnings)
        plan = checker.check()
        if plan is not None:
            pipelines[name] = plan

    _check_autoscale(loaded, pipelines, problems, warnings)
    _check_group_names(loaded, problems)
    queue_problems, queue_warnings = check_queue_timeouts(loaded, pipelines)
    problems += queue_problems
    warnings += queue_warnings
    if problems:
        raise SpecError(str(loaded.path), problems)
    for pipeline_plan in pipelines.values():
        if pipeline_plan.kind == "fused":
            pipeline_plan.instances = _fused_instances(pipeline_plan, models, device)
        for group in pipeline_plan.groups.values():
            group.instances = _fused_instances(group, models, device)
    return DeploymentPlan(loaded, device, models, pipelines, warnings)


def _check_autoscale(
    loaded: LoadedSpec, pipelines: dict[str, PipelinePlan], problems: list[Problem], warnings: list[str]
) -> None:
    """On-demand models (autoscale.min 0) must be reached only through orchestrators: an ensemble
    cannot wait for a composing model to load, so Triton fails its requests while one is unloaded.
    A static pipeline that calls one is planned as an orchestrator; one with fuse groups stays an
    ensemble of its groups, so there it is an error."""
    for name, model in loaded.spec.models.items():
        if model.autoscale is None:
            continue
        users = {
            kind: sorted(p for p, plan in pipelines.items() if plan.kind == kind and name in plan.models)
            for kind in ("ensemble", "orchestrator", "fused")
        }
        where = loaded.where("models", name, "autoscale")
        if model.autoscale.on_demand and users["ensemble"]:
            problems.append(
                Problem(
                    loaded.where("models", name, "autoscale", "min"),
                    f"model '{name}': autoscale.min 0 (on demand) but pipeline(s) {users['ensemble']} with fuse groups"
                    " are ensembles that call it; a Triton ensemble cannot wait while a composing model loads, so"
                    " its requests would fail. Use min >= 1, or drop the fuse groups (the pipeline is then served"
                    " by an orchestrator, which waits)",
                )
            )
        if users["fused"] and not users["ensemble"] and not users["orchestrator"]:
            warnings.append(
                f"{where}: model '{name}' runs only inside fused pipeline(s) {users['fused']}: its handler scales "
                "with the fused model, so its autoscale is ignored"
            )


def _check_group_names(loaded: LoadedSpec, problems: list[Problem]) -> None:
    """A fuse group becomes a Triton model: its name must clash with no model, pipeline or other group."""
    seen: dict[str, str] = {}
    for pipeline_name, pipeline in loaded.spec.pipelines.items():
        for g, group in enumerate(pipeline.fuse_groups):
            where = loaded.where("pipelines", pipeline_name, "fuse", g, "name")
            clash = (
                "a model"
                if group.name in loaded.spec.models
                else "a pipeline"
                if group.name in loaded.spec.pipelines
                else seen.get(group.name)
            )
            if clash:
                problems.append(
                    Problem(
                        where,
                        f"pipeline '{pipeline_name}': fuse group '{group.name}' has the same name as {clash}:"
                        " it becomes a Triton model, and model names must be unique",
                    )
                )
            seen.setdefault(group.name, f"fuse group '{group.name}' of pipeline '{pipeline_name}'")


def _on_gpu(kind: str, device: Device) -> bool:
    return kind == "gpu" or (kind == "auto" and device == "gpu")


def _fused_instances(pipeline: PipelinePlan, models: dict[str, ModelPlan], device: Device) -> InstanceGroup:
    """The declared `instances`, else as many as its busiest component had, on a GPU if any was."""
    declared = pipeline.spec.instances
    if declared is not None:
        gpu = _on_gpu(declared.kind, device)
        return InstanceGroup(
            "KIND_GPU" if gpu else "KIND_CPU",
            declared.count,
            tuple(declared.gpus) if gpu and declared.gpus else None,
            declared.threads,
        )
    parts = [models[m] for m in pipeline.models]
    gpu = any(m.instance_kind == "KIND_GPU" for m in parts)
    count = max((m.instance_count for m in parts), default=1)
    return InstanceGroup("KIND_GPU" if gpu else "KIND_CPU", count, threads=max((m.threads for m in parts), default=1))


def _plan_model(name: str, model: ModelSpec, handler: HandlerRef, device: Device) -> ModelPlan:
    gpu = _on_gpu(model.instances.kind, device)
    gpus = tuple(model.instances.gpus) if (gpu and model.instances.gpus) else None
    return ModelPlan(
        name=name,
        spec=model,
        handler=handler,
        instance_kind="KIND_GPU" if gpu else "KIND_CPU",
        instance_count=model.starting_instances,
        gpus=gpus,
        threads=model.instances.threads,
        autoscale=model.autoscale,
    )


# --- handlers -----------------------------------------------------------------------------------


def _check_handler(loaded: LoadedSpec, name: str, model: ModelSpec, problems: list[Problem]) -> Optional[HandlerRef]:
    """Import the handler as the server will, to fail at validate time rather than at load time."""
    where = loaded.where("models", name, "handler")
    module_name, cls_name = model.handler.split(":")
    relative = Path(*module_name.split("."))
    file = loaded.folder / relative.with_suffix(".py")
    package = loaded.folder / relative / "__init__.py"
    if file.is_file():
        ref = HandlerRef(module_name, cls_name, file, False)
        entry = file
    elif package.is_file():
        ref = HandlerRef(module_name, cls_name, package.parent, True)
        entry = package
    else:
        problems.append(
            Problem(
                where, f"model '{name}': handler module '{module_name}' not found (looked for {file} and {package})"
            )
        )
        return None
    try:
        module = import_handler_module(entry, loaded.folder)
    except BaseException as exc:  # noqa: BLE001 - any failure in user code is a spec problem
        problems.append(
            Problem(where, f"model '{name}': cannot import handler module '{module_name}': {type(exc).__name__}: {exc}")
        )
        return None
    cls = getattr(module, cls_name, None)
    if cls is None:
        problems.append(Problem(where, f"model '{name}': module '{module_name}' has no attribute '{cls_name}'"))
        return None
    if model.stream and isinstance(cls, type):
        mode, problem = stream_mode(name, model, cls)
        if problem is not None:
            problems.append(Problem(where, problem))
            return None
        return HandlerRef(ref.module, ref.cls, ref.source, ref.is_package, mode)
    if not isinstance(cls, type) or not any("__call__" in vars(k) for k in cls.__mro__ if k is not object):
        problems.append(
            Problem(
                where,
                f"model '{name}': handler '{model.handler}' must be a class whose instances are callable"
                " (define __call__)",
            )
        )
        return None
    return ref


def import_handler_module(entry: Path, folder: Path, *, fresh: bool = True) -> Any:
    """Import a handler file (or package `__init__.py`) under a private name, so two specs'
    `handlers` modules never collide; `folder` (the spec's) is on sys.path while it imports, as the
    repository has its siblings beside it. `fresh` re-executes it (validation sees the current file);
    otherwise an earlier import is reused (benchmarks load handlers many times)."""
    digest = hashlib.sha1(str(entry.resolve()).encode(), usedforsecurity=False).hexdigest()[:12]
    private = f"_compound_handler_{digest}"
    if private in sys.modules:
        if not fresh:
            return sys.modules[private]
        del sys.modules[private]
    if entry.name == "__init__.py":
        import_spec = importlib.util.spec_from_file_location(
            private, entry, submodule_search_locations=[str(entry.parent)]
        )
    else:
        import_spec = importlib.util.spec_from_file_location(private, entry)
    if import_spec is None or import_spec.loader is None:
        raise ImportError(f"cannot load {entry}")
    module = importlib.util.module_from_spec(import_spec)
    sys.path.insert(0, str(folder))
    try:
        sys.modules[private] = module
        import_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[private]
        raise
    finally:
        sys.path.remove(str(folder))
    return module


# --- pipelines ----------------------------------------------------------------------------------


class _PipelineChecker:
    """Checks one pipeline's wiring and types, and plans its execution."""

    def __init__(
        self, loaded: LoadedSpec, name: str, pipeline: PipelineSpec, problems: list[Problem], warnings: list[str]
    ) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.name = name
        self.pipeline = pipeline
        self.problems = problems
        self.warnings = warnings
        self.used_models: list[str] = []
        self.branch_only: dict[str, str] = {}  # tensor -> which switch branches alone produce it

    def where(self, *loc: object) -> str:
        return self.loaded.where("pipelines", self.name, *loc)

    def problem(self, loc: tuple[object, ...], message: str) -> None:
        self.problems.append(Problem(self.where(*loc), f"pipeline '{self.name}': {message}"))

    def check(self) -> Optional[PipelinePlan]:
        before = len(self.problems)
        control = _control_flow_kinds(self.pipeline.steps)
        if control and self.pipeline.fuse_groups:
            self.problem(
                ("fuse",),
                "fuse groups need a static pipeline, and this one has control flow"
                f" ({', '.join(sorted(set(control)))}); use fuse: true to fuse it whole",
            )
        static_ensemble = not (control or self.pipeline.fuse_groups or self.pipeline.fused)
        on_demand = self._on_demand_models() if static_ensemble else []
        if control:
            kinds = ", ".join(sorted(set(control)))
            plan = self._check_orchestrated(
                f"data-dependent control flow ({kinds}): Triton ensembles cannot branch or loop, so a BLS"
                " orchestrator is generated"
            )
        elif on_demand:
            # an ensemble cannot hold a request while a composing model loads (Triton fails it), and the
            # generated orchestrator loads a cold callee (with every other the request can reach) and waits
            plan = self._check_orchestrated(
                f"reaches on-demand model(s) {on_demand} (autoscale.min 0): a Triton ensemble cannot wait"
                " while a composing model loads, so a BLS orchestrator is generated, which loads them and waits"
            )
        else:
            plan = self._check_ensemble()
        orchestrated = bool(control or on_demand)
        streams = StreamChecker(self.spec, self.pipeline, lambda loc, message: self.problem(loc, message))
        streaming = streams.check_orchestrated() if orchestrated else streams.check_ensemble()
        if plan is None or len(self.problems) > before:
            return None
        plan.streaming = streaming
        if streaming and plan.kind == "ensemble":
            self.warnings.append(
                f"{self.where('steps')}: pipeline '{self.name}': its last step streams; Triton 2.51's ensemble does not"
                " pass a client's cancellation on to it, so an abandoned stream runs to its own end (fuse: true, an"
                " orchestrated pipeline, or the model called directly stops it within a step:"
                " docs/streaming.md#cancellation-triton-251)"
            )
        if self.pipeline.fuse_groups:
            self._plan_groups(plan)
            if len(self.problems) > before:
                return None
        if self.pipeline.fused:
            why = (
                f"fuse: true, with data-dependent control flow ({', '.join(sorted(set(control)))})"
                if control
                else "fuse: true"
            )
            plan.kind = "fused"
            # in-process handlers see every merged row: a component that takes one row at a time limits it
            plan.max_batch_size = min(self.spec.models[m].max_batch_size for m in plan.models)
            plan.reason = (
                f"{why}: every step's handler runs in-process in one Python model, batched as a whole"
                " (no hop between steps; its components scale together)"
            )
        elif self.pipeline.instances is not None:
            self.warnings.append(
                f"{self.where('instances')}: pipeline '{self.name}':"
                " instances applies to fused pipelines only (fuse: true); ignored"
            )
        return plan

    # ensembles: a DAG ordered by data dependencies, as Triton runs it

    def _check_ensemble(self) -> Optional[PipelinePlan]:
        # a pipeline with control-flow steps went to _check_orchestrated: every step here is a model step
        steps = [step for step in self.pipeline.steps if isinstance(step, ModelStep)]
        tensors: dict[str, TensorSpec] = dict(self.pipeline.inputs)
        producers: dict[str, int] = {}
        for i, step in enumerate(steps):
            model = self._check_model_step(step, ("steps", i))
            if model is None:
                continue
            for out_name, tensor in step.outputs.items():
                if out_name not in model.outputs:
                    continue
                if tensor in self.pipeline.inputs:
                    self.problem(
                        ("steps", i, "outputs", out_name),
                        f"step {i} ({step.model}) writes tensor '{tensor}', which is a pipeline input:"
                        " two producers of one tensor",
                    )
                elif tensor in producers:
                    other = producers[tensor]
                    self.problem(
                        ("steps", i, "outputs", out_name),
                        f"tensor '{tensor}' has two producers:"
                        f" step {other} ({steps[other].model}) and step {i} ({step.model})",
                    )
                else:
                    producers[tensor] = i
                    tensors[tensor] = model.outputs[out_name]

        consumed: set[str] = set()
        deps: dict[int, set[int]] = {i: set() for i in range(len(steps))}
        for i, step in enumerate(steps):
            model = self.spec.models.get(step.model)
            for in_name, tensor in step.inputs.items():
                consumed.add(tensor)
                if tensor not in tensors:
                    self.problem(
                        ("steps", i, "inputs", in_name),
                        f"step {i} ({step.model}) consumes tensor '{tensor}',"
                        " which no step produces and is not a pipeline input",
                    )
                    continue
                if tensor in producers:
                    deps[i].add(producers[tensor])
                if model is not None and in_name in model.inputs:
                    self._check_edge(
                        ("steps", i, "inputs", in_name),
                        tensor,
                        tensors[tensor],
                        f"{step.model}.{in_name}",
                        model.inputs[in_name],
                    )

        for out in self.pipeline.outputs:
            if out in self.pipeline.inputs:
                self.problem(
                    ("outputs",), f"output '{out}' is a pipeline input: an ensemble cannot return an input unchanged"
                )
            elif out not in producers:
                self.problem(("outputs",), f"output '{out}' is never produced by any step")

        order = self._topological(steps, deps)
        if order is None:
            return None

        kept_steps: list[EnsembleStep] = []
        stage_of: dict[int, int] = {}
        for i in order:
            step = steps[i]
            stage_of[i] = 1 + max((stage_of[d] for d in deps[i]), default=-1)
            outputs = {}
            for out_name, tensor in step.outputs.items():
                if tensor in consumed or tensor in self.pipeline.outputs:
                    outputs[out_name] = tensor
                else:
                    self.warnings.append(
                        f"{self.where('steps', i, 'outputs', out_name)}: pipeline '{self.name}':"
                        f" tensor '{tensor}' from step {i} ({step.model}) is never consumed; left out of the ensemble"
                    )
            if not outputs:
                self.problem(("steps", i), f"step {i} ({step.model}) produces nothing the pipeline uses")
            kept_steps.append(EnsembleStep(i, step.model, dict(step.inputs), outputs, stage_of[i]))

        if self.pipeline.timeout_ms is not None and not self.pipeline.fused:
            self.warnings.append(
                f"{self.where('timeout_ms')}: pipeline '{self.name}':"
                " timeout_ms applies to orchestrated pipelines only; ignored for an ensemble"
            )
        max_batch = self._ensemble_batch_size()
        if max_batch is None:
            return None
        return PipelinePlan(
            name=self.name,
            spec=self.pipeline,
            kind="ensemble",
            reason="static DAG: a Triton ensemble runs it without a Python hop between steps",
            tensors={
                t: tensors[t]
                for t in tensors
                if t in consumed or t in self.pipeline.outputs or t in self.pipeline.inputs
            },
            max_batch_size=max_batch,
            models=self.used_models,
            steps=kept_steps,
            joins={i: sorted(deps[i]) for i in order if deps[i]},
        )

    # fuse groups: some steps of an ensemble fused into one model, called as one step

    def _plan_groups(self, plan: PipelinePlan) -> None:
        """Check each group (steps of this pipeline, each in one group only, nothing outside it running
        between two of its steps, no two groups waiting on each other), then plan each as a fused
        pipeline of its own and the ensemble's steps with each group as one step."""
        before = len(self.problems)
        by_model: dict[str, list[EnsembleStep]] = {}
        for step in plan.steps:
            by_model.setdefault(step.model, []).append(step)
        owner: dict[int, str] = {}
        members: dict[str, list[EnsembleStep]] = {}
        for g, group in enumerate(self.pipeline.fuse_groups):
            chosen: list[EnsembleStep] = []
            for k, model in enumerate(group.steps):
                loc = ("fuse", g, "steps", k)
                found = by_model.get(model, [])
                if not found:
                    self.problem(
                        loc,
                        f"fuse group '{group.name}': '{model}' is not a step of this pipeline"
                        f" (steps: {', '.join(s.model for s in plan.steps)})",
                    )
                elif len(found) > 1:
                    self.problem(
                        loc,
                        f"fuse group '{group.name}': model '{model}' runs in steps {[s.index for s in found]};"
                        " a group names steps by model, so a grouped model must run in one step only",
                    )
                elif found[0].index in owner:
                    other = owner[found[0].index]
                    self.problem(
                        loc,
                        f"fuse group '{group.name}': step {found[0].index} ({model}) is "
                        + ("named twice" if other == group.name else f"already in fuse group '{other}'")
                        + ": a step is fused into one group only",
                    )
                else:
                    owner[found[0].index] = group.name
                    chosen.append(found[0])
            members[group.name] = sorted(chosen, key=plan.steps.index)
        if len(self.problems) > before:
            return
        ancestors = _ancestors(plan)
        for g, group in enumerate(self.pipeline.fuse_groups):
            inside = {s.index for s in members[group.name]}
            for step in plan.steps:
                if step.index in inside:
                    continue
                upstream = sorted(m for m in inside if m in ancestors[step.index])
                downstream = sorted(m for m in inside if step.index in ancestors[m])
                if upstream and downstream:
                    names = {s.index: s.model for s in plan.steps}
                    self.problem(
                        ("fuse", g, "steps"),
                        f"fuse group '{group.name}' is not contiguous: step {step.index} ({step.model}) runs between"
                        f" its steps (after {', '.join(names[i] for i in upstream)}, before"
                        f" {', '.join(names[i] for i in downstream)}); add it to the group or fuse fewer steps",
                    )
                    break
        if len(self.problems) > before:
            return
        node = {s.index: owner.get(s.index, f"#{s.index}") for s in plan.steps}
        first = {n: min(i for i, m in node.items() if m == n) for n in node.values()}
        call_deps: dict[str, set[str]] = {n: set() for n in node.values()}
        for consumer, producers in plan.joins.items():
            for producer in producers:
                if node[producer] != node[consumer]:
                    call_deps[node[consumer]].add(node[producer])
        order = _topological_order(call_deps, first.__getitem__)
        if len(order) < len(call_deps):
            waiting = sorted(n for n in call_deps if not n.startswith("#"))
            self.problem(
                ("fuse",),
                f"fuse groups {waiting} wait on each other (each needs a tensor the other produces):"
                " merge them or fuse other steps",
            )
            return
        self._build_calls(plan, members, node, call_deps, order)

    def _build_calls(
        self,
        plan: PipelinePlan,
        members: dict[str, list[EnsembleStep]],
        node: dict[int, str],
        call_deps: dict[str, set[str]],
        order: list[str],
    ) -> None:
        by_index = {s.index: s for s in plan.steps}
        consumed_by: dict[str, set[str]] = {}  # tensor -> the calls that read it
        for step in plan.steps:
            for tensor in step.inputs.values():
                consumed_by.setdefault(tensor, set()).add(node[step.index])
        index_of: dict[str, int] = {}
        stage_of: dict[str, int] = {}
        calls: list[EnsembleStep] = []
        for name in order:
            stage_of[name] = 1 + max((stage_of[d] for d in call_deps[name]), default=-1)
            if name.startswith("#"):
                step = by_index[int(name[1:])]
                index_of[name] = step.index
                calls.append(EnsembleStep(step.index, step.model, step.inputs, step.outputs, stage_of[name]))
                continue
            group_steps = members[name]
            produced = [t for s in group_steps for t in s.outputs.values()]
            read = [t for s in group_steps for t in s.inputs.values() if t not in produced]
            inputs = list(dict.fromkeys(read))
            outputs = [t for t in produced if t in self.pipeline.outputs or consumed_by.get(t, set()) - {name}]
            index_of[name] = min(s.index for s in group_steps)
            calls.append(
                EnsembleStep(index_of[name], name, {t: t for t in inputs}, {t: t for t in outputs}, stage_of[name])
            )
            plan.groups[name] = self._group_plan(plan, name, group_steps, inputs, outputs)
        plan.calls = calls
        plan.call_joins = {index_of[n]: sorted(index_of[d] for d in call_deps[n]) for n in order if call_deps[n]}
        names = ", ".join(f"'{g}' ({', '.join(p.models)})" for g, p in plan.groups.items())
        plan.reason += f"; fuse group(s) {names} each run in-process in one Python model, called as one step"

    def _group_plan(
        self, plan: PipelinePlan, name: str, steps: list[EnsembleStep], inputs: list[str], outputs: list[str]
    ) -> PipelinePlan:
        """A group as a fused pipeline of its own: the same runtime, program and warmup as `fuse: true`."""
        group = next(g for g in self.pipeline.fuse_groups if g.name == name)
        spec = PipelineSpec(
            inputs={t: plan.tensors[t] for t in inputs},
            outputs=outputs,
            steps=[ModelStep(model=s.model, inputs=s.inputs, outputs=s.outputs) for s in steps],
            fuse=True,
            instances=group.instances,
        )
        models = [s.model for s in steps]
        tensors = {t: plan.tensors[t] for s in steps for t in (*s.inputs.values(), *s.outputs.values())}
        return PipelinePlan(
            name=name,
            spec=spec,
            kind="fused",
            reason=(
                f"fuse group of pipeline '{self.name}': steps {', '.join(models)} run in-process in one Python model,"
                " batched as a whole (no hop between them); the pipeline's ensemble calls it as one step"
            ),
            tensors=tensors,
            max_batch_size=min(self.spec.models[m].max_batch_size for m in models),
            models=models,
            steps=[EnsembleStep(k, s.model, s.inputs, s.outputs, s.stage) for k, s in enumerate(steps)],
        )

    def _topological(self, steps: list[ModelStep], deps: dict[int, set[int]]) -> Optional[list[int]]:
        order = _topological_order(deps, lambda i: i)
        if len(order) < len(deps):
            cycle = " -> ".join(f"step {i} ({steps[i].model})" for i in sorted(set(deps) - set(order)))
            self.problem(("steps",), f"the steps form a cycle: {cycle}")
            return None
        return order

    def _ensemble_batch_size(self) -> Optional[int]:
        sizes = {m: self.spec.models[m].max_batch_size for m in self.used_models}
        if not sizes:
            return None
        batching = {m for m, s in sizes.items() if s > 0}
        if batching and len(batching) != len(sizes) and not self.pipeline.fused:  # a fused runtime adapts each step
            flat = sorted(set(sizes) - batching)
            self.problem(
                ("steps",),
                f"mixes batching models {sorted(batching)} with non-batching models {flat} (max_batch_size 0);"
                " a Triton ensemble needs all or none to batch",
            )
            return None
        return min(sizes.values())

    # shared by both kinds

    def _check_model_step(self, step: ModelStep, loc: tuple[object, ...]) -> Optional[ModelSpec]:
        model = self.spec.models.get(step.model)
        if model is None:
            known = ", ".join(sorted(self.spec.models))
            self.problem(loc + ("model",), f"unknown model '{step.model}' (models: {known})")
            return None
        if step.model not in self.used_models:
            self.used_models.append(step.model)
        for in_name in step.inputs:
            if in_name not in model.inputs:
                self.problem(
                    loc + ("inputs", in_name),
                    f"model '{step.model}' has no input '{in_name}' (inputs: {', '.join(model.inputs)})",
                )
        missing = [n for n in model.inputs if n not in step.inputs]
        if missing:
            self.problem(loc + ("inputs",), f"step feeds no tensor to input(s) {missing} of model '{step.model}'")
        for out_name in step.outputs:
            if out_name not in model.outputs:
                self.problem(
                    loc + ("outputs", out_name),
                    f"model '{step.model}' has no output '{out_name}' (outputs: {', '.join(model.outputs)})",
                )
        return model

    def _check_edge(
        self, loc: tuple[object, ...], tensor: str, produced: TensorSpec, consumer: str, expected: TensorSpec
    ) -> None:
        if not produced.compatible_with(expected):
            self.problem(
                loc, f"tensor '{tensor}' is {produced.describe()} but {consumer} expects {expected.describe()}"
            )

    # orchestrators: listed order, scoped tensors, branches that agree

    def _on_demand_models(self) -> list[str]:
        """The models this pipeline's steps call that start unloaded (autoscale.min 0)."""
        called = {step.model for step in self.pipeline.steps if isinstance(step, ModelStep)}
        models = self.spec.models
        return sorted(m for m in called if m in models and (bounds := models[m].autoscale) and bounds.on_demand)

    def _check_orchestrated(self, reason: str) -> Optional[PipelinePlan]:
        env: dict[str, TensorSpec] = dict(self.pipeline.inputs)
        produced = self._check_block(self.pipeline.steps, ("steps",), env, frozenset())
        for out in self.pipeline.outputs:
            if out in self.branch_only and out not in produced:
                self.problem(("outputs",), f"output '{out}' is not produced on every path: {self.branch_only[out]}")
            elif out not in produced and out not in self.pipeline.inputs:
                self.problem(("outputs",), f"output '{out}' is never produced by any step")
        # The orchestrator always batches: requests that queue up reach one execute() together and run
        # concurrently, whatever its callees do. Merged rows go to a batching callee in one request (so no
        # more than the smallest batching callee takes) and to a non-batching one row by row.
        sizes = [self.spec.models[m].max_batch_size for m in self.used_models if self.spec.models[m].max_batch_size > 0]
        return PipelinePlan(
            name=self.name,
            spec=self.pipeline,
            kind="orchestrator",
            reason=reason,
            tensors={**self.pipeline.inputs, **produced},
            max_batch_size=min(sizes) if sizes else UNBATCHED_ORCHESTRATOR_BATCH,
            models=self.used_models,
        )

    def _check_block(
        self, steps: list[AnyStep], loc: tuple[object, ...], env: dict[str, TensorSpec], rebindable: frozenset[str]
    ) -> dict[str, TensorSpec]:
        """Check steps in order; return the tensors they produce. `env` grows as steps produce."""
        produced: dict[str, TensorSpec] = {}
        for i, step in enumerate(steps):
            step_loc = loc + (i,)
            if isinstance(step, ModelStep):
                new = self._check_orchestrated_model(step, step_loc, env)
            elif isinstance(step, SwitchStep):
                new = self._check_switch(step, step_loc, env, rebindable)
            elif isinstance(step, LoopStep):
                new = self._check_loop(step, step_loc, env, rebindable)
            else:
                new = self._check_map(step, step_loc, env)
            for tensor, spec in new.items():
                if tensor in env and tensor not in rebindable:
                    self.problem(
                        step_loc,
                        f"tensor '{tensor}' has two producers"
                        f" (it already exists when step {'.'.join(map(str, step_loc[1:]))} writes it)",
                    )
                    continue
                env[tensor] = spec
                produced[tensor] = spec
        return produced

    def _check_orchestrated_model(
        self, step: ModelStep, loc: tuple[object, ...], env: dict[str, TensorSpec]
    ) -> dict[str, TensorSpec]:
        model = self._check_model_step(step, loc)
        if model is None:
            return {}
        for in_name, tensor in step.inputs.items():
            if tensor not in env and tensor in self.branch_only:
                self.problem(
                    loc + ("inputs", in_name),
                    f"step {step.model} consumes tensor '{tensor}', but {self.branch_only[tensor]}",
                )
            elif tensor not in env:
                self.problem(
                    loc + ("inputs", in_name),
                    f"step {step.model} consumes tensor '{tensor}' before anything produces it (an orchestrated"
                    " pipeline, with switch/loop/map or on-demand models, runs its steps in listed order)",
                )
            elif in_name in model.inputs:
                self._check_edge(
                    loc + ("inputs", in_name), tensor, env[tensor], f"{step.model}.{in_name}", model.inputs[in_name]
                )
        return {tensor: model.outputs[out] for out, tensor in step.outputs.items() if out in model.outputs}

    def _check_switch(
        self, step: SwitchStep, loc: tuple[object, ...], env: dict[str, TensorSpec], rebindable: frozenset[str]
    ) -> dict[str, TensorSpec]:
        selector = env.get(step.switch)
        if selector is None:
            self.problem(loc + ("switch",), f"switch on tensor '{step.switch}', which nothing produces before it")
        elif selector.dtype not in ("string", "int8", "int16", "int32", "int64", "uint8") or selector.dims != [1]:
            self.problem(
                loc + ("switch",),
                f"switch tensor '{step.switch}' is {selector.describe()};"
                " it must be a string or integer tensor of dims [1]",
            )
        elif selector.dtype != "string":
            for case in step.cases:
                try:
                    int(case)
                except ValueError:
                    self.problem(
                        loc + ("cases", case),
                        f"case '{case}' is not an integer, but switch tensor '{step.switch}' is {selector.dtype}",
                    )
        branches: list[tuple[str, dict[str, TensorSpec]]] = []
        for case, body in step.cases.items():
            branches.append((f"case '{case}'", self._check_block(body, loc + ("cases", case), dict(env), rebindable)))
        if step.default is not None:
            branches.append(("default", self._check_block(step.default, loc + ("default",), dict(env), rebindable)))
        # Only what every branch produces exists after the switch; a tensor some branches produce is
        # theirs alone (an intermediate), and reading it later is an error that names the branches.
        first_label, first = branches[0]
        common = [t for t in first if all(t in outputs for _, outputs in branches[1:])]
        for tensor in sorted({t for _, outputs in branches for t in outputs} - set(common)):
            having = [label for label, outputs in branches if tensor in outputs]
            missing = [label for label, outputs in branches if tensor not in outputs]
            self.branch_only[tensor] = (
                f"only {', '.join(having)} of the switch at {self.where(*loc)} produce it, not {', '.join(missing)}"
            )
        for label, outputs in branches[1:]:
            for tensor in common:
                if outputs[tensor] != first[tensor]:
                    self.problem(
                        loc,
                        f"tensor '{tensor}' is {first[tensor].describe()} in {first_label} "
                        f"but {outputs[tensor].describe()} in {label}",
                    )
        return {tensor: first[tensor] for tensor in common}

    def _check_loop(
        self, step: LoopStep, loc: tuple[object, ...], env: dict[str, TensorSpec], rebindable: frozenset[str]
    ) -> dict[str, TensorSpec]:
        loop = step.loop
        body_env = dict(env)
        for carried, initial in loop.carry.items():
            if initial not in env:
                self.problem(
                    loc + ("loop", "carry", carried),
                    f"carried tensor '{carried}' starts from '{initial}', which nothing produces before the loop",
                )
            else:
                body_env[carried] = env[initial]
        body_rebindable = rebindable | frozenset(loop.carry)
        produced = self._check_block(loop.body, loc + ("loop", "body"), body_env, body_rebindable)
        until = produced.get(loop.until)
        if until is None:
            self.problem(loc + ("loop", "until"), f"loop condition '{loop.until}' is not produced inside the loop body")
        elif until.dtype != "bool":
            self.problem(
                loc + ("loop", "until"), f"loop condition '{loop.until}' is {until.describe()}; it must be bool"
            )
        for carried, initial in loop.carry.items():
            if carried not in produced:
                self.problem(
                    loc + ("loop", "carry", carried), f"carried tensor '{carried}' is not produced by the loop body"
                )
            elif initial in env and not produced[carried].compatible_with(env[initial]):
                self.problem(
                    loc + ("loop", "carry", carried),
                    f"carried tensor '{carried}' starts as {env[initial].describe()}"
                    f" but the body produces {produced[carried].describe()}",
                )
        result = {t: s for t, s in produced.items()}
        for carried in loop.carry:
            if carried in env and carried in result:
                # a carried tensor that already existed (same name in and out) is updated, not re-produced
                env[carried] = result.pop(carried)
        return result

    def _check_map(self, step: MapStep, loc: tuple[object, ...], env: dict[str, TensorSpec]) -> dict[str, TensorSpec]:
        over = env.get(step.map.over)
        if over is None:
            self.problem(loc + ("map", "over"), f"map over tensor '{step.map.over}', which nothing produces before it")
            return {}
        item = TensorSpec(dtype=over.dtype, dims=over.dims[1:] or [1])
        body_env = dict(env)
        body_env[step.map.over] = item
        produced = self._check_block(step.map.body, loc + ("map", "body"), body_env, frozenset({step.map.over}))
        return {t: TensorSpec(dtype=s.dtype, dims=[over.dims[0], *s.dims]) for t, s in produced.items()}


def _ancestors(plan: PipelinePlan) -> dict[int, set[int]]:
    """Step index -> every step it (transitively) waits on; steps are in execution order."""
    found: dict[int, set[int]] = {}
    for step in plan.steps:
        direct = plan.joins.get(step.index, [])
        found[step.index] = set(direct).union(*(found[d] for d in direct))
    return found


StepKey = TypeVar("StepKey", int, str)


def _topological_order(deps: dict[StepKey, set[StepKey]], rank: Callable[[StepKey], int]) -> list[StepKey]:
    """Names in dependency order (ties by rank), as far as they go: the members of a cycle, and what
    waits on them, are left out (callers compare lengths)."""
    remaining = {n: set(d) for n, d in deps.items()}
    order: list[StepKey] = []
    while remaining:
        ready = sorted((n for n, d in remaining.items() if not d), key=rank)
        if not ready:
            break
        for n in ready:
            order.append(n)
            del remaining[n]
        for d in remaining.values():
            d.difference_update(ready)
    return order


def _control_flow_kinds(steps: list[AnyStep]) -> list[str]:
    kinds: list[str] = []
    for step in steps:
        if isinstance(step, SwitchStep):
            kinds.append("switch")
        elif isinstance(step, LoopStep):
            kinds.append("loop")
        elif isinstance(step, MapStep):
            kinds.append("map")
    return kinds


# --- queue timeouts ---------------------------------------------------------------------------------
# Queue timeouts: how long a request may wait in a model's queue before Triton rejects it.
#
# A client with a deadline gives up on a request that waits too long, and on Triton 2.51 a gRPC client
# cancelling a request in flight can crash the server (server#7368/#8034). A queue timeout lets the
# server reject, cleanly and early, what it can no longer serve in time. It is Triton's
# `dynamic_batching.default_queue_policy` (REJECT after `default_timeout_microseconds`), so only a
# model with the dynamic batcher can have one.
#
# Where it comes from: `queue_timeout_ms` on a model and on a pipeline. A pipeline's value applies to
# every model that serves it with a queue of its own (its components, its orchestrator, its fused
# model or fuse groups). **The smaller wins**: a model gets the smallest of its own value and the
# values of the pipelines it serves. A model has one queue whoever calls it, and a timeout is a promise
# to callers that nobody waits longer; a component's own value can tighten its pipelines' promise,
# never loosen it. Triton's `allow_timeout_override` is on, and it too can only tighten: a request's
# own `timeout` parameter replaces the default only when it is smaller.


@dataclass(frozen=True)
class QueueTimeout:
    """The timeout a model's queue gets, and the spec entries that asked for one (the smallest wins)."""

    us: int
    sources: tuple[tuple[str, float], ...]  # (spec entry, its value in ms), the winner first

    @property
    def ms(self) -> float:
        return self.us / 1000.0

    def describe(self) -> str:
        """For the generated config's comment: which spec entries set it."""
        winner, *others = self.sources
        text = f"{winner[0]} ({_ms(winner[1])})"
        if others:
            text += "; the smallest of it and " + ", ".join(f"{entry} ({_ms(value)})" for entry, value in others)
        return text


def _ms(value: float) -> str:
    return f"{value:g} ms"


def _timeout(sources: list[tuple[str, float]]) -> Optional[QueueTimeout]:
    if not sources:
        return None
    ordered = sorted(sources, key=lambda s: (s[1], s[0]))
    return QueueTimeout(max(1, round(ordered[0][1] * 1000)), tuple(ordered))


def _pipeline_entries(pipelines: list[PipelinePlan]) -> list[tuple[str, float]]:
    return [
        (f"pipelines.{p.name}.queue_timeout_ms", p.spec.queue_timeout_ms)
        for p in pipelines
        if p.spec.queue_timeout_ms is not None
    ]


def model_queue_timeout(plan: DeploymentPlan, name: str) -> Optional[QueueTimeout]:
    """A component model's queue timeout: its own and those of the pipelines that call it as a model."""
    spec = plan.spec.models[name]
    if spec.batching is None:
        return None
    sources = [(f"models.{name}.queue_timeout_ms", spec.queue_timeout_ms)] if spec.queue_timeout_ms else []
    callers = [p for p in plan.pipelines.values() if name in p.direct_models]
    return _timeout(sources + _pipeline_entries(callers))


def owner_of(plan: DeploymentPlan, pipeline: PipelinePlan) -> PipelinePlan:
    """The spec's pipeline a program model serves: itself, or the pipeline whose fuse group it is."""
    for candidate in plan.pipelines.values():
        if pipeline.name in candidate.groups:
            return candidate
    return pipeline


def program_queue_timeout(plan: DeploymentPlan, pipeline: PipelinePlan) -> Optional[QueueTimeout]:
    """An orchestrator's, fused pipeline's or fuse group's queue timeout. A fused model's one queue
    replaces its members' queues, so their own values count too; an orchestrator's members keep theirs."""
    if pipeline.max_batch_size == 0:
        return None
    sources = _pipeline_entries([owner_of(plan, pipeline)])
    if pipeline.kind == "fused":
        sources += [
            (f"models.{m}.queue_timeout_ms", value)
            for m in pipeline.models
            if (value := plan.spec.models[m].queue_timeout_ms) is not None
        ]
    return _timeout(sources)


def _delay_us(spec: ModelSpec) -> int:
    return spec.batching.max_queue_delay_us if spec.batching is not None else 0


def check_queue_timeouts(loaded: LoadedSpec, pipelines: dict[str, PipelinePlan]) -> tuple[list[Problem], list[str]]:
    """Problems (a timeout that cannot apply, or one that rejects every request waiting for its batch
    to fill) and warnings (components of a pipeline that its timeout cannot reach)."""
    problems: list[Problem] = []
    warnings: list[str] = []
    models = loaded.spec.models
    for name, model in models.items():
        if model.queue_timeout_ms is None:
            continue
        where = loaded.where("models", name, "queue_timeout_ms")
        if model.batching is None:
            why = "max_batch_size is 0" if model.max_batch_size == 0 else "dynamic_batching is false"
            problems.append(
                Problem(
                    where,
                    f"model '{name}': queue_timeout_ms needs Triton's dynamic batcher (the queue policy is part of "
                    f"it), but {why}; remove queue_timeout_ms or let the model batch",
                )
            )
        elif model.queue_timeout_ms * 1000 <= _delay_us(model):
            problems.append(Problem(where, _below_delay(f"model '{name}'", model.queue_timeout_ms, name, models)))
        side_by_side = sorted(p for p, plan in pipelines.items() if name in _parallel_steps(plan))
        if model.batching is not None and side_by_side:
            warnings.append(
                f"{where}: model '{name}' runs beside other steps in pipeline(s) {side_by_side}; on Triton 2.51 "
                "a queue timeout's rejection of one parallel step while another still runs has crashed the server "
                "(SIGSEGV in TRITONBACKEND_ResponseSend, over HTTP too; docs/clients.md): keep the timeout well "
                "above the model's usual queueing"
            )
    for name, pipeline in pipelines.items():
        value = pipeline.spec.queue_timeout_ms
        if value is None:
            continue
        where = loaded.where("pipelines", name, "queue_timeout_ms")
        reached: list[str] = []
        skipped: list[str] = []
        for member in pipeline.direct_models:
            (reached if models[member].batching is not None else skipped).append(member)
            if models[member].batching is not None and value * 1000 <= _delay_us(models[member]):
                problems.append(Problem(where, _below_delay(f"pipeline '{name}'", value, member, models)))
        programs = list(pipeline.groups.values()) + ([pipeline] if pipeline.kind != "ensemble" else [])
        for program in programs:
            if program.max_batch_size == 0:
                skipped.append(program.name)
                continue
            reached.append(program.name)
            delay = max((_delay_us(models[m]) for m in program.models), default=0) if program.kind == "fused" else 0
            if value * 1000 <= delay:
                problems.append(
                    Problem(
                        where,
                        f"pipeline '{name}': queue_timeout_ms {value:g} is not above the fused model "
                        f"'{program.name}''s batching delay ({delay} µs, its components' longest "
                        "max_queue_delay_us): a request waiting for its batch to fill would be rejected",
                    )
                )
        parallel = _parallel_steps(pipeline)
        if parallel and any(m in reached for m in parallel):
            warnings.append(
                f"{where}: pipeline '{name}': its steps {parallel} run in parallel and the queue timeout reaches "
                "them; on Triton 2.51 a rejection of one parallel step while another still runs has crashed the "
                "server (SIGSEGV in TRITONBACKEND_ResponseSend, over HTTP too; docs/clients.md): keep the timeout "
                "well above the steps' usual queueing, or set it on the steps before the fan-out"
            )
        if not reached:
            problems.append(
                Problem(
                    where,
                    f"pipeline '{name}': queue_timeout_ms applies to no model: none of {sorted(skipped)} has "
                    "Triton's dynamic batcher (max_batch_size 0 or dynamic_batching false), where the queue policy "
                    "lives",
                )
            )
        elif skipped:
            warnings.append(
                f"{where}: pipeline '{name}': queue_timeout_ms does not reach {sorted(skipped)}: they do not "
                "batch on the server (max_batch_size 0 or dynamic_batching false), so their queues have no timeout"
            )
    return problems, warnings


def _parallel_steps(pipeline: PipelinePlan) -> list[str]:
    """The models an ensemble runs side by side (steps of one stage), where a rejected one leaves the
    others running."""
    if pipeline.kind != "ensemble":
        return []
    stages = Counter(step.stage for step in pipeline.served_steps)
    return sorted({step.model for step in pipeline.served_steps if stages[step.stage] > 1})


def _below_delay(who: str, value: float, member: str, models: dict[str, ModelSpec]) -> str:
    return (
        f"{who}: queue_timeout_ms {value:g} is not above model '{member}''s "
        f"dynamic_batching.max_queue_delay_us ({_delay_us(models[member])} µs): a request waiting for its batch "
        "to fill would be rejected; make the timeout longer than the delay"
    )
