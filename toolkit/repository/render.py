"""Templates to a Triton model repository, written atomically and checked by parsing every config.

Templates get fully resolved values (no logic beyond loops); every rendered config.pbtxt is parsed
back into Triton's ModelConfig protobuf before anything is written, so a template bug can never
leave a broken repository on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import jinja2
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from toolkit import __version__
from toolkit.core.errors import CompoundError
from toolkit.plan import DeploymentPlan, HandlerRef, ModelPlan, PipelinePlan
from toolkit.plan.cache import cache_settings
from toolkit.plan.graph import fan_out_of, model_queue_timeout, program_queue_timeout
from toolkit.plan.program import PROGRAM_FILE, called_models, compile_program, plan_instances
from toolkit.plan.streaming import max_streams
from toolkit.repository.manifest import FILE as MANIFEST_FILE
from toolkit.repository.manifest import AutoscaleBounds, CacheTiers, FusedGroup, Manifest, PipelineEntry
from toolkit.spec.schema import TensorSpec

MARKER = MANIFEST_FILE  # its presence marks a folder compound generated
COMPONENT_MODULE = "compound_component"  # templates/model.py, imported by fused runtimes
CACHE_MODULE = "compound_cache"  # templates/cache.py, beside every model that runs a cached component
METRICS_MODULE = "compound_metrics"  # templates/metrics.py, beside every Python model
STREAM_MODULE = "compound_stream"  # templates/stream.py, beside every streaming model (stream: true)
TRACING_MODULE = "compound_tracing"  # templates/tracing.py, beside every Python model (used with --otlp-endpoint)


def templates_dir() -> Path:
    """The packaged templates (non-editable installs), else the source tree's top-level folder."""
    try:
        packaged = Path(str(resources.files("toolkit.templates")))
        if (packaged / "model.py").is_file():
            return packaged
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "templates"  # toolkit/repository/ -> checkout


def pbtxt_quote(value: Any) -> str:
    """A protobuf text-format string literal (UTF-8 kept, quotes and control characters escaped)."""
    text = str(value)
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders protobuf text and YAML, not HTML
    )
    env.filters["quote"] = pbtxt_quote
    return env


@dataclass(frozen=True)
class _Tensor:
    name: str
    triton_type: str
    dims: list[int]


def _tensors(tensors: dict[str, TensorSpec]) -> list[_Tensor]:
    return [_Tensor(name, t.triton_type, list(t.dims)) for name, t in tensors.items()]


def render_files(plan: DeploymentPlan) -> dict[str, bytes]:
    """Every file of the repository, relative path -> content, in a stable order."""
    env = template_env()
    files: dict[str, bytes] = {}
    source = f"{plan.loaded.folder.name}/{plan.loaded.path.name}" if plan.loaded.folder.name else plan.loaded.path.name
    generic_model = (templates_dir() / "model.py").read_bytes()
    metrics_module = (templates_dir() / "metrics.py").read_bytes()
    tracing = (templates_dir() / "tracing.py").read_bytes()
    for name in plan.deployed_models:
        model = plan.models[name]
        config = _render_model_config(env, plan, model, source)
        files[f"{name}/config.pbtxt"] = config.encode()
        files[f"{name}/1/model.py"] = generic_model
        files[f"{name}/1/{METRICS_MODULE}.py"] = metrics_module
        files[f"{name}/1/{TRACING_MODULE}.py"] = tracing
        files.update(handler_files(model.handler, f"{name}/1"))
        if model.spec.tiered_cache is not None:
            files[f"{name}/1/{CACHE_MODULE}.py"] = (templates_dir() / "cache.py").read_bytes()
        if model.stream is not None:
            files[f"{name}/1/{STREAM_MODULE}.py"] = (templates_dir() / "stream.py").read_bytes()
    for name in sorted(plan.pipelines):
        pipeline = plan.pipelines[name]
        if pipeline.kind == "ensemble":
            files[f"{name}/config.pbtxt"] = _render_ensemble(env, plan, pipeline, source).encode()
            files[f"{name}/1/.keep"] = b""  # Triton needs a version folder, even for ensembles
            for group in pipeline.groups.values():  # fuse groups: fused models the ensemble calls
                for path, content in program_model_files(plan, group, env).items():
                    files[path] = content.encode() if isinstance(content, str) else content
        else:
            for path, content in program_model_files(plan, pipeline, env).items():
                files[path] = content.encode() if isinstance(content, str) else content
            files[f"{name}/1/{TRACING_MODULE}.py"] = tracing
    files[MANIFEST_FILE] = manifest(plan).to_json().encode()
    for path, content in files.items():
        if path.endswith("config.pbtxt"):
            _parse_config(path, content.decode())
    return dict(sorted(files.items()))


def manifest(plan: DeploymentPlan) -> Manifest:
    """What the repository holds, for deploy, the runtime, status, loadtest, update (and people) to read."""
    return Manifest(
        generator=f"compound {__version__}",
        deployment=plan.name,
        device=plan.device,
        spec=plan.loaded.path.name,
        models=list(plan.deployed_models),
        pipelines={
            name: PipelineEntry(p.kind, p.reason, list(p.models), p.streaming)
            for name, p in sorted(plan.pipelines.items())
        },
        # read by the adaptive runtime: bounds per model; min 0 models start unloaded (on demand)
        autoscale={
            name: AutoscaleBounds(m.autoscale.min, m.autoscale.max, m.autoscale.idle_s)
            for name, m in sorted(plan.models.items())
            if m.autoscale is not None and name in plan.deployed_models
        },
        threads={name: plan.models[name].threads for name in plan.deployed_models},
        edges=[(a, b) for a, b in model_edges(plan)],
        # fused models an ensemble calls as one step (`fuse: [groups]`): they compute, like fused pipelines
        fused_groups={
            name: FusedGroup(pipeline, list(group.models))
            for pipeline, p in sorted(plan.pipelines.items())
            for name, group in sorted(p.groups.items())
        },
        # read by deploy (does any component want --redis?) and the load test's cache table
        tiered_cache={
            name: CacheTiers(c.memory_mb, c.redis, c.ttl_s)
            for name, m in sorted(plan.models.items())
            if (c := m.spec.tiered_cache) is not None
        },
    )


def model_edges(plan: DeploymentPlan) -> list[list[str]]:
    """[producer, consumer] pairs of component models across pipelines: whose load follows whose
    (an ensemble's joins; an orchestrated pipeline's model steps in the order it lists them)."""
    edges: set[tuple[str, str]] = set()
    for pipeline in plan.pipelines.values():
        if pipeline.kind == "fused":
            continue
        if pipeline.steps:
            by_index = {step.index: step.model for step in pipeline.served_steps}
            for consumer, producers in pipeline.served_joins.items():
                edges.update((by_index[p], by_index[consumer]) for p in producers)
        else:
            edges.update(zip(pipeline.models, pipeline.models[1:]))
    return [list(edge) for edge in sorted(edges) if edge[0] != edge[1]]


def _render_model_config(env: jinja2.Environment, plan: DeploymentPlan, model: ModelPlan, source: str) -> str:
    spec = model.spec
    batching = spec.batching
    if spec.max_batch_size == 0:
        reason = "max_batch_size is 0"
    else:
        reason = "dynamic_batching: false in the spec"
    warm_dims = {n: [1 if d == -1 else d for d in t.dims] for n, t in spec.inputs.items()}
    warm_inputs = [_Tensor(n, spec.inputs[n].triton_type, warm_dims[n]) for n in spec.inputs]
    warmups: list[dict[str, Any]] = []
    if spec.warmup:
        # a streaming model takes one stream per request: a warmup request of one row is one stream
        sizes = [1] if spec.max_batch_size <= 1 or model.stream else [1, spec.max_batch_size]
        warmups = [{"name": f"{model.name}_warmup_batch_{b}", "batch_size": b, "inputs": warm_inputs} for b in sizes]
    parameters = [
        ("compound.handler", f"{model.handler.module}:{model.handler.cls}"),
        ("compound.handler_parameters", json.dumps(spec.parameters, sort_keys=True, ensure_ascii=False)),
        ("compound.threads", str(model.threads)),
    ]
    cache = cache_settings(model)
    if cache is not None:
        parameters.append(("compound.cache", json.dumps(cache, sort_keys=True)))
    if model.stream is not None:
        parameters.append(("compound.stream", model.stream))
        parameters.append(("compound.max_streams", str(max_streams(spec.max_batch_size))))
    return env.get_template("config.pbtxt.j2").render(
        version=__version__,
        source=source,
        line=plan.loaded.line("models", model.name),
        model=model,
        max_batch_size=spec.max_batch_size,
        inputs=_tensors(spec.inputs),
        outputs=_tensors(spec.outputs),
        batching=batching,
        queue_timeout=model_queue_timeout(plan, model.name),
        no_batching_reason=reason,
        instance_count=model.instance_count,
        autoscale=model.autoscale,
        instance_kind=model.instance_kind,
        gpus=list(model.gpus) if model.gpus else None,
        cache=spec.response_cache,
        warmups=warmups,
        parameters=parameters,
        stream=model.stream,
    )


def _render_ensemble(env: jinja2.Environment, plan: DeploymentPlan, pipeline: PipelinePlan, source: str) -> str:
    spec = pipeline.spec
    outputs = {name: pipeline.tensors[name] for name in spec.outputs}
    steps = []
    fan_out = fan_out_of(pipeline.served_joins)
    for step in pipeline.served_steps:
        producers = pipeline.served_joins.get(step.index, [])
        consumers = fan_out.get(step.index, [])
        group = pipeline.groups.get(step.model)
        where = (
            f"pipelines.{pipeline.name}.fuse group '{step.model}' (steps {', '.join(group.models)} fused)"
            if group
            else f"pipelines.{pipeline.name}.steps[{step.index}]"
        )
        notes = [f"{where}, stage {step.stage}"]
        if len(producers) > 1:
            notes.append(f"joins steps {producers}")
        if len(consumers) > 1:
            notes.append(f"fans out to steps {consumers}")
        steps.append(
            {
                "model": step.model,
                "comment": "; ".join(notes),
                "inputs": sorted(step.inputs.items()),
                "outputs": sorted(step.outputs.items()),
            }
        )
    cache = not pipeline.groups and all(plan.spec.models[m].response_cache for m in pipeline.models)
    return env.get_template("ensemble.pbtxt.j2").render(
        version=__version__,
        source=source,
        line=plan.loaded.line("pipelines", pipeline.name),
        pipeline=pipeline,
        inputs=_tensors(spec.inputs),
        outputs=_tensors(outputs),
        steps=steps,
        cache=cache,
        streaming=pipeline.streaming,
    )


def fused_preferred_sizes(batchings: list[Any], max_batch_size: int) -> list[int]:
    """A fused model's preferred batch sizes: those every batching component prefers (the merged
    batch runs through all of them), up to the model's max_batch_size; none if they do not agree."""
    if not batchings:
        return []
    common = set(batchings[0].preferred_batch_sizes)
    for batching in batchings[1:]:
        common &= set(batching.preferred_batch_sizes)
    return sorted(size for size in common if size <= max_batch_size)


def program_model_files(
    plan: DeploymentPlan, pipeline: PipelinePlan, env: jinja2.Environment
) -> dict[str, str | bytes]:
    """Repository files of one orchestrated or fused pipeline: config, the generic runtime, its
    program; a fused one also gets its handlers' code and the component wrapper they run in."""
    program = compile_program(plan, pipeline)
    instances, _ = plan_instances(plan, pipeline)
    spec = pipeline.spec
    fused = pipeline.kind == "fused"
    group = pipeline.instances
    batchings = [batching for m in pipeline.models if (batching := plan.spec.models[m].batching) is not None]
    delays = [batching.max_queue_delay_us for batching in batchings]
    config = env.get_template("orchestrator.pbtxt.j2").render(
        version=__version__,
        name=pipeline.name,
        fused=fused,
        reason=pipeline.reason,
        models=called_models(program),
        max_batch_size=pipeline.max_batch_size,
        inputs=[(n, t.triton_type, list(t.dims)) for n, t in spec.inputs.items()],
        outputs=[(n, pipeline.tensors[n].triton_type, list(pipeline.tensors[n].dims)) for n in spec.outputs],
        instance_count=instances,
        instance_kind=group.kind if group else "KIND_CPU",  # only fused pipelines carry a group
        gpus=list(group.gpus) if group and group.gpus else None,
        # fused: batch as long as the most patient component would have; orchestrators never wait
        queue_delay_us=max(delays, default=0) if fused else 0,
        preferred_batch_sizes=fused_preferred_sizes(batchings, pipeline.max_batch_size) if fused else [],
        threads=group.threads if group else None,
        timeout_ms=spec.timeout_ms,
        queue_timeout=program_queue_timeout(plan, pipeline),
        program_file=PROGRAM_FILE,
        streaming=pipeline.streaming,
    )
    runtime = env.loader.get_source(env, "orchestrator.py")[0] if env.loader is not None else None
    if runtime is None:
        raise CompoundError("internal error: the orchestrator runtime template is missing")
    files: dict[str, str | bytes] = {
        f"{pipeline.name}/config.pbtxt": config,
        f"{pipeline.name}/1/model.py": runtime,
        f"{pipeline.name}/1/{PROGRAM_FILE}": json.dumps(program, indent=1, sort_keys=True) + "\n",
        f"{pipeline.name}/1/{METRICS_MODULE}.py": (templates_dir() / "metrics.py").read_bytes(),
    }
    if fused:
        files[f"{pipeline.name}/1/{COMPONENT_MODULE}.py"] = (templates_dir() / "model.py").read_bytes()
        for model in pipeline.models:  # each in a folder of its own: two `handlers` modules never collide
            files.update(handler_files(plan.models[model].handler, f"{pipeline.name}/1/{model}"))
        if any(plan.spec.models[m].tiered_cache is not None for m in pipeline.models):
            files[f"{pipeline.name}/1/{CACHE_MODULE}.py"] = (templates_dir() / "cache.py").read_bytes()
        if pipeline.streaming:  # its last handler streams in-process, through the streaming loop
            files[f"{pipeline.name}/1/{STREAM_MODULE}.py"] = (templates_dir() / "stream.py").read_bytes()
    return files


def handler_files(handler: HandlerRef, folder: str) -> dict[str, bytes]:
    """The handler's module (or package) copied into `folder` (a model's version folder, beside
    its model.py), so the repository stands alone."""
    return {f"{folder}/{rel}": path.read_bytes() for rel, path in handler.code_files().items()}


def _parse_config(path: str, text: str) -> model_config_pb2.ModelConfig:
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise CompoundError(f"internal error: rendered {path} is not a valid Triton ModelConfig: {exc}") from None


def write_repository(files: dict[str, bytes], out_dir: str | Path) -> Path:
    """Write all files to a temporary sibling folder, then swap it into place.

    An existing folder is replaced only if compound generated it (it holds compound.json), so a
    mistyped -o never wipes a user's data.
    """
    out = Path(out_dir).resolve()
    if out.exists():
        if not out.is_dir():
            raise CompoundError(f"{out} exists and is not a folder", hint="choose another -o")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise CompoundError(
                f"{out} exists, is not empty and was not generated by compound",
                hint="choose another -o, or remove it first",
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, content in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        os.chmod(staging, 0o755)  # noqa: S103 - Triton (maybe another user in a container) reads it
        old: Optional[Path] = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def render_repository(plan: DeploymentPlan, out_dir: str | Path) -> Path:
    return write_repository(render_files(plan), out_dir)
