"""The tiered cache's columns in the load test table: parsing Triton's metrics text, diffing counters
(restarts included), and where each component's figures land (its model's row, or a row of its own)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from toolkit.observe import cachestats
from toolkit.observe.cachestats import Series, figures, fused_steps, parse_metrics
from toolkit.observe.stats import breakdown, format_table, parse_stats, rows, to_html
from toolkit.repository.manifest import Manifest


def stats_entry(name: str, requests: int, success_ns: int) -> dict[str, Any]:
    """One model's statistics, the fields the breakdown reads."""
    return {
        "name": name,
        "inference_count": requests,
        "execution_count": requests,
        "inference_stats": {"success": {"count": requests, "ns": success_ns}},
    }


def metrics(*samples: tuple[str, str, str, str, float]) -> str:
    """A metrics page as Triton serves it: its own families, then ours, in its label order."""
    lines = [
        "# HELP nv_inference_request_success Number of successful inference requests",
        "# TYPE nv_inference_request_success counter",
        'nv_inference_request_success{model="encode",version="1"} 40',
        "# HELP compound_cache_hits_total Rows answered from a cache tier, per component and tier",
        "# TYPE compound_cache_hits_total counter",
    ]
    for name, component, instance, tier, value in samples:
        lines.append(f'{name}{{component="{component}",instance="{instance}",tier="{tier}"}} {value}')
    return "\n".join(lines) + "\n"


HITS, MISSES, ERRORS, STORED, MEMORY = (
    "compound_cache_hits_total",
    "compound_cache_misses_total",
    "compound_cache_errors_total",
    "compound_cache_stored_bytes_total",
    "compound_cache_memory_bytes",
)

# the example from the brief, as the "after" page of a run that started from nothing
BRIEF = """\
compound_cache_misses_total{component="encode",instance="encode_0_0",tier="redis"} 3
compound_cache_misses_total{component="encode",instance="encode_0_0",tier="memory"} 4
compound_cache_hits_total{component="encode",instance="encode_0_0",tier="memory"} 35
compound_cache_stored_bytes_total{component="encode",instance="encode_0_0",tier="redis"} 846
compound_cache_memory_bytes{component="encode",instance="encode_0_0",tier="memory"} 1368
"""


def test_parse_keeps_only_cache_series_whatever_the_label_order() -> None:
    text = metrics((HITS, "encode", "encode_0_0", "memory", 35)) + (
        'compound_cache_misses_total{tier="redis",instance="encode_0_1",component="en\\"code"} 3.000000\n'
        "compound_cache_hits_total{broken 1\n"
        'compound_cache_memory_bytes{component="encode",instance="encode_0_0",tier="memory"} 1.368e+03 1712000000\n'
    )
    snapshot = parse_metrics(text)
    assert snapshot == {
        Series(HITS, "encode", "memory", "encode_0_0"): 35.0,
        Series(MISSES, 'en"code', "redis", "encode_0_1"): 3.0,
        Series(MEMORY, "encode", "memory", "encode_0_0"): 1368.0,
    }
    assert parse_metrics('# no cache here\nnv_gpu_utilization{gpu_uuid="x"} 0.5\n') == {}


def test_figures_of_the_brief_example() -> None:
    [f] = figures({}, parse_metrics(BRIEF), models=["encode"])
    # 39 rows asked of memory, 35 hits; the 4 misses (3 distinct rows) went to Redis, which held none
    assert (f.lookups, f.hits_memory, f.hits_redis, f.computed, f.hit_pct) == (39, 35, 0, 4, 89.7)
    assert f.memory_tier and f.redis_tier and f.step_of is None
    assert (f.stored_bytes_redis, f.memory_bytes, f.redis_errors) == (846, 1368, 0)


def test_a_component_that_is_a_model_and_a_fused_step_gets_a_row_for_each() -> None:
    page = metrics(
        (HITS, "encode", "encode_0_0", "memory", 5),
        (MISSES, "encode", "encode_0_0", "memory", 1),
        (HITS, "encode", "retrieve_0_0", "memory", 2),
        (MISSES, "encode", "retrieve_0_0", "memory", 2),
    )
    rows = figures({}, parse_metrics(page), models=["encode", "retrieve", "classify"])
    assert [(f.label, f.hits_memory, f.computed) for f in rows] == [
        ("encode", 5, 1),
        ("encode (step in retrieve)", 2, 2),
    ]


def test_counters_are_summed_over_instances_and_a_restart_never_goes_negative() -> None:
    before = parse_metrics(
        metrics(
            (HITS, "encode", "encode_0_0", "memory", 100),
            (MISSES, "encode", "encode_0_0", "memory", 50),
            (HITS, "encode", "encode_0_1", "memory", 70),  # this instance is unloaded during the run
            (MISSES, "encode", "encode_0_1", "memory", 30),
        )
    )
    after = parse_metrics(
        metrics(
            (HITS, "encode", "encode_0_0", "memory", 20),  # reloaded: restarted from zero, 20 since
            (MISSES, "encode", "encode_0_0", "memory", 5),
            (HITS, "encode", "encode_0_2", "memory", 8),  # a new instance: counts from zero
            (MISSES, "encode", "encode_0_2", "memory", 2),
        )
    )
    assert cachestats.counter_delta(100, 20) == 20 and cachestats.counter_delta(None, 3) == 3
    assert cachestats.diff(before, after) == {(("encode", None), "memory"): {HITS: 28.0, MISSES: 7.0}}
    [f] = figures(before, after, models=["encode"])
    assert (f.lookups, f.hits_memory, f.computed, f.hit_pct) == (35, 28, 7, 80.0)
    assert not f.redis_tier and all(v >= 0 for v in (f.lookups, f.hits_memory, f.hits_redis, f.computed))


def test_a_redis_only_cache_counts_its_lookups_in_redis() -> None:
    after = parse_metrics(metrics((HITS, "rank", "rank_0_0", "redis", 6), (MISSES, "rank", "rank_0_0", "redis", 4)))
    [f] = figures({}, after, models=["rank"])
    assert (f.lookups, f.hits_memory, f.hits_redis, f.computed, f.hit_pct) == (10, 0, 6, 4, 60.0)
    assert cachestats.columns([f]) == [("hits_redis", "Hits redis"), ("computed", "Computed"), ("hit_pct", "Hit %")]


def test_untouched_caches_are_left_out() -> None:
    page = parse_metrics(metrics((HITS, "other", "other_0_0", "memory", 9)))
    assert figures(page, page, models=["other"]) == []


# --- in the table ---------------------------------------------------------------------------------

STATS_BEFORE = parse_stats({"model_stats": [stats_entry("classify", 0, 0), stats_entry("encode", 0, 0)]})
STATS_AFTER = parse_stats(
    {"model_stats": [stats_entry("classify", 100, 1_000_000_000), stats_entry("encode", 100, 300_000_000)]}
)


def test_a_cached_model_gets_the_columns_on_its_row_and_errors_show_when_there_were_any() -> None:
    b = breakdown("classify", STATS_BEFORE, STATS_AFTER, ["encode"])
    page = BRIEF + 'compound_cache_errors_total{component="encode",instance="encode_0_0",tier="redis"} 2\n'
    b = replace(b, cache=figures({}, parse_metrics(page), models=STATS_AFTER))
    [row] = rows(b)
    assert row["model"] == "encode (bottleneck)"
    cells = (row["hits_memory"], row["hits_redis"], row["computed"], row["hit_pct"], row["redis_errors"])
    assert cells == (35, 0, 4, 89.7, 2)
    table = format_table(b)
    assert "Hits mem  Hits redis  Computed  Hit %  Redis errors" in table
    assert "Redis errors" not in format_table(replace(b, cache=figures({}, parse_metrics(BRIEF), STATS_AFTER)))
    assert b.to_dict()["cache"][0]["hits_memory"] == 35


FUSED_PAGE = metrics(
    (HITS, "tok", "classify_fused_0_0", "memory", 60),
    (MISSES, "tok", "classify_fused_0_0", "memory", 40),
    (HITS, "topic", "classify_fused_0_0", "memory", 10),
    (MISSES, "topic", "classify_fused_0_0", "memory", 90),
    (HITS, "topic", "classify_fused_0_0", "redis", 45),
    (MISSES, "topic", "classify_fused_0_0", "redis", 45),
)
MANIFEST = {
    "models": ["verdict"],
    "pipelines": {
        "classify_fused": {"kind": "fused", "models": ["tok", "topic", "verdict"]},
        "classify": {"kind": "ensemble", "models": ["verdict"]},
    },
}


def fused_breakdown(steps: dict[str, str], models: list[str]) -> Any:
    before = parse_stats({"model_stats": [stats_entry("classify_fused", 0, 0)]})
    after = parse_stats({"model_stats": [stats_entry("classify_fused", 100, 900_000_000)]})
    b = breakdown("classify_fused", before, after, composing=[])
    return replace(b, cache=figures({}, parse_metrics(FUSED_PAGE), models=models, steps=steps))


def test_fused_steps_get_rows_of_their_own_after_their_pipeline() -> None:
    # told by the instances' names (classify_fused_0_0 is an instance of the model classify_fused)
    b = fused_breakdown({}, ["classify_fused"])
    table = format_table(b)
    lines = table.splitlines()
    assert lines[1].split() == [
        "Model",
        "Requests",
        "Executions",
        "Avg",
        "batch",
        "Max",
        "batch",
        "Cache",
        "hits",
        "Queue",
        "ms/req",
        "Compute",
        "ms/req",
        "Total",
        "ms/req",
        "Share",
        "of",
        "e2e",
        "%",
        "Hits",
        "mem",
        "Hits",
        "redis",
        "Computed",
        "Hit",
        "%",
    ]
    assert lines[3].startswith("classify_fused (bottleneck)") and lines[3].split()[-4:] == ["-", "-", "-", "-"]
    assert lines[4].split() == ["tok", "(step", "in", "classify_fused)"] + ["-"] * 9 + ["60", "0", "40", "60.0"]
    assert lines[5].split() == ["topic", "(step", "in", "classify_fused)"] + ["-"] * 9 + ["10", "45", "45", "55.0"]
    html = to_html(b)
    assert html.count("<tr>") == 4 and "<td>topic (step in classify_fused)</td>" in html
    assert [f["step_of"] for f in b.to_dict()["cache"]] == ["classify_fused", "classify_fused"]


def test_fused_steps_named_from_the_manifest_when_the_instances_do_not_tell() -> None:
    assert fused_steps(Manifest.from_dict(MANIFEST)) == {"tok": "classify_fused", "topic": "classify_fused"}
    b = fused_breakdown(fused_steps(Manifest.from_dict(MANIFEST)), [])
    assert [r["model"] for r in rows(b)] == [
        "classify_fused (bottleneck)",
        "tok (step in classify_fused)",
        "topic (step in classify_fused)",
    ]
    # and with neither, a component is just its name
    assert [r["model"] for r in rows(fused_breakdown({}, []))][1:] == ["tok", "topic"]


def test_without_cache_metrics_the_table_is_unchanged() -> None:
    plain = breakdown("classify", STATS_BEFORE, STATS_AFTER, ["encode"])
    page = parse_metrics(metrics())  # Triton's own families only
    cached = replace(plain, cache=figures(page, page, models=STATS_AFTER))
    assert cached.cache == []
    assert format_table(cached) == format_table(plain) and to_html(cached) == to_html(plain)
    assert rows(cached) == rows(plain) and list(rows(plain)[0]) == [
        "model",
        "requests",
        "executions",
        "avg_batch",
        "max_batch",
        "cache_hits",
        "queue_ms",
        "compute_ms",
        "latency_ms",
        "share_pct",
    ]


# --- finding the endpoint -------------------------------------------------------------------------


def test_scrape_of_an_unreachable_endpoint_is_none() -> None:
    from toolkit.core.system import free_port

    assert cachestats.scrape(None) is None
    assert cachestats.scrape(f"127.0.0.1:{free_port()}", timeout=0.5) is None


def test_metrics_url_from_the_recorded_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.cli.loadtest import DEFAULT_METRICS_URL, cache_source
    from toolkit.targets.state import DeploymentState, save_state

    monkeypatch.setenv("COMPOUND_STATE_DIR", str(tmp_path / "state"))
    assert cache_source(None, "http", None) == (DEFAULT_METRICS_URL, {})
    assert cache_source("10.0.0.5:8000", "http", None) == (None, {})
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / "compound.json").write_text(json.dumps(MANIFEST))
    save_state(DeploymentState("d", "local", str(repository), "0.0.0.0", 9000, 9001, 9002, "log"))
    steps = {"tok": "classify_fused", "topic": "classify_fused"}
    assert cache_source("127.0.0.1:9000", "http", None) == ("http://0.0.0.0:9002/metrics", steps)
    assert cache_source("grpc://localhost:9001", "grpc", "http://m:1/metrics") == ("http://m:1/metrics", steps)
    assert cache_source("127.0.0.1:9001", "http", None) == (None, {})  # not this deployment's HTTP port
