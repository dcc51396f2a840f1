"""Durations as users type them on the command line (`30s`, `5m`, `1h30m`, `500ms`, `45`)."""

from __future__ import annotations

import re

from toolkit.core.errors import CompoundError

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str, what: str = "duration", *, allow_zero: bool = False) -> float:
    """Seconds from '45', '2.5', '30s', '5m', '1h30m', '2m10s', '500ms'; anything else, zero or
    negative is an error naming `what` (the option it came from)."""
    raw = str(text).strip().lower()
    seconds = 0.0
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        seconds = float(raw)
    else:
        position = 0
        for match in _PART.finditer(raw):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _SECONDS[match.group(2)]
            position = match.end()
        if not raw or position != len(raw):
            raise CompoundError(f"invalid {what} {text!r}", hint="use seconds or a span like 30s, 5m, 1h30m, 500ms")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise CompoundError(f"invalid {what} {text!r}: must be longer than zero")
    return seconds
