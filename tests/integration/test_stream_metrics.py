"""A streaming component's own metrics on a real tritonserver, and the adaptive runtime scaling it on
its streams in flight (tests/fixtures/streamobs: `talker` streams n tokens 10 ms apart, two streams
per instance, autoscale 1..2).

Triton's statistics see a decoupled model's execute() only (it returns at once), so without the
streams-in-flight gauge a busy streaming component looks idle to the runtime.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.conftest import FIXTURES, start_server
from toolkit.client import model_config
from toolkit.observe.canary import parse_metrics_lines
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.runtime.supervisor import Supervisor
from toolkit.stream_client import stream_infer
from toolkit.targets.local import LocalServer
from toolkit.targets.prometheus import PrometheusServer
from toolkit.targets.state import RuntimeConfig

SPEC = FIXTURES / "streamobs" / "pipeline.yaml"
FIRST = "compound_stream_first_response_seconds"
GAPS = "compound_stream_inter_response_seconds"
IN_FLIGHT = "compound_streams_in_flight"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    repo = render_repository(plan_spec(SPEC), tmp_path_factory.mktemp("streamobs") / "repo")
    started = start_server(repo, tmp_path_factory.mktemp("streamobs-logs"))
    yield started
    started.stop()


def scrape(server: LocalServer) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        return parse_metrics_lines(response.read().decode())


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, got, v in samples if n == name and all(got.get(k) == want for k, want in labels.items()))


def stream(server: LocalServer, count: int, errors: list[str]) -> None:
    try:
        responses = stream_infer("talker", server.grpc_url, {"n": np.array([[count]], dtype=np.int32)})
        got = [int(r["token"][0, 0]) for r in responses]
        if got != list(range(count)):
            errors.append(f"tokens {got[:5]}... of {len(got)}")
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(f"{type(exc).__name__}: {exc}")


def open_streams(server: LocalServer, streams: int, count: int, errors: list[str]) -> list[threading.Thread]:
    threads = [threading.Thread(target=stream, args=(server, count, errors), daemon=True) for _ in range(streams)]
    for thread in threads:
        thread.start()
    return threads


def wait_for_in_flight(server: LocalServer, at_least: float, timeout_s: float = 10.0) -> float:
    deadline = time.monotonic() + timeout_s
    seen = 0.0
    while time.monotonic() < deadline:
        seen = total(scrape(server), IN_FLIGHT, model="talker", component="talker")
        if seen >= at_least:
            break
        time.sleep(0.1)
    return seen


def test_first_response_gap_histograms_and_streams_in_flight(server: LocalServer) -> None:
    labels = {"model": "talker", "component": "talker"}
    before = scrape(server)
    errors: list[str] = []
    threads = open_streams(server, 5, 40, errors)  # two run, three wait for a place: 5 in flight
    assert wait_for_in_flight(server, 5) == 5
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    time.sleep(0.6)  # the flusher pushes every 0.25 s
    after = scrape(server)
    assert total(after, IN_FLIGHT, **labels) == 0
    for name, responses in ((FIRST, 5), (GAPS, 5 * 39)):
        added = {
            le: total(after, f"{name}_bucket", le=le, **labels) - total(before, f"{name}_bucket", le=le, **labels)
            for le in ("0.005", "0.01", "0.025", "+Inf")
        }
        assert added["+Inf"] == responses, (name, added)
        assert total(after, f"{name}_count", **labels) - total(before, f"{name}_count", **labels) == responses
        assert list(added.values()) == sorted(added.values()), added  # cumulative buckets
        seconds = total(after, f"{name}_sum", **labels) - total(before, f"{name}_sum", **labels)
        assert seconds / responses >= 0.009, (name, seconds)  # every response waits its 10 ms sleep
    # the gaps of two streams sharing one loop: ~20 ms each (10 ms per generator in turn). A gap is timed
    # when its response is sent, so a send that a loaded machine held back shortens the next gap: one of
    # 195 fell under 5 ms in a full CI run. A few may; a loop that answered without its sleep would not.
    short = total(after, f"{GAPS}_bucket", le="0.005", **labels) - total(before, f"{GAPS}_bucket", le="0.005", **labels)
    assert short <= 2, short
    # the waiting streams' first response comes after a whole earlier stream: > 0.25 s for some
    late = total(after, f"{FIRST}_bucket", le="+Inf", **labels) - total(after, f"{FIRST}_bucket", le="0.25", **labels)
    assert late >= 2


def test_prometheus_reads_the_counters_as_a_histogram(server: LocalServer, tmp_path: Path) -> None:
    """The `_bucket` counters are a histogram to PromQL: its quantile lands where the gaps are."""
    errors: list[str] = []
    for thread in open_streams(server, 2, 30, errors):  # two streams sharing the loop: gaps of ~20 ms
        thread.join(30)
    assert not errors, errors
    time.sleep(0.6)
    prometheus = PrometheusServer([f"127.0.0.1:{server.endpoints.metrics_port}"], workdir=tmp_path).start()
    try:
        prometheus.wait_for_scrape()
        query = 'histogram_quantile(0.5, sum by (le) (compound_stream_inter_response_seconds_bucket{model="talker"}))'
        ((_, median),) = prometheus.query(query)
        ((_, streams),) = prometheus.query('sum(compound_streams_in_flight{model="talker"})')
    finally:
        prometheus.stop()
    assert 0.005 < median <= 0.05, median
    assert streams == 0


def test_the_runtime_scales_a_streaming_component_on_its_streams_in_flight(server: LocalServer, tmp_path: Path) -> None:
    config = RuntimeConfig(
        name="streamobs",
        repository=str(server.repository),
        http_url=server.http_url,
        grpc_url=server.grpc_url,
        metrics_url=server.metrics_url,
        api_key=server.api_key,
        run_dir=str(tmp_path),
        cores=2.0,
    )
    supervisor = Supervisor(config, log=lambda line: None)
    supervisor.tick()
    assert supervisor.components["talker"].max_streams == 2
    errors: list[str] = []
    threads = open_streams(server, 6, 150, errors)  # 6 streams for 2 places: severe in one window
    try:
        assert wait_for_in_flight(server, 6) == 6
        decisions = supervisor.tick()
    finally:
        for thread in threads:
            thread.join(60)
    assert [(d.model, d.action, d.instances) for d in decisions] == [("talker", "scale", 2)], supervisor.decisions
    assert "6 streams in flight for 1 x 2 places" in decisions[0].reason
    assert int(model_config(server.http_url, "talker")["instance_group"][0]["count"]) == 2
    assert supervisor.components["talker"].utilisation == 3.0
    assert not errors, errors  # the streams in flight through the rescale all ended whole
