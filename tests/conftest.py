"""Shared fixtures: one real tritonserver per repository per test session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import pytest

from toolkit.core.system import free_port
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository
from toolkit.targets.local import LocalServer
from toolkit.targets.settings import Tracing

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SPEC = ROOT / "examples" / "textdemo" / "pipeline.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(autouse=True, scope="session")
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep `compound deploy` state of tests out of the user's ~/.compound."""
    previous = os.environ.get("COMPOUND_STATE_DIR")
    os.environ["COMPOUND_STATE_DIR"] = str(tmp_path_factory.mktemp("state") / "deployments")
    yield
    if previous is None:
        os.environ.pop("COMPOUND_STATE_DIR", None)
    else:
        os.environ["COMPOUND_STATE_DIR"] = previous


def start_server(
    repository: Path, log_dir: Path, redis_url: Optional[str] = None, tracing: Optional[Tracing] = None
) -> LocalServer:
    """A started server on free loopback ports (callers stop it)."""
    server = LocalServer(
        repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=log_dir / "tritonserver.log",
        redis_url=redis_url,
        tracing=tracing,
    )
    return server.start()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def textdemo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_repository(plan_spec(EXAMPLE_SPEC), tmp_path_factory.mktemp("textdemo") / "repo")


@pytest.fixture(scope="session")
def textdemo_server(textdemo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = start_server(textdemo_repo, tmp_path_factory.mktemp("textdemo-logs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def faulty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    repo = render_repository(
        plan_spec(FIXTURES / "faulty" / "pipeline.yaml"), tmp_path_factory.mktemp("faulty") / "repo"
    )
    server = start_server(repo, tmp_path_factory.mktemp("faulty-logs"))
    yield server
    server.stop()
