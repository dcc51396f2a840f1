"""Compiles an orchestrated pipeline (switch/loop/map) into the JSON "program" that the one generic,
linted runtime `templates/orchestrator.py` interprets, and plans the orchestrator model around it.

Why a program and not generated Python: one runtime is tested once; each pipeline only differs in
data. The compiler resolves every tensor read to the step that produced it (or the enclosing scope),
so the runtime can start each step as soon as its inputs exist - independent calls overlap - while
rebinding (loop carry, map items) can never race with a reader of the old value.

Deadlock rule (see docs/orchestrator.md): the wait-for graph is one level deep and acyclic. An
orchestrator only calls component models (never a pipeline, never itself), component models call
nothing, and the orchestrator runs in its own instances (own stub processes): a waiting
orchestrator holds nothing a callee needs, so every callee request it waits on can always run.
Concurrency inside the orchestrator comes from asyncio, not from instances, so its instance count is
small and fixed (ORCHESTRATOR_INSTANCES); callees need no extra instances.

A fused pipeline (`fuse: true`) is the same program with every model step marked `inline`: the
runtime calls the handlers in its own process instead of sending BLS requests, so it calls nothing
and cannot deadlock; its instances do the compute, so their count is planned like a model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from toolkit import __version__
from toolkit.core.errors import CompoundError
from toolkit.plan.cache import cache_settings
from toolkit.plan.graph import DeploymentPlan, PipelinePlan
from toolkit.plan.streaming import max_streams
from toolkit.spec.schema import LoopStep, MapStep, ModelStep, Spec, SwitchStep, TensorSpec

PROGRAM_VERSION = 1
PROGRAM_FILE = "program.json"
# Two instances: while one is inside execute() (which returns only when all of its requests are
# done), the other picks up newly queued requests, so a long request (loop, slow branch) never holds
# up the requests that arrive behind it. More would only add idle stub processes.
ORCHESTRATOR_INSTANCES = 2

AnyStep = Union[ModelStep, SwitchStep, LoopStep, MapStep]
Json = dict[str, Any]
OUTER = -1  # a read resolved to the enclosing scope rather than to a step of the same block


@dataclass
class _Compiled:
    """One compiled block: its steps and the names it reads from the enclosing scope."""

    steps: list[Json]
    needs: set[str]
    writes: list[str]
    final: dict[str, int]  # tensor -> the step whose value of it the block ends with

    def json(self) -> Json:
        return {"steps": self.steps, "final": self.final}


class _Compiler:
    def __init__(self, spec: Spec, pipeline: PipelinePlan) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.inline = pipeline.kind == "fused"

    def block(self, steps: list[AnyStep], loc: tuple[Any, ...], types: dict[str, TensorSpec]) -> _Compiled:
        """Compile steps in listed order; each read resolves to the latest earlier writer.

        `types` is the tensor types visible here; it grows as steps produce (plan.py has already
        checked them, this only needs them to know shapes).
        """
        compiled: list[Json] = []
        writer: dict[str, int] = {}  # tensor -> index of the latest step in this block writing it
        needs: set[str] = set()
        writes: list[str] = []
        for i, step in enumerate(steps):
            node, reads, produced = self.step(step, loc + (i,), types)
            resolved = {name: writer.get(name, OUTER) for name in sorted(reads)}
            needs.update(name for name, at in resolved.items() if at == OUTER)
            node["reads"] = resolved
            node["after"] = sorted({at for at in resolved.values() if at != OUTER})
            compiled.append(node)
            for name, spec in produced.items():
                types[name] = spec
                writer[name] = i
                if name not in writes:
                    writes.append(name)
        return _Compiled(compiled, needs, writes, writer)

    def step(
        self, step: AnyStep, loc: tuple[Any, ...], types: dict[str, TensorSpec]
    ) -> tuple[Json, set[str], dict[str, TensorSpec]]:
        """(node, names read from the block, tensors written to the block) for one step."""
        where = ".".join(str(part) for part in loc)
        if isinstance(step, ModelStep):
            model = self.spec.models[step.model]
            node: Json = {
                "op": "model",
                "where": where,
                "model": step.model,
                "batching": model.max_batch_size > 0,
                "inline": self.inline,
                "inputs": dict(step.inputs),
                "outputs": dict(step.outputs),
            }
            if model.stream:
                node["stream"] = True  # its responses go to the caller as they come (the runtime's streaming mode)
            produced = {tensor: model.outputs[out] for out, tensor in step.outputs.items()}
            return node, set(step.inputs.values()), produced
        if isinstance(step, SwitchStep):
            first_types = dict(types)  # every branch produces the same types (plan.py checked): keep one
            branches = [
                (case, self.block(body, loc + ("cases", case), first_types if n == 0 else dict(types)))
                for n, (case, body) in enumerate(step.cases.items())
            ]
            default = self.block(step.default, loc + ("default",), dict(types)) if step.default is not None else None
            integer = types[step.switch].dtype != "string"
            reads = {step.switch}
            for _, body in branches:
                reads |= body.needs
            if default is not None:
                reads |= default.needs
            # what every branch writes (plan.py made sure later steps read nothing else)
            writes = [name for name in branches[0][1].writes if all(name in body.writes for _, body in branches[1:])]
            if default is not None:
                writes = [name for name in writes if name in default.writes]
            node = {
                "op": "switch",
                "where": where,
                "on": step.switch,
                "integer": integer,
                "cases": [[str(int(case)) if integer else case, body.json()] for case, body in branches],
                "default": default.json() if default is not None else None,
                "writes": writes,
            }
            return node, reads, {name: first_types[name] for name in writes}
        if isinstance(step, LoopStep):
            loop = step.loop
            body_types = dict(types)
            for carried, initial in loop.carry.items():
                body_types[carried] = types[initial]
            body = self.block(loop.body, loc + ("loop", "body"), body_types)
            node = {
                "op": "loop",
                "where": where,
                "max_iterations": loop.max_iterations,
                "until": loop.until,
                "carry": dict(loop.carry),
                "body": body.json(),
                "writes": body.writes,
            }
            reads = (body.needs - set(loop.carry)) | set(loop.carry.values())
            return node, reads, {name: body_types[name] for name in body.writes}
        over = step.map.over
        over_type = types[over]
        body_types = dict(types)
        body_types[over] = TensorSpec(dtype=over_type.dtype, dims=over_type.dims[1:] or [1])
        body = self.block(step.map.body, loc + ("map", "body"), body_types)
        stacked = {
            name: TensorSpec(dtype=body_types[name].dtype, dims=[over_type.dims[0], *body_types[name].dims])
            for name in body.writes
        }
        node = {
            "op": "map",
            "where": where,
            "over": over,
            # over dims [N] give items of dims [1] (a column slice); [N, ...] give items of dims [...]
            "keep_axis": len(over_type.dims) == 1,
            "body": body.json(),
            "writes": body.writes,
            # item shapes (variable dims as 0) and dtypes, for the result of a map over zero items
            "empty": {
                name: [[max(d, 0) for d in body_types[name].dims], body_types[name].numpy_dtype] for name in body.writes
            },
        }
        return node, (body.needs - {over}) | {over}, stacked


def compile_program(plan: DeploymentPlan, pipeline: PipelinePlan) -> Json:
    """The JSON program the runtime interprets: steps, tensor maps, dtypes, batching, timeout."""
    compiler = _Compiler(plan.spec, pipeline)
    steps = list(pipeline.spec.steps)
    if pipeline.steps:  # a static DAG may list its steps in any order: run them in the planned one
        steps = [pipeline.spec.steps[step.index] for step in pipeline.steps]
    root = compiler.block(steps, ("steps",), dict(pipeline.spec.inputs))
    spec = pipeline.spec
    for name in spec.outputs:
        if name not in root.writes and name not in spec.inputs:
            raise CompoundError(f"internal error: pipeline '{pipeline.name}': output '{name}' is not produced")
    program: Json = {
        "version": PROGRAM_VERSION,
        "generator": f"compound {__version__}",
        "pipeline": pipeline.name,
        "batching": pipeline.max_batch_size > 0,
        "timeout_ms": spec.timeout_ms,
        "inputs": {name: {"dtype": t.numpy_dtype, "dims": list(t.dims)} for name, t in spec.inputs.items()},
        "outputs": {name: pipeline.tensors[name].numpy_dtype for name in spec.outputs},
        "body": root.json(),
    }
    if pipeline.streaming:
        program["streaming"] = True
    if pipeline.kind == "fused":
        program["handlers"] = inline_handlers(plan, pipeline)
    else:
        on_demand = {m for m in pipeline.models if (s := plan.models[m].autoscale) is not None and s.on_demand}
        if on_demand:
            program["on_demand"] = sorted(on_demand)
            mark_prewarm(program["body"], on_demand, frozenset())
    return program


def mark_prewarm(block: Json, on_demand: set[str], after: frozenset[str]) -> frozenset[str]:
    """Give each model step the on-demand models a request may still need from that step on (this
    step, the rest of its block, every branch of what follows, and what follows the block: `after`).
    When a request meets a cold one, the runtime loads all of these at once, in parallel, instead of
    one cold start after another as the request cascades down its path. Returns the block's set."""
    reach = after
    for node in reversed(block["steps"]):
        if node["op"] == "model":
            reach = reach | ({node["model"]} & on_demand)
            node["prewarm"] = sorted(reach)
        elif node["op"] == "switch":
            bodies = [body for _, body in node["cases"]] + ([node["default"]] if node["default"] is not None else [])
            reach = frozenset().union(*(mark_prewarm(body, on_demand, reach) for body in bodies))
        else:  # loop and map bodies run, then what follows them
            reach = mark_prewarm(node["body"], on_demand, reach)
    return reach


def inline_handlers(plan: DeploymentPlan, pipeline: PipelinePlan) -> Json:
    """What a fused runtime needs to load each handler and warm it before the model reports ready
    (zero-filled inputs at batch 1 and the pipeline's max batch, as Triton's model_warmup would)."""
    sizes = sorted({1, pipeline.max_batch_size}) if pipeline.max_batch_size > 1 else [1]
    handlers: Json = {}
    for name in pipeline.models:
        model = plan.models[name]
        spec = model.spec
        handlers[name] = {
            "handler": f"{model.handler.module}:{model.handler.cls}",
            "parameters": spec.parameters,
            "inputs": {n: [[1 if d == -1 else d for d in t.dims], t.numpy_dtype] for n, t in spec.inputs.items()},
            "outputs": [[n, t.numpy_dtype, list(t.dims)] for n, t in spec.outputs.items()],
            "code": name,  # the folder beside the runtime that holds this handler's code
            # a streaming handler is not warmed: a call starts a stream, which the runtime's loop owns
            "warmup": sizes if spec.warmup and model.stream is None else [],
        }
        if model.stream is not None:
            handlers[name]["stream"] = model.stream
            handlers[name]["max_streams"] = max_streams(spec.max_batch_size)
        cache = cache_settings(model)
        if cache is not None:
            handlers[name]["cache"] = cache
    return handlers


def called_models(program: Json) -> list[str]:
    """Every model a program can call, in first-use order."""
    seen: list[str] = []

    def walk(block: Json) -> None:
        for node in block["steps"]:
            if node["op"] == "model":
                if node["model"] not in seen:
                    seen.append(node["model"])
            elif node["op"] == "switch":
                for _, body in node["cases"]:
                    walk(body)
                if node["default"] is not None:
                    walk(node["default"])
            else:
                walk(node["body"])

    walk(program["body"])
    return seen


def plan_instances(plan: DeploymentPlan, pipeline: PipelinePlan) -> tuple[int, dict[str, int]]:
    """(orchestrator instance count, minimum instance count per callee) under the deadlock rule.

    The rule needs no callee above one instance: callees never wait on anything, so each of their
    instances always finishes what it started. The check that makes the rule hold is that nothing
    an orchestrator calls is itself an orchestrator or pipeline (no cycles, no nesting).
    """
    if pipeline.kind == "fused":
        assert pipeline.instances is not None, "build_plan sets a fused pipeline's instances"
        return pipeline.instances.count, {}  # it calls nothing: its handlers run in-process
    for model in pipeline.models:
        if model in plan.pipelines or model not in plan.spec.models:
            raise CompoundError(
                f"pipeline '{pipeline.name}' calls '{model}', which is not a component model",
                hint="orchestrators may call models only; calling a pipeline could deadlock",
            )
    return ORCHESTRATOR_INSTANCES, {model: 1 for model in pipeline.models}


def describe_program(program: Json, indent: str = "") -> str:
    """A readable outline of a program, for docs and debugging."""
    lines: list[str] = []

    def walk(block: Json, pad: str) -> None:
        for node in block["steps"]:
            after = f" after {node['after']}" if node.get("after") else ""
            if node["op"] == "model":
                lines.append(f"{pad}{node['where']}: {node['model']}{after}")
            elif node["op"] == "switch":
                lines.append(f"{pad}{node['where']}: switch on {node['on']}{after}")
                for case, body in node["cases"]:
                    lines.append(f"{pad}  case {case}:")
                    walk(body, pad + "    ")
                if node["default"] is not None:
                    lines.append(f"{pad}  default:")
                    walk(node["default"], pad + "    ")
            else:
                lines.append(f"{pad}{node['where']}: {node['op']}{after}")
                walk(node["body"], pad + "  ")

    walk(program["body"], indent)
    return "\n".join(lines)
