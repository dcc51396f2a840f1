"""What tracing costs: the bundled example (examples/textdemo, pipeline `classify`, an ensemble of
four components) served twice on the embedded Triton, once plain and once with
`--otlp-endpoint` at trace rate 1 (every request traced, Triton's spans and the runtime's), the
spans received by compound's OTLP receiver in this process (its CPU is reported apart:
`receiver_cpu_pct`). Closed-loop load at concurrency 16 from the project's load generator, over
HTTP by default (Triton 2.51 crashes under gRPC load traced at a low rate: docs/observability.md),
the two servers measured in turns (off, on, on, off, ...) so that the machine's drift hits both
alike; the throughput ratio is the mean of the per-pair ratios. It also checks that every request
of the traced runs reached the receiver as a whole trace.

Run (about 4 minutes on 2 cores):

    .venv/bin/python benchmarks/tracing.py --out benchmarks/results/tracing [--rate N] [--protocol grpc]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server  # noqa: E402
from toolkit.bench.driver import Call, Job  # noqa: E402
from toolkit.bench.measure import ProcessCpu, point_line, run_driver  # noqa: E402
from toolkit.observe.tracing import SpanCollector, format_critical_paths, pipeline_span, summarize_critical_paths  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402
from toolkit.targets.server import Tracing  # noqa: E402

TEXTS = [
    "I love this product",
    "terrible, awful service",
    "the match last night was great",
    "new phone release next week",
    "the gallery opens a new exhibition",
]


def load(
    server: LocalServer, work: Path, protocol: str, concurrency: int, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    rows = work / "rows.npz"
    texts = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(20_000)]  # distinct: no response-cache shortcut
    np.savez(rows, text=np.array([[t.encode()] for t in texts], dtype=object))
    job = Job(
        url=f"http://{server.http_url}" if protocol == "http" else server.grpc_url,
        stages=[[Call("classify", {"text": "text"}, {n: n for n in ("label", "confidence", "score", "topics")})]],
        datatypes={"text": "BYTES"},
        rows_file=str(rows),
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
        result=str(work / "result.json"),
        protocol="http-v2" if protocol == "http" else "triton-grpc",
    )
    assert server.pid is not None
    return run_driver(job, work, ProcessCpu(server.pid), lambda line: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tracing")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1, help="--trace-rate of the traced server")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http", help="the clients' protocol")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="compound-bench-tracing-"))
    repo = render_repository(plan_spec(ROOT / "examples" / "textdemo" / "pipeline.yaml"), work / "repo")
    runs: list[dict[str, Any]] = []
    with SpanCollector() as collector:
        plain = start_server(repo, work / "off")
        traced = start_server(repo, work / "on", tracing=Tracing(collector.endpoint, args.rate, "textdemo"))
        try:
            order = [("off", "on") if pair % 2 == 0 else ("on", "off") for pair in range(args.pairs)]
            for pair, sides in enumerate(order):
                for side in sides:
                    server = traced if side == "on" else plain
                    started, receiver_cpu = time.time_ns(), time.process_time()
                    point = load(
                        server, work / f"{side}-{pair}", args.protocol, args.concurrency, args.duration, args.warmup
                    )
                    ended, receiver_cpu = time.time_ns(), time.process_time() - receiver_cpu
                    # this process only receives spans meanwhile (the driver is a process of its own)
                    receiver_pct = 100 * receiver_cpu / ((ended - started) / 1e9)
                    point.update(side=side, pair=pair, started_ns=started, ended_ns=ended)
                    point.update(receiver_cpu_pct=round(receiver_pct, 1), server_alive=server.alive())
                    runs.append(point)
                    line = f"pair {pair} tracing {side:>3}: {point_line(point)} receiver {receiver_pct:.1f}%"
                    print(line, flush=True)
            time.sleep(2.0)
            collector.settle()
            alive = traced.alive()
        finally:
            plain.stop()
            traced.stop()
        traces = collector.traces()
    whole = [spans for spans in traces.values() if pipeline_span(spans) is not None]
    steps_named = sum(
        1 for spans in whole if {"tok", "sentiment", "topic"} <= {s.attributes.get("triton.model_name") for s in spans}
    )
    ratios = []
    for pair in range(args.pairs):
        on = next(r for r in runs if r["pair"] == pair and r["side"] == "on")
        off = next(r for r in runs if r["pair"] == pair and r["side"] == "off")
        ratios.append(on["throughput_rps"] / off["throughput_rps"])
    summaries = summarize_critical_paths(whole)
    report = {
        "example": f"examples/textdemo, pipeline classify (ensemble), closed-loop {args.protocol}",
        "protocol": args.protocol,
        "concurrency": args.concurrency,
        "trace_rate": args.rate,
        "traced_server_alive_at_end": alive,
        "duration_s": args.duration,
        "pairs": args.pairs,
        "runs": runs,
        "throughput_ratio_on_over_off": [round(r, 4) for r in ratios],
        "mean_ratio": round(statistics.mean(ratios), 4),
        "cost_pct": round(100 * (1 - statistics.mean(ratios)), 1),
        "traces_received": len(traces),
        "whole_traces": len(whole),
        "traces_naming_tok_sentiment_topic": steps_named,
        "receiver_rejected": collector.rejected,
        "critical_path": format_critical_paths(summaries),
        "note": "2-core machine; tracing on and off alternate in pairs: compare within one run",
    }
    suffix = "" if args.protocol == "http" else f"-{args.protocol}"
    (args.out / f"results-rate{args.rate}{suffix}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"tracing at rate {args.rate} keeps {100 * report['mean_ratio']:.1f}% of the throughput "
        f"(cost {report['cost_pct']}%; per pair: {', '.join(f'{r:.3f}' for r in ratios)}); "
        f"{len(whole)} whole traces received, {steps_named} naming every component",
        flush=True,
    )
    print(report["critical_path"])


if __name__ == "__main__":
    main()
