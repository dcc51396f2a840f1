"""Streaming pipelines under load: how a run knows a pipeline streams, one stream over gRPC or HTTP
server-sent events timed token by token, and the figures a streaming run reports and gates on.

A pipeline streams when the server serves it as a decoupled model (``model_transaction_policy
{ decoupled: true }`` in its config, or in a composing model's config for an ensemble): one request,
many responses. Read from the server, so a load test needs no spec.

Shared by the locustfile (which must import no locust here), the CLI and benchmarks/streaming.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from toolkit.client import Signature, fetch_signature, strip_scheme
from toolkit.core.errors import CompoundError
from toolkit.loadtest.inputs import Request


def streams(url: str, protocol: str, signature: Signature) -> bool:
    """Whether the server answers this pipeline with a stream: its own config is decoupled, or (an
    ensemble) one of its steps' is."""
    if signature.decoupled:
        return True
    return any(fetch_signature(name, url, protocol).decoupled for name in signature.composing)  # type: ignore[arg-type]


# --- one stream -----------------------------------------------------------------------------------


@dataclass
class StreamTiming:
    """One stream as the client saw it: when it was sent, when each token (response) arrived."""

    sent: float  # time.perf_counter() at the request
    arrivals: list[float] = field(default_factory=list)
    error: Optional[str] = None
    ended: float = 0.0

    @property
    def tokens(self) -> int:
        return len(self.arrivals)

    @property
    def ttft_ms(self) -> Optional[float]:
        return (self.arrivals[0] - self.sent) * 1000.0 if self.arrivals else None

    def itl_ms(self) -> list[float]:
        """Gaps between consecutive tokens."""
        return [(b - a) * 1000.0 for a, b in zip(self.arrivals, self.arrivals[1:])]

    @property
    def total_ms(self) -> float:
        return ((self.ended or time.perf_counter()) - self.sent) * 1000.0


class StreamError(Exception):
    """A stream that failed (an error response, or no token at all), with the server's message."""


def grpc_request(pipeline: str, request: Request) -> Any:
    """The ModelInferRequest of one stream (tritonclient's own encoding of the inputs)."""
    from tritonclient.grpc._utils import _get_inference_request

    return _get_inference_request(
        model_name=pipeline,
        inputs=request.grpc_inputs(),
        model_version="",
        request_id="",
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )


def grpc_stream(
    client: Any, infer_request: Any, timeout: float, on_token: Optional[Callable[[Any], None]] = None
) -> StreamTiming:
    """Send one request on its own ModelStreamInfer stream (a tritonclient.grpc client's channel),
    half-close, and time every response until the server ends the stream."""
    timing = StreamTiming(time.perf_counter())
    try:
        for response in client._client_stub.ModelStreamInfer(iter([infer_request]), timeout=timeout):
            if response.error_message:
                timing.error = response.error_message
                break
            timing.arrivals.append(time.perf_counter())
            if on_token is not None:
                on_token(response.infer_response)
    except Exception as exc:  # noqa: BLE001 - a broken stream is a failed stream, never a crash
        code = getattr(exc, "code", None)
        details = getattr(exc, "details", None)
        timing.error = f"{code().name}: {details()}" if callable(code) and callable(details) else str(exc)
    timing.ended = time.perf_counter()
    if timing.error is None and not timing.arrivals:
        timing.error = "the stream ended without a response"
    return timing


def sse_body(request: Request) -> bytes:
    """The generate_stream body: the inputs by name, one-element tensors as plain values."""
    body: dict[str, Any] = {}
    for tensor in request.tensors:
        body[tensor.name] = tensor.data[0] if len(tensor.data) == 1 else list(tensor.data)
    return json.dumps(body).encode()


def sse_url(url: str, pipeline: str) -> str:
    return f"http://{strip_scheme(url)}/v2/models/{pipeline}/generate_stream"


def read_sse(
    lines: Iterator[bytes], timing: StreamTiming, on_event: Optional[Callable[[dict[str, Any]], None]] = None
) -> StreamTiming:
    """Time every ``data:`` event of a server-sent event stream (one per response); an event with an
    ``error`` ends the stream as failed."""
    try:
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if isinstance(event, dict) and "error" in event:
                timing.error = str(event["error"])
                break
            timing.arrivals.append(time.perf_counter())
            if on_event is not None:
                on_event(event)
    except (OSError, ValueError) as exc:
        timing.error = f"the event stream broke: {exc}"
    timing.ended = time.perf_counter()
    if timing.error is None and not timing.arrivals:
        timing.error = "the stream ended without an event"
    return timing


# --- a run's figures ------------------------------------------------------------------------------


class StreamRecorder:
    """Raw TTFT and inter-token gaps of every stream of a process (locust rounds response times to
    whole milliseconds, too coarse for token gaps); workers hand theirs to the master to merge."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.ttft_ms: list[float] = []
        self.itl_ms: list[float] = []
        self.tokens = 0
        self.completed = 0
        self.failed = 0
        self.first_sent: Optional[float] = None  # wall clock (time.time()) over all processes
        self.last_token: Optional[float] = None

    def add(self, timing: StreamTiming) -> None:
        now = time.time()
        sent_wall = now - (time.perf_counter() - timing.sent)
        self.first_sent = sent_wall if self.first_sent is None else min(self.first_sent, sent_wall)
        if timing.arrivals:
            last = now - (time.perf_counter() - timing.arrivals[-1])
            self.last_token = last if self.last_token is None else max(self.last_token, last)
            self.ttft_ms.append(float(timing.ttft_ms or 0.0))
            self.itl_ms.extend(timing.itl_ms())
            self.tokens += timing.tokens
        if timing.error is None:
            self.completed += 1
        else:
            self.failed += 1

    def take(self) -> dict[str, Any]:
        """This process's records since the last take (for the master), cleared here."""
        data = {
            "ttft_ms": self.ttft_ms,
            "itl_ms": self.itl_ms,
            "tokens": self.tokens,
            "completed": self.completed,
            "failed": self.failed,
            "first_sent": self.first_sent,
            "last_token": self.last_token,
        }
        self.clear()
        return data

    def merge(self, data: dict[str, Any]) -> None:
        self.ttft_ms.extend(data.get("ttft_ms") or [])
        self.itl_ms.extend(data.get("itl_ms") or [])
        self.tokens += int(data.get("tokens") or 0)
        self.completed += int(data.get("completed") or 0)
        self.failed += int(data.get("failed") or 0)
        for key, pick in (("first_sent", min), ("last_token", max)):
            theirs, mine = data.get(key), getattr(self, key)
            if theirs is not None:
                setattr(self, key, theirs if mine is None else pick(mine, theirs))

    def figures(self) -> StreamStats:
        span = (self.last_token - self.first_sent) if self.first_sent and self.last_token else 0.0
        return StreamStats(
            streams_completed=self.completed,
            streams_failed=self.failed,
            tokens=self.tokens,
            tokens_per_s=round(self.tokens / span, 1) if span > 0 else 0.0,
            tokens_per_stream=round(self.tokens / len(self.ttft_ms), 2) if self.ttft_ms else 0.0,
            ttft_p50_ms=_percentile(self.ttft_ms, 50),
            ttft_p95_ms=_percentile(self.ttft_ms, 95),
            ttft_p99_ms=_percentile(self.ttft_ms, 99),
            itl_p50_ms=_percentile(self.itl_ms, 50),
            itl_p95_ms=_percentile(self.itl_ms, 95),
        )


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else 0.0


@dataclass
class StreamStats:
    """A streaming run's figures: time to first token, inter-token latency, tokens/s, streams."""

    streams_completed: int = 0
    streams_failed: int = 0
    tokens: int = 0
    tokens_per_s: float = 0.0
    tokens_per_stream: float = 0.0
    ttft_p50_ms: float = 0.0
    ttft_p95_ms: float = 0.0
    ttft_p99_ms: float = 0.0
    itl_p50_ms: float = 0.0
    itl_p95_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stream_gate(stream: Optional[StreamStats], ttft_p95_slo_ms: Optional[float]) -> list[str]:
    """The TTFT SLO, in words when broken; empty when the run passes (or sets no TTFT SLO)."""
    if ttft_p95_slo_ms is None:
        return []
    if stream is None or not stream.streams_completed:
        return ["no stream completed"]
    if stream.ttft_p95_ms > ttft_p95_slo_ms:
        return [f"TTFT p95 {stream.ttft_p95_ms:g} ms is above the SLO of {ttft_p95_slo_ms:g} ms"]
    return []


def format_stream(stream: StreamStats) -> str:
    """The streaming figures as a two-line table."""
    header = ["Streams ok", "Failed", "Tokens", "Tokens/s", "TTFT p50", "TTFT p95", "TTFT p99", "ITL p50", "ITL p95"]
    values = [
        str(stream.streams_completed),
        str(stream.streams_failed),
        str(stream.tokens),
        f"{stream.tokens_per_s:.1f}",
        *(f"{v:.1f} ms" for v in (stream.ttft_p50_ms, stream.ttft_p95_ms, stream.ttft_p99_ms)),
        *(f"{v:.2f} ms" for v in (stream.itl_p50_ms, stream.itl_p95_ms)),
    ]
    widths = [max(len(h), len(v)) for h, v in zip(header, values)]
    return "\n".join(
        [
            "Streaming (per stream: time to first token, inter-token latency):",
            "  ".join(h.ljust(w) for h, w in zip(header, widths)),
            "  ".join(v.ljust(w) for v, w in zip(values, widths)),
        ]
    )


def check_ttft_slo(ttft_p95_slo_ms: Optional[float], streaming: bool, pipeline: str) -> None:
    """--ttft-p95-slo-ms is for streaming pipelines only: say so rather than gate on nothing."""
    if ttft_p95_slo_ms is None:
        return
    if not ttft_p95_slo_ms > 0:
        raise CompoundError(f"--ttft-p95-slo-ms must be above 0, got {ttft_p95_slo_ms:g}")
    if not streaming:
        raise CompoundError(
            f"--ttft-p95-slo-ms: pipeline '{pipeline}' does not stream (the server does not serve it as a "
            "decoupled model)",
            hint="use --p95-slo-ms for a pipeline that answers once",
        )
