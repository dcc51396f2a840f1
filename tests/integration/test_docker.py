"""The Docker target on a real Docker engine: build the image, serve textdemo, infer, always clean up.

Needs a Docker engine. If none answers and this runs as root with `dockerd` installed, the module
starts one for itself (flags from COMPOUND_TEST_DOCKERD_ARGS; the default suits sandboxes with no
bridge or overlayfs) and stops it afterwards. Base image: COMPOUND_TEST_BASE_IMAGE, else the local
Debian base built (once, cached) by scripts/build_base_image.sh, which needs debootstrap.
First run on a bare engine: ~1-2 min base + ~4 min image build; later runs reuse both (~40 s).
The image runs as an unprivileged user: no process in the container is uid 0, and handlers still
import extension modules (ssl) and write to /tmp.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.conftest import FIXTURES
from tests.integration.load import Load
from tests.integration.test_serving import TEXTS, reference, strings
from tests.integration.test_update import PIPELINES, answer, write_spec, x_input
from toolkit.client import infer
from toolkit.core.errors import CompoundError, ServerError
from toolkit.core.system import free_port, port_in_use
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.docker import DockerServer, connect
from toolkit.targets.local import LocalServer
from toolkit.targets.redis import RedisServer
from toolkit.update.apply import LiveDeployment, rollback, update

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DOCKERD_ARGS = "--iptables=false --ip6tables=false --bridge=none --storage-driver=vfs"
LOCAL_BASE = "compound-base:bookworm"


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A reachable engine: the running one, or a dockerd this module starts and stops."""
    try:
        connect().close()
        yield
        return
    except CompoundError as exc:
        reason = str(exc).splitlines()[0]
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0 or os.environ.get("DOCKER_HOST"):
        pytest.skip(
            f"no Docker engine ({reason}) and none can be started here: "
            "needs root and dockerd (apt-get install docker.io)"
        )
    log = open(tmp_path_factory.mktemp("dockerd") / "dockerd.log", "wb")
    args = shlex.split(os.environ.get("COMPOUND_TEST_DOCKERD_ARGS", DEFAULT_DOCKERD_ARGS))
    process = subprocess.Popen([dockerd, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connect().close()
                break
            except CompoundError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"no Docker engine: dockerd {' '.join(args)} did not come up (log: {log.name})")
                time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def base_image(docker_engine: None) -> str:
    image = os.environ.get("COMPOUND_TEST_BASE_IMAGE")
    if image:
        return image
    done = subprocess.run(
        [str(ROOT / "scripts" / "build_base_image.sh"), LOCAL_BASE], capture_output=True, text=True, timeout=1200
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/build_base_image.sh failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return LOCAL_BASE


def _server(repository: Path, base_image: str, log_dir: Path, **kwargs: object) -> DockerServer:
    return DockerServer(
        repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        name=f"compound-test-{uuid.uuid4().hex[:8]}",
        base_image=base_image,
        network="host",  # works on any Linux engine, including ones started with --bridge=none
        log_path=log_dir / "tritonserver.log",
        ready_timeout_s=600,  # the first start builds the image
        **kwargs,  # type: ignore[arg-type]
    )


def _containers_named(name: str) -> list[object]:
    client = connect()
    try:
        return list(client.containers.list(all=True, filters={"name": name}))
    finally:
        client.close()


def test_textdemo_in_a_container_over_http_and_grpc(textdemo_repo: Path, base_image: str, tmp_path: Path) -> None:
    server = _server(textdemo_repo, base_image, tmp_path)
    started = time.monotonic()
    with server:
        print(f"docker target ready in {time.monotonic() - started:.1f} s (image {server.image})")
        expected = reference(TEXTS)
        for url, protocol in ((server.http_url, "http"), (server.grpc_url, "grpc")):
            outputs = infer("classify", url, {"text": strings(TEXTS)}, protocol)  # type: ignore[arg-type]
            np.testing.assert_allclose(outputs["score"], expected["score"], rtol=1e-5)
            assert list(outputs["label"][:, 0]) == list(expected["label"][:, 0])
        assert server.alive()
        assert "Started HTTPService" in server.log_tail(200)
        assert server.container is not None and server.container.attrs["Config"]["User"] == "1000:1000"
        users = _process_uids(server)
        assert any("tritonserver" in args for _, args in users) and any("stub" in args for _, args in users), users
        assert all(uid != "0" for uid, _ in users), f"processes running as root in the container: {users}"
        # the adaptive runtime's entry point (a pod's sidecar) imports compound's modules in the image
        code, output = server.container.exec_run(["/usr/local/bin/compound-runtime"])
        assert code == 1 and b"usage: python -m toolkit.runtime.supervisor" in output, output
    assert _containers_named(server.name) == []
    assert not port_in_use("127.0.0.1", server.endpoints.http_port)


def _process_uids(server: DockerServer) -> list[tuple[str, str]]:
    """(uid, command line) of every process in the server's container, as the host sees them."""
    assert server.container is not None
    top = server.container.top(ps_args="-eo pid,uid,args")  # the engine needs the pid column to filter
    return [(str(row[1]), str(row[-1])) for row in top.get("Processes") or []]


def test_handlers_import_ssl_and_write_tmp_as_a_non_root_user(base_image: str, tmp_path: Path) -> None:
    """The stub links the venv's own libpython (put first by the entry point), so _ssl loads; not as root."""
    repo = render_repository(plan_spec(FIXTURES / "probe" / "pipeline.yaml"), tmp_path / "repo")
    with _server(repo, base_image, tmp_path / "logs") as server:
        out = infer("check", server.http_url, {"x": np.zeros((2, 1), dtype=np.float32)})
        version, euid, scratch = (value.decode() for value in out["report"][0])
        assert version.startswith("OpenSSL"), version
        assert euid == "1000" and scratch.startswith("/tmp/probe-")
        assert all(uid != "0" for uid, _ in _process_uids(server))


def test_cached_components_in_a_container_share_the_hosts_redis(base_image: str, tmp_path: Path) -> None:
    """--redis reaches the stubs inside the container; entries it writes answer a server outside it."""
    import redis as redis_client

    repo = render_repository(plan_spec(ROOT / "examples" / "cache" / "pipeline.yaml"), tmp_path / "repo")
    batch = {"text": np.array([[b"parcel lost"], [b"great service"]], dtype=object)}
    with RedisServer(workdir=tmp_path / "redis") as redis:
        with _server(repo, base_image, tmp_path / "logs", redis_url=redis.url) as server:
            inside = infer("retrieve", server.http_url, batch)
        assert redis_client.Redis.from_url(redis.url).dbsize() >= 2  # and the warmup input's entry
        with LocalServer(
            repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), redis_url=redis.url
        ) as local:
            outside = infer("retrieve", local.http_url, batch)
            metrics = urllib.request.urlopen(local.metrics_url, timeout=5).read().decode()
    assert outside["documents"].tolist() == inside["documents"].tolist()
    redis_hits = r'compound_cache_hits_total\{component="encode",instance="encode_0_0",tier="redis"\} (\d+)'
    hits = re.search(redis_hits, metrics)
    assert hits and int(hits.group(1)) >= 2, metrics  # both rows (and the warmup input, written by the container)


def test_update_and_rollback_of_a_container_under_load(base_image: str, tmp_path: Path) -> None:
    """`compound update` writes the new models into the bind-mounted repository on the host; the
    server in the container loads them (it cannot write into the mount: no bytecode of its own)."""
    import tritonclient.grpc as grpcclient

    repo = render_repository(plan_spec(write_spec(tmp_path / "v0", 0)), tmp_path / "repo")
    with _server(repo, base_image, tmp_path / "logs") as server:
        live = LiveDeployment.of(server)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert [answer(client, p) for p in PIPELINES] == [2.0] * len(PIPELINES)
        with Load(server.grpc_url, 4, lambda i: (PIPELINES[i % len(PIPELINES)], x_input())) as load:
            time.sleep(1.0)
            change = update(live, plan_spec(write_spec(tmp_path / "v1", 1)), log=print)
            assert [answer(client, p) for p in PIPELINES] == [4.0] * len(PIPELINES)
            rollback(live, log=print)
            assert [answer(client, p) for p in PIPELINES] == [2.0] * len(PIPELINES)
            time.sleep(1.0)
        client.close()
        assert sorted(change.changed_components) == ["grouped_steps", "shift"]  # the fuse group runs shift too
        assert load.errors == [], load.errors[:5]
        assert load.done > 20
        assert "shift.v2" in server.log_tail(400)


def test_failed_start_reports_the_model_and_removes_the_container(base_image: str, tmp_path: Path) -> None:
    repo = render_repository(
        plan_spec(ROOT / "tests" / "fixtures" / "broken_init" / "pipeline.yaml"), tmp_path / "repo"
    )
    server = _server(repo, base_image, tmp_path / "logs")
    with pytest.raises(ServerError) as failure:
        server.start()
    assert "broken" in str(failure.value) and "weights file missing" in str(failure.value)
    assert _containers_named(server.name) == []


def test_busy_port_names_the_flag(textdemo_repo: Path, tmp_path: Path) -> None:
    """Checked before any engine call, so this needs no Docker."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        server = DockerServer(
            textdemo_repo,
            http_port=holder.getsockname()[1],
            grpc_port=free_port(),
            metrics_port=free_port(),
            log_path=tmp_path / "log",
        )
        with pytest.raises(CompoundError, match="--http-port"):
            server.start()


def test_unreachable_engine_says_what_to_start(
    textdemo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    server = DockerServer(
        textdemo_repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_path=tmp_path / "log"
    )
    with pytest.raises(CompoundError) as failure:
        server.start()
    assert "cannot reach the Docker engine" in str(failure.value) and "dockerd" in str(failure.value)


def test_cli_deploy_status_infer_logs_stop_on_docker(textdemo_repo: Path, base_image: str) -> None:
    """What a user types: the container outlives `compound deploy`, and `compound stop` removes it."""
    from click.testing import CliRunner

    from toolkit.cli.main import cli

    runner = CliRunner()
    ports = [str(free_port()) for _ in range(3)]
    name = f"dockercli-{uuid.uuid4().hex[:6]}"
    deploy = [
        "deploy",
        str(textdemo_repo),
        "--target",
        "docker",
        "--name",
        name,
        "--network",
        "host",
        "--base-image",
        base_image,
        "--timeout",
        "600",
    ]
    deployed = runner.invoke(
        cli, [*deploy, "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    )
    try:
        assert deployed.exit_code == 0, deployed.output
        assert _containers_named(f"compound-{name}"), "the container should outlive the deploy command"
        status = runner.invoke(cli, ["status", "--name", name])
        assert status.exit_code == 0 and "ready (target docker, container compound-" in status.output, status.output
        assert "model classify: READY" in status.output
        deadline = time.monotonic() + 60  # the runtime beside the container writes its first status
        while "runtime:    pid" not in status.output and time.monotonic() < deadline:
            time.sleep(0.5)
            status = runner.invoke(cli, ["status", "--name", name])
        assert "runtime:    pid" in status.output and "tok: 1 instance(s), loaded" in status.output, status.output
        inferred = runner.invoke(
            cli,
            [
                "infer",
                "classify",
                "--url",
                f"127.0.0.1:{ports[1]}",
                "--protocol",
                "grpc",
                "--input",
                f"text={TEXTS[0]}",
            ],
        )
        assert inferred.exit_code == 0 and '"score"' in inferred.output, inferred.output
        logs = runner.invoke(cli, ["logs", "--name", name, "-n", "400"])
        assert logs.exit_code == 0 and "Started GRPCInferenceService" in logs.output, logs.output

        # supervised: the container killed (as a crash would end it), the runtime starts it again
        connect().containers.get(f"compound-{name}").kill()
        deadline = time.monotonic() + 300
        report: dict = {}
        while time.monotonic() < deadline:
            status = runner.invoke(cli, ["status", "--name", name, "--json"])
            report = json.loads(status.output) if status.output.startswith("{") else {}
            if report.get("restarts", {}).get("count") and report.get("condition") == "ready":
                break
            time.sleep(1.0)
        assert report["restarts"]["count"] == 1 and "SIGKILL" in report["restarts"]["last"]["reason"], report
        again = runner.invoke(
            cli, ["infer", "classify", "--url", f"127.0.0.1:{ports[0]}", "--input", f"text={TEXTS[0]}"]
        )
        assert again.exit_code == 0 and '"score"' in again.output, again.output
    finally:
        stopped = runner.invoke(cli, ["stop", "--name", name])
    assert stopped.exit_code == 0 and "stopped" in stopped.output, stopped.output
    assert _containers_named(f"compound-{name}") == []
    assert runner.invoke(cli, ["status", "--name", name]).exit_code != 0


def test_a_repository_other_users_cannot_read_is_named_before_anything_starts(tmp_path: Path) -> None:
    """The container never runs as root: a repository written under umask 077 would fail inside it."""
    repo = render_repository(plan_spec(ROOT / "examples/textdemo/pipeline.yaml"), tmp_path / "repo")
    (repo / "tok" / "config.pbtxt").chmod(0o600)
    server = DockerServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with pytest.raises(CompoundError, match="cannot be read by other users") as refused:
        server.start()
    assert "chmod -R o+rX" in str(refused.value) and "tok/config.pbtxt" in str(refused.value)
