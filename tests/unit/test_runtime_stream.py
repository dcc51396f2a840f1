"""The streaming mode of the component runtime (templates/model.py with templates/stream.py beside it),
in-process with a fake pb_utils: responses in order with the final flag, failures pinned on the stream
(or step) that caused them, cancelled streams ended and freed, the cap on streams in flight."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import numpy as np
import pytest

from tests.unit import fake_pb_utils as fake

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

HANDLERS = """
import time
import numpy as np

EVENTS = []


class Count:
    def __init__(self, parameters, device):
        self.delay = parameters.get("delay", 0)
        self.fail_at = parameters.get("fail_at", -1)

    def __call__(self, n):
        EVENTS.append("start")
        try:
            for i in range(int(n[0, 0])):
                if i == self.fail_at:
                    raise ValueError(f"no token {i}")
                time.sleep(self.delay)
                yield {"tok": np.full((n.shape[0], 1), i)}  # int64 into the declared int32
        finally:
            EVENTS.append("closed")


class Steps:
    def __init__(self, parameters, device):
        self.delay = parameters.get("delay", 0)
        self.mode = parameters.get("mode", "")
        self.sizes = []

    def start(self, n):
        if int(n[0, 0]) < 0:
            raise ValueError("a negative count")
        return {"left": int(n[0, 0]), "i": 0}

    def step(self, states):
        self.sizes.append(len(states))
        EVENTS.append(("step", len(states)))
        time.sleep(self.delay)
        if self.mode == "raise":
            raise RuntimeError("the step broke")
        if self.mode == "short":
            return []
        out = []
        for state in states:
            if state["left"] == 0:
                out.append(None)
                continue
            state["left"] -= 1
            state["i"] += 1
            out.append({"tok": np.array([[state["i"]]], dtype=np.int32)})
        return out

    def cancel(self, state):
        EVENTS.append(("cancel", state["i"]))
"""


@pytest.fixture(params=["4", "0"], ids=["send-lanes", "loop-sends"])
def pb(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Every test twice: responses sent by the send lanes (the default), and by the loop itself."""
    monkeypatch.setenv("COMPOUND_STREAM_SEND_LANES", request.param)
    monkeypatch.delitem(sys.modules, "compound_stream", raising=False)  # read at import: a fresh one
    with fake.installed() as module:
        yield module


def make_model(folder: Path, handler: str, stream: str, max_streams: int = 8, **parameters: Any) -> Any:
    version = folder / "gen" / "1"
    version.mkdir(parents=True)
    shutil.copy(TEMPLATES / "model.py", version / "model.py")
    shutil.copy(TEMPLATES / "stream.py", version / "compound_stream.py")
    (version / "handlers.py").write_text(textwrap.dedent(HANDLERS))
    config = {
        "name": "gen",
        "max_batch_size": 8,
        "input": [{"name": "n", "data_type": "TYPE_INT32", "dims": [1]}],
        "output": [{"name": "tok", "data_type": "TYPE_INT32", "dims": [1]}],
        "parameters": {
            "compound.handler": {"string_value": f"handlers:{handler}"},
            "compound.handler_parameters": {"string_value": json.dumps(parameters)},
            "compound.stream": {"string_value": stream},
            "compound.max_streams": {"string_value": str(max_streams)},
        },
    }
    sys.path.append(str(version))
    module = fake.load_template(version / "model.py", f"model_gen_{id(folder)}")
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_name": "gen", "model_instance_kind": "CPU"})
    return model


def events(model: Any) -> list[Any]:
    return sys.modules[type(model.runner.handler).__module__].EVENTS


def start(model: Any, *counts: int) -> list[Any]:
    requests = [fake.request(n=np.array([[c]], dtype=np.int32)) for c in counts]
    assert model.execute(requests) is None  # decoupled: the responses go through the senders
    return [r.get_response_sender() for r in requests]


def finished(senders: list[Any], timeout_s: float = 5.0) -> list[list[Any]]:
    for sender in senders:
        assert sender.done.wait(timeout_s), "no final flag"
        assert sender.finals == 1
    return [sender.responses for sender in senders]


def tokens(responses: list[Any]) -> list[int]:
    return [int(fake.outputs(r)["tok"][0, 0]) for r in responses]


def test_each_generator_streams_its_own_responses_in_order(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Count", "generator")
    try:
        first, second, empty = finished(start(model, 3, 5, 0))
        assert tokens(first) == [0, 1, 2] and tokens(second) == [0, 1, 2, 3, 4] and empty == []
        assert fake.outputs(first[0])["tok"].dtype == np.int32  # converted as declared, as one-response handlers
        assert events(model).count("closed") == 3
    finally:
        model.finalize()


def test_a_failing_generator_ends_its_stream_with_the_handler_named(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Count", "generator", fail_at=2)
    try:
        (failed,) = finished(start(model, 5))
        assert tokens(failed[:2]) == [0, 1]
        message = fake.error(failed[2])
        assert "handler 'handlers:Count' __call__ failed" in message and "no token 2" in message
        assert "handlers.py:" in message
        assert events(model)[-1] == "closed"
    finally:
        model.finalize()


def test_one_step_advances_every_stream_and_late_ones_join(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Steps", "batch", delay=0.01)
    try:
        early = start(model, 20)
        time.sleep(0.05)
        late = start(model, 3, 3)
        (long,), (a, b) = finished(early), finished(late)
        assert tokens(long) == list(range(1, 21)) and tokens(a) == tokens(b) == [1, 2, 3]
        assert 3 in model.runner.handler.sizes  # the late streams joined the long one's steps
    finally:
        model.finalize()


def test_start_failing_fails_that_stream_only(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Steps", "batch")
    try:
        bad, good = finished(start(model, -1, 2))
        assert "handler 'handlers:Steps' start failed" in fake.error(bad[0]) and "a negative count" in fake.error(
            bad[0]
        )
        assert tokens(good) == [1, 2]
    finally:
        model.finalize()


def test_a_failing_step_names_the_handler(pb: ModuleType, tmp_path: Path) -> None:
    for mode, fragment in (("raise", "the step broke"), ("short", "returned 0 items")):
        folder = tmp_path / mode
        model = make_model(folder, "Steps", "batch", mode=mode)
        try:
            for responses in finished(start(model, 2, 2)):
                message = fake.error(responses[-1])
                assert "handler 'handlers:Steps' step failed" in message and fragment in message
        finally:
            model.finalize()


def test_a_cancelled_generator_is_closed_within_a_step(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Count", "generator", delay=0.01)
    try:
        (sender,) = start(model, 1000)
        deadline = time.monotonic() + 5
        while len(sender.responses) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        sender.cancelled = True
        assert sender.done.wait(2.0)
        sent = len(sender.responses)
        assert sent < 20  # ended within a couple of steps, not at 1000
        assert events(model)[-1] == "closed"
        assert all(not r.has_error() for r in sender.responses)
    finally:
        model.finalize()


def test_a_cancelled_stream_leaves_the_batch_and_is_freed(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Steps", "batch", delay=0.01)
    try:
        gone, stays = start(model, 1000, 30)
        time.sleep(0.05)
        gone.cancelled = True
        assert gone.done.wait(2.0)
        (responses,) = finished([stays])
        assert tokens(responses) == list(range(1, 31))
        assert any(isinstance(e, tuple) and e[0] == "cancel" for e in events(model))
        assert model.runner.handler.sizes[-1] == 1  # the cancelled state left the step
    finally:
        model.finalize()


def test_streams_in_flight_are_capped(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Steps", "batch", max_streams=2, delay=0.002)
    try:
        results = finished(start(model, 5, 5, 5, 5))
        assert all(tokens(r) == [1, 2, 3, 4, 5] for r in results)
        assert max(model.runner.handler.sizes) == 2
    finally:
        model.finalize()


def test_unloading_ends_the_streams_in_flight(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Count", "generator", delay=0.01)
    (sender,) = start(model, 1000)
    time.sleep(0.05)
    model.finalize()
    assert sender.done.is_set()
    assert "is unloading" in fake.error(sender.responses[-1])


def test_send_lanes_carry_each_stream_in_order(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Steps", "batch")
    try:
        lanes = model.streamer.lanes
        assert (lanes is None) == (sys.modules["compound_stream"].SEND_LANES == 0)
        if lanes is not None:
            assert len(lanes.threads) == 4  # at most one per stream an instance runs (8 here)
        senders = start(model, *range(1, 13))  # 12 streams: lanes are shared, each stream keeps to one
        for count, responses in zip(range(1, 13), finished(senders)):
            assert tokens(responses) == list(range(1, count + 1))
    finally:
        model.finalize()


def test_a_stream_the_server_dropped_ends_and_the_others_go_on(pb: ModuleType, tmp_path: Path) -> None:
    model = make_model(tmp_path, "Count", "generator")
    try:
        requests = [fake.request(n=np.array([[50]], dtype=np.int32)), fake.request(n=np.array([[3]], dtype=np.int32))]
        dropped, kept = (r.get_response_sender() for r in requests)

        def refuse(response: Any = None, flags: int = 0) -> None:
            raise fake.TritonModelException("Unable to send response: the response factory is gone")

        dropped.send = refuse  # type: ignore[method-assign]
        model.execute(requests)
        (responses,) = finished([kept])
        assert tokens(responses) == [0, 1, 2]
        deadline = time.monotonic() + 2
        while events(model).count("closed") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert events(model).count("closed") == 2  # the dropped stream's generator was closed too
    finally:
        model.finalize()
