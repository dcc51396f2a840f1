"""Every bad-input case of the spec gets a specific message naming the culprit, and exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolkit.cli.main import cli
from toolkit.core.errors import SpecError
from toolkit.plan import plan_spec

HANDLERS = """
import numpy as np

class Ident:
    def __init__(self, parameters, device):
        pass
    def __call__(self, **inputs):
        return inputs

class NotCallable:
    def __init__(self, parameters, device):
        pass
"""

MODELS = """
models:
  tok:
    handler: handlers:Ident
    inputs: {text: {dtype: string, dims: [1]}}
    outputs: {ids: {dtype: int64, dims: [8]}}
  score:
    handler: handlers:Ident
    inputs: {ids: {dtype: int64, dims: [8]}}
    outputs: {score: {dtype: fp32, dims: [1]}}
  floats:
    handler: handlers:Ident
    inputs: {ids: {dtype: fp32, dims: [8]}}
    outputs: {score: {dtype: fp32, dims: [1]}}
  wide:
    handler: handlers:Ident
    inputs: {ids: {dtype: int64, dims: [9]}}
    outputs: {score: {dtype: fp32, dims: [1]}}
  loopback:
    handler: handlers:Ident
    inputs: {score: {dtype: fp32, dims: [1]}}
    outputs: {ids: {dtype: int64, dims: [8]}}
"""

GOOD_PIPELINE = """
pipelines:
  p:
    inputs: {text: {dtype: string, dims: [1]}}
    outputs: [score]
    steps:
      - {model: tok, inputs: {text: text}, outputs: {ids: ids}}
      - {model: score, inputs: {ids: ids}, outputs: {score: score}}
"""


def write_spec(folder: Path, body: str, handlers: str = HANDLERS) -> Path:
    (folder / "handlers.py").write_text(handlers)
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        plan_spec(path)
    return [str(p) for p in caught.value.problems]


def steps_spec(steps: str, outputs: str = "[score]") -> str:
    return (
        "name: demo\n"
        + MODELS
        + f"""
pipelines:
  p:
    inputs: {{text: {{dtype: string, dims: [1]}}}}
    outputs: {outputs}
    steps:
{textwrap.indent(textwrap.dedent(steps).strip(), "      ")}
"""
    )


def test_good_spec_plans(tmp_path: Path) -> None:
    plan = plan_spec(write_spec(tmp_path, "name: demo\n" + MODELS + GOOD_PIPELINE))
    assert plan.pipelines["p"].kind == "ensemble"
    assert [s.model for s in plan.pipelines["p"].steps] == ["tok", "score"]


def test_unknown_model_in_step(tmp_path: Path) -> None:
    found = problems_of(write_spec(tmp_path, steps_spec("- {model: nope, inputs: {text: text}, outputs: {x: score}}")))
    assert any("unknown model 'nope'" in p and "pipeline.yaml:" in p and "steps.0.model" in p for p in found), found


def test_tensor_consumed_never_produced(tmp_path: Path) -> None:
    found = problems_of(
        write_spec(tmp_path, steps_spec("- {model: score, inputs: {ids: ids}, outputs: {score: score}}"))
    )
    assert any("consumes tensor 'ids'" in p and "no step produces" in p for p in found), found


def test_two_producers(tmp_path: Path) -> None:
    spec = steps_spec(
        """
        - {model: tok, inputs: {text: text}, outputs: {ids: ids}}
        - {model: tok, inputs: {text: text}, outputs: {ids: ids}}
        - {model: score, inputs: {ids: ids}, outputs: {score: score}}
        """
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert any("tensor 'ids' has two producers" in p and "step 0 (tok)" in p and "step 1 (tok)" in p for p in found), (
        found
    )


def test_cycle(tmp_path: Path) -> None:
    spec = steps_spec(
        """
        - {model: score, inputs: {ids: ids}, outputs: {score: score}}
        - {model: loopback, inputs: {score: score}, outputs: {ids: ids}}
        """
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert any("cycle" in p and "score" in p and "loopback" in p for p in found), found


def test_dtype_mismatch_on_edge(tmp_path: Path) -> None:
    spec = steps_spec(
        """
        - {model: tok, inputs: {text: text}, outputs: {ids: ids}}
        - {model: floats, inputs: {ids: ids}, outputs: {score: score}}
        """
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert any("tensor 'ids' is int64[8] but floats.ids expects fp32[8]" in p for p in found), found


def test_dims_mismatch_on_edge(tmp_path: Path) -> None:
    spec = steps_spec(
        """
        - {model: tok, inputs: {text: text}, outputs: {ids: ids}}
        - {model: wide, inputs: {ids: ids}, outputs: {score: score}}
        """
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert any("int64[8] but wide.ids expects int64[9]" in p for p in found), found


def test_unknown_dtype(tmp_path: Path) -> None:
    body = "name: demo\n" + MODELS.replace("{text: {dtype: string", "{text: {dtype: text", 1) + GOOD_PIPELINE
    found = problems_of(write_spec(tmp_path, body))
    assert any("models.tok.inputs.text.dtype" in p and "'text' is not one of" in p for p in found), found


def test_missing_handler_module(tmp_path: Path) -> None:
    body = "name: demo\n" + MODELS.replace("handlers:Ident", "missing_mod:Ident", 1) + GOOD_PIPELINE
    found = problems_of(write_spec(tmp_path, body))
    assert any("model 'tok'" in p and "handler module 'missing_mod' not found" in p for p in found), found


def test_unimportable_handler(tmp_path: Path) -> None:
    found = problems_of(
        write_spec(tmp_path, "name: demo\n" + MODELS + GOOD_PIPELINE, handlers="import no_such_package_xyz\n")
    )
    assert any("cannot import handler module 'handlers'" in p and "no_such_package_xyz" in p for p in found), found


def test_missing_handler_class(tmp_path: Path) -> None:
    body = "name: demo\n" + MODELS.replace("handlers:Ident", "handlers:Nope", 1) + GOOD_PIPELINE
    found = problems_of(write_spec(tmp_path, body))
    assert any("has no attribute 'Nope'" in p for p in found), found


def test_handler_without_call(tmp_path: Path) -> None:
    body = "name: demo\n" + MODELS.replace("handlers:Ident", "handlers:NotCallable", 1) + GOOD_PIPELINE
    found = problems_of(write_spec(tmp_path, body))
    assert any("model 'tok'" in p and "define __call__" in p for p in found), found


def test_output_never_produced(tmp_path: Path) -> None:
    spec = steps_spec("- {model: tok, inputs: {text: text}, outputs: {ids: ids}}", outputs="[ids, answer]")
    found = problems_of(write_spec(tmp_path, spec))
    assert any("output 'answer' is never produced" in p for p in found), found


def test_name_clash_model_pipeline(tmp_path: Path) -> None:
    body = "name: demo\n" + MODELS + GOOD_PIPELINE.replace("  p:", "  tok:")
    found = problems_of(write_spec(tmp_path, body))
    assert any("pipeline 'tok' has the same name as a model" in p for p in found), found


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("name: demo", "name: Demo!", "name"),
        ("  tok:\n", "  'tok model':\n", "models.tok model"),
        ("{text: {dtype: string", "{'bad name': {dtype: string", "bad name"),
    ],
)
def test_invalid_names(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    body = ("name: demo\n" + MODELS + GOOD_PIPELINE).replace(old, new, 1)
    found = problems_of(write_spec(tmp_path, body))
    assert any("invalid name" in p and fragment in p for p in found), found


def test_malformed_yaml_has_line_number(tmp_path: Path) -> None:
    found = problems_of(write_spec(tmp_path, "name: demo\nmodels:\n  tok: [unclosed\n  other: 1\n"))
    assert any("malformed YAML" in p and "pipeline.yaml:" in p for p in found), found


def test_unknown_field_named_with_line(tmp_path: Path) -> None:
    body = "name: demo\n" + MODELS.replace("  tok:\n", "  tok:\n    batchsize: 4\n", 1) + GOOD_PIPELINE
    found = problems_of(write_spec(tmp_path, body))
    assert any("pipeline.yaml:5 (models.tok.batchsize): unknown field 'batchsize'" in p for p in found), found


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    spec = steps_spec(
        """
        - {model: nope, inputs: {text: text}, outputs: {x: y}}
        - {model: score, inputs: {ids: missing}, outputs: {score: score}}
        """
    )
    found = problems_of(write_spec(tmp_path, spec))
    assert len(found) >= 2
    assert any("unknown model 'nope'" in p for p in found) and any("'missing'" in p for p in found)


def test_unconsumed_tensor_is_a_warning_and_left_out(tmp_path: Path) -> None:
    body = (
        "name: demo\n"
        + MODELS.replace(
            "outputs: {score: {dtype: fp32, dims: [1]}}\n  floats",
            "outputs: {score: {dtype: fp32, dims: [1]}, extra: {dtype: fp32, dims: [1]}}\n  floats",
            1,
        )
        + GOOD_PIPELINE.replace("outputs: {score: score}}", "outputs: {score: score, extra: spare}}")
    )
    plan = plan_spec(write_spec(tmp_path, body))
    assert any("tensor 'spare'" in w and "never consumed" in w for w in plan.warnings), plan.warnings
    assert plan.pipelines["p"].steps[1].outputs == {"score": "score"}


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = write_spec(tmp_path, "name: demo\n" + MODELS + GOOD_PIPELINE)
    result = runner.invoke(cli, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "p: ensemble" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\n" + MODELS + GOOD_PIPELINE.replace("model: score", "model: nope"))
    result = runner.invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "unknown model 'nope'" in result.output and "Traceback" not in result.output


def test_generate_writes_nothing_on_error(tmp_path: Path) -> None:
    bad = write_spec(tmp_path, "name: demo\n" + MODELS + GOOD_PIPELINE.replace("model: score", "model: nope"))
    out = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["generate", str(bad), "-o", str(out)])
    assert result.exit_code == 2
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".repo")] == []


def test_missing_spec_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "spec file not found" in result.output


def autoscaled(score_fields: str) -> str:
    models = MODELS.replace(
        "  score:\n    handler: handlers:Ident\n", "  score:\n    handler: handlers:Ident\n" + score_fields
    )
    return "name: demo\n" + models + GOOD_PIPELINE


def test_autoscale_bounds_and_starting_count(tmp_path: Path) -> None:
    plan = plan_spec(write_spec(tmp_path, autoscaled("    autoscale: {min: 2, max: 4}\n")))
    assert plan.models["score"].instance_count == 2 and plan.models["score"].autoscale is not None
    plan = plan_spec(write_spec(tmp_path, autoscaled("    autoscale: {max: 3}\n    instances: {count: 3}\n")))
    assert plan.models["score"].instance_count == 3


@pytest.mark.parametrize(
    "fields,fragment",
    [
        ("    autoscale: {min: 3, max: 2}\n", "min 3 is above max 2"),
        (
            "    autoscale: {min: 1, max: 2}\n    instances: {count: 4}\n",
            "instances.count 4 is outside autoscale's range 1..2",
        ),
        ("    autoscale: {min: 1, max: 2, idle_s: 0}\n", "idle_s"),
        ("    autoscale: {min: 1, maximum: 2}\n", "unknown field 'maximum'"),
    ],
)
def test_bad_autoscale_is_named(tmp_path: Path, fields: str, fragment: str) -> None:
    problems = problems_of(write_spec(tmp_path, autoscaled(fields)))
    assert any(fragment in p and "(models.score" in p and "Value error" not in p for p in problems), problems


def test_a_static_pipeline_reaching_an_on_demand_model_is_orchestrated(tmp_path: Path) -> None:
    plan = plan_spec(write_spec(tmp_path, autoscaled("    autoscale: {min: 0, max: 2}\n")))
    assert plan.pipelines["p"].kind == "orchestrator"
    assert "on-demand model(s) ['score']" in plan.pipelines["p"].reason
    assert "cannot wait while a composing model loads" in plan.pipelines["p"].reason


def test_an_orchestrated_static_pipeline_runs_its_steps_in_listed_order(tmp_path: Path) -> None:
    reversed_steps = GOOD_PIPELINE.replace(
        "      - {model: tok, inputs: {text: text}, outputs: {ids: ids}}\n"
        "      - {model: score, inputs: {ids: ids}, outputs: {score: score}}\n",
        "      - {model: score, inputs: {ids: ids}, outputs: {score: score}}\n"
        "      - {model: tok, inputs: {text: text}, outputs: {ids: ids}}\n",
    )
    body = autoscaled("    autoscale: {min: 0, max: 2}\n").replace(GOOD_PIPELINE, reversed_steps)
    problems = problems_of(write_spec(tmp_path, body))
    assert any("consumes tensor 'ids' before anything produces it" in p and "on-demand" in p for p in problems)


def test_the_bursty_examples_plan_with_extract_orchestrated_where_its_agent_is_on_demand() -> None:
    bursty = Path(__file__).resolve().parents[2] / "examples" / "bursty"
    assert plan_spec(bursty / "peak.yaml").pipelines["extract"].kind == "ensemble"
    plan = plan_spec(bursty / "ondemand.yaml")
    assert plan.pipelines["extract"].kind == "orchestrator" and plan.pipelines["classify"].kind == "ensemble"
    assert plan.models["extractor"].autoscale is not None and plan.models["extractor"].autoscale.min == 0
