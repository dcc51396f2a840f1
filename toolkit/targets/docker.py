"""The Docker target: one tritonserver container, driven through the `docker` SDK.

The image comes from templates/docker/Dockerfile.j2 and is tagged with a hash of its build context, so
it is built once and rebuilt only when the template, the base image name or the baked repository
changes. Real users start from the NGC tritonserver image matching the Triton inside nvidia-pytriton;
offline machines pass a local Python base (scripts/build_base_image.sh) and get the wheel's server.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shlex
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Optional, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from toolkit import __version__
from toolkit.core.errors import CompoundError, ServerError
from toolkit.core.system import read_tail
from toolkit.targets.server import (
    TritonServer,
    crash_signal,
    http_ready,
    load_failures,
    redact_key,
    signal_name,
    stub_counts,
)
from toolkit.targets.settings import DeployRequest
from toolkit.targets.state import DeploymentState, ServerRecord

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

Network = Literal["bridge", "host"]
Flavor = Literal["ngc", "pytriton"]

CONTAINER_REPOSITORY = "/models"
CONTAINER_PORTS = (8000, 8001, 8002)  # inside the container on a bridge network
DEFAULT_SHM_SIZE = "256m"  # the Python backend moves tensors through /dev/shm; Docker's default is 64 MB
STOP_GRACE_S = 15
MANAGED_LABEL = "io.compound.managed"
# one command line per process, read in the container (a stub's arguments hold no spaces)
LIST_PROCESSES = 'for f in /proc/[0-9]*/cmdline; do tr "\\000" " " < "$f" 2>/dev/null; echo; done'
# Triton inside the nvidia-pytriton wheel, from its changelog; later releases default to the last known.
PYTRITON_TRITON = {
    "0.5.0": "2.42.0",
    "0.5.1": "2.42.0",
    "0.5.2": "2.42.0",
    "0.5.3": "2.43.0",
    "0.5.4": "2.44.0",
    "0.5.5": "2.44.0",
}
LAST_KNOWN_TRITON = "2.51.0"  # 0.5.12 .. 0.7.0


def triton_version() -> str:
    """The Triton release embedded in the installed nvidia-pytriton wheel (what the local target runs)."""
    try:
        pytriton = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return LAST_KNOWN_TRITON
    return PYTRITON_TRITON.get(pytriton, LAST_KNOWN_TRITON)


def ngc_tag(triton: str) -> str:
    """NGC container release (YY.MM) of a Triton 2.N release: monthly since 2.42 = 24.01."""
    minor = int(triton.split(".")[1])
    months = 2024 * 12 + (minor - 42)
    return f"{months // 12 - 2000:02d}.{months % 12 + 1:02d}"


def default_base_image() -> str:
    return f"nvcr.io/nvidia/tritonserver:{ngc_tag(triton_version())}-py3"


def image_flavor(base_image: str) -> Flavor:
    """NGC tritonserver images bring their own server; any other base gets the wheel's server."""
    repo = base_image.rsplit("@", 1)[0]
    repo = repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo
    return "ngc" if repo.rsplit("/", 1)[-1] == "tritonserver" else "pytriton"


def gpu_models(repository: Path) -> list[str]:
    """Models whose config asks for KIND_GPU instances (they need a GPU in the container or pod)."""
    found = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        try:
            parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
        except text_format.ParseError as exc:
            raise CompoundError(f"{config} is not a valid Triton model config: {exc}") from None
        if any(group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU for group in parsed.instance_group):
            found.append(config.parent.name)
    return found


def connect() -> docker.DockerClient:
    """A client for the local Docker engine, or a CompoundError saying what to start."""
    import docker

    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        reason = _root_cause(exc)
        hint = "start the Docker engine (`sudo systemctl start docker`, or run `dockerd`), or point DOCKER_HOST at one"
        if "Permission denied" in str(exc):
            hint = "add your user to the `docker` group (then log in again), or run as root"
        raise CompoundError(f"cannot reach the Docker engine at {where}: {reason}", hint=hint) from None
    return client


def _root_cause(exc: BaseException) -> str:
    """The innermost reason (no such socket, connection refused) instead of docker-py's wrapper text."""
    text = str(exc)
    for marker in ("FileNotFoundError", "ConnectionRefusedError", "PermissionError"):
        if marker in text:
            return {
                "FileNotFoundError": "no such socket",
                "ConnectionRefusedError": "connection refused",
                "PermissionError": "Permission denied",
            }[marker]
    if "Max retries exceeded" in text or "Connection" in text:
        return "not answering"
    return text


def render_build_context(
    base_image: str, *, flavor: Optional[Flavor] = None, pip: Sequence[str] = (), repository: Optional[Path] = None
) -> dict[str, bytes]:
    """Every file of the build context: Dockerfile, entry point, and the repository when baked in."""
    from toolkit.repository.render import template_env

    kind = flavor or image_flavor(base_image)
    # generated models cap their BLAS pools with threadpoolctl; orchestrators load on-demand models
    # through their server's gRPC API (tritonclient); cached components reach Redis (redis); the
    # adaptive runtime (a pod's sidecar) is compound
    packages = ["numpy<2", "threadpoolctl", "tritonclient[grpc]", "redis>=5.0", *RUNTIME_PACKAGES, *pip]
    if kind == "pytriton":
        try:
            packages.insert(0, f"nvidia-pytriton=={importlib.metadata.version('nvidia-pytriton')}")
        except importlib.metadata.PackageNotFoundError:
            packages.insert(0, "nvidia-pytriton")
    env = template_env()
    env.filters["shquote"] = shlex.quote
    values = {
        "version": __version__,
        "base_image": base_image,
        "flavor": kind,
        "pip_packages": packages,
        "bake": repository is not None,
    }
    files = {
        "Dockerfile": env.get_template("docker/Dockerfile.j2").render(**values).encode(),
        "tritonserver.sh": env.get_template("docker/tritonserver.sh.j2").render(**values).encode(),
        "runtime.sh": env.get_template("docker/runtime.sh.j2").render(**values).encode(),
        **runtime_sources(),
    }
    if repository is not None:
        for path in sorted(repository.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[f"repository/{path.relative_to(repository).as_posix()}"] = path.read_bytes()
    return files


RUNTIME_PACKAGES = ("jinja2>=3.1", "pydantic>=2.5", "pyyaml>=6.0")  # what toolkit.runtime.supervisor imports


def runtime_sources() -> dict[str, bytes]:
    """compound's own Python modules, for the adaptive runtime that runs beside Triton in a pod
    (templates and the locustfile stay out: the runtime needs neither)."""
    package = Path(__file__).resolve().parents[1]
    files = {}
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] not in ("templates", "locust") and "__pycache__" not in relative.parts:
            files[f"compound/toolkit/{relative.as_posix()}"] = path.read_bytes()
    return files


def context_tag(name: str, files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for rel, content in sorted(files.items()):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(content).digest())
    return f"{name}:{digest.hexdigest()[:12]}"


def ensure_image(
    client: docker.DockerClient,
    base_image: str,
    *,
    name: str = "compound-triton",
    flavor: Optional[Flavor] = None,
    pip: Sequence[str] = (),
    repository: Optional[Path] = None,
    network: Optional[str] = None,
    log_path: Optional[Path] = None,
) -> str:
    """The image's tag, built first if no image with this exact build context exists."""
    import docker

    files = render_build_context(base_image, flavor=flavor, pip=pip, repository=repository)
    _ensure_base(client, base_image)
    # the base's id is part of the tag: a rebuilt base (same name) must not reuse images built on the old one
    base_id = client.images.get(base_image).id or ""  # the engine always gives a built image one
    tag = context_tag(name, {**files, "base-image-id": base_id.encode()})
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    log_path = log_path or Path(tempfile.gettempdir()) / f"compound-build-{tag.replace(':', '-').replace('/', '-')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(prefix="compound-docker-context-"))
    try:
        for rel, content in files.items():
            target = context / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            if rel.endswith(".sh"):
                target.chmod(0o755)  # the Dockerfile's COPY keeps the mode; no extra RUN layer
        with open(log_path, "w") as log:
            for chunk in client.api.build(
                path=str(context), tag=tag, rm=True, forcerm=True, pull=False, network_mode=network, decode=True
            ):
                if "stream" in chunk:
                    log.write(chunk["stream"])
                    log.flush()
                if "error" in chunk or "errorDetail" in chunk:
                    message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                    log.write(f"ERROR: {message}\n")
                    log.flush()
                    hint = f"full build log: {log_path}"
                    if network != "host" and ("pip" in read_tail(log_path, 20) or "resolve" in message):
                        hint += "; if the build cannot reach PyPI, build on the host network (--network host)"
                    raise ServerError(
                        f"building image {tag} from {base_image} failed: {message.strip()}",
                        read_tail(log_path, 25),
                        hint=hint,
                    )
    except docker.errors.APIError as exc:
        raise CompoundError(
            f"building image {tag} failed: {exc.explanation or exc}", hint=f"full build log: {log_path}"
        ) from None
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return tag


def _ensure_base(client: docker.DockerClient, base_image: str) -> None:
    import docker

    try:
        client.images.get(base_image)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(base_image)
    except docker.errors.APIError as exc:
        raise CompoundError(
            f"base image {base_image} is not on this machine and could not be pulled: {exc.explanation or exc}",
            hint="for NGC images `docker login nvcr.io` first; offline, build a local base with"
            " scripts/build_base_image.sh and pass --base-image compound-base:bookworm",
        ) from None


class DockerServer(TritonServer):
    """Owns one tritonserver container: build the image if needed, start, wait until ready, remove."""

    target = "docker"

    def __init__(
        self,
        repository: str | Path,
        *,
        name: Optional[str] = None,
        image: Optional[str] = None,
        base_image: Optional[str] = None,
        network: Network = "bridge",
        gpus: Optional[bool] = None,
        pip: Sequence[str] = (),
        shm_size: str = DEFAULT_SHM_SIZE,
        log_path: Optional[str | Path] = None,
        **options: Any,
    ) -> None:
        log = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="compound-docker-")) / "tritonserver.log"
        super().__init__(repository, log_path=log, **options)
        self.log_path: Path
        self.name = name or f"compound-{_slug(self.repository.name)}"
        self.image = image
        self.base_image = base_image or default_base_image()
        self.network = network
        self.gpus = gpus
        self.pip = list(pip)
        self.shm_size = shm_size
        self.container: Optional[Container] = None
        self._client: Optional[docker.DockerClient] = None
        self._log_thread: Optional[threading.Thread] = None

    @property
    def build_log_path(self) -> Path:
        return self.log_path.with_name("docker-build.log")

    def triton_ports(self) -> tuple[int, int, int]:
        """HTTP, gRPC and metrics ports inside the container."""
        if self.network == "host":
            return (self.endpoints.http_port, self.endpoints.grpc_port, self.endpoints.metrics_port)
        return CONTAINER_PORTS

    def triton_args(self) -> list[str]:
        """tritonserver's arguments inside the container (the image's entry point adds backend paths)."""
        # bridge: every interface inside the container; only --host's are published on the host
        address = self.endpoints.host if self.network == "host" else "0.0.0.0"  # noqa: S104
        return self.server_args(CONTAINER_REPOSITORY, self.triton_ports(), address)

    def preflight(self) -> None:
        super().preflight()
        paths = [self.repository, *sorted(self.repository.rglob("*"))]
        unreadable = [
            p for p in paths if p.stat().st_mode & (0o005 if p.is_dir() else 0o004) != (0o005 if p.is_dir() else 0o004)
        ]
        if unreadable:  # the container's user (uid 1000) reads the repository as "other"
            raise CompoundError(
                f"{unreadable[0]} (and {len(unreadable) - 1} more) cannot be read by other users, "
                "so the server in the container (which never runs as root) cannot read the repository",
                hint=f"chmod -R o+rX {self.repository}",
            )

    def launch(self) -> None:
        """Build the image if missing and start the container."""
        import docker

        client = self._client = connect()
        wants_gpu = self.gpus if self.gpus is not None else bool(gpu_models(self.repository))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.image is None:
            started = time.monotonic()
            network = "host" if self.network == "host" else None
            self.image = ensure_image(
                client, self.base_image, pip=self.pip, network=network, log_path=self.build_log_path
            )
            _append(self.log_path, f"# image {self.image} ready in {time.monotonic() - started:.1f} s\n")
        self._remove_stale(client)
        kwargs: dict[str, Any] = {
            "command": self.triton_args(),
            "name": self.name,
            "detach": True,
            "labels": {MANAGED_LABEL: "true", "io.compound.repository": str(self.repository)},
            "volumes": {str(self.repository): {"bind": CONTAINER_REPOSITORY, "mode": "ro"}},
            "shm_size": self.shm_size,
            "environment": self.runtime_environment(self.triton_ports()[1]),
        }
        if self.network == "host":
            kwargs["network_mode"] = "host"
        else:
            if not client.networks.list(names=["bridge"]):
                raise CompoundError(
                    "this Docker engine has no bridge network (dockerd --bridge=none?), so it cannot publish ports",
                    hint="pass --network host",
                )
            host = self.endpoints.host
            outer = (self.endpoints.http_port, self.endpoints.grpc_port, self.endpoints.metrics_port)
            kwargs["ports"] = {f"{inner}/tcp": (host, port) for inner, port in zip(CONTAINER_PORTS, outer)}
        if wants_gpu:
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        _append(self.log_path, f"$ docker run {self.image} {' '.join(redact_key(self.triton_args()))}\n")
        try:
            self.container = client.containers.create(self.image, **kwargs)
            self.container.start()
        except docker.errors.APIError as exc:
            self.stop()
            raise self._start_error(exc) from None
        self._follow_logs()

    def launch_failure(self) -> Optional[CompoundError]:
        state = self._container_state()
        if state is None or state.get("Status") not in ("exited", "dead"):
            return None
        self._flush_logs()
        tail = self.log_tail()
        if "already in use" in tail or "Address in use" in tail:
            return CompoundError(
                f"tritonserver in container {self.name} could not bind its ports on {self.endpoints.host}:"
                " one is already in use",
                hint="pick others with --http-port/--grpc-port/--metrics-port,"
                " or stop what holds them (`compound stop`)",
            )
        return ServerError(
            f"container {self.name} exited with code {state.get('ExitCode')} during start-up{load_failures(tail)}",
            tail,
            hint=self.describe(),
        )

    def stop(self) -> None:
        """Stop (SIGTERM: Triton drains) and always remove the container."""
        import docker

        container, self.container = self.container, None
        if container is not None:
            try:
                container.stop(timeout=STOP_GRACE_S)
            except docker.errors.APIError:
                pass
            self._flush_logs()
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if "already in progress" not in str(exc):
                    raise CompoundError(
                        f"could not remove container {self.name}: {exc.explanation or exc}",
                        hint=f"docker rm -f {self.name}",
                    ) from None
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
            self._log_thread = None

    def log_tail(self, lines: int = 40) -> str:
        return read_tail(self.log_path, lines)

    def alive(self) -> bool:
        state = self._container_state()
        return state is not None and state.get("Status") == "running"

    @classmethod
    def from_request(cls, request: DeployRequest, workdir: Path, replica: Optional[int] = None) -> DockerServer:
        suffix = "" if replica is None else f"-{replica}"
        return cls(
            request.repository,
            name=f"compound-{request.name}{suffix}",
            image=request.image,
            base_image=request.base_image,
            network=request.network,
            gpus=request.gpus,
            pip=request.pip,
            log_path=workdir / f"tritonserver{suffix}.log",
            detach=True,
            **request.server_options(),
        )

    def record(self, state: DeploymentState) -> None:
        state.container = self.name
        state.extra["image"] = str(self.image)

    @classmethod
    def recorded_running(cls, state: DeploymentState) -> bool:
        return container_running(state.container) if state.container else False

    @classmethod
    def recorded_log_tail(cls, state: DeploymentState, lines: int) -> str:
        if state.container:
            return container_log_tail(state.container, lines) or read_tail(Path(state.log_path), lines)
        return read_tail(Path(state.log_path), lines)

    @classmethod
    def stop_recorded(cls, state: DeploymentState) -> bool:
        return remove_container(state.container) if state.container else False

    @classmethod
    def halt_recorded(cls, state: DeploymentState) -> None:
        """Killed (see LocalServer.halt_recorded), not removed: `restart_recorded` starts the same
        container again."""
        import docker

        if not state.container:
            return
        try:
            connect().containers.get(state.container).kill()
        except docker.errors.NotFound:
            pass

    @classmethod
    def exit_reason(cls, state: DeploymentState) -> str:
        """From the container's exit code (128 + the signal for a crash) and Triton's own log line."""
        import docker

        if not state.container:
            return "no container was recorded"
        logged = crash_signal(container_log_tail(state.container, 200))
        try:
            info = connect().containers.get(state.container).attrs.get("State", {})
        except docker.errors.NotFound:
            return logged or "the container is gone"
        if info.get("OOMKilled"):
            return "the container was OOM-killed"
        code = int(info.get("ExitCode") or 0)
        if logged:
            return logged
        return f"killed by {signal_name(code - 128)}" if code > 128 else f"exited with code {code}"

    @classmethod
    def restart_recorded(
        cls, state: DeploymentState, request: DeployRequest, on_launch: Optional[Callable[[ServerRecord], None]] = None
    ) -> ServerRecord:
        """The same container started again: its image, ports, repository mount and environment are
        the ones `compound deploy` gave it."""
        import docker

        if not state.container:
            raise CompoundError("no container was recorded for this deployment", hint="`compound deploy` again")
        try:
            container = connect().containers.get(state.container)
            container.start()
        except docker.errors.NotFound:
            raise CompoundError(f"container {state.container} is gone", hint="`compound deploy` again") from None
        except docker.errors.APIError as exc:
            raise CompoundError(f"container {state.container} did not start again: {exc}") from None
        deadline = time.monotonic() + request.ready_timeout_s
        while not http_ready(state.endpoints):
            container.reload()
            if container.status in ("exited", "dead") or time.monotonic() > deadline:
                raise ServerError(
                    f"container {state.container} did not become ready again", container_log_tail(state.container)
                )
            time.sleep(0.25)
        return ServerRecord(
            state.http_port, state.grpc_port, state.metrics_port, state.log_path, container=state.container
        )

    @classmethod
    def recorded_stubs(cls, state: DeploymentState) -> Optional[dict[str, int]]:
        import docker

        if not state.container:
            return None
        try:
            container = connect().containers.get(state.container)
            # the container's own /proc: what its processes are, not a filter over the host's ps
            listed = container.exec_run(["/bin/sh", "-c", LIST_PROCESSES])
            if listed.exit_code == 0 and isinstance(listed.output, bytes):  # bytes unless streamed
                lines = listed.output.decode("utf-8", errors="replace").splitlines()
                return stub_counts([line.split() for line in lines])
            top = container.top(ps_args="-eo pid,args")  # an image without a shell: the engine's view
        except (docker.errors.NotFound, docker.errors.APIError):
            return None
        return stub_counts([str(row[-1]).split() for row in top.get("Processes") or []])

    def _start_error(self, exc: Exception) -> CompoundError:
        text = str(getattr(exc, "explanation", None) or exc)
        if "port is already allocated" in text or "address already in use" in text:
            return CompoundError(
                f"Docker could not publish the ports of {self.name}: {text}",
                hint="pick others with --http-port/--grpc-port/--metrics-port, or stop the container holding them",
            )
        if "could not select device driver" in text:
            return CompoundError(
                f"the repository asks for a GPU (KIND_GPU in {', '.join(gpu_models(self.repository)) or 'a model'})"
                f" but Docker has no GPU runtime: {text}",
                hint="install the NVIDIA Container Toolkit, or regenerate the repository with --device cpu",
            )
        if "network" in text and "host" in text:
            return CompoundError(
                f"Docker refused host networking: {text}", hint="leave out --network host (it needs a Linux engine)"
            )
        return CompoundError(f"Docker could not start container {self.name}: {text}", hint=f"full log: {self.log_path}")

    def _remove_stale(self, client: docker.DockerClient) -> None:
        import docker

        try:
            old = client.containers.get(self.name)
        except docker.errors.NotFound:
            return
        if old.labels.get(MANAGED_LABEL) != "true":
            raise CompoundError(
                f"a container named {self.name} exists and was not started by compound",
                hint="pass another --name, or remove it yourself",
            )
        if old.status == "running":
            raise CompoundError(
                f"container {self.name} is already running", hint="`compound stop` it first, or pass another --name"
            )
        old.remove(force=True)

    def _container_state(self) -> Optional[dict[str, Any]]:
        import docker

        if self.container is None:
            return None
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return {"Status": "dead", "ExitCode": "?"}
        return dict(self.container.attrs.get("State", {}))

    def _follow_logs(self) -> None:
        """Copy the container's output into log_path as it comes (docker logs --follow)."""
        container = self.container
        if container is None:
            return
        stream: Iterator[bytes] = container.logs(stream=True, follow=True)

        def pump() -> None:
            try:
                with open(self.log_path, "ab") as log:
                    for chunk in stream:
                        log.write(chunk)
                        log.flush()
            except Exception:  # noqa: BLE001, S110 - the container went away; the log holds what came
                pass

        self._log_thread = threading.Thread(target=pump, name=f"logs-{self.name}", daemon=True)
        self._log_thread.start()

    def _flush_logs(self) -> None:
        """Give the log pump a moment to write the container's last lines."""
        if self._log_thread is not None:
            self._log_thread.join(timeout=2)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as log:
        log.write(text)


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.") or "repository"


# Helpers for `compound status|logs|stop` on a deployment recorded with target docker.


def container_running(name: str) -> bool:
    import docker

    try:
        return connect().containers.get(name).status == "running"
    except docker.errors.NotFound:
        return False


def container_log_tail(name: str, lines: int = 50) -> str:
    import docker

    try:
        return connect().containers.get(name).logs(tail=lines).decode("utf-8", errors="replace")
    except docker.errors.NotFound:
        return ""


def remove_container(name: str) -> bool:
    """Stop and remove a compound container by name; False if it was not there."""
    import docker

    try:
        container = connect().containers.get(name)
    except docker.errors.NotFound:
        return False
    if container.labels.get(MANAGED_LABEL) != "true":
        raise CompoundError(f"container {name} was not started by compound; not touching it")
    try:
        container.stop(timeout=STOP_GRACE_S)
    except docker.errors.APIError:
        pass
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    return True
