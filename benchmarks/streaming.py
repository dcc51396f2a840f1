"""What streaming and continuous batching give: the streaming RAG example (examples/rag_stream,
retrieve then generate) served three ways by one hand-written Python model
(benchmarks/streaming_model.py) on the embedded Triton, under closed-loop load of 1, 4 and 16
concurrent questions over gRPC:

* ``batched``: decoupled, continuous batching (a stepping thread advances every stream with one step),
* ``single``: decoupled, the plain generator serving one stream at a time,
* ``static``: not decoupled, dynamic batching; every answer comes once, whole, at the end.

Per point: time to first token p50/p95 (for ``static``, the whole answer), inter-token latency,
aggregate tokens/s, answers completed. The headline ratios: ``batched`` tokens/s at 16 streams over
its tokens/s at 1 (target >= 6x) and its TTFT p95 at 16 over at 1 (target <= 2x).

Run (about 3 minutes on 2 cores):

    .venv/bin/python benchmarks/streaming.py --out benchmarks/results/streaming [--hidden 512]
    .venv/bin/python benchmarks/streaming.py --url 127.0.0.1:8001 --out DIR   # a server already running
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.client import grpc_client  # noqa: E402
from toolkit.loadtest.inputs import Request, Tensor  # noqa: E402
from toolkit.loadtest.streaming import StreamTiming, grpc_request, grpc_stream  # noqa: E402

EXAMPLE = ROOT / "examples" / "rag_stream"
MODES = ("batched", "single", "static")
QUESTIONS = [
    "How do bees make honey?",
    "What does the queen do?",
    "How do bees survive the winter?",
    "What is the varroa mite?",
    "Why does a colony swarm?",
    "What does a beekeeper wear?",
    "How do bees talk to each other?",
    "What is propolis?",
    "How is honey harvested?",
    "What do drones do?",
    "How do bees see flowers?",
    "How can people help bees?",
]

CONFIG = """# benchmarks/streaming.py: the streaming RAG example served in mode '{mode}'
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
{policy}
input [ {{ name: "query", data_type: TYPE_STRING, dims: [ 1 ] }} ]
output [
  {{ name: "token", data_type: TYPE_STRING, dims: [ {token_dims} ] }},
  {{ name: "index", data_type: TYPE_INT32, dims: [ {token_dims} ] }}
]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
parameters {{ key: "mode", value: {{ string_value: "{mode}" }} }}
parameters {{ key: "switch_interval_s", value: {{ string_value: "{switch_interval_s}" }} }}
parameters {{ key: "handler_parameters", value: {{ string_value: '{handler_parameters}' }} }}
"""


def build_repository(target: Path, handler_parameters: dict[str, Any], switch_interval_s: float) -> Path:
    """One model per mode, each with the model file and a copy of the example's handlers."""
    for mode in MODES:
        folder = target / f"rag_{mode}"
        version = folder / "1"
        version.mkdir(parents=True)
        shutil.copyfile(ROOT / "benchmarks" / "streaming_model.py", version / "model.py")
        shutil.copytree(
            EXAMPLE / "stream_handlers", version / "stream_handlers", ignore=shutil.ignore_patterns("__pycache__")
        )
        static = mode == "static"
        (folder / "config.pbtxt").write_text(
            CONFIG.format(
                mode=mode,
                name=f"rag_{mode}",
                max_batch_size=16 if static else 0,
                policy="dynamic_batching { max_queue_delay_microseconds: 0 }"
                if static
                else "model_transaction_policy { decoupled: true }",
                token_dims="-1" if static else "1",
                handler_parameters=json.dumps(handler_parameters),
                switch_interval_s=switch_interval_s,
            ),
            encoding="utf-8",
        )
    return target


def one_answer(client: Any, mode: str, question: str, timeout: float) -> StreamTiming:
    """One question: a stream of tokens (decoupled modes) or one whole answer (static), timed."""
    if mode != "static":
        request = Request((Tensor("query", "BYTES", (1,), (question,)),))
        return grpc_stream(client, grpc_request(f"rag_{mode}", request), timeout)
    import tritonclient.grpc as grpcclient

    infer_input = grpcclient.InferInput("query", [1, 1], "BYTES")
    infer_input.set_data_from_numpy(np.array([[question.encode()]], dtype=object))
    timing = StreamTiming(time.perf_counter())
    try:
        result = client.infer("rag_static", [infer_input], client_timeout=timeout)
        now = time.perf_counter()
        timing.arrivals = [now] * result.as_numpy("token").size  # every token arrives at once
    except Exception as exc:  # noqa: BLE001 - a failed answer is counted, never a crash
        timing.error = str(exc)
    timing.ended = time.perf_counter()
    return timing


def load(url: str, mode: str, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Closed loop: `concurrency` threads, each asking the next question as soon as its answer ends."""
    timings: list[tuple[float, StreamTiming]] = []
    lock = threading.Lock()
    begin = time.perf_counter()
    measure_from, stop_at = begin + warmup_s, begin + warmup_s + duration_s

    def user(index: int) -> None:
        client = grpc_client(url)
        try:
            asked = index
            while time.perf_counter() < stop_at:
                timing = one_answer(client, mode, QUESTIONS[asked % len(QUESTIONS)], timeout=30.0)
                asked += concurrency
                with lock:
                    timings.append((timing.sent, timing))
        finally:
            client.close()

    threads = [threading.Thread(target=user, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = [t for sent, t in timings if sent >= measure_from]
    ok = [t for t in kept if t.error is None]
    # tokens/s over the measured window: every token that arrived in it
    tokens = sum(1 for t in kept for a in t.arrivals if measure_from <= a <= stop_at)
    itl = [g for t in ok for g in t.itl_ms()]
    ttft = [t.ttft_ms for t in ok if t.ttft_ms is not None]
    return {
        "mode": mode,
        "concurrency": concurrency,
        "load_average_1m": round(os.getloadavg()[0], 1),  # the shared machine's load during the point
        "answers": len(ok),
        "failed": len(kept) - len(ok),
        "errors": sorted({t.error for t in kept if t.error})[:3],
        "tokens_per_s": round(tokens / duration_s, 1),
        "tokens_per_answer": round(float(np.mean([t.tokens for t in ok])), 1) if ok else 0.0,
        "ttft_p50_ms": _pct(ttft, 50),
        "ttft_p95_ms": _pct(ttft, 95),
        "itl_p50_ms": _pct(itl, 50),
        "itl_p95_ms": _pct(itl, 95),
        "answer_p50_ms": _pct([t.total_ms for t in ok], 50),
    }


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0


def step_costs(handler_parameters: dict[str, Any]) -> dict[str, float]:
    """The generator's own step cost in-process (ms) for 1 and 16 streams: what batching can save."""
    sys.path.insert(0, str(EXAMPLE))
    from stream_handlers import Generate, Retrieve

    retrieve, generate = Retrieve({}, "cpu"), Generate(handler_parameters, "cpu")
    query = np.array([[QUESTIONS[0].encode()]], dtype=object)
    inputs = {"query": query, "passage": retrieve(query)["passage"]}
    costs = {}
    for streams in (1, 16):
        best = float("inf")
        for _ in range(5):
            states = [generate.start(**inputs) for _ in range(streams)]
            began = time.perf_counter()
            for _ in range(10):
                generate.step(states)
            best = min(best, (time.perf_counter() - began) / 10)
        costs[f"step_ms_{streams}_streams"] = round(best * 1000, 3)
    return costs


def table(points: list[dict[str, Any]]) -> str:
    header = (
        "| mode | streams | answers | tokens/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms | answer p50 ms |"
    )
    lines = [header, "|" + " --- |" * 9]
    for p in points:
        lines.append(
            f"| {p['mode']} | {p['concurrency']} | {p['answers']} | {p['tokens_per_s']} | {p['ttft_p50_ms']} | "
            f"{p['ttft_p95_ms']} | {p['itl_p50_ms']} | {p['itl_p95_ms']} | {p['answer_p50_ms']} |"
        )
    return "\n".join(lines)


def ratios(points: list[dict[str, Any]]) -> dict[str, Optional[float]]:
    def point(mode: str, concurrency: int) -> Optional[dict[str, Any]]:
        return next((p for p in points if p["mode"] == mode and p["concurrency"] == concurrency), None)

    def ratio(a: Optional[dict[str, Any]], b: Optional[dict[str, Any]], key: str) -> Optional[float]:
        return round(a[key] / b[key], 2) if a and b and b[key] else None

    top = max(p["concurrency"] for p in points)
    return {
        f"batched_tokens_per_s_{top}_over_1": ratio(point("batched", top), point("batched", 1), "tokens_per_s"),
        f"batched_ttft_p95_{top}_over_1": ratio(point("batched", top), point("batched", 1), "ttft_p95_ms"),
        f"batched_over_single_tokens_per_s_at_{top}": ratio(
            point("batched", top), point("single", top), "tokens_per_s"
        ),
        f"single_ttft_p95_{top}_over_1": ratio(point("single", top), point("single", 1), "ttft_p95_ms"),
        f"static_over_batched_ttft_p95_at_{top}": ratio(point("static", top), point("batched", top), "ttft_p95_ms"),
        f"batched_over_static_tokens_per_s_at_{top}": ratio(
            point("batched", top), point("static", top), "tokens_per_s"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--url", help="gRPC HOST:PORT of a server already serving rag_batched/rag_single/rag_static")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--hidden", type=int, default=128, help="the generator's recurrent width (its step cost)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=0.005,
        help="the model's sys.setswitchinterval (Python's default 0.005)",
    )
    args = parser.parse_args()
    handler_parameters = {"max_tokens": 48, "min_tokens": 16, "hidden": args.hidden, "seed": 0}
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    server = None
    url = args.url
    if url is None:
        from tests.conftest import start_server

        work = Path(tempfile.mkdtemp(prefix="compound-streaming-bench-"))
        repo = build_repository(work / "repo", handler_parameters, args.switch_interval)
        server = start_server(repo, work)
        url = server.grpc_url
    points: list[dict[str, Any]] = []
    try:
        for mode in modes:
            for concurrency in levels:
                point = load(url, mode, concurrency, args.duration, args.warmup)
                points.append(point)
                print(json.dumps(point), flush=True)
    finally:
        if server is not None:
            server.stop()
    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"shared machine: {platform.machine()}, {os.cpu_count()} cores shared with other work",
        "handler_parameters": handler_parameters,
        "switch_interval_s": args.switch_interval,
        "in_process": step_costs(handler_parameters),
        "duration_s": args.duration,
        "points": points,
        "ratios": ratios(points),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"results-hidden{args.hidden}" + (
        f"-switch{args.switch_interval:g}" if args.switch_interval != 0.005 else ""
    )
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / f"{name}.md").write_text(
        f"`{report['command']}` ({report['machine']})\n\n{table(points)}\n\nratios: {json.dumps(report['ratios'])}\n"
        f"in-process step cost: {json.dumps(report['in_process'])}\n",
        encoding="utf-8",
    )
    print(table(points))
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()
