"""Where a compute-bound pipeline's server CPU goes beyond its handlers' compute, at one load.

Deploys a pipeline as a spec file says (e.g. the spec `compound tune` wrote: fused, its instances,
its batching), drives it with bench's closed-loop gRPC client at one concurrency, and reports over
the measuring window:

- server CPU per request (tritonserver + stubs), per process and per thread (/proc schedstat);
- the batches actually served (Triton's statistics of the pipeline's model: requests over
  executions) and Triton's time per request in the backend's execute();
- the handlers' compute per request measured in-process, on the same machine, right before, at
  batch 64 AND over the batches actually served (Triton's executions per batch size, each priced
  by the handlers' cost curves, interpolated between measured sizes), so the serving path's own
  cost is what is left of the server's CPU beside the second figure.

Several variants (`--variant NAME=SPEC`: other spec files, e.g. another queue delay or preferred
batch sizes; `--runtime NAME=FILE`: the first spec served with another fused runtime in place of
templates/orchestrator.py) are alternated round by round, each in its own server; `--perf` adds a
pass with `perf record` on the stubs (by shared object and symbol).

    python benchmarks/fused_cpu.py examples/synthetic/pipeline.yaml -p fanout_heavy \
        --variant tuned=benchmarks/results/tune/fanout_heavy/fanout_heavy.tuned.yaml --concurrency 64

Results: benchmarks/results/fused_cpu/ (JSON and a text summary per run).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import breakdown  # noqa: E402

from toolkit.bench.chain import InProcessPipeline  # noqa: E402
from toolkit.bench.costs import CostCurve, profile_pipeline  # noqa: E402
from toolkit.bench.driver import Job  # noqa: E402
from toolkit.bench.inputs import sample_rows  # noqa: E402
from toolkit.bench.measure import point_line, run_driver  # noqa: E402
from toolkit.bench.profiles import spec_profile, tensor_datatypes  # noqa: E402
from toolkit.core.system import free_ports  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402


def compute_at(curves: dict[str, CostCurve], batch: float) -> float:
    """Handlers' seconds per request at `batch` rows per call (each curve interpolated)."""
    return sum(curve.at(batch) for curve in curves.values()) / batch if batch > 0 else 0.0


def build(
    name: str, spec: Path, base: Path, pipeline: str, runtime: Path | None, out: Path
) -> tuple[Path, Any, list[Any]]:
    """The pipeline of `spec` as its file says, only its models; `runtime` replaces the fused
    model's model.py (the orchestrator runtime) when given. The spec is read from a copy beside
    `base` (a tuned spec saved elsewhere finds its handlers there)."""
    copy = base.parent / f".fused-cpu-{name}.yaml"
    shutil.copy(spec, copy)
    try:
        profile = spec_profile("tuned", plan_spec(copy), pipeline)
    finally:
        copy.unlink()
    repo = render_repository(profile.plan, out / name)
    if runtime is not None:
        target = repo / pipeline / "1" / "model.py"
        if not target.is_file():
            raise SystemExit(f"{name}: {spec} does not serve '{pipeline}' as one (fused) model to swap the runtime of")
        shutil.copy(runtime, target)
    return repo, profile.plan, profile.request_stages


def measure(
    name: str,
    repo: Path,
    plan: Any,
    stages: list[Any],
    pipeline: str,
    rows: Path,
    args: argparse.Namespace,
    work: Path,
    profiler: str,
) -> dict[str, Any]:
    http, grpc, metrics = free_ports(3)
    with LocalServer(
        repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=work / f"tritonserver-{name}.log"
    ) as server:
        job = Job(
            server.grpc_url,
            stages,
            tensor_datatypes(plan, pipeline),
            str(rows),
            args.concurrency,
            args.duration,
            args.warmup,
            str(work / f"result-{name}.json"),
        )
        window = breakdown.Window(server, profiler, pipeline, work, args.duration)
        point = run_driver(job, work, window, print)
        done = window.finish()
        completed = max(1, point["completed"])
        result: dict[str, Any] = {
            "throughput_rps": round(point["throughput_rps"], 1),
            "p50_ms": round(point["latency_ms"]["p50"], 1),
            "p95_ms": round(point["latency_ms"]["p95"], 1),
            "server_cpu_pct": point.get("server_cpu_pct"),
            "client_cpu_pct": point.get("client_cpu_pct"),
            "other_cpu_pct": point.get("other_cpu_pct"),
        }
        if profiler == "clean":
            measured = breakdown.per_request(window, completed)
            result.update(measured)
            result["batch_sizes"] = batch_sizes(server.grpc_url, pipeline)
        else:
            tids = {tid: f"{label} / {thread}" for label, tid, thread in window.marks[-1][0]}
            result["perf"] = breakdown.summarize_perf(done[0][1], tids) | ({"error": done[0][2]} if done[0][2] else {})
        print(f"{name:>14} {profiler:>5}  " + point_line(point), flush=True)
        return result


def batch_sizes(url: str, model: str) -> dict[int, int]:
    """Triton's count of executions of `model` per batch size since the server started (warmup
    load included: each variant runs in a fresh server)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)
    finally:
        client.close()
    found: dict[int, int] = {}
    for entry in stats.get("model_stats", []):
        for batch in entry.get("batch_stats", []):
            found[int(batch["batch_size"])] = int(batch.get("compute_infer", {}).get("count", 0))
    return dict(sorted(found.items()))


def compute_served(curves: dict[str, CostCurve], sizes: dict[int, int]) -> float:
    """Handlers' seconds per request over the batches actually served (each size's count)."""
    rows = sum(b * n for b, n in sizes.items())
    return sum(n * sum(c.at(b) for c in curves.values()) for b, n in sizes.items()) / rows if rows else 0.0


def served_batch(measured: dict[str, Any], pipeline: str) -> float | None:
    """Rows per execute() of the model the client calls (the fused model, or the ensemble's first
    step's average when the pipeline is an ensemble)."""
    stats = measured.get("triton_stats", {})
    entry = stats.get(pipeline)
    if entry and entry.get("executions"):
        return entry["requests"] / entry["executions"]
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="compound-fused-cpu-"))
    spec = Path(args.spec).resolve()
    base = plan_spec(spec)
    variants: dict[str, tuple[Path, Path | None]] = {}
    for entry in args.variant:
        name, _, path = entry.partition("=")
        variants[name] = (Path(path).resolve(), None)
    if not variants:
        variants["as-written"] = (spec, None)
    first_spec = next(iter(variants.values()))[0]
    for entry in args.runtime:
        name, _, path = entry.partition("=")
        variants[name] = (first_spec, Path(path).resolve())
    print(f"profiling handlers of '{args.pipeline}' in-process ...", flush=True)
    chain = InProcessPipeline(base, args.pipeline)
    curves = profile_pipeline(base, args.pipeline, min_seconds=args.profile_seconds, chain=chain)
    del chain
    max_batch = max(c.batch_sizes[-1] for c in curves.values())
    rows = work / "rows.npz"
    np.savez(rows, **sample_rows(base, args.pipeline, 512, seed=0))
    built = {name: build(name, s, spec, args.pipeline, r, work / "repos") for name, (s, r) in variants.items()}
    result: dict[str, Any] = {
        "pipeline": args.pipeline,
        "concurrency": args.concurrency,
        "variants": {name: {"spec": str(s), "runtime": str(r) if r else None} for name, (s, r) in variants.items()},
        "compute_ms_per_request": {
            str(b): round(compute_at(curves, b) * 1e3, 3) for b in curves[next(iter(curves))].batch_sizes
        },
        "cost_curves": {m: c.to_json() for m, c in curves.items()},
        "rounds": collections.defaultdict(list),
    }
    for round_ in range(args.rounds):
        for name, (repo, plan, stages) in built.items():
            measured = measure(name, repo, plan, stages, args.pipeline, rows, args, work, "clean")
            batch = served_batch(measured, args.pipeline)
            cpu_ms = sum(measured["cpu_us_per_request"].values()) / 1e3
            measured["server_cpu_ms_per_request"] = round(cpu_ms, 3)
            measured["served_batch"] = round(batch, 1) if batch else None
            if measured.get("batch_sizes"):
                at_served = compute_served(curves, measured["batch_sizes"]) * 1e3
                measured["compute_ms_at_served_batch"] = round(at_served, 3)
                measured["cpu_over_compute_at_served_batch"] = round(cpu_ms / at_served, 2)
            at_max = compute_at(curves, max_batch) * 1e3
            measured[f"cpu_over_compute_at_batch_{max_batch}"] = round(cpu_ms / at_max, 2)
            result["rounds"][name].append(measured)
            if args.perf and round_ == 0:
                result.setdefault("perf", {})[name] = measure(
                    name, repo, plan, stages, args.pipeline, rows, args, work, "perf"
                )
    shutil.rmtree(work, ignore_errors=True)
    result["rounds"] = dict(result["rounds"])
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    compute = result["compute_ms_per_request"]
    lines = [
        "handlers' compute per request in-process (ms) by batch: "
        + ", ".join(f"{b}: {ms}" for b, ms in compute.items())
    ]
    for name, rounds in result["rounds"].items():
        for i, r in enumerate(rounds):
            procs = ", ".join(f"{k} {v / 1e3:.2f}" for k, v in r["cpu_us_per_request"].items())
            lines.append(
                f"{name} round {i + 1}: {r['throughput_rps']} req/s, p95 {r['p95_ms']} ms,"
                f" server CPU {r['server_cpu_ms_per_request']} ms/req ({procs});"
                f" mean batch {r.get('served_batch')},"
                f" compute at the served batches {r.get('compute_ms_at_served_batch')} ms/req"
                f" (CPU x{r.get('cpu_over_compute_at_served_batch')});"
                f" other CPU {r.get('other_cpu_pct') and round(r['other_cpu_pct'])}%"
            )
    for name, entry in result.get("perf", {}).items():
        perf = entry.get("perf", {})
        if perf.get("by_object_pct"):
            lines.append(
                f"{name} perf by object: " + ", ".join(f"{k} {v:.1f}%" for k, v in perf["by_object_pct"].items())
            )
            top = list(perf["by_symbol_pct"].items())[:12]
            lines.append(f"{name} perf top symbols: " + ", ".join(f"{k.split(' ', 2)[-1]} {v:.1f}%" for k, v in top))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="the spec whose handlers are profiled (and served, without --variant)")
    parser.add_argument("-p", "--pipeline", required=True)
    parser.add_argument("--variant", nargs="*", default=[], metavar="NAME=SPEC", help="serve SPEC's pipeline as NAME")
    parser.add_argument(
        "--runtime", nargs="*", default=[], metavar="NAME=FILE", help="the first variant with FILE as its runtime"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the variants this many times")
    parser.add_argument("--profile-seconds", type=float, default=0.3, help="in-process timing per batch size")
    parser.add_argument("--perf", action="store_true", help="a pass with perf record per variant (first round)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fused_cpu"))
    parser.add_argument("--label", default="", help="suffix of the result files")
    args = parser.parse_args()
    began = time.time()
    result = run(args)
    name = f"{args.pipeline}-c{args.concurrency}"
    breakdown.save_result(result, "fused_cpu.py", began, summary_lines(result), Path(args.out), name, args.label)


if __name__ == "__main__":
    main()
