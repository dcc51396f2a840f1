"""Supervision: a server whose process or container died is started again, by the runtime beside it.

The keeper looks at every server of the deployment a few times a second (a /proc or container look,
no request). A dead one is started again on the same ports with the same repository and key, as
`compound deploy` started it (its saved request), and is ready only once every model is loaded and
warm; the adaptive runtime then gives it back the deployment's live state (the instance counts it
chose, the on-demand components that were loaded). Each restart keeps the dead server's log tail
beside the run (crash-N.log) and a line in restarts.jsonl, which `compound status` and `compound logs`
read. A server that dies again soon after its restart waits longer each time (crash-loop backoff).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from toolkit.core.errors import CompoundError
from toolkit.runtime.process import read_restarts, record_restart
from toolkit.targets.proxy import EnvoyProxy, recorded_proxy_running
from toolkit.targets.server import TritonServer, target_class
from toolkit.targets.settings import DeployRequest, load_request
from toolkit.targets.state import DeploymentState, ServerRecord, read_state, write_state

STABLE_AFTER_S = 60.0  # a server that ran this long since its restart starts the backoff afresh
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
CRASH_LOG_LINES = 200
PROXY = -1  # the proxy's watch, beside the servers' (0, 1, ...)


def planned_restart_path(run_dir: Path, index: int) -> Path:
    """Written by `compound restart` before it stops server `index`: the keeper then starts it again
    as a planned restart (no crash log, no backoff)."""
    return run_dir / f"planned-restart-{index}"


def backoff_s(quick_crashes: int) -> float:
    """How long a server that crashed `quick_crashes` times in a row, each soon after its restart,
    waits before the next start: none for the first crash, then doubling up to BACKOFF_MAX_S."""
    if quick_crashes <= 0:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (quick_crashes - 1))


@dataclass
class ServerWatch:
    """What the keeper remembers of one server between looks."""

    restarted_at: float = 0.0
    quick_crashes: int = 0  # crashes in a row, each within STABLE_AFTER_S of the restart before
    retry_at: float = 0.0  # under backoff: not before this (monotonic)
    down_since: Optional[float] = None
    reason: str = ""  # why it died, in words


@dataclass
class Keeper:
    state_file: Path
    run_dir: Path
    log: Callable[[str], None] = print
    watches: dict[int, ServerWatch] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state: DeploymentState = read_state(self.state_file)
        self.owner: type[TritonServer] = target_class(self.state.target)
        self.request: DeployRequest = load_request(self.run_dir)
        self.restarts = len(read_restarts(self.run_dir))
        self.restarting = False  # a start is under way (the runtime's SIGTERM then aborts it)

    def check(self, now: Optional[float] = None) -> list[int]:
        """Look at every server; start the dead ones again (not sooner than their backoff allows).
        Returns the servers that serve again after a restart."""
        now = time.monotonic() if now is None else now
        restarted = []
        for index in range(len(self.state.server_records())):
            view = self.state.of_server(index)
            watch = self.watches.setdefault(index, ServerWatch())
            if self.owner.recorded_running(view):
                watch.down_since = None
                continue
            if watch.down_since is None:
                watch.down_since = now
                planned = planned_restart_path(self.run_dir, index)
                if planned.is_file():  # `compound restart` stopped it: no crash, no backoff
                    planned.unlink()
                    watch.reason, watch.retry_at = "rolling restart (`compound restart`)", now
                    self.log(f"{time.strftime('%H:%M:%S')} server {index}: stopped for a rolling restart")
                    if self._restart(index, view, watch, now):
                        restarted.append(index)
                    continue
                watch.reason = self.owner.exit_reason(view)
                self._keep_crash_log(index, view)
                if watch.restarted_at and now - watch.restarted_at < STABLE_AFTER_S:
                    watch.quick_crashes += 1
                else:
                    watch.quick_crashes = 0
                delay = (
                    min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (watch.quick_crashes - 1)) if watch.quick_crashes else 0
                )
                watch.retry_at = now + delay
                self.log(
                    f"{time.strftime('%H:%M:%S')} server {index} ({view.endpoints.http_url}) is gone: "
                    f"{watch.reason}; restarting" + (f" in {delay:.0f} s (crash loop)" if delay else "")
                )
            if now < watch.retry_at:
                continue
            if self._restart(index, view, watch, now):
                restarted.append(index)
        self._keep_proxy(now)
        return restarted

    def _keep_proxy(self, now: float) -> None:
        """The proxy in front of the replicas, started again with its configuration if it died."""
        record = self.state.proxy
        if record is None or recorded_proxy_running(record):
            return
        watch = self.watches.setdefault(PROXY, ServerWatch())
        if watch.down_since is None:
            watch.down_since, watch.retry_at = now, now + backoff_s(watch.quick_crashes)
            self.log(f"{time.strftime('%H:%M:%S')} the proxy (pid {record.pid}) is gone; restarting")
        if now < watch.retry_at:
            return
        try:
            proxy = EnvoyProxy.of_state(self.state).start()
        except CompoundError as exc:
            watch.quick_crashes += 1
            watch.retry_at = time.monotonic() + backoff_s(watch.quick_crashes)
            self.log(f"{time.strftime('%H:%M:%S')} the proxy did not start again ({exc}); trying again later")
            return
        new = proxy.record()
        self._update_state(lambda state: setattr(state, "proxy", new))
        done = time.monotonic()
        self._note_restart("proxy", "the proxy exited", record.log_path, done - now, done - watch.down_since)
        self.log(f"{time.strftime('%H:%M:%S')} the proxy serves again (pid {proxy.pid})")
        watch.down_since = None

    def _restart(self, index: int, view: DeploymentState, watch: ServerWatch, now: float) -> bool:
        request = dataclasses.replace(
            self.request,
            http_port=view.http_port,
            grpc_port=view.grpc_port,
            metrics_port=view.metrics_port,
            api_key=self.state.api_key,
        )
        began = time.monotonic()
        self.restarting = True
        try:
            record = self.owner.restart_recorded(view, request, lambda new: self._record_server(index, new))
        except CompoundError as exc:
            watch.quick_crashes += 1
            watch.retry_at = time.monotonic() + backoff_s(watch.quick_crashes)
            self.log(f"{time.strftime('%H:%M:%S')} server {index}: restart failed ({exc}); trying again later")
            return False
        finally:
            self.restarting = False
        self._record_server(index, record)
        ready = time.monotonic()
        down_s = ready - (watch.down_since if watch.down_since is not None else now)
        crash_log = str(self._crash_log_path(self.restarts + 1))
        self._note_restart(index, watch.reason or "the server exited", crash_log, ready - began, down_s)
        self.log(
            f"{time.strftime('%H:%M:%S')} server {index}: serving again ({ready - began:.1f} s to start and warm, "
            f"{down_s:.1f} s down); restart {self.restarts}"
        )
        watch.restarted_at, watch.down_since = ready, None
        return True

    def _record_server(self, index: int, record: ServerRecord) -> None:
        """The new pid (or container) goes into the deployment's state at once, so that `compound
        stop` finds the restarted server."""

        def change(state: DeploymentState) -> None:
            servers = state.server_records()
            servers[index] = record
            state.servers = servers
            if index == 0:
                state.pid, state.container = servers[0].pid, servers[0].container

        self._update_state(change)

    def _update_state(self, change: Callable[[DeploymentState], None]) -> None:
        """Apply `change` to the deployment's state as recorded now (a command may have written it
        since), write it back, and keep it."""
        state = read_state(self.state_file) if self.state_file.is_file() else self.state
        change(state)
        write_state(state, self.state_file)
        self.state = state

    def _note_restart(self, server: int | str, reason: str, crash_log: str, start_s: float, down_s: float) -> None:
        """One more restart, in restarts.jsonl (what `compound status` counts and names)."""
        self.restarts += 1
        record_restart(
            self.run_dir,
            {
                "n": self.restarts,
                "server": server,
                "at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "reason": reason,
                "crash_log": crash_log,
                "start_s": round(start_s, 2),
                "down_s": round(down_s, 2),
            },
        )

    def _crash_log_path(self, number: int) -> Path:
        return self.run_dir / f"crash-{number}.log"

    def _keep_crash_log(self, index: int, view: DeploymentState) -> None:
        """The dead server's log tail, kept before its restart appends to the same log."""
        path = self._crash_log_path(self.restarts + 1)
        tail = self.owner.recorded_log_tail(view, CRASH_LOG_LINES)
        path.write_text(f"# server {index} ({view.endpoints.http_url}), log tail at its death\n{tail}\n")
