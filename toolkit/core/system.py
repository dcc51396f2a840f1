"""Ports and child processes: the few operating-system helpers every stage that starts a process needs."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

from toolkit.core.errors import CompoundError

_PR_SET_PDEATHSIG = 1


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


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child (preexec_fn): receive `sig` when the parent dies, whatever kills it (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):  # not Linux: the owner's context manager still stops the child
        pass


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
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                preexec_fn=die_with_parent,
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
