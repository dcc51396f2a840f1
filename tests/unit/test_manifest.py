"""compound.json through its one reader and writer: what render writes reads back the same, a broken
file is a clear error naming it, and the views the runtime, deploy and the load test ask for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.core.errors import CompoundError
from toolkit.plan import plan_spec
from toolkit.repository.manifest import FILE, Manifest
from toolkit.repository.render import manifest, render_files

ROOT = Path(__file__).resolve().parents[2]


def test_what_render_writes_reads_back_unchanged(tmp_path: Path) -> None:
    files = render_files(plan_spec(ROOT / "examples" / "cache" / "pipeline.yaml"))
    written = json.loads(files[FILE])
    (tmp_path / FILE).write_bytes(files[FILE])
    read = Manifest.read(tmp_path)
    assert read.to_dict() == written
    assert read.write(tmp_path) == tmp_path / FILE
    assert json.loads((tmp_path / FILE).read_text()) == written


def test_fused_models_are_fused_pipelines_then_fuse_groups() -> None:
    m = Manifest.from_dict(
        {
            "models": ["verdict"],
            "pipelines": {
                "b_fused": {"kind": "fused", "models": ["tok", "verdict"]},
                "a": {"kind": "ensemble", "models": ["verdict", "g"]},
            },
            "fused_groups": {"g": {"pipeline": "a", "models": ["x", "y"]}},
            "autoscale": {"verdict": {"min": 0, "max": 2, "idle_s": 5}},
            "tiered_cache": {"tok": {"memory_mb": 1.0, "redis": True, "ttl_s": 9.0}},
        }
    )
    assert m.fused_models == {"b_fused": ["tok", "verdict"], "g": ["x", "y"]}
    assert m.on_demand_models == ["verdict"]
    assert m.redis_cached_models == ["tok"]


def test_renamed_replaces_components_by_their_models_everywhere() -> None:
    plan = plan_spec(ROOT / "examples" / "textdemo" / "pipeline.yaml")
    before = manifest(plan)
    component = before.models[0]
    after = before.renamed({component: f"{component}.v2"})
    assert f"{component}.v2" in after.models and component not in after.models
    assert all(component not in p.models for p in after.pipelines.values())
    assert all(component not in edge for edge in after.edges)
    assert set(after.threads) == {f"{component}.v2" if m == component else m for m in before.threads}
    assert after.deployment == before.deployment and after.device == before.device


def test_a_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CompoundError, match="has no compound.json"):
        Manifest.read(tmp_path)
    assert Manifest.read(tmp_path, missing_ok=True) == Manifest()
    (tmp_path / FILE).write_text("{not json")
    with pytest.raises(CompoundError, match="compound.json is unreadable"):
        Manifest.read(tmp_path)
    (tmp_path / FILE).write_text(json.dumps({"pipelines": {"p": {"models": []}}}))
    with pytest.raises(CompoundError, match=r"compound.json is malformed: KeyError: 'kind'"):
        Manifest.read(tmp_path)
    (tmp_path / FILE).write_text(json.dumps({"device": "tpu"}))
    with pytest.raises(CompoundError, match="neither cpu nor gpu"):
        Manifest.read(tmp_path)
    assert Manifest.find(tmp_path) is None
