"""What compound's serving path costs per request on the lightest model, and as a pipeline grows.

Default mode: ONE trivial step (a handler that answers zeros) served by compound's generated runtime
(templates/model.py) against `handwritten`, a minimal hand-written Python-backend model.py with the
same config.pbtxt (read the input, answer zeros): one server, one repository, the same closed-loop
gRPC client (toolkit.bench.driver, in its own process), alternated round by round. Throughput and
server CPU per request (tritonserver + its stubs, sampled over the measuring window).

--fanout: a chain of k trivial steps (k = 1, 2, 4, 8) served three ways, as the Triton ensemble the
spec renders to, forced through the generated orchestrator (BLS), and fused into one model; each
against one trivial step, with a plot.

--pipeline-forms NAME=SPEC ...: a real pipeline (--spec, --pipeline; default the synthetic fanout)
in each SPEC's form (e.g. the tuned, fused one), beside the spec as written (`ensemble`) and two
hand-written models with the first form's config: `handwritten` (answers zeros: the floor) and
`handwritten_chain` (the same handlers called in a row by hand).

    python benchmarks/overhead.py                      # single step vs hand-written
    python benchmarks/overhead.py --fanout             # k = 1, 2, 4, 8 steps
    python benchmarks/overhead.py --concurrency 1 16 64 --duration 8 --rounds 2

Results go to benchmarks/results/overhead/ (JSON per mode; fanout.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
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


# The floor for a pipeline: the same config as the pipeline's fused model, answering zeros of its
# output's shape (one row each); and what a user writes by hand to serve the same handlers: load them,
# call them one after another on the batch Triton hands over.
HANDWRITTEN_ROWS = '''"""Hand-written Python-backend model: read the input, answer zeros of the output's shape."""

import numpy as np
import triton_python_backend_utils as pb_utils

OUT_DIMS = {out_dims}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            y = np.zeros((x.shape[0], *OUT_DIMS), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
        return responses
'''

HANDWRITTEN_CHAIN = '''"""Hand-written Python-backend model running the pipeline's handlers in a row on each batch."""

import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, {folder!r})
from handlers import Chain  # noqa: E402

STEPS = json.loads({steps!r})  # [model, parameters, {{input: tensor}}, {{output: tensor}}] in order


class TritonPythonModel:
    def initialize(self, args):
        self.steps = [(Chain(params, "cpu"), inputs, outputs) for _, params, inputs, outputs in STEPS]

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        env = {{"x": np.concatenate(xs) if len(xs) > 1 else xs[0]}}
        for handler, inputs, outputs in self.steps:
            result = handler(**{{name: env[tensor] for name, tensor in inputs.items()}})
            env.update({{tensor: result[name] for name, tensor in outputs.items()}})
        y, responses, start = env["y"], [], 0
        for x in xs:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y[start : start + len(x)])]))
            start += len(x)
        return responses
'''


def _renamed(files: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A model's repository files under another name (its folder and its config's `name:`)."""
    found: dict[str, Any] = {}
    for path, content in files.items():
        if not path.startswith(old + "/"):
            continue
        if path == f"{old}/config.pbtxt":
            text = content.decode() if isinstance(content, bytes) else content
            content = text.replace(f'\nname: "{old}"\n', f'\nname: "{new}"\n', 1).encode()
        found[new + path[len(old) :]] = content
    return found


def build_pipeline_forms(
    spec: Path, pipeline: str, forms: dict[str, Path], out: Path, runtimes: Optional[dict[str, Path]] = None
) -> tuple[list[str], dict[str, np.ndarray]]:
    """One repository: `pipeline` of each spec in `forms` (e.g. the tuned one, fused) under the form's
    name, the spec as written (`ensemble`: its ensemble and component models), and, with the first
    form's config, `handwritten` (answers zeros) and `handwritten_chain` (the same handlers in a row,
    hand-written); each of `runtimes` serves the first form once more with that file in place of
    its runtime (templates/orchestrator.py, e.g. the one before a change). Specs are read from a
    copy beside `spec`, where their handlers are."""
    from toolkit.bench.inputs import sample_rows
    from toolkit.bench.profiles import spec_profile

    def files_of(path: Path, label: str) -> tuple[Any, dict[str, Any]]:
        copy = spec.parent / f".overhead-{label}.yaml"
        shutil.copy(path, copy)
        try:
            plan = spec_profile("tuned", plan_spec(copy), pipeline).plan
        finally:
            copy.unlink()
        return plan, render_files(plan)

    written, written_files = files_of(spec, "written")
    files = {p: c for p, c in written_files.items() if not p.startswith(pipeline + "/")}
    files.update(_renamed(written_files, pipeline, "ensemble"))
    models = []
    first_config = None
    for name, path in forms.items():
        _, form_files = files_of(path, name)
        files.update(_renamed(form_files, pipeline, name))
        first_config = first_config or files[f"{name}/config.pbtxt"]
        models.append(name)
    assert first_config is not None, "at least one form"
    for name, runtime in (runtimes or {}).items():
        files.update(_renamed(files, models[0], name))
        files[f"{name}/1/model.py"] = runtime.read_bytes()
        models.append(name)
    out_dims = list(written.pipelines[pipeline].tensors["y"].dims)
    steps = [
        [s.model, dict(written.spec.models[s.model].parameters), dict(s.inputs), dict(s.outputs)]
        for s in written.pipelines[pipeline].steps
    ]
    for name, model_py in (
        ("handwritten", HANDWRITTEN_ROWS.format(out_dims=out_dims)),
        ("handwritten_chain", HANDWRITTEN_CHAIN.format(folder=str(spec.parent.resolve()), steps=json.dumps(steps))),
    ):
        text = first_config.decode() if isinstance(first_config, bytes) else first_config
        files[f"{name}/config.pbtxt"] = text.replace(f'\nname: "{models[0]}"\n', f'\nname: "{name}"\n', 1).encode()
        files[f"{name}/1/model.py"] = model_py.encode()
    write_repository(files, out)
    rows = sample_rows(written, pipeline, 256, seed=0)
    return [*models, "ensemble", "handwritten", "handwritten_chain"], rows


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
    rows = work / "rows.npz"
    if args.pipeline_forms:
        forms = {name: Path(path).resolve() for name, path in (e.split("=", 1) for e in args.pipeline_forms)}
        runtimes = {name: Path(path).resolve() for name, path in (e.split("=", 1) for e in args.also)}
        models, arrays = build_pipeline_forms(Path(args.spec).resolve(), args.pipeline, forms, work / "repo", runtimes)
        np.savez(rows, **arrays)
        return _serve(args, work, rows, models)
    spec = write_spec(work / "spec")
    also = dict(entry.split("=", 1) for entry in args.also)
    build_repository(spec, work / "repo", args.fanout, {name: Path(path) for name, path in also.items()})
    np.savez(rows, x=np.random.default_rng(0).standard_normal((256, DIM)).astype(np.float32))
    if args.fanout:
        models = ["zero_0"] + [f"chain_{k}{suffix}" for k in CHAINS for suffix in ("", "_bls", "_fused")]
    else:
        models = ["zero_0", "handwritten", *also]
    return _serve(args, work, rows, models)


def _serve(args: argparse.Namespace, work: Path, rows: Path, models: list[str]) -> dict[str, Any]:
    """Every model in one server, alternated round by round at each concurrency; the median round."""
    http, grpc, metrics = free_ports(3)
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {m: {str(c): [] for c in args.concurrency} for m in models}
    with LocalServer(
        work / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=work / "tritonserver.log"
    ) as server:
        for c in args.concurrency:
            for _ in range(args.rounds):
                for model in models:
                    point = measure(server, model, rows, c, args, work)
                    print(f"{model:>16}  " + point_line(point), flush=True)
                    rounds[model][str(c)].append(point)
    return {"models": {m: {c: median_point(points) for c, points in by_c.items()} for m, by_c in rounds.items()}}


def median_point(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median throughput (the machine is shared: one slow round is someone else's load),
    with every round's throughput and server CPU per request beside it."""
    ordered = sorted(points, key=lambda p: p["throughput_rps"])
    point = dict(ordered[len(ordered) // 2])
    point["rounds_rps"] = [round(p["throughput_rps"], 1) for p in points]
    point["rounds_server_cpu_ms_per_request"] = [p["server_cpu_ms_per_request"] for p in points]
    return point


def python_cost(args: argparse.Namespace) -> dict[str, Any]:
    """--python: microseconds of Python per request in execute() of each runtime, in this process
    against the fake pb_utils of the unit tests (the stub's C++ work, the same for every runtime,
    left out): the part of the per-request cost the runtime's own code decides, measured without
    the noise of a shared machine."""
    import json as json_module

    from tests.unit import fake_pb_utils as fake

    work = Path(tempfile.mkdtemp(prefix="compound-overhead-python-"))
    spec = write_spec(work / "spec")
    also = {name: Path(path) for name, path in (entry.split("=", 1) for entry in args.also)}
    build_repository(spec, work / "repo", False, also)
    tensor = {"data_type": "TYPE_FP32", "dims": [DIM]}
    config = {
        "name": "zero_0",
        "max_batch_size": 64,
        "input": [{"name": "x", **tensor}],
        "output": [{"name": "y", **tensor}],
        "parameters": {
            "compound.handler": {"string_value": "handlers:Zeros"},
            "compound.handler_parameters": {"string_value": "{}"},
        },
    }
    models: dict[str, Any] = {}
    with fake.installed():
        sys.path.append(str(work / "repo" / "zero_0" / "1"))  # as the stub does: handlers.py beside model.py
        for name in ["zero_0", "handwritten", *also]:
            model = fake.load_template(work / "repo" / name / "1" / "model.py", f"overhead_{name}").TritonPythonModel()
            if hasattr(model, "initialize"):
                args_ = {"model_config": json_module.dumps(config), "model_name": name, "model_instance_kind": "CPU"}
                model.initialize({**args_, "model_instance_name": f"{name}_0_0"})
            models[name] = model
        best: dict[str, dict[int, float]] = {name: {} for name in models}
        for batch in (1, 8, 64):
            requests = [fake.request(x=np.zeros((1, DIM), np.float32)) for _ in range(batch)]
            calls = max(100, 10000 // batch)
            for _ in range(args.rounds * 4):  # the models interleaved in short runs: load changes hit all alike
                for name, model in models.items():
                    began = time.perf_counter()
                    for _ in range(calls):
                        model.execute(requests)
                    spent = (time.perf_counter() - began) / calls / batch
                    best[name][batch] = min(best[name].get(batch, float("inf")), spent)
    result = {
        name: {f"requests_per_execute_{batch}": round(us * 1e6, 2) for batch, us in by_batch.items()}
        for name, by_batch in best.items()
    }
    return {"python_us_per_request": result}


def ratio_table(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Per concurrency and model: median throughput and its ratio to the base (the hand-written model;
    one trivial step with --fanout), and the least server CPU per request of any round with its ratio
    (CPU per request moves less than throughput when other work takes the cores)."""
    lines = []
    for c in args.concurrency:
        base = result["models"]["handwritten" if not args.fanout else "zero_0"][str(c)]  # the floor
        base_cpu = least_cpu(base)
        for model, points in result["models"].items():
            p = points[str(c)]
            cpu = least_cpu(p)
            lines.append(
                f"c={c:>3}  {model:>16}  {p['throughput_rps']:8.0f} req/s"
                f"  x{p['throughput_rps'] / base['throughput_rps']:.2f}"
                f"  server CPU {'-' if cpu is None else f'{cpu:.3f}'} ms/req"
                f"  x{'-' if cpu is None or not base_cpu else f'{cpu / base_cpu:.2f}'}"
            )
    return lines


def least_cpu(point: dict[str, Any]) -> Optional[float]:
    values = [v for v in point.get("rounds_server_cpu_ms_per_request", []) if v is not None]
    return min(values) if values else point.get("server_cpu_ms_per_request")


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
        right.plot(CHAINS, [least_cpu(p) for p in points], marker="o", label=label)
    right.axhline(least_cpu(base), color="grey", linestyle=":", label="one step (zero_0)")
    left.set(xlabel="trivial steps k", ylabel="throughput / one step", title=f"Median throughput vs one step, c={c}")
    right.set(
        xlabel="trivial steps k", ylabel="server CPU ms per request", title="Server CPU per request (least round)"
    )
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
    parser.add_argument("--python", action="store_true", help="Python us per request of each runtime, in-process")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternate the models this many times; the median round is kept"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead"))
    parser.add_argument(
        "--also",
        nargs="*",
        default=[],
        metavar="NAME=MODEL_PY",
        help="also serve zero_0 as NAME with this model.py (e.g. the runtime before a change); with"
        " --pipeline-forms: the first form with this runtime in place of templates/orchestrator.py",
    )
    parser.add_argument("--label", default="", help="suffix of the result file (e.g. before/after a change)")
    parser.add_argument(
        "--pipeline-forms",
        nargs="*",
        default=[],
        metavar="NAME=SPEC",
        help="instead of trivial steps: --pipeline of each SPEC (e.g. the tuned one) as NAME, beside the spec as"
        " written (ensemble) and hand-written models with the first form's config",
    )
    parser.add_argument("--spec", default=str(ROOT / "examples" / "synthetic" / "pipeline.yaml"))
    parser.add_argument("--pipeline", default="fanout")
    args = parser.parse_args()
    began = time.time()
    if args.python:
        result = python_cost(args)
        result["command"] = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
        result["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"python{'-' + args.label if args.label else ''}.json").write_text(json.dumps(result, indent=1))
        for name, costs in result["python_us_per_request"].items():
            print(
                f"{name:>16}  " + "  ".join(f"{k.rsplit('_', 1)[1]:>2}/execute {v:6.2f} us" for k, v in costs.items())
            )
        return
    result = run(args)
    result["command"] = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
    result["machine"] = "shared machine (2 cores shared with the load generator and other work)"
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began))
    result["summary"] = ratio_table(result, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = f"forms-{args.pipeline}" if args.pipeline_forms else ("fanout" if args.fanout else "single")
    name = kind + (f"-{args.label}" if args.label else "")
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    if args.fanout:
        plot_fanout(result, args, out / f"{name}.png")
    print("\n".join(result["summary"]))


if __name__ == "__main__":
    main()
