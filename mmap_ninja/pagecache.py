"""The page cache under a map: how much of it is in memory, and dropping it, to measure or test
reads from disk (cold reads).

``residency(path)`` and ``evict(path)`` take a map's folder (every file under it) or one file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

from ._mapping import Mapping
from .base import PathLike

__all__ = ["residency", "evict"]


def _files(path: PathLike) -> List[Path]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no file or map at {path}")
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def residency(path: PathLike) -> Tuple[int, int]:
    """``(resident, total)``: the bytes of the files at ``path`` (a map's folder, or a file)
    that are in the page cache, and their size, counted in whole pages (``mincore``)."""
    page = os.sysconf("SC_PAGESIZE")
    resident = total = 0
    for file in _files(path):
        if file.stat().st_size == 0:
            continue
        pages_in, pages = Mapping(file).resident()
        resident += pages_in * page
        total += pages * page
    return resident, total


def evict(path: PathLike) -> None:
    """Drop the pages of the files at ``path`` (a map's folder, or a file) from the page cache
    (``posix_fadvise(POSIX_FADV_DONTNEED)``, after writing back what is not on disk yet), so
    that the next reads come from disk. Pages another process holds locked in memory stay:
    check with ``residency``."""
    for file in _files(path):
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
