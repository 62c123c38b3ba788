"""Fixed-shape arrays stored in a directory: the building block of every map.

An array directory holds ``data.ninja`` (the raw bytes) beside ``dtype.ninja``, ``shape.ninja``
and ``order.ninja``. A numpy map is one such directory; a ragged map is one (its flattened data)
holding others (``starts``, ``ends``, ``flattened_shapes``, ``shapes``); a strings map holds two
(``starts`` and ``ends``).

Writes follow one rule: new bytes go to the data file first, past everything committed, and only
then does ``shape.ninja``, replaced atomically, make them part of the array. Readers map exactly
the committed bytes, so they never see a half-written row, and bytes past the committed length
(left by an interrupted write, or the single padding byte of an empty array) are ignored.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import _meta
from ._meta import ArrayMeta

# os.pwrite writes at most this many bytes per call on Linux.
_WRITE_CHUNK = 1 << 30


def byte_view(arr: np.ndarray, order: str = "C") -> memoryview:
    """The bytes of ``arr`` laid out in ``order``, as a flat memoryview (a copy only when
    ``arr`` is not contiguous in that order)."""
    flat = np.ravel(arr, order=order)
    return memoryview(flat.view(np.uint8))


def write_at(path: Path, offset: int, data: Union[bytes, memoryview], truncate: bool = False) -> None:
    """Write ``data`` into ``path`` at byte ``offset`` (creating the file; emptying it first
    when ``truncate``)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:done + _WRITE_CHUNK], offset + done)
    finally:
        os.close(fd)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"missing data file: {path}") from None


def _ensure_size(path: Path, size: int) -> None:
    """Grow ``path`` to at least ``size`` bytes (zero-filled, sparse where the file system
    allows)."""
    if _file_size(path) < size:
        os.truncate(path, size)


def empty_memmap(path: Path, dtype: np.dtype, shape, order: str, mode: str) -> np.memmap:
    """A ``np.memmap`` instance for an array with no bytes (which ``mmap`` cannot map),
    remembering its file so that ``numpy.extend`` works on it."""
    arr = np.ndarray.__new__(np.memmap, shape=shape, dtype=dtype, order=order)
    arr.filename = os.path.abspath(path)
    arr.offset = 0
    arr.mode = mode
    return arr


def map_file(path: Path, meta: ArrayMeta, mode: str = "r") -> np.memmap:
    """Map the first ``meta.nbytes`` bytes of ``path`` as an array; ``ValueError`` naming the
    file when it is shorter than that."""
    size = _file_size(path)
    if size < meta.nbytes:
        raise ValueError(f"{path}: holds {size} bytes, but its shape {meta.shape} of "
                         f"{meta.dtype} needs {meta.nbytes}")
    if meta.nbytes == 0:
        return empty_memmap(path, meta.dtype, meta.shape, meta.order, mode)
    return np.memmap(path, dtype=meta.dtype, mode=mode, shape=meta.shape, order=meta.order)


def map_bytes(path: Path) -> Union[mmap.mmap, bytes]:
    """Map all of ``path`` read-only (``b""`` for an empty file)."""
    size = _file_size(path)
    if size == 0:
        return b""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class ArrayDir:
    """A fixed-shape array in a directory, with its committed metadata (``None`` while
    nothing is committed)."""

    def __init__(self, path: Path, meta: Optional[ArrayMeta] = None):
        self.path = path
        self.meta = meta
        self._replacement: Optional[Path] = None

    @property
    def data_file(self) -> Path:
        return self.path / _meta.DATA

    @classmethod
    def open(cls, path: Path) -> "ArrayDir":
        if not path.is_dir():
            raise FileNotFoundError(f"missing array directory: {path}")
        return cls(path, ArrayMeta.read(path))

    def map(self, mode: str = "r") -> np.memmap:
        return map_file(self.data_file, self.meta, mode)

    @property
    def rows(self) -> int:
        return self.meta.shape[0] if self.meta is not None else 0

    def write_rows(self, rows: np.ndarray, at: Optional[int] = None, order: str = "C") -> ArrayMeta:
        """Write ``rows`` (an array whose first axis runs over entries) after the first ``at``
        committed entries (default: all of them) and return the metadata that commits them.

        Nothing is visible until ``commit``. A new array takes its dtype and trailing shape from
        ``rows`` and the given ``order``. Appending to a Fortran-ordered array of more than one
        axis rewrites it into a new file (its layout interleaves the first axis), swapped in by
        ``commit``.
        """
        if self.meta is None:
            self.path.mkdir(parents=True, exist_ok=True)
            meta = ArrayMeta(rows.dtype, rows.shape, order)
            write_at(self.data_file, 0, byte_view(rows, order), truncate=True)
            if meta.nbytes == 0:
                # mmap_ninja 0.9.0 opens every data file with np.memmap, which cannot map an
                # empty file: keep one byte past the (empty) array, as numpy itself does.
                write_at(self.data_file, 0, b"\0")
            return meta
        at = self.rows if at is None else at
        meta = self.meta.with_rows(at + rows.shape[0])
        if self.meta.order == "F" and len(self.meta.shape) > 1 and at > 0:
            old = self.map("r")[:at]
            combined = np.concatenate([old, rows], axis=0)
            self._replacement = self.path / (_meta.DATA + ".new")
            write_at(self._replacement, 0, byte_view(combined, "F"), truncate=True)
            return meta
        write_at(self.data_file, at * self.meta.row_bytes, byte_view(rows, self.meta.order))
        return meta

    def allocate(self, meta: ArrayMeta) -> ArrayMeta:
        """Create a new, zero-filled data file for ``meta``, committed by ``commit``."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_at(self.data_file, 0, b"", truncate=True)
        os.truncate(self.data_file, max(meta.nbytes, 1))
        return meta

    def reserve(self, rows: int) -> None:
        """Grow the data file to hold ``rows`` entries, so that later writes fill it in place."""
        _ensure_size(self.data_file, rows * self.meta.row_bytes)

    def release(self) -> None:
        """Drop reserved bytes past the committed entries."""
        size = max(self.meta.nbytes, 1)
        if _file_size(self.data_file) > size:
            os.truncate(self.data_file, size)

    def commit(self, meta: ArrayMeta) -> None:
        """Make written entries visible: swap in a rewritten data file, then write the
        metadata, ``shape.ninja`` last."""
        if self._replacement is not None:
            os.replace(self._replacement, self.data_file)
            self._replacement = None
        if self.meta is None:
            meta.write(self.path)
        else:
            _meta.write_shape(self.path / _meta.SHAPE, meta.shape)
        self.meta = meta
