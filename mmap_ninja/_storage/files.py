"""The file primitives under the rest of ``mmap_ninja._storage``: the durability switch
(``durability``, ``set_durability``) and flushing to disk (``_fsync_path``), writes at an offset
(``write_at``), copies of byte ranges within the kernel (``copy_ranges``), copy-on-write clones
(``clone_file``), and mappings of whole files (``map_bytes``).

Files are mapped with ``_mapping.Mapping``, which keeps no file descriptor open.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple, Union

from .._mapping import Mapping

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


class _Writeback:
    """Files a build aside has written, flushed to disk by a thread of this process while the
    build goes on (``start``), so that the flush of the whole build before it is swapped in
    (``flush_tree``, after ``wait``) finds little left to write: the disk writes one batch while
    the next is made. The thread exits as soon as nothing is left to flush (a process that
    forks later forks with no thread of this module), and belongs to the process that started
    it: a forked child starts its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid: Optional[int] = None
        self.pending: collections.deque = collections.deque()
        self.queued: set = set()
        self.thread: Optional[threading.Thread] = None

    def forked(self) -> None:
        """In a forked child: nothing of the parent's (its lock may have been held)."""
        self.__init__()

    def start(self, paths: Sequence[Path]) -> None:
        with self.lock:
            if self.pid != os.getpid():  # the thread of the parent is not in this process
                self.__init__()
                self.pid = os.getpid()
            for path in paths:
                if path not in self.queued:  # not flushed yet: the pages written since go with it
                    self.queued.add(path)
                    self.pending.append(path)
            if self.thread is None and self.pending:
                self.thread = threading.Thread(target=self._run, name="mmap_ninja-writeback", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            with self.lock:
                if not self.pending:
                    self.thread = None
                    return
                path = self.pending.popleft()
                self.queued.discard(path)
            with contextlib.suppress(OSError):  # the flush before the swap reports what fails
                _fsync_path(path)

    def wait(self) -> None:
        """Until every flush started by this process is done (and its thread gone)."""
        while True:
            with self.lock:
                thread = self.thread if self.pid == os.getpid() else None
            if thread is None:
                return
            thread.join()


_writeback = _Writeback()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_writeback.forked)


def start_writeback(paths: Sequence[Path]) -> None:
    """Start flushing ``paths`` to disk on a thread of this process (when durability is on):
    files of a build aside, which ``flush_tree`` flushes whole before the build is swapped in."""
    if _durable and paths:
        _writeback.start(list(paths))


def wait_writeback() -> None:
    _writeback.wait()


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


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"missing data file: {path}") from None


def _inode(path: Path) -> Optional[Tuple[int, int]]:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _fd_inode(fd: int) -> Tuple[int, int]:
    status = os.fstat(fd)
    return status.st_dev, status.st_ino


def map_bytes(path: Path, mode: str = "r", random_access: bool = False) -> Mapping:
    """Map all of ``path`` (``mode`` ``"r"``, ``"r+"`` or ``"c"``), holding no file
    descriptor; ``random_access`` as for ``Mapping``."""
    try:
        return Mapping(path, None, mode, random_access)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing data file: {path}") from None
