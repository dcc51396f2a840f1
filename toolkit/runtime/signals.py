"""The runtime's fast signal: rows waiting per component, read from Triton's metrics endpoint.

Why this and not the statistics API: the generated models push `compound_pending_requests` (rows an
orchestrator or fused pipeline has sent to a component and not had answered) every 250 ms
(templates/metrics.py), and Triton keeps `nv_inference_pending_request_count` (requests in a model's
queue, what an ensemble's steps wait in) current on every enqueue and dequeue. One scrape gives both
for every model; a burst shows in the first scrape after it starts, where a window of the statistics'
counters needs a second to say anything.
"""

from __future__ import annotations

import contextlib
import re
import urllib.error
import urllib.request
from typing import Optional

COMPOUND_PENDING = "compound_pending_requests"
TRITON_PENDING = "nv_inference_pending_request_count"
TRITON_SUCCESS = "nv_inference_request_success"
COMPOUND_INSTANCES = "compound_instances"
SAMPLE_S = 0.25  # how often the runtime reads it: the generated models' push interval
_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def pending_rows(text: str) -> dict[str, float]:
    """Rows waiting per component: the larger of what compound's orchestrators count as sent and
    unanswered (summed over instances and pipelines) and what Triton counts in the model's queue."""
    ours: dict[str, float] = {}
    triton: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None or match["name"] not in (COMPOUND_PENDING, TRITON_PENDING):
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if match["name"] == COMPOUND_PENDING and "component" in labels:
            ours[labels["component"]] = ours.get(labels["component"], 0.0) + value
        elif match["name"] == TRITON_PENDING and "model" in labels:
            triton[labels["model"]] = triton.get(labels["model"], 0.0) + value
    return {name: max(ours.get(name, 0.0), triton.get(name, 0.0)) for name in set(ours) | set(triton)}


def served(text: str) -> dict[str, float]:
    """Requests each model has answered so far (a counter): two samples give its recent rate."""
    total: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None or match["name"] != TRITON_SUCCESS:
            continue
        model = dict(_LABEL.findall(match["labels"])).get("model")
        with contextlib.suppress(ValueError):
            if model is not None:
                total[model] = total.get(model, 0.0) + float(match["value"])
    return total


def live_instances(text: str) -> dict[str, float]:
    """Instances per component model that have started serving: each instance process sets its
    `compound_instances` gauge to 1 in initialize(), after which Triton gives it batches at once
    (templates/metrics.py); a finalised one sets it to 0."""
    total: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None or match["name"] != COMPOUND_INSTANCES:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        with contextlib.suppress(ValueError):
            if labels.get("model") and labels.get("model") == labels.get("component"):
                total[labels["model"]] = total.get(labels["model"], 0.0) + float(match["value"])
    return total


def scrape_text(url: str, timeout: float = 1.0) -> Optional[str]:
    """The metrics endpoint's text; None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the server's own endpoint
            return response.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, ValueError):
        return None


def scrape(url: str, timeout: float = 1.0) -> Optional[tuple[dict[str, float], dict[str, float], dict[str, float]]]:
    """One read of a server's metrics endpoint: rows waiting, requests served and instances serving
    per model; None when it does not answer (the window goes on)."""
    text = scrape_text(url, timeout)
    return None if text is None else (pending_rows(text), served(text), live_instances(text))
