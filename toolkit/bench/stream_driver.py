"""The load generator of `compound bench` on a streaming pipeline: closed-loop streams, each timed token
by token, run as its own process so its CPU is measured apart from the server's.

`concurrency` threads each send one request, read its whole stream (gRPC ``ModelStreamInfer``, or
HTTP server-sent events from ``generate_stream``), then send the next. The static baseline's pipeline
is not decoupled: each request is one plain gRPC ``infer`` whose answer holds every token at once
(its ``compound_tokens`` output says how many), so its time to first token is the whole answer's.

Run: ``python -m toolkit.bench.stream_driver JOB.json``; prints MEASURE_START / MEASURE_END around
the measured window (the runner samples the server's CPU there) and writes the result to job.result.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from toolkit.loadtest.inputs import Request, Tensor
from toolkit.loadtest.streaming import StreamTiming, grpc_request, grpc_stream, read_sse, sse_body, sse_url

WHOLE_TOKENS = "compound_tokens"  # the static baseline's count of tokens per answer (bench/whole_answer.py)


@dataclass
class StreamJob:
    url: str  # gRPC HOST:PORT, or HTTP HOST:PORT for protocol "http"
    pipeline: str
    requests: list[list[tuple[str, str, list[int], list[Any]]]]  # per request: (name, datatype, shape, data)
    concurrency: int
    duration_s: float
    warmup_s: float
    result: str
    protocol: str = "grpc"  # or "http" (server-sent events)
    whole: bool = False  # the static baseline: one plain infer per request, every token at the end
    timeout_s: float = 60.0

    @staticmethod
    def load(path: str | Path) -> StreamJob:
        return StreamJob(**json.loads(Path(path).read_text()))

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    def prepared(self) -> list[Any]:
        """Each distinct request once, encoded as its mode sends it (built before the load, not per call):
        InferInputs (static), a ModelInferRequest (gRPC stream) or an SSE body (HTTP)."""
        out: list[Any] = []
        for tensors in self.requests:
            request = Request(tuple(Tensor(n, d, tuple(s), tuple(v)) for n, d, s, v in tensors))
            if self.whole:
                out.append(request.grpc_inputs())
            elif self.protocol == "grpc":
                out.append(grpc_request(self.pipeline, request))
            else:
                out.append(sse_body(request))
        return out


def _whole_answer(client: Any, pipeline: str, inputs: list[Any], timeout: float) -> StreamTiming:
    """One static answer: every token arrives with the response."""
    timing = StreamTiming(time.perf_counter())
    try:
        result = client.infer(pipeline, inputs, client_timeout=timeout)
        now = time.perf_counter()
        timing.arrivals = [now] * int(np.asarray(result.as_numpy(WHOLE_TOKENS)).sum())
    except Exception as exc:  # noqa: BLE001 - a failed answer is counted, never a crash
        timing.error = str(exc)
    timing.ended = time.perf_counter()
    return timing


def _sse_answer(session: Any, url: str, body: bytes, timeout: float) -> StreamTiming:
    timing = StreamTiming(time.perf_counter())
    try:
        with session.post(url, data=body, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                timing.error = f"HTTP {response.status_code}: {response.text[:200]}"
                timing.ended = time.perf_counter()
                return timing
            return read_sse(response.iter_lines(), timing)
    except Exception as exc:  # noqa: BLE001 - a broken connection is a failed stream
        timing.error = str(exc)
        timing.ended = time.perf_counter()
        return timing


def run(job: StreamJob) -> dict[str, Any]:
    timings: list[StreamTiming] = []
    lock = threading.Lock()
    begin = time.perf_counter()
    measure_from, stop_at = begin + job.warmup_s, begin + job.warmup_s + job.duration_s
    prepared = job.prepared()
    stream_url = sse_url(job.url, job.pipeline)

    def user(index: int) -> None:
        from toolkit.client import grpc_client

        client = grpc_client(job.url) if job.protocol == "grpc" else None
        session = None
        if job.protocol == "http":
            import requests

            session = requests.Session()
        asked = index
        try:
            while time.perf_counter() < stop_at:
                request = prepared[asked % len(prepared)]
                asked += job.concurrency
                if job.whole:
                    timing = _whole_answer(client, job.pipeline, request, job.timeout_s)
                elif client is not None:
                    timing = grpc_stream(client, request, job.timeout_s)
                else:
                    timing = _sse_answer(session, stream_url, request, job.timeout_s)
                with lock:
                    timings.append(timing)
        finally:
            if client is not None:
                client.close()
            if session is not None:
                session.close()

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(job.concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu0 = _own_cpu()
    print("MEASURE_START", flush=True)
    time.sleep(max(0.0, stop_at - time.perf_counter()))
    print("MEASURE_END", flush=True)
    cpu1 = _own_cpu()
    for thread in threads:
        thread.join(job.timeout_s)
    return figures(timings, measure_from, stop_at, job, 100.0 * (cpu1 - cpu0) / job.duration_s)


def figures(
    timings: list[StreamTiming], measure_from: float, stop_at: float, job: StreamJob, client_cpu_pct: float
) -> dict[str, Any]:
    """The point: streams sent in the window (TTFT, ITL, completed/failed), tokens that arrived in it."""
    kept = [t for t in timings if measure_from <= t.sent < stop_at]
    ok = [t for t in kept if t.error is None]
    tokens = sum(1 for t in timings for a in t.arrivals if measure_from <= a <= stop_at)
    ttft = [t.ttft_ms for t in ok if t.ttft_ms is not None]
    itl = [g for t in ok for g in t.itl_ms()]
    return {
        "concurrency": job.concurrency,
        "protocol": job.protocol,
        "streams_completed": len(ok),
        "streams_failed": len(kept) - len(ok),
        "errors": sorted({str(t.error)[:300] for t in kept if t.error})[:3],
        "tokens": tokens,
        "tokens_per_s": round(tokens / job.duration_s, 1),
        "tokens_per_stream": round(float(np.mean([t.tokens for t in ok])), 1) if ok else 0.0,
        "ttft_ms": _percentiles(ttft),
        "itl_ms": _percentiles(itl),
        "answer_ms": _percentiles([t.total_ms for t in ok]),
        "client_cpu_pct": round(client_cpu_pct, 1),
    }


def _percentiles(values: Sequence[Optional[float]]) -> dict[str, float]:
    kept = [v for v in values if v is not None]
    if not kept:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    return {f"p{q}": round(float(np.percentile(kept, q)), 3) for q in (50, 95, 99)}


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    job = StreamJob.load(argv[0])
    Path(job.result).write_text(json.dumps(run(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
