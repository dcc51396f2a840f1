"""Generated BLS orchestrator vs the equivalent Triton ensemble, on the same linear path.

Both run in one server from one repository: the spec's pipeline as compound renders it (an
ensemble, since it is static), plus `<pipeline>_bls`, the same steps compiled into an orchestrator,
and `<pipeline>_fused`, the same steps with `fuse: true`.
Closed-loop load (N clients, each sends its next request when the previous answer arrives) from
one asyncio gRPC client; p50/p95 latency and throughput per (pipeline, concurrency).

    .venv/bin/python benchmarks/bls_vs_ensemble.py                       # textdemo sentiment_only
    .venv/bin/python benchmarks/bls_vs_ensemble.py --pipeline classify --duration 20

Results print as a table and go to bench-results/bls_vs_ensemble.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tritonclient.grpc import aio as grpcclient  # noqa: E402
from tritonclient.utils import np_to_triton_dtype  # noqa: E402

from toolkit.core.system import free_port  # noqa: E402
from toolkit.plan import DeploymentPlan, InstanceGroup, plan_spec, program  # noqa: E402
from toolkit.repository.render import program_model_files, render_files, template_env, write_repository  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402

SENTENCES = [
    "the match was a great win for the home team",
    "stocks fell sharply after the bank report",
    "a terrible and boring film with weak acting",
    "new phone chips make laptops faster",
]


def build_repository(plan: DeploymentPlan, pipeline: str, out: Path) -> tuple[str, str]:
    """The rendered repository plus `<pipeline>_bls`, the same steps forced through the
    orchestrator, and `<pipeline>_fused`, the same steps with `fuse: true` (2 instances)."""
    static = plan.pipelines[pipeline]
    if static.kind != "ensemble":
        raise SystemExit(f"pipeline '{pipeline}' is not static (it is a {static.kind}); pick a linear one")
    bls = replace(static, name=f"{pipeline}_bls", kind="orchestrator", reason="benchmark: forced orchestrator")
    fused = replace(
        static,
        name=f"{pipeline}_fused",
        kind="fused",
        reason="benchmark: forced fused",
        instances=InstanceGroup("KIND_CPU", 2),
    )
    files = render_files(plan)
    for variant in (bls, fused):
        for path, content in program_model_files(plan, variant, template_env()).items():
            files[path] = content.encode() if isinstance(content, str) else content
    write_repository(files, out)
    return bls.name, fused.name


def make_inputs(plan: DeploymentPlan, pipeline: str) -> list[Any]:
    spec = plan.pipelines[pipeline].spec
    inputs = []
    for name, tensor in spec.inputs.items():
        if tensor.dtype != "string" or tensor.dims != [1]:
            raise SystemExit(f"this benchmark feeds one string per request; input '{name}' is {tensor.describe()}")
        array = np.array([[SENTENCES[0].encode()]], dtype=object)
        request = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        request.set_data_from_numpy(array)
        inputs.append(request)
    return inputs


async def closed_loop(
    url: str, model: str, inputs: list[Any], concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, float]:
    client = grpcclient.InferenceServerClient(url)
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def user() -> None:
        nonlocal errors
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            try:
                await client.infer(model, inputs)
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1
                continue
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at:
                latencies.append(done - sent)

    try:
        await asyncio.gather(*(user() for _ in range(concurrency)))
    finally:
        await client.close()
    ms = np.array(latencies) * 1000.0
    return {
        "requests": float(len(ms)),
        "errors": float(errors),
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else float("nan"),
        "throughput_rps": len(ms) / duration_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "examples" / "textdemo" / "pipeline.yaml"))
    parser.add_argument("--pipeline", default="sentiment_only")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternate ensemble/BLS this many times; best round kept")
    parser.add_argument(
        "--orchestrator-instances", type=int, default=None, help="override the planned count (experiments)"
    )
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "bls_vs_ensemble.json"))
    args = parser.parse_args()

    plan = plan_spec(args.spec)
    if args.orchestrator_instances:
        program.ORCHESTRATOR_INSTANCES = args.orchestrator_instances
    work = Path(tempfile.mkdtemp(prefix="compound-bls-bench-"))
    bls, fused = build_repository(plan, args.pipeline, work / "repo")
    inputs = make_inputs(plan, args.pipeline)
    server = LocalServer(
        work / "repo",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=work / "tritonserver.log",
    )
    results: dict[str, dict[str, dict[str, float]]] = {"ensemble": {}, "bls": {}, "fused": {}}
    with server:
        for concurrency in args.concurrency:
            for _ in range(args.rounds):
                for label, model in (("ensemble", args.pipeline), ("bls", bls), ("fused", fused)):
                    run = asyncio.run(
                        closed_loop(server.grpc_url, model, inputs, concurrency, args.warmup, args.duration)
                    )
                    best = results[label].get(str(concurrency))
                    if best is None or run["p50_ms"] < best["p50_ms"]:
                        results[label][str(concurrency)] = run
    print(
        f"pipeline {args.pipeline} ({' -> '.join(plan.pipelines[args.pipeline].models)}),"
        f" {args.duration:.0f} s per run, best of {args.rounds}"
    )
    print(
        f"{'conc':>4} {'kind':>8} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'errors':>6}  kind/ensemble p50, p95, req/s"
    )
    for concurrency in args.concurrency:
        e = results["ensemble"][str(concurrency)]
        for label in ("ensemble", "bls", "fused"):
            r = results[label][str(concurrency)]
            print(
                f"{concurrency:>4} {label:>8} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f}"
                f" {r['throughput_rps']:>8.1f} {r['errors']:>6.0f}",
                end="",
            )
            if label != "ensemble":
                print(
                    f"  {r['p50_ms'] / e['p50_ms']:.2f}x, {r['p95_ms'] / e['p95_ms']:.2f}x,"
                    f" {r['throughput_rps'] / e['throughput_rps']:.2f}x"
                )
            else:
                print()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"pipeline": args.pipeline, "args": vars(args), "results": results}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
