"""The proxy in front of replicas, on real processes: two tritonservers of the bundled example behind a
real Envoy. One client channel reaches both replicas; a replica SIGKILLed under load costs no request;
a replica restarted on its ports gets traffic again."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.conftest import start_server
from toolkit.core.errors import CompoundError, ServerError
from toolkit.core.system import free_port, free_ports
from toolkit.observe.stats import fetch_stats
from toolkit.targets.local import LocalServer
from toolkit.targets.proxy import EnvoyProxy, ProxyCounters, Replica, is_envoy, stop_recorded_proxy

PIPELINE = "classify"


@dataclass
class Cluster:
    repository: Path
    logs: Path
    servers: list[LocalServer]
    proxy: EnvoyProxy
    restarted: list[LocalServer] = field(default_factory=list)

    def served(self) -> list[int]:
        """Requests of the pipeline each replica has served so far (Triton's own statistics)."""
        counts = []
        for server in self.servers:
            stats = fetch_stats(server.http_url)
            counts.append(stats[PIPELINE].success.count if PIPELINE in stats else 0)
        return counts


@pytest.fixture(scope="module")
def cluster(textdemo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("proxy")
    servers: list[LocalServer] = []
    proxy = None
    try:
        for i in range(2):
            (logs / f"replica{i}").mkdir()
            servers.append(start_server(textdemo_repo, logs / f"replica{i}"))
        replicas = [Replica("127.0.0.1", s.endpoints.http_port, s.endpoints.grpc_port) for s in servers]
        http_port, grpc_port = free_ports(2)
        proxy = EnvoyProxy(replicas, http_port=http_port, grpc_port=grpc_port, workdir=logs / "envoy").start()
        found = Cluster(textdemo_repo, logs, servers, proxy)
        yield found
        servers = found.servers
    finally:
        if proxy is not None:
            proxy.stop()
        for server in servers:
            server.stop()
    assert proxy is not None and not proxy.alive()


def grpc_inputs(text: str) -> list[Any]:
    item = grpcclient.InferInput("text", [1, 1], "BYTES")
    item.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    return [item]


def test_one_grpc_channel_reaches_every_replica(cluster: Cluster) -> None:
    before = cluster.served()
    client = grpcclient.InferenceServerClient(cluster.proxy.grpc_url)  # one client, one channel
    try:
        for i in range(200):
            result = client.infer(PIPELINE, grpc_inputs(f"great match #{i}"), client_timeout=10)
            assert result.as_numpy("label") is not None
    finally:
        client.close()
    shares = settled_shares(cluster.served, before, 200)
    assert sum(shares) == 200
    assert min(shares) >= 60, f"per-replica requests {shares}: not balanced per request"
    counters = cluster.proxy.counters()
    assert counters.clusters["grpc"].requests >= 200 and counters.clusters["grpc"].healthy_replicas == 2


def test_one_http_connection_reaches_every_replica(cluster: Cluster) -> None:
    before = cluster.served()
    client = httpclient.InferenceServerClient(cluster.proxy.http_url, concurrency=1)  # one keep-alive connection
    try:
        for i in range(200):
            item = httpclient.InferInput("text", [1, 1], "BYTES")
            item.set_data_from_numpy(np.array([[f"new phone #{i}".encode()]], dtype=object))
            assert client.infer(PIPELINE, [item]).as_numpy("label") is not None
    finally:
        client.close()
    shares = settled_shares(cluster.served, before, 200)
    assert sum(shares) == 200
    assert min(shares) >= 60, f"per-replica requests {shares}: not balanced per request"
    assert cluster.proxy.counters().clusters["http"].requests >= 200


def settled_shares(served: Callable[[], list[int]], before: list[int], total: int) -> list[int]:
    """Requests each replica served since `before`, once their sum reaches `total` (Triton counts a
    request a moment after its response is out), or as they stand after 5 s."""
    deadline = time.monotonic() + 5.0
    while True:
        shares = [after - was for after, was in zip(served(), before)]
        if sum(shares) >= total or time.monotonic() > deadline:
            return shares
        time.sleep(0.05)


@dataclass
class Load:
    """A closed loop of `clients` threads, each with its own gRPC client and no client-side retry."""

    url: str
    clients: int = 16
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self, k: int) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        i = 0
        try:
            while not self.stop.is_set():
                try:
                    client.infer(PIPELINE, grpc_inputs(f"client {k} request {i}"), client_timeout=10)
                    with self.lock:
                        self.ok += 1
                except Exception as exc:
                    with self.lock:
                        self.failed += 1
                        if len(self.errors) < 5:
                            self.errors.append(str(exc)[:300])
                i += 1
        finally:
            client.close()

    def run(self, seconds: float, during: Any = None, at_s: float = 0.0) -> None:
        threads = [threading.Thread(target=self.worker, args=(k,), daemon=True) for k in range(self.clients)]
        for thread in threads:
            thread.start()
        began = time.monotonic()
        if during is not None:
            time.sleep(at_s)
            during()
        time.sleep(max(0.0, seconds - (time.monotonic() - began)))
        self.stop.set()
        for thread in threads:
            thread.join(timeout=15)
        assert not any(thread.is_alive() for thread in threads)


def test_a_replica_killed_under_load_costs_no_request_and_rejoins_when_restarted(cluster: Cluster) -> None:
    victim = cluster.servers[1]
    victim_grpc = f"127.0.0.1:{victim.endpoints.grpc_port}"
    assert victim.pid is not None
    before = cluster.proxy.counters()
    load = Load(cluster.proxy.grpc_url)
    load.run(8.0, during=lambda: os.kill(victim.pid, signal.SIGKILL), at_s=2.0)  # type: ignore[arg-type]

    after = cluster.proxy.counters()
    grpc_before, grpc_after = before.clusters["grpc"], after.clusters["grpc"]
    print(
        f"{load.ok} ok, {load.failed} failed; proxy: {grpc_after.retries - grpc_before.retries} retried,"
        f" {grpc_after.ejections - grpc_before.ejections} ejection(s),"
        f" {grpc_after.health_check_failures - grpc_before.health_check_failures} failed health checks"
    )
    assert load.ok > 100, f"only {load.ok} requests completed"
    assert load.failed == 0, f"{load.failed} of {load.ok + load.failed} failed: {load.errors}"
    assert grpc_after.retry_overflow == grpc_before.retry_overflow
    assert grpc_after.retries > grpc_before.retries, "the requests in flight on the dead replica were not retried"
    dead = after.host("grpc", victim_grpc)
    assert not dead.healthy
    assert dead.ejected or dead.failed_health_check
    assert grpc_after.ejections + grpc_after.health_check_failures > grpc_before.ejections + (
        grpc_before.health_check_failures
    )
    assert grpc_after.healthy_replicas == 1

    # the dead server's leftovers go (its Python stubs), then a new one on the same ports
    victim.stop()
    replacement = LocalServer(
        cluster.repository,
        http_port=victim.endpoints.http_port,
        grpc_port=victim.endpoints.grpc_port,
        metrics_port=victim.endpoints.metrics_port,
        log_path=cluster.logs / "replica1" / "restarted.log",
    )
    cluster.servers[1] = replacement
    replacement.start()
    ready = time.monotonic()
    client = grpcclient.InferenceServerClient(cluster.proxy.grpc_url)
    try:
        served = 0
        while time.monotonic() - ready < 10.0 and served == 0:
            for i in range(20):
                client.infer(PIPELINE, grpc_inputs(f"back #{i}"), client_timeout=10)
            served = cluster.served()[1]
    finally:
        client.close()
    rejoined_s = time.monotonic() - ready
    assert served > 0, "the restarted replica got no traffic within 10 s of being ready"
    assert cluster.proxy.counters().host("grpc", victim_grpc).healthy
    print(f"restarted replica served again {rejoined_s:.1f} s after it was ready")


def counters_have_no_overflow(counters: ProxyCounters) -> bool:
    return counters.total("retry_overflow") == 0 and counters.total("pending_overflow") == 0


def test_the_proxy_never_overflowed(cluster: Cluster) -> None:
    assert counters_have_no_overflow(cluster.proxy.counters())
    assert cluster.proxy.alive()


class UncheckedProxy(EnvoyProxy):
    """Skips the port checks, so that envoy itself meets the taken port."""

    def preflight(self) -> None:
        pass


def test_a_proxy_that_dies_at_start_raises_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy = UncheckedProxy(
            [Replica("127.0.0.1", free_port(), free_port())], http_port=port, grpc_port=free_port(), workdir=tmp_path
        )
        with pytest.raises(ServerError) as caught:
            proxy.start()
    assert "envoy exited" in str(caught.value) and str(port) in str(caught.value)
    assert not proxy.alive() and proxy.process is None


def test_a_proxy_port_in_use_is_named(tmp_path: Path, cluster: Cluster) -> None:
    proxy = EnvoyProxy(
        cluster.proxy.replicas, http_port=cluster.proxy.http_port, grpc_port=free_port(), workdir=tmp_path
    )
    with pytest.raises(CompoundError, match=rf"(?s)port {cluster.proxy.http_port} .* in use.*--http-port"):
        proxy.start()
    assert proxy.process is None


def test_a_listen_address_not_of_this_machine_is_named(tmp_path: Path) -> None:
    proxy = EnvoyProxy(
        [Replica("127.0.0.1", free_port(), free_port())],
        http_port=free_port(),
        grpc_port=free_port(),
        listen_host="192.0.2.1",  # TEST-NET-1: never local
        workdir=tmp_path,
    )
    with pytest.raises(CompoundError, match="cannot listen on 192.0.2.1"):
        proxy.start()
    assert proxy.process is None


def test_a_detached_proxy_is_stopped_by_its_recorded_pid(tmp_path: Path, cluster: Cluster) -> None:
    http_port, grpc_port = free_ports(2)
    proxy = EnvoyProxy(cluster.proxy.replicas, http_port=http_port, grpc_port=grpc_port, workdir=tmp_path, detach=True)
    proxy.start()
    try:
        pid = proxy.pid
        assert pid is not None and is_envoy(pid) and not is_envoy(os.getpid())
        assert stop_recorded_proxy(pid)
        assert proxy.process is not None and proxy.process.wait(timeout=5) is not None
        assert not is_envoy(pid) and not stop_recorded_proxy(pid)
    finally:
        proxy.stop()
    assert proxy.process is None
