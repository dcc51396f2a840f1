"""The runtime's process, as its deployment sees it: started detached beside the servers, found
again by pid (checked, so a reused pid is never signalled), stopped; and the restarts it records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from toolkit.core.system import command_line, pid_alive
from toolkit.targets.state import LOG_FILE, RuntimeConfig

RESTARTS_FILE = "restarts.jsonl"
MODULE = "toolkit.runtime.supervisor"
STOP_GRACE_S = 5.0


class RuntimeProcess:
    """Static helpers: the runtime is its own process (it outlives the CLI), so what the deployment
    keeps of it is its pid."""

    @staticmethod
    def launch(config: RuntimeConfig) -> int:
        with open(Path(config.run_dir) / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", MODULE, str(config.save())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return process.pid

    @staticmethod
    def alive(pid: Optional[int]) -> Optional[int]:
        """The pid while it is the runtime's (not a process that reused it), else None."""
        if not pid or not pid_alive(pid):
            return None
        return pid if MODULE in command_line(pid) else None

    @staticmethod
    def stop(pid: Optional[int]) -> None:
        """SIGTERM (it finishes its tick and writes its status), SIGKILL after a grace period."""
        if RuntimeProcess.alive(pid) is None:
            return
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while RuntimeProcess.alive(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if RuntimeProcess.alive(pid) is not None:
            os.kill(pid, signal.SIGKILL)


def record_restart(run_dir: str | Path, entry: dict[str, Any]) -> None:
    """Append one restart (a JSON line) to the deployment's restart record."""
    with open(Path(run_dir) / RESTARTS_FILE, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def read_restarts(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / RESTARTS_FILE
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash of the runtime itself
    return entries
