"""Streaming inference: every response of one request as it arrives, over gRPC or HTTP server-sent events.

Why two transports: gRPC's bidirectional stream (`start_stream`/`async_stream_infer`) carries typed
tensors and the only cancellation Triton 2.51 honours (closing the stream early cancels the request,
and a streaming component sees it within one step); HTTP has Triton's provisional generate extension,
POST /v2/models/NAME/generate_stream, whose server-sent events carry JSON (see `sse_payload` and
`decode_sse_event` for the encoding) and whose closed connection cancels nothing in 2.51.
"""

from __future__ import annotations

import http.client
import json
import math
import queue
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from toolkit.client import Protocol, Signature, fetch_signature, grpc_client, strip_scheme, to_jsonable
from toolkit.core.errors import CompoundError

# Fields Triton adds to every generate_stream event beside the outputs.
SSE_METADATA = ("model_name", "model_version", "sequence_id", "sequence_start", "sequence_end", "id")


def stream_infer(
    model: str,
    url: str,
    inputs: dict[str, np.ndarray],
    protocol: Protocol = "grpc",
    *,
    signature: Optional[Signature] = None,
    timeout_s: float = 60.0,
    headers: Optional[dict[str, str]] = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The outputs of each response of one request, in order, as they arrive. Stopping early (break, or
    closing the iterator) ends the request: over gRPC it is cancelled on the server. `timeout_s` bounds
    the wait for each next response. HTTP needs the outputs' types: `signature` (fetched when None)."""
    if protocol == "grpc":
        return _grpc_stream(model, url, inputs, timeout_s, headers)
    if protocol == "http":
        return _sse_stream(model, url, inputs, signature, timeout_s, headers)
    raise CompoundError(f"unknown protocol {protocol!r}", hint="use http or grpc")


def _grpc_stream(
    model: str, url: str, inputs: dict[str, np.ndarray], timeout_s: float, headers: Optional[dict[str, str]]
) -> Iterator[dict[str, np.ndarray]]:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    arrived: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpc_client(url)
    finished = False
    try:
        client.start_stream(callback=lambda result, error: arrived.put((result, error)), headers=headers)
        request = []
        for name, array in inputs.items():
            datatype = "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype)
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        client.async_stream_infer(model, request, enable_empty_final_response=True)
        while True:
            try:
                result, error = arrived.get(timeout=timeout_s)
            except queue.Empty:
                raise CompoundError(f"streaming inference on '{model}': no response within {timeout_s:g} s") from None
            if error is not None:
                finished = True  # the server ended the request with this error
                message = error.message() if isinstance(error, InferenceServerException) else str(error)
                raise CompoundError(f"streaming inference on '{model}' failed: {message}")
            response = result.get_response()
            flag = response.parameters.get("triton_final_response")
            if response.outputs:
                yield {output.name: result.as_numpy(output.name) for output in response.outputs}
            if flag is not None and flag.bool_param:
                finished = True
                return
    except InferenceServerException as exc:
        raise CompoundError(f"streaming inference on '{model}' failed: {exc.message()}") from None
    finally:
        try:
            client.stop_stream(cancel_requests=not finished)
        finally:
            client.close()


def _sse_stream(
    model: str,
    url: str,
    inputs: dict[str, np.ndarray],
    signature: Optional[Signature],
    timeout_s: float,
    headers: Optional[dict[str, str]],
) -> Iterator[dict[str, np.ndarray]]:
    signature = signature or fetch_signature(model, url, "http")
    host, _, port = strip_scheme(url).rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        try:
            connection.request(
                "POST",
                f"/v2/models/{model}/generate_stream",
                body=json.dumps(sse_payload(inputs)),
                headers={"Content-Type": "application/json", "Accept": "text/event-stream", **(headers or {})},
            )
            response = connection.getresponse()
        except OSError as exc:
            raise CompoundError(f"cannot reach Triton at {url}: {exc}") from None
        if response.status != 200:
            body = response.read().decode("utf-8", errors="replace")
            try:
                body = json.loads(body).get("error", body)
            except (ValueError, AttributeError):
                pass
            raise CompoundError(f"streaming inference on '{model}' failed (HTTP {response.status}): {body}")
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data:"):
                continue  # blank lines separate events
            event = json.loads(line[len("data:") :])
            if "error" in event:
                raise CompoundError(f"streaming inference on '{model}' failed: {event['error']}")
            yield decode_sse_event(event, signature)
    except TimeoutError:
        raise CompoundError(f"streaming inference on '{model}': no response within {timeout_s:g} s") from None
    finally:
        connection.close()


def sse_payload(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The generate extension's request body: each input by name as JSON, its elements flattened (one
    element: a scalar); strings as UTF-8 text. Triton 2.51 shapes it back as one row of the input."""
    payload: dict[str, Any] = {}
    for name, array in inputs.items():
        flat = array.reshape(-1)
        values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in flat.tolist()]
        payload[name] = values[0] if len(values) == 1 else values
    return payload


def decode_sse_event(event: dict[str, Any], signature: Signature) -> dict[str, np.ndarray]:
    """One generate_stream event's outputs as arrays of their declared dtype and shape. Triton 2.51 sends
    each output flattened (one element: a JSON scalar, strings as text); the shape comes back from the
    declared dims, with one row (a variable dim takes what is left)."""
    decoded: dict[str, np.ndarray] = {}
    for tensor in signature.outputs:
        if tensor.name not in event:
            continue
        value = event[tensor.name]
        flat = value if isinstance(value, list) else [value]
        if tensor.datatype == "BYTES":
            array = np.array([v.encode("utf-8") if isinstance(v, str) else v for v in flat], dtype=np.object_)
        else:
            array = np.array(flat, dtype=tensor.numpy_dtype)
        decoded[tensor.name] = array.reshape(_shape(array.size, tensor.dims, signature.batched))
    return decoded


def _shape(size: int, dims: tuple[int, ...], batched: bool) -> tuple[int, ...]:
    known = math.prod(d for d in dims if d != -1)
    variable = sum(1 for d in dims if d == -1)
    if known == 0 or size % known or variable > 1:
        return ((1,) if batched else ()) + (size,)  # cannot be the declared shape: keep the values flat
    if variable == 0:
        rows = size // known
        if batched:
            return (rows, *dims)
        return tuple(dims) if rows == 1 else (size,)
    shape = tuple(size // known if d == -1 else d for d in dims)
    return ((1,) if batched else ()) + shape


@dataclass(frozen=True)
class StreamSummary:
    """How one stream went, from the request's start: time to first response, rate, total."""

    responses: int
    first_s: Optional[float]  # None: no response came
    total_s: float

    @property
    def per_second(self) -> float:
        """Responses per second after the first (the streaming rate, not counting the wait for the first)."""
        if self.first_s is None or self.responses < 2 or self.total_s <= self.first_s:
            return 0.0
        return (self.responses - 1) / (self.total_s - self.first_s)

    def describe(self) -> str:
        first = f"first after {self.first_s * 1000:.1f} ms" if self.first_s is not None else "no response"
        return (
            f"{self.responses} response(s): {first}, {self.per_second:.1f} responses/s,"
            f" total {self.total_s * 1000:.1f} ms"
        )


def print_stream(
    model: str, url: str, inputs: dict[str, np.ndarray], protocol: Protocol, signature: Signature
) -> StreamSummary:
    """`compound infer --stream`: each response as one JSON line as it arrives, then the summary."""
    import click

    start = time.perf_counter()
    first: Optional[float] = None
    count = 0
    for outputs in stream_infer(model, url, inputs, protocol, signature=signature):
        if first is None:
            first = time.perf_counter() - start
        count += 1
        click.echo(json.dumps(to_jsonable(outputs), ensure_ascii=False))
    summary = StreamSummary(count, first, time.perf_counter() - start)
    click.echo(summary.describe())
    return summary
