"""The pipeline spec: the user-facing contract, as typed models with YAML line numbers in every error.

Only the shape of the document is checked here; how pipelines wire models together (graph, dtypes,
handlers) is checked by :mod:`toolkit.plan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from toolkit.core.errors import Problem, SpecError
from toolkit.spec.dtypes import BY_SPEC

Dtype = Literal["bool", "uint8", "int8", "int16", "int32", "int64", "fp16", "fp32", "fp64", "string"]

DEPLOYMENT_NAME = r"^[a-z][a-z0-9_-]*$"
MODEL_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"
TENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
HANDLER_REF = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
MAX_LOOP_ITERATIONS = 1000
MAX_QUEUE_TIMEOUT_MS = 3_600_000.0  # an hour: beyond it a queue timeout protects no client

TensorName = Annotated[str, Field(pattern=TENSOR_NAME)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """A tensor's type; dims exclude the batch dimension, -1 means variable."""

    dtype: Dtype
    dims: list[int] = Field(min_length=1)

    @field_validator("dims")
    @classmethod
    def _dims_positive_or_variable(cls, dims: list[int]) -> list[int]:
        bad = [d for d in dims if d == 0 or d < -1]
        if bad:
            raise ValueError(f"dims must be positive or -1 (variable), got {dims}")
        return dims

    @property
    def triton_type(self) -> str:
        return BY_SPEC[self.dtype].config

    @property
    def v2_datatype(self) -> str:
        return BY_SPEC[self.dtype].v2

    @property
    def numpy_dtype(self) -> str:
        return BY_SPEC[self.dtype].numpy

    def compatible_with(self, other: TensorSpec) -> bool:
        """Same dtype and dims that agree wherever both are fixed."""
        if self.dtype != other.dtype or len(self.dims) != len(other.dims):
            return False
        return all(a == b or a == -1 or b == -1 for a, b in zip(self.dims, other.dims))

    def describe(self) -> str:
        return f"{self.dtype}{self.dims}"


class DynamicBatching(_Strict):
    max_queue_delay_us: int = Field(default=0, ge=0)
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)


InstanceKind = Literal["auto", "cpu", "gpu"]


class Instances(_Strict):
    count: int = Field(default=1, ge=1, le=64)
    kind: InstanceKind = "auto"
    gpus: Optional[list[Annotated[int, Field(ge=0)]]] = None
    # Native thread pools (BLAS, OpenMP, torch, tokenizers) per instance. Each instance is a process:
    # with N instances of default-sized pools on C cores, N*C threads spin for C cores. Instances,
    # not threads, scale a model, so one thread each unless a model is known to use more.
    threads: int = Field(default=1, ge=1, le=256)

    @model_validator(mode="after")
    def _gpus_only_for_gpu(self) -> Instances:
        if self.gpus is not None and self.kind == "cpu":
            raise ValueError("'gpus' can only be given with kind gpu or auto")
        return self


class Autoscale(_Strict):
    """Instances follow the load between `min` and `max` (the adaptive runtime moves them); `min: 0`
    unloads the model after `idle_s` without requests and loads it again when a request needs it."""

    min: int = Field(default=1, ge=0, le=64)
    max: int = Field(default=4, ge=1, le=64)
    idle_s: float = Field(default=60.0, gt=0)

    @property
    def on_demand(self) -> bool:
        """Starts unloaded and is unloaded when idle (`min: 0`): only an orchestrator can wait for it."""
        return self.min == 0

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Autoscale:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class CacheSpec(_Strict):
    """compound's own cache of a component's outputs, row by row: an in-process LRU (`memory_mb`) in
    front of Redis (`redis: true`, shared by every server and replica given the same `--redis`).
    Unlike Triton's response cache (`cache: true`) it also serves steps inside fused pipelines and
    orchestrators, and a batch computes only the rows it misses."""

    memory_mb: float = Field(default=256, ge=0, description="in-process tier per instance; 0: none")
    redis: bool = Field(default=False, description="also keep entries in the Redis given at deploy")
    ttl_s: float = Field(default=3600, gt=0, description="an entry is recomputed after this many seconds")

    @model_validator(mode="after")
    def _some_tier(self) -> CacheSpec:
        if self.memory_mb == 0 and not self.redis:
            raise ValueError("memory_mb 0 and redis false would cache nothing: give memory_mb or redis: true")
        return self


class ModelSpec(_Strict):
    handler: str = Field(pattern=HANDLER_REF, description="module:Class, imported from the spec's folder")
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[TensorName, TensorSpec] = Field(min_length=1)
    outputs: dict[TensorName, TensorSpec] = Field(min_length=1)
    max_batch_size: int = Field(default=32, ge=0)
    dynamic_batching: Union[DynamicBatching, bool] = True
    instances: Instances = Field(default_factory=Instances)
    cache: Union[bool, CacheSpec] = Field(
        default=False, description="true: Triton's response cache; a mapping: compound's tiered cache (CacheSpec)"
    )
    warmup: bool = True
    autoscale: Optional[Autoscale] = Field(default=None, description="absent: the fixed instances.count")
    stream: bool = Field(
        default=False,
        description="true: the handler streams (a generator, or start/step continuous batching); each request gets"
        " many responses, so the model is decoupled and may only be a pipeline's last step (docs/streaming.md)",
    )
    queue_timeout_ms: Optional[float] = Field(
        default=None,
        gt=0,
        le=MAX_QUEUE_TIMEOUT_MS,
        description="Triton rejects a request still queued after this long (needs the dynamic batcher);"
        " the smaller of this and its pipelines' value applies (toolkit.plan.graph)",
    )

    @property
    def response_cache(self) -> bool:
        """Triton's own cache of whole responses (`cache: true`)."""
        return self.cache is True

    @property
    def tiered_cache(self) -> Optional[CacheSpec]:
        """compound's row cache (`cache: {...}`), or None."""
        return self.cache if isinstance(self.cache, CacheSpec) else None

    @property
    def batching(self) -> Optional[DynamicBatching]:
        """The dynamic batcher settings, or None when the model does not batch on the server."""
        if self.max_batch_size == 0 or self.dynamic_batching is False:
            return None
        return DynamicBatching() if self.dynamic_batching is True else self.dynamic_batching

    @model_validator(mode="after")
    def _count_within_autoscale(self) -> ModelSpec:
        scale = self.autoscale
        if scale is not None and "count" in self.instances.model_fields_set:
            if not max(scale.min, 1) <= self.instances.count <= scale.max:
                raise ValueError(
                    f"instances.count {self.instances.count} is outside autoscale's range "
                    f"{max(scale.min, 1)}..{scale.max} (it is the count the model starts with)"
                )
        return self

    @property
    def starting_instances(self) -> int:
        """Instances at start: the declared count, else autoscale's lower bound (at least one)."""
        if self.autoscale is not None and "count" not in self.instances.model_fields_set:
            return max(self.autoscale.min, 1)
        return self.instances.count

    @model_validator(mode="after")
    def _preferred_within_max(self) -> ModelSpec:
        batching = self.batching
        if batching is not None:
            too_big = [b for b in batching.preferred_batch_sizes if b > self.max_batch_size]
            if too_big:
                raise ValueError(f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}")
        return self


class ModelStep(_Strict):
    """Run one model: its inputs read pipeline tensors, its outputs write pipeline tensors."""

    model: str
    inputs: dict[TensorName, TensorName] = Field(default_factory=dict)
    outputs: dict[TensorName, TensorName] = Field(default_factory=dict)


class SwitchStep(_Strict):
    """Run one branch chosen by the value of a string or int tensor (needs an orchestrator)."""

    switch: TensorName
    cases: dict[str, list[Step]] = Field(min_length=1)
    default: Optional[list[Step]] = None


class Loop(_Strict):
    max_iterations: int = Field(ge=1, le=MAX_LOOP_ITERATIONS)
    until: TensorName
    carry: dict[TensorName, TensorName] = Field(default_factory=dict)
    body: list[Step] = Field(min_length=1)


class LoopStep(_Strict):
    """Repeat a body until a bool tensor it produces is true, at most max_iterations times."""

    loop: Loop


class MapOver(_Strict):
    over: TensorName
    body: list[Step] = Field(min_length=1)


class MapStep(_Strict):
    """Run a body once per item of a tensor's first dimension, concurrently; stack the results."""

    map: MapOver


def _step_kind(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        for kind in ("model", "switch", "loop", "map"):
            if kind in value:
                return kind
        return None
    for kind, cls in (("model", ModelStep), ("switch", SwitchStep), ("loop", LoopStep), ("map", MapStep)):
        if isinstance(value, cls):
            return kind
    return None


Step = Annotated[
    Union[
        Annotated[ModelStep, Tag("model")],
        Annotated[SwitchStep, Tag("switch")],
        Annotated[LoopStep, Tag("loop")],
        Annotated[MapStep, Tag("map")],
    ],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step needs one of the keys 'model', 'switch', 'loop' or 'map'",
    ),
]
SwitchStep.model_rebuild()
Loop.model_rebuild()
MapOver.model_rebuild()


class FuseGroup(_Strict):
    """Steps of a static pipeline run in-process in ONE Python model, called by the ensemble as one
    step; the pipeline's other steps stay models of their own (with their own instances and device)."""

    name: str = Field(pattern=MODEL_NAME, description="the fused model's name (unique among models and pipelines)")
    steps: list[Annotated[str, Field(pattern=MODEL_NAME)]] = Field(
        min_length=2, description="the models of the pipeline's steps to fuse"
    )
    instances: Optional[Instances] = Field(default=None, description="default: the busiest member's count")


class PipelineSpec(_Strict):
    inputs: dict[TensorName, TensorSpec] = Field(min_length=1)
    outputs: list[TensorName] = Field(min_length=1)
    steps: list[Step] = Field(min_length=1)
    timeout_ms: Optional[int] = Field(default=None, ge=1, description="orchestrated and fused pipelines only")
    fuse: Annotated[
        Union[Annotated[bool, Tag("flag")], Annotated[list[FuseGroup], Tag("groups")]],
        Discriminator(lambda v: "groups" if isinstance(v, (list, tuple)) else "flag"),
    ] = Field(
        default=False,
        description="true: every step's handler in-process in ONE Python model (no hop between steps);"
        " a list of groups: each group's steps fused into one model, the other steps separate (static pipelines)",
    )
    instances: Optional[Instances] = Field(
        default=None, description="fused pipelines only: the fused model's instance group"
    )
    queue_timeout_ms: Optional[float] = Field(
        default=None,
        gt=0,
        le=MAX_QUEUE_TIMEOUT_MS,
        description="applies to every batching model the pipeline runs (components, fused model, orchestrator);"
        " a component's own smaller value wins (toolkit.plan.graph)",
    )

    @property
    def fused(self) -> bool:
        """The whole pipeline is one fused model (`fuse: true`)."""
        return self.fuse is True

    @property
    def fuse_groups(self) -> list[FuseGroup]:
        """Groups of steps fused into models of their own (`fuse: [...]`); empty otherwise."""
        return self.fuse if isinstance(self.fuse, list) else []


class Spec(_Strict):
    name: str = Field(pattern=DEPLOYMENT_NAME)
    models: dict[Annotated[str, Field(pattern=MODEL_NAME)], ModelSpec] = Field(min_length=1)
    pipelines: dict[Annotated[str, Field(pattern=MODEL_NAME)], PipelineSpec] = Field(min_length=1)


class LoadedSpec:
    """A validated spec with where it came from: handlers are imported relative to its folder."""

    def __init__(self, spec: Spec, path: Path, lines: dict[tuple[Any, ...], int]) -> None:
        self.spec = spec
        self.path = path
        self.folder = path.parent
        self._lines = lines

    def where(self, *loc: Any) -> str:
        """'file:line (a.b.c)' for a location in the document, using the closest known line."""
        return _where(self.path, self._lines, tuple(loc))

    def line(self, *loc: Any) -> Optional[int]:
        return self._lines.get(tuple(loc))


# --- YAML with line numbers -------------------------------------------------------------------


# Far beyond any real spec; they turn hostile or broken YAML into a located error instead of a hang
# (aliases expanding exponentially) or a RecursionError (deep nesting, an anchor inside itself).
MAX_YAML_DEPTH = 100
MAX_YAML_VALUES = 100_000


def _to_python(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    return _Converter(lines).convert(node, path)


class _Converter:
    """YAML nodes to plain data, recording each value's line; what cannot be a spec's data is a _BadNode."""

    def __init__(self, lines: dict[tuple[Any, ...], int]) -> None:
        self.lines = lines
        self.values = 0
        self.open: set[int] = set()  # the collections being converted: an alias back to one is a cycle
        self.loader = yaml.SafeLoader("")

    def convert(self, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        line = node.start_mark.line + 1
        self.lines[path] = line
        self.values += 1
        if self.values > MAX_YAML_VALUES:
            raise _BadNode(path, line, f"more than {MAX_YAML_VALUES} values (aliases expanding without end?)")
        if len(path) > MAX_YAML_DEPTH:
            raise _BadNode(path, line, f"nested deeper than {MAX_YAML_DEPTH} levels")
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path, line)
        if id(node) in self.open:
            raise _BadNode(path, line, "an alias refers to a value that contains it (recursive anchor)")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(item, path + (i,)) for i, item in enumerate(node.value)]
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _BadNode(path, key_line, "a key must be a plain name, not a list or a mapping")
                key = key_node.value
                if key in result:
                    raise _BadNode(path + (key,), key_line, "duplicate key")
                result[key] = self.convert(value_node, path + (key,))
                self.lines[path + (key,)] = key_line  # the key's line, not its value's
            return result
        finally:
            self.open.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: tuple[Any, ...], line: int) -> Any:
        try:
            return self.loader.construct_object(node)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyYAML's constructors fail in many ways on a tag its text misfits
            text = node.value if len(node.value) <= 40 else f"{node.value[:40]}..."
            kind = node.tag.rsplit(":", 1)[-1]
            raise _BadNode(path, line, f"malformed YAML: {text!r} is not a valid {kind} ({exc})") from None


class _BadNode(Exception):
    def __init__(self, path: tuple[Any, ...], line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message


def _where(source: Path, lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> str:
    probe = loc
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe)
    dotted = ".".join(str(p) for p in loc)
    prefix = f"{source}:{line}" if line else str(source)
    return f"{prefix} ({dotted})" if dotted else prefix


def _document_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Walk pydantic's error location through the document, skipping union tags it inserts."""
    result: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            result.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            result.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part in ("model", "switch", "loop", "map"):
            continue  # discriminator tag
        elif part in ("flag", "groups") and result and result[-1] == "fuse":
            continue  # fuse's tag: true/false or a list of groups
        else:
            result.append(part)
            node = None
    return tuple(result)


def load_spec(path: str | Path) -> LoadedSpec:
    """Parse and type-check a spec file; raise SpecError listing every problem with its line."""
    source = Path(path)
    if not source.is_file():
        raise SpecError(str(source), [Problem(str(source), "spec file not found")])
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(source), [Problem(str(source), f"cannot read: {exc}")]) from None
    lines: dict[tuple[Any, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = _to_python(root, (), lines) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        reason = exc.problem or exc.context or "invalid YAML"
        raise SpecError(str(source), [Problem(f"{source}{line}", f"malformed YAML: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError(str(source), [Problem(str(source), f"malformed YAML: {exc}")]) from None
    except RecursionError:  # the composer recurses once per level, before our depth check can run
        raise SpecError(str(source), [Problem(str(source), "malformed YAML: nested too deeply")]) from None
    except _BadNode as bad:
        dotted = ".".join(str(p) for p in bad.path)
        where = f"{source}:{bad.line} ({dotted})" if dotted else f"{source}:{bad.line}"
        raise SpecError(str(source), [Problem(where, bad.message)]) from None
    if not isinstance(data, dict):
        raise SpecError(
            str(source), [Problem(str(source), "the spec must be a YAML mapping with name, models, pipelines")]
        )
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _document_loc(tuple(err["loc"]), data)
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = f"unknown field '{loc[-1]}'"
            elif err["type"] == "string_pattern_mismatch":
                message = f"invalid name {err['input']!r}: must match {err['ctx']['pattern']}"
            elif err["type"] == "literal_error":
                message = f"{err['input']!r} is not one of {err['ctx']['expected']}"
            elif err["type"] == "value_error":
                message = message.removeprefix("Value error, ")
            problems.append(Problem(_where(source, lines, loc), message))
        raise SpecError(str(source), problems) from None
    return LoadedSpec(spec, source, lines)
