"""The tiered cache from spec to repository to manifests: validation, what is rendered where, the
component identity that keeps old entries from answering for a changed component, and --redis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from tests.unit.test_validation import problems_of, write_spec
from toolkit.cli.main import cli
from toolkit.core.errors import CompoundError
from toolkit.plan import plan_spec
from toolkit.plan.cache import component_identity
from toolkit.repository.manifest import CacheTiers, Manifest
from toolkit.repository.render import render_repository
from toolkit.targets.kubernetes import KubernetesOptions, render_manifests
from toolkit.targets.server import redis_cached_models
from toolkit.targets.settings import check_redis_url

ROOT = Path(__file__).resolve().parents[2]
CACHE_SPEC = ROOT / "examples" / "cache" / "pipeline.yaml"

TWO_STEPS = """
models:
  tok:
    handler: handlers:Ident
    inputs: {{text: {{dtype: string, dims: [1]}}}}
    outputs: {{ids: {{dtype: int64, dims: [8]}}}}
    cache: {cache}
  score:
    handler: handlers:Ident
    inputs: {{ids: {{dtype: int64, dims: [8]}}}}
    outputs: {{score: {{dtype: fp32, dims: [1]}}}}
pipelines:
  p:
    fuse: {fuse}
    inputs: {{text: {{dtype: string, dims: [1]}}}}
    outputs: [score]
    steps:
      - model: tok
        inputs: {{text: text}}
        outputs: {{ids: ids}}
      - model: score
        inputs: {{ids: ids}}
        outputs: {{score: score}}
"""


def spec(tmp_path: Path, cache: str = "{memory_mb: 16, redis: true, ttl_s: 60}", fuse: str = "false") -> Path:
    return write_spec(tmp_path, "name: cached\n" + TWO_STEPS.format(cache=cache, fuse=fuse))


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        ("{memory_mb: 0}", "memory_mb 0 and redis false would cache nothing"),
        ("{memory_mb: -1}", "memory_mb"),
        ("{ttl_s: 0}", "ttl_s"),
        ("{redis: true, size: 3}", "size"),
    ],
)
def test_bad_cache_settings_name_the_field(tmp_path: Path, cache: str, expected: str) -> None:
    problems = problems_of(spec(tmp_path, cache))
    assert any("models.tok.cache" in p and expected in p for p in problems), problems


def test_a_cached_component_gets_its_settings_and_the_cache_runtime(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(spec(tmp_path)), tmp_path / "repo")
    config = (repo / "tok" / "config.pbtxt").read_text()
    assert 'key: "compound.cache"' in config and "response_cache" not in config
    assert (repo / "tok" / "1" / "compound_cache.py").read_bytes() == (ROOT / "templates" / "cache.py").read_bytes()
    assert not (repo / "score" / "1" / "compound_cache.py").exists()
    assert Manifest.read(repo).tiered_cache == {"tok": CacheTiers(memory_mb=16.0, redis=True, ttl_s=60.0)}
    assert redis_cached_models(repo) == ["tok"]


def test_a_fused_step_is_cached_inside_the_fused_model(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(spec(tmp_path, fuse="true")), tmp_path / "repo")
    program = json.loads((repo / "p" / "1" / "program.json").read_text())
    settings = program["handlers"]["tok"]["cache"]
    assert settings["redis"] is True and settings["memory_bytes"] == 16 * 1024 * 1024 and settings["ttl_s"] == 60.0
    assert "cache" not in program["handlers"]["score"]
    assert (repo / "p" / "1" / "compound_cache.py").is_file()


def test_true_still_means_triton_response_cache(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(spec(tmp_path, cache="true")), tmp_path / "repo")
    assert "response_cache" in (repo / "tok" / "config.pbtxt").read_text()
    assert not (repo / "tok" / "1" / "compound_cache.py").exists()
    assert not Manifest.read(repo).tiered_cache


def test_the_identity_changes_with_the_code_and_parameters_only(tmp_path: Path) -> None:
    def identity(folder: Path) -> str:
        return component_identity(plan_spec(folder / "pipeline.yaml").models["encode"])

    shutil.copytree(CACHE_SPEC.parent, tmp_path / "a")
    shutil.copytree(CACHE_SPEC.parent, tmp_path / "b")
    assert identity(tmp_path / "a") == identity(tmp_path / "b")  # where the spec lives does not matter
    handlers = tmp_path / "b" / "handlers.py"
    handlers.write_text(handlers.read_text() + "\n# a changed encoder\n")
    assert identity(tmp_path / "a") != identity(tmp_path / "b")
    spec_file = tmp_path / "a" / "pipeline.yaml"
    before = identity(tmp_path / "a")
    spec_file.write_text(spec_file.read_text().replace("layers: 8", "layers: 7"))
    assert identity(tmp_path / "a") != before
    # settings of the cache itself are not part of what the component answers
    spec_file.write_text(spec_file.read_text().replace("ttl_s: 3600", "ttl_s: 60").replace("layers: 7", "layers: 8"))
    assert identity(tmp_path / "a") == before


def test_redis_urls_are_checked() -> None:
    assert check_redis_url("redis://cache:6379/1") == "redis://cache:6379/1"
    assert check_redis_url("unix:///run/redis.sock")
    for bad in ("cache:6379", "http://cache:6379", "redis:///0"):
        with pytest.raises(CompoundError, match="--redis"):
            check_redis_url(bad)


def test_deploy_refuses_a_bad_redis_url_and_kubernetes_only_flags(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(spec(tmp_path)), tmp_path / "repo")
    runner = CliRunner()
    bad = runner.invoke(cli, ["deploy", str(repo), "--redis", "localhost:6379"])
    assert bad.exit_code == 1 and "--redis 'localhost:6379' is not a Redis URL" in bad.output, bad.output
    local = runner.invoke(cli, ["deploy", str(repo), "--redis-deployment"])
    assert local.exit_code == 1 and "--redis-deployment applies to --target kubernetes" in local.output


def test_kubernetes_renders_a_redis_beside_triton_and_points_the_pods_at_it(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(CACHE_SPEC), tmp_path / "repo")
    files = render_manifests(repo, KubernetesOptions(name="cachedemo", base_image="b", redis_deployment=True))
    docs: list[dict[str, Any]] = [
        d
        for name, text in files.items()
        if name != "kustomization.yaml" and name.endswith(".yaml")
        for d in yaml.safe_load_all(text)
        if d
    ]
    redis = [d for d in docs if d["metadata"]["name"] == "cachedemo-redis"]
    assert sorted(d["kind"] for d in redis) == ["Deployment", "Service"]
    for doc in redis:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    assert "redis.yaml" in yaml.safe_load(files["kustomization.yaml"])["resources"]
    triton = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "cachedemo")
    env = {e["name"]: e.get("value") for e in triton["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["COMPOUND_REDIS_URL"] == "redis://cachedemo-redis.default.svc:6379/0"
    args = redis[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory") + 1] == str(int(1024**3 * 0.8))

    own = render_manifests(repo, KubernetesOptions(name="cachedemo", base_image="b", redis_url="redis://r:6379/2"))
    assert "redis.yaml" not in own and "redis://r:6379/2" in own["deployment.yaml"]
    plain = render_manifests(repo, KubernetesOptions(name="cachedemo", base_image="b"))
    assert "COMPOUND_REDIS_URL" not in plain["deployment.yaml"]
