"""Streams in flight per streaming component, for the adaptive runtime.

Why a metrics read: a streaming component is a decoupled Triton model whose execute() returns before
its streams end, so Triton's statistics (execute time, queue time) show a busy one as idle. Its own
gauge `compound_streams_in_flight` (templates/metrics.py, pushed every 0.25 s by each instance) counts
the streams accepted and not ended; against its places (instances x compound.max_streams) it is the
component's utilisation. Read once per tick, and only while some loaded component streams.
"""

from __future__ import annotations

import dataclasses
import urllib.error
import urllib.request
from typing import Any, Mapping, Optional

from toolkit.observe.canary import parse_metrics_lines
from toolkit.runtime.policy import Component, Window

GAUGE = "compound_streams_in_flight"
SCRAPE_TIMEOUT_S = 2.0


def max_streams_of(config: dict[str, Any]) -> int:
    """A model config's streams per instance (0: the model does not stream)."""
    parameters = config.get("parameters") or {}
    if not (parameters.get("compound.stream") or {}).get("string_value"):
        return 0
    try:
        return max(1, int((parameters.get("compound.max_streams") or {}).get("string_value", "1")))
    except ValueError:
        return 1


def streams_in_flight(metrics_text: str) -> dict[str, float]:
    """Streams in flight per component model (its own series: model and component labels equal),
    summed over its instances and their process generations."""
    totals: dict[str, float] = {}
    for name, labels, value in parse_metrics_lines(metrics_text):
        model = labels.get("model", "")
        if name == GAUGE and model and labels.get("component") == model:
            totals[model] = totals.get(model, 0.0) + value
    return totals


def scrape(metrics_url: str) -> Optional[str]:
    """The metrics endpoint's text; None when it does not answer (the tick goes on without streams)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=SCRAPE_TIMEOUT_S) as response:  # noqa: S310 - our server
            return str(response.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def with_streams(
    windows: Mapping[str, Window], components: Mapping[str, Component], metrics_url: str
) -> dict[str, Window]:
    """The windows, those of loaded streaming components carrying their streams in flight."""
    out = dict(windows)
    streaming = [n for n, c in components.items() if c.max_streams and c.loaded and n in windows]
    if not streaming or not metrics_url:
        return out
    text = scrape(metrics_url)
    if text is None:
        return out
    counts = streams_in_flight(text)
    for name in streaming:
        out[name] = dataclasses.replace(windows[name], streams=counts.get(name, 0.0))
    return out
