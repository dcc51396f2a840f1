"""The load generator: a lean closed-loop async gRPC client, run as its own process so its CPU is
measured apart from the server's (and so it cannot steal the server's GIL).

`concurrency` coroutines each send a request, wait for its answer and send the next. A request is
one pipeline call on the server (ensemble profiles) or a chain of per-model calls the client makes
itself, stage by stage (the static profile): the `stages` of the job say which.

Run: ``python -m toolkit.bench.driver JOB.json`` (the runner writes JOB.json; the result is JSON
at job["result"]).
"""

from __future__ import annotations

import asyncio
import io
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Call:
    """One gRPC request: model input name -> tensor, model output name -> tensor."""

    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]


@dataclass
class Job:
    url: str
    stages: list[list[Call]]
    datatypes: dict[str, str]  # tensor -> KServe v2 datatype
    rows_file: str  # .npz of request rows per pipeline input, batched on axis 0
    concurrency: int
    duration_s: float
    warmup_s: float
    result: str
    timeout_s: float = 30.0
    # "triton-grpc"; "triton-http": Triton's KServe HTTP endpoint (url host:port, one-call stages only);
    # "http-npz": POST one .npz of the inputs to `url`, read one .npz back
    protocol: str = "triton-grpc"

    @staticmethod
    def load(path: str | Path) -> Job:
        data = json.loads(Path(path).read_text())
        data["stages"] = [[Call(**c) for c in stage] for stage in data["stages"]]
        return Job(**data)

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))


@dataclass
class DriverResult:
    concurrency: int
    duration_s: float
    completed: int
    errors: int
    throughput_rps: float
    latency_ms: dict[str, float]  # p50, p90, p95, p99, mean, max
    client_cpu_s: float
    client_cpu_pct: float  # of one core
    error_samples: list[str] = field(default_factory=list)


def summarize(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {f"p{p}": float("nan") for p in PERCENTILES} | {"mean": float("nan"), "max": float("nan")}
    arr = np.asarray(latencies_s) * 1e3
    stats = {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}
    stats["mean"] = float(arr.mean())
    stats["max"] = float(arr.max())
    return stats


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Arrays as one .npz; strings travel as fixed-width bytes, so no pickle is ever needed."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: (v.astype(np.bytes_) if v.dtype == np.object_ else v) for k, v in arrays.items()})
    return buffer.getvalue()


def from_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: (npz[k].astype(np.object_) if npz[k].dtype.kind == "S" else npz[k]) for k in npz.files}


async def run_job(job: Job) -> DriverResult:
    if job.protocol == "http-npz":
        return await _run_closed_loop(job, *await _http_sender(job))
    if job.protocol == "triton-http":
        return await _run_closed_loop(job, *await _triton_http_sender(job))
    return await _run_closed_loop(job, *await _grpc_sender(job))


async def _http_sender(job: Job) -> tuple[Any, Any, int]:
    """POST pre-serialised rows to an HTTP endpoint (the Ray Serve peer)."""
    import aiohttp

    rows = dict(np.load(job.rows_file, allow_pickle=True))
    pool = len(next(iter(rows.values())))
    bodies = [npz_bytes({t: v[i : i + 1] for t, v in rows.items()}) for i in range(pool)]
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=job.timeout_s)
    )

    async def one_request(i: int) -> None:
        async with session.post(job.url, data=bodies[i]) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")

    return one_request, session.close, pool


async def _triton_http_sender(job: Job) -> tuple[Any, Any, int]:
    """One pipeline call per request over Triton's HTTP endpoint: Triton 2.51 survives traced load over
    HTTP that crashes it over gRPC (docs/observability.md, "What it costs")."""
    import tritonclient.http.aio as httpclient

    if len(job.stages) != 1 or len(job.stages[0]) != 1:
        raise ValueError("the triton-http protocol sends one call per request (one stage of one call)")
    call = job.stages[0][0]
    rows = dict(np.load(job.rows_file, allow_pickle=True))
    pool = len(next(iter(rows.values())))

    def inputs_of(i: int) -> list[Any]:
        items = []
        for name, tensor in call.inputs.items():
            value = rows[tensor][i : i + 1]
            item = httpclient.InferInput(name, list(value.shape), job.datatypes[tensor])
            item.set_data_from_numpy(value, binary_data=True)
            items.append(item)
        return items

    prebuilt = [inputs_of(i) for i in range(pool)]
    requested = [httpclient.InferRequestedOutput(n, binary_data=True) for n in call.outputs]
    client = httpclient.InferenceServerClient(job.url, conn_limit=job.concurrency, conn_timeout=job.timeout_s)

    async def one_request(i: int) -> None:
        await client.infer(call.model, prebuilt[i], outputs=requested)

    return one_request, client.close, pool


async def _grpc_sender(job: Job) -> tuple[Any, Any, int]:
    import tritonclient.grpc.aio as grpcclient

    rows = dict(np.load(job.rows_file, allow_pickle=True))
    pool = len(next(iter(rows.values())))
    first = job.stages[0]

    def tensor_input(name: str, tensor: str, value: np.ndarray) -> Any:
        item = grpcclient.InferInput(name, list(value.shape), job.datatypes[tensor])
        item.set_data_from_numpy(value)
        return item

    # the first stage's inputs are built once per row: the client spends its CPU on sending only
    prebuilt = [
        [[tensor_input(n, t, rows[t][i : i + 1]) for n, t in call.inputs.items()] for call in first]
        for i in range(pool)
    ]
    requested = [[[grpcclient.InferRequestedOutput(n) for n in call.outputs] for call in stage] for stage in job.stages]

    client = grpcclient.InferenceServerClient(job.url)

    async def one_request(i: int) -> None:
        env: dict[str, np.ndarray] = {t: v[i : i + 1] for t, v in rows.items()} if len(job.stages) > 1 else {}
        for s, stage in enumerate(job.stages):
            if s == 0:
                inputs_per_call = prebuilt[i]
            else:
                inputs_per_call = [[tensor_input(n, t, env[t]) for n, t in call.inputs.items()] for call in stage]
            results = await asyncio.gather(
                *(
                    client.infer(call.model, inputs_per_call[k], outputs=requested[s][k], client_timeout=job.timeout_s)
                    for k, call in enumerate(stage)
                )
            )
            if s + 1 < len(job.stages):
                for call, result in zip(stage, results):
                    for out_name, tensor in call.outputs.items():
                        env[tensor] = result.as_numpy(out_name)

    return one_request, client.close, pool


async def _run_closed_loop(job: Job, one_request: Any, close: Any, pool: int) -> DriverResult:
    latencies: list[float] = []
    errors: list[str] = []
    error_count = 0
    phase = {"measure_from": 0.0, "measure_to": 0.0, "stop": False}

    async def worker(offset: int) -> None:
        nonlocal error_count
        i = offset
        while not phase["stop"]:
            start = time.perf_counter()
            try:
                await one_request(i % pool)
                ok = True
            except Exception as exc:  # noqa: BLE001 - every failure is counted and sampled
                ok = False
                message = f"{type(exc).__name__}: {exc}"
            end = time.perf_counter()
            if phase["measure_from"] <= start and end <= phase["measure_to"]:
                if ok:
                    latencies.append(end - start)
                else:
                    error_count += 1
                    if len(errors) < 5:
                        errors.append(message[:300])
            i += job.concurrency

    try:
        now = time.perf_counter()
        phase["measure_from"] = now + job.warmup_s
        phase["measure_to"] = phase["measure_from"] + job.duration_s
        tasks = [asyncio.create_task(worker(k)) for k in range(job.concurrency)]
        await asyncio.sleep(job.warmup_s)
        cpu0 = _cpu_s()
        print("MEASURE_START", flush=True)
        await asyncio.sleep(max(0.0, phase["measure_to"] - time.perf_counter()))
        cpu1 = _cpu_s()
        print("MEASURE_END", flush=True)
        phase["stop"] = True
        await asyncio.wait(tasks, timeout=job.timeout_s + 5)
    finally:
        await close()
    cpu = cpu1 - cpu0
    return DriverResult(
        concurrency=job.concurrency,
        duration_s=job.duration_s,
        completed=len(latencies),
        errors=error_count,
        throughput_rps=len(latencies) / job.duration_s,
        latency_ms=summarize(latencies),
        client_cpu_s=cpu,
        client_cpu_pct=100.0 * cpu / job.duration_s,
        error_samples=errors,
    )


def first_response(job: Job, timeout_s: float) -> tuple[float, float]:
    """Retry one request until it succeeds: (seconds spent until then, that request's latency)."""
    if job.protocol == "http-npz":
        return _first_http_response(job, timeout_s)
    import tritonclient.grpc as grpcclient

    rows = dict(np.load(job.rows_file, allow_pickle=True))
    client = grpcclient.InferenceServerClient(job.url)
    began = time.perf_counter()
    last_error = ""
    try:
        while time.perf_counter() - began < timeout_s:
            start = time.perf_counter()
            try:
                env = {t: v[:1] for t, v in rows.items()}
                for stage in job.stages:
                    for call in stage:
                        inputs = []
                        for name, tensor in call.inputs.items():
                            item = grpcclient.InferInput(name, list(env[tensor].shape), job.datatypes[tensor])
                            item.set_data_from_numpy(env[tensor])
                            inputs.append(item)
                        result = client.infer(call.model, inputs, client_timeout=job.timeout_s)
                        for out_name, tensor in call.outputs.items():
                            env[tensor] = result.as_numpy(out_name)
                end = time.perf_counter()
                return end - began, end - start
            except Exception as exc:  # noqa: BLE001 - not ready yet: retry until the deadline
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)
    finally:
        client.close()
    raise TimeoutError(f"no successful response within {timeout_s:.0f} s: {last_error}")


def _first_http_response(job: Job, timeout_s: float) -> tuple[float, float]:
    import urllib.request

    rows = dict(np.load(job.rows_file, allow_pickle=True))
    body = npz_bytes({t: v[:1] for t, v in rows.items()})
    began = time.perf_counter()
    last_error = ""
    while time.perf_counter() - began < timeout_s:
        start = time.perf_counter()
        try:
            # job.url is the loopback Ray Serve ingress we started (http://127.0.0.1:<port>/)
            request = urllib.request.Request(job.url, data=body, method="POST")  # noqa: S310 - loopback URL
            with urllib.request.urlopen(request, timeout=job.timeout_s) as response:  # noqa: S310 - loopback, as above
                response.read()
            end = time.perf_counter()
            return end - began, end - start
        except Exception as exc:  # noqa: BLE001 - not ready yet: retry until the deadline
            last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
    raise TimeoutError(f"no successful response within {timeout_s:.0f} s: {last_error}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m toolkit.bench.driver JOB.json", file=sys.stderr)
        return 2
    job = Job.load(argv[0])
    result = asyncio.run(run_job(job))
    Path(job.result).write_text(json.dumps(asdict(result), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
