"""Partial fusion (`fuse: [{name, steps, instances}]`): each group of a static pipeline's steps becomes
one fused model that the ensemble calls as one step; every misuse is a located error naming the group."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from toolkit.cli.main import cli
from toolkit.core.errors import SpecError
from toolkit.plan import plan_spec
from toolkit.repository.render import render_files

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tune"


def spec_with(tmp_path: Path, fuse: object, pipeline: str = "fan_partial", steps: object = None) -> Path:
    shutil.copy(FIXTURE / "handlers.py", tmp_path / "handlers.py")
    data = yaml.safe_load((FIXTURE / "pipeline.yaml").read_text())
    data["pipelines"][pipeline]["fuse"] = fuse
    if steps is not None:
        data["pipelines"][pipeline]["steps"] = steps
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        plan_spec(path)
    return [str(p) for p in caught.value.problems]


def test_a_group_becomes_one_fused_model_called_as_one_ensemble_step() -> None:
    plan = plan_spec(FIXTURE / "pipeline.yaml")
    p = plan.pipelines["fan_partial"]
    assert p.kind == "ensemble"
    assert list(p.groups) == ["fan_light"]
    group = p.groups["fan_light"]
    assert group.kind == "fused" and group.models == ["branch_a", "join"]
    assert group.instances is not None and group.instances.count == 2
    assert list(group.spec.inputs) == ["h", "b"] and group.spec.outputs == ["y"]
    assert [s.model for s in p.served_steps] == ["encode", "branch_b", "fan_light"]
    assert p.direct_models == ["encode", "branch_b"]
    # the unfused pipeline still deploys branch_a and join, so they stay models of their own
    assert plan.deployed_models == ["branch_a", "branch_b", "encode", "join"]

    files = render_files(plan)
    ensemble = files["fan_partial/config.pbtxt"].decode()
    assert 'model_name: "fan_light"' in ensemble and 'model_name: "join"' not in ensemble
    assert "fuse group 'fan_light' (steps branch_a, join fused)" in ensemble
    group_config = files["fan_light/config.pbtxt"].decode()
    assert "count: 2" in group_config and 'name: "fan_light"' in group_config
    program = json.loads(files["fan_light/1/program.json"])
    assert [s["model"] for s in program["body"]["steps"]] == ["branch_a", "join"]
    assert all(s["inline"] for s in program["body"]["steps"])
    assert "fan_light/1/branch_a/handlers.py" in files
    manifest = json.loads(files["compound.json"])
    assert manifest["fused_groups"] == {"fan_light": {"pipeline": "fan_partial", "models": ["branch_a", "join"]}}
    assert ["fan_light", "branch_b"] not in manifest["edges"] and ["branch_b", "fan_light"] in manifest["edges"]


def test_members_used_only_in_groups_are_not_deployed(tmp_path: Path) -> None:
    path = spec_with(tmp_path, [{"name": "g", "steps": ["branch_a", "join"]}])
    data = yaml.safe_load(path.read_text())
    del data["pipelines"]["fan"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = plan_spec(path)
    assert plan.deployed_models == ["branch_b", "encode"]
    files = render_files(plan)
    assert "join/config.pbtxt" not in files and "g/config.pbtxt" in files
    # the group's instances default to its busiest member's count
    assert plan.pipelines["fan_partial"].groups["g"].instances.count == 1


@pytest.mark.parametrize(
    ("fuse", "expected"),
    [
        ([{"name": "g", "steps": ["branch_a", "nope"]}], "fuse group 'g': 'nope' is not a step of this pipeline"),
        ([{"name": "g", "steps": ["encode", "join"]}], "fuse group 'g' is not contiguous: step 1 (branch_a) runs"),
        ([{"name": "g", "steps": ["branch_a", "branch_a"]}], "step 1 (branch_a) is named twice"),
        (
            [{"name": "g", "steps": ["branch_a", "join"]}, {"name": "h", "steps": ["join", "branch_b"]}],
            "fuse group 'h': step 3 (join) is already in fuse group 'g'",
        ),
        ([{"name": "encode", "steps": ["branch_a", "join"]}], "fuse group 'encode' has the same name as a model"),
        ([{"name": "fan", "steps": ["branch_a", "join"]}], "fuse group 'fan' has the same name as a pipeline"),
        ([{"name": "g", "steps": ["join"]}], "List should have at least 2 items"),
        ("maybe", "Input should be a valid boolean"),
    ],
)
def test_bad_groups_are_located_errors(tmp_path: Path, fuse: object, expected: str) -> None:
    found = problems(spec_with(tmp_path, fuse))
    assert any(expected in p for p in found), found
    assert all("pipeline.yaml:" in p and "fuse" in p for p in found), found


def test_two_groups_waiting_on_each_other_are_rejected(tmp_path: Path) -> None:
    # a -> b and c -> d with g1 = {a, d}, g2 = {b, c}: each group is contiguous, but g1 needs g2's d
    # input and g2 needs g1's b input, so neither could run first
    steps = [
        {"model": "encode", "inputs": {"x": "x"}, "outputs": {"h": "h"}},
        {"model": "branch_a", "inputs": {"h": "h"}, "outputs": {"a": "a"}},
        {"model": "branch_b", "inputs": {"h": "x"}, "outputs": {"b": "b"}},
        {"model": "join", "inputs": {"a": "b", "b": "b"}, "outputs": {"y": "y"}},
    ]
    data_fuse = [{"name": "g1", "steps": ["encode", "join"]}, {"name": "g2", "steps": ["branch_a", "branch_b"]}]
    path = spec_with(tmp_path, data_fuse, steps=steps)
    data = yaml.safe_load(path.read_text())
    data["pipelines"]["fan_partial"]["outputs"] = ["y", "a"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    found = problems(path)
    assert any("fuse groups ['g1', 'g2'] wait on each other" in p for p in found), found


def test_groups_need_a_static_pipeline(tmp_path: Path) -> None:
    steps = [
        {"model": "encode", "inputs": {"x": "x"}, "outputs": {"h": "h"}},
        {
            "loop": {
                "max_iterations": 2,
                "until": "done",
                "carry": {"h": "h"},
                "body": [{"model": "branch_a", "inputs": {"h": "h"}, "outputs": {"a": "h"}}],
            }
        },
    ]
    found = problems(spec_with(tmp_path, [{"name": "g", "steps": ["encode", "branch_a"]}], steps=steps))
    assert any("fuse groups need a static pipeline" in p for p in found), found


def test_validate_cli_names_the_group_and_exits_2(tmp_path: Path) -> None:
    path = spec_with(tmp_path, [{"name": "g", "steps": ["encode", "join"]}])
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert "fuse group 'g' is not contiguous" in result.output
    assert "Traceback" not in result.output


def test_fused_model_prefers_the_batch_sizes_all_its_members_prefer(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "handlers.py", tmp_path / "handlers.py")
    data = yaml.safe_load((FIXTURE / "pipeline.yaml").read_text())
    data["pipelines"]["fan"]["fuse"] = True
    for name, model in data["models"].items():
        model["dynamic_batching"] = {
            "max_queue_delay_us": 700 if name == "join" else 500,
            "preferred_batch_sizes": [8, 16] if name == "join" else [4, 8],
        }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = render_files(plan_spec(path))["fan/config.pbtxt"]
    text = config.decode() if isinstance(config, bytes) else config
    # 8 is the one size every member prefers
    assert "preferred_batch_size: [ 8 ]" in text and "max_queue_delay_microseconds: 700" in text
    data["models"]["join"]["dynamic_batching"]["preferred_batch_sizes"] = [16]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = render_files(plan_spec(path))["fan/config.pbtxt"]
    text = config.decode() if isinstance(config, bytes) else config
    assert "preferred_batch_size" not in text  # no size they all prefer: none
