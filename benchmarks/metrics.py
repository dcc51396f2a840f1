"""What compound's runtime metrics cost: the bundled example's `classify` fused (four fast in-process
steps: where per-step metrics weigh most), with and without its metrics, on ONE server.

Two fused twins of `classify` are served side by side; `classify_plain`'s folder has no
compound_metrics.py (the runtime then records nothing). The same closed-loop load (toolkit.bench's
driver) alternates between them for a few rounds, so both see the same machine; the figure is the
ratio of their mean throughputs.

Run (about 2 minutes on 2 cores):

    .venv/bin/python benchmarks/metrics.py --out benchmarks/results/metrics
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.bench.driver import Call, Job  # noqa: E402
from toolkit.bench.measure import run_driver  # noqa: E402
from toolkit.core.system import free_port  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import METRICS_MODULE, render_repository  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402

EXAMPLE = ROOT / "examples" / "textdemo"
TWINS = {"classify_metrics": True, "classify_plain": False}
TEXTS = ["I love this product", "terrible, awful service", "the match last night was great", "stock prices fell"]


def repository(work: Path) -> Path:
    spec_dir = work / "spec"
    shutil.copytree(EXAMPLE, spec_dir)
    data = yaml.safe_load((spec_dir / "pipeline.yaml").read_text())
    for twin in TWINS:
        data["pipelines"][twin] = {**data["pipelines"]["classify"], "fuse": True}
    (spec_dir / "pipeline.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    repo = render_repository(plan_spec(spec_dir / "pipeline.yaml"), work / "repo")
    for twin, metrics in TWINS.items():
        if not metrics:
            (repo / twin / "1" / f"{METRICS_MODULE}.py").unlink()
    return repo


def load(server: LocalServer, pipeline: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    rows = work / "rows.npz"
    np.savez(rows, text=np.array([[f"{TEXTS[i % len(TEXTS)]} {i}".encode()] for i in range(4096)], dtype=object))
    job = Job(
        url=server.grpc_url,
        stages=[[Call(pipeline, {"text": "text"}, {"label": "label"})]],
        datatypes={"text": "BYTES"},
        rows_file=str(rows),
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        result=str(work / "result.json"),
    )
    return run_driver(job, work, None, lambda line: print(line, flush=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/metrics"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compound-metrics-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    repo = repository(work)
    runs: dict[str, list[dict[str, Any]]] = {twin: [] for twin in TWINS}
    server = LocalServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), workdir=work / "server"
    )
    with server:
        for round_ in range(args.rounds):
            order = list(TWINS) if round_ % 2 == 0 else list(reversed(TWINS))
            for twin in order:
                print(f"== round {round_ + 1}: {twin}", flush=True)
                result = load(server, twin, work / f"{twin}-{round_}", args)
                runs[twin].append({k: result[k] for k in ("throughput_rps", "latency_ms", "errors") if k in result})
    rps = {twin: statistics.mean(r["throughput_rps"] for r in results) for twin, results in runs.items()}
    p50 = {twin: statistics.median(r["latency_ms"]["p50"] for r in results) for twin, results in runs.items()}
    summary = {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "runs": runs,
        "mean_rps": rps,
        "median_p50_ms": p50,
        "throughput_with_metrics_vs_without": rps["classify_metrics"] / rps["classify_plain"],
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
