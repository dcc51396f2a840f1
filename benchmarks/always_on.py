"""Always-on serving, measured on real processes (docs/always-on.md):

A. one supervised server under the deadline storm (64 gRPC clients with a 20 ms deadline, which
   crashes Triton 2.51): how long the deployment is down after each crash, then a normal load after
   the storm (16 clients, no deadline) must fail nothing;
B. `--replicas 2`, each replica SIGKILLed in turn under a closed loop of 16 gRPC clients without
   client retries: failed requests, and how soon the killed replica serves again;
C. `--replicas 2` under the deadline storm from one set of clients while another set without
   deadlines runs: the second set's success rate.

    python benchmarks/always_on.py --out benchmarks/results/always_on
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.core.system import free_port  # noqa: E402
from toolkit.deployment.deployment import Deployment  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.targets.local import pid_running_tritonserver  # noqa: E402
from toolkit.targets.settings import DeployRequest  # noqa: E402

SPEC = ROOT / "examples" / "textdemo" / "pipeline.yaml"
TEXTS = ["I love this product", "terrible, awful service", "the match last night was great", "new phone next week"]


class Load:
    """`clients` gRPC threads sending `classify` one after another (no client retry), each with
    `deadline_s` (None: no deadline); outcomes counted per second since the start."""

    def __init__(self, url: str, clients: int, deadline_s: Optional[float]) -> None:
        self.url, self.clients, self.deadline_s = url, clients, deadline_s
        self.outcomes: Counter[str] = Counter()
        self.timeline: dict[int, Counter[str]] = {}
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        # each client its own connection, as clients in other processes would have (gRPC shares one
        # connection between the channels of a process unless told otherwise)
        client = grpcclient.InferenceServerClient(self.url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
        while not self.stop.is_set():
            tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
            text = f"{TEXTS[int(rng.integers(len(TEXTS)))]} {int(rng.integers(1 << 30))}"
            tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
            try:
                client.infer("classify", [tensor], client_timeout=self.deadline_s)
                outcome = "ok"
            except Exception as exc:  # noqa: BLE001 - every failure is an outcome here
                message = str(exc)
                outcome = "deadline" if "Deadline" in message or "DEADLINE" in message else "failed"
                if outcome == "failed":
                    with self.lock:
                        self.errors[message[:120]] += 1
                    time.sleep(0.01)  # a refused connection answers at once: do not spin
            second = int(time.monotonic() - self.started)
            with self.lock:
                self.outcomes[outcome] += 1
                self.timeline.setdefault(second, Counter())[outcome] += 1
        client.close()

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def summary(self) -> dict[str, Any]:
        total = sum(self.outcomes.values())
        return {
            "clients": self.clients,
            "deadline_ms": None if self.deadline_s is None else self.deadline_s * 1000,
            "requests": total,
            "outcomes": dict(self.outcomes),
            "success_rate": round(self.outcomes["ok"] / total, 5) if total else None,
            "errors": dict(self.errors.most_common(5)),
        }


def deploy(repo: Path, name: str, replicas: Optional[int]) -> Deployment:
    request = DeployRequest(
        repository=repo,
        name=name,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        replicas=replicas,
    )
    return Deployment.start(request)


def restarts_since(deployment: Deployment, count_before: int) -> list[dict[str, Any]]:
    return Deployment.find(deployment.name).restarts()[count_before:]


def wait_serving(deployment: Deployment, timeout_s: float = 60.0) -> None:
    """Until no server is down (after a storm, the last crash's restart may still be under way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = Deployment.find(deployment.name)
        if all(current.servers_running()) and current.status().condition == "ready":
            return
        time.sleep(0.25)


def scenario_a(repo: Path, storm_s: float, after_s: float) -> dict[str, Any]:
    deployment = deploy(repo, "always-on-a", None)
    try:
        with Load(deployment.endpoints.grpc_url, 64, 0.020) as storm:
            time.sleep(storm_s)
        # the storm's clients closing their channels cancel what they had in flight: that can crash the
        # server once more, a moment after they are gone (its signal handler writes the stack first)
        time.sleep(3.0)
        wait_serving(deployment)
        restarts = restarts_since(deployment, 0)
        with Load(deployment.endpoints.grpc_url, 16, None) as normal:
            time.sleep(after_s)
        report = Deployment.find(deployment.name).status().to_json()
        down = [r["down_s"] for r in restarts]
        return {
            "storm": storm.summary(),
            "crashes": len(restarts),
            "down_s": down,
            "max_down_s": max(down) if down else None,
            "reasons": sorted({r["reason"].split(" in ")[0] for r in restarts}),
            "after_storm": normal.summary(),
            "status_restarts": report["restarts"]["count"],
        }
    finally:
        Deployment.find(deployment.name).stop()


def scenario_b(repo: Path, settle_s: float) -> dict[str, Any]:
    deployment = deploy(repo, "always-on-b", 2)
    back_s: list[float] = []
    try:
        with Load(deployment.endpoints.grpc_url, 16, None) as load:
            time.sleep(settle_s)
            for index in range(2):
                victim = Deployment.find(deployment.name).state.server_records()[index]
                os.kill(victim.pid or 0, signal.SIGKILL)
                killed = time.monotonic()
                while time.monotonic() - killed < 60:
                    current = Deployment.find(deployment.name)
                    record = current.state.server_records()[index]
                    if (
                        record.pid != victim.pid
                        and pid_running_tritonserver(record.pid)
                        and current._in_rotation(index)
                    ):
                        break
                    time.sleep(0.1)
                back_s.append(round(time.monotonic() - killed, 2))
                time.sleep(settle_s)
        return {"load": load.summary(), "back_s": back_s, "proxy": Deployment.find(deployment.name).status().proxy}
    finally:
        Deployment.find(deployment.name).stop()


def scenario_c(repo: Path, storm_s: float) -> dict[str, Any]:
    deployment = deploy(repo, "always-on-c", 2)
    try:
        url = deployment.endpoints.grpc_url
        with Load(url, 16, None) as steady, Load(url, 64, 0.020) as storm:
            time.sleep(storm_s)
        restarts = restarts_since(deployment, 0)
        return {
            "storm": storm.summary(),
            "without_deadlines": steady.summary(),
            "crashes": len(restarts),
            "down_s": [r["down_s"] for r in restarts],
        }
    finally:
        Deployment.find(deployment.name).stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "always_on")
    parser.add_argument("--storm-s", type=float, default=15.0)
    parser.add_argument("--after-s", type=float, default=10.0)
    parser.add_argument("--scenarios", default="a,b,c")
    args = parser.parse_args()
    os.environ.setdefault("COMPOUND_STATE_DIR", tempfile.mkdtemp(prefix="compound-always-on-state-"))
    work = Path(tempfile.mkdtemp(prefix="compound-always-on-"))
    repo = render_repository(plan_spec(SPEC), work / "repo")
    results: dict[str, Any] = {
        "command": "python benchmarks/always_on.py " + " ".join(sys.argv[1:]),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }
    chosen = set(args.scenarios.split(","))
    if "a" in chosen:
        results["a_one_server_storm"] = scenario_a(repo, args.storm_s, args.after_s)
        print(json.dumps(results["a_one_server_storm"], indent=1), flush=True)
    if "b" in chosen:
        results["b_replicas_killed_in_turn"] = scenario_b(repo, 3.0)
        print(json.dumps(results["b_replicas_killed_in_turn"]["load"], indent=1), flush=True)
    if "c" in chosen:
        results["c_replicas_storm_beside_steady"] = scenario_c(repo, args.storm_s)
        print(json.dumps(results["c_replicas_storm_beside_steady"], indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
