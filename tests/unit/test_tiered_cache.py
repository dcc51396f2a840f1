"""templates/cache.py, the tiered cache every generated model runs its cached components through:
keys, the entry layout, the LRU, batches computed only where they miss, and a real Redis shared by
two caches, killed and brought back."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np
import pytest

from toolkit.targets.redis import RedisServer

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "cache.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compound_cache_under_test", TEMPLATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cache = _load()
SETTINGS = {"identity": "enc-v1", "memory_bytes": 1 << 20, "redis": False, "ttl_s": 60.0}


class Encoder:
    """Counts the rows it computes; the answer depends on the text only."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, inputs: dict[str, np.ndarray], rows: int) -> list[tuple[str, np.ndarray]]:
        self.rows.append(rows)
        lengths = np.array([[float(len(t))] for t in inputs["text"][:, 0]], dtype=np.float32)
        labels = np.array([[t.upper()] for t in inputs["text"][:, 0]], dtype=object)
        return [("vector", np.hstack([lengths, lengths * 2])), ("label", labels)]


def texts(*items: str) -> dict[str, np.ndarray]:
    return {"text": np.array([[t.encode()] for t in items], dtype=object)}


def as_dict(outputs: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return dict(outputs)


def test_keys_follow_the_row_and_the_component() -> None:
    a = cache.row_keys("enc-v1", texts("x", "y", "x"), 3)
    assert a[0] == a[2] and a[0] != a[1]
    assert cache.row_keys("enc-v2", texts("x"), 1)[0] != a[0]  # a changed component: other keys
    ints = {"ids": np.array([[1, 2]], dtype=np.int64)}
    assert cache.row_keys("m", ints, 1) != cache.row_keys("m", {"ids": ints["ids"].astype(np.int32)}, 1)
    assert cache.row_keys("m", ints, 1) != cache.row_keys("m", {"other": ints["ids"]}, 1)
    # b"ab" + b"c" and b"a" + b"bc" are different rows
    pair = {"t": np.array([[b"ab", b"c"], [b"a", b"bc"]], dtype=object)}
    first, second = cache.row_keys("m", pair, 2)
    assert first != second


def test_entries_round_trip_and_refuse_anything_else() -> None:
    row = {
        "vector": np.arange(6, dtype=np.float32).reshape(2, 3),
        "ids": np.array([7, -1], dtype=np.int64),
        "label": np.array([b"caf\xc3\xa9", b""], dtype=object),
    }
    back = cache.decode_row(cache.encode_row(row))
    assert list(back) == ["vector", "ids", "label"]
    for name, array in row.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert back[name].tolist() == array.tolist()
    with pytest.raises(ValueError):
        cache.decode_row(b"\x80\x04pickle")
    with pytest.raises(ValueError):
        cache.decode_row(cache.encode_row(row)[:-3])


def test_the_memory_tier_evicts_the_least_recently_used_and_expires() -> None:
    row = {"v": np.zeros(100, dtype=np.float32)}  # 400 bytes + overhead
    size = cache.row_bytes(row)
    tier = cache.MemoryTier(capacity_bytes=3 * size, ttl_s=10.0)
    for key in (b"a", b"b", b"c"):
        tier.put(key, row, now=0.0)
    assert tier.get(b"a", now=1.0) is not None  # a is now the most recent
    tier.put(b"d", row, now=1.0)
    assert tier.get(b"b", now=1.0) is None and tier.get(b"a", now=1.0) is not None
    assert tier.used <= tier.capacity
    assert tier.get(b"a", now=20.0) is None  # past its TTL
    assert tier.put(b"huge", {"v": np.zeros(10_000, dtype=np.float32)}, now=0.0) == 0


def test_a_batch_computes_each_missing_row_once_and_answers_as_the_handler_would() -> None:
    encoder = Encoder()
    tiered = cache.TieredCache("encode", SETTINGS)
    batch = texts("alpha", "beta", "alpha", "gamma")
    first = as_dict(tiered.run(batch, 4, encoder))
    assert encoder.rows == [3]  # alpha once
    expected = as_dict(Encoder()(batch, 4))
    for name in expected:
        assert first[name].tolist() == expected[name].tolist() and first[name].dtype == expected[name].dtype
    second = as_dict(tiered.run(texts("gamma", "delta", "beta"), 3, encoder))
    assert encoder.rows == [3, 1]  # only delta was new
    assert second["label"][:, 0].tolist() == [b"GAMMA", b"DELTA", b"BETA"]
    totals = tiered.metrics.totals
    assert totals[("compound_cache_hits_total", "memory")] == 2
    assert totals[("compound_cache_misses_total", "memory")] == 5


def test_rows_of_different_shapes_are_computed_together() -> None:
    """Variable dims: cached rows that cannot share one array with computed ones."""

    def ragged(inputs: dict[str, np.ndarray], rows: int) -> list[tuple[str, np.ndarray]]:
        width = int(inputs["n"].max())
        return [("y", np.ones((rows, width), dtype=np.float32))]

    tiered = cache.TieredCache("ragged", SETTINGS)
    tiered.run({"n": np.array([[2]], dtype=np.int64)}, 1, ragged)
    out = as_dict(tiered.run({"n": np.array([[2], [3]], dtype=np.int64)}, 2, ragged))
    assert out["y"].shape == (2, 3)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path_factory.mktemp("redis")) as server:
        yield server


def test_two_caches_share_redis_and_a_changed_component_does_not_read_old_entries(redis_server: RedisServer) -> None:
    settings = {**SETTINGS, "redis": True, "identity": f"enc-{time.monotonic_ns()}"}
    one, other = Encoder(), Encoder()
    server_a = cache.TieredCache("encode", settings, redis_url=redis_server.url)
    server_b = cache.TieredCache("encode", settings, redis_url=redis_server.url)
    batch = texts("shared one", "shared two")
    a = as_dict(server_a.run(batch, 2, one))
    b = as_dict(server_b.run(batch, 2, other))
    assert one.rows == [2] and other.rows == []  # b answered from Redis
    assert b["vector"].tolist() == a["vector"].tolist() and b["label"].tolist() == [[b"SHARED ONE"], [b"SHARED TWO"]]
    assert server_b.metrics.totals[("compound_cache_hits_total", "redis")] == 2
    changed = cache.TieredCache(
        "encode", {**settings, "identity": settings["identity"] + "-v2"}, redis_url=redis_server.url
    )
    fresh = Encoder()
    changed.run(batch, 2, fresh)
    assert fresh.rows == [2]


def test_a_killed_redis_never_fails_a_call_and_is_used_again_once_back(tmp_path: Path) -> None:
    redis = RedisServer(workdir=tmp_path).start()
    try:
        settings = {**SETTINGS, "redis": True, "memory_bytes": 0, "identity": "outage"}
        logged: list[str] = []
        tiered = cache.TieredCache("encode", settings, redis_url=redis.url, log=logged.append)
        encoder = Encoder()
        tiered.run(texts("kept"), 1, encoder)
        redis.kill()
        for i in range(5):
            out = as_dict(tiered.run(texts("kept", f"new {i}"), 2, encoder))
            assert out["label"][:, 0].tolist() == [b"KEPT", f"NEW {i}".encode()]
        assert tiered.metrics.totals[("compound_cache_errors_total", "redis")] >= 1
        assert any("failed" in line for line in logged)
        redis = RedisServer(port=redis.port, workdir=tmp_path).start()  # an empty Redis, same address
        deadline = time.monotonic() + 2 * cache.MAX_BACKOFF_S
        hits_before = tiered.metrics.totals[("compound_cache_hits_total", "redis")]
        while time.monotonic() < deadline:
            tiered.run(texts("after"), 1, encoder)
            if tiered.metrics.totals[("compound_cache_hits_total", "redis")] > hits_before:
                break
            time.sleep(0.2)
        assert tiered.metrics.totals[("compound_cache_hits_total", "redis")] > hits_before, logged
        assert any("answers again" in line for line in logged)
    finally:
        redis.stop()
