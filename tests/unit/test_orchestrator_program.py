"""The orchestrator compiler: read resolution (who produced each tensor a step reads), concurrency
structure, control-flow nodes, the rendered files, and the instance plan (deadlock rule)."""

from __future__ import annotations

import json
import py_compile
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from toolkit.core.errors import SpecError
from toolkit.plan import DeploymentPlan, plan_spec
from toolkit.plan.graph import UNBATCHED_ORCHESTRATOR_BATCH
from toolkit.plan.program import (
    ORCHESTRATOR_INSTANCES,
    OUTER,
    called_models,
    compile_program,
    describe_program,
    plan_instances,
)
from toolkit.repository.render import program_model_files, render_files, template_env, templates_dir

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "examples" / "agents" / "pipeline.yaml"
TEXTDEMO = ROOT / "examples" / "textdemo" / "pipeline.yaml"

MODELS = """
name: t
models:
  echo:
    handler: handlers:Answer
    inputs: {query: {dtype: string, dims: [1]}}
    outputs: {answer: {dtype: string, dims: [1]}}
  route:
    handler: handlers:Route
    inputs: {query: {dtype: string, dims: [1]}}
    outputs: {route: {dtype: string, dims: [1]}}
  size:
    handler: handlers:Length
    inputs: {query: {dtype: string, dims: [1]}}
    outputs: {size: {dtype: int32, dims: [1]}}
  refiner:
    handler: handlers:Refine
    inputs: {draft: {dtype: int32, dims: [1]}, target: {dtype: int32, dims: [1]}}
    outputs: {improved: {dtype: int32, dims: [1]}, done: {dtype: bool, dims: [1]}}
  scorer:
    handler: handlers:Score
    inputs: {passage: {dtype: string, dims: [1]}}
    outputs: {score: {dtype: fp32, dims: [1]}}
  flat:
    handler: handlers:Score
    max_batch_size: 0
    inputs: {passage: {dtype: string, dims: [1]}}
    outputs: {score: {dtype: fp32, dims: [1]}}
"""


def plan_of(tmp_path: Path, pipelines: str) -> DeploymentPlan:
    shutil.copy(AGENTS.parent / "handlers.py", tmp_path / "handlers.py")
    spec = tmp_path / "spec.yaml"
    spec.write_text(MODELS + "pipelines:\n" + textwrap.indent(textwrap.dedent(pipelines), "  "))
    return plan_spec(spec)


def program_of(tmp_path: Path, pipelines: str, name: str = "p") -> dict[str, Any]:
    plan = plan_of(tmp_path, pipelines)
    return compile_program(plan, plan.pipelines[name])


def test_example_pipelines_are_orchestrators_and_textdemo_stays_ensembles() -> None:
    agents = plan_spec(AGENTS)
    assert {p.kind for p in agents.pipelines.values()} == {"orchestrator"}
    textdemo = plan_spec(TEXTDEMO)
    assert {p.kind for p in textdemo.pipelines.values()} == {"ensemble"}


def test_router_program_shape() -> None:
    plan = plan_spec(AGENTS)
    program = compile_program(plan, plan.pipelines["router"])
    assert program["batching"] is True and program["timeout_ms"] is None
    first, switch = program["body"]["steps"]
    assert first == {
        "op": "model",
        "where": "steps.0",
        "model": "route",
        "batching": True,
        "inline": False,
        "inputs": {"query": "query"},
        "outputs": {"route": "route"},
        "reads": {"query": OUTER},
        "after": [],
    }
    assert switch["op"] == "switch" and switch["on"] == "route" and switch["integer"] is False
    assert switch["reads"] == {"query": OUTER, "route": 0} and switch["after"] == [0]
    assert [case for case, _ in switch["cases"]] == ["math", "code"]
    assert switch["default"]["steps"][0]["where"] == "steps.1.default.0"
    assert program["body"]["final"] == {"route": 0, "answer": 1}
    assert called_models(program) == ["route", "math_solver", "coder", "chatter"]
    assert "switch on route" in describe_program(program)


def test_independent_steps_have_no_ordering(tmp_path: Path) -> None:
    program = program_of(
        tmp_path,
        """
        p:
          inputs: {query: {dtype: string, dims: [1]}}
          outputs: [answer, route, size]
          steps:
            - model: route
              inputs: {query: query}
              outputs: {route: route}
            - model: size
              inputs: {query: query}
              outputs: {size: size}
            - switch: route
              cases:
                x: [{model: echo, inputs: {query: query}, outputs: {answer: answer}}]
              default: [{model: echo, inputs: {query: query}, outputs: {answer: answer}}]
        """,
    )
    steps = program["body"]["steps"]
    assert [s["after"] for s in steps] == [[], [], [0]]  # route and size run concurrently


def test_loop_reads_see_the_right_version_of_a_carried_tensor(tmp_path: Path) -> None:
    program = program_of(
        tmp_path,
        """
        p:
          inputs: {start: {dtype: int32, dims: [1]}, target: {dtype: int32, dims: [1]}}
          outputs: [draft, done]
          steps:
            - loop:
                max_iterations: 3
                until: done
                carry: {draft: start}
                body:
                  - model: refiner
                    inputs: {draft: draft, target: target}
                    outputs: {improved: draft, done: first_done}
                  - model: refiner
                    inputs: {draft: draft, target: target}
                    outputs: {improved: second, done: done}
        """,
    )
    loop = program["body"]["steps"][0]
    assert loop["op"] == "loop" and loop["carry"] == {"draft": "start"} and loop["until"] == "done"
    assert loop["reads"] == {"start": OUTER, "target": OUTER}  # the carried name comes from `start`
    first, second = loop["body"]["steps"]
    assert first["reads"] == {"draft": OUTER, "target": OUTER}  # the value carried into this round
    assert second["reads"] == {"draft": 0, "target": OUTER}  # the value step 0 just produced
    assert loop["body"]["final"]["draft"] == 0
    assert set(loop["writes"]) == {"draft", "first_done", "second", "done"}


def test_map_items_and_stacking(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """
        p:
          inputs: {passages: {dtype: string, dims: [-1]}, grid: {dtype: string, dims: [3, 1]}}
          outputs: [scores, grid_scores]
          steps:
            - map:
                over: passages
                body: [{model: scorer, inputs: {passage: passages}, outputs: {score: scores}}]
            - map:
                over: grid
                body: [{model: scorer, inputs: {passage: grid}, outputs: {score: grid_scores}}]
        """,
    )
    program = compile_program(plan, plan.pipelines["p"])
    by_column, by_row = program["body"]["steps"]
    assert by_column["keep_axis"] is True and by_row["keep_axis"] is False
    assert by_column["empty"] == {"scores": [[1], "float32"]}
    assert plan.pipelines["p"].tensors["scores"].dims == [-1, 1]
    assert plan.pipelines["p"].tensors["grid_scores"].dims == [3, 1]


def test_int_switch_cases_are_normalised(tmp_path: Path) -> None:
    program = program_of(
        tmp_path,
        """
        p:
          inputs: {query: {dtype: string, dims: [1]}}
          outputs: [answer]
          steps:
            - model: size
              inputs: {query: query}
              outputs: {size: size}
            - switch: size
              cases:
                "01": [{model: echo, inputs: {query: query}, outputs: {answer: answer}}]
                "-2": [{model: echo, inputs: {query: query}, outputs: {answer: answer}}]
        """,
    )
    switch = program["body"]["steps"][1]
    assert switch["integer"] is True
    assert [case for case, _ in switch["cases"]] == ["1", "-2"]
    assert switch["default"] is None


def test_non_batching_callee_still_gets_a_batching_orchestrator(tmp_path: Path) -> None:
    """Requests that queue up must reach one execute() together (not 2 at a time, one per instance);
    the runtime sends the merged rows to the non-batching callee one row at a time."""
    plan = plan_of(
        tmp_path,
        """
        p:
          inputs: {passages: {dtype: string, dims: [-1]}}
          outputs: [scores]
          timeout_ms: 250
          steps:
            - map:
                over: passages
                body: [{model: flat, inputs: {passage: passages}, outputs: {score: scores}}]
        """,
    )
    program = compile_program(plan, plan.pipelines["p"])
    assert program["batching"] is True and program["timeout_ms"] == 250
    assert plan.pipelines["p"].max_batch_size == UNBATCHED_ORCHESTRATOR_BATCH
    assert program["body"]["steps"][0]["body"]["steps"][0]["batching"] is False


def test_rendered_files_parse_and_carry_the_runtime() -> None:
    plan = plan_spec(AGENTS)
    files = program_model_files(plan, plan.pipelines["guarded"], template_env())
    assert set(files) == {
        "guarded/config.pbtxt",
        "guarded/1/model.py",
        "guarded/1/program.json",
        "guarded/1/compound_metrics.py",
    }
    config = text_format.Parse(files["guarded/config.pbtxt"], model_config_pb2.ModelConfig())
    assert config.name == "guarded" and config.backend == "python" and config.max_batch_size == 16
    assert [i.name for i in config.input] == ["passages"] and list(config.input[0].dims) == [-1]
    assert [o.name for o in config.output] == ["scores"] and list(config.output[0].dims) == [-1, 1]
    assert config.instance_group[0].count == ORCHESTRATOR_INSTANCES
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert config.parameters["compound.program"].string_value == "program.json"
    assert "timeout" in files["guarded/config.pbtxt"]
    assert files["guarded/1/model.py"] == (templates_dir() / "orchestrator.py").read_text()
    assert json.loads(files["guarded/1/program.json"])["timeout_ms"] == 300
    all_files = render_files(plan)  # the renderer writes them for every orchestrator
    assert "router/1/program.json" in all_files and "router/1/model.py" in all_files


def test_runtime_template_compiles(tmp_path: Path) -> None:
    py_compile.compile(str(templates_dir() / "orchestrator.py"), cfile=str(tmp_path / "o.pyc"), doraise=True)


def test_program_is_deterministic() -> None:
    plan = plan_spec(AGENTS)
    first = program_model_files(plan, plan.pipelines["router"], template_env())
    second = program_model_files(plan_spec(AGENTS), plan_spec(AGENTS).pipelines["router"], template_env())
    assert first == second


def test_deadlock_rule_plans_two_orchestrator_instances_and_no_extra_callees() -> None:
    plan = plan_spec(AGENTS)
    count, callees = plan_instances(plan, plan.pipelines["router"])
    assert count == ORCHESTRATOR_INSTANCES == 2
    assert callees == {"route": 1, "math_solver": 1, "coder": 1, "chatter": 1}


@pytest.mark.parametrize("field", ["steps", "outputs"])
def test_orchestrated_spec_errors_come_from_the_planner(tmp_path: Path, field: str) -> None:
    """Validation lives in plan.py; the compiler is only ever given checked pipelines."""
    from toolkit.core.errors import SpecError

    bad = {
        "steps": """
        p:
          inputs: {query: {dtype: string, dims: [1]}}
          outputs: [answer]
          steps:
            - switch: nothing
              cases:
                a: [{model: echo, inputs: {query: query}, outputs: {answer: answer}}]
        """,
        "outputs": """
        p:
          inputs: {query: {dtype: string, dims: [1]}}
          outputs: [missing]
          steps:
            - model: route
              inputs: {query: query}
              outputs: {route: route}
            - switch: route
              cases:
                a: [{model: echo, inputs: {query: query}, outputs: {answer: answer}}]
        """,
    }[field]
    with pytest.raises(SpecError):
        plan_of(tmp_path, bad)


# --- fused pipelines (fuse: true): the same program with inline steps ------------------------------

FUSED_STATIC = """
p:
  fuse: true
  inputs: {query: {dtype: string, dims: [1]}}
  outputs: [answer, route]
  steps:
    - {model: echo, inputs: {query: query}, outputs: {answer: answer}}
    - {model: route, inputs: {query: query}, outputs: {route: route}}
"""


def test_fused_static_pipeline_inlines_every_step_and_deploys_no_component(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, FUSED_STATIC)
    pipeline = plan.pipelines["p"]
    assert pipeline.kind == "fused" and pipeline.reason.startswith("fuse: true:")
    assert pipeline.instances is not None and (pipeline.instances.kind, pipeline.instances.count) == ("KIND_CPU", 1)
    program = compile_program(plan, pipeline)
    assert all(node["inline"] for node in program["body"]["steps"])
    assert program["handlers"]["echo"] == {
        "handler": "handlers:Answer",
        "parameters": {},
        "inputs": {"query": [[1], "object"]},
        "outputs": [["answer", "object", [1]]],
        "warmup": [1, 32],
        "code": "echo",
    }
    # only the fused pipeline uses them: their handlers live inside it, not as models of their own
    assert "echo" not in plan.deployed_models and "route" not in plan.deployed_models
    assert "scorer" in plan.deployed_models  # used by no pipeline: deployed as before
    files = render_files(plan)
    assert "echo/config.pbtxt" not in files
    assert {"p/1/model.py", "p/1/program.json", "p/1/echo/handlers.py", "p/1/compound_component.py"} <= set(files)
    config = text_format.Parse(files["p/config.pbtxt"].decode(), model_config_pb2.ModelConfig())
    assert config.instance_group[0].count == 1 and config.max_batch_size == 32
    assert config.parameters["compound.threads"].string_value == "1"


def test_fused_planned_order_is_data_order_not_listed_order(tmp_path: Path) -> None:
    program = program_of(
        tmp_path,
        """
        p:
          fuse: true
          inputs: {query: {dtype: string, dims: [1]}}
          outputs: [score]
          steps:
            - {model: scorer, inputs: {passage: answer}, outputs: {score: score}}
            - {model: echo, inputs: {query: query}, outputs: {answer: answer}}
        """,
    )
    assert [node["model"] for node in program["body"]["steps"]] == ["echo", "scorer"]
    assert program["body"]["steps"][1]["reads"] == {"answer": 0}


def test_fused_instances_default_to_the_busiest_component_and_follow_gpu(tmp_path: Path) -> None:
    shutil.copy(AGENTS.parent / "handlers.py", tmp_path / "handlers.py")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        MODELS.replace(
            "  route:\n    handler: handlers:Route\n",
            "  route:\n    handler: handlers:Route\n    instances: {count: 3, kind: gpu}\n",
        )
        + "pipelines:\n"
        + textwrap.indent(textwrap.dedent(FUSED_STATIC), "  ")
    )
    group = plan_spec(spec).pipelines["p"].instances
    assert group is not None and (group.kind, group.count) == ("KIND_GPU", 3)
    declared = FUSED_STATIC.replace("  fuse: true\n", "  fuse: true\n  instances: {count: 2, kind: cpu, threads: 3}\n")
    group = plan_of(tmp_path, declared).pipelines["p"].instances
    assert group is not None and (group.kind, group.count, group.threads) == ("KIND_CPU", 2, 3)
    on_gpu = FUSED_STATIC.replace("  fuse: true\n", "  fuse: true\n  instances: {count: 1, kind: auto, gpus: [1]}\n")
    shutil.copy(AGENTS.parent / "handlers.py", tmp_path / "handlers.py")
    (tmp_path / "spec.yaml").write_text(MODELS + "pipelines:\n" + textwrap.indent(textwrap.dedent(on_gpu), "  "))
    files = render_files(plan_spec(tmp_path / "spec.yaml", "gpu"))
    config = text_format.Parse(files["p/config.pbtxt"].decode(), model_config_pb2.ModelConfig())
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(config.instance_group[0].gpus) == [1]


def test_fused_control_flow_and_mixed_batching_are_allowed(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """
        p:
          fuse: true
          timeout_ms: 50
          inputs: {query: {dtype: string, dims: [1]}}
          outputs: [answer, score]
          steps:
            - {model: route, inputs: {query: query}, outputs: {route: route}}
            - switch: route
              cases:
                math: [{model: echo, inputs: {query: query}, outputs: {answer: answer}}]
              default: [{model: echo, inputs: {query: query}, outputs: {answer: answer}}]
            - {model: flat, inputs: {passage: query}, outputs: {score: score}}
        """,
    )
    pipeline = plan.pipelines["p"]
    assert pipeline.kind == "fused" and "control flow (switch)" in pipeline.reason
    assert pipeline.max_batch_size == 0  # a non-batching component makes the fused model take one row
    assert not plan.warnings
    program = compile_program(plan, pipeline)
    assert program["timeout_ms"] == 50 and program["handlers"]["flat"]["warmup"] == [1]


def test_instances_on_a_pipeline_that_is_not_fused_is_a_warning(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, FUSED_STATIC.replace("  fuse: true\n", "  instances: {count: 2}\n"))
    assert plan.pipelines["p"].kind == "ensemble"
    assert any("instances applies to fused pipelines only" in w for w in plan.warnings)


BRANCH_CHAIN = """
p:
  inputs: {query: {dtype: string, dims: [1]}}
  outputs: [answer]
  steps:
    - {model: route, inputs: {query: query}, outputs: {route: route}}
    - switch: route
      cases:
        math:
          - {model: echo, inputs: {query: query}, outputs: {answer: draft}}
          - {model: route, inputs: {query: draft}, outputs: {route: kind}}
          - {model: echo, inputs: {query: kind}, outputs: {answer: answer}}
      default:
        - {model: echo, inputs: {query: query}, outputs: {answer: answer}}
"""


def test_switch_branches_need_to_agree_only_on_what_is_read_after(tmp_path: Path) -> None:
    """A three-step branch (with intermediates of its own) beside a one-step default validates; only
    the tensor read after the switch is what every branch must produce."""
    program = program_of(tmp_path, BRANCH_CHAIN)
    switch = program["body"]["steps"][1]
    assert switch["writes"] == ["answer"]
    assert len(switch["cases"][0][1]["steps"]) == 3 and len(switch["default"]["steps"]) == 1


def test_reading_a_branch_only_tensor_after_the_switch_names_the_branches(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as raised:
        plan_of(tmp_path, BRANCH_CHAIN.replace("outputs: [answer]", "outputs: [answer, draft]"))
    message = str(raised.value)
    assert "output 'draft' is not produced on every path" in message
    assert "only case 'math'" in message and "not default" in message
    later = BRANCH_CHAIN + "    - {model: echo, inputs: {query: kind}, outputs: {answer: final}}\n"
    with pytest.raises(SpecError, match=r"consumes tensor 'kind', but only case 'math' .* not default"):
        plan_of(tmp_path, later.replace("outputs: [answer]", "outputs: [final]"))
