"""Streaming components seen from outside: the counts the stepping loop keeps (in-process, fake pb_utils),
the streams-in-flight reading of the runtime, and the policy deciding on streams in flight."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import numpy as np
import pytest

from tests.unit import fake_pb_utils as fake
from toolkit.runtime.policy import COOLDOWN_S, DOWN_AFTER, UP_AFTER, Bounds, Component, Policy, Window
from toolkit.runtime.streams import max_streams_of, streams_in_flight, with_streams

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
HANDLERS = """
import time

import numpy as np


class Count:
    def __init__(self, parameters, device):
        self.delay = parameters.get("delay", 0)

    def __call__(self, n):
        for i in range(int(n[0, 0])):
            time.sleep(self.delay)
            yield {"tok": np.full((n.shape[0], 1), i, dtype=np.int32)}
"""


@pytest.fixture()
def pb() -> Iterator[ModuleType]:
    with fake.installed() as module:
        fake.METRICS.clear()
        yield module


def make_model(folder: Path, max_streams: int, delay: float) -> Any:
    version = folder / "talk" / "1"
    version.mkdir(parents=True)
    shutil.copy(TEMPLATES / "model.py", version / "model.py")
    shutil.copy(TEMPLATES / "stream.py", version / "compound_stream.py")
    shutil.copy(TEMPLATES / "metrics.py", version / "compound_metrics.py")
    (version / "handlers.py").write_text(HANDLERS)
    config = {
        "name": "talk",
        "max_batch_size": 8,
        "input": [{"name": "n", "data_type": "TYPE_INT32", "dims": [1]}],
        "output": [{"name": "tok", "data_type": "TYPE_INT32", "dims": [1]}],
        "parameters": {
            "compound.handler": {"string_value": "handlers:Count"},
            "compound.handler_parameters": {"string_value": json.dumps({"delay": delay})},
            "compound.stream": {"string_value": "generator"},
            "compound.max_streams": {"string_value": str(max_streams)},
        },
    }
    sys.path.append(str(version))
    module = fake.load_template(version / "model.py", f"model_talk_{id(folder)}")
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_name": "talk",
            "model_instance_kind": "CPU",
            "model_instance_name": "talk_0",
        }
    )
    return model


def value(name: str, **labels: str) -> float:
    return sum(m.value for got, m in fake.series(name) if all(got.get(k) == v for k, v in labels.items()))


def test_the_loop_counts_first_responses_gaps_and_streams_in_flight(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, max_streams=1, delay=0.002)
    try:
        requests = [fake.request(n=np.array([[c]], dtype=np.int32)) for c in (5, 3)]
        model.execute(requests)
        model.metrics.flush()
        assert value("compound_streams_in_flight", model="talk", component="talk") == 2  # one runs, one waits
        for request in requests:
            assert request.get_response_sender().done.wait(5)
        model.metrics.flush()
        assert value("compound_streams_in_flight", model="talk", component="talk") == 0
        first, gaps = "compound_stream_first_response_seconds", "compound_stream_inter_response_seconds"
        assert value(f"{first}_count") == 2 and value(f"{first}_bucket", le="+Inf") == 2
        assert value(f"{gaps}_count") == 4 + 2 and value(f"{gaps}_bucket", le="+Inf") == 6
        assert value(f"{gaps}_bucket", le="0.001") == 0 and value(f"{gaps}_bucket", le="0.1") == 6  # 2 ms sleeps
        # the second stream waited for the first one's five responses before its own first
        assert value(f"{first}_sum") >= 6 * 0.002
        assert 6 * 0.002 <= value(f"{gaps}_sum") < 6 * 0.05
        labels = {k for got, _ in fake.series(f"{gaps}_bucket") for k in got}
        assert labels == {"model", "component", "instance", "le"}
        model.metrics.flush()  # nothing new: no series moves
        assert value(f"{gaps}_count") == 6
    finally:
        model.finalize()


def test_streams_in_flight_read_from_the_metrics_text() -> None:
    text = "\n".join(
        [
            "# TYPE compound_streams_in_flight gauge",
            'compound_streams_in_flight{component="talk",instance="talk_0",model="talk",pid="1"} 3',
            'compound_streams_in_flight{component="talk",instance="talk_1",model="talk",pid="2"} 4',
            'compound_streams_in_flight{component="talk",instance="f_0",model="fused",pid="3"} 9',
        ]
    )
    assert streams_in_flight(text) == {"talk": 7.0}  # a fused pipeline's loop is not the component model
    config = {
        "parameters": {"compound.stream": {"string_value": "batch"}, "compound.max_streams": {"string_value": "4"}}
    }
    assert max_streams_of(config) == 4 and max_streams_of({"parameters": {}}) == 0
    windows = {"talk": Window(seconds=1.0), "other": Window(seconds=1.0)}
    comps = {"talk": Component("talk", 1, max_streams=4), "other": Component("other", 1)}
    assert with_streams(windows, comps, "") == windows  # no metrics endpoint: Triton's windows alone
    assert with_streams(windows, {"other": comps["other"]}, "http://127.0.0.1:1/metrics") == windows  # nothing read


def streaming(n: int = 1, max_streams: int = 4, low: int = 1) -> dict[str, Component]:
    return {"talk": Component("talk", n, bounds=Bounds(low, 3, 2), max_streams=max_streams)}


def in_flight(streams: float) -> Window:
    """What Triton shows of a busy streaming model (a few executes, next to no busy time) plus the gauge."""
    return Window(seconds=1.0, requests=2, busy_s=0.001, queue_s=0.0, streams=streams)


def test_streams_waiting_for_a_place_scale_at_once() -> None:
    comps = streaming()
    (decision,) = Policy(cores=2).decide(10.0, comps, {"talk": in_flight(8)})
    assert decision.instances == 2 and comps["talk"].utilisation == 2.0
    assert decision.reason.startswith("utilisation 2.00 per instance: 8 streams in flight for 1 x 4 places")


def test_full_places_scale_after_the_hysteresis_and_idle_execute_time_does_not_hide_them() -> None:
    comps = streaming()
    policy = Policy(cores=2)
    assert policy.decide(10.0, comps, {"talk": in_flight(3)}) == []  # 0.75 once: not yet
    (decision,) = policy.decide(11.0, comps, {"talk": in_flight(4)})
    assert UP_AFTER == 2 and decision.instances == 2
    # the same windows without the gauge: Triton's numbers alone see nothing to do
    blind = streaming()
    assert Policy(cores=2).decide(10.0, blind, {"talk": Window(1.0, 2, 0.001, 0.0)}) == []
    assert Policy(cores=2).decide(11.0, blind, {"talk": Window(1.0, 2, 0.001, 0.0)}) == []


def test_few_streams_give_an_instance_back_and_a_stream_keeps_an_on_demand_one_loaded() -> None:
    comps = streaming(n=2)
    policy = Policy(cores=2)
    decisions = []
    for tick in range(DOWN_AFTER):
        decisions += policy.decide(COOLDOWN_S + tick, comps, {"talk": in_flight(2)})  # 2 of 8 places: fits in 4
    (decision,) = decisions
    assert decision.instances == 1 and "would carry it at 0.50" in decision.reason
    comps = streaming(n=1, low=0)
    comps["talk"].last_request = 0.0
    policy = Policy(cores=2)
    # idle_s 2: no new request for 10 s, but one long stream still in flight: not unloaded
    assert policy.decide(10.0, comps, {"talk": Window(1.0, 0, 0.0, 0.0, streams=1)}) == []
    (unload,) = policy.decide(20.0, comps, {"talk": Window(1.0, 0, 0.0, 0.0, streams=0)})
    assert unload.action == "unload" and "no request for 10 s" in unload.reason
