"""The embedded default: the real `tritonserver` shipped in the nvidia-pytriton wheel, no Docker.

The wheel's server needs three things PyTriton normally arranges: its bundled shared libraries on
LD_LIBRARY_PATH, the Python-backend stub for the running Python copied into a writable backends
folder, and this environment's `bin/` first on PATH so the stub imports our numpy and handlers.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from toolkit.core.errors import CompoundError, ServerError
from toolkit.core.system import command_line, pid_alive, proc_stat_fields, read_tail, tied_to_parent
from toolkit.targets.server import (
    TritonServer,
    compile_python,
    crash_signal,
    is_stub,
    load_failures,
    redact_key,
    signal_name,
    stub_counts,
    uses_response_cache,
)
from toolkit.targets.settings import DeployRequest
from toolkit.targets.state import DeploymentState, ServerRecord

STOP_GRACE_S = 15.0


class TritonInstall:
    """Paths inside the installed nvidia-pytriton wheel."""

    def __init__(self) -> None:
        found = importlib.util.find_spec("pytriton")
        if found is None or not found.submodule_search_locations:
            raise CompoundError("nvidia-pytriton is not installed", hint="pip install nvidia-pytriton")
        package = Path(list(found.submodule_search_locations)[0])
        self.root = package / "tritonserver"
        self.binary = self.root / "bin" / "tritonserver"
        self.libs = package.parent / "nvidia_pytriton.libs"
        self.caches = self.root / "caches"
        self.python_backend = self.root / "backends" / "python"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        self.stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not self.binary.is_file():
            raise CompoundError(f"tritonserver not found at {self.binary}", hint="reinstall nvidia-pytriton")
        if not self.stub.is_file():
            raise CompoundError(
                f"no Python backend stub for Python {version} in {self.stub.parent.parent}",
                hint="use a Python version nvidia-pytriton supports",
            )

    def prepare_backends(self, folder: Path) -> Path:
        """A writable backends folder holding the python backend and the stub for this Python."""
        target = folder / "python"
        if not (target / "triton_python_backend_stub").is_file():
            shutil.copytree(
                self.python_backend, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
            shutil.copy2(self.stub, target / "triton_python_backend_stub")
        return folder

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub links the first libpython3.X.so the loader finds. Unless it is this interpreter's
        # own (pyenv, conda, a self-built Python), extension modules such as _ssl miss symbols.
        paths = (python_libdir(), str(self.libs), env.get("LD_LIBRARY_PATH", ""))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def python_libdir() -> str:
    """The folder of this interpreter's shared libpython, which the Python-backend stub must link.

    A Python built without --enable-shared has none: the stub would load another build's library and
    handlers importing ssl (transformers, requests) would fail at load time, far from the cause.
    """
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    library = sysconfig.get_config_var("LDLIBRARY") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not (Path(libdir) / library).is_file():
        raise CompoundError(
            f"{sys.executable} has no shared libpython (built without --enable-shared),"
            " which Triton's Python backend stub needs",
            hint="use a Python built with --enable-shared"
            " (Debian's python3, conda, or pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared)",
        )
    return libdir


class LocalServer(TritonServer):
    """Owns one tritonserver process: start, wait until every model is ready, stop, log tail."""

    target = "local"

    def __init__(
        self,
        repository: str | Path,
        *,
        workdir: Optional[str | Path] = None,
        log_path: Optional[str | Path] = None,
        **options: Any,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="compound-triton-"))
        super().__init__(repository, log_path=log_path or self.workdir / "tritonserver.log", **options)
        self.log_path: Path
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def argv(self, install: TritonInstall) -> list[str]:
        ports = (self.endpoints.http_port, self.endpoints.grpc_port, self.endpoints.metrics_port)
        backends = install.prepare_backends(self.workdir / "backends")
        argv = [str(install.binary), *self.server_args(str(self.repository), ports, self.endpoints.host)]
        argv += ["--backend-directory", str(backends)]
        if uses_response_cache(self.repository):
            argv += ["--cache-directory", str(install.caches)]
        return argv

    def launch(self) -> None:
        install = TritonInstall()
        environment = {**install.environment(), **self.runtime_environment()}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv(install)
        compile_python(self.repository)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(redact_key(argv)) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(
                argv if self.detach else tied_to_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )

    def launch_failure(self) -> Optional[CompoundError]:
        if self.process is None or self.process.poll() is None:
            return None
        return ServerError(
            f"tritonserver exited with code {self.process.returncode} during start-up"
            f"{load_failures(read_tail(self.log_path, 400))}",
            self.log_tail(),
            hint=self.describe(),
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process.pid, self.process)
            self.process = None
        if self._own_workdir:
            shutil.rmtree(self.workdir / "backends", ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return read_tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @classmethod
    def from_request(cls, request: DeployRequest, workdir: Path, replica: Optional[int] = None) -> LocalServer:
        log = workdir / ("tritonserver.log" if replica is None else f"tritonserver-{replica}.log")
        return cls(request.repository, workdir=workdir, log_path=log, detach=True, **request.server_options())

    def record(self, state: DeploymentState) -> None:
        state.pid, state.log_path = self.pid, str(self.log_path)

    @classmethod
    def recorded_running(cls, state: DeploymentState) -> bool:
        return pid_running_tritonserver(state.pid)

    @classmethod
    def stop_recorded(cls, state: DeploymentState) -> bool:
        return state.pid is not None and stop_process(state.pid)

    @classmethod
    def halt_recorded(cls, state: DeploymentState) -> None:
        """SIGKILL, not SIGINT: a Triton 2.51 shutting down gracefully unloads its models while it still
        takes requests, which then fail NOT_FOUND (no retry helps); a killed server resets them, and the
        proxy retries those on another replica (inference is idempotent: docs/always-on.md)."""
        if state.pid is not None and pid_running_tritonserver(state.pid):
            try:
                os.killpg(state.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    @classmethod
    def exit_reason(cls, state: DeploymentState) -> str:
        """From the exit status where this process is the server's parent (the runtime restarted it),
        else from the log (Triton logs the signal that kills it)."""
        logged = crash_signal(read_tail(Path(state.log_path), 200))
        status = reap(state.pid) if state.pid else None
        if status is not None and os.WIFSIGNALED(status):
            return logged if logged else f"killed by {signal_name(os.WTERMSIG(status))}"
        if status is not None and os.WIFEXITED(status) and not logged:
            return f"exited with code {os.WEXITSTATUS(status)}"
        return logged or "the server exited (no signal in its log)"

    @classmethod
    def restart_recorded(
        cls, state: DeploymentState, request: DeployRequest, on_launch: Optional[Callable[[ServerRecord], None]] = None
    ) -> ServerRecord:
        if state.pid is not None:
            stop_process(state.pid)  # the dead server's orphaned stubs go first: they hold its shared memory
        server = cls(
            request.repository,
            workdir=state.workdir,
            log_path=state.log_path,
            detach=True,
            **request.server_options(),
        )
        server.preflight()
        server.launch()
        record = ServerRecord(state.http_port, state.grpc_port, state.metrics_port, state.log_path, pid=server.pid)
        if on_launch is not None:
            on_launch(record)  # recorded before the wait: `compound stop` meanwhile finds the new process
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return record

    @classmethod
    def recorded_stubs(cls, state: DeploymentState) -> Optional[dict[str, int]]:
        if not pid_running_tritonserver(state.pid):
            return None
        return stub_counts([command_line(pid) for pid in group_members(state.pid)])  # type: ignore[arg-type]


def reap(pid: int) -> Optional[int]:
    """The wait status of a child of this process that has exited (collected, so no zombie stays),
    or None (still running, or not our child)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if done == pid else None


def stop_process(pid: int, process: Optional[subprocess.Popen[bytes]] = None) -> bool:
    """SIGINT (Triton drains in-flight requests), then SIGKILL after a grace period. A server that
    already died (a crash) leaves its Python-backend stubs orphaned in its process group: those go."""
    if not _is_tritonserver(pid):
        _kill_orphaned_stubs(pid)
        if process is not None:
            process.poll()  # reap the dead server
        sweep_shared_memory()
        return False
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and (process.poll() is None if process is not None else pid_alive(pid)):
        time.sleep(0.1)
    # The server leads its own process group (start_new_session): SIGKILL whatever is left of it,
    # the server itself after the grace period, and a Python-backend stub that outlived a clean
    # exit (seen: a stub orphaned to init, its native thread pools still spinning on the cores).
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process is not None:
        process.wait(timeout=10)
    sweep_shared_memory()  # what this server's killed stubs (or earlier crashes) left in /dev/shm
    return True


def _kill_orphaned_stubs(pgid: int) -> None:
    """SIGKILL the Python-backend stubs left in a dead server's process group (they outlive it and
    keep their native thread pools), and remove the shared-memory regions they had mapped: a crashed
    server never unlinks its regions (4 MB a crash for the bundled example), and a supervised one
    crashing again and again would fill /dev/shm. Only stubs: the group id of a long-gone server may be
    reused."""
    regions: set[Path] = set()
    for member in group_members(pgid):
        if is_stub(command_line(member)):
            regions |= shared_memory_regions(member)
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for region in regions:
        region.unlink(missing_ok=True)


SHM_REGION_PREFIX = "/dev/shm/triton_python_backend_shm_region_"  # noqa: S108 - Triton names them; read and unlinked only


# A region nobody maps is garbage only once it is older than a server's start-up (created, then mapped).
SWEEP_MIN_AGE_S = 120.0


def sweep_shared_memory(min_age_s: float = SWEEP_MIN_AGE_S) -> list[Path]:
    """Unlink the Python backend's shared-memory files that no live process maps any more: what servers
    and stubs killed before they could unlink theirs left behind (a SIGKILLed server leaves 1 MB or more
    per stub, whoever started it). Files younger than `min_age_s` stay: a starting server may not have
    mapped its region yet. The unlinked paths."""
    folder = Path(SHM_REGION_PREFIX).parent
    prefix = Path(SHM_REGION_PREFIX).name
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    now = time.time()
    old = []
    for path in candidates:
        try:
            if now - path.stat().st_mtime >= min_age_s:
                old.append(path)
        except OSError:
            continue
    if not old:
        return []
    mapped: set[Path] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            mapped |= shared_memory_regions(int(entry.name))
    removed = []
    for path in old:
        if path not in mapped:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def shared_memory_regions(pid: int) -> set[Path]:
    """The Python backend's shared-memory files a process has mapped (from /proc/PID/maps)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return {Path(line.split()[-1]) for line in maps if SHM_REGION_PREFIX in line}
    except OSError:
        return set()


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (a stopped server's must be none)."""
    members = []
    for entry in Path("/proc").iterdir():
        fields = proc_stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def all_command_lines() -> list[list[str]]:
    """Every process's command line visible here (in a pod sharing its process namespace: the server's too)."""
    return [command_line(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _is_tritonserver(pid: int) -> bool:
    """Guards against signalling an unrelated process that reused a recorded pid."""
    argv = command_line(pid)
    return bool(argv) and "tritonserver" in argv[0]


def pid_running_tritonserver(pid: Optional[int]) -> bool:
    return pid is not None and pid_alive(pid) and _is_tritonserver(pid)
