"""Megatron's indexed datasets (``PREFIX.bin`` and ``PREFIX.idx``), in and out (numpy only;
megatron-core is not needed to read or write them).

    from mmap_ninja import megatron
    megatron.export(tokens, "corpus_text_document")        # a RaggedMmap of 1-d token sequences
    tokens = megatron.to_ragged("corpus_text_document", "tokens")

``PREFIX.bin`` holds the sequences' values back to back; ``PREFIX.idx`` is a header (the magic
bytes ``MMIDIDX\\0\\0``, version 1 as ``<Q``, a dtype code as ``<B``, the sequence and document
counts as ``<Q``), then the sequences' lengths (``int32``), their byte offsets in ``.bin``
(``int64``) and the document boundaries (``int64``, one document per sequence here).

When the sequences of ``PREFIX.bin`` lie back to back from its first byte to its last, as
Megatron's ``IndexedDatasetBuilder`` and ``export`` write them, that file already is the data
file of a ragged map: ``to_ragged`` then makes it the map's ``data.ninja`` without copying it (a
copy-on-write clone where the file system makes one, else a hard link), and writes only the
map's offsets and lengths, at a cost in the size of the index. A map never writes into a file
that another path shares: its first write gives it a copy of its own (see ``to_ragged``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from ._format.ragged import SampleBatch
from ._meta import ArrayMeta
from ._storage import ArrayDir, Commit, metadata_bytes
from ._storage import clone_file as _clone
from .base import PathLike, as_dir, check_positive, progress
from .ragged import RaggedMmap

__all__ = ["export", "to_ragged", "convert", "Conversion", "read_index"]

HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
# Sequences checked at a time for lying back to back, to bound memory.
_CHECK_CHUNK = 1 << 22


def _prefix_paths(prefix: PathLike) -> Tuple[Path, Path]:
    prefix = os.fspath(prefix)
    return Path(prefix + ".bin"), Path(prefix + ".idx")


def export(ragged: RaggedMmap, prefix: PathLike, chunk: int = 65536, verbose: bool = False) -> None:
    """Write the 1-d samples of ``ragged`` as Megatron's ``PREFIX.bin``/``PREFIX.idx`` (one
    document per sample), which megatron-core's ``IndexedDataset(prefix)`` reads back as the
    same sequences. The files are written beside their final names and renamed into place."""
    dtype = np.dtype(np.int32 if ragged.dtype is None else ragged.dtype)
    if dtype not in DTYPE_CODES:
        raise TypeError(f"Megatron's indexed datasets hold {sorted(str(d) for d in DTYPE_CODES)}, not {dtype}")
    if not ragged.shapes_are_flat:
        raise ValueError(f"{ragged.out_dir}: Megatron's indexed datasets hold 1-d sequences")
    lengths = (ragged.ends - ragged.starts).astype(np.int64) if len(ragged) else np.zeros(0, np.int64)
    if len(ragged) and (np.asarray(ragged.shapes).reshape(-1) != lengths).any():
        raise ValueError(f"{ragged.out_dir}: Megatron's indexed datasets hold 1-d sequences, not scalars")
    if (lengths > np.iinfo(np.int32).max).any():
        raise ValueError("Megatron stores sequence lengths as int32: a sample is too long")
    bin_path, idx_path = _prefix_paths(prefix)
    bin_tmp, idx_tmp = bin_path.with_name(bin_path.name + ".tmp"), idx_path.with_name(idx_path.name + ".tmp")
    try:
        bar = progress(len(ragged), verbose, "Exporting")
        try:
            with open(bin_tmp, "wb") as out:
                for start in range(0, len(ragged), chunk):
                    stop = min(start + chunk, len(ragged))
                    out.write(memoryview(ragged.take(slice(start, stop)).values).cast("B"))
                    bar.update(stop - start)
        finally:
            bar.close()
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
        with open(idx_tmp, "wb") as out:
            out.write(HEADER + struct.pack("<Q", 1) + struct.pack("<B", DTYPE_CODES[dtype]))
            out.write(struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(lengths) + 1))
            out.write(lengths.astype(np.int32).tobytes())
            out.write(pointers.tobytes())
            out.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())
        os.replace(bin_tmp, bin_path)
        os.replace(idx_tmp, idx_path)
    finally:
        for tmp in (bin_tmp, idx_tmp):
            tmp.unlink(missing_ok=True)


def read_index(prefix: PathLike) -> Tuple[np.dtype, np.ndarray, np.ndarray]:
    """``(dtype, lengths int32, pointers int64)`` of ``PREFIX.idx``, checked against the size of
    ``PREFIX.bin``: a damaged index raises ``ValueError`` naming the file."""
    bin_path, idx_path = _prefix_paths(prefix)
    raw = idx_path.read_bytes()
    fixed = len(HEADER) + 8 + 1 + 8 + 8
    if len(raw) < fixed or raw[:len(HEADER)] != HEADER:
        raise ValueError(f"{idx_path}: not a Megatron index (no MMIDIDX header)")
    version, = struct.unpack_from("<Q", raw, len(HEADER))
    code, = struct.unpack_from("<B", raw, len(HEADER) + 8)
    count, documents = struct.unpack_from("<QQ", raw, len(HEADER) + 9)
    if version != 1 or code not in DTYPES:
        raise ValueError(f"{idx_path}: version {version} and dtype code {code} are not known")
    if len(raw) < fixed + count * 12 + documents * 8:
        raise ValueError(f"{idx_path}: {count} sequences and {documents} documents do not fit its {len(raw)} bytes")
    dtype = DTYPES[code]
    lengths = np.frombuffer(raw, np.int32, count, fixed)
    pointers = np.frombuffer(raw, np.int64, count, fixed + count * 4)
    size = bin_path.stat().st_size
    outside = ValueError(f"{idx_path}: a sequence lies outside {bin_path} ({size} bytes)")
    if count and ((lengths < 0).any() or (pointers < 0).any() or (pointers % dtype.itemsize).any()):
        raise outside
    largest = np.iinfo(np.int64).max
    total = 0
    for start in range(0, count, _CHECK_CHUNK):  # in int64, each chunk's sum is below 2**56
        sizes = lengths[start:start + _CHECK_CHUNK].astype(np.int64) * dtype.itemsize
        over = np.flatnonzero(pointers[start:start + _CHECK_CHUNK] > largest - sizes)
        if over.size:
            i = start + int(over[0])
            raise ValueError(f"{idx_path}: sequence {i} (pointer {int(pointers[i])}, {int(sizes[over[0]])} bytes) "
                             f"ends past byte {largest}: its pointer plus its size overflow int64")
        if (pointers[start:start + _CHECK_CHUNK] + sizes > size).any():
            raise outside
        total += int(sizes.sum())
    if total > largest:
        raise ValueError(f"{idx_path}: its sequences hold {total} bytes in all, which overflows int64")
    return dtype, lengths, pointers


def _bytes_back_to_back(lengths: np.ndarray, pointers: np.ndarray, itemsize: int) -> Optional[int]:
    """The bytes the sequences take when each begins where the one before ends, the first at
    byte 0 (as Megatron's builder writes them); ``None`` when they lie otherwise."""
    end = 0
    for start in range(0, len(lengths), _CHECK_CHUNK):
        sizes = lengths[start:start + _CHECK_CHUNK].astype(np.int64) * itemsize
        expected = np.empty(len(sizes), dtype=np.int64)
        expected[0] = end
        np.cumsum(sizes[:-1], out=expected[1:])
        expected[1:] += end
        if not np.array_equal(expected, pointers[start:start + _CHECK_CHUNK]):
            return None
        end = int(expected[-1] + sizes[-1])
    return end


class _Pair:
    """The sequences of a Megatron pair, given to ``RaggedFiles.append`` in batches
    (``_SequenceBatch``), and how their values get into the map: ``"cloned"`` or ``"linked"``
    (the whole of ``PREFIX.bin`` becomes the map's data file as the first batch is written) or
    ``"copied"``, with the reason."""

    def __init__(self, prefix: PathLike, link: bool, checksum: bool):
        self.bin_path, self.idx_path = _prefix_paths(prefix)
        self.dtype, self.lengths, self.pointers = read_index(prefix)
        self.checksum = checksum
        self.how: Optional[str] = None
        self.reason = ""
        self.used = _bytes_back_to_back(self.lengths, self.pointers, self.dtype.itemsize)
        size = self.bin_path.stat().st_size
        if not link:
            self.how, self.reason = "copied", "a copy was asked for"
        elif self.used is None:
            self.how, self.reason = "copied", f"the sequences of {self.idx_path} do not lie back to back from byte 0"
        elif self.used == 0:
            self.how, self.reason = "copied", f"{self.bin_path} holds no values"
        elif size != self.used:
            # a map's data file ends where its last sample ends (mmap_ninja 0.9.0 appends at the
            # end of the file), and the bytes past it are no map's to write over
            self.how, self.reason = "copied", f"{self.bin_path} holds {size - self.used:,} bytes past its last sequence"

    def batches(self, batch_size: int) -> Iterator["_SequenceBatch"]:
        n = len(self.lengths)
        for start in range(0, n, batch_size):
            yield _SequenceBatch(self, start, min(start + batch_size, n))

    def place(self, target: Path) -> None:
        """Make the whole of ``PREFIX.bin`` the file ``target``, unless ``how`` says copy: a
        clone, else a hard link, else (neither possible) a copy after all."""
        if self.how is not None:
            return
        if _clone(self.bin_path, target):
            self.how = "cloned"
            return
        try:
            os.link(self.bin_path, target)
            self.how = "linked"
        except OSError as exc:  # another file system (EXDEV), no hard links there (EPERM), ...
            self.how, self.reason = "copied", f"{self.bin_path} cannot be linked into the map ({exc.strerror})"


class _SequenceBatch:
    """Sequences ``start`` to ``stop`` of a ``_Pair``, as ``RaggedFiles.append`` takes a batch
    (a ``mmap_ninja._format.ragged.WriteBatch``): 1-d samples whose values are in ``PREFIX.bin``."""

    def __init__(self, pair: _Pair, start: int, stop: int):
        self.pair, self.start, self.stop = pair, start, stop
        self.counts = pair.lengths[start:stop].astype(np.int64)

    @property
    def dtype(self) -> np.dtype:
        return self.pair.dtype

    @property
    def flat(self) -> bool:
        return True

    def flat_lengths(self) -> np.ndarray:
        return self.counts

    def shape_batch(self) -> SampleBatch:
        ones = np.ones(len(self.counts), np.int64)  # one axis each, as long as the sequence
        return SampleBatch(self.counts, ones, None, ones)

    def __len__(self) -> int:
        return self.stop - self.start

    def write_values(self, data: ArrayDir, commit: Commit) -> ArrayMeta:
        """Add the values of these sequences to the map's data ``data`` in ``commit``: linked
        or cloned, nothing is written (the first batch brings the whole file in, each batch
        commits its share of it); else they are copied file to file."""
        pair, elements = self.pair, int(self.counts.sum())
        if data.meta is None:
            pair.place(data.data_file)
        if pair.how == "copied":
            return self._copy(data, commit, elements)
        offset = data.meta.nbytes if data.meta is not None else 0
        meta = ArrayMeta(pair.dtype, (data.rows + elements,), "C")
        length = elements * pair.dtype.itemsize
        checksum = (data.path, metadata_bytes(meta), offset)
        if pair.checksum:  # the bytes are read once, for their CRC-32, and not copied
            commit.adopt(data.data_file, offset, length, checksum, read=True)
        elif self.stop == len(pair.lengths):  # none read: the metadata's CRC-32 comes with the last batch
            commit.adopt(data.data_file, offset, length, checksum, read=False)
        return meta

    def _copy(self, data: ArrayDir, commit: Commit, elements: int) -> ArrayMeta:
        """Copy the values file to file (``ArrayDir.copy_rows``, their CRC-32 recorded), one
        range per run of sequences stored one after the other."""
        itemsize = self.pair.dtype.itemsize
        filled = self.counts > 0
        first = self.pair.pointers[self.start:self.stop][filled]
        last = first + self.counts[filled] * itemsize
        ranges: List[Tuple[int, int]] = []
        if len(first):
            cuts = np.flatnonzero(first[1:] != last[:-1]) + 1
            run_starts = first[np.concatenate(([0], cuts))]
            run_ends = last[np.concatenate((cuts - 1, [len(first) - 1]))]
            ranges = [(int(a), int(b - a)) for a, b in zip(run_starts.tolist(), run_ends.tolist())]
        like = ArrayMeta(self.pair.dtype, (elements,), "C")
        return data.copy_rows(self.pair.bin_path, ranges, elements, like, commit)


class Conversion(NamedTuple):
    """What ``convert`` made of a Megatron pair: the ``map`` (a ``RaggedMmap``), ``how`` the
    values got into it (``"cloned"``, ``"linked"`` or ``"copied"``) and, for a copy, the
    ``reason`` (``""`` otherwise)."""

    map: RaggedMmap
    how: str
    reason: str


def convert(prefix: PathLike, out_dir: PathLike, batch_size: int = 65536, verbose: bool = False, *,
            link: bool = True, checksum: bool = False) -> Conversion:
    """``to_ragged``, telling how the values got into the map and why they were copied, if
    they were."""
    check_positive(batch_size=batch_size)
    pair = _Pair(prefix, link, checksum)  # the index is read and checked before anything is written
    out_dir = as_dir(out_dir)

    def batches() -> Iterator[_SequenceBatch]:
        for batch in pair.batches(batch_size):
            yield batch
            bar.update(len(batch))  # once it is written

    with progress(len(pair.lengths), verbose, desc=f"Converting {pair.bin_path.name}") as bar:
        RaggedMmap.from_batches(out_dir, batches(), pair.dtype, mode="r")
    # a map sharing Megatron's file opens read-only, so that no view writes into it by accident
    m = RaggedMmap(out_dir, mode="r" if pair.how == "linked" else "r+")
    how = pair.how or "copied"
    return Conversion(m, how, pair.reason if how == "copied" else "")


def to_ragged(prefix: PathLike, out_dir: PathLike, batch_size: int = 65536, verbose: bool = False, *,
              link: bool = True, checksum: bool = False) -> RaggedMmap:
    """A ``RaggedMmap`` at ``out_dir`` of the sequences of ``PREFIX.bin``/``PREFIX.idx``, one
    sample per sequence (the index is checked first; a map there is replaced once the new one
    is whole, and on any error nothing is left behind).

    With ``link`` (the default), when the sequences lie back to back from byte 0 to the end of
    ``PREFIX.bin`` (as Megatron's ``IndexedDatasetBuilder`` and ``export`` write them), that
    file becomes the map's ``data.ninja`` without being copied, and the conversion costs time in
    the size of the index only:

    - a copy-on-write clone (``FICLONE``) where the file system makes one (Btrfs, XFS with
      reflink, ...): two independent files sharing blocks until either is written;
    - else a hard link: **one file under two names**, until the map's first write. The map
      never writes into a file that another path shares: its first ``extend``/``append`` (or
      ``m[i] = v``) first copies the file into the map's folder and renames the copy over
      ``data.ninja`` (a cost in the size of ``PREFIX.bin``, once), so ``PREFIX.bin`` and any
      other map linked to it keep their bytes. Until then, rewriting ``PREFIX.bin`` in place
      (Megatron's ``IndexedDatasetBuilder`` opens it with ``"wb"``) changes the map's data:
      ``verify()`` reports a file shortened so, and writes to the map are refused with a
      ``ValueError`` naming it; ``verify(deep=True)`` finds other bytes only with
      ``checksum=True``. Writing a new file over it by renaming (as ``export`` does) leaves
      the map alone. Writes through writable views (``mode="r+"``) would go into the shared
      file, so the returned map is opened read-only (``mode="r"``) then.

    Elsewhere the values are copied file to file, with their CRC-32: with ``link=False``,
    when the sequences lie otherwise (gaps, another order, shared values), when ``PREFIX.bin``
    holds bytes past its last sequence or none at all, or when linking fails (another file
    system: ``EXDEV``, no hard links: ``EPERM``, ...). Such a map is opened in mode ``"r+"``, as
    a ``from_*`` opens what it builds.

    Linked or cloned bytes are not read: no CRC-32 is recorded for them, and ``verify`` notes
    that they carry none, unless ``checksum=True``, which reads the file once, without
    copying it, to record it. Later commits record their own checksums as usual."""
    return convert(prefix, out_dir, batch_size, verbose, link=link, checksum=checksum).map
