"""Queue timeouts (`queue_timeout_ms` on models and pipelines): rendered as Triton's default queue
policy where a model has a queue of its own, the smaller value winning, and refused with the file,
line and field where it cannot work."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Optional

import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from toolkit.cli.main import cli
from toolkit.core.errors import SpecError
from toolkit.plan import plan_spec
from toolkit.repository.render import render_files

HANDLERS = """
class Ident:
    def __init__(self, parameters, device):
        pass
    def __call__(self, **inputs):
        return {"y": inputs["x"]}
"""


def model(name: str, extra: str = "") -> str:
    return f"""
  {name}:
    handler: handlers:Ident
    inputs: {{x: {{dtype: fp32, dims: [1]}}}}
    outputs: {{y: {{dtype: fp32, dims: [1]}}}}
    dynamic_batching: {{max_queue_delay_us: 2000}}
{textwrap.indent(textwrap.dedent(extra).strip(), "    ")}"""


def pipeline(name: str, steps: list[str], extra: str = "") -> str:
    """A chain: step i reads t<i> and writes t<i+1>."""
    body = "".join(
        f"\n      - {{model: {s}, inputs: {{x: t{i}}}, outputs: {{y: t{i + 1}}}}}" for i, s in enumerate(steps)
    )
    return f"""
  {name}:
    inputs: {{t0: {{dtype: fp32, dims: [1]}}}}
    outputs: [t{len(steps)}]
{textwrap.indent(textwrap.dedent(extra).strip(), "    ")}
    steps:{body}"""


def write(folder: Path, models: list[str], pipelines: list[str]) -> Path:
    (folder / "handlers.py").write_text(HANDLERS)
    path = folder / "pipeline.yaml"
    path.write_text("name: demo\nmodels:" + "".join(models) + "\npipelines:" + "".join(pipelines) + "\n")
    return path


def policy(files: dict[str, bytes], name: str) -> Optional[model_config_pb2.ModelQueuePolicy]:
    config = text_format.Parse(files[f"{name}/config.pbtxt"].decode(), model_config_pb2.ModelConfig())
    if not config.dynamic_batching.HasField("default_queue_policy"):
        return None
    return config.dynamic_batching.default_queue_policy


def timeout_us(files: dict[str, bytes], name: str) -> Optional[int]:
    found = policy(files, name)
    return None if found is None else found.default_timeout_microseconds


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        plan_spec(path)
    return [str(p) for p in caught.value.problems]


def test_the_smaller_of_a_model_and_its_pipelines_values_wins(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        [model("a", "queue_timeout_ms: 40"), model("b", "queue_timeout_ms: 5"), model("c"), model("d")],
        [
            pipeline("p", ["a", "b", "c"], "queue_timeout_ms: 12.5"),
            pipeline("q", ["c"], "queue_timeout_ms: 30"),
            pipeline("r", ["d"]),
        ],
    )
    files = render_files(plan_spec(spec))
    assert timeout_us(files, "a") == 12_500  # the pipeline's value tightens the model's own
    assert timeout_us(files, "b") == 5_000  # the model's own, smaller, wins
    assert timeout_us(files, "c") == 12_500  # shared by p (12.5) and q (30): one queue, the smaller
    assert timeout_us(files, "d") is None  # nobody asked
    found = policy(files, "a")
    assert found is not None and found.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert found.allow_timeout_override  # a request may only shorten it (Triton takes the smaller)
    text = files["a/config.pbtxt"].decode()
    assert "Queue timeout 12.5 ms, from pipelines.p.queue_timeout_ms (12.5 ms); the smallest of it and" in text
    assert "models.a.queue_timeout_ms (40 ms)" in text
    assert "queue_policy" not in files["p/config.pbtxt"].decode()  # an ensemble has no queue of its own


def test_fused_models_and_orchestrators_get_their_pipelines_value(tmp_path: Path) -> None:
    switch = """
  s:
    inputs: {x: {dtype: fp32, dims: [1]}, route: {dtype: string, dims: [1]}}
    outputs: [y]
    queue_timeout_ms: 20
    steps:
      - switch: route
        cases:
          one: [{model: c, inputs: {x: x}, outputs: {y: y}}]
        default: [{model: d, inputs: {x: x}, outputs: {y: y}}]"""
    spec = write(
        tmp_path,
        [model("a", "queue_timeout_ms: 8"), model("b"), model("c"), model("d"), model("e"), model("f")],
        [
            pipeline("fused", ["a", "b"], "fuse: true\nqueue_timeout_ms: 25"),
            switch,
            pipeline("grouped", ["e", "f"], "fuse: [{name: ef, steps: [e, f]}]\nqueue_timeout_ms: 15"),
        ],
    )
    plan = plan_spec(spec)
    assert {n: p.kind for n, p in plan.pipelines.items()} == {
        "fused": "fused",
        "s": "orchestrator",
        "grouped": "ensemble",
    }
    files = render_files(plan)
    assert timeout_us(files, "fused") == 8_000  # one queue replaces its members': a's own 8 ms wins
    assert timeout_us(files, "s") == 20_000 and timeout_us(files, "c") == 20_000 and timeout_us(files, "d") == 20_000
    assert timeout_us(files, "ef") == 15_000  # the fuse group's model
    assert "a/config.pbtxt" not in files  # only inside the fused model


@pytest.mark.parametrize(
    ("models", "pipelines", "expected"),
    [
        (
            [
                model("a", "max_batch_size: 0\nqueue_timeout_ms: 10").replace(
                    "    dynamic_batching: {max_queue_delay_us: 2000}\n", ""
                )
            ],
            [pipeline("p", ["a"])],
            r"pipeline\.yaml:\d+ \(models\.a\.queue_timeout_ms\): model 'a': queue_timeout_ms needs Triton's dynamic"
            r" batcher .*max_batch_size is 0",
        ),
        (
            [model("a", "queue_timeout_ms: 10").replace("{max_queue_delay_us: 2000}", "false")],
            [pipeline("p", ["a"])],
            r"\(models\.a\.queue_timeout_ms\): .*dynamic_batching is false",
        ),
        (
            [model("a", "queue_timeout_ms: 2")],
            [pipeline("p", ["a"])],
            r"\(models\.a\.queue_timeout_ms\): model 'a': queue_timeout_ms 2 is not above model 'a''s"
            r" dynamic_batching\.max_queue_delay_us \(2000 µs\)",
        ),
        (
            [model("a")],
            [pipeline("p", ["a"], "queue_timeout_ms: 1.5")],
            r"\(pipelines\.p\.queue_timeout_ms\): pipeline 'p': queue_timeout_ms 1\.5 is not above model 'a''s",
        ),
        (
            [model("a", "dynamic_batching: false").replace("    dynamic_batching: {max_queue_delay_us: 2000}\n", "")],
            [pipeline("p", ["a"], "queue_timeout_ms: 10")],
            r"\(pipelines\.p\.queue_timeout_ms\): pipeline 'p': queue_timeout_ms applies to no model",
        ),
        (
            [model("a", "queue_timeout_ms: 0")],
            [pipeline("p", ["a"])],
            r"pipeline\.yaml:\d+ \(models\.a\.queue_timeout_ms\): Input should be greater than 0",
        ),
        (
            [model("a")],
            [pipeline("p", ["a"], "queue_timeout_ms: soon")],
            r"\(pipelines\.p\.queue_timeout_ms\): Input should be a valid number",
        ),
    ],
)
def test_a_timeout_that_cannot_work_is_a_located_error(
    tmp_path: Path, models: list[str], pipelines: list[str], expected: str
) -> None:
    found = problems_of(write(tmp_path, models, pipelines))
    assert any(re.search(expected, p) for p in found), found


def test_a_pipeline_value_that_misses_some_components_warns(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        [
            model("a"),
            model("b", "dynamic_batching: false").replace("    dynamic_batching: {max_queue_delay_us: 2000}\n", ""),
        ],
        [pipeline("p", ["a", "b"], "queue_timeout_ms: 10")],
    )
    plan = plan_spec(spec)
    assert any("queue_timeout_ms does not reach ['b']" in w and "queue_timeout_ms)" in w for w in plan.warnings), (
        plan.warnings
    )
    files = render_files(plan)
    assert timeout_us(files, "a") == 10_000 and timeout_us(files, "b") is None


def test_validate_exits_2_naming_the_field(tmp_path: Path) -> None:
    spec = write(tmp_path, [model("a", "queue_timeout_ms: 1")], [pipeline("p", ["a"])])
    result = CliRunner().invoke(cli, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    assert "models.a.queue_timeout_ms" in result.output and "Traceback" not in result.output


def test_a_timeout_on_steps_that_run_side_by_side_warns(tmp_path: Path) -> None:
    """Triton 2.51 has crashed when a queue timeout rejected one parallel step of an ensemble while
    another still ran (docs/clients.md): worth a warning, not a refusal."""
    join = """
  j:
    handler: handlers:Ident
    inputs: {x: {dtype: fp32, dims: [1]}, z: {dtype: fp32, dims: [1]}}
    outputs: {y: {dtype: fp32, dims: [1]}}"""
    fan_out = """
  p:
    inputs: {t0: {dtype: fp32, dims: [1]}}
    outputs: [out]
    queue_timeout_ms: 10
    steps:
      - {model: a, inputs: {x: t0}, outputs: {y: t1}}
      - {model: b, inputs: {x: t1}, outputs: {y: t2}}
      - {model: c, inputs: {x: t1}, outputs: {y: t3}}
      - {model: j, inputs: {x: t2, z: t3}, outputs: {y: out}}"""
    spec = write(tmp_path, [model("a"), model("b", "queue_timeout_ms: 8"), model("c"), join], [fan_out])
    warnings = plan_spec(spec).warnings
    assert any("(pipelines.p.queue_timeout_ms)" in w and "steps ['b', 'c'] run in parallel" in w for w in warnings)
    assert any(
        "(models.b.queue_timeout_ms)" in w and "runs beside other steps in pipeline(s) ['p']" in w for w in warnings
    )
    chain = write(tmp_path, [model("a"), model("b")], [pipeline("q", ["a", "b"], "queue_timeout_ms: 10")])
    assert not any("parallel" in w for w in plan_spec(chain).warnings)
