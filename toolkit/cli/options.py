"""Options several commands share, declared once."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def name_option(help_text: str = "Deployment name (default: the only one).") -> Callable[[F], F]:
    """--name: which recorded deployment a command acts on."""
    return click.option("--name", default=None, help=help_text)
