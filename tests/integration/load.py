"""A closed-loop gRPC load for tests that must see every request served while something changes
underneath (a rescale, a killed stub, a killed Redis)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import tritonclient.grpc as grpcclient

# client index -> (model, inputs) of that client's next request
NextRequest = Callable[[int], tuple[str, list[Any]]]


class Load:
    """One thread per client, each sending its next request as soon as the last is answered, until
    the block ends; counts what succeeded and keeps what failed, whatever the failure."""

    def __init__(self, url: str, concurrency: int, next_request: NextRequest) -> None:
        self.url = url
        self.next_request = next_request
        self.stop_event = threading.Event()
        self.done = 0
        self.errors: list[str] = []
        self.latencies: list[tuple[float, float]] = []  # (monotonic start, seconds) of each success
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(concurrency)]

    def _run(self, index: int) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while not self.stop_event.is_set():
                model, inputs = self.next_request(index)
                started = time.monotonic()
                try:
                    client.infer(model, inputs, client_timeout=30)
                    with self.lock:
                        self.done += 1
                        self.latencies.append((started, time.monotonic() - started))
                except Exception as exc:  # every failure counts, whatever its type
                    with self.lock:
                        self.errors.append(str(exc)[:200])
        finally:
            client.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)
