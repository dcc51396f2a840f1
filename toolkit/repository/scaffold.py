"""`compound init`: a minimal project that validates, generates and deploys as is."""

from __future__ import annotations

import re
from pathlib import Path

from toolkit import __version__
from toolkit.core.errors import CompoundError
from toolkit.repository.render import template_env, templates_dir


def scaffold(directory: Path) -> list[Path]:
    if directory.exists() and any(directory.iterdir()):
        raise CompoundError(f"{directory} exists and is not empty", hint="choose a new folder")
    name = re.sub(r"[^a-z0-9_-]", "-", directory.resolve().name.lower()).lstrip("-_0123456789") or "pipeline"
    spec = template_env().get_template("init/pipeline.yaml.j2").render(name=name, version=__version__)
    handlers = (templates_dir() / "init" / "handlers.py").read_text()
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "pipeline.yaml", directory / "handlers.py"]
    written[0].write_text(spec)
    written[1].write_text(handlers)
    return written
