"""What a running canary shows in `compound status`: per pipeline and version, what the routers
(templates/router.py) counted, read from the servers' metrics and the repository's version record."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

from toolkit.client import http_json
from toolkit.repository.versions import VERSIONS_FILE, VersionRecord


def canary_report(repository: Path, http_url: str, metrics_urls: Sequence[str]) -> Optional[list[str]]:
    """Lines for `compound status` during a canary: per pipeline and version, the requests, failures,
    error rate and P95 the routers counted (summed over every server's metrics); None when no canary is
    under way."""
    path = repository / VERSIONS_FILE
    if not path.is_file():
        return None
    record = VersionRecord.from_json(path.read_text())
    lines = [f"  version:    {record.current} serves" + (f" (history {record.history})" if record.history else "")]
    if not record.canary:
        return lines
    c = record.canary
    mode = "shadow copy to" if c["shadow"] else "canary"
    lines[0] = f"  version:    {mode} v{c['to']} at {c['percent']:g}% beside v{c['from']}"
    status, _ = http_json(f"http://{http_url}/v2/health/live", timeout=2.0)
    texts = []
    if status == 200:
        for url in metrics_urls:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - the deployment's
                    texts.append(response.read().decode())
            except OSError:
                continue
    table = canary_table("\n".join(texts))
    for pipeline in c["pipelines"]:
        for label in (f"v{c['from']}", f"v{c['to']}"):
            row = table.get((pipeline, label), {})
            requests, failures = row.get("requests", 0), row.get("failures", 0)
            rate = f"{100.0 * failures / requests:.2f}%" if requests else "-"
            p95 = f"{row['p95']:.1f} ms" if row.get("p95") is not None else "-"
            line = f"    {pipeline} {label}: {requests:.0f} requests, {failures:.0f} failed ({rate}), P95 {p95}"
            if c["shadow"] and label == f"v{c['to']}":
                line += f"; shadow: {row.get('compared', 0):.0f} compared, {row.get('mismatches', 0):.0f} differed"
            lines.append(line)
    return lines


def canary_table(metrics_text: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(pipeline, version) -> requests, failures, P95 (the slowest instance's), shadow counts, from
    the routers' custom metrics."""
    names = {
        "compound_canary_requests_total": "requests",
        "compound_canary_failures_total": "failures",
        "compound_shadow_compared_total": "compared",
        "compound_shadow_mismatches_total": "mismatches",
    }
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for name, labels, value in parse_metrics_lines(metrics_text):
        key = (labels.get("pipeline", ""), labels.get("version", ""))
        if name in names:
            row = table.setdefault(key, {})
            row[names[name]] = row.get(names[name], 0.0) + value
        elif name == "compound_canary_latency_p95_ms":
            row = table.setdefault(key, {})
            row["p95"] = max(row.get("p95") or 0.0, value)
    return table


def parse_metrics_lines(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text lines as (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = {}
        for part in rest.rstrip("}").split('",'):
            if "=" in part:
                key, _, val = part.partition("=")
                labels[key.strip()] = val.strip().strip('"')
        try:
            out.append((name, labels, float(value)))
        except ValueError:
            continue
    return out
