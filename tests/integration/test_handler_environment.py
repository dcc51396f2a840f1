"""Handlers run in Triton's Python stub with this environment's packages, extension modules included:
`ssl` is what transformers, requests and huggingface_hub need, and it fails when the stub links
another build's libpython (pyenv, conda, self-built Pythons)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from tests.conftest import start_server
from toolkit.client import infer
from toolkit.plan import plan_spec
from toolkit.render import render_repository

SPEC = """
name: envcheck
models:
  probe:
    handler: probe:Probe
    inputs: {x: {dtype: fp32, dims: [1]}}
    outputs: {version: {dtype: string, dims: [1]}}
pipelines:
  check:
    inputs: {x: {dtype: fp32, dims: [1]}}
    outputs: [version]
    steps: [{model: probe, inputs: {x: x}, outputs: {version: version}}]
"""

HANDLER = """
import ssl

import numpy as np


class Probe:
    def __init__(self, parameters, device):
        self.version = ssl.OPENSSL_VERSION

    def __call__(self, x):
        return {"version": np.array([[self.version]] * len(x), dtype=object)}
"""


def test_handlers_can_import_ssl(tmp_path: Path) -> None:
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "pipeline.yaml").write_text(SPEC)
    (tmp_path / "spec" / "probe.py").write_text(textwrap.dedent(HANDLER))
    repo = render_repository(plan_spec(tmp_path / "spec" / "pipeline.yaml"), tmp_path / "repo")
    server = start_server(repo, tmp_path)
    try:
        out = infer("check", server.http_url, {"x": np.zeros((2, 1), dtype=np.float32)})
    finally:
        server.stop()
    assert out["version"][0, 0].decode().startswith("OpenSSL")
