"""The peer a Python user picks to serve these handlers on Triton without compound: PyTriton.

The `pytriton` profile binds the pipeline's handlers, chained in-process (toolkit.bench.chain, the
same user code every other profile runs), as ONE PyTriton model decorated with `@batch`, with the
fused profile's settings: the pipeline's max_batch_size, the components' longest queue delay, one
instance per core (PyTriton runs each instance's callable in a thread of its own process), native
thread pools capped at the fused model's `instances.threads`. It is driven by the same closed-loop
gRPC (or HTTP) driver against the same tritonserver binary (the one nvidia-pytriton ships, which
compound's local target runs too), and its server CPU is the whole PyTriton process tree: the
Python process running the callables, tritonserver and its Python-backend stubs.

PyTriton runs in its own process (``python -m toolkit.bench.pytriton_peer CONFIG.json``), in a
session of its own: it prints READY once the model answers health checks, and stops Triton when
its stdin closes; the parent kills the whole session if it does not.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toolkit.bench.driver import Call, Job, first_response
from toolkit.bench.machine import cap_native_threads, child_env
from toolkit.bench.measure import ProcessCpu, point_line, run_driver
from toolkit.bench.profiles import fused_instances, tensor_datatypes
from toolkit.core.errors import CompoundError
from toolkit.core.system import free_ports
from toolkit.plan import DeploymentPlan
from toolkit.targets.local import python_libdir

START_TIMEOUT_S = 180.0  # tritonserver start-up plus one Python model per instance
STOP_TIMEOUT_S = 60.0


def pytriton_available() -> Optional[str]:
    """None when PyTriton can be imported, else why not."""
    try:
        from pytriton.decorators import batch  # noqa: F401
        from pytriton.triton import Triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: not available
        return f"PyTriton is not usable here ({type(exc).__name__}: {exc}); install nvidia-pytriton"
    return None


def pytriton_config(
    plan: DeploymentPlan, pipeline: str, cores: int, ports: list[int], log_file: Path
) -> dict[str, Any]:
    """What the PyTriton process binds: the fused profile's instances, threads, batch size and delay."""
    p = plan.pipelines[pipeline]
    declared = plan.spec.pipelines[pipeline]
    delays = [b.max_queue_delay_us for m in p.models if (b := plan.spec.models[m].batching) is not None]
    group = fused_instances(plan, pipeline, cores)
    return {
        "spec": str(plan.loaded.path),
        "pipeline": pipeline,
        "ports": {"http": ports[0], "grpc": ports[1], "metrics": ports[2]},
        "instances": group.count,
        "threads": group.threads,
        "max_batch_size": max(1, p.max_batch_size),
        "max_queue_delay_us": max(delays, default=0),
        "inputs": {t: [p.tensors[t].numpy_dtype, list(p.tensors[t].dims)] for t in declared.inputs},
        "outputs": {t: [p.tensors[t].numpy_dtype, list(p.tensors[t].dims)] for t in declared.outputs},
        "triton_log": str(log_file),
    }


def run_pytriton_profile(
    plan: DeploymentPlan,
    pipeline: str,
    settings: Any,
    rows_file: Path,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Start the PyTriton process, probe it, drive it at each concurrency, stop it (always)."""
    reason = pytriton_available()
    if reason:
        raise CompoundError(reason)
    ports = free_ports(3)
    config = pytriton_config(plan, pipeline, settings.core_budget, ports, work / "pytriton-tritonserver.log")
    config_file = work / "pytriton-config.json"
    config_file.write_text(json.dumps(config))
    log_path = work / "pytriton.log"
    result: dict[str, Any] = {
        "description": (
            f"PyTriton: the handlers chained in one @batch callable, {config['instances']} instance(s),"
            f" max_batch_size {config['max_batch_size']}, queue delay {config['max_queue_delay_us']} us"
        ),
        "instances": {pipeline: config["instances"]},
        "threads": {pipeline: config["threads"]},
        "dynamic_batching": True,
        "points": [],
    }
    began = time.perf_counter()
    proc = _start(config_file, log_path, config["triton_log"], log)
    try:
        result["ready_s"] = time.perf_counter() - began
        url = f"127.0.0.1:{ports[1]}"
        protocol = "triton-grpc"
        if getattr(settings, "driver", "grpc") == "http":
            url, protocol = f"http://127.0.0.1:{ports[0]}", "http-v2"
        p = plan.spec.pipelines[pipeline]
        request = [[Call(pipeline, {t: t for t in p.inputs}, {t: t for t in p.outputs})]]
        datatypes = tensor_datatypes(plan, pipeline)

        def job(concurrency: int, duration_s: float, warmup_s: float, out: str) -> Job:
            return Job(
                url, request, datatypes, str(rows_file), concurrency, duration_s, warmup_s, out, protocol=protocol
            )

        until_first, first_latency = first_response(job(1, 0.0, 0.0, str(work / "probe.json")), timeout_s=60.0)
        result["cold_start_s"] = result["ready_s"] + until_first
        result["first_request_ms"] = first_latency * 1e3
        log(f"  ready in {result['ready_s']:.1f} s, first response {first_latency * 1e3:.1f} ms")
        cpu = ProcessCpu(proc.pid)
        for c in settings.concurrency:
            point = run_driver(
                job(c, settings.duration_s, settings.warmup_s, str(work / f"result-pytriton-{c}.json")),
                work,
                cpu,
                log,
            )
            result["points"].append(point)
            log("  " + point_line(point))
    finally:
        _stop(proc)
    return result


# PyTriton's proxy model asks its Python process for its config over a Unix socket when Triton loads it;
# on a loaded machine that connection is sometimes refused (pytriton's handshake, not ours): start again.
HANDSHAKE_RACE = "get_config_from_handshake_server"


def _start(config_file: Path, log_path: Path, triton_log: str, log: Callable[[str], None]) -> subprocess.Popen[str]:
    """The PyTriton process, once it says READY (a second try after PyTriton's handshake race)."""
    for attempt in (1, 2):
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "toolkit.bench.pytriton_peer", str(config_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env=pytriton_env(),
                start_new_session=True,  # its own process group: stopping it stops tritonserver and the stubs too
            )
        said = _wait_ready(proc, START_TIMEOUT_S)
        if said is None:
            return proc
        try:
            code: Optional[int] = proc.wait(timeout=30)  # its output ended: it is on its way out
        except subprocess.TimeoutExpired:
            code = None
        _stop(proc)
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if attempt == 1 and HANDSHAKE_RACE in text:
            log("  PyTriton's model could not reach its process (its handshake, on a loaded machine): again")
            continue
        why = f"it exited with code {code}" if code is not None else f"not ready after {START_TIMEOUT_S:.0f} s"
        raise CompoundError(
            f"PyTriton did not start ({why}): {_last_line(log_path) or said or 'no output'}",
            hint=f"logs: {log_path}, {triton_log}",
        )
    raise AssertionError("unreachable")


def pytriton_env() -> dict[str, str]:
    """The child's environment: its tritonserver's stubs must link this interpreter's own libpython,
    as compound's local target sets up for its stubs (a pyenv or conda Python is not the first
    libpython3.X.so the loader finds: the stub then fails in the standard library)."""
    env = child_env()
    paths = (python_libdir(), env.get("LD_LIBRARY_PATH", ""))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


def _wait_ready(proc: subprocess.Popen[str], timeout_s: float) -> Optional[str]:
    """None once the child says READY; else what it printed instead (PyTriton prints notices on
    stdout too), '' when it said nothing before exiting or the deadline."""
    said: list[str] = []
    deadline = time.monotonic() + timeout_s
    if proc.stdout is None:
        return ""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = proc.stdout.readline()
            if not line:  # it exited
                break
            if line.strip() == "READY":
                return None
            said.append(line.strip())
    return " / ".join(s for s in said if s)[-500:]


def _last_line(path: Path) -> str:
    """The log's last non-empty line (a Python error's message), '' when there is none."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][-500:] if lines else ""


def _stop(proc: subprocess.Popen[str]) -> None:
    """Close its stdin (it stops Triton and exits); kill its whole session if it lingers."""
    try:
        if proc.stdin:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the session is left (tritonserver, stubs)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


# --- inside the PyTriton process ------------------------------------------------------------


def _serve(config_file: str) -> int:
    config = json.loads(Path(config_file).read_text())
    cap_native_threads(config["threads"])
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from toolkit.bench.chain import InProcessPipeline
    from toolkit.plan import plan_spec

    plan = plan_spec(config["spec"])
    pipeline = config["pipeline"]
    outputs = list(config["outputs"])

    def instance() -> Callable[..., dict[str, np.ndarray]]:
        chain = InProcessPipeline(plan, pipeline)  # each instance its own handlers, as each Triton instance has

        @batch
        def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            env = chain.run(inputs)
            return {o: env[o] for o in outputs}

        return infer

    callables = [instance() for _ in range(config["instances"])]
    cap_native_threads(config["threads"])  # again, for pools the handlers' libraries brought

    def tensors(declared: dict[str, list[Any]]) -> list[Tensor]:
        return [Tensor(name=n, dtype=np.dtype(dtype), shape=tuple(dims)) for n, (dtype, dims) in declared.items()]

    ports = config["ports"]
    triton_config = TritonConfig(
        http_port=ports["http"],
        grpc_port=ports["grpc"],
        metrics_port=ports["metrics"],
        log_file=Path(config["triton_log"]),
        log_verbose=0,
    )
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name=pipeline,
            infer_func=callables,
            inputs=tensors(config["inputs"]),
            outputs=tensors(config["outputs"]),
            config=ModelConfig(
                max_batch_size=config["max_batch_size"],
                batcher=DynamicBatcher(max_queue_delay_microseconds=config["max_queue_delay_us"]),
            ),
            strict=False,
        )
        triton.run()  # returns once the server and the model are ready
        print("READY", flush=True)
        sys.stdin.read()  # until the parent closes stdin
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
