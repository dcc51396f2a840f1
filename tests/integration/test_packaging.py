"""Templates and locustfiles must ship in a non-editable install, not only in the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_non_editable_install_generates_the_example(tmp_path: Path) -> None:
    target = tmp_path / "site"
    # Built in isolation, as `pip install .` does: the build backend comes from pyproject.toml, not
    # from whatever setuptools (or lack of `wheel`) the test's environment happens to have.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert (target / "toolkit" / "templates" / "model.py").is_file()
    assert (target / "toolkit" / "templates" / "config.pbtxt.j2").is_file()
    assert (target / "toolkit" / "locust" / "__init__.py").is_file()
    assert (target / "bin" / "compound").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = tmp_path / "repo"
    run = subprocess.run(
        [sys.executable, "-m", "toolkit", "generate", str(ROOT / "examples/textdemo/pipeline.yaml"), "-o", str(out)],
        cwd=tmp_path,  # away from the source tree, so the installed package is the one imported
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import toolkit; print(toolkit.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(target))
    committed = ROOT / "model_repository"
    for path in sorted(committed.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            assert (out / path.relative_to(committed)).read_bytes() == path.read_bytes(), path
