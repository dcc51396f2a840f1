"""One error type for everything a user can get wrong, so the CLI can print it without a traceback."""

from __future__ import annotations

from dataclasses import dataclass, field


class CompoundError(Exception):
    """A user-facing failure: a message naming the culprit, and an optional hint on what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located as precisely as we can (file:line, then a dotted path)."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class SpecError(CompoundError):
    """Every problem found in a spec at once, so users fix them in one round."""

    source: str
    problems: list[Problem] = field(default_factory=list)

    exit_code = 2

    def __post_init__(self) -> None:
        CompoundError.__init__(self, self._render())

    def _render(self) -> str:
        head = f"{self.source}: {len(self.problems)} problem(s) in the spec"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])

    def __str__(self) -> str:
        return self._render()


class ServerError(CompoundError):
    """The server could not start or died; carries the tail of its log."""

    def __init__(self, message: str, log_tail: str = "", hint: str | None = None) -> None:
        text = message if not log_tail else f"{message}\n--- server log (tail) ---\n{log_tail.rstrip()}"
        super().__init__(text, hint)
        self.log_tail = log_tail
