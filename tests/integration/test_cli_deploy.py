"""The README's path through the CLI: generate, deploy in the background, status, infer, logs, stop."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

from click.testing import CliRunner

from toolkit.cli.main import cli
from toolkit.core.system import free_port
from toolkit.targets.local import group_members
from toolkit.targets.state import load_state

ROOT = Path(__file__).resolve().parents[2]


def test_deploy_status_infer_stop(tmp_path: Path) -> None:
    runner = CliRunner()
    repo = tmp_path / "repo"
    assert (
        runner.invoke(cli, ["generate", str(ROOT / "examples/textdemo/pipeline.yaml"), "-o", str(repo)]).exit_code == 0
    )
    http, grpc, metrics = free_port(), free_port(), free_port()
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    result = runner.invoke(cli, ["deploy", str(repo), "--target", "local", "--static", *ports])
    try:
        assert result.exit_code == 0, result.output
        assert f"HTTP 127.0.0.1:{http}" in result.output and "ready in" in result.output

        again = runner.invoke(cli, ["deploy", str(repo), *ports])
        assert again.exit_code == 1 and "already running" in again.output

        status = runner.invoke(cli, ["status"])
        assert status.exit_code == 0 and "textdemo: ready" in status.output and "model classify: READY" in status.output

        out = runner.invoke(cli, ["infer", "classify", "--url", f"127.0.0.1:{http}", "--input", "text=héllo"])
        assert out.exit_code == 0, out.output
        assert set(json.loads(out.output)) == {"label", "confidence", "score", "topics"}

        data = tmp_path / "batch.json"
        data.write_text(json.dumps({"text": [["one"], ["two"], [""]]}))
        out = runner.invoke(
            cli, ["infer", "classify", "--url", f"127.0.0.1:{grpc}", "--protocol", "grpc", "--data", str(data)]
        )
        assert out.exit_code == 0, out.output
        assert len(json.loads(out.output)["label"]) == 3

        bad = runner.invoke(cli, ["infer", "classify", "--url", f"127.0.0.1:{http}", "--input", "txt=oops"])
        assert bad.exit_code == 1 and "has no input 'txt'" in bad.output

        logs = runner.invoke(cli, ["logs", "-n", "5"])
        assert logs.exit_code == 0 and logs.output.strip()
        state = load_state("textdemo")
        server_pid = state.pid
        assert server_pid is not None and len(group_members(server_pid)) > 1  # the server and its stubs
        state_file = next(Path(os.environ["COMPOUND_STATE_DIR"]).glob("textdemo.json"))
        assert state.api_key and stat.S_IMODE(state_file.stat().st_mode) == 0o600  # it holds the API key

        # a component whose Python stub dies is reported, not shown as running (no runtime heals it: --static)
        stubs = [pid for pid in group_members(server_pid) if "/topic/" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert stubs, "no stub process for model 'topic'"
        for pid in stubs:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        status = runner.invoke(cli, ["status"])
        while status.exit_code != 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            status = runner.invoke(cli, ["status"])
        assert status.exit_code == 3 and "textdemo: degraded" in status.output, status.output
        assert "model topic: UNHEALTHY" in status.output and "model tok: READY" in status.output
    finally:
        stopped = runner.invoke(cli, ["stop"])
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    gone = runner.invoke(cli, ["status"])
    assert gone.exit_code == 1 and "no deployment is recorded" in gone.output
    assert group_members(server_pid) == []  # no Python-backend stub outlives the server


def test_infer_unreachable_server() -> None:
    result = CliRunner().invoke(cli, ["infer", "classify", "--url", f"127.0.0.1:{free_port()}", "--input", "text=x"])
    assert (
        result.exit_code == 1 and "cannot reach the Triton server" in result.output and "Traceback" not in result.output
    )


def test_infer_over_grpc_defaults_to_the_grpc_port() -> None:
    """Without --url, --protocol grpc talks to the gRPC port `compound deploy` binds, not the HTTP one."""
    result = CliRunner().invoke(cli, ["infer", "classify", "--protocol", "grpc", "--input", "text=x"])
    assert result.exit_code == 1 and "127.0.0.1:8001 over grpc" in result.output, result.output


def test_deploy_missing_repository(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["deploy", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_serve_in_foreground_stops_on_ctrl_c(textdemo_repo: Path) -> None:
    import signal
    import subprocess
    import sys

    import numpy as np

    from toolkit.client import infer

    http, grpc, metrics = free_port(), free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "toolkit",
        "serve",
        str(textdemo_repo),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
    ]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("ready:"), first
        outputs = infer("sentiment_only", f"127.0.0.1:{http}", {"text": np.array([[b"hi"]], dtype=object)})
        assert outputs["score"].shape == (1, 1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
