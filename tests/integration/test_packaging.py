"""Templates and locustfiles must ship in a non-editable install, not only in the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_non_editable_install_generates_the_example(tmp_path: Path) -> None:
    target = tmp_path / "site"
    # From a clean copy of the sources: setuptools reuses a build/ folder in the tree, whose stale
    # files would hide a package missing from pyproject.toml. Built in isolation, as `pip install .`
    # does: the build backend comes from pyproject.toml, not from this environment.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", "test-artifacts", "bench-results"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert (target / "toolkit" / "templates" / "model.py").is_file()
    assert (target / "toolkit" / "templates" / "config.pbtxt.j2").is_file()
    assert (target / "toolkit" / "templates" / "proxy" / "envoy.yaml.j2").is_file()
    assert (target / "toolkit" / "locust" / "__init__.py").is_file()
    assert (target / "bin" / "compound").is_file()
    packages = {p.parent.relative_to(ROOT) for p in (ROOT / "toolkit").rglob("__init__.py")}
    installed = {p.parent.relative_to(target) for p in (target / "toolkit").rglob("__init__.py")}
    assert packages <= installed, f"packages missing from the install: {sorted(map(str, packages - installed))}"
    modules = {p.relative_to(ROOT) for p in (ROOT / "toolkit").rglob("*.py")}
    assert modules <= {p.relative_to(target) for p in (target / "toolkit").rglob("*.py")}
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
