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

A commit never writes into a file that another path shares (a hard link: another map,
Megatron's ``.bin`` linked by ``megatron.to_ragged``, a link made by hand): before its first
write, such a file is copied beside itself and the copy renamed over it (``make_private``),
which changes none of its bytes; one the commit would empty is unlinked instead. A data file
shorter than the bytes committed before (shortened through another name) is refused, naming
it, before anything is written into it.

With durability on (the default; see ``durability``), data files are flushed to disk before the
first metadata file is replaced, and every replacement is flushed, with its directory, before the
next: a commit that was visible survives a power loss.

One writer at a time: writes take an exclusive lock on ``writer.lock`` in the map directory (a
file that mmap_ninja 0.9.0 ignores); readers take none.

A write that changes what is already committed (a map built anew by ``from_*``, a Fortran-order
array rewritten, shapes converted, samples replaced) builds the new version of the whole map in
a sibling folder, sharing unchanged data files by hard links, and swaps it in with one atomic
exchange of the two folders (``Replacement``). Readers open a map with ``open_consistent``, which
checks that the folder they read is still the map's folder when they are done, so they see the
old or the new version, never a mix.

Files are mapped with ``_mapping.Mapping``, which keeps no file descriptor open. Each commit
records the CRC-32 of the bytes it writes, with a CRC-32 of the array's metadata, in
``checksums.ninja`` beside them (``verify_checksums`` reads it back).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import struct
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from . import _meta
from ._mapping import Mapping, exchange
from ._meta import ArrayMeta

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

# Bytes per os.pwrite call. Small enough that each piece is still in the CPU's cache when the
# kernel copies it, while the CRC-32 of the same buffer is computed on another thread: writing a
# just-decoded 47 MB Arrow buffer in 1 MiB pieces took 0.83 s per 476 MB against 1.18 s in one
# call, side by side; buffers already in memory write as fast either way.
_WRITE_CHUNK = 1 << 20
# Bytes per os.copy_file_range call (the kernel copies them without passing through this
# process, so larger calls only mean fewer of them).
_KERNEL_COPY_CHUNK = 1 << 30
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


# One entry of checksums.ninja: byte offset and length of a range written by a commit, the
# CRC-32 of its bytes, and the CRC-32 of the array's metadata after that commit.
CHECKSUMS = _meta.CHECKSUMS
_ENTRY = struct.Struct("<QQII")


def metadata_bytes(meta: ArrayMeta) -> bytes:
    """What the checksum of an array's metadata covers: dtype name, order and shape."""
    return f"{_meta.dtype_name(meta.dtype)}|{meta.order}|".encode() + _meta.shape_bytes(meta.shape)


def read_checksum_entries(log: Path) -> List[Tuple[int, int, int, int]]:
    raw = _meta.read_bytes(log) if log.exists() else b""
    whole = len(raw) - len(raw) % _ENTRY.size  # a torn last entry (a commit cut short) is no entry
    return list(_ENTRY.iter_unpack(raw[:whole]))


def _append_entry(log: Path, committed_end: int, entry: bytes) -> None:
    """Write ``entry`` into ``log`` after its last entry that lies within the ``committed_end``
    bytes committed (later ones were left by commits cut short), and drop what follows."""
    if log.exists() and shared(log):
        make_private(log, _durable)
    fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        position = size - size % _ENTRY.size
        while position:
            offset, length, _, _ = _ENTRY.unpack(os.pread(fd, _ENTRY.size, position - _ENTRY.size))
            if offset + length <= committed_end:
                break
            position -= _ENTRY.size
        os.pwrite(fd, entry, position)
        if size > position + _ENTRY.size:
            os.ftruncate(fd, position + _ENTRY.size)
    finally:
        os.close(fd)


# Buffers from this size on have their CRC-32 computed on a thread of their own, while the same
# bytes are written (zlib releases the GIL), so that a build pays for the slower of the two.
_THREADED_CRC_BYTES = 1 << 20


class _Crc32:
    """The CRC-32 of ``data`` (or of several buffers back to back); ``value()`` waits for it."""

    def __init__(self, *data: Union[bytes, memoryview]):
        self._data = data
        self._value: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        if sum(memoryview(buffer).nbytes for buffer in data) >= _THREADED_CRC_BYTES:
            self._thread = threading.Thread(target=self._run, name="mmap_ninja-crc32", daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        value = 0
        for buffer in self._data:
            value = zlib.crc32(buffer, value)
        self._value = value

    def value(self) -> int:
        if self._thread is not None:
            self._thread.join()
        return self._value


class Commit:
    """The writes of one change to a map, made visible together by ``finish``; flushed to disk
    unless ``durable=False`` (for a map being built aside, flushed whole by ``flush_tree``
    before it is swapped in) or durability is off."""

    # Off only to measure what checksums cost (benchmarks/bench_scale.py).
    record_checksums = True

    def __init__(self, durable: Optional[bool] = None):
        self.durable = _durable if durable is None else durable
        self._written: List[Path] = []
        self._claimed: set = set()
        self._steps: List[Tuple[str, Path, Union[bytes, Path, None]]] = []

    def _claim(self, path: Path, offset: int, truncate: bool) -> None:
        """Before this commit first writes into ``path``, from byte ``offset`` (or emptying it,
        with ``truncate``): a file that another path shares (see ``shared``) is never written. One
        to be emptied is unlinked first; one written past its start becomes a private copy
        (``make_private``). ``ValueError`` naming it when it holds fewer than the ``offset`` bytes
        committed before (shortened through another name), and nothing is written."""
        if path in self._claimed:
            return
        try:
            status = os.stat(path)
        except FileNotFoundError:
            if offset and not truncate:
                raise FileNotFoundError(f"missing data file: {path}") from None
        else:
            if truncate:
                if status.st_nlink > 1:
                    os.unlink(path)
            else:
                check_holds(path, offset, status.st_size)
                if shared(path):
                    make_private(path, self.durable)
        self._claimed.add(path)

    def write(self, path: Path, offset: int, data: Union[bytes, memoryview], truncate: bool = False,
              checksum: Optional[Tuple[Path, bytes, int]] = None) -> None:
        """Write new bytes into a data file now, where no reader looks yet. With ``checksum =
        (directory, metadata, committed_end)``, also append to ``directory/checksums.ninja`` the
        CRC-32 of ``data`` and of ``metadata`` (the array's metadata as this commit leaves it),
        dropping entries past the ``committed_end`` bytes committed before. The log is not
        flushed to disk: after a power loss its last entries may be missing, which ``verify``
        notes as bytes without checksum, never as damage."""
        self._claim(path, offset, truncate)
        crc = _Crc32(data) if checksum is not None and self.record_checksums else None
        write_at(path, offset, data, truncate)
        if path not in self._written:
            self._written.append(path)
        if crc is not None:
            directory, metadata, committed_end = checksum
            entry = _ENTRY.pack(offset, memoryview(data).nbytes, crc.value(), zlib.crc32(metadata))
            _append_entry(directory / CHECKSUMS, committed_end, entry)

    def write_from(self, path: Path, offset: int, source: Any, truncate: bool = False,
                   checksum: Optional[Tuple[Path, bytes, int]] = None) -> None:
        """Like ``write``, with bytes that ``source`` writes itself: ``source.write_to(fd,
        offset, crc)`` writes its ``source.nbytes`` bytes into the open file from byte
        ``offset`` and returns their CRC-32 when ``crc`` is true (``_build.PackedSamples``,
        which writes samples straight from their buffers)."""
        record = checksum is not None and self.record_checksums
        self._claim(path, offset, truncate)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0), 0o644)
        try:
            crc = source.write_to(fd, offset, record)
        finally:
            os.close(fd)
        if path not in self._written:
            self._written.append(path)
        if record:
            directory, metadata, committed_end = checksum
            entry = _ENTRY.pack(offset, source.nbytes, crc, zlib.crc32(metadata))
            _append_entry(directory / CHECKSUMS, committed_end, entry)

    def copy(self, path: Path, offset: int, source: Path, ranges: Sequence[Tuple[int, int]], truncate: bool = False,
             checksum: Optional[Tuple[Path, bytes, int]] = None,
             crcs: Optional[Sequence[Tuple[int, int]]] = None) -> None:
        """Like ``write``, with bytes that are already in a file: the byte ranges ``(start,
        length)`` of ``source``, back to back, copied by the kernel (``copy_ranges``) without
        passing through Python. Their checksum is recorded as ``write`` records it: taken from
        ``crcs``, ``(length, CRC-32)`` pieces that tile the copied bytes (as the commits that
        wrote them into ``source`` recorded them; one entry each), else computed from
        ``source`` while it is copied."""
        total = sum(length for _, length in ranges)
        self._claim(path, offset, truncate)
        pieces: Optional[List[Tuple[int, Any]]] = None
        if checksum is not None and self.record_checksums:
            if crcs is not None:
                pieces = list(crcs)
                if sum(length for length, _ in pieces) != total:
                    raise ValueError(f"{source}: the checksums given cover other bytes than the ones copied")
            else:
                pieces = [(total, _crc_of_ranges(source, ranges))]
        copy_ranges(source, ranges, path, offset, truncate)
        if path not in self._written:
            self._written.append(path)
        if pieces is not None:
            directory, metadata, committed_end = checksum
            metadata_crc = zlib.crc32(metadata)
            at = offset
            for k, (length, crc) in enumerate(pieces):
                value = crc.value() if isinstance(crc, _Crc32) else crc
                _append_entry(directory / CHECKSUMS, committed_end if k == 0 else at,
                              _ENTRY.pack(at, length, value, metadata_crc))
                at += length

    def adopt(self, path: Path, offset: int, length: int, checksum: Tuple[Path, bytes, int], read: bool) -> None:
        """Take the ``length`` bytes of ``path`` from byte ``offset``, which are there already
        (a data file hard-linked or cloned from another file), as written by this commit. With
        ``read``, their CRC-32 is computed from the file and recorded as ``write`` records it.
        Without, nothing of them is read: only the CRC-32 of ``metadata`` is recorded, in an
        entry of no bytes where they end, and ``verify_checksums`` notes the bytes before the
        first entry as carrying no checksum (``checksum`` as in ``write``)."""
        if path not in self._written:
            self._written.append(path)
        if not self.record_checksums:
            return
        directory, metadata, committed_end = checksum
        if read:
            entry = _ENTRY.pack(offset, length, _crc_of_ranges(path, [(offset, length)]).value(), zlib.crc32(metadata))
        else:
            entry = _ENTRY.pack(offset + length, 0, 0, zlib.crc32(metadata))
        _append_entry(directory / CHECKSUMS, committed_end, entry)

    def replace(self, path: Path, data: bytes) -> None:
        """At ``finish``, replace the metadata file ``path`` with ``data``, atomically."""
        self._steps.append(("replace", path, data))

    def finish(self) -> None:
        """Flush the data files (when durable), then take the metadata steps in order, each
        flushed with its directory before the next."""
        if self.durable:
            for path in self._written:
                _fsync_path(path)
        for _, path, data in self._steps:
            _meta.write_bytes(path, data, durable=self.durable)
        self._written.clear()
        self._steps.clear()


def flush_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk (when durability is on): a map built aside
    by commits that were not flushed one by one, before ``Replacement`` swaps it in (which
    flushes its folders)."""
    if not _durable:
        return
    for root, _, names in os.walk(folder):
        for name in names:
            _fsync_path(Path(root) / name)


def _crc_of_ranges(source: Path, ranges: Sequence[Tuple[int, int]]) -> "_Crc32":
    """The CRC-32 of the byte ranges of ``source`` back to back, computed from a mapping of it
    (on a thread of its own for large ranges)."""
    if not any(length for _, length in ranges):
        return _Crc32()
    mapping = map_bytes(source)
    end = max(start + length for start, length in ranges)
    if len(mapping) < end:
        raise ValueError(f"{source}: holds {len(mapping)} bytes, but its metadata describes {end}")
    view = memoryview(mapping)
    return _Crc32(*(view[start:start + length] for start, length in ranges if length))


# Bytes moved per read and write where the kernel cannot copy between two files itself.
_COPY_CHUNK = 1 << 24
# What copy_file_range fails with where it cannot copy between two files (other file systems,
# kernels or platforms without it): the bytes are then read and written.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}


def copy_ranges(source: Path, ranges: Sequence[Tuple[int, int]], target: Path, offset: int,
                truncate: bool = False) -> None:
    """Copy the byte ranges ``(start, length)`` of ``source``, back to back, into ``target``
    from byte ``offset`` (creating it; emptied first when ``truncate``): within the kernel
    where it can (``os.copy_file_range``, which may share blocks on file systems that can),
    else by reads and writes of ``_COPY_CHUNK`` bytes. ``ValueError`` naming ``source`` when it
    is shorter than a range."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0), 0o644)
        try:
            kernel = hasattr(os, "copy_file_range")
            position = offset
            for start, length in ranges:
                done = 0
                while done < length:
                    step = min(length - done, _KERNEL_COPY_CHUNK)
                    copied = None
                    if kernel:
                        try:
                            copied = os.copy_file_range(src, dst, step, start + done, position + done)
                        except OSError as exc:
                            if exc.errno not in _NO_KERNEL_COPY:
                                raise
                            kernel = False
                    if copied is None:
                        chunk = os.pread(src, min(step, _COPY_CHUNK), start + done)
                        copied = len(chunk)
                        written = 0
                        while written < copied:
                            written += os.pwrite(dst, memoryview(chunk)[written:], position + done + written)
                    if copied == 0:
                        raise ValueError(f"{source}: holds {start + done} bytes, but its metadata describes "
                                         f"{start + length}")
                    done += copied
                position += length
        finally:
            os.close(dst)
    finally:
        os.close(src)


# ioctl(dst, FICLONE, src) on Linux: dst becomes a copy-on-write clone of src (Btrfs, XFS, ...).
FICLONE = 0x40049409


def clone_file(source: Path, target: Path) -> bool:
    """Make ``target`` (a new file) a copy-on-write clone of ``source`` (``FICLONE``: Linux, on
    Btrfs, XFS and other file systems that share blocks); ``False``, leaving no ``target``,
    where it cannot be."""
    if fcntl is None or not hasattr(fcntl, "ioctl") or not sys.platform.startswith("linux"):
        return False
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.ioctl(dst, FICLONE, src)
            return True
        except OSError:
            os.unlink(target)
            return False
        finally:
            os.close(dst)
    finally:
        os.close(src)


# A folder in which a new version of the map NAME is built (see ``Replacement``).
_BUILD_FOLDER = re.compile(r"\.(.+)\.[0-9a-f]{12}\.building")


def _live_twin(path: Path) -> Optional[Path]:
    """The same file of the map itself when ``path`` lies in a folder where a new version of
    it is built (``link_map`` fills it with hard links to the map's files)."""
    parts = path.parts
    for k in range(len(parts) - 2, -1, -1):
        match = _BUILD_FOLDER.fullmatch(parts[k])
        if match:
            return Path(*parts[:k], match.group(1), *parts[k + 1:])
    return None


def shared(path: Path) -> bool:
    """Whether a path other than the map's own names the file ``path``: a hard link from
    another map, from Megatron's ``.bin`` (``megatron.to_ragged``) or made by hand. A new
    version being built shares the map's files by its own links, which do not count."""
    status = os.stat(path)
    if status.st_nlink <= 1:
        return False
    twin = _live_twin(path)
    own = 2 if twin is not None and _inode(twin) == (status.st_dev, status.st_ino) else 1
    return status.st_nlink > own


def make_private(path: Path, durable: bool) -> None:
    """Give ``path`` a file of its own with the same bytes: a copy (a copy-on-write clone
    where the file system makes one) written beside it as ``NAME.tmp``, flushed when
    ``durable``, then renamed over it. The file's other names keep the old file, untouched; a
    process killed meanwhile leaves ``path`` naming the old file or its whole copy."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # left by a copy cut short
    try:
        if not clone_file(path, tmp):
            copy_ranges(path, [(0, _file_size(path))], tmp, 0, truncate=True)
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_path(path.parent, directory=True)


def check_holds(path: Path, committed: int, size: Optional[int] = None) -> None:
    """``ValueError`` naming the data file ``path`` when it holds fewer than the ``committed``
    bytes of the map (``size``: its size, when known)."""
    size = _file_size(path) if size is None else size
    if size < committed:
        raise ValueError(f"{path}: holds {size} bytes, but the map has committed {committed}: the file was "
                         f"shortened, through another of its names (a hard link, such as the Megatron .bin that "
                         f"megatron.to_ragged links) or otherwise. Nothing was written; verify() reports the damage. "
                         f"Rebuild the map, with a data file of its own: megatron.to_ragged(prefix, out_dir, "
                         f"link=False) copies the .bin")


class WriterLock:
    """Exclusive lock of a map directory for one writer (``with WriterLock(out_dir): ...``),
    which fails at once with ``BlockingIOError`` when another process or object holds it.

    The lock is ``writer.lock`` in the map's folder. A ``Replacement`` swaps the folder for a
    new one whose ``writer.lock`` it has locked already, and hands that lock over to this one.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def __enter__(self) -> "WriterLock":
        missing = not self.out_dir.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise BlockingIOError(
                        errno.EWOULDBLOCK,
                        f"{self.path.parent} is being written by another writer (it holds {LOCK_FILE}); "
                        f"a map takes one writer at a time", str(self.path)) from None
            # the folder may have been swapped for a new version since the file was opened
            if _inode(self.path) == _fd_inode(fd):
                self._fd = fd
                if missing:  # a writer may have died between the renames of a swap
                    recover_abandoned_builds(self.out_dir)
                return self
            os.close(fd)

    def take_over(self, other: "WriterLock") -> None:
        """Hold ``other``'s lock in place of this one (after ``other``'s folder became this
        one's)."""
        self.__exit__()
        self._fd, other._fd = other._fd, None

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
    arr._mmap = None
    arr.flags.writeable = mode != "r"
    return arr


class ChangedWhileOpening(ValueError):
    """The map was replaced by another process while it was being opened: open it again."""


def _inode(path: Path) -> Optional[Tuple[int, int]]:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _fd_inode(fd: int) -> Tuple[int, int]:
    status = os.fstat(fd)
    return status.st_dev, status.st_ino


# The mapping modes of np.memmap, by their long names too.
_MAPPING_MODES = {"r": "r", "readonly": "r", "r+": "r+", "readwrite": "r+", "c": "c", "copyonwrite": "c"}


def map_file(path: Path, meta: ArrayMeta, mode: str = "r", inode: Optional[Tuple[int, int]] = None) -> np.memmap:
    """Map the first ``meta.nbytes`` bytes of ``path`` as a ``np.memmap`` (holding no file
    descriptor); ``ValueError`` naming the file when it is shorter than that,
    ``ChangedWhileOpening`` when it is no longer the file ``inode`` (read with ``meta``)
    names."""
    mapping_mode = _MAPPING_MODES[mode]
    if meta.nbytes == 0:
        _file_size(path)
        return empty_memmap(path, meta.dtype, meta.shape, meta.order, mapping_mode)
    try:
        mapping = Mapping(path, None, mapping_mode)
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


def map_bytes(path: Path, mode: str = "r") -> Mapping:
    """Map all of ``path`` (``mode`` ``"r"``, ``"r+"`` or ``"c"``), holding no file
    descriptor."""
    try:
        return Mapping(path, None, mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing data file: {path}") from None


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


# The component folders each kind of map holds; everything else in a map's folder that is not
# one of its files (``_meta.MAP_FILES``, with their temporary ``.tmp``/``.new`` versions, and
# ``writer.lock``) is the user's, and moves along when the folder is replaced.
_COMPONENTS = {"ragged": ("starts", "ends", "shapes", "flattened_shapes"), "string": ("starts", "ends"),
               "sharded": ("parts", "versions", "keysets")}


# The folder, within the build folder of a map, where worker processes write the parts that are
# concatenated into it (see ragged.RaggedMmap.from_indexable); never part of a finished map.
BUILD_PARTS = ".parts.building"


def _own_entries(folder: Path) -> frozenset:
    """The names of the entries of ``folder`` that belong to the map in it."""
    files = set(_meta.MAP_FILES) | {LOCK_FILE, BUILD_PARTS, _meta.KEYS}
    files |= {name + suffix for name in _meta.MAP_FILES for suffix in (".tmp", ".new")}
    try:
        kind = _meta.read_type(folder)
    except (OSError, ValueError):
        kind = None
    # a folder whose map is not written yet may hold the components of any kind
    components = _COMPONENTS.get(kind, ()) if kind is not None else _COMPONENTS["ragged"]
    return frozenset(files | set(components))


def _user_entries(folder: Path) -> List[str]:
    own = _own_entries(folder)
    return [entry.name for entry in os.scandir(folder) if entry.name not in own]


def link_map(source: Path, target: Path) -> None:
    """Lay out at ``target`` the map at ``source``, sharing its files by hard links: nothing
    is copied but the checksum logs (appended in place). Commits only add bytes past what is
    committed, and replace metadata files by renaming, so the two versions never see each
    other's changes (these links are the map's own: see ``shared``)."""
    target.mkdir(exist_ok=True)
    own = _own_entries(source)
    for entry in os.scandir(source):
        name = entry.name
        if name not in own or name in (LOCK_FILE, PENDING, BUILD_PARTS) or name.endswith((".tmp", ".new")):
            continue
        if entry.is_dir(follow_symlinks=False):
            link_map(Path(entry.path), target / name)
        elif name == CHECKSUMS:
            shutil.copy2(entry.path, target / name)
        else:
            os.link(entry.path, target / name)


class Replacement:
    """A new version of the map at ``out_dir`` built in a sibling folder, swapped in whole.

    ``with Replacement(lock) as build: ...`` writes the new version into ``build`` (a new
    folder beside ``out_dir``, locked for writing); when the block ends without an error, the
    two folders are exchanged in one atomic step, the user's own files move from the old
    version into the new one, and the old version is removed. On any error ``build`` is
    removed and ``out_dir`` stays as it was. ``lock`` is the writer lock of ``out_dir``, which
    ends up holding the lock of the new folder. Folders left by writers that died are dealt
    with first (``recover_abandoned_builds``).
    """

    def __init__(self, lock: WriterLock):
        self.lock = lock
        self.out_dir = Path(os.path.realpath(lock.out_dir))  # a link to a map's folder stays a link
        self.build = self.out_dir.parent / f".{self.out_dir.name}.{uuid.uuid4().hex[:12]}.building"
        self._build_lock = WriterLock(self.build)

    def __enter__(self) -> Path:
        recover_abandoned_builds(self.out_dir)
        self.build.mkdir()
        with contextlib.suppress(OSError):  # the new version keeps the folder's permissions
            os.chmod(self.build, stat.S_IMODE(self.out_dir.stat().st_mode))
        self._build_lock.__enter__()
        return self.build

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._build_lock.__exit__()
            shutil.rmtree(self.build, ignore_errors=True)
            return
        try:
            if _durable:
                for folder, _, _ in os.walk(self.build):
                    _fsync_path(Path(folder), directory=True)
            _swap(self.build, self.out_dir)
        except BaseException:
            self._build_lock.__exit__()
            shutil.rmtree(self.build, ignore_errors=True)
            raise
        self.lock.take_over(self._build_lock)
        _adopt_user_entries(self.build, self.out_dir)  # the old version is at the build path now
        if _durable:
            _fsync_path(self.out_dir.parent, directory=True)


def _adopt_user_entries(old: Path, out_dir: Path) -> None:
    """Move the user's entries of the old version ``old`` into the map's folder ``out_dir``
    and remove ``old``; if one cannot be moved, ``old`` stays, renamed to end in
    ``.kept``, and a warning says where."""
    try:
        for name in _user_entries(old):
            if not os.path.lexists(out_dir / name):
                os.rename(old / name, out_dir / name)
    except OSError as exc:
        kept = old.with_name(old.name.replace(".building", ".kept"))
        os.rename(old, kept)
        import warnings

        warnings.warn(f"the map at {out_dir} was replaced, but files of yours could not be moved into it "
                      f"({exc}); they are in {kept}", stacklevel=3)
        return
    shutil.rmtree(old, ignore_errors=True)


def _swap(build: Path, out_dir: Path) -> None:
    """Put ``build`` at ``out_dir`` and the old ``out_dir`` at ``build``."""
    try:
        exchange(build, out_dir)
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.ENOTSUP):
            raise
        # no atomic exchange on this file system: three renames, between which readers wait
        # (see open_consistent) and after which a dead writer's work is finished by the next
        old = build.with_name(build.name + ".old")
        os.rename(out_dir, old)
        os.rename(build, out_dir)
        os.rename(old, build)


def _builds_of(out_dir: Path) -> List[Path]:
    """The build folders of ``out_dir`` (``.NAME.<12 hex>.building`` and the ``.old`` of a
    swap without atomic exchange)."""
    own = re.compile(re.escape(f".{out_dir.name}.") + r"[0-9a-f]{12}\.building(\.old)?")
    try:
        return [Path(entry.path) for entry in os.scandir(out_dir.parent) if own.fullmatch(entry.name)]
    except FileNotFoundError:
        return []


def recover_abandoned_builds(out_dir: Path) -> None:
    """Deal with the build folders of ``out_dir`` left by writers that died, under
    ``out_dir``'s writer lock (which every builder of ``out_dir`` holds, so none is alive): an
    old version from a swap without atomic exchange goes back in place if the map is missing;
    the user's files of an old version move into the map (they moved only after a swap); then
    the folders are removed."""
    for folder in _builds_of(out_dir):
        if folder.name.endswith(".old") and not (out_dir / _meta.TYPE).exists() \
                and (folder / _meta.TYPE).exists():
            # the map's folder was renamed away and the new version not yet put in its place:
            # the old version is the committed one, and comes back
            for entry in os.scandir(folder):
                if entry.name != LOCK_FILE:
                    os.rename(entry.path, out_dir / entry.name)
        _adopt_user_entries(folder, out_dir)


def recorded_crcs(directory: Path, committed_end: int, start: int, end: int) -> Optional[List[Tuple[int, int]]]:
    """The ``(length, CRC-32)`` recorded in ``directory/checksums.ninja`` for the bytes
    ``[start, end)`` of its data file (of which ``committed_end`` bytes are committed), when
    entries tile that range exactly, one after the other; else ``None``."""
    log = directory / CHECKSUMS
    if start >= end or not log.exists():
        return None
    pieces: List[Tuple[int, int]] = []
    at = start
    for offset, length, crc, _ in read_checksum_entries(log):
        if offset + length <= committed_end and offset == at and length and at < end:  # past: a commit cut short
            pieces.append((length, crc))
            at += length
    return pieces if at == end else None


def verify_checksums(directory: Path, data_file: Path, committed_end: int, metadata: Optional[bytes],
                     deep: bool) -> Tuple[List[str], List[str]]:
    """Problems and notes from ``directory/checksums.ninja``: whether ``metadata`` (when
    given) is what the last commit recorded, and with ``deep`` whether every recorded range of
    ``data_file`` within its ``committed_end`` bytes still has its checksum."""
    log = directory / CHECKSUMS
    if not log.exists():
        return [], [f"{directory}: no checksums recorded (written by mmap_ninja 0.9.0, or by hand): "
                    f"damage to its bytes or metadata cannot be detected"]
    recorded = read_checksum_entries(log)
    entries = [entry for entry in recorded if entry[0] + entry[1] <= committed_end]
    problems: List[str] = []
    notes: List[str] = []
    # a commit cut short leaves entries that start where the committed bytes end; one that
    # straddles that end means the metadata shrank the array
    straddling = [offset + length for offset, length, _, _ in recorded if offset < committed_end < offset + length]
    if straddling:
        return [f"{directory}: its metadata describes {committed_end} bytes of {data_file.name}, but a commit "
                f"wrote it up to byte {max(straddling)}: shape.ninja or dtype.ninja edited or damaged"], notes
    covered = max((offset + length for offset, length, _, _ in entries), default=0)
    if covered < committed_end:
        # bytes appended by a writer that records no checksums (mmap_ninja 0.9.0): the metadata
        # changed with them, so it cannot be checked either
        notes.append(f"{data_file}: bytes [{covered}, {committed_end}) carry no checksum (appended by a "
                     f"version that records none)")
    elif metadata is not None:
        expected = zlib.crc32(metadata)
        if not any(offset + length == committed_end and meta == expected for offset, length, _, meta in entries):
            problems.append(f"{directory}: its metadata (dtype.ninja, shape.ninja, order.ninja) is not what the "
                            f"last commit recorded in {CHECKSUMS}: edited or damaged")
    if entries and entries[0][0] > 0:
        notes.append(f"{data_file}: bytes [0, {entries[0][0]}) carry no checksum: they were written before "
                     f"checksums were recorded (by mmap_ninja 0.9.0), or taken over from another file without "
                     f"being read (mmap_ninja.megatron.to_ragged links or clones Megatron's .bin so, unless "
                     f"checksum=True)")
    if deep and any(length for _, length, _, _ in entries):
        mapping = map_bytes(data_file)
        view = memoryview(mapping)
        for offset, length, crc, _ in entries:
            if offset + length > len(view):
                problems.append(f"{data_file}: bytes [{offset}, {offset + length}) are missing (the file holds "
                                f"{len(view)} bytes)")
            elif length and zlib.crc32(view[offset:offset + length]) != crc:
                problems.append(f"{data_file}: bytes [{offset}, {offset + length}) do not match their checksum: "
                                f"damaged")
        view.release()
    return problems, notes


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

    def map(self, mode: str = "r") -> np.memmap:
        return map_file(self.data_file, self.meta, mode, self.inode)

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
