"""Rendered repositories: parsed back into Triton's protobuf, stable, and in sync with the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from toolkit import __version__
from toolkit.cli.main import cli
from toolkit.core.errors import CompoundError
from toolkit.plan import plan_spec
from toolkit.repository.render import MARKER, pbtxt_quote, render_files, write_repository

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "textdemo" / "pipeline.yaml"


def parse(content: bytes) -> model_config_pb2.ModelConfig:
    return text_format.Parse(content.decode(), model_config_pb2.ModelConfig())


def test_committed_model_repository_is_in_sync() -> None:
    """model_repository/ must be exactly what `compound generate` writes for the bundled example."""
    expected = render_files(plan_spec(EXAMPLE))
    committed = {
        p.relative_to(ROOT / "model_repository").as_posix(): p.read_bytes()
        for p in sorted((ROOT / "model_repository").rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    stale = sorted(k for k in expected if committed.get(k) != expected[k])
    extra = sorted(set(committed) - set(expected))
    assert not stale and not extra, (
        f"model_repository/ is stale (changed: {stale}, extra: {extra}); "
        "run: compound generate examples/textdemo/pipeline.yaml -o model_repository"
    )


def test_component_config_fields() -> None:
    files = render_files(plan_spec(EXAMPLE))
    tok = parse(files["tok/config.pbtxt"])
    assert tok.backend == "python" and tok.max_batch_size == 64
    assert list(tok.dynamic_batching.preferred_batch_size) == [16, 32]
    assert tok.dynamic_batching.max_queue_delay_microseconds == 500
    assert tok.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert [w.batch_size for w in tok.model_warmup] == [1, 64]
    assert tok.model_warmup[0].inputs["text"].zero_data
    assert tok.parameters["compound.handler"].string_value == "handlers:Tokenizer"
    assert tok.parameters["compound.threads"].string_value == "1"  # instances.threads default
    verdict = parse(files["verdict/config.pbtxt"])
    assert verdict.response_cache.enable
    assert f"compound {__version__}" in files["tok/config.pbtxt"].decode()
    assert b"(models.tok, line" in files["tok/config.pbtxt"]
    assert files["tok/1/handlers.py"] == (EXAMPLE.parent / "handlers.py").read_bytes()


def test_ensemble_config_wires_fan_out_and_join() -> None:
    files = render_files(plan_spec(EXAMPLE))
    classify = parse(files["classify/config.pbtxt"])
    assert classify.platform == "ensemble" and classify.max_batch_size == 64
    steps = classify.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["tok", "sentiment", "topic", "verdict"]
    assert dict(steps[3].input_map) == {"score": "score", "topics": "topics"}
    assert [o.name for o in classify.output] == ["label", "confidence", "score", "topics"]
    text = files["classify/config.pbtxt"].decode()
    assert "fans out to steps [1, 2]" in text and "joins steps [1, 2]" in text
    assert not classify.HasField("response_cache")  # not every step is cacheable


def test_gpu_device_renders_kind_gpu(tmp_path: Path) -> None:
    files = render_files(plan_spec(EXAMPLE, device="gpu"))
    for model in ("tok", "sentiment", "topic", "verdict"):
        assert (
            parse(files[f"{model}/config.pbtxt"]).instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        )


def test_explicit_gpus_list(tmp_path: Path) -> None:
    spec = EXAMPLE.read_text().replace(
        "instances: {count: 1, kind: auto}", "instances: {count: 2, kind: gpu, gpus: [0, 1]}", 1
    )
    (tmp_path / "pipeline.yaml").write_text(spec)
    (tmp_path / "handlers.py").write_bytes((EXAMPLE.parent / "handlers.py").read_bytes())
    tok = parse(render_files(plan_spec(tmp_path / "pipeline.yaml"))["tok/config.pbtxt"])
    group = tok.instance_group[0]
    assert (
        group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2 and list(group.gpus) == [0, 1]
    )


def test_rendering_is_deterministic() -> None:
    assert render_files(plan_spec(EXAMPLE)) == render_files(plan_spec(EXAMPLE))


def test_quote_escapes() -> None:
    assert pbtxt_quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert pbtxt_quote("héllo") == '"héllo"'


def test_write_replaces_only_generated_folders(tmp_path: Path) -> None:
    files = render_files(plan_spec(EXAMPLE))
    out = write_repository(files, tmp_path / "repo")
    assert (out / MARKER).is_file()
    (out / "stale_model").mkdir()
    write_repository(files, out)  # regenerating replaces the whole folder
    assert not (out / "stale_model").exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    with pytest.raises(CompoundError, match="not generated by compound"):
        write_repository(files, precious)
    assert (precious / "data.txt").read_text() == "keep me"


def test_cli_generate_reports_choice(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["generate", str(EXAMPLE), "-o", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    assert "classify: ensemble (static DAG" in result.output
    assert (tmp_path / "repo" / "classify" / "config.pbtxt").is_file()


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for name, command in cli.commands.items():
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert command.help, f"command {name} has no help text"


def test_init_scaffold_validates(tmp_path: Path) -> None:
    runner = CliRunner()
    project = tmp_path / "my-project"
    assert runner.invoke(cli, ["init", str(project)]).exit_code == 0
    plan = plan_spec(project / "pipeline.yaml")
    assert plan.name == "my-project" and "analyze" in plan.pipelines
    again = runner.invoke(cli, ["init", str(project)])
    assert again.exit_code == 1 and "not empty" in again.output
