"""Children started through `tied_to_parent`: no Python runs between fork and exec in this process, yet
the child dies with its parent and starts with SIGINT at its default action."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from toolkit.core.system import pid_alive, tied_to_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# A parent that starts a tied `sleep`, prints its pid, and is killed outright (no clean-up runs).
PARENT = """
import subprocess, sys, time
from toolkit.core.system import tied_to_parent
child = subprocess.Popen(tied_to_parent(["sleep", "60"]), start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_child_dies_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _program(child) != b"sleep":
        time.sleep(0.02)
    assert _program(child) == b"sleep"  # the launcher exec'd the program under its own pid
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(child):
        time.sleep(0.05)
    assert not pid_alive(child), "the tied child outlived its parent"


def _program(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().split(b"\0")[0]
    except OSError:
        return b""


def test_child_starts_with_sigint_at_its_default_action() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell leaves a background job
    try:
        tied = subprocess.run(tied_to_parent(["grep", "SigIgn", "/proc/self/status"]), capture_output=True, text=True)
        plain = subprocess.run(["grep", "SigIgn", "/proc/self/status"], capture_output=True, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    sigint = 1 << (signal.SIGINT - 1)
    assert int(plain.stdout.split()[1], 16) & sigint  # what the child would inherit without the launcher
    assert not int(tied.stdout.split()[1], 16) & sigint


def test_a_missing_program_is_named() -> None:
    result = subprocess.run(tied_to_parent(["no-such-program-here"]), capture_output=True, text=True)
    assert result.returncode != 0
    assert "cannot run no-such-program-here" in result.stderr
