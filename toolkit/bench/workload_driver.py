"""The load generator of `compound bench --workload`: closed-loop asyncio gRPC clients whose number per
pipeline follows a schedule of phases, in its own process so its CPU is not the server's.

Each pipeline has a pool of coroutines; in a phase the first `concurrency[pipeline]` of them send a
request, wait for its answer and send the next, the rest wait for a phase that needs them. A
coroutine that a new phase no longer needs finishes the request it has in flight first, so the
number of requests in flight follows the schedule exactly, with no overlap of two phases' clients.
Every request is recorded: start (seconds since the schedule began), latency, pipeline, ok. When its
inputs are built and its channel is open it prints `START <time.monotonic() of the first phase>`, so
the parent samples the server on the same clock.

Run: ``python -m toolkit.bench.workload_driver JOB.json`` (the result is JSON at job["result"]).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Target:
    """One pipeline as the client calls it: one gRPC request to its ensemble or orchestrator."""

    name: str
    inputs: dict[str, str]  # input name -> KServe v2 datatype
    outputs: list[str]
    rows_file: str  # .npz of request rows per input, batched on axis 0


@dataclass
class WorkloadJob:
    url: str
    targets: list[Target]
    phases: list[dict[str, Any]]  # {"name", "seconds", "concurrency": {pipeline: clients}}
    result: str
    timeout_s: float = 30.0

    @staticmethod
    def load(path: str | Path) -> WorkloadJob:
        data = json.loads(Path(path).read_text())
        data["targets"] = [Target(**t) for t in data["targets"]]
        return WorkloadJob(**data)

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))


@dataclass
class Records:
    """Every request, column-wise (compact in JSON, a numpy array each when read back)."""

    start_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    pipeline: list[int] = field(default_factory=list)  # index into the job's targets
    ok: list[bool] = field(default_factory=list)

    def add(self, start: float, latency: float, pipeline: int, ok: bool) -> None:
        self.start_s.append(round(start, 5))
        self.latency_s.append(round(latency, 6))
        self.pipeline.append(pipeline)
        self.ok.append(ok)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(job: WorkloadJob) -> dict[str, Any]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(job.url)
    prebuilt: list[list[list[Any]]] = []  # per target, per row: the request's inputs, built once
    for target in job.targets:
        rows = dict(np.load(target.rows_file, allow_pickle=True))
        pool = len(next(iter(rows.values())))
        per_row = []
        for i in range(pool):
            inputs = []
            for name, datatype in target.inputs.items():
                item = grpcclient.InferInput(name, [1, *rows[name].shape[1:]], datatype)
                item.set_data_from_numpy(rows[name][i : i + 1])
                inputs.append(item)
            per_row.append(inputs)
        prebuilt.append(per_row)
    requested = [[grpcclient.InferRequestedOutput(n) for n in t.outputs] for t in job.targets]
    records = Records()
    errors: list[str] = []
    wanted = [0] * len(job.targets)
    state: dict[str, Any] = {"changed": asyncio.Event(), "stop": False}
    await client.is_server_ready()  # the channel is open before the clock starts
    t0 = time.monotonic() + 0.2
    print(f"START {t0!r}", flush=True)

    async def client_loop(p: int, k: int) -> None:
        target, rows = job.targets[p], prebuilt[p]
        i = k
        while not state["stop"]:
            if k >= wanted[p]:
                await state["changed"].wait()
                continue
            start = time.monotonic()
            ok = True
            try:
                await client.infer(target.name, rows[i % len(rows)], outputs=requested[p], client_timeout=job.timeout_s)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and sampled
                ok = False
                if len(errors) < 10:
                    errors.append(f"{target.name}: {type(exc).__name__}: {str(exc)[:300]}")
            records.add(start - t0, time.monotonic() - start, p, ok)
            i += 997  # a different row next time, the same sequence in every run

    def set_phase(concurrency: dict[str, int]) -> None:
        for p, target in enumerate(job.targets):
            wanted[p] = int(concurrency.get(target.name, 0))
        changed, state["changed"] = state["changed"], asyncio.Event()
        changed.set()

    most = [max(int(ph["concurrency"].get(t.name, 0)) for ph in job.phases) for t in job.targets]
    tasks = [asyncio.create_task(client_loop(p, k)) for p in range(len(job.targets)) for k in range(most[p])]
    boundaries = []
    try:
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        cpu0 = _cpu_s()
        elapsed = 0.0
        for phase in job.phases:
            boundaries.append(time.monotonic() - t0)
            set_phase(phase["concurrency"])
            elapsed += float(phase["seconds"])
            await asyncio.sleep(max(0.0, t0 + elapsed - time.monotonic()))
        end = time.monotonic() - t0
        cpu = _cpu_s() - cpu0
        state["stop"] = True
        set_phase({})
        await asyncio.wait(tasks, timeout=job.timeout_s + 5)
    finally:
        for task in tasks:
            task.cancel()
        await client.close()
    return {
        "pipelines": [t.name for t in job.targets],
        "phase_starts_s": boundaries,
        "end_s": end,
        "client_cpu_s": cpu,
        "client_cpu_pct": 100.0 * cpu / max(end, 1e-9),
        "error_samples": errors,
        "records": asdict(records),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m toolkit.bench.workload_driver JOB.json", file=sys.stderr)
        return 2
    job = WorkloadJob.load(argv[0])
    result = asyncio.run(run(job))
    Path(job.result).write_text(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
