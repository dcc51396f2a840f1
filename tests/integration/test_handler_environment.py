"""Handlers run in Triton's Python stub with this environment's packages, extension modules included:
`ssl` is what transformers, requests and huggingface_hub need, and it fails when the stub links
another build's libpython (pyenv, conda, self-built Pythons)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import FIXTURES, start_server
from toolkit.client import infer
from toolkit.plan import plan_spec
from toolkit.repository.render import render_repository


def test_handlers_can_import_ssl(tmp_path: Path) -> None:
    repo = render_repository(plan_spec(FIXTURES / "probe" / "pipeline.yaml"), tmp_path / "repo")
    server = start_server(repo, tmp_path)
    try:
        out = infer("check", server.http_url, {"x": np.zeros((2, 1), dtype=np.float32)})
    finally:
        server.stop()
    assert out["report"][0, 0].decode().startswith("OpenSSL")
