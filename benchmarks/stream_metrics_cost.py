"""What the streaming metrics cost a response: the stepping loop's CPU time per response, with and
without them, on a real tritonserver (tests/fixtures/streaming's `solo`: a generator that yields at once).

Why CPU time of the model's stub process: the client (one Python gRPC stream reader per stream) is slower
than the loop on a small machine, so responses per second measure the client; the stub's CPU seconds
over the responses it sent measure the loop (handler, conversion, send, and the metrics' arithmetic and
flushes). "before": the model's runtime files as on `--before-ref` (default main), without the metrics;
"counting": the loop counts but the flusher pushes none of its series (what the pushes cost: after -
counting). Rounds alternate the variants on fresh servers; the figure is the median per-response CPU.

    python benchmarks/stream_metrics_cost.py [--streams 4] [--responses 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import FIXTURES, start_server  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.stream_client import stream_infer  # noqa: E402
from toolkit.targets.local import command_line, group_members  # noqa: E402

MODEL = "solo"
RUNTIME_FILES = {"model.py": "templates/model.py", "compound_stream.py": "templates/stream.py"}


def stub_cpu_s(server_pid: int) -> float:
    """User + system CPU seconds of the model's stub process(es)."""
    total = 0.0
    for pid in group_members(server_pid):
        if f"/{MODEL}/" in " ".join(command_line(pid)):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / 100.0  # utime, stime in clock ticks (USER_HZ 100)
    return total


def one_round(repo: Path, logs: Path, streams: int, responses: int) -> float:
    server = start_server(repo, logs)
    try:
        list(stream_infer(MODEL, server.grpc_url, {"n": np.array([10], np.int32)}))  # warm
        time.sleep(0.5)
        before = stub_cpu_s(server.pid)
        counts: list[int] = []

        def read() -> None:
            counts.append(sum(1 for _ in stream_infer(MODEL, server.grpc_url, {"n": np.array([responses], np.int32)})))

        threads = [threading.Thread(target=read) for _ in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cpu = stub_cpu_s(server.pid) - before
        assert counts == [responses] * streams, counts
        return cpu / (streams * responses)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--responses", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before-ref", default="main")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stream-metrics-cost-"))
    after = render_repository(plan_spec(FIXTURES / "streaming" / "pipeline.yaml"), work / "after")
    before = render_repository(plan_spec(FIXTURES / "streaming" / "pipeline.yaml"), work / "before")
    for name, source in RUNTIME_FILES.items():
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{args.before_ref}:{source}"], check=True, capture_output=True
        ).stdout
        (before / MODEL / "1" / name).write_bytes(text)
    counting = render_repository(plan_spec(FIXTURES / "streaming" / "pipeline.yaml"), work / "counting")
    flusher = counting / MODEL / "1" / "compound_metrics.py"
    flusher.write_text(flusher.read_text().replace("for counts in self.streams:", "for counts in []:"))
    variants = {"before": before, "counting": counting, "after": after}
    results: dict[str, list[float]] = {label: [] for label in variants}
    for index in range(args.rounds):
        for label, repo in variants.items():
            per_response = one_round(repo, work / f"logs-{label}-{index}", args.streams, args.responses)
            results[label].append(per_response)
            print(f"round {index} {label}: {1e6 * per_response:.2f} us CPU per response", flush=True)
    b, c, a = (statistics.median(results[label]) for label in ("before", "counting", "after"))
    print(
        f"median us CPU per response: before {1e6 * b:.2f}, counting {1e6 * c:.2f}, after {1e6 * a:.2f} "
        f"(after/before {a / b:.3f}x, {1e6 * (a - b):+.2f} us)"
    )


if __name__ == "__main__":
    main()
