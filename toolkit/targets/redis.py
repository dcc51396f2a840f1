"""A local `redis-server` for the tiered caches' shared tier: what tests, benchmarks and a single
machine use (clusters run their own, or the one `--redis-deployment` renders).

A cache, not a store: no snapshots, no append-only file, LRU eviction at `maxmemory`.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from toolkit.core.errors import CompoundError
from toolkit.core.system import OwnedProcess, free_port

READY_TIMEOUT_S = 20.0


class RedisServer(OwnedProcess):
    """One redis-server process: started, health-checked (PING), logged to a file, always stopped."""

    def __init__(
        self,
        port: Optional[int] = None,
        *,
        host: str = "127.0.0.1",
        maxmemory: str = "256mb",
        workdir: Optional[str | Path] = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.maxmemory = maxmemory
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="compound-redis-"))
        self.log_path = self.workdir / "redis.log"
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise CompoundError("redis-server is not installed", hint="apt-get install redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            self.maxmemory,
            "--maxmemory-policy",
            "allkeys-lru",
            "--dir",
            str(self.workdir),
            "--logfile",
            "",
        ]
        self.start_and_wait(
            argv,
            self.ping,
            log_path=self.log_path,
            what=f"redis-server on port {self.port}",
            timeout_s=READY_TIMEOUT_S,
            poll_s=0.05,
        )
        return self

    def ping(self) -> bool:
        """PING over a plain socket: health needs no client library."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as an outage would: what the caches must survive."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
