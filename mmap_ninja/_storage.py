"""Files of a map: fixed-shape array directories, commits, durability and the writer lock.

An array directory holds ``data.ninja`` (the raw bytes) beside ``dtype.ninja``, ``shape.ninja``
and ``order.ninja``. A numpy map is one such directory; a ragged map is one (its flattened data)
holding others (``starts``, ``ends``, ``flattened_shapes``, ``shapes``); a strings map holds two
(``starts`` and ``ends``).

Every change is a ``Commit``. Its new bytes go into data files first, past everything committed,
where no reader looks. ``Commit.finish`` then replaces small metadata files atomically, in the
order they were given: the last is the ``shape.ninja`` that sets the map's length, so a reader
(or a process killed at any moment) sees the map before or after the commit, never between.
Bytes past a committed length (from an interrupted commit, or the single padding byte of an
empty array) are ignored by readers and written over by the next commit.

With durability on (the default; see ``durability``), data files are flushed to disk before the
first metadata file is replaced, and every replacement is flushed, with its directory, before the
next: a commit that was visible survives a power loss.

One writer at a time: writes take an exclusive lock on ``writer.lock`` in the map directory (a
file that mmap_ninja 0.9.0 ignores); readers take none.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

from . import _meta
from ._meta import ArrayMeta

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

# os.pwrite writes at most this many bytes per call on Linux.
_WRITE_CHUNK = 1 << 30
LOCK_FILE = "writer.lock"
PENDING = _meta.PENDING
# How often ArrayDir.open reads a directory that a writer keeps changing before giving up.
_OPEN_ATTEMPTS = 100

_durable = True


@contextlib.contextmanager
def durability(durable: bool) -> Iterator[None]:
    """Within this block, commits are (``True``) or are not (``False``) flushed to disk before
    they become visible. Without flushing, a commit is still atomic for processes that die, but
    may be lost, with the commits after it, if the machine loses power."""
    global _durable
    previous, _durable = _durable, bool(durable)
    try:
        yield
    finally:
        _durable = previous


def set_durability(durable: bool) -> None:
    """Turn flushing of commits to disk on (the default) or off for the whole process."""
    global _durable
    _durable = bool(durable)


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class Commit:
    """The writes of one change to a map, made visible together by ``finish``."""

    def __init__(self):
        self.durable = _durable
        self._written: List[Path] = []
        self._steps: List[Tuple[str, Path, Union[bytes, Path, None]]] = []

    def write(self, path: Path, offset: int, data: Union[bytes, memoryview], truncate: bool = False) -> None:
        """Write new bytes into a data file now, where no reader looks yet."""
        write_at(path, offset, data, truncate)
        if path not in self._written:
            self._written.append(path)

    def replace(self, path: Path, data: bytes) -> None:
        """At ``finish``, replace the metadata file ``path`` with ``data``, atomically."""
        self._steps.append(("replace", path, data))

    def rename(self, source: Path, target: Path) -> None:
        """At ``finish``, rename ``source`` over ``target``."""
        self._steps.append(("rename", source, target))

    def remove(self, path: Path) -> None:
        """At ``finish``, remove ``path``."""
        self._steps.append(("remove", path, None))

    def finish(self) -> None:
        """Flush the data files (when durable), then take the metadata steps in order, each
        flushed with its directory before the next."""
        if self.durable:
            for path in self._written:
                _fsync_path(path)
        for action, path, argument in self._steps:
            if action == "replace":
                _meta.write_bytes(path, argument, durable=self.durable)
            elif action == "rename":
                os.replace(path, argument)
            else:
                path.unlink(missing_ok=True)
            if self.durable and action != "replace":
                _fsync_path(path.parent, directory=True)
        self._written.clear()
        self._steps.clear()


class WriterLock:
    """Exclusive lock of a map directory for one writer (``with WriterLock(out_dir): ...``),
    which fails at once with ``BlockingIOError`` when another process or object holds it."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def __enter__(self) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BlockingIOError(
                    errno.EWOULDBLOCK,
                    f"{self.path.parent} is being written by another writer (it holds {LOCK_FILE}); "
                    f"a map takes one writer at a time", str(self.path)) from None
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"missing data file: {path}") from None


def empty_memmap(path: Path, dtype: np.dtype, shape, order: str, mode: str) -> np.memmap:
    """A ``np.memmap`` instance for an array with no bytes (which ``mmap`` cannot map),
    remembering its file so that ``numpy.extend`` works on it."""
    arr = np.ndarray.__new__(np.memmap, shape=shape, dtype=dtype, order=order)
    arr.filename = os.path.abspath(path)
    arr.offset = 0
    arr.mode = mode
    return arr


class ChangedWhileOpening(ValueError):
    """A data file was replaced between reading its metadata and mapping it."""


def _inode(path: Path) -> Optional[Tuple[int, int]]:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def map_file(path: Path, meta: ArrayMeta, mode: str = "r", inode: Optional[Tuple[int, int]] = None) -> np.memmap:
    """Map the first ``meta.nbytes`` bytes of ``path`` as an array; ``ValueError`` naming the
    file when it is shorter than that, ``ChangedWhileOpening`` when it is no longer the file
    ``inode`` (read with ``meta``) names."""
    if meta.nbytes == 0:
        _file_size(path)
        return empty_memmap(path, meta.dtype, meta.shape, meta.order, mode)
    try:
        f = open(path, "r+b" if mode in ("r+", "readwrite") else "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"missing data file: {path}") from None
    with f:
        status = os.fstat(f.fileno())
        if inode is not None and (status.st_dev, status.st_ino) != inode:
            raise ChangedWhileOpening(f"{path} was replaced while it was being opened; open it again")
        if status.st_size < meta.nbytes:
            raise ValueError(f"{path}: holds {status.st_size} bytes, but its shape {meta.shape} of "
                             f"{meta.dtype} needs {meta.nbytes}")
        return np.memmap(f, dtype=meta.dtype, mode=mode, shape=meta.shape, order=meta.order)


def map_bytes(path: Path) -> Union[mmap.mmap, bytes]:
    """Map all of ``path`` read-only (``b""`` for an empty file)."""
    size = _file_size(path)
    if size == 0:
        return b""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _pending(path: Path) -> List[Tuple[str, str]]:
    """The renames of an unfinished whole-file commit in the array directory ``path``."""
    pending = path / PENDING
    if not pending.exists():
        return []
    pairs = [line.split(" ", 1) for line in _meta.read_text(pending).splitlines() if line]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"{pending}: expected lines 'source target', found {pairs!r}")
    return [(source, target) for source, target in pairs]


class ArrayDir:
    """A fixed-shape array in a directory, with its committed metadata (``None`` while
    nothing is committed)."""

    def __init__(self, path: Path, meta: Optional[ArrayMeta] = None):
        self.path = path
        self.meta = meta
        self.data_file = path / _meta.DATA
        self.inode: Optional[Tuple[int, int]] = None  # of the data file that ``meta`` describes
        self._rewritten = False  # write_rows staged a whole new data file

    @classmethod
    def open(cls, path: Path) -> "ArrayDir":
        """Read the committed state of ``path``. A whole-file commit that was under way is
        read as done: its new files stand in for the ones they replace. The metadata and the
        data file are read again until they are seen to belong together (a writer may swap
        them meanwhile); ``map`` then checks that it maps that very data file."""
        if not path.is_dir():
            raise FileNotFoundError(f"missing array directory: {path}")
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                pending = _pending(path)
                renamed = {target: path / source for source, target in pending if (path / source).exists()}
                data_file = renamed.get(_meta.DATA, path / _meta.DATA)
                inode = _inode(data_file)
                meta = ArrayMeta.read(path, shape_file=renamed.get(_meta.SHAPE))
                if _pending(path) == pending and _inode(data_file) == inode:
                    array = cls(path, meta)
                    array.data_file, array.inode = data_file, inode
                    return array
            except FileNotFoundError:
                if attempt == _OPEN_ATTEMPTS - 1 or not (path / PENDING).exists() and attempt > 0:
                    raise
        raise ChangedWhileOpening(f"{path} kept changing while it was being opened")

    def finish_pending(self) -> None:
        """Complete a whole-file commit that a writer left unfinished (before writing)."""
        pairs = _pending(self.path)
        for source, target in pairs:
            if (self.path / source).exists():
                os.replace(self.path / source, self.path / target)
        (self.path / PENDING).unlink(missing_ok=True)
        for leftover in (_meta.DATA + ".new", _meta.SHAPE + ".new"):
            (self.path / leftover).unlink(missing_ok=True)
        self.data_file = self.path / _meta.DATA

    def map(self, mode: str = "r") -> np.memmap:
        return map_file(self.data_file, self.meta, mode, self.inode)

    @property
    def rows(self) -> int:
        return self.meta.shape[0] if self.meta is not None else 0

    def write_rows(self, rows: np.ndarray, commit: Commit, at: Optional[int] = None, order: str = "C") -> ArrayMeta:
        """Write ``rows`` (an array whose first axis runs over entries) after the first ``at``
        committed entries (default: all of them), and return the metadata that ``commit_rows``
        makes visible.

        A new array takes its dtype and trailing shape from ``rows`` and the given ``order``.
        Appending to a Fortran-ordered array of more than one axis rewrites it into a new file
        (its layout interleaves the first axis), swapped in by ``commit_rows``.
        """
        if self.meta is None:
            self.path.mkdir(parents=True, exist_ok=True)
            meta = ArrayMeta(rows.dtype, rows.shape, order)
            commit.write(self.data_file, 0, byte_view(rows, order), truncate=True)
            if meta.nbytes == 0:
                # mmap_ninja 0.9.0 opens every data file with np.memmap, which cannot map an
                # empty file: keep one byte past the (empty) array, as numpy itself does.
                commit.write(self.data_file, 0, b"\0")
            return meta
        at = self.rows if at is None else at
        meta = self.meta.with_rows(at + rows.shape[0])
        if self.meta.order == "F" and len(self.meta.shape) > 1 and at > 0:
            combined = np.concatenate([self.map("r")[:at], rows], axis=0)
            commit.write(self.path / (_meta.DATA + ".new"), 0, byte_view(combined, "F"), truncate=True)
            self._rewritten = True
            return meta
        commit.write(self.data_file, at * self.meta.row_bytes, byte_view(rows, self.meta.order))
        return meta

    def allocate(self, meta: ArrayMeta, commit: Commit) -> ArrayMeta:
        """Create a new, zero-filled data file for ``meta``, committed by ``commit_rows``."""
        self.path.mkdir(parents=True, exist_ok=True)
        commit.write(self.data_file, 0, b"", truncate=True)
        os.truncate(self.data_file, max(meta.nbytes, 1))
        return meta

    def reserve(self, rows: int) -> None:
        """Grow the data file to hold ``rows`` entries, so that later writes fill it in place."""
        size = rows * self.meta.row_bytes
        if _file_size(self.data_file) < size:
            os.truncate(self.data_file, size)

    def release(self) -> None:
        """Drop reserved bytes past the committed entries."""
        size = max(self.meta.nbytes, 1)
        if _file_size(self.data_file) > size:
            os.truncate(self.data_file, size)

    def commit_rows(self, meta: ArrayMeta, commit: Commit, type_name: Optional[str] = "numpy") -> None:
        """Add to ``commit`` the metadata steps that make ``meta`` the array's committed state:
        ``shape.ninja``, after a new array's dtype and order and before its ``type.ninja``
        (``type_name``, or none when the caller writes it)."""
        new = self.meta is None
        if new:
            commit.replace(self.path / _meta.DTYPE, _meta.dtype_name(meta.dtype).encode())
            commit.replace(self.path / _meta.ORDER, meta.order.encode())
        if self._rewritten:
            # two files change together: list their renames in PENDING first, so that readers
            # (and the next writer) take the new files as soon as that list exists
            self._rewritten = False
            shape_new = self.path / (_meta.SHAPE + ".new")
            commit.replace(shape_new, _meta.shape_bytes(meta.shape))
            renames = f"{_meta.DATA}.new {_meta.DATA}\n{_meta.SHAPE}.new {_meta.SHAPE}\n"
            commit.replace(self.path / PENDING, renames.encode())
            commit.rename(self.path / (_meta.DATA + ".new"), self.data_file)
            commit.rename(shape_new, self.path / _meta.SHAPE)
            commit.remove(self.path / PENDING)
            self.inode = None  # a new data file
        else:
            commit.replace(self.path / _meta.SHAPE, _meta.shape_bytes(meta.shape))
        if new and type_name is not None:
            commit.replace(self.path / _meta.TYPE, type_name.encode())
        self.meta = meta
