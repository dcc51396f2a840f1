"""A Grafana dashboard for one deployment, rendered beside its Kubernetes manifests.

Per pipeline: throughput, mean latency, failures, and the latency and batch size of every step of
fused and orchestrated pipelines (compound's own histograms: Triton sees neither). Per component:
requests waiting (Triton's queue and what orchestrators and fused pipelines wait on), mean queue
wait and compute time, loaded instances; the tiered cache's hit rate per tier. Every query selects
the deployment's pods with the same labels as the KEDA ScaledObject, so what the dashboard shows is
what the autoscaler sees. `panel_queries` expands the templating variables, for tools and tests
that evaluate the queries without Grafana.
"""

from __future__ import annotations

import json
import re
from typing import Any

from toolkit import __version__
from toolkit.repository.manifest import Manifest

RATE = "$__rate_interval"  # Grafana's own: at least four scrape intervals
SUCCESS = "nv_inference_request_success"


def _panel(index: int, title: str, unit: str, targets: list[tuple[str, str]], description: str) -> dict[str, Any]:
    width, height = 12, 8
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": (index % 2) * width, "y": (index // 2) * height, "w": width, "h": height},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _variable(name: str, label: str, values: list[str]) -> dict[str, Any]:
    """A multi-value custom variable whose "All" is the explicit alternation of its values (so a
    query stays restricted to this deployment's models, whatever else the Prometheus holds)."""
    everything = "|".join(values) or ".+"  # model names ([a-z][a-z0-9_-]*) need no escaping
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": ",".join(values),
        "multi": True,
        "includeAll": True,
        "allValue": everything,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
    }


def render_dashboard(name: str, manifest: Manifest, pods: str) -> dict[str, Any]:
    """The dashboard JSON for a deployment named `name` whose repository manifest (compound.json)
    is `manifest`; `pods` is the PromQL label matcher of its pods (namespace and pod name)."""
    pipelines = sorted(manifest.pipelines)
    components = sorted(manifest.models)
    pipe = f'{pods},model=~"$pipeline"'
    comp = f'{pods},model=~"$component"'

    def per(metric: str, selector: str, by: str = "model") -> str:
        return f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))"

    step = f'{pods},pipeline=~"$pipeline"'
    step_by = "pipeline, step, component"
    hit = per("compound_cache_hits_total", f'{pods},component=~"$component"', "component, tier")
    miss = per("compound_cache_misses_total", f'{pods},component=~"$component"', "component, tier")
    panels = [
        (
            "Pipeline throughput",
            "reqps",
            [(per(SUCCESS, pipe), "{{model}}")],
            "Requests per second each pipeline answered.",
        ),
        (
            "Pipeline mean latency",
            "µs",
            [(f"{per('nv_inference_request_duration_us', pipe)} / {per(SUCCESS, pipe)}", "{{model}}")],
            "End-to-end time inside the server per request (queue + compute of the pipeline model).",
        ),
        (
            "Pipeline failures",
            "reqps",
            [(per("nv_inference_request_failure", pipe), "{{model}}")],
            "Requests per second each pipeline failed.",
        ),
        (
            "Step latency p95 (fused and orchestrated)",
            "s",
            [
                (
                    f"histogram_quantile(0.95, sum by (le, {step_by}) "
                    f"(rate(compound_step_duration_seconds_bucket{{{step}}}[{RATE}])))",
                    "{{pipeline}} {{step}} {{component}}",
                )
            ],
            "95th percentile of one call of each step: the handler inside a fused pipeline, the whole call "
            "(queue and compute of the callee) from an orchestrator.",
        ),
        (
            "Step batch size (fused and orchestrated)",
            "none",
            [
                (
                    f"{per('compound_step_rows_total', step, step_by)} / "
                    f"{per('compound_step_duration_seconds_count', step, step_by)}",
                    "{{pipeline}} {{step}} {{component}}",
                )
            ],
            "Mean rows per step call: how much the requests merged.",
        ),
        (
            "Component queue (requests waiting)",
            "none",
            [
                (f"sum by (model) (nv_inference_pending_request_count{{{comp}}})", "{{model}} (Triton queue)"),
                (
                    f'sum by (component) (compound_pending_requests{{{pods},component=~"$component"}})',
                    "{{component}} (awaited by pipelines)",
                ),
            ],
            "Triton's queue per component model, and the rows orchestrators and fused pipelines have sent to "
            "each component and not yet had answered (queue + compute).",
        ),
        (
            "Component mean queue wait",
            "µs",
            [(f"{per('nv_inference_queue_duration_us', comp)} / {per(SUCCESS, comp)}", "{{model}}")],
            "What the KEDA ScaledObject scales on (its worst model).",
        ),
        (
            "Component mean compute",
            "µs",
            [
                (
                    f"{per('nv_inference_compute_infer_duration_us', comp)} / {per(SUCCESS, comp)}",
                    "{{model}}",
                )
            ],
            "Compute time per request of each component model.",
        ),
        (
            "Instances per component",
            "none",
            [
                (
                    f'sum by (component, model) (compound_instances{{{pods},component=~"$component"}})',
                    "{{component}} in {{model}}",
                )
            ],
            "Loaded instances (processes) running each component: in its own model, or inside a fused pipeline.",
        ),
        (
            "Cache hit rate",
            "percentunit",
            [(f"{hit} / ({hit} + {miss})", "{{component}} {{tier}}")],
            "Share of rows each tier of the tiered cache answered (components with `cache: {memory_mb, redis}`).",
        ),
    ]
    return {
        "title": f"compound: {name}",
        "uid": f"compound-{name}"[:40],
        "description": f"Generated by compound {__version__} for deployment {name}",
        "tags": ["compound", "triton"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                _variable("pipeline", "Pipeline", pipelines),
                _variable("component", "Component", components),
            ]
        },
        "panels": [_panel(i, *panel) for i, panel in enumerate(panels)],
    }


def panel_queries(dashboard: dict[str, Any], rate_interval: str) -> dict[str, list[str]]:
    """Panel title -> its queries with the variables at "All" and $__rate_interval given: what
    Grafana sends to Prometheus on first load."""
    values = {"__rate_interval": rate_interval}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "custom":
            values[variable["name"]] = variable["allValue"]

    def expand(expr: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)

    return {panel["title"]: [expand(t["expr"]) for t in panel["targets"]] for panel in dashboard["panels"]}


def dashboard_json(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"
