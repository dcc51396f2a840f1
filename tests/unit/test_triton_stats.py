"""The per-model breakdown from two statistics snapshots: parsing both wire forms, deltas, shares."""

from __future__ import annotations

from typing import Any

from toolkit.client import signature_from_config
from toolkit.observe.stats import (
    breakdown,
    diff,
    format_table,
    parse_stats,
    rows,
    to_html,
)


def entry(
    name: str,
    requests: int,
    executions: int,
    inferences: int,
    queue_ns: int,
    compute_ns: int,
    success_ns: int,
    cache_hits: int = 0,
    batch: dict[int, int] | None = None,
) -> dict[str, Any]:
    """One model's stats as Triton's HTTP API returns them."""
    misses = requests - cache_hits
    return {
        "name": name,
        "version": "1",
        "inference_count": inferences,
        "execution_count": executions,
        "inference_stats": {
            "success": {"count": requests, "ns": success_ns},
            "fail": {"count": 0, "ns": 0},
            "queue": {"count": misses, "ns": queue_ns},
            "compute_input": {"count": misses, "ns": 0},
            "compute_infer": {"count": misses, "ns": compute_ns},
            "compute_output": {"count": misses, "ns": 0},
            "cache_hit": {"count": cache_hits, "ns": cache_hits * 1000},
            "cache_miss": {"count": 0, "ns": 0},
        },
        "batch_stats": [
            {"batch_size": size, "compute_infer": {"count": n, "ns": 1}} for size, n in (batch or {}).items()
        ],
    }


BEFORE = {
    "model_stats": [
        entry("classify", 10, 10, 10, 0, 0, 10_000_000),
        entry("tok", 10, 10, 10, 0, 0, 1_000_000, batch={1: 10}),
    ]
}
AFTER = {
    "model_stats": [
        # 100 more pipeline requests, 10 ms each end to end
        entry("classify", 110, 110, 110, 0, 0, 1_010_000_000),
        # 100 more tok requests in 25 executions (batch 4), 1 ms queue + 2 ms compute each
        entry("tok", 110, 35, 110, 100_000_000, 200_000_000, 301_000_000, batch={1: 10, 4: 25}),
        # slow model: 6 ms per request, batches of 2
        entry("topic", 100, 50, 100, 200_000_000, 400_000_000, 600_000_000, batch={2: 50}),
        # cached: 90 of 100 requests answered from the cache
        entry("verdict", 100, 10, 10, 1_000_000, 5_000_000, 7_000_000, cache_hits=90, batch={1: 10}),
    ]
}


def test_parse_grpc_json_with_string_ints_and_missing_zeros() -> None:
    grpc_form = {
        "model_stats": [
            {
                "name": "tok",
                "version": "1",
                "inference_count": "40",
                "execution_count": "10",
                "inference_stats": {"success": {"count": "40", "ns": "4000"}, "queue": {"count": "40"}},
                "batch_stats": [{"batch_size": "4", "compute_infer": {"count": "10", "ns": "9"}}],
            }
        ]
    }
    tok = parse_stats(grpc_form)["tok"]
    assert (tok.inference_count, tok.execution_count) == (40, 10)
    assert (tok.success.count, tok.success.ns) == (40, 4000)
    assert tok.queue.ns == 0 and tok.fail.count == 0
    assert tok.batch_executions == {4: 10}


def test_versions_of_one_model_are_summed() -> None:
    two = {"model_stats": [entry("tok", 5, 5, 5, 0, 0, 5), {**entry("tok", 3, 1, 3, 0, 0, 3), "version": "2"}]}
    tok = parse_stats(two)["tok"]
    assert tok.success.count == 8 and tok.execution_count == 6


def test_diff_counts_new_models_from_zero() -> None:
    delta = diff(parse_stats(BEFORE), parse_stats(AFTER))
    assert delta["tok"].success.count == 100 and delta["tok"].execution_count == 25
    assert delta["tok"].batch_executions == {4: 25}
    assert delta["topic"].success.count == 100


def test_breakdown_per_model_and_bottleneck() -> None:
    b = breakdown("classify", parse_stats(BEFORE), parse_stats(AFTER), ["tok", "topic", "verdict"])
    assert b.requests == 100 and b.end_to_end_ms == 10.0
    by_name = {m.model: m for m in b.models}
    assert [m.model for m in b.models] == ["tok", "topic", "verdict"]
    tok = by_name["tok"]
    assert (tok.requests, tok.executions, tok.avg_batch, tok.max_batch) == (100, 25, 4.0, 4)
    assert (tok.queue_ms, tok.compute_ms, tok.latency_ms) == (1.0, 2.0, 3.0)
    assert tok.share == 0.3
    assert by_name["topic"].latency_ms == 6.0 and by_name["topic"].avg_batch == 2.0
    verdict = by_name["verdict"]
    assert verdict.cache_hits == 90 and verdict.latency_ms == 0.07  # cache hits make it cheap per request
    assert b.bottleneck == "topic"


def test_models_not_in_the_config_are_added_when_they_took_requests() -> None:
    """An orchestrator's config names no steps: the models that took traffic are its steps."""
    b = breakdown("classify", parse_stats(BEFORE), parse_stats(AFTER), None)
    assert [m.model for m in b.models] == ["tok", "topic", "verdict"]


def test_idle_run_has_no_bottleneck() -> None:
    b = breakdown("classify", parse_stats(AFTER), parse_stats(AFTER), ["tok"])
    assert b.requests == 0 and b.bottleneck is None and b.models[0].avg_batch == 0.0
    assert "none" in format_table(b)


def test_composing_models_in_step_order() -> None:
    config = {"ensemble_scheduling": {"step": [{"model_name": "tok"}, {"model_name": "b"}, {"model_name": "tok"}]}}
    assert signature_from_config(config).composing == ("tok", "b")
    assert signature_from_config({"backend": "python"}).composing == ()


def test_renderings_mark_the_bottleneck() -> None:
    b = breakdown("classify", parse_stats(BEFORE), parse_stats(AFTER), ["tok", "topic", "verdict"])
    table = format_table(b)
    assert "topic (bottleneck)" in table and "Bottleneck: topic" in table
    assert rows(b)[0]["share_pct"] == 30.0
    html = to_html(b)
    assert html.count("<tr>") == 4 and "topic (bottleneck)" in html and "&" not in html.replace("&#", "")
    assert b.to_dict()["models"][1]["model"] == "topic"


def test_a_fused_pipeline_is_its_own_only_row() -> None:
    before = parse_stats({"model_stats": [entry("classify_fused", 0, 0, 0, 0, 0, 0)]})
    # 100 requests in 20 executions (batch 5), 2 ms queue + 6 ms compute each, 9 ms end to end
    after = parse_stats(
        {"model_stats": [entry("classify_fused", 100, 20, 100, 200_000_000, 600_000_000, 900_000_000, batch={5: 20})]}
    )
    b = breakdown("classify_fused", before, after, composing=[])
    assert [m.model for m in b.models] == ["classify_fused"] and b.bottleneck == "classify_fused"
    [row] = rows(b)
    assert row["requests"] == 100 and row["executions"] == 20 and row["avg_batch"] == 5.0
