"""What a scale-up costs today: the time of a load with a changed instance count, and what Triton
creates and destroys for it.

On the bursty example's CPU-bound `classifier` (7 ms of one core per row, a warmup of batch 1 and
16 declared): each transition (1->2, 2->3, 3->2, 2->1, 1->3) is one `load` with a config override,
as the runtime issues it, timed from the request to its answer (Triton answers once the new
instances are initialised, warmed up and serving). It counts the instances Triton initialised and
finalised for it in the server's log, and times the same transitions without the warmup. Run:

    .venv/bin/python benchmarks/scale_up_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.client import load_models, model_config  # noqa: E402
from toolkit.core.system import free_port  # noqa: E402
from toolkit.plan import plan_spec  # noqa: E402
from toolkit.repository.render import render_repository  # noqa: E402
from toolkit.targets.local import LocalServer  # noqa: E402

SPEC = ROOT / "examples" / "bursty" / "pipeline.yaml"
MODEL = "classifier"
TRANSITIONS = [(1, 2), (2, 3), (3, 2), (2, 1), (1, 3), (3, 1)]


def rescale(server: LocalServer, config: dict[str, Any], count: int, log: Path) -> tuple[float, int, int]:
    """One load with `count` instances: seconds, instances initialised, instances finalised."""
    config = copy.deepcopy(config)
    for group in config.get("instance_group") or []:
        group["count"] = count
    before = log.read_text(errors="replace")
    began = time.monotonic()
    error = load_models(server.grpc_url, {MODEL: config}, server.api_key)[MODEL]
    took = time.monotonic() - began
    if error is not None:
        raise SystemExit(f"load of {MODEL} with {count} instance(s) failed: {error}")
    time.sleep(0.5)  # the log's lines of this load
    added = log.read_text(errors="replace")[len(before) :]
    initialised = added.count(f"TRITONBACKEND_ModelInstanceInitialize: {MODEL}_")
    finalised = added.count("TRITONBACKEND_ModelInstanceFinalize")  # logged at verbose levels only
    return took, initialised, finalised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compound-scale-"))
    repo = render_repository(plan_spec(SPEC), work / "repo")
    log = work / "tritonserver.log"
    server = LocalServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), workdir=work, log_path=log
    )
    with server:
        warm = model_config(server.http_url, MODEL)
        cold = {**copy.deepcopy(warm), "model_warmup": []}
        for label, config in (("with warmup", warm), ("without warmup", cold)):
            times: dict[tuple[int, int], list[float]] = {t: [] for t in TRANSITIONS}
            counts: dict[tuple[int, int], tuple[int, int]] = {}
            rescale(server, config, 1, log)
            for _ in range(args.rounds):
                for before, after in TRANSITIONS:
                    took, initialised, finalised = rescale(server, config, after, log)
                    times[(before, after)].append(took)
                    counts[(before, after)] = (initialised, finalised)
            for (before, after), seconds in times.items():
                initialised, finalised = counts[(before, after)]
                print(
                    f"{label:<15} {before}->{after}: median {statistics.median(seconds):.2f} s "
                    f"(min {min(seconds):.2f}, max {max(seconds):.2f}); instances initialised {initialised}, "
                    f"finalised {finalised}"
                )


if __name__ == "__main__":
    main()
