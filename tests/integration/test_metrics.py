"""Metrics on a real server scraped by a real Prometheus (Debian's `prometheus`).

One server runs the metrics fixture (one chain as an ensemble, fused and orchestrated; `heavy`
sleeps 20 ms per batch of at most 4 rows: the bottleneck). Prometheus scrapes it every second and
labels its series as Prometheus Operator labels a pod's, so the KEDA ScaledObject's queries and the
Grafana dashboard's panels are evaluated exactly as the Kubernetes manifests write them: the
ScaledObject's triggers must rise under load, on `heavy`, and fall back once the load stops; every
panel must find data; compound's own series (steps, pending rows, instances) must agree with
Triton's counts.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from tests.conftest import FIXTURES, start_server
from tests.integration.load import Load
from toolkit.client import load_models, model_config
from toolkit.observe.dashboard import panel_queries
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.kubernetes import KubernetesOptions, render_manifests
from toolkit.targets.local import LocalServer
from toolkit.targets.prometheus import PrometheusServer, Sample, pod_labels

NAME = "metricsdemo"
WINDOW = "10s"  # the ScaledObject's rate window (--window), short for a test: 10 scrapes
PIPELINES = ("chain", "chain_fused", "chain_bls")
CONCURRENCY = 16
LOAD_S = 14.0
FUSED_STEPS = {
    ("chain_fused", "steps.0", "prep"),
    ("chain_fused", "steps.1", "heavy"),
    ("chain_fused", "steps.2", "post"),
}
HEAVY_BOUND = {"heavy", "chain_fused", "chain_bls"}  # models whose queue grows with heavy's
BLS_STEPS = {
    ("chain_bls", "steps.0", "prep"),
    ("chain_bls", "steps.1.default.0", "heavy"),
    ("chain_bls", "steps.1.default.1", "post"),
}


@dataclass
class Run:
    """What was seen before, during and after the load."""

    server: LocalServer
    prometheus: PrometheusServer
    triggers: dict[str, str]  # ScaledObject trigger name -> its query, as rendered
    dashboard: dict[str, Any]
    before: dict[str, list[Sample]] = field(default_factory=dict)
    during: list[dict[str, list[Sample]]] = field(default_factory=list)  # one per second of load
    panels: dict[str, list[list[Sample]]] = field(default_factory=dict)  # panel title -> result per target
    after: dict[str, list[Sample]] = field(default_factory=dict)
    idle_after_s: float = 0.0
    served: int = 0
    errors: list[str] = field(default_factory=list)
    metrics_text: str = ""


def by_model(query: str) -> str:
    """A trigger's query broken down per model: the worst-model query without its max(), the sum
    per model. The text inside is the rendered query's own."""
    if query.startswith("max("):
        return re.fullmatch(r"max\((.*)\)", query, re.DOTALL).group(1)  # type: ignore[union-attr]
    assert query.startswith("sum(")
    return "sum by (model) " + query[len("sum") :]


def evaluate(prometheus: PrometheusServer, triggers: dict[str, str]) -> dict[str, list[Sample]]:
    results = {name: prometheus.query(query) for name, query in triggers.items()}
    results.update({f"{name} by model": prometheus.query(by_model(query)) for name, query in triggers.items()})
    results["compound pending"] = prometheus.query(
        'sum by (component) (compound_pending_requests{namespace="default"})'
    )
    return results


def value(samples: list[Sample]) -> float:
    """An aggregated trigger's value; KEDA reads an empty result as 0 (ignoreNullValues)."""
    assert len(samples) <= 1, samples
    return samples[0][1] if samples else 0.0


def per(samples: list[Sample], label: str) -> dict[str, float]:
    return {labels.get(label, ""): number for labels, number in samples}


def request(index: int) -> tuple[str, list[Any]]:
    text = grpcclient.InferInput("text", [1, 1], "BYTES")
    words = " ".join(["word"] * (1 + index % 4))  # few distinct inputs: `post`'s cache hits
    text.set_data_from_numpy(np.array([[words.encode()]], dtype=object))
    return PIPELINES[index % len(PIPELINES)], [text]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("metrics")
    repo = render_repository(plan_spec(FIXTURES / "metrics" / "pipeline.yaml"), root / "repo")
    files = render_manifests(
        repo, KubernetesOptions(name=NAME, image=f"compound-{NAME}:test", window=WINDOW, scrape_interval="1s")
    )
    scaled = yaml.safe_load(files["scaledobject.yaml"])
    triggers = {t["name"]: t["metadata"]["query"] for t in scaled["spec"]["triggers"]}
    dashboard = json.loads(files["grafana-dashboard.json"])
    server = start_server(repo, root)
    try:
        prometheus = PrometheusServer(
            [f"127.0.0.1:{server.endpoints.metrics_port}"], labels=pod_labels(NAME), workdir=root / "prometheus"
        ).start()
    except BaseException:
        server.stop()
        raise
    try:
        prometheus.wait_for_scrape()
        result = Run(server, prometheus, triggers, dashboard)
        result.before = evaluate(prometheus, triggers)
        with Load(server.grpc_url, CONCURRENCY, request) as load:
            started = time.monotonic()
            while time.monotonic() - started < LOAD_S:
                time.sleep(1.0)
                result.during.append(evaluate(prometheus, triggers))
            for title, queries in panel_queries(dashboard, WINDOW).items():
                result.panels[title] = [prometheus.query(q) for q in queries]
        result.served, result.errors = load.done, load.errors
        stopped = time.monotonic()
        while time.monotonic() - stopped < 60:
            time.sleep(1.0)
            result.after = evaluate(prometheus, triggers)
            if all(value(result.after[name]) == 0.0 for name in triggers) and not any(
                number for _, number in result.after["compound pending"]
            ):
                break
        result.idle_after_s = time.monotonic() - stopped
        result.metrics_text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
        yield result
    finally:
        prometheus.stop()
        server.stop()


def test_load_is_served(run: Run) -> None:
    assert run.served > 100 and not run.errors, run.errors[:3]


def test_scaledobject_triggers_rise_on_the_bottleneck_and_fall_back_when_idle(run: Run) -> None:
    threshold = {"queue-wait-us": 1000.0, "pending-requests": 1.0}
    for name, query in run.triggers.items():
        peak = max(value(sample[name]) for sample in run.during)
        assert value(run.before[name]) == 0.0, f"{name} before any load: {run.before[name]}"
        assert peak >= threshold[name], f"{name} never rose under load: {[value(s[name]) for s in run.during]}"
        # Averaged over the load, the trigger's worst model is `heavy` or a pipeline model that runs it
        # (fused) or awaits it (an orchestrator's requests queue while it waits on its callee), and
        # `heavy` stands above the cheap components beside it.
        means: dict[str, float] = {}
        for sample in run.during:
            for model, number in per(sample[f"{name} by model"], "model").items():
                means[model] = means.get(model, 0.0) + number / len(run.during)
        assert max(means, key=lambda m: means[m]) in HEAVY_BOUND, f"{name}: {means}"
        factor = 4 if name == "queue-wait-us" else 1.5  # a wait is steady; a pending count is sampled
        assert means["heavy"] >= factor * max(means.get("prep", 0.0), means.get("post", 0.0)), f"{name}: {means}"
        assert value(run.after[name]) == 0.0, f"{name} still {run.after[name]} {run.idle_after_s:.0f} s after the load"
        assert f'pod=~"{NAME}-[a-z0-9]+-[a-z0-9]+"' in query  # the pod selector matched the scraped series
    assert run.idle_after_s < 30


def test_pending_rows_per_component_rise_on_the_bottleneck_and_drain(run: Run) -> None:
    peaks: dict[str, float] = {}
    for sample in run.during:
        for component, number in per(sample["compound pending"], "component").items():
            peaks[component] = max(peaks.get(component, 0.0), number)
    assert set(peaks) == {"prep", "heavy", "post"}
    assert peaks["heavy"] >= 2 and peaks["heavy"] == max(peaks.values()), peaks
    assert all(number == 0 for _, number in run.after["compound pending"]), run.after["compound pending"]


def scraped(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """Series of one metric in Triton's exposition text."""
    found = []
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            found.append((labels, float(line.rsplit(" ", 1)[1])))
    return found


def test_every_step_of_fused_and_orchestrated_pipelines_is_counted_timed_and_sized(run: Run) -> None:
    text = run.metrics_text
    calls: dict[tuple[str, str, str], float] = {}
    seconds: dict[tuple[str, str, str], float] = {}
    rows: dict[tuple[str, str, str], float] = {}
    for target, metric in (
        (calls, "compound_step_duration_seconds_count"),
        (seconds, "compound_step_duration_seconds_sum"),
        (rows, "compound_step_rows_total"),
    ):
        for labels, number in scraped(text, metric):
            key = (labels["pipeline"], labels["step"], labels["component"])
            target[key] = target.get(key, 0.0) + number
    assert set(calls) == FUSED_STEPS | BLS_STEPS
    successes = {labels["model"]: number for labels, number in scraped(text, "nv_inference_request_success")}
    for steps in (FUSED_STEPS, BLS_STEPS):
        for key in steps:
            pipeline = key[0]
            # one row per request: every request that the pipeline answered went through every step once
            assert rows[key] == successes[pipeline], (key, rows[key], successes[pipeline])
            assert 0 < calls[key] <= rows[key]
        heavy = next(key for key in steps if key[2] == "heavy")
        assert seconds[heavy] / calls[heavy] >= 0.02  # it sleeps 20 ms per call
    fused_heavy = ("chain_fused", "steps.1", "heavy")
    assert rows[fused_heavy] / calls[fused_heavy] > 1.2  # concurrent requests merged into batches
    buckets = [labels for labels, _ in scraped(text, "compound_step_duration_seconds_bucket")]
    assert {"0.0001", "10", "+Inf"} <= {labels["le"] for labels in buckets}


def test_instances_per_component_match_the_loaded_instances(run: Run) -> None:
    instances: dict[tuple[str, str], float] = {}
    for labels, number in scraped(run.metrics_text, "compound_instances"):
        key = (labels["component"], labels["model"])
        instances[key] = instances.get(key, 0.0) + number
    fused = _instance_count(run.server.repository / "chain_fused" / "config.pbtxt")
    assert instances == {
        ("prep", "prep"): 1,
        ("heavy", "heavy"): 1,
        ("post", "post"): 1,
        ("prep", "chain_fused"): fused,
        ("heavy", "chain_fused"): fused,
        ("post", "chain_fused"): fused,
    }


def _instance_count(config: Path) -> int:
    return sum(int(n) for n in re.findall(r"count:\s*(\d+)", config.read_text()))


def test_every_dashboard_panel_finds_data(run: Run) -> None:
    panels = {panel["title"] for panel in run.dashboard["panels"]}
    assert set(run.panels) == panels and len(panels) >= 8
    for title, results in run.panels.items():
        for target, samples in enumerate(results):
            finite = [number for _, number in samples if math.isfinite(number)]
            assert finite, f"panel {title!r}, target {target}: no data ({samples})"
    hit_rate = per(run.panels["Cache hit rate"][0], "component")
    assert 0 < hit_rate["post"] <= 1
    throughput = per(run.panels["Pipeline throughput"][0], "model")
    assert set(throughput) == set(PIPELINES) and min(throughput.values()) > 0


def test_instances_follow_a_rescale(run: Run) -> None:
    """What the adaptive runtime does: a reload of `heavy` with another instance count. New
    instances start before old ones finalize, under the same instance names: the sum stays right."""

    def heavy_instances() -> float:
        text = urllib.request.urlopen(run.server.metrics_url, timeout=5).read().decode()
        return sum(n for labels, n in scraped(text, "compound_instances") if labels["model"] == "heavy")

    for count in (3, 1):
        config = model_config(run.server.http_url, "heavy")
        for group in config["instance_group"]:
            group["count"] = count
        errors = load_models(run.server.grpc_url, {"heavy": config}, run.server.api_key)
        assert errors == {"heavy": None}, errors
        deadline = time.monotonic() + 10
        while heavy_instances() != count and time.monotonic() < deadline:
            time.sleep(0.2)
        assert heavy_instances() == count
