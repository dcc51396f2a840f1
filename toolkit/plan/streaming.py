"""Streaming components (`stream: true`): which handler protocol a model speaks, and where in a pipeline
a streaming step may stand.

Why the rules: a streaming model is a decoupled Triton model (one request, many responses). Its
responses can only go to the caller: nothing in Triton 2.51 feeds a stream of responses into a later
step as one input (an ensemble step after it would run once per response, and an ensemble cannot join
the tensors of two decoupled steps: server#7275), and an orchestrator or fused model needs one value per
step. So a streaming step is its pipeline's last, every pipeline output comes from it, and a pipeline
holds at most one on any path.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Literal, Optional, Union

from toolkit.spec.schema import LoopStep, MapStep, ModelSpec, ModelStep, PipelineSpec, Spec, SwitchStep

StreamMode = Literal["generator", "batch"]  # batch: continuous batching through start/step
# Streams one instance of a plain-generator model without a batch axis steps at once (each advanced in turn).
UNBATCHED_MAX_STREAMS = 64
AnyStep = Union[ModelStep, SwitchStep, LoopStep, MapStep]
Report = Callable[[tuple[object, ...], str], None]  # (location under the pipeline, message)


def max_streams(max_batch_size: int) -> int:
    """Streams in flight per instance: a continuous-batching step takes at most max_batch_size states;
    a request beyond waits in the instance's queue (Triton 2.51 caps nothing for a decoupled model)."""
    return max_batch_size if max_batch_size > 0 else UNBATCHED_MAX_STREAMS


def _has_method(cls: type, name: str) -> bool:
    return callable(getattr(cls, name, None))


def generator_call(cls: type) -> bool:
    """Whether the class's __call__ is a generator (a plain streaming handler)."""
    call = getattr(cls, "__call__", None)  # noqa: B004 - the class's own __call__, not the class's callability
    return call is not None and (inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call))


def stream_mode(name: str, model: ModelSpec, cls: type) -> tuple[Optional[StreamMode], Optional[str]]:
    """(mode, None) for a usable streaming handler, (None, problem) otherwise. start/step wins when
    the model batches; a model that does not batch needs a generator __call__."""
    handler = model.handler
    if inspect.isasyncgenfunction(getattr(cls, "__call__", None)):  # noqa: B004
        return None, (
            f"model '{name}': streaming handler '{handler}': __call__ is an async generator;"
            " write a plain generator (def __call__(...): ... yield {...})"
        )
    stepping = _has_method(cls, "start") and _has_method(cls, "step")
    if stepping and model.max_batch_size > 0:
        return "batch", None
    if generator_call(cls):
        return "generator", None
    if stepping:
        return None, (
            f"model '{name}': streaming handler '{handler}' has start/step (continuous batching) but max_batch_size"
            " is 0: give the model max_batch_size > 0 (the most streams stepped at once), or make __call__ a generator"
        )
    half = [m for m in ("start", "step") if _has_method(cls, m)]
    if half:
        return None, (
            f"model '{name}': streaming handler '{handler}' defines {half[0]} but not"
            f" {'step' if half[0] == 'start' else 'start'}: continuous batching needs both"
            " (start(**inputs) -> state, step(states) -> list of responses or None)"
        )
    return None, (
        f"model '{name}': stream: true, but handler '{handler}' is neither a generator (__call__ must yield"
        " {output: array} once per response) nor a continuous-batching handler (start and step)"
    )


def model_problems(name: str, model: ModelSpec) -> list[tuple[tuple[object, ...], str]]:
    """Settings a streaming model cannot have: (location under the model, message)."""
    found: list[tuple[tuple[object, ...], str]] = []
    if model.stream and model.cache is not False:
        found.append(
            (
                ("cache",),
                f"model '{name}': a streaming model cannot be cached (Triton's response cache refuses decoupled"
                " models, and a stream is not one row of outputs): remove cache or stream",
            )
        )
    return found


class StreamChecker:
    """Where a pipeline's streaming steps stand; `report` adds a located problem to the pipeline's."""

    def __init__(self, spec: Spec, pipeline: PipelineSpec, report: Report) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.report = report
        self.found: list[tuple[object, ...]] = []  # locations of streaming steps

    def streams(self, step: AnyStep) -> bool:
        if not isinstance(step, ModelStep):
            return False
        model = self.spec.models.get(step.model)
        return model is not None and model.stream

    def check_ensemble(self) -> bool:
        """Static pipelines (steps in any order, joined by tensors). True when the pipeline streams."""
        steps: list[Any] = list(self.pipeline.steps)
        consumers: dict[str, list[int]] = {}
        for j, other in enumerate(steps):
            for tensor in other.inputs.values():
                consumers.setdefault(tensor, []).append(j)
        streaming = [i for i, step in enumerate(steps) if self.streams(step)]
        if not streaming:
            return False
        if len(streaming) > 1:
            names = ", ".join(f"step {i} ({steps[i].model})" for i in streaming)
            self.report(
                ("steps", streaming[1]),
                f"{names} all stream: a pipeline has one streaming step, its last (a Triton ensemble cannot join"
                " the responses of two streaming steps, server#7275)",
            )
            return True
        i = streaming[0]
        step = steps[i]
        for out_name, tensor in step.outputs.items():
            readers = [j for j in consumers.get(tensor, []) if j != i]
            if readers:
                names = ", ".join(f"step {j} ({steps[j].model})" for j in readers)
                self.report(
                    ("steps", i, "outputs", out_name),
                    f"step {i} ({step.model}) streams, but {names} consumes its output '{tensor}': a streaming step"
                    " must be the pipeline's last (its many responses go to the caller; no step can take them as"
                    " one input)",
                )
        self._outputs_from(step, ("steps", i))
        self._fused_refusal(("steps", i), step)
        self.found.append(("steps", i))
        return True

    def check_orchestrated(self) -> bool:
        """Pipelines with switch/loop/map: a streaming step must end the pipeline's last path (the last step,
        or the last step of every branch of a last switch); never inside a loop or map body."""
        self._block(self.pipeline.steps, ("steps",), tail=True, why="")
        for loc in self.found:
            self._fused_refusal(loc, None)
        return bool(self.found)

    def _block(self, steps: list[AnyStep], loc: tuple[object, ...], tail: bool, why: str) -> None:
        for i, step in enumerate(steps):
            step_loc = loc + (i,)
            last = tail and i == len(steps) - 1
            if isinstance(step, ModelStep):
                if not self.streams(step):
                    continue
                if not last:
                    reason = why or "steps after it would have to take its many responses as one input"
                    self.report(
                        step_loc,
                        f"step {_dotted(step_loc)} ({step.model}) streams but is not the pipeline's last step:"
                        f" {reason}; move it to the end (its responses go to the caller)",
                    )
                else:
                    self._outputs_from(step, step_loc)
                self.found.append(step_loc)
            elif isinstance(step, SwitchStep):
                for case, body in step.cases.items():
                    self._block(body, step_loc + ("cases", case), last, why)
                if step.default is not None:
                    self._block(step.default, step_loc + ("default",), last, why)
            elif isinstance(step, LoopStep):
                self._block(
                    step.loop.body,
                    step_loc + ("loop", "body"),
                    False,
                    "it is inside a loop body, whose every iteration needs one value from each step",
                )
            else:
                self._block(
                    step.map.body,
                    step_loc + ("map", "body"),
                    False,
                    "it is inside a map body, whose items' results are stacked into one tensor",
                )

    def _outputs_from(self, step: ModelStep, loc: tuple[object, ...]) -> None:
        written = set(step.outputs.values())
        missing = [out for out in self.pipeline.outputs if out not in written]
        if missing:
            self.report(
                ("outputs",),
                f"pipeline output(s) {missing} do not come from the streaming step {_dotted(loc)} ({step.model}):"
                " every response of a streaming pipeline carries the streaming step's outputs only",
            )

    def _fused_refusal(self, loc: tuple[object, ...], step: Optional[ModelStep]) -> None:
        """A fused pipeline streams (its last handler runs in its process); a fuse group cannot yet."""
        for g, group in enumerate(self.pipeline.fuse_groups):
            if step is not None and step.model in group.steps:
                self.report(
                    ("fuse", g, "steps"),
                    f"fuse group '{group.name}' holds the streaming step {_dotted(loc)} ({step.model}):"
                    " a fused model cannot stream yet; leave the streaming step out of the group",
                )


def _dotted(loc: tuple[object, ...]) -> str:
    return ".".join(str(part) for part in loc[1:]) or str(loc[0])
