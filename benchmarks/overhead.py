"""What compound's serving path costs per request on the lightest model, and as a pipeline grows.

Default mode: ONE trivial step (a handler that answers zeros) served by compound's generated runtime
(templates/model.py) against `handwritten`, a minimal hand-written Python-backend model.py with the
same config.pbtxt (read the input, answer zeros): one server, one repository, the same closed-loop
gRPC client (toolkit.bench.driver, in its own process), alternated round by round. Throughput and
server CPU per request (tritonserver + its stubs, sampled over the measuring window).

--fanout: a chain of k trivial steps (k = 1, 2, 4, 8) served three ways, as the Triton ensemble the
spec renders to, forced through the generated orchestrator (BLS), and fused into one model; each
against one trivial step, with a plot.

    python benchmarks/overhead.py                      # single step vs hand-written
    python benchmarks/overhead.py --fanout             # k = 1, 2, 4, 8 steps
    python benchmarks/overhead.py --concurrency 1 16 64 --duration 8 --rounds 2

Results go to benchmarks/results/overhead/ (JSON per mode; fanout.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.bench.driver import Call, Job  # noqa: E402
from toolkit.bench.measure import ProcessCpu, point_line, run_driver  # noqa: E402
from toolkit.core.system import free_ports  # noqa: E402
from toolkit.plan import InstanceGroup, plan_spec  # noqa: E402
from toolkit.repository.render import program_model_files, render_files, template_env, write_repository  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402

DIM = 16
MAX_STEPS = 8
CHAINS = (1, 2, 4, 8)

HANDLERS = '''"""The trivial step: answers zeros of its input's shape (the per-request cost is all serving)."""

import numpy as np


class Zeros:
    def __init__(self, parameters: dict, device: str) -> None:
        pass

    def __call__(self, x: np.ndarray) -> dict:
        return {"y": np.zeros_like(x)}
'''

# The floor: what a user would write by hand for the same config - read the input, answer zeros.
HANDWRITTEN = '''"""Hand-written Python-backend model: read the input, answer zeros (the overhead benchmark's floor)."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.zeros_like(x))]))
        return responses
'''


def write_spec(folder: Path) -> Path:
    """Models zero_0..zero_7 (x -> y, fp32 [DIM], batched) and pipelines chain_k of k of them in a row."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handlers.py").write_text(HANDLERS)
    lines = ["name: overhead", "models:"]
    for i in range(MAX_STEPS):
        lines += [
            f"  zero_{i}:",
            "    handler: handlers:Zeros",
            "    inputs:",
            f"      x: {{dtype: fp32, dims: [{DIM}]}}",
            "    outputs:",
            f"      y: {{dtype: fp32, dims: [{DIM}]}}",
            "    max_batch_size: 64",
            "    dynamic_batching: {max_queue_delay_us: 0}",
        ]
    lines.append("pipelines:")
    for k in CHAINS:
        lines += [f"  chain_{k}:", "    inputs:", f"      x: {{dtype: fp32, dims: [{DIM}]}}", "    outputs: [y]"]
        lines.append("    steps:")
        for i in range(k):
            source = "x" if i == 0 else f"t{i}"
            target = "y" if i == k - 1 else f"t{i + 1}"
            lines += [
                f"      - model: zero_{i}",
                f"        inputs: {{x: {source}}}",
                f"        outputs: {{y: {target}}}",
            ]
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_repository(spec: Path, out: Path, fanout: bool, also: Optional[dict[str, Path]] = None) -> None:
    """The spec's repository plus `handwritten` (zero_0's config, the hand-written model.py), a copy
    of zero_0 per `also` entry with another model.py in place of the runtime (e.g. an older one) and,
    for --fanout, chain_k_bls (forced orchestrator) and chain_k_fused (fused, one instance) per k."""
    plan = plan_spec(spec)
    files = render_files(plan)
    config = files["zero_0/config.pbtxt"].decode()
    files["handwritten/config.pbtxt"] = config.replace('name: "zero_0"', 'name: "handwritten"').encode()
    files["handwritten/1/model.py"] = HANDWRITTEN.encode()
    for name, model_py in (also or {}).items():
        for path, content in list(files.items()):
            if path.startswith("zero_0/"):
                files[name + path[len("zero_0") :]] = content
        files[f"{name}/config.pbtxt"] = config.replace('name: "zero_0"', f'name: "{name}"').encode()
        files[f"{name}/1/model.py"] = model_py.read_bytes()
    if fanout:
        env = template_env()
        for k in CHAINS:
            static = plan.pipelines[f"chain_{k}"]
            variants = (
                replace(static, name=f"chain_{k}_bls", kind="orchestrator", reason="benchmark: forced orchestrator"),
                replace(
                    static,
                    name=f"chain_{k}_fused",
                    kind="fused",
                    reason="benchmark: forced fused",
                    instances=InstanceGroup("KIND_CPU", 1),
                ),
            )
            for variant in variants:
                for path, content in program_model_files(plan, variant, env).items():
                    files[path] = content.encode() if isinstance(content, str) else content
    write_repository(files, out)


def measure(
    server: LocalServer, model: str, rows: Path, c: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    job = Job(
        server.grpc_url,
        [[Call(model, {"x": "x"}, {"y": "y"})]],
        {"x": "FP32"},
        str(rows),
        c,
        args.duration,
        args.warmup,
        str(work / f"result-{model}-{c}.json"),
    )
    point = run_driver(job, work, ProcessCpu(server.pid) if server.pid else None, print)
    rps = point["throughput_rps"]
    point["server_cpu_ms_per_request"] = (
        10.0 * point["server_cpu_pct"] / rps if rps and point.get("server_cpu_pct") is not None else None
    )
    return point


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="compound-overhead-"))
    spec = write_spec(work / "spec")
    also = dict(entry.split("=", 1) for entry in args.also)
    build_repository(spec, work / "repo", args.fanout, {name: Path(path) for name, path in also.items()})
    rows = work / "rows.npz"
    np.savez(rows, x=np.random.default_rng(0).standard_normal((256, DIM)).astype(np.float32))
    if args.fanout:
        models = ["zero_0"] + [f"chain_{k}{suffix}" for k in CHAINS for suffix in ("", "_bls", "_fused")]
    else:
        models = ["zero_0", "handwritten", *also]
    http, grpc, metrics = free_ports(3)
    best: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in models}
    with LocalServer(
        work / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=work / "tritonserver.log"
    ) as server:
        for c in args.concurrency:
            for _ in range(args.rounds):
                for model in models:
                    point = measure(server, model, rows, c, args, work)
                    print(f"{model:>16}  " + point_line(point), flush=True)
                    kept = best[model].get(str(c))
                    if kept is None or point["throughput_rps"] > kept["throughput_rps"]:
                        best[model][str(c)] = point
    return {"models": best}


def ratio_table(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = []
    for c in args.concurrency:
        base = result["models"]["handwritten" if not args.fanout else "zero_0"][str(c)]
        for model, points in result["models"].items():
            p = points[str(c)]
            cpu = p.get("server_cpu_ms_per_request")
            lines.append(
                f"c={c:>3}  {model:>16}  {p['throughput_rps']:8.0f} req/s"
                f"  x{p['throughput_rps'] / base['throughput_rps']:.2f}"
                f"  server CPU {'-' if cpu is None else f'{cpu:.3f}'} ms/req"
            )
    return lines


def plot_fanout(result: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = str(max(args.concurrency))
    base = result["models"]["zero_0"][c]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for suffix, label in (("", "ensemble"), ("_bls", "orchestrator"), ("_fused", "fused")):
        points = [result["models"][f"chain_{k}{suffix}"][c] for k in CHAINS]
        left.plot(CHAINS, [p["throughput_rps"] / base["throughput_rps"] for p in points], marker="o", label=label)
        right.plot(CHAINS, [p["server_cpu_ms_per_request"] for p in points], marker="o", label=label)
    right.axhline(base["server_cpu_ms_per_request"], color="grey", linestyle=":", label="one step (zero_0)")
    left.set(xlabel="trivial steps k", ylabel="throughput / one step", title=f"Throughput vs one step, c={c}")
    right.set(xlabel="trivial steps k", ylabel="server CPU ms per request", title="Server CPU per request")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(CHAINS, [str(k) for k in CHAINS])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Fan-out overhead: k trivial steps (shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fanout", action="store_true", help="chains of k = 1, 2, 4, 8 trivial steps, three forms")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the models this many times; best kept")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead"))
    parser.add_argument(
        "--also",
        nargs="*",
        default=[],
        metavar="NAME=MODEL_PY",
        help="also serve zero_0 as NAME with this model.py (e.g. the runtime before a change)",
    )
    parser.add_argument("--label", default="", help="suffix of the result file (e.g. before/after a change)")
    args = parser.parse_args()
    began = time.time()
    result = run(args)
    result["command"] = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
    result["machine"] = "shared machine (2 cores shared with the load generator and other work)"
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began))
    result["summary"] = ratio_table(result, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = ("fanout" if args.fanout else "single") + (f"-{args.label}" if args.label else "")
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    if args.fanout:
        plot_fanout(result, args, out / f"{name}.png")
    print("\n".join(result["summary"]))


if __name__ == "__main__":
    main()
