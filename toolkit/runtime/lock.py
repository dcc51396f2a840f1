"""The repository's lock: `compound update` holds it exclusively while it changes the models; the
adaptive runtime takes it shared around each of its own loads, and neither rescales nor heals while
an update acts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from toolkit.core.errors import CompoundError

LOCK_FILE = ".compound-update.lock"
LOCK_WAIT_S = 60.0


@contextlib.contextmanager
def update_lock(repository: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Held while an update acts; the runtime takes it shared around each of its own loads."""
    fd = os.open(repository / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CompoundError(
                        f"another update of {repository} is still running", hint="wait for it, then retry"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def runtime_may_act(repository: str | Path) -> Iterator[bool]:
    """For the runtime: True (and the lock held shared) unless an update is acting."""
    try:
        fd = os.open(Path(repository) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only repository: no update can run on it either
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
