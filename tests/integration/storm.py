"""The deadline storm: many clients with a short deadline against one server, until it dies or time is up.

On Triton 2.51 a gRPC client cancelling a request in flight (its deadline passed) races the response
being sent (TRITONBACKEND_ResponseSend on a released request: SIGSEGV, server#7368/#8034). A short
deadline that only a few requests in a thousand exceed is enough when the load is high. Used by the
pinned crash test (test_deadline_crash.py) and by benchmarks/deadline_storm.py.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from toolkit.targets.local import LocalServer

PIPELINE = "classify"
TEXTS = ["I love this product", "terrible, awful service", "the match last night was great", "new phone next week"]


@dataclass
class StormResult:
    protocol: str
    clients: int
    client_timeout_s: Union[float, tuple[float, ...]]
    duration_s: float  # how long the storm ran (less than asked when the server died)
    crashed: bool
    time_to_crash_s: Optional[float]
    exit_code: Optional[int]  # the server's, negative: killed by that signal
    signal: str  # what the log's tail says ("Signal (11) received."), if anything
    crash_log: str  # the log's last lines when the server died (its stack trace), else ""
    # ok / late (served after late_after_s) / deadline / queue_timeout / other (mostly refused after a crash)
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "requests": self.requests}


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    if "deadline" in text or "timed out" in text or isinstance(exc, TimeoutError):
        return "deadline"
    if "request timeout expired" in text:
        return "queue_timeout"  # the server's queue policy rejected it, cleanly
    return "other"


def _grpc_client(
    url: str,
    timeout_s: float,
    late_s: Optional[float],
    stop: threading.Event,
    counts: Counter[str],
    lock: threading.Lock,
) -> None:
    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(threading.get_ident() % 2**32)
    try:
        while not stop.is_set():
            tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
            tensor.set_data_from_numpy(
                np.array([[f"{TEXTS[rng.integers(len(TEXTS))]} {rng.integers(1 << 30)}"]], dtype=object)
            )
            started = time.monotonic()
            try:
                client.infer(PIPELINE, [tensor], client_timeout=timeout_s)
                outcome = "late" if late_s is not None and time.monotonic() - started > late_s else "ok"
            except InferenceServerException as exc:
                outcome = _classify(exc)
            with lock:
                counts[outcome] += 1
            if outcome == "other":
                time.sleep(0.01)  # the server is gone: do not spin
    finally:
        client.close()


def _http_client(
    url: str,
    timeout_s: float,
    late_s: Optional[float],
    stop: threading.Event,
    counts: Counter[str],
    lock: threading.Lock,
) -> None:
    host, port = url.rsplit(":", 1)
    rng = np.random.default_rng(threading.get_ident() % 2**32)
    connection: Optional[http.client.HTTPConnection] = None
    while not stop.is_set():
        text = f"{TEXTS[rng.integers(len(TEXTS))]} {rng.integers(1 << 30)}"
        body = json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]})
        started = time.monotonic()
        try:
            if connection is None:
                connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
            connection.request("POST", f"/v2/models/{PIPELINE}/infer", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                outcome = _classify(RuntimeError(answer.decode(errors="replace")))
            else:
                outcome = "late" if late_s is not None and time.monotonic() - started > late_s else "ok"
        except (OSError, http.client.HTTPException) as exc:  # a timeout drops the connection, as a client would
            outcome = "deadline" if isinstance(exc, TimeoutError) else "other"
            if connection is not None:
                connection.close()
            connection = None
        with lock:
            counts[outcome] += 1
        if outcome == "other":
            time.sleep(0.01)
    if connection is not None:
        connection.close()


def deadline_storm(
    server: LocalServer,
    *,
    protocol: str = "grpc",
    clients: int = 64,
    client_timeout_s: Union[float, Sequence[float]] = 0.020,
    duration_s: float = 15.0,
    late_after_s: Optional[float] = None,
    via: Optional[str] = None,
) -> StormResult:
    """`clients` threads, each sending `classify` requests one after another with its deadline (several
    deadlines: the clients take them in turn), for `duration_s` or until the server process exits
    (polled every 50 ms). With `late_after_s`, a response slower than that counts as "late" (clients
    that leave the deadline to the server: a long client deadline, and a late answer is thrown away).
    `via`: the address to send to instead of the server's own (a balancer in front of it)."""
    timeouts = (client_timeout_s,) if isinstance(client_timeout_s, (int, float)) else tuple(client_timeout_s)
    url = via or (server.grpc_url if protocol == "grpc" else server.http_url)
    target = _grpc_client if protocol == "grpc" else _http_client
    stop = threading.Event()
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    threads = [
        threading.Thread(
            target=target, args=(url, timeouts[i % len(timeouts)], late_after_s, stop, counts, lock), daemon=True
        )
        for i in range(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    crashed_at: Optional[float] = None
    while time.monotonic() - started < duration_s:
        if not server.alive():
            crashed_at = time.monotonic() - started
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    exit_code = server.process.returncode if server.process is not None and not server.alive() else None
    tail = server.log_tail(60)
    signal = next(iter(re.findall(r"Signal \(\d+\) received\.?", tail)), "")
    return StormResult(
        protocol=protocol,
        clients=clients,
        client_timeout_s=timeouts[0] if len(timeouts) == 1 else timeouts,
        duration_s=round(elapsed, 2),
        crashed=crashed_at is not None,
        time_to_crash_s=round(crashed_at, 2) if crashed_at is not None else None,
        exit_code=exit_code,
        signal=signal,
        crash_log=tail[-4000:] if exit_code is not None else "",
        outcomes=dict(sorted(counts.items())),
    )
