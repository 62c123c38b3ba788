"""Fixed-shape array directories, and the mapping of their files.

An array directory holds ``data.ninja`` (the raw bytes) beside ``dtype.ninja``, ``shape.ninja``
and ``order.ninja``. A numpy map is one such directory; a ragged map is one (its flattened data)
holding others (``starts``, ``ends``, ``flattened_shapes``, ``shapes``); a strings map holds two
(``starts`` and ``ends``).

Data files are mapped as ``np.memmap`` instances (``map_file``) through ``_mapping.Mapping``,
which keeps no file descriptor open. Readers open a map with ``open_consistent``, which checks
that the folder they read is still the map's folder when they are done (a ``locking.Replacement``
may swap it meanwhile), so they see the old or the new version, never a mix.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from .. import _meta
from .._mapping import Mapping
from .._meta import ArrayMeta
from .commit import Commit, metadata_bytes, recorded_crcs, verify_checksums
from .files import _fd_inode, _file_size, _inode
from .locking import PENDING, _builds_of

# How often ArrayDir.open reads a directory that a writer keeps changing before giving up.
_OPEN_ATTEMPTS = 100


def byte_view(arr: np.ndarray, order: str = "C") -> memoryview:
    """The bytes of ``arr`` laid out in ``order``, as a flat memoryview (a copy only when
    ``arr`` is not contiguous in that order)."""
    flat = np.ravel(arr, order=order)
    return memoryview(flat.view(np.uint8))


def empty_memmap(path: Path, dtype: np.dtype, shape, order: str, mode: str) -> np.memmap:
    """A ``np.memmap`` instance for an array with no bytes (which ``mmap`` cannot map),
    remembering its file so that ``numpy.extend`` works on it."""
    arr = np.ndarray.__new__(np.memmap, shape=shape, dtype=dtype, order=order)
    arr.filename = os.path.abspath(path)
    arr.offset = 0
    arr.mode = mode
    arr._mmap = None
    arr.flags.writeable = mode != "r"
    return arr


class ChangedWhileOpening(ValueError):
    """The map was replaced by another process while it was being opened: open it again."""


# The mapping modes of np.memmap, by their long names too.
_MAPPING_MODES = {"r": "r", "readonly": "r", "r+": "r+", "readwrite": "r+", "c": "c", "copyonwrite": "c"}


def map_file(path: Path, meta: ArrayMeta, mode: str = "r", inode: Optional[Tuple[int, int]] = None,
             random_access: bool = False) -> np.memmap:
    """Map the first ``meta.nbytes`` bytes of ``path`` as a ``np.memmap`` (holding no file
    descriptor); ``ValueError`` naming the file when it is shorter than that,
    ``ChangedWhileOpening`` when it is no longer the file ``inode`` (read with ``meta``)
    names. ``random_access``: as for ``Mapping``."""
    mapping_mode = _MAPPING_MODES[mode]
    if meta.nbytes == 0:
        _file_size(path)
        return empty_memmap(path, meta.dtype, meta.shape, meta.order, mapping_mode)
    try:
        mapping = Mapping(path, None, mapping_mode, random_access)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing data file: {path}") from None
    if inode is not None and mapping.inode != inode:
        raise ChangedWhileOpening(f"{path} was replaced while it was being opened; open it again")
    if len(mapping) < meta.nbytes:
        raise ValueError(f"{path}: holds {len(mapping)} bytes, but its shape {meta.shape} of "
                         f"{meta.dtype} needs {meta.nbytes}")
    arr = np.ndarray.__new__(np.memmap, meta.shape, dtype=meta.dtype, buffer=mapping, order=meta.order)
    arr._mmap, arr.filename, arr.offset, arr.mode = mapping, os.path.abspath(path), 0, mapping_mode
    return arr


T = TypeVar("T")


def open_consistent(out_dir: Path, opener: Callable[[], T]) -> T:
    """``opener()``, which reads the map at ``out_dir``, done again if the folder was swapped
    for a new version meanwhile, so that everything it read belongs to one version.

    While the folder is open here its inode cannot be reused, so finding the same inode at
    ``out_dir`` before and after means no swap happened in between. A data file replaced
    meanwhile (``make_private``) makes ``opener`` raise ``ChangedWhileOpening``: it reads
    again too. ``ChangedWhileOpening`` when the map keeps being replaced."""
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            fd = os.open(out_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            if not any(build.name.endswith(".old") for build in _builds_of(out_dir)):
                return opener()  # no folder: the opener says what that means
            time.sleep(0.0005 * attempt)  # between the renames of a swap without atomic exchange
            continue
        try:
            before = _fd_inode(fd)
            try:
                result = opener()
            except (OSError, ValueError) as exc:
                if _inode(out_dir) == before and not isinstance(exc, ChangedWhileOpening):
                    raise  # read from one version: the error is real
            else:
                if _inode(out_dir) == before:
                    return result
        finally:
            os.close(fd)
        time.sleep(0.0005 * attempt)
    raise ChangedWhileOpening(f"{out_dir} is being replaced by another writer and kept changing while it "
                              f"was being opened; open it again")


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

    def map(self, mode: str = "r", random_access: bool = False) -> np.memmap:
        return map_file(self.data_file, self.meta, mode, self.inode, random_access)

    @property
    def rows(self) -> int:
        return self.meta.shape[0] if self.meta is not None else 0

    def write_rows(self, rows: np.ndarray, commit: Commit, at: Optional[int] = None, order: str = "C") -> ArrayMeta:
        """Write ``rows`` (an array whose first axis runs over entries) after the first ``at``
        committed entries (default: all of them), record their checksum, and return the
        metadata that ``commit_rows`` makes visible.

        A new array takes its dtype and trailing shape from ``rows`` and the given ``order``.
        A Fortran-ordered array of more than one axis interleaves its first axis, so it cannot
        take rows in place: it is built anew (see ``numpy.extend_dir``).
        """
        if self.meta is None:
            self.path.mkdir(parents=True, exist_ok=True)
            meta = ArrayMeta(rows.dtype, rows.shape, order)
            commit.write(self.data_file, 0, byte_view(rows, order), truncate=True,
                         checksum=(self.path, metadata_bytes(meta), 0))
            if meta.nbytes == 0:
                # mmap_ninja 0.9.0 opens every data file with np.memmap, which cannot map an
                # empty file: keep one byte past the (empty) array, as numpy itself does.
                commit.write(self.data_file, 0, b"\0")
            return meta
        at = self.rows if at is None else at
        if self.meta.order == "F" and len(self.meta.shape) > 1 and at > 0:
            raise ValueError(f"{self.path}: a Fortran-ordered array cannot take rows in place")
        meta = self.meta.with_rows(at + rows.shape[0])
        offset = at * self.meta.row_bytes
        commit.write(self.data_file, offset, byte_view(rows, self.meta.order),
                     checksum=(self.path, metadata_bytes(meta), offset))
        return meta

    def write_packed(self, source: Any, commit: Commit) -> ArrayMeta:
        """``write_rows`` for the values of a batch of samples (``_build.PackedSamples``: a 1-d
        array of ``source.size`` elements of ``source.dtype``, which ``Commit.write_from``
        writes straight from the samples' buffers), after all committed entries or as a new
        array."""
        if source.nbytes == 0:
            return self.write_rows(np.empty(0, dtype=source.dtype), commit)
        if self.meta is None:
            self.path.mkdir(parents=True, exist_ok=True)
            meta, offset, truncate = ArrayMeta(source.dtype, (source.size,), "C"), 0, True
        else:
            if self.meta.dtype != source.dtype or self.meta.row_bytes != self.meta.dtype.itemsize:
                raise ValueError(f"{self.path} holds entries of {self.meta.dtype} and shape {self.meta.shape[1:]}, "
                                 f"not single values of {source.dtype}")
            if self.meta.order == "F" and len(self.meta.shape) > 1 and self.rows > 0:
                raise ValueError(f"{self.path}: a Fortran-ordered array cannot take rows in place")
            meta, offset, truncate = self.meta.with_rows(self.rows + source.size), self.meta.nbytes, False
        commit.write_from(self.data_file, offset, source, truncate, checksum=(self.path, metadata_bytes(meta), offset))
        return meta

    def copy_rows(self, source: Path, ranges: Sequence[Tuple[int, int]], rows: int, like: ArrayMeta, commit: Commit,
                  crcs: Optional[Sequence[Tuple[int, int]]] = None) -> ArrayMeta:
        """``write_rows`` for ``rows`` entries whose bytes (C order) are the byte ranges
        ``(start, length)`` of the file ``source``, back to back, with the dtype and trailing
        shape of ``like``: appended after all committed entries (or as a new array) by
        ``Commit.copy``, without passing through Python (``crcs`` as there)."""
        trailing = tuple(like.shape[1:])
        if rows == 0:
            return self.write_rows(np.empty((0, *trailing), dtype=like.dtype), commit)
        if self.meta is None:
            self.path.mkdir(parents=True, exist_ok=True)
            meta, offset, truncate = ArrayMeta(like.dtype, (rows, *trailing), "C"), 0, True
        else:
            if self.meta.dtype != like.dtype or tuple(self.meta.shape[1:]) != trailing:
                raise ValueError(f"{self.path} holds entries of {self.meta.dtype} and shape {self.meta.shape[1:]}; "
                                 f"{source} holds entries of {like.dtype} and shape {trailing}")
            if self.meta.order == "F" and len(self.meta.shape) > 1 and self.rows > 0:
                raise ValueError(f"{self.path}: a Fortran-ordered array cannot take rows in place")
            meta, offset, truncate = self.meta.with_rows(self.rows + rows), self.rows * self.meta.row_bytes, False
        if sum(length for _, length in ranges) != rows * meta.row_bytes:
            raise ValueError(f"{source}: the byte ranges copied do not hold {rows} entries of {meta.row_bytes} bytes")
        commit.copy(self.data_file, offset, source, ranges, truncate,
                    checksum=(self.path, metadata_bytes(meta), offset), crcs=crcs)
        if meta.nbytes == 0:
            commit.write(self.data_file, 0, b"\0")  # as write_rows keeps it, for mmap_ninja 0.9.0
        return meta

    def allocate(self, meta: ArrayMeta, commit: Commit) -> ArrayMeta:
        """Create a new, zero-filled data file for ``meta``, committed by ``commit_rows``.
        No checksum is recorded: the array is handed out to be filled in place."""
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
        commit.replace(self.path / _meta.SHAPE, _meta.shape_bytes(meta.shape))
        if new and type_name is not None:
            commit.replace(self.path / _meta.TYPE, type_name.encode())
        self.meta = meta

    def recorded_crcs(self, start: int, end: int) -> Optional[List[Tuple[int, int]]]:
        """The ``(length, CRC-32)`` that the commits of this array recorded for its data bytes
        ``[start, end)``, when their entries tile that range exactly; else ``None`` (no
        checksums recorded, or ranges that straddle it)."""
        if self.meta is None or end > self.meta.nbytes:
            return None
        return recorded_crcs(self.path, self.meta.nbytes, start, end)

    def verify_checksums(self, deep: bool) -> Tuple[List[str], List[str]]:
        """Problems and notes of this array's checksums (see ``verify_checksums``)."""
        return verify_checksums(self.path, self.data_file, self.meta.nbytes, metadata_bytes(self.meta), deep)
