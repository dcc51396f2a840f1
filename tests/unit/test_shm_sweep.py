"""Leftover Python-backend shared-memory regions: the sweep a server's stop runs unlinks the old ones that
no live process maps, and keeps a region a process maps and a region too young to judge."""

from __future__ import annotations

import mmap
import os
import time
import uuid
from pathlib import Path

import pytest

from toolkit.targets.local import SHM_REGION_PREFIX, sweep_shared_memory

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")  # noqa: S108


def region(age_s: float) -> Path:
    path = Path(f"{SHM_REGION_PREFIX}sweep-test-{uuid.uuid4()}")
    path.write_bytes(b"\0" * mmap.PAGESIZE)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_old_unmapped_regions_go_and_mapped_or_young_ones_stay() -> None:
    leftover, young, mapped = region(3600), region(5), region(3600)
    with open(mapped, "r+b") as file, mmap.mmap(file.fileno(), 0) as view:  # this process maps it
        try:
            removed = sweep_shared_memory(min_age_s=60)
            assert leftover in removed and not leftover.exists()
            assert young.exists() and mapped.exists()
            assert young not in removed and mapped not in removed
            assert view[0] == 0
        finally:
            for path in (leftover, young, mapped):
                path.unlink(missing_ok=True)
