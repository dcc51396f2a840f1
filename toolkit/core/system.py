"""Ports and child processes: the few operating-system helpers every stage that starts a process needs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from toolkit.core.errors import CompoundError


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports free right now (all bound at once, so no two are the same)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


# The child of a process with live threads (gRPC's, locust's) must not run Python between fork and
# exec: a `preexec_fn` makes CPython fork() the whole interpreter, running every pthread_atfork handler
# (gRPC's among them), and such a child was seen to hang. So a child execs this launcher instead: it
# asks for `sig` when its parent dies (kept across exec), leaves if the parent is already gone, gives
# SIGINT, SIGPIPE and SIGXFSZ their default actions (a shell may have ignored SIGINT; Python ignores
# the others) and execs the program under the same pid.
_LAUNCHER = """
import ctypes, os, signal, sys
sig, parent, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit(1)
for name in ("SIGINT", "SIGPIPE", "SIGXFSZ"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.exit(f"cannot run {argv[0]}: {exc.strerror}")
"""


def tied_to_parent(argv: list[str], sig: int = signal.SIGTERM) -> list[str]:
    """`argv` run so that the program receives `sig` when this process dies, whatever kills it (on
    Linux; elsewhere the owner's context manager still stops it), without a `preexec_fn`."""
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(int(sig)), str(os.getpid()), *argv]


def read_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log (from its last 64 KiB); "" when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class OwnedProcess:
    """A helper process an object owns (redis-server, prometheus): the owner's `start()` calls
    `start_and_wait`; `stop()` ends it (SIGTERM, then SIGKILL after `stop_timeout_s`), also when a
    `with` block ends in an error."""

    process: Optional[subprocess.Popen[bytes]] = None
    stop_timeout_s: float = 10.0

    def start(self) -> Any:
        raise NotImplementedError

    def start_and_wait(
        self,
        argv: list[str],
        healthy: Callable[[], bool],
        *,
        log_path: Path,
        what: str,
        timeout_s: float,
        poll_s: float = 0.1,
        cwd: Optional[Path] = None,
    ) -> None:
        """Start `argv` (output appended to `log_path`; it dies with this process) and wait until
        `healthy()`. If it exits or `timeout_s` passes first, stop it and raise a CompoundError
        naming `what` with the log's tail."""
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                tied_to_parent(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
            )
        deadline = time.monotonic() + timeout_s
        while not healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = read_tail(log_path, 20)
                self.stop()
                raise CompoundError(f"{what} did not start", hint=f"its log:\n{tail}")
            time.sleep(poll_s)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proc_stat_fields(pid: int) -> Optional[list[str]]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, ...; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    fields = proc_stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def command_line(pid: int) -> list[str]:
    """A process's argv ([] once it is gone, or for a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return [part.decode(errors="replace") for part in cmdline.read().split(b"\0") if part]
    except OSError:
        return []
