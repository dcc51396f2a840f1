"""The tiered cache on real servers and a real Redis: two servers share one Redis (one serves the
example as ensembles, the other with `retrieve` fused, so a component model and a fused step read
each other's entries), the cache counters reach Triton's metrics endpoint, and a Redis killed under
load fails no request."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import redis as redis_client
import tritonclient.grpc as grpcclient
import yaml

from tests.conftest import start_server
from tests.integration.load import Load
from toolkit.client import infer
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.local import LocalServer
from toolkit.targets.redis import RedisServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cache"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(workdir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def servers(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, LocalServer]]:
    root = tmp_path_factory.mktemp("cache")
    plain = render_repository(plan_spec(EXAMPLE / "pipeline.yaml"), root / "ensembles")
    fused_spec = root / "fused-spec"
    shutil.copytree(EXAMPLE, fused_spec)
    data = yaml.safe_load((fused_spec / "pipeline.yaml").read_text())
    data["pipelines"]["retrieve"]["fuse"] = True
    (fused_spec / "pipeline.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    fused = render_repository(plan_spec(fused_spec / "pipeline.yaml"), root / "fused")
    first = start_server(plain, root, redis.url)
    try:
        second = start_server(fused, tmp_path_factory.mktemp("cache-b"), redis.url)
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


def texts(count: int) -> np.ndarray:
    return np.array([[f"query {uuid.uuid4().hex} {i}".encode()] for i in range(count)], dtype=object)


def cache_counters(server: LocalServer) -> dict[tuple[str, str, str], float]:
    """(metric, component, tier) -> value summed over instances, from Triton's metrics endpoint."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    counters: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("compound_cache_"):
            name, rest = line.split("{", 1)
            labels = dict(part.split("=", 1) for part in rest.split("}", 1)[0].split(","))
            key = (name, labels["component"].strip('"'), labels["tier"].strip('"'))
            counters[key] = counters.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counters


def test_entries_computed_on_one_server_answer_the_other_servers_fused_pipeline(
    servers: tuple[LocalServer, LocalServer],
) -> None:
    first, second = servers
    batch = texts(6)
    computed = infer("retrieve", first.http_url, {"text": batch})  # the ensemble's encode computes
    infer("classify", first.http_url, {"text": batch})  # the same rows: memory hits on the first server
    before = cache_counters(second)
    shared = infer("retrieve", second.http_url, {"text": batch})  # the fused step finds them in Redis
    after = cache_counters(second)
    for name in ("documents", "scores"):
        assert shared[name].tolist() == computed[name].tolist()  # identical, bit for bit
    redis_hits = after.get(("compound_cache_hits_total", "encode", "redis"), 0) - before.get(
        ("compound_cache_hits_total", "encode", "redis"), 0
    )
    assert redis_hits == 6, after
    counters = cache_counters(first)
    assert counters[("compound_cache_hits_total", "encode", "memory")] >= 6
    assert counters[("compound_cache_stored_bytes_total", "encode", "redis")] > 0


def fresh_text(index: int) -> tuple[str, list[grpcclient.InferInput]]:
    """Clients alternate between the pipelines; every text is new, so every row reaches Redis."""
    data = grpcclient.InferInput("text", [1, 1], "BYTES")
    data.set_data_from_numpy(texts(1))
    return ("classify", "retrieve")[index % 2], [data]


def test_redis_killed_under_load_fails_no_request_and_is_used_again(
    servers: tuple[LocalServer, LocalServer], redis: RedisServer
) -> None:
    first, _ = servers
    with Load(first.grpc_url, 8, fresh_text) as load:
        time.sleep(1.5)
        done_before_kill = load.done
        redis.kill()
        time.sleep(3.0)
        done_while_down = load.done - done_before_kill
        redis.start()  # back on the same port, empty
        time.sleep(2.0)
    assert not load.errors, load.errors[:3]
    assert done_before_kill > 0 and done_while_down > 0
    errors = cache_counters(first).get(("compound_cache_errors_total", "encode", "redis"), 0)
    assert errors >= 1
    # once back, stores reach it again (the backoff is at most a few seconds)
    batch = texts(2)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        infer("classify", first.http_url, {"text": batch})
        if redis_client.Redis.from_url(redis.url).dbsize() > 0:
            break
        batch = texts(2)
        time.sleep(0.5)
    assert redis_client.Redis.from_url(redis.url).dbsize() > 0
    log = Path(str(first.log_path)).read_text()
    assert "Redis at" in log and "failed" in log and "answers again" in log


def test_the_load_test_table_shows_each_tier_per_component(
    servers: tuple[LocalServer, LocalServer], tmp_path: Path
) -> None:
    """Real locust on the fused server: the fused `encode` step gets a row of its own."""
    from click.testing import CliRunner

    from toolkit.cli.main import cli

    _, second = servers
    data = tmp_path / "requests.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["repeated one", "repeated two"]) + "\n")
    summary = tmp_path / "summary.json"
    args = ["retrieve", "--url", second.http_url, "--metrics-url", second.metrics_url, "--data", str(data)]
    args += ["--users", "4", "--spawn-rate", "4", "--run-time", "3s", "--json", str(summary)]
    result = CliRunner().invoke(cli, ["loadtest", *args])
    assert result.exit_code == 0, result.output
    assert "Hits mem" in result.output and "encode (step in retrieve)" in result.output, result.output
    rows = {row["component"]: row for row in json.loads(summary.read_text())["models"]["cache"]}
    assert rows["encode"]["hits_memory"] > 0 and rows["encode"]["step_of"] == "retrieve", rows
