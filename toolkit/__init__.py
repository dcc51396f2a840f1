"""compound: a pipeline spec in, a Triton deployment out, proven under load."""

from __future__ import annotations

__version__ = "0.1.0"
