"""Megatron's indexed datasets (``PREFIX.bin`` and ``PREFIX.idx``), in and out (numpy only;
megatron-core is not needed to read or write them).

    from mmap_ninja import megatron
    megatron.export(tokens, "corpus_text_document")        # a RaggedMmap of 1-d token sequences
    tokens = megatron.to_ragged("corpus_text_document", "tokens")

``PREFIX.bin`` holds the sequences' values back to back; ``PREFIX.idx`` is a header (the magic
bytes ``MMIDIDX\\0\\0``, version 1 as ``<Q``, a dtype code as ``<B``, the sequence and document
counts as ``<Q``), then the sequences' lengths (``int32``), their byte offsets in ``.bin``
(``int64``) and the document boundaries (``int64``, one document per sequence here).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Iterator, Tuple

import numpy as np

from .base import PathLike, progress
from .ragged import RaggedMmap

__all__ = ["export", "to_ragged", "read_index"]

HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


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
    if count and ((lengths < 0).any() or (pointers < 0).any() or (pointers % dtype.itemsize).any()
                  or (pointers + lengths.astype(np.int64) * dtype.itemsize > size).any()):
        raise ValueError(f"{idx_path}: a sequence lies outside {bin_path} ({size} bytes)")
    return dtype, lengths, pointers


def _sequences(prefix: PathLike, dtype: np.dtype, lengths: np.ndarray, pointers: np.ndarray) -> Iterator[Any]:
    bin_path, _ = _prefix_paths(prefix)
    if not len(lengths) or not bin_path.stat().st_size:
        yield from (np.zeros(0, dtype) for _ in range(len(lengths)))
        return
    data = np.memmap(bin_path, dtype=np.uint8, mode="r")
    for pointer, length in zip(pointers.tolist(), lengths.tolist()):
        yield data[pointer:pointer + length * dtype.itemsize].view(dtype)


def to_ragged(prefix: PathLike, out_dir: PathLike, batch_size: int = 65536, verbose: bool = False) -> RaggedMmap:
    """A ``RaggedMmap`` at ``out_dir`` of the sequences of ``PREFIX.bin``/``PREFIX.idx`` (their
    values copied; the index is checked first)."""
    dtype, lengths, pointers = read_index(prefix)
    return RaggedMmap.from_generator(out_dir, _sequences(prefix, dtype, lengths, pointers), batch_size=batch_size,
                                     n=len(lengths), verbose=verbose, dtype=dtype)
