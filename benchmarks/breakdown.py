"""Where one request's server time goes, form by form, at low concurrency: real profilers on the
real server.

The models of benchmarks/overhead.py (one trivial step `zero_0`; a chain of k trivial steps served as
the ensemble the spec renders to `chain_k`, forced through the generated orchestrator
`chain_k_bls`, and fused `chain_k_fused`; the hand-written floor `handwritten`), one tritonserver,
the same closed-loop gRPC driver (toolkit.bench.driver). For each model, three passes of the same
load, each over the driver's measuring window:

1. clean: no profiler attached. CPU time of every thread of tritonserver and of every stub, read
   from /proc/<pid>/task/<tid>/schedstat (nanoseconds on CPU), per request; Triton's own
   statistics for every model the request touched (count, queue, compute_input, compute_infer,
   compute_output: Triton's split of its time between the scheduler, the input copy, the
   backend's execute() and the output copy), per request.
2. py-spy (`--pyspy`): `py-spy record --native --nonblocking --format raw` on each stub, the Python
   (and native) stacks where the stub spends its CPU; summarised per thread and by innermost
   frame, as a share of the stub's samples.
3. perf (`--perf`, where `perf` runs): `perf record -g` on tritonserver and the stubs; summarised
   by thread name and by shared object (the kernel, libtritonserver, the Python backend, libpython,
   libc, ...), then by symbol.

    python benchmarks/breakdown.py                         # k=1, c=1, clean pass only
    python benchmarks/breakdown.py --pyspy --perf          # with both profilers
    python benchmarks/breakdown.py --orchestrator before=/tmp/orchestrator_before.py

`--orchestrator NAME=FILE` serves chain_k_bls once more as NAME with another orchestrator runtime
(e.g. `git show main:templates/orchestrator.py > /tmp/orchestrator_before.py`), `--fused NAME=FILE`
chain_k_fused: before/after in one run. Results: benchmarks/results/breakdown/ (JSON, and a text summary).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import overhead  # noqa: E402

from toolkit.bench.driver import Call, Job  # noqa: E402
from toolkit.bench.measure import ProcessCpu, point_line, run_driver  # noqa: E402
from toolkit.core.system import free_ports  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402

PY_SPY_RATE = 100  # samples per second per stub (each pauses it): shares of a few percent over a few seconds
PERF_FREQ = 999


def build(spec: Path, out: Path, k: int, orchestrators: dict[str, Path], fused: dict[str, Path]) -> list[str]:
    """overhead.py's fan-out repository, cut to zero_0, handwritten, the three forms of chain_k and
    zero_0..zero_{k-1} (what chain_k calls), plus chain_k_bls and chain_k_fused copies with other
    runtimes."""
    full = out.parent / "full-repo"
    overhead.build_repository(spec, full, True)
    keep = ["zero_0", "handwritten", f"chain_{k}", f"chain_{k}_bls", f"chain_{k}_fused"]
    callees = [f"zero_{i}" for i in range(k)]
    for name in dict.fromkeys(keep + callees):
        shutil.copytree(full / name, out / name)
    for form, variants in (("bls", orchestrators), ("fused", fused)):
        for name, runtime in variants.items():
            target = out / name
            shutil.copytree(full / f"chain_{k}_{form}", target)
            config = (target / "config.pbtxt").read_text()
            (target / "config.pbtxt").write_text(config.replace(f'name: "chain_{k}_{form}"', f'name: "{name}"'))
            shutil.copy(runtime, target / "1" / "model.py")
            keep.append(name)
    shutil.rmtree(full)
    return keep


def stub_model(cmdline: list[str]) -> Optional[str]:
    """The model a Python-backend stub serves (its first argument is <repo>/<model>/1/model.py)."""
    if cmdline and Path(cmdline[0]).name == "triton_python_backend_stub" and len(cmdline) > 1:
        return Path(cmdline[1]).parent.parent.name
    return None


def processes(server_pid: int) -> dict[int, str]:
    """pid -> 'tritonserver' or 'stub:<model>'."""
    import psutil

    root = psutil.Process(server_pid)
    found = {server_pid: "tritonserver"}
    for child in root.children(recursive=True):
        try:
            model = stub_model(child.cmdline())
        except psutil.Error:
            continue
        found[child.pid] = f"stub:{model}" if model else child.name()
    return found


def thread_cpu_ns(pids: dict[int, str]) -> dict[tuple[str, int, str], int]:
    """(process label, tid, thread) -> nanoseconds on CPU so far (schedstat: not tick-rounded). Triton
    and the stub name no thread, so a thread is 'main' (tid = pid) or 'thread <tid>'."""
    found: dict[tuple[str, int, str], int] = {}
    for pid, label in pids.items():
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                ns = int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            tid = int(task.name)
            found[(label, tid, "main" if tid == pid else f"thread {tid}")] = ns
    return found


def triton_stats(url: str) -> dict[str, dict[str, int]]:
    """Per model: success count, executions, and Triton's cumulative ns per phase."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    found: dict[str, dict[str, int]] = {}
    for model in stats.get("model_stats", []):
        s = model.get("inference_stats", {})
        found[model["name"]] = {
            "count": int(s.get("success", {}).get("count", 0)),
            "executions": int(model.get("execution_count", 0)),
            **{phase: int(s.get(phase, {}).get("ns", 0)) for phase in PHASES},
        }
    return found


# A process's tick-rounded CPU above its live threads' by more than this share is exited threads'
EXITED_THREADS_MIN = 0.02
PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output")


class Window(ProcessCpu):
    """The server's CPU as run_driver samples it, plus per-thread CPU, Triton's statistics and the
    profilers, all over the driver's measuring window (run_driver calls per_process at its start
    and at its end)."""

    def __init__(self, server: LocalServer, profile: str, model: str, work: Path, seconds: float) -> None:
        assert server.pid is not None
        super().__init__(server.pid)
        self.server, self.profile, self.model, self.work, self.seconds = server, profile, model, work, seconds
        # per mark: live threads' CPU (ns), Triton's statistics, and each process's CPU seconds with
        # its exited threads' (psutil, from /proc/PID/stat: threads that ended leave schedstat)
        self.marks: list[tuple[dict[tuple[str, int, str], int], dict[str, dict[str, int]], dict[int, float]]] = []
        self.profilers: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.pids = processes(server.pid)

    def per_process(self) -> dict[str, float]:
        snapshot = super().per_process()
        if not self.marks and self.profile != "clean":
            self._start_profilers()
        by_pid = {int(key.rsplit("[", 1)[1].rstrip("]")): seconds for key, seconds in snapshot.items()}
        self.marks.append((thread_cpu_ns(self.pids), triton_stats(self.server.grpc_url), by_pid))
        return snapshot

    def _start_profilers(self) -> None:
        seconds = max(1, int(self.seconds) - 1)  # inside the window, whatever the driver's rounding
        if self.profile == "pyspy":
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            for pid, label in self.pids.items():
                if label == f"stub:{self.model}" or label.startswith("stub:zero_"):  # the measured model, its callees
                    out = self.work / f"pyspy-{self.model}-{label[5:]}-{pid}.txt"
                    argv = [pyspy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(PY_SPY_RATE)]
                    # --native (the stub's C++ frames too) needs the process paused per sample: no --nonblocking
                    argv += ["--format", "raw", "--threads", "--native", "--output", str(out)]
                    self.profilers.append(
                        (label, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out)
                    )
        elif self.profile == "perf":
            out = self.work / f"perf-{self.model}.data"
            pids = ",".join(str(p) for p in self.pids)
            argv = [
                "perf",
                "record",
                "-F",
                str(PERF_FREQ),
                "-g",
                "-p",
                pids,
                "-o",
                str(out),
                "--",
                "sleep",
                str(seconds),
            ]
            self.profilers.append(
                ("all", subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out)
            )

    def finish(self) -> list[tuple[str, Path, str]]:
        done = []
        for label, proc, out in self.profilers:
            _, err = proc.communicate(timeout=120)
            done.append((label, out, err.decode(errors="replace")[-500:] if proc.returncode else ""))
        return done


def per_request(window: Window, completed: int) -> dict[str, Any]:
    """The clean pass: per-thread CPU and Triton's phases over the window, per request."""
    (cpu0, stats0, procs0), (cpu1, stats1, procs1) = window.marks[0], window.marks[-1]
    threads: dict[str, float] = collections.defaultdict(float)
    processes_us: dict[str, float] = collections.defaultdict(float)
    for key, ns in cpu1.items():
        spent = ns - cpu0.get(key, 0)
        if spent <= 0:
            continue
        label, _, name = key
        threads[f"{label} / {name}"] += spent / 1e3 / completed
        processes_us[label] += spent / 1e3 / completed
    # Threads that ended inside the window (a BLAS pool stopped between batches) are missing above;
    # the process's own figure (clock ticks) still counts them.
    process_us: dict[str, float] = collections.defaultdict(float)  # by label: instances of a model share one
    for pid, label in window.pids.items():
        if pid in procs0 and pid in procs1:
            process_us[label] += (procs1[pid] - procs0[pid]) * 1e6 / completed
    for label, total in process_us.items():
        exited = total - processes_us[label]
        if exited > EXITED_THREADS_MIN * max(processes_us[label], 1.0):
            threads[f"{label} / exited threads"] += exited
            processes_us[label] += exited
    models: dict[str, Any] = {}
    for model, after in stats1.items():
        before = stats0.get(model, {})
        count = after["count"] - before.get("count", 0)
        if count <= 0:
            continue
        models[model] = {
            "requests": count,
            "per_pipeline_request": round(count / completed, 2),
            "executions": after["executions"] - before.get("executions", 0),
            **{f"{phase}_us": round((after[phase] - before.get(phase, 0)) / 1e3 / count, 1) for phase in PHASES},
        }
    return {
        "cpu_us_per_request": {k: round(v, 1) for k, v in sorted(processes_us.items(), key=lambda kv: -kv[1])},
        "threads_us_per_request": {
            k: round(v, 1) for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v >= 1.0
        },
        "triton_stats": models,
    }


def summarize_pyspy(path: Path, top: int = 25) -> dict[str, Any]:
    """Raw py-spy output (one collapsed stack and its count per line): samples per thread, by the
    innermost frame, and the share of samples with selected frames anywhere on the stack."""
    by_thread: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"error": f"no output at {path}"}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        total += count
        by_thread[frames[0]] += count
        leaf[_frame(frames[-1])] += count
        for name in {_frame(f) for f in frames[1:]}:
            inclusive[name] += count
    share = lambda c: round(100.0 * c / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "threads_pct": {k: share(v) for k, v in by_thread.most_common(8)},
        "innermost_pct": {k: share(v) for k, v in leaf.most_common(top)},
        "on_stack_pct": {k: share(v) for k, v in inclusive.most_common(top * 2)},
    }


def _frame(frame: str) -> str:
    """'execute (model.py:223)' -> 'execute (model.py)': lines apart, one function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rstrip(')')})" if where else name


def summarize_perf(path: Path, tids: dict[int, str], top: int = 30) -> dict[str, Any]:
    """perf report by thread (named by its process), by shared object, and by symbol (self time, %
    of all samples), and per process: the share in the kernel."""

    def report(sort: str) -> list[tuple[str, float]]:
        done = subprocess.run(
            ["perf", "report", "-i", str(path), "--no-children", "--sort", sort, "--stdio", "-g", "none"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        rows = []
        for line in done.stdout.splitlines():
            parts = line.split()
            if not parts or not parts[0].endswith("%") or line.startswith("#"):
                continue
            try:
                rows.append((" ".join(parts[1:]), float(parts[0].rstrip("%"))))
            except ValueError:
                continue
        return rows[:top]

    if not path.exists():
        return {"error": f"no perf data at {path}"}
    by_thread: dict[str, float] = collections.defaultdict(float)
    for key, pct in report("pid"):
        tid = int(key.split(":", 1)[0]) if key.split(":", 1)[0].isdigit() else -1
        by_thread[tids.get(tid, f"other {key}")] += pct
    by_process_kernel: dict[str, float] = collections.defaultdict(float)
    for key, pct in report("pid,dso"):
        head, _, dso = key.partition(" ")
        tid = int(head.split(":", 1)[0]) if head.split(":", 1)[0].isdigit() else -1
        if "kernel" in dso:
            by_process_kernel[tids.get(tid, "other").split(" / ")[0]] += pct
    return {
        "by_thread_pct": {k: round(v, 2) for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1])},
        "kernel_by_process_pct": {k: round(v, 2) for k, v in sorted(by_process_kernel.items(), key=lambda kv: -kv[1])},
        "by_object_pct": dict(report("dso")),
        "by_symbol_pct": dict(report("dso,sym")),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="compound-breakdown-"))
    spec = overhead.write_spec(work / "spec")
    orchestrators = {n: Path(p).resolve() for n, p in (entry.split("=", 1) for entry in args.orchestrator)}
    fused = {n: Path(p).resolve() for n, p in (entry.split("=", 1) for entry in args.fused)}
    models = build(spec, work / "repo", args.k, orchestrators, fused)
    if args.models:  # the named ones, and every variant runtime
        models = [m for m in models if m in args.models or m in orchestrators or m in fused]
    rows = work / "rows.npz"
    np.savez(rows, x=np.random.default_rng(0).standard_normal((256, overhead.DIM)).astype(np.float32))
    passes = ["clean"] + (["pyspy"] if args.pyspy else []) + (["perf"] if args.perf and shutil.which("perf") else [])
    http, grpc, metrics = free_ports(3)
    result: dict[str, Any] = {"models": {}, "passes": passes, "server_args": args.server_arg}
    with LocalServer(
        work / "repo",
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=work / "tritonserver.log",
        extra_args=args.server_arg,
    ) as server:
        for round_ in range(args.rounds):
            for model in list(dict.fromkeys(models)):
                for profile in passes if round_ == 0 else ["clean"]:
                    job = Job(
                        server.grpc_url,
                        [[Call(model, {"x": "x"}, {"y": "y"})]],
                        {"x": "FP32"},
                        str(rows),
                        args.concurrency,
                        args.duration,
                        args.warmup,
                        str(work / f"result-{model}.json"),
                    )
                    window = Window(server, profile, model, work, args.duration)
                    point = run_driver(job, work, window, print)
                    done = window.finish()
                    print(f"{model:>18} {profile:>6}  " + point_line(point), flush=True)
                    entry = result["models"].setdefault(model, {"rounds": []})
                    completed = max(1, point["completed"])
                    if profile == "clean":
                        measured = per_request(window, completed)
                        measured["throughput_rps"] = round(point["throughput_rps"], 1)
                        measured["p50_ms"] = round(point["latency_ms"]["p50"], 3)
                        measured["other_cpu_pct"] = round(point.get("other_cpu_pct") or 0.0, 0)
                        entry["rounds"].append(measured)
                    elif profile == "pyspy":
                        entry["pyspy"] = {
                            f"{label}[{out.stem.rsplit('-', 1)[1]}]": summarize_pyspy(out)
                            | ({"error": err} if err else {})
                            for label, out, err in done
                        }
                        entry["pyspy_throughput_rps"] = round(point["throughput_rps"], 1)
                    else:
                        tids = {tid: f"{label} / {name}" for label, tid, name in window.marks[-1][0]}
                        entry["perf"] = summarize_perf(done[0][1], tids) | ({"error": done[0][2]} if done[0][2] else {})
                        entry["perf_throughput_rps"] = round(point["throughput_rps"], 1)
    for entry in result["models"].values():
        entry["least"] = least_round(entry["rounds"])
    shutil.rmtree(work, ignore_errors=True)
    return result


def least_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of least total server CPU per request (the one least disturbed by other work)."""
    return min(rounds, key=lambda r: sum(r["cpu_us_per_request"].values()))


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for model, entry in result["models"].items():
        best = entry["least"]
        total = sum(best["cpu_us_per_request"].values())
        procs = ", ".join(f"{k} {v:.0f}" for k, v in best["cpu_us_per_request"].items())
        lines.append(f"{model}: {total:.0f} us of server CPU per request ({procs}); {best['throughput_rps']} req/s")
        for name, stats in best["triton_stats"].items():
            lines.append(
                f"    triton {name}: x{stats['per_pipeline_request']} per request, queue {stats['queue_us']} us,"
                f" input {stats['compute_input_us']}, infer {stats['compute_infer_us']},"
                f" output {stats['compute_output_us']}, total {stats['success_us']}"
            )
        for name, us in list(best["threads_us_per_request"].items())[:8]:
            lines.append(f"    thread {name}: {us} us")
        perf = entry.get("perf", {})
        if perf.get("by_object_pct"):
            objects = ", ".join(f"{k} {v:.0f}%" for k, v in list(perf["by_object_pct"].items())[:6])
            lines.append(f"    perf by object: {objects}")
            symbols = ", ".join(f"{k.split(' ', 2)[-1]} {v:.1f}%" for k, v in list(perf["by_symbol_pct"].items())[:6])
            lines.append(f"    perf top symbols: {symbols}")
        for stub, spy in entry.get("pyspy", {}).items():
            if spy.get("samples", 0) >= 100 and stub.split("[")[0] in (f"stub:{model}", "stub:zero_0"):
                inner = ", ".join(f"{k} {v:.0f}%" for k, v in list(spy["innermost_pct"].items())[:6])
                lines.append(f"    py-spy {stub} ({spy['samples']} samples): {inner}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=1, choices=overhead.CHAINS, help="steps in the chain")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per pass")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="clean passes per model (the least CPU is kept)")
    parser.add_argument("--pyspy", action="store_true", help="a pass with py-spy on every stub")
    parser.add_argument("--perf", action="store_true", help="a pass with perf record on tritonserver and the stubs")
    parser.add_argument("--models", nargs="*", default=[], help="only these models (default: all of the chain)")
    parser.add_argument("--orchestrator", nargs="*", default=[], metavar="NAME=FILE", help="chain_k_bls with FILE")
    parser.add_argument("--fused", nargs="*", default=[], metavar="NAME=FILE", help="chain_k_fused with FILE")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra tritonserver argument, e.g. --server-arg=--backend-config=python,shm-default-byte-size=67108864",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "breakdown"))
    parser.add_argument("--label", default="", help="suffix of the result files")
    args = parser.parse_args()
    began = time.time()
    result = run(args)
    result["machine"] = "shared machine (2 cores shared with the load generator and other work)"
    save_result(
        result,
        "breakdown.py",
        began,
        summary_lines(result),
        Path(args.out),
        f"breakdown-k{args.k}-c{args.concurrency}",
        args.label,
    )


def save_result(
    result: dict[str, Any], script: str, began: float, summary: list[str], out: Path, name: str, label: str
) -> None:
    """Write a run's JSON (with its command, start time and summary) and its text summary, and print it."""
    result["command"] = f"python benchmarks/{script} " + " ".join(sys.argv[1:])
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began))
    result["summary"] = summary
    out.mkdir(parents=True, exist_ok=True)
    name += f"-{label}" if label else ""
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
