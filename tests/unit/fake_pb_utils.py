"""A small in-process stand-in for Triton's `triton_python_backend_utils`, so the generic runtimes
(templates/model.py, templates/orchestrator.py) can be unit-tested fast and deterministically.

It has what the runtimes use: Tensor, InferenceRequest (whose `async_exec` dispatches to a fake
callee function registered in CALLEES), InferenceResponse, TritonError, TritonModelException, the
lookup helpers and the custom metrics API (MetricFamily: every series lands in METRICS).
`load_template` imports a runtime from its file with this module standing in.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass
class Callee:
    """A fake component model: `fn` gets the request's arrays as sent and returns its outputs; it
    may raise. `calls` records every request's arrays; `most_in_flight` how many overlapped."""

    fn: Callable[[Arrays], Arrays]
    calls: list[Arrays] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    blocking_calls: int = 0  # calls made with exec() (the runtime ran them one at a time)


CALLEES: dict[str, Callee] = {}

_DTYPES = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


class Metric:
    """One series: a counter's or gauge's value, a histogram's observations."""

    def __init__(self, kind: str, buckets: Optional[list[float]]) -> None:
        self.kind = kind
        self.buckets = buckets
        self.value = 0.0
        self.observations: list[float] = []

    def increment(self, value: float) -> None:
        assert self.kind in ("COUNTER", "GAUGE")
        self.value += value

    def set(self, value: float) -> None:
        assert self.kind == "GAUGE"
        self.value = value

    def observe(self, value: float) -> None:
        assert self.kind == "HISTOGRAM"
        self.observations.append(value)


# family name -> frozenset of label items -> series
METRICS: dict[str, dict[frozenset[tuple[str, str]], Metric]] = {}


class MetricFamily:
    COUNTER = "COUNTER"
    GAUGE = "GAUGE"
    HISTOGRAM = "HISTOGRAM"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        # bound now: a runtime left running by an earlier test (its flusher thread) writes into the
        # registry of its own test, never into the next one's
        self.registry = METRICS.setdefault(name, {})

    def Metric(self, labels: dict[str, str], buckets: Optional[list[float]] = None) -> Metric:  # noqa: N802 - Triton's name
        # as the real backend: histograms need buckets, the others refuse them
        assert (buckets is not None) == (self.kind == "HISTOGRAM"), f"{self.name}: buckets {buckets}"
        if buckets is not None:
            assert list(buckets) == sorted(buckets)
        key = frozenset(labels.items())
        return self.registry.setdefault(key, Metric(self.kind, buckets))


def series(name: str) -> list[tuple[dict[str, str], Metric]]:
    return [(dict(key), metric) for key, metric in METRICS.get(name, {}).items()]


class TritonModelException(Exception):
    pass


class TritonError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor '{name}' needs a numpy array, got {type(array).__name__}")
        if array.dtype.kind == "U":
            raise TypeError(f"Tensor '{name}': the backend takes bytes (object) arrays, not {array.dtype}")
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: Optional[TritonError] = None) -> None:
        self._outputs = list(output_tensors)
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> Optional[TritonError]:
        return self._error


TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class ResponseSender:
    """A decoupled request's sender: records what is sent; a test sets `cancelled` for a client gone."""

    def __init__(self) -> None:
        self.responses: list[InferenceResponse] = []
        self.cancelled = False
        self.done = threading.Event()  # set by the final flag
        self.finals = 0

    def send(self, response: Optional[InferenceResponse] = None, flags: int = 0) -> None:
        assert not self.done.is_set(), "sent after the final flag"
        if response is not None:
            self.responses.append(response)
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.finals += 1
            self.done.set()

    def is_cancelled(self) -> bool:
        return self.cancelled


class InferenceRequest:
    """A request into the runtime under test (`request(...)`), or one it sends (BLS)."""

    def __init__(
        self,
        model_name: str = "",
        inputs: Optional[list[Tensor]] = None,
        requested_output_names: Optional[list[str]] = None,
        trace: Any = None,
        timeout: int = 0,
        request_id: str = "",
        **_: Any,
    ) -> None:
        self.model_name = model_name
        self._request_id = request_id
        self._sender: Optional[ResponseSender] = None
        self._inputs = list(inputs or [])
        self.requested_output_names = list(requested_output_names or [])
        self._trace = trace
        self.timeout = timeout

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def get_response_sender(self) -> ResponseSender:
        if self._sender is None:
            self._sender = ResponseSender()
        return self._sender

    def trace(self) -> Any:
        return self._trace

    def exec(self) -> InferenceResponse:
        """The blocking call: the callee answers before it returns (nothing else runs meanwhile)."""
        callee = CALLEES[self.model_name]
        arrays = {tensor.name(): tensor.as_numpy() for tensor in self._inputs}
        callee.calls.append(arrays)
        callee.most_in_flight = max(callee.most_in_flight, 1)
        callee.blocking_calls += 1
        try:
            outputs = callee.fn(arrays)
        except Exception as exc:  # the callee's failure is the response's error
            return InferenceResponse([], error=TritonError(f"model '{self.model_name}': {type(exc).__name__}: {exc}"))
        return InferenceResponse(
            [Tensor(name, np.asarray(outputs[name])) for name in self.requested_output_names if name in outputs]
        )

    async def async_exec(self) -> InferenceResponse:
        """Like Triton's: a callee's failure comes back as a response with an error. Yields to the
        event loop before and after, so concurrent calls overlap as they would on a server."""
        callee = CALLEES[self.model_name]
        arrays = {tensor.name(): tensor.as_numpy() for tensor in self._inputs}
        callee.calls.append(arrays)
        callee.in_flight += 1
        callee.most_in_flight = max(callee.most_in_flight, callee.in_flight)
        try:
            await asyncio.sleep(0)
            outputs = callee.fn(arrays)
        except Exception as exc:  # the callee's failure is the response's error
            return InferenceResponse([], error=TritonError(f"model '{self.model_name}': {type(exc).__name__}: {exc}"))
        finally:
            callee.in_flight -= 1
        await asyncio.sleep(0)
        return InferenceResponse(
            [Tensor(name, np.asarray(outputs[name])) for name in self.requested_output_names if name in outputs]
        )


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Optional[Tensor]:
    return next((tensor for tensor in request.inputs() if tensor.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Optional[Tensor]:
    return next((tensor for tensor in response.output_tensors() if tensor.name() == name), None)


def triton_string_to_numpy(triton_type: str) -> type:
    return _DTYPES[triton_type]


# --- helpers for the tests --------------------------------------------------------------------


def request(trace: Any = None, **arrays: np.ndarray) -> InferenceRequest:
    """A client request into the runtime under test."""
    return InferenceRequest(inputs=[Tensor(name, array) for name, array in arrays.items()], trace=trace)


def outputs(response: InferenceResponse) -> Arrays:
    """The response's arrays; an error response raises AssertionError with its message."""
    if response.has_error():
        raise AssertionError(f"error response: {response.error().message()}")  # type: ignore[union-attr]
    return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}


def error(response: InferenceResponse) -> str:
    assert response.has_error(), f"expected an error, got outputs {sorted(outputs(response))}"
    return response.error().message()  # type: ignore[union-attr]


@contextlib.contextmanager
def installed() -> Iterator[ModuleType]:
    """This module as `triton_python_backend_utils`, with no callees. Afterwards sys.path and
    sys.modules are put back (the runtimes change both when they load handlers); modules first
    imported meanwhile from the Python installation (numpy's lazy submodules) are kept."""
    modules, path = dict(sys.modules), list(sys.path)
    installation = tuple(str(Path(prefix).resolve()) + "/" for prefix in {sys.prefix, sys.base_prefix})
    CALLEES.clear()
    METRICS.clear()
    sys.modules["triton_python_backend_utils"] = sys.modules[__name__]
    try:
        yield sys.modules[__name__]
    finally:
        CALLEES.clear()
        METRICS.clear()
        for name, module in list(sys.modules.items()):
            if name in modules:
                continue
            origin = getattr(module, "__file__", None)
            if not (isinstance(origin, str) and str(Path(origin).resolve()).startswith(installation)):
                del sys.modules[name]
        sys.modules.update(modules)
        sys.path[:] = path


def load_template(path: Path, name: str) -> ModuleType:
    """A runtime imported from its file (as the stub does), seeing this module as pb_utils."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run(coroutine: Any) -> Any:
    """An async execute() to completion on a fresh event loop; what a plain execute() returned, as
    it is (as the stub does: it runs the result only if it is a coroutine)."""
    if not asyncio.iscoroutine(coroutine):
        return coroutine
    return asyncio.run(coroutine)
