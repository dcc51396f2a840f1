"""Load-test plumbing that needs no server: option checks, SLO gates, locust argv, load shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.core.errors import CompoundError
from toolkit.loadtest.runner import LatencyStats, LoadTestOptions, LocustRunner, gate, locustfile_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"protocol": "ftp"}, "unknown protocol 'ftp'"),
        ({"shape": "zigzag"}, "unknown load shape 'zigzag'"),
        ({"users": 0}, "--users must be at least 1"),
        ({"spawn_rate": 0}, "--spawn-rate must be above 0"),
        ({"workers": -1}, "--workers must be 0 or more"),
        ({"max_failure_ratio": 1.5}, "--max-failure-ratio must be within 0..1"),
        ({"p95_slo_ms": 0}, "--p95-slo-ms must be above 0"),
        ({"run_time_s": None}, "a headless run needs --run-time"),
        ({"url": "localhost"}, "--url must be HOST:PORT"),
    ],
)
def test_option_errors(change: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"pipeline": "classify", "url": "127.0.0.1:8000", **change}
    options = LoadTestOptions(**fields)  # type: ignore[arg-type]
    with pytest.raises(CompoundError, match=message.replace(".", r"\.")):
        options.check()


def test_gates() -> None:
    ok = LatencyStats(requests=100, failures=1, p95_ms=20.0)
    assert gate(ok, None, None) == []
    assert gate(ok, 25.0, 0.05) == []
    assert gate(ok, 10.0, None) == ["p95 latency 20 ms is above the SLO of 10 ms"]
    assert gate(ok, None, 0.0) == ["failure ratio 0.0100 (1/100) is above 0"]
    assert gate(LatencyStats(), 10.0, None) == ["no request completed"]
    assert gate(LatencyStats(), None, None) == []


def test_locust_argv_for_each_role(tmp_path: Path) -> None:
    options = LoadTestOptions(
        pipeline="classify",
        url="127.0.0.1:8001",
        protocol="grpc",
        users=4,
        spawn_rate=2,
        run_time_s=7,
        workers=2,
        data=Path("d.jsonl"),
    )
    runner = LocustRunner(options, tmp_path)
    master = runner.command("master")
    assert master[:3] == [sys.executable, "-m", "locust"] and "--headless" in master
    assert master[master.index("--host") + 1] == "grpc://127.0.0.1:8001"
    assert master[master.index("-t") + 1] == "7s" and master[master.index("--expect-workers") + 1] == "2"
    worker = runner.command("worker")
    assert "--worker" in worker and worker[worker.index("--master-port") + 1] == str(runner.master_port)
    assert "-u" not in worker
    env = runner.environment()
    assert env["COMPOUND_PIPELINE"] == "classify" and env["COMPOUND_DATA"] == str(Path("d.jsonl").resolve())
    ui = LocustRunner(LoadTestOptions(pipeline="p", url="h:1", ui=True, web_port=18089), tmp_path).command("standalone")
    assert "--headless" not in ui and ui[ui.index("--web-host") + 1] == "127.0.0.1"
    assert locustfile_path().name == "locustfile.py" and locustfile_path().is_file()


SHAPES_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import shapes
k = shapes.Knobs(users=16, spawn_rate=4, run_time=40, steps=4, burst_on=2, burst_off=3)
out = {name: [list(cls.users_at(t, k)) for t in (0, 9.9, 10, 17, 21, 39)] for name, cls in shapes.SHAPES.items()}
knobs = shapes.Knobs(16, 4, 40, shape="burst", burst_on=2, burst_off=3)
out["selected"] = [list(shapes.SelectedShape.users_at(t, knobs)) for t in (0, 2.5)]
print(json.dumps(out))
"""


def test_shapes_schedules() -> None:
    """Run in a child: importing locust monkey-patches the process that does it."""
    done = subprocess.run(
        [sys.executable, "-c", SHAPES_SCRIPT, str(ROOT / "loadtest")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["constant"] == [[16, 4]] * 6
    assert [u for u, _ in out["step"]] == [4, 4, 8, 8, 12, 16]
    assert [u for u, _ in out["spike"]] == [4, 4, 4, 16, 16, 4]  # spike in the middle fifth (16..24 s)
    assert [u for u, _ in out["burst"]] == [16, 0, 16, 0, 16, 0]  # 2 s on, 3 s off
    assert out["burst"][0][1] >= 16  # a burst starts every user at once
    assert [u for u, _ in out["selected"]] == [16, 0]
