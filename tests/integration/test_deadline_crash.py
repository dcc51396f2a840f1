"""Pinned: Triton 2.51 (the server in nvidia-pytriton 0.7.0) crashes under gRPC clients with short
deadlines. A cancelled request's response is sent after the request was released (SIGSEGV in
TRITONBACKEND_ResponseSend; server#7368 and #8034, fixed upstream by server PRs #7840 and #8078).
The test runs the deadline storm (64 gRPC clients, half with a 20 ms deadline, half with 4 ms) against
a server of its own and asserts the server is still alive;
it is a strict xfail, so the day the server is upgraded the suite says so. It needs a few seconds
to crash; it gives up after 15 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import start_server
from tests.integration.storm import deadline_storm


@pytest.mark.xfail(
    strict=True,
    reason="Triton 2.51's gRPC frontend races a client's cancellation (deadline exceeded) against the response: "
    "SIGSEGV in TRITONBACKEND_ResponseSend (triton-inference-server/server#7368, #8034; fixed by #7840, #8078)",
)
def test_grpc_clients_with_short_deadlines_do_not_kill_the_server(textdemo_repo: Path, tmp_path: Path) -> None:
    server = start_server(textdemo_repo, tmp_path)
    try:
        # 20 ms deadlines crash a loaded machine's server within seconds, 4 ms ones a quiet machine's
        result = deadline_storm(server, protocol="grpc", clients=64, client_timeout_s=(0.020, 0.004), duration_s=15.0)
        print(result.as_dict())
        assert server.alive(), (
            f"tritonserver died after {result.time_to_crash_s} s: {result.signal}\n{server.log_tail(8)}"
        )
    finally:
        server.stop()
