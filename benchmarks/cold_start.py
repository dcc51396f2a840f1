"""Cold branch benchmark: three on-demand components of 1.5 s start-up each behind one switch branch.

The first request that takes the branch waits while they load; compound loads every cold component
the request can reach at once. For comparison, the same three loaded one after another (what a
request cascading through cold components would cost). Run:

    .venv/bin/python benchmarks/cold_start.py --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.client import infer, load_models, unload_model  # noqa: E402
from toolkit.core.system import free_port  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402

SPEC = ROOT / "tests" / "fixtures" / "ondemand" / "pipeline.yaml"
AGENTS = ("planner", "researcher", "writer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compound-cold-"))
    repo = render_repository(plan_spec(SPEC), work / "repo")
    server = LocalServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), workdir=work)
    query = {"query": np.array([[b"deep question"]], dtype=object)}
    with server:
        infer("agent", server.http_url, {"query": np.array([[b"warm the route"]], dtype=object)})
        for round_ in range(1, args.rounds + 1):
            for name in AGENTS:
                unload_model(server.grpc_url, name, server.api_key)
            time.sleep(1.0)
            began = time.monotonic()
            infer("agent", server.http_url, query)
            on_demand = time.monotonic() - began
            for name in AGENTS:
                unload_model(server.grpc_url, name, server.api_key)
            time.sleep(1.0)
            began = time.monotonic()
            for name in AGENTS:  # one after another, as a request cascading through them would
                load_models(server.grpc_url, {name: None}, server.api_key)
            infer("agent", server.http_url, query)
            sequential = time.monotonic() - began
            print(f"round {round_}: first request {on_demand:.2f} s on demand; {sequential:.2f} s loading one by one")


if __name__ == "__main__":
    main()
