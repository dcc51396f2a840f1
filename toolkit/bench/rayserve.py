"""The peer users would pick: the same handlers as Ray Serve deployments, generated from the same
spec. One deployment per model (replicas = the optimized profile's planned instance counts,
`@serve.batch` with the model's max_batch_size and max_queue_delay), composed by an ingress
deployment through DeploymentHandles, stage by stage (steps of one stage run concurrently).
Requests come over HTTP (Ray Serve's proxy): one .npz in, one .npz out.

The Ray side runs in its own process (``python -m toolkit.bench.rayserve CONFIG.json``), which
prints READY once the application answers and stops Ray when its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.bench.chain import stages
from toolkit.bench.driver import Job, first_response, from_npz, npz_bytes
from toolkit.bench.measure import ProcessCpu, child_env, point_line, run_driver
from toolkit.errors import CompoundError
from toolkit.plan import DeploymentPlan, plan_spec
from toolkit.system import free_ports

MAX_ONGOING = 256  # Ray's default (5) would cap every batch at 5 requests: users raise it


def ray_available() -> str | None:
    """None when ray[serve] can be imported, else why not."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: not available
        return f"ray[serve] is not usable here ({type(exc).__name__}: {exc}); install it with `pip install .[bench]`"
    return None


def run_ray_profile(
    plan: DeploymentPlan,
    pipeline: str,
    settings: Any,
    rows_file: Path,
    work: Path,
    log: Callable[[str], None],
    counts: dict[str, int],
) -> dict[str, Any]:
    reason = ray_available()
    if reason:
        raise CompoundError(reason)
    (port,) = free_ports(1)
    config = {
        "spec": str(plan.loaded.path),
        "pipeline": pipeline,
        "port": port,
        "counts": counts,
        "cores": settings.core_budget,
    }
    config_file = work / "ray-config.json"
    config_file.write_text(json.dumps(config))
    log_file = open(work / "ray-serve.log", "w")
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.bench.rayserve", str(config_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env=child_env(),
    )
    result: dict[str, Any] = {
        "description": (
            "Ray Serve: one deployment per model (replicas as planned, @serve.batch),"
            " composed with DeploymentHandles; HTTP ingress"
        ),
        "instances": counts,
        "dynamic_batching": True,
        "points": [],
    }
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "READY":
            raise CompoundError(
                f"Ray Serve did not start: {line.strip() or 'no output'}", hint=f"log: {work / 'ray-serve.log'}"
            )
        result["ready_s"] = time.perf_counter() - began
        url = f"http://127.0.0.1:{port}/"
        probe = Job(url, [], {}, str(rows_file), 1, 0.0, 0.0, str(work / "probe.json"), protocol="http-npz")
        until_first, first_latency = first_response(probe, timeout_s=60.0)
        result["cold_start_s"] = result["ready_s"] + until_first
        result["first_request_ms"] = first_latency * 1e3
        cpu = ProcessCpu(proc.pid)
        for c in settings.concurrency:
            job = Job(
                url,
                [],
                {},
                str(rows_file),
                c,
                settings.duration_s,
                settings.warmup_s,
                str(work / f"result-ray-{c}.json"),
                protocol="http-npz",
            )
            point = run_driver(job, work, cpu, log)
            result["points"].append(point)
            log("  " + point_line(point))
    finally:
        if proc.stdin:
            proc.stdin.close()  # the Ray process shuts Ray down and exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
    return result


# --- inside the Ray process -----------------------------------------------------------------


def _build_app(spec_path: str, pipeline: str, counts: dict[str, int], cores: int) -> Any:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    plan = plan_spec(spec_path)
    graph = [[(s.model, dict(s.inputs), dict(s.outputs)) for s in stage.steps] for stage in stages(plan, pipeline)]
    outputs = list(plan.spec.pipelines[pipeline].outputs)
    replicas = sum(counts.values()) + 1
    cpu_share = max(0.01, math.floor(100 * cores / replicas) / 100)  # all replicas must fit on `cores`

    @serve.deployment(max_ongoing_requests=MAX_ONGOING)
    class Component:
        def __init__(self, model: str, max_batch: int, wait_s: float) -> None:
            from toolkit.bench.chain import load_handler

            component_plan = plan_spec(spec_path)
            self.handler = load_handler(component_plan, model)
            self.inputs = list(component_plan.spec.models[model].inputs)
            self.outputs = list(component_plan.spec.models[model].outputs)
            self.run_batch.set_max_batch_size(max(1, max_batch))
            self.run_batch.set_batch_wait_timeout_s(wait_s)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
        async def run_batch(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
            sizes = [len(item[self.inputs[0]]) for item in items]
            arrays = {k: np.concatenate([item[k] for item in items]) for k in self.inputs}
            result = self.handler(**arrays)
            split, start = [], 0
            for size in sizes:
                split.append({k: np.asarray(result[k])[start : start + size] for k in self.outputs})
                start += size
            return split

        async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return await self.run_batch(inputs)

    @serve.deployment(max_ongoing_requests=MAX_ONGOING)
    class Ingress:
        def __init__(self, handles: dict[str, Any]) -> None:
            self.handles = handles

        async def __call__(self, request: Request) -> Response:
            env = from_npz(await request.body())
            for stage in graph:
                results = await asyncio.gather(
                    *(self.handles[m].remote({k: env[t] for k, t in ins.items()}) for m, ins, _ in stage)
                )
                for (_, _, outs), result in zip(stage, results):
                    for k, t in outs.items():
                        env[t] = result[k]
            return Response(npz_bytes({o: env[o] for o in outputs}), media_type="application/octet-stream")

    handles = {}
    for model, count in counts.items():
        spec = plan.spec.models[model]
        batching = spec.batching
        wait_s = (batching.max_queue_delay_us / 1e6) if batching else 0.0
        max_batch = spec.max_batch_size if batching else 1
        handles[model] = Component.options(
            name=model, num_replicas=count, ray_actor_options={"num_cpus": cpu_share}
        ).bind(model, max_batch, wait_s)
    return Ingress.options(ray_actor_options={"num_cpus": cpu_share}).bind(handles)


def _serve(config_file: str) -> int:
    config = json.loads(Path(config_file).read_text())
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    ray.init(num_cpus=config["cores"], include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": config["port"]})
        app = _build_app(config["spec"], config["pipeline"], config["counts"], config["cores"])
        serve.run(app, name="bench", route_prefix="/")
        print("READY", flush=True)
        sys.stdin.read()  # until the parent closes stdin
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
