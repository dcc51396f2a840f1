"""`stream: true`: which handlers stream and how, where a streaming step may stand (each bad case named,
with file:line), and what the repository holds for a streaming model and pipeline."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from toolkit.core.errors import SpecError
from toolkit.plan import plan_spec
from toolkit.repository.render import render_files

HANDLERS = """
import numpy as np

class Prep:
    def __init__(self, parameters, device):
        pass
    def __call__(self, text):
        return {"n": np.ones((text.shape[0], 1), np.int32)}

class Gen:
    def __init__(self, parameters, device):
        pass
    def __call__(self, n):
        for i in range(int(n[0, 0])):
            yield {"tok": np.full((n.shape[0], 1), i, np.int64)}

class Steps:
    def __init__(self, parameters, device):
        pass
    def start(self, n):
        return [int(n[0, 0])]
    def step(self, states):
        return [None for _ in states]

class Plain:
    def __init__(self, parameters, device):
        pass
    def __call__(self, n):
        return {"tok": n.astype(np.int64)}

class HalfStepper:
    def __init__(self, parameters, device):
        pass
    def start(self, n):
        return n

class AsyncGen:
    def __init__(self, parameters, device):
        pass
    async def __call__(self, n):
        yield {"tok": n}
"""

MODELS = """
name: demo
models:
  prep:
    handler: handlers:Prep
    inputs: {text: {dtype: string, dims: [1]}}
    outputs: {n: {dtype: int32, dims: [1]}}
  gen:
    handler: handlers:Gen
    stream: true
    inputs: {n: {dtype: int32, dims: [1]}}
    outputs: {tok: {dtype: int64, dims: [1]}}
  steps:
    handler: handlers:Steps
    stream: true
    inputs: {n: {dtype: int32, dims: [1]}}
    outputs: {tok: {dtype: int64, dims: [1]}}
  after:
    handler: handlers:Plain
    inputs: {tok: {dtype: int64, dims: [1]}}
    outputs: {out: {dtype: int64, dims: [1]}}
  plain:
    handler: handlers:Plain
    inputs: {n: {dtype: int32, dims: [1]}}
    outputs: {tok: {dtype: int64, dims: [1]}}
"""

GOOD = """
pipelines:
  p:
    inputs: {text: {dtype: string, dims: [1]}}
    outputs: [tok]
    steps:
      - {model: prep, inputs: {text: text}, outputs: {n: n}}
      - {model: gen, inputs: {n: n}, outputs: {tok: tok}}
"""


def write_spec(folder: Path, body: str) -> Path:
    (folder / "handlers.py").write_text(HANDLERS)
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        plan_spec(path)
    return [str(p) for p in caught.value.problems]


def pipeline(steps: str, outputs: str = "[tok]", extra: str = "") -> str:
    return (
        MODELS
        + f"""
pipelines:
  p:
    inputs: {{text: {{dtype: string, dims: [1]}}}}
    outputs: {outputs}
{extra}    steps:
{textwrap.indent(textwrap.dedent(steps).strip(), "      ")}
"""
    )


def test_generator_and_stepping_handlers_plan(tmp_path: Path) -> None:
    plan = plan_spec(write_spec(tmp_path, MODELS + GOOD))
    assert plan.models["gen"].stream == "generator"
    assert plan.models["steps"].stream == "batch"
    assert plan.models["prep"].stream is None
    assert plan.pipelines["p"].streaming and plan.pipelines["p"].kind == "ensemble"
    # Triton 2.51's ensemble does not cancel its streaming step: generate says so
    assert any("pipeline 'p'" in w and "cancellation" in w for w in plan.warnings), plan.warnings


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [
        ("Plain", "is neither a generator"),
        ("HalfStepper", "defines start but not step"),
        ("AsyncGen", "async generator"),
    ],
)
def test_a_handler_that_cannot_stream_is_named(tmp_path: Path, handler: str, fragment: str) -> None:
    found = problems_of(write_spec(tmp_path, MODELS.replace("handlers:Gen", f"handlers:{handler}") + GOOD))
    assert any(
        fragment in p and f"handlers:{handler}" in p and "model 'gen'" in p and "pipeline.yaml:" in p for p in found
    ), found


def test_start_step_needs_a_batching_model(tmp_path: Path) -> None:
    body = MODELS.replace(
        "  steps:\n    handler: handlers:Steps\n    stream: true\n",
        "  steps:\n    handler: handlers:Steps\n    stream: true\n    max_batch_size: 0\n",
    )
    found = problems_of(write_spec(tmp_path, body + GOOD))
    assert any("handlers:Steps" in p and "max_batch_size" in p for p in found), found


def test_a_streaming_step_before_another_is_refused(tmp_path: Path) -> None:
    spec = pipeline(
        """
        - {model: prep, inputs: {text: text}, outputs: {n: n}}
        - {model: gen, inputs: {n: n}, outputs: {tok: tok}}
        - {model: after, inputs: {tok: tok}, outputs: {out: out}}
        """,
        outputs="[out]",
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert any(
        "step 1 (gen) streams, but step 2 (after) consumes its output 'tok'" in p and "steps.1.outputs.tok" in p
        for p in found
    ), found


def test_two_streaming_steps_cannot_join(tmp_path: Path) -> None:
    spec = pipeline(
        """
        - {model: prep, inputs: {text: text}, outputs: {n: n}}
        - {model: gen, inputs: {n: n}, outputs: {tok: a}}
        - {model: steps, inputs: {n: n}, outputs: {tok: b}}
        """,
        outputs="[a, b]",
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert any("step 1 (gen), step 2 (steps) all stream" in p and "server#7275" in p for p in found), found


def test_every_output_must_come_from_the_streaming_step(tmp_path: Path) -> None:
    spec = pipeline(
        """
        - {model: prep, inputs: {text: text}, outputs: {n: n}}
        - {model: gen, inputs: {n: n}, outputs: {tok: tok}}
        """,
        outputs="[tok, n]",
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert any("output(s) ['n'] do not come from the streaming step" in p for p in found), found


def test_streaming_inside_a_loop_body_is_refused(tmp_path: Path) -> None:
    spec = pipeline(
        """
        - {model: prep, inputs: {text: text}, outputs: {n: n}}
        - loop:
            max_iterations: 3
            until: done
            body:
              - {model: gen, inputs: {n: n}, outputs: {tok: tok}}
        """
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert any("(gen) streams but is not the pipeline's last step" in p and "loop body" in p for p in found), found


def test_streaming_not_last_in_an_orchestrator_is_refused(tmp_path: Path) -> None:
    spec = pipeline(
        """
        - {model: prep, inputs: {text: text}, outputs: {n: n}}
        - switch: text
          cases:
            a: [{model: gen, inputs: {n: n}, outputs: {tok: tok}}]
            b: [{model: plain, inputs: {n: n}, outputs: {tok: tok}}]
        - {model: after, inputs: {tok: tok}, outputs: {out: out}}
        """,
        outputs="[out]",
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert any("step 1.cases.a.0 (gen) streams but is not the pipeline's last step" in p for p in found), found


def test_a_switch_ending_in_streaming_steps_streams(tmp_path: Path) -> None:
    spec = pipeline(
        """
        - {model: prep, inputs: {text: text}, outputs: {n: n}}
        - switch: text
          cases:
            a: [{model: gen, inputs: {n: n}, outputs: {tok: tok}}]
            b: [{model: steps, inputs: {n: n}, outputs: {tok: tok}}]
          default: [{model: plain, inputs: {n: n}, outputs: {tok: tok}}]
        """
    )
    plan = plan_spec(write_spec(tmp_path, spec))
    assert plan.pipelines["p"].kind == "orchestrator" and plan.pipelines["p"].streaming


def test_a_fused_pipeline_streams_but_a_fuse_group_cannot(tmp_path: Path) -> None:
    steps = """
        - {model: prep, inputs: {text: text}, outputs: {n: n}}
        - {model: steps, inputs: {n: n}, outputs: {tok: tok}}
        """
    plan = plan_spec(write_spec(tmp_path, pipeline(steps, extra="    fuse: true\n")))
    assert plan.pipelines["p"].kind == "fused" and plan.pipelines["p"].streaming
    files = render_files(plan)
    assert "p/1/compound_stream.py" in files
    handlers = json.loads(files["p/1/program.json"])["handlers"]
    assert handlers["steps"]["stream"] == "batch" and handlers["steps"]["warmup"] == []
    assert "stream" not in handlers["prep"] and handlers["prep"]["warmup"]
    group = "    fuse: [{name: both, steps: [prep, steps]}]\n"
    found = problems_of(write_spec(tmp_path, pipeline(steps, extra=group)))
    assert any("fuse group 'both' holds the streaming step" in p for p in found), found


def test_a_streaming_model_cannot_be_cached(tmp_path: Path) -> None:
    body = MODELS.replace("    handler: handlers:Gen\n", "    handler: handlers:Gen\n    cache: true\n")
    found = problems_of(write_spec(tmp_path, body + GOOD))
    assert any("a streaming model cannot be cached" in p and "models.gen.cache" in p for p in found), found


def test_repository_of_a_streaming_pipeline(tmp_path: Path) -> None:
    spec = pipeline(
        """
        - {model: prep, inputs: {text: text}, outputs: {n: n}}
        - switch: text
          cases:
            a: [{model: gen, inputs: {n: n}, outputs: {tok: tok}}]
          default: [{model: steps, inputs: {n: n}, outputs: {tok: tok}}]
        """
    )
    spec += """
  q:
    inputs: {text: {dtype: string, dims: [1]}}
    outputs: [tok]
    steps:
      - {model: prep, inputs: {text: text}, outputs: {n: n}}
      - {model: steps, inputs: {n: n}, outputs: {tok: tok}}
"""
    files = render_files(plan_spec(write_spec(tmp_path, spec)))

    def config(name: str) -> model_config_pb2.ModelConfig:
        return text_format.Parse(files[f"{name}/config.pbtxt"].decode(), model_config_pb2.ModelConfig())

    for name in ("gen", "steps", "p", "q"):
        assert config(name).model_transaction_policy.decoupled, name
    assert not config("prep").model_transaction_policy.decoupled
    params = {k: v.string_value for k, v in config("steps").parameters.items()}
    assert params["compound.stream"] == "batch" and params["compound.max_streams"] == "32"
    assert {k: v.string_value for k, v in config("gen").parameters.items()}["compound.stream"] == "generator"
    assert [w.batch_size for w in config("steps").model_warmup] == [1]  # one stream per request
    assert "gen/1/compound_stream.py" in files and "prep/1/compound_stream.py" not in files
    pipelines = json.loads(files["compound.json"])["pipelines"]
    assert pipelines["p"]["streaming"] is True and pipelines["q"]["streaming"] is True
    program = json.loads(files["p/1/program.json"])
    assert program["streaming"] is True
    streamed = [n for n in program["body"]["steps"][1]["cases"][0][1]["steps"] if n.get("stream")]
    assert [n["model"] for n in streamed] == ["gen"]
