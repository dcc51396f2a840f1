"""The soak shape's schedule and the data its report is built from (per-window latency, p95 drift,
server memory). Evaluated in one child process: importing locust monkey-patches the process that does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, subprocess, sys, time, types, importlib.util
sys.path.insert(0, sys.argv[1])
import shapes
from shapes import Knobs, SoakShape, SelectedShape, Timeline, round_ms

out = {}
k = Knobs(users=12, spawn_rate=3, run_time=600)
out["soak"] = [SoakShape.users_at(t, k) for t in (0, 1, 300, 599.9, 600, 601)]
endless = Knobs(users=12, spawn_rate=3, run_time=None)
out["soak_default"] = [SoakShape.users_at(t, endless) for t in (0, 1199.9, 1200, 5000)]
out["soak_no_users"] = SoakShape.users_at(5, Knobs(users=0, spawn_rate=1, run_time=None))
out["selected"] = SelectedShape.users_at(10, Knobs(12, 3, None, shape="soak"))
out["selected_end"] = SelectedShape.users_at(1300, Knobs(12, 3, None, shape="soak"))

options = types.SimpleNamespace(num_users=20, spawn_rate=5, run_time=900, compound_shape="soak",
                                compound_target_rps=40.0, compound_window=30.0)
knobs = Knobs.from_options(options)
out["knobs"] = [knobs.users, knobs.spawn_rate, knobs.run_time, knobs.shape, knobs.target_rps, knobs.window]
out["pacing"] = [knobs.pacing_s(), Knobs(8, 1, None).pacing_s(), Knobs(0, 1, None, target_rps=5).pacing_s()]

shape = SoakShape()  # the tick locust calls: no runner, so no options: the 20-minute default applies
shape.start_time = time.perf_counter() - 1199
out["tick_before"] = shape.tick()
shape.start_time = time.perf_counter() - 1201
out["tick_after"] = shape.tick()

out["round"] = [round_ms(x) for x in (0.4, 42.6, 123.0, 987.0, 1234.0, 98765.0)]

# 5 windows of 10 s: steady 10 ms, then the last two at 30 ms with one failure; window 2 empty
t = Timeline(10.0)
for i in range(20):
    t.add(i * 0.4, 50.0 if i == 0 else 10.0, False)   # window 0: the ramp-up, one slow request
for i in range(10):
    t.add(10 + i, 10.0, False)                          # window 1
for i in range(10):
    t.add(30 + i, 30.0, i == 3)                         # window 3
    t.add(40 + i, 30.0 + i, False)                      # window 4
out["rows"] = t.rows()
out["drift"] = t.drift()
out["short_drift"] = [Timeline(10.0).drift()]
single = Timeline(10.0)
single.add(1, 5, False)
out["short_drift"].append(single.drift())

# a worker's windows shipped to the master equal the same requests recorded in one process
master, worker, alone = Timeline(10.0), Timeline(10.0), Timeline(10.0)
for i in range(30):
    (master if i % 2 else worker).add(i, 5.0 + i, i % 7 == 0)
    alone.add(i, 5.0 + i, i % 7 == 0)
payload = json.loads(json.dumps(worker.take()))   # through JSON, as locust's messages carry it
master.merge(payload)
out["merged_equal"] = master.rows() == alone.rows()
cut = Timeline(10.0, end_s=20.0)
for offset in (1, 12, 19.99, 20.0, 20.5):
    cut.add(offset, 5.0, False)
out["cut"] = [r["requests"] for r in cut.rows()]
out["taken_empty"] = worker.rows()

# the server's memory: this process and a child it started
spec = importlib.util.spec_from_file_location("compound_locustfile", os.path.join(sys.argv[1], "locustfile.py"))
locustfile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locustfile)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
try:
    time.sleep(0.3)
    rows = locustfile.process_tree_rss(os.getpid())
finally:
    child.kill(); child.wait()
out["rss"] = {"pids": sorted(r["pid"] for r in rows), "expected": sorted([os.getpid(), child.pid]),
              "positive": all(r["rss_mb"] > 0 for r in rows), "names": [r["name"] for r in rows]}
out["rss_gone"] = locustfile.process_tree_rss(child.pid)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def out() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT / "loadtest")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_soak_holds_its_users_until_the_run_time_then_ends(out: dict[str, Any]) -> None:
    assert out["soak"] == [[12, 3], [12, 3], [12, 3], [12, 3], None, None]
    assert out["soak_default"] == [[12, 3], [12, 3], None, None]  # ends by itself after 20 minutes
    assert out["soak_no_users"] == [1, 1]
    assert out["selected"] == [12, 3] and out["selected_end"] is None  # --load-shape soak
    assert out["tick_before"] == [1, 1] and out["tick_after"] is None  # locust's tick, default knobs


def test_soak_knobs_come_from_locust_options(out: dict[str, Any]) -> None:
    assert out["knobs"] == [20, 5.0, 900.0, "soak", 40.0, 30.0]
    assert out["pacing"] == [0.5, 0.0, 0.0]  # 20 users at 40 req/s: one request per user every 0.5 s


def test_timeline_rows_keep_empty_windows_and_bucket_like_locust(out: dict[str, Any]) -> None:
    assert out["round"] == [0, 43, 120, 990, 1200, 98800]
    rows = out["rows"]
    assert [r["start_s"] for r in rows] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert [r["requests"] for r in rows] == [20, 10, 0, 10, 10]
    assert [r["failures"] for r in rows] == [0, 0, 0, 1, 0]
    assert rows[0]["p50_ms"] == 10 and rows[0]["p95_ms"] == 10 and rows[0]["max_ms"] == 50
    assert rows[2]["p95_ms"] == 0 and rows[1]["rps"] == 1.0
    assert rows[4]["p95_ms"] == 39 and rows[4]["max_ms"] == 39


def test_p95_drift_compares_first_and_last_windows_after_the_ramp(out: dict[str, Any]) -> None:
    drift = out["drift"]
    assert drift["first_windows_s"] == [10.0, 20.0] and drift["last_windows_s"] == [30.0, 40.0]
    assert drift["first_p95_ms"] == 10 and drift["last_p95_ms"] == 38
    assert drift["ratio"] == 3.8 and drift["first_failures"] == 0 and drift["last_failures"] == 1
    assert out["short_drift"] == [None, None]  # too short a run has no first and last


def test_worker_windows_merge_into_the_masters(out: dict[str, Any]) -> None:
    assert out["merged_equal"] is True
    assert out["taken_empty"] == []  # shipped once, then forgotten


def test_requests_racing_the_stop_stay_out_of_the_timeline(out: dict[str, Any]) -> None:
    assert out["cut"] == [1, 2]  # nothing starting at or after the end: no one-request last window


def test_server_memory_covers_the_process_and_its_children(out: dict[str, Any]) -> None:
    rss = out["rss"]
    assert rss["pids"] == rss["expected"] and rss["positive"], rss
    assert any("python" in name for name in rss["names"])
    assert out["rss_gone"] == []  # a process that exited is reported as gone, not as an error
