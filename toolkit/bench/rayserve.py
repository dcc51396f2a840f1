"""The peer users would pick: the same handlers as Ray Serve deployments, generated from the same
spec, set up the way Ray documents for throughput, under the same constraints as Triton's models.

- `ray-serve` (composed): one deployment per model (replicas = the optimized profile's planned
  instance counts, `@serve.batch` with the model's max_batch_size and max_queue_delay), composed by
  an ingress deployment through DeploymentHandles, stage by stage (steps of one stage concurrently).
- `ray-serve-fused`: ONE deployment chaining every handler in-process under `@serve.batch` (the
  pipeline's max_batch_size, the components' longest queue delay), one replica per core: Ray's
  counterpart of `fuse: true`.

Fair to Ray: every replica caps its native thread pools at the model's `instances.threads`, as the
generated Triton models do; the ingress runs as many replicas as there are cores (Triton's
frontend has a thread pool); requests are KServe v2 inference requests with binary tensor data,
the same bytes Triton's HTTP endpoint takes (toolkit.bench.driver encodes and decodes both ends);
and the Ray settings below remove what, measured here, limited Ray rather than the handlers.

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
from toolkit.bench.driver import V2_HEADER, Call, Job, decode_v2_request, encode_v2_response, first_response
from toolkit.bench.machine import THREAD_ENV, cap_native_threads, child_env
from toolkit.bench.measure import ProcessCpu, point_line, run_driver
from toolkit.bench.profiles import fused_instances, tensor_datatypes
from toolkit.core.errors import CompoundError
from toolkit.core.system import free_ports
from toolkit.plan import DeploymentPlan, plan_spec

MAX_ONGOING = 256  # Ray's default (5) would cap every batch at 5 requests: users raise it

# Environment of the Ray process (workers inherit it). Each entry is a limit found on this setup:
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray starts every worker process at nice 15 (worker_niceness): beside any other process on the
    # machine (the load generator, a neighbour's job) its replicas get a fraction of a core. Triton's
    # processes run at the default priority; so do these.
    "RAY_worker_niceness": "0",
    # Ray Serve's documented throughput mode (user code and router on the replica's own event loop,
    # buffered request logs, gRPC between deployments) ...
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # ... without direct ingress (a port per replica and a load balancer in front): requests go through the proxy.
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
}


def ray_available() -> str | None:
    """None when ray[serve] can be imported, else why not."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: not available
        return f"ray[serve] is not usable here ({type(exc).__name__}: {exc}); install it with `pip install .[bench]`"
    return None


def ray_config(
    plan: DeploymentPlan, pipeline: str, counts: dict[str, int], cores: int, fused: bool, port: int
) -> dict[str, Any]:
    """What the Ray process deploys: the same instance counts, thread caps and batching as Triton's
    profiles (composed: the optimized profile's; fused: the fused profile's)."""
    p = plan.pipelines[pipeline]
    delays = [
        m.spec.batching.max_queue_delay_us for m in plan.models.values() if m.name in p.models and m.spec.batching
    ]
    return {
        "spec": str(plan.loaded.path),
        "pipeline": pipeline,
        "port": port,
        "cores": cores,
        "fused": fused,
        "counts": {m: counts.get(m, plan.models[m].instance_count) for m in p.models},
        "threads": {m: plan.models[m].threads for m in p.models},
        "fused_threads": fused_instances(plan, pipeline, cores).threads,
        "fused_max_batch": max(1, p.max_batch_size),
        "fused_wait_s": max(delays, default=0) / 1e6,
        "ingress_replicas": cores,
    }


def run_ray_profile(
    plan: DeploymentPlan,
    pipeline: str,
    settings: Any,
    rows_file: Path,
    work: Path,
    log: Callable[[str], None],
    counts: dict[str, int],
    fused: bool = False,
) -> dict[str, Any]:
    reason = ray_available()
    if reason:
        raise CompoundError(reason)
    (port,) = free_ports(1)
    config = ray_config(plan, pipeline, counts, settings.core_budget, fused, port)
    name = "ray-fused" if fused else "ray"
    config_file = work / f"{name}-config.json"
    config_file.write_text(json.dumps(config))
    log_path = work / f"{name}-serve.log"
    log_file = open(log_path, "w")
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.bench.rayserve", str(config_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env={**child_env(), **RAY_ENV},
    )
    if fused:
        description = (
            f"Ray Serve, fused: one deployment chains every handler under @serve.batch, {config['cores']} replica(s);"
            " HTTP ingress (KServe v2 binary tensors)"
        )
        instances = {pipeline: config["cores"]}
    else:
        description = (
            "Ray Serve: one deployment per model (replicas as planned, @serve.batch), composed with"
            f" DeploymentHandles by {config['ingress_replicas']} ingress replica(s); HTTP ingress (KServe v2 binary"
            " tensors)"
        )
        instances = {**config["counts"], "ingress": config["ingress_replicas"]}
    result: dict[str, Any] = {
        "description": description,
        "instances": instances,
        "threads": {pipeline: config["fused_threads"]} if fused else config["threads"],
        "ray_env": RAY_ENV,
        "dynamic_batching": True,
        "points": [],
    }
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "READY":
            raise CompoundError(f"Ray Serve did not start: {line.strip() or 'no output'}", hint=f"log: {log_path}")
        result["ready_s"] = time.perf_counter() - began
        url = f"http://127.0.0.1:{port}"
        p = plan.spec.pipelines[pipeline]
        request = [[Call(pipeline, {t: t for t in p.inputs}, {t: t for t in p.outputs})]]
        datatypes = tensor_datatypes(plan, pipeline)

        def job(concurrency: int, duration_s: float, warmup_s: float, out: str) -> Job:
            return Job(
                url, request, datatypes, str(rows_file), concurrency, duration_s, warmup_s, out, protocol="http-v2"
            )

        until_first, first_latency = first_response(job(1, 0.0, 0.0, str(work / "probe.json")), timeout_s=60.0)
        result["cold_start_s"] = result["ready_s"] + until_first
        result["first_request_ms"] = first_latency * 1e3
        cpu = ProcessCpu(proc.pid)
        for c in settings.concurrency:
            point = run_driver(
                job(c, settings.duration_s, settings.warmup_s, str(work / f"result-{name}-{c}.json")), work, cpu, log
            )
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


def _actor_options(cpu_share: float, threads: int) -> dict[str, Any]:
    return {"num_cpus": cpu_share, "runtime_env": {"env_vars": {name: str(threads) for name in THREAD_ENV}}}


def _split(items: list[dict[str, np.ndarray]], names: list[str], result: dict[str, Any]) -> list[dict[str, Any]]:
    """One merged batch's outputs back to its requests, in order."""
    first = next(iter(items[0]))
    split, start = [], 0
    for item in items:
        size = len(item[first])
        split.append({k: np.asarray(result[k])[start : start + size] for k in names})
        start += size
    return split


def _build_app(config: dict[str, Any]) -> Any:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    spec_path, pipeline, cores = config["spec"], config["pipeline"], config["cores"]
    plan = plan_spec(spec_path)
    outputs = list(plan.spec.pipelines[pipeline].outputs)

    async def answer(request: Request, run: Callable[[dict[str, np.ndarray]], Any]) -> Response:
        inputs = decode_v2_request(await request.body(), request.headers.get(V2_HEADER))
        env = await run(inputs)
        body, headers = encode_v2_response({o: env[o] for o in outputs})
        return Response(body, headers=headers)

    # Applied as a call, not a class decorator: a type checker keeps a decorated class's own type.
    deployment = serve.deployment(max_ongoing_requests=MAX_ONGOING)

    if config["fused"]:

        class FusedPipeline:
            def __init__(self, threads: int, max_batch: int, wait_s: float) -> None:
                from toolkit.bench.chain import InProcessPipeline

                cap_native_threads(threads)
                fused_plan = plan_spec(spec_path)
                self.chain = InProcessPipeline(fused_plan, pipeline)
                self.inputs = list(fused_plan.spec.pipelines[pipeline].inputs)
                cap_native_threads(threads)  # again, for pools the handlers' libraries brought
                self.run_batch.set_max_batch_size(max_batch)
                self.run_batch.set_batch_wait_timeout_s(wait_s)

            @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
            async def run_batch(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
                arrays = {k: np.concatenate([item[k] for item in items]) for k in self.inputs}
                return _split(items, outputs, self.chain.run(arrays))

            async def __call__(self, request: Request) -> Response:
                return await answer(request, self.run_batch)

        return (
            deployment(FusedPipeline)
            .options(num_replicas=cores, ray_actor_options=_actor_options(1.0, config["fused_threads"]))
            .bind(config["fused_threads"], config["fused_max_batch"], config["fused_wait_s"])
        )

    graph = [[(s.model, dict(s.inputs), dict(s.outputs)) for s in stage.steps] for stage in stages(plan, pipeline)]
    counts: dict[str, int] = config["counts"]
    replicas = sum(counts.values()) + config["ingress_replicas"]
    share = max(0.01, math.floor(100 * cores / replicas) / 100)  # all replicas must fit on `cores`

    class Component:
        def __init__(self, model: str, threads: int, max_batch: int, wait_s: float) -> None:
            from toolkit.bench.chain import load_handler

            cap_native_threads(threads)
            component_plan = plan_spec(spec_path)
            self.handler = load_handler(component_plan, model)
            cap_native_threads(threads)
            self.inputs = list(component_plan.spec.models[model].inputs)
            self.outputs = list(component_plan.spec.models[model].outputs)
            self.run_batch.set_max_batch_size(max(1, max_batch))
            self.run_batch.set_batch_wait_timeout_s(wait_s)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
        async def run_batch(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
            arrays = {k: np.concatenate([item[k] for item in items]) for k in self.inputs}
            return _split(items, self.outputs, self.handler(**arrays))

        async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return await self.run_batch(inputs)

    class Ingress:
        def __init__(self, handles: dict[str, Any]) -> None:
            self.handles = handles

        async def run(self, env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            for stage in graph:
                results = await asyncio.gather(
                    *(self.handles[m].remote({k: env[t] for k, t in ins.items()}) for m, ins, _ in stage)
                )
                for (_, _, outs), result in zip(stage, results):
                    for k, t in outs.items():
                        env[t] = result[k]
            return env

        async def __call__(self, request: Request) -> Response:
            return await answer(request, self.run)

    handles = {}
    for model, count in counts.items():
        batching = plan.spec.models[model].batching
        wait_s = (batching.max_queue_delay_us / 1e6) if batching else 0.0
        max_batch = plan.spec.models[model].max_batch_size if batching else 1
        threads = config["threads"][model]
        handles[model] = (
            deployment(Component)
            .options(name=model, num_replicas=count, ray_actor_options=_actor_options(share, threads))
            .bind(model, threads, max_batch, wait_s)
        )
    return (
        deployment(Ingress)
        .options(num_replicas=config["ingress_replicas"], ray_actor_options=_actor_options(share, 1))
        .bind(handles)
    )


def _serve(config_file: str) -> int:
    config = json.loads(Path(config_file).read_text())
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import serve

    ray.init(num_cpus=config["cores"], include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": config["port"]},
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        serve.run(_build_app(config), name="bench", route_prefix="/")
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
