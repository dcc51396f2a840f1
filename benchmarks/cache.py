"""Tiered cache benchmark on the cache example (examples/cache): two pipelines sharing one expensive
step (`encode`), served on the embedded Triton with a real Redis.

1. Zipf load: each request calls both pipelines with the same text; texts are drawn from 10,000
   keys with Zipf s = 1.1. The same deployment with and without `encode`'s cache, closed loop at a
   fixed concurrency; then the answers of both deployments are compared for a sample of keys.
2. Two servers, one Redis: texts the first server's `classify` computed, asked of the second
   server's `retrieve`, against texts nobody computed before (median single-request latency).
3. Redis killed under load on the cached deployment: failed requests counted.

Run (about 3 minutes on 2 cores):

    .venv/bin/python benchmarks/cache.py --out benchmarks/results/cache
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.bench.driver import Call, Job  # noqa: E402
from toolkit.bench.measure import run_driver  # noqa: E402
from toolkit.client import infer  # noqa: E402
from toolkit.core.system import free_port  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402
from toolkit.targets.redis import RedisServer  # noqa: E402

EXAMPLE = ROOT / "examples" / "cache"
KEYS = 10_000
ZIPF_S = 1.1


def zipf_keys(count: int, seed: int = 0) -> np.ndarray:
    """`count` draws from ranks 1..KEYS with P(k) proportional to k^-s (numpy's zipf is unbounded)."""
    weights = 1.0 / np.arange(1, KEYS + 1) ** ZIPF_S
    return np.random.default_rng(seed).choice(KEYS, size=count, p=weights / weights.sum())


def text_of(key: int) -> bytes:
    return f"customer question number {key}: where is my order and when will it arrive".encode()


def repositories(work: Path) -> dict[str, Path]:
    """The example as written (cached) and the same without encode's cache."""
    uncached = work / "uncached-spec"
    shutil.copytree(EXAMPLE, uncached, ignore=shutil.ignore_patterns("__pycache__"))
    data = yaml.safe_load((uncached / "pipeline.yaml").read_text())
    del data["models"]["encode"]["cache"]
    (uncached / "pipeline.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return {
        "cached": render_repository(plan_spec(EXAMPLE / "pipeline.yaml"), work / "cached"),
        "uncached": render_repository(plan_spec(uncached / "pipeline.yaml"), work / "uncached"),
    }


def serve(repo: Path, work: Path, redis_url: str) -> LocalServer:
    work.mkdir(parents=True, exist_ok=True)
    server = LocalServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        workdir=work,
        redis_url=redis_url,
        ready_timeout_s=300,
    )
    return server  # started by `with`


def zipf_load(server: LocalServer, work: Path, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    keys = zipf_keys(200_000)
    rows = work / "rows.npz"
    np.savez(rows, text=np.array([[text_of(int(k))] for k in keys], dtype=object))
    calls = [
        Call("classify", {"text": "text"}, {"label": "label"}),
        Call("retrieve", {"text": "text"}, {"documents": "documents", "scores": "scores"}),
    ]
    job = Job(
        url=server.grpc_url,
        stages=[calls],
        datatypes={"text": "BYTES"},
        rows_file=str(rows),
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
        result=str(work / "result.json"),
    )
    return run_driver(job, work, None, lambda line: print(line, flush=True))


def answers(server: LocalServer, keys: list[int]) -> dict[str, np.ndarray]:
    """Both pipelines' outputs for these keys, in batches the pipelines accept."""
    parts: dict[str, list[np.ndarray]] = {"label": [], "documents": [], "scores": []}
    for start in range(0, len(keys), 16):
        batch = {"text": np.array([[text_of(k)] for k in keys[start : start + 16]], dtype=object)}
        parts["label"].append(infer("classify", server.http_url, batch)["label"])
        retrieve = infer("retrieve", server.http_url, batch)
        parts["documents"].append(retrieve["documents"])
        parts["scores"].append(retrieve["scores"])
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def compare(cached: dict[str, np.ndarray], uncached: dict[str, np.ndarray]) -> dict[str, Any]:
    """Labels and documents must match exactly. Scores are float32 from a dense model whose BLAS
    sums in an order that depends on the batch a row was computed in (with or without a cache),
    so they are compared to float32 rounding, and the largest difference is reported."""
    diff = float(np.abs(cached["scores"] - uncached["scores"]).max())
    return {
        "labels_identical": bool((cached["label"] == uncached["label"]).all()),
        "documents_identical": bool((cached["documents"] == uncached["documents"]).all()),
        "scores_max_abs_diff": diff,
        "identical": bool(
            (cached["label"] == uncached["label"]).all()
            and (cached["documents"] == uncached["documents"]).all()
            and diff <= 1e-5
        ),
    }


def batch_dependence(server: LocalServer, keys: list[int]) -> float:
    """The same rows computed alone and inside a batch, without a cache: the float32 noise floor."""
    alone = np.concatenate([answers(server, [k])["scores"] for k in keys])
    return float(np.abs(alone - answers(server, keys)["scores"]).max())


def median_ms(server: LocalServer, pipeline: str, texts: list[bytes]) -> float:
    """One request at a time on one open gRPC connection (a client's setup is not the server's time)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    times = []
    try:
        for text in texts:
            data = grpcclient.InferInput("text", [1, 1], "BYTES")
            data.set_data_from_numpy(np.array([[text]], dtype=object))
            start = time.perf_counter()
            client.infer(pipeline, [data])
            times.append(time.perf_counter() - start)
    finally:
        client.close()
    return 1000 * statistics.median(times)


def redis_outage(server: LocalServer, redis: RedisServer, seconds: float) -> dict[str, Any]:
    """Clients over both pipelines with fresh texts (every request reaches Redis); Redis is
    killed a third of the way in and started again two thirds in."""
    import tritonclient.grpc as grpcclient

    stop = threading.Event()
    counts = {"done": 0, "failed": 0}
    samples: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        conn = grpcclient.InferenceServerClient(server.grpc_url)
        n = 0
        while not stop.is_set():
            n += 1
            data = grpcclient.InferInput("text", [1, 1], "BYTES")
            data.set_data_from_numpy(np.array([[f"outage {index} {n} {time.time_ns()}".encode()]], dtype=object))
            try:
                conn.infer(("classify", "retrieve")[index % 2], [data], client_timeout=30)
                with lock:
                    counts["done"] += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                with lock:
                    counts["failed"] += 1
                    if len(samples) < 3:
                        samples.append(str(exc)[:200])
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(seconds / 3)
    redis.kill()
    time.sleep(seconds / 3)
    redis.start()
    time.sleep(seconds / 3)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return {"requests": counts["done"], "failed": counts["failed"], "error_samples": samples, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/cache"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compound-cache-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    repos = repositories(work)
    results: dict[str, Any] = {"keys": KEYS, "zipf_s": ZIPF_S, "concurrency": args.concurrency}
    with RedisServer(workdir=work / "redis") as redis:
        import redis as redis_client

        flush = redis_client.Redis.from_url(redis.url).flushall
        for name in ("uncached", "cached"):
            flush()
            with serve(repos[name], work / f"server-{name}", redis.url) as server:
                print(f"== Zipf load, {name}", flush=True)
                results[name] = zipf_load(server, work / f"load-{name}", args.concurrency, args.duration, args.warmup)
                sample = [int(k) for k in zipf_keys(200, seed=7)] + list(range(9_000, 9_050))  # hot and cold keys
                results[f"{name}_answers"] = answers(server, sample)
                if name == "uncached":
                    results["uncached_batch_dependence"] = batch_dependence(server, list(range(9_100, 9_116)))
        results["answers"] = compare(results.pop("cached_answers"), results.pop("uncached_answers"))
        results["speedup"] = results["cached"]["throughput_rps"] / results["uncached"]["throughput_rps"]

        print("== two servers, one Redis", flush=True)
        flush()
        with serve(repos["cached"], work / "server-a", redis.url) as first:
            with serve(repos["cached"], work / "server-b", redis.url) as second:
                fresh = [f"never seen {i} {time.time_ns()}".encode() for i in range(100)]
                shared = [f"seen by the other server {i} {time.time_ns()}".encode() for i in range(100)]
                for text in shared:
                    infer("classify", first.http_url, {"text": np.array([[text]], dtype=object)})
                computing = median_ms(second, "retrieve", fresh)
                from_redis = median_ms(second, "retrieve", shared)
                results["two_servers"] = {
                    "computing_median_ms": computing,
                    "from_other_server_median_ms": from_redis,
                    "speedup": computing / from_redis,
                }
                print("== Redis killed under load", flush=True)
                results["redis_outage"] = redis_outage(first, redis, 12.0)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    uncached, cached = results["uncached"], results["cached"]
    two = results["two_servers"]
    lines = [
        f"Zipf s={ZIPF_S} over {KEYS} keys, both pipelines per request, concurrency {args.concurrency}:",
        f"  without cache: {uncached['throughput_rps']:.1f} req/s, p95 {uncached['latency_ms']['p95']:.1f} ms",
        f"  with cache:    {cached['throughput_rps']:.1f} req/s, p95 {cached['latency_ms']['p95']:.1f} ms",
        f"  speedup {results['speedup']:.2f}x; answers of 250 keys: labels identical "
        f"{results['answers']['labels_identical']}, documents identical {results['answers']['documents_identical']}, "
        f"scores within {results['answers']['scores_max_abs_diff']:.1e} (the same rows computed alone and in a "
        f"batch without a cache differ by {results['uncached_batch_dependence']:.1e})",
        f"Two servers, one Redis: computing {two['computing_median_ms']:.2f} ms, from the other server's entries "
        f"{two['from_other_server_median_ms']:.2f} ms ({two['speedup']:.2f}x)",
        f"Redis killed under load: {results['redis_outage']['requests']} requests, "
        f"{results['redis_outage']['failed']} failed",
    ]
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
