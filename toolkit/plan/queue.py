"""Queue timeouts: how long a request may wait in a model's queue before Triton rejects it.

A client with a deadline gives up on a request that waits too long, and on Triton 2.51 a gRPC client
cancelling a request in flight can crash the server (server#7368/#8034). A queue timeout lets the
server reject, cleanly and early, what it can no longer serve in time. It is Triton's
`dynamic_batching.default_queue_policy` (REJECT after `default_timeout_microseconds`), so only a
model with the dynamic batcher can have one.

Where it comes from: `queue_timeout_ms` on a model and on a pipeline. A pipeline's value applies to
every model that serves it with a queue of its own (its components, its orchestrator, its fused
model or fuse groups). **The smaller wins**: a model gets the smallest of its own value and the
values of the pipelines it serves. A model has one queue whoever calls it, and a timeout is a promise
to callers that nobody waits longer; a component's own value can tighten its pipelines' promise,
never loosen it. Triton's `allow_timeout_override` is on, and it too can only tighten: a request's
own `timeout` parameter replaces the default only when it is smaller.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from toolkit.errors import Problem
from toolkit.spec import LoadedSpec, ModelSpec

if TYPE_CHECKING:  # graph calls check_queue_timeouts while it builds the plan
    from toolkit.plan.graph import DeploymentPlan, PipelinePlan


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
