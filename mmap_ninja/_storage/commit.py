"""Commits, durability and checksums: how a change to a map becomes visible, all at once.

Every change is a ``Commit``. Its new bytes go into data files first, past everything committed,
where no reader looks. ``Commit.finish`` then replaces small metadata files atomically, in the
order they were given: the last is the ``shape.ninja`` that sets the map's length, so a reader
(or a process killed at any moment) sees the map before or after the commit, never between.
Bytes past a committed length (from an interrupted commit, or the single padding byte of an
empty array) are ignored by readers and written over by the next commit.

A commit never writes into a file that another path shares (a hard link: another map,
Megatron's ``.bin`` linked by ``megatron.to_ragged``, a link made by hand): before its first
write, such a file is copied beside itself and the copy renamed over it (``make_private``, in
``locking``), which changes none of its bytes; one the commit would empty is unlinked instead.
A data file shorter than the bytes committed before (shortened through another name) is
refused, naming it, before anything is written into it.

With durability on (the default; see ``files.durability``), data files are flushed to disk
before the first metadata file is replaced, and every replacement is flushed, with its
directory, before the next: a commit that was visible survives a power loss.

Each commit records the CRC-32 of the bytes it writes, with a CRC-32 of the array's metadata, in
``checksums.ninja`` beside them (``verify_checksums`` reads it back).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from .. import _meta
from .._meta import ArrayMeta
from . import files
from .files import _fsync_path, copy_ranges, map_bytes, write_at
from .locking import check_holds, make_private, shared

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
        make_private(log, files._durable)
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
        self.durable = files._durable if durable is None else durable
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
        else:  # a build aside, flushed whole before it is swapped in: its data start going now
            files.start_writeback(self._written)
        for _, path, data in self._steps:
            _meta.write_bytes(path, data, durable=self.durable)
        self._written.clear()
        self._steps.clear()


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
