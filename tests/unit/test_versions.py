"""The pure version bookkeeping of `compound update` (toolkit/repository/versions.py)."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.plan import plan_spec
from toolkit.repository.render import manifest, render_files
from toolkit.repository.versions import (
    VersionRecord,
    bootstrap,
    describe_version,
    next_version,
    rename_model,
    serving_models,
)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "update"


def rendered(tmp_path: Path, offset: float):  # type: ignore[no-untyped-def]
    folder = tmp_path / f"spec{offset}"
    folder.mkdir(parents=True)
    (folder / "handlers.py").write_text((FIXTURE / "handlers.py").read_text())
    text = (FIXTURE / "pipeline.yaml").read_text().replace("{offset: 0}", f"{{offset: {offset}}}")
    (folder / "pipeline.yaml").write_text(text)
    plan = plan_spec(folder / "pipeline.yaml")
    files = render_files(plan)
    return files, describe_version(files, manifest(plan))


def test_a_changed_parameter_changes_its_component_and_every_pipeline_using_it(tmp_path: Path) -> None:
    files, first = rendered(tmp_path, 0)
    record = bootstrap(first)
    _, same = rendered(tmp_path / "again", 0)
    assert next_version(record, same, set(files)).empty
    _, second = rendered(tmp_path, 1)
    change = next_version(record, second, {p.split("/")[0] for p in files})
    # the fuse group runs shift's handler in its own model: versioned like a component
    assert sorted(change.changed_components) == ["grouped_steps", "shift"]
    assert sorted(change.changed_pipelines) == ["chain", "fused", "grouped", "routed"]
    assert change.version.components["grouped_steps"]["model"] == "grouped_steps.v2"
    assert change.version.components["shift"]["model"] == "shift.v2"
    assert change.version.components["double"]["model"] == "double"  # unchanged: the same model
    assert change.version.pipelines["chain"]["folder"] == "chain.v2"


def test_renamed_folders_call_the_version_s_models(tmp_path: Path) -> None:
    files, _ = rendered(tmp_path, 0)
    chain = {k[len("chain/") :]: v for k, v in files.items() if k.startswith("chain/")}
    out = rename_model(chain, "chain.v2", {"shift": "shift.v2"})
    config = out["config.pbtxt"].decode()
    assert 'name: "chain.v2"' in config and 'model_name: "shift.v2"' in config and 'model_name: "double"' in config
    routed = {k[len("routed/") :]: v for k, v in files.items() if k.startswith("routed/")}
    program = json.loads(rename_model(routed, "routed.v2", {"shift": "shift.v2"})["1/program.json"])
    assert "shift.v2" in json.dumps(program) and '"shift"' not in json.dumps(program)


def test_the_record_round_trips_and_names_what_a_restart_loads(tmp_path: Path) -> None:
    files, first = rendered(tmp_path, 0)
    record = bootstrap(first)
    _, second = rendered(tmp_path, 1)
    change = next_version(record, second, {p.split("/")[0] for p in files})
    record.versions[2] = change.version
    record.canary = {"from": 1, "to": 2, "percent": 20, "shadow": False, "pipelines": ["chain"]}
    again = VersionRecord.from_json(record.to_json())
    assert again.to_json() == record.to_json()
    assert {"shift", "shift.v2", "chain", "chain.v1", "chain.v2"} <= set(serving_models(record.to_json()))
