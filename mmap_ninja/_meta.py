"""Reading and writing the ``.ninja`` metadata files of a map directory.

Every map is a directory. Its metadata are small files ending in ``.ninja`` with no trailing
newline, as mmap_ninja 0.9.0 writes them. All reads and writes of those files go through this
module: writes replace a file atomically (a temporary file renamed over it), reads check sizes and
encodings and name the offending file in their errors.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

TYPE = "type.ninja"
DTYPE = "dtype.ninja"
SHAPE = "shape.ninja"
ORDER = "order.ninja"
DATA = "data.ninja"
SHAPES_ARE_FLAT = "shapes_are_flat.ninja"
ZSTD_LEVEL = "zstd_level.ninja"
ZSTD_DICT = "zstd_dict.ninja"
# Lists the renames of a commit that replaces a whole data file (see _storage.ArrayDir).
PENDING = "pending.ninja"
# CRC-32 of what each commit wrote (see _storage.verify_checksums); mmap_ninja 0.9.0 ignores it.
CHECKSUMS = "checksums.ninja"
# The parts of a sharded map, in order (see mmap_ninja.sharded).
MANIFEST = "manifest.ninja"
# The schema and length of a table (see mmap_ninja.table).
TABLE = "table.ninja"
# The folder of the keys of a map's samples, and their hash table in it (see mmap_ninja._keys).
KEYS = "keys"
KEY_INDEX = "index.ninja"
# Every file a map directory may hold (beside its component folders).
MAP_FILES = (TYPE, DTYPE, SHAPE, ORDER, DATA, SHAPES_ARE_FLAT, ZSTD_LEVEL, ZSTD_DICT, PENDING, CHECKSUMS, MANIFEST,
             KEY_INDEX, TABLE)

# The largest metadata file this library reads (the zstd dictionary is the only big one).
_MAX_META_BYTES = 1 << 28


def read_bytes(path: Path) -> bytes:
    """Read a whole metadata file; ``FileNotFoundError`` names the missing path."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"missing metadata file: {path}") from None
    if size > _MAX_META_BYTES:
        raise ValueError(f"{path}: metadata file of {size} bytes is too large")
    return path.read_bytes()


def write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old or the new content. When
    ``durable``, the new content and the directory entry are flushed to disk first and last."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_text(path: Path) -> str:
    raw = read_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: expected UTF-8 text, found {raw[:40]!r}") from None




def read_int32(path: Path) -> int:
    raw = read_bytes(path)
    if len(raw) != 4:
        raise ValueError(f"{path}: expected a 4-byte integer, found {len(raw)} bytes")
    return struct.unpack("<i", raw)[0]


def int32_bytes(value: int) -> bytes:
    """The content of a 4-byte integer file such as ``shapes_are_flat.ninja``."""
    return struct.pack("<i", value)


def read_shape(path: Path) -> Tuple[int, ...]:
    raw = read_bytes(path)
    if len(raw) % 8:
        raise ValueError(f"{path}: a shape is a multiple of 8 bytes, found {len(raw)} bytes")
    shape = struct.unpack(f"<{len(raw) // 8}Q", raw)
    if any(axis >= 1 << 62 for axis in shape):
        raise ValueError(f"{path}: implausible shape {shape}")
    return shape


def shape_bytes(shape: Tuple[int, ...]) -> bytes:
    """The content of a ``shape.ninja``: each axis as a little-endian uint64."""
    return struct.pack(f"<{len(shape)}Q", *shape)




def read_type(out_dir: Path) -> Optional[str]:
    """The kind of map stored in ``out_dir`` (``numpy``, ``ragged`` or ``string``), or ``None``
    when there is no ``type.ninja``."""
    path = out_dir / TYPE
    if not path.exists():
        return None
    return read_text(path)




def dtype_name(dtype: np.dtype) -> str:
    """The name stored in ``dtype.ninja`` for ``dtype``; ``TypeError`` for dtypes whose name
    does not describe them (objects, structured or byte-swapped dtypes)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError("arrays of Python objects cannot be memory-mapped; convert them to a "
                        "numeric, bool or fixed-width string dtype first")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(f"structured dtype {dtype} cannot be stored: dtype.ninja holds only "
                        f"the dtype's name")
    if not dtype.isnative:
        raise TypeError(f"byte-swapped dtype {dtype.str} cannot be stored; use "
                        f"arr.astype(arr.dtype.newbyteorder('='))")
    if dtype.itemsize == 0:
        raise TypeError(f"dtype {dtype} has no bytes per element and cannot be stored")
    return dtype.name


# What numpy's dtype.name looks like: int64, float16, bool, str160, datetime64[ns], ...
_DTYPE_NAME = re.compile(r"[a-z]+[0-9]*(\[[0-9]*[a-zA-Z]+\])?")


def dtype_from_name(name: str, path: Path) -> np.dtype:
    """Parse a dtype name as written by numpy's ``dtype.name`` (``int64``, ``str160``, ...)."""
    if not _DTYPE_NAME.fullmatch(name):
        raise ValueError(f"{path}: unknown dtype {name!r}")
    for prefix, code, bits_per_unit in (("str", "U", 32), ("bytes", "S", 8), ("void", "V", 8)):
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest.isdigit() and int(rest) % bits_per_unit == 0:
            name = f"{code}{int(rest) // bits_per_unit}"  # numpy does not parse its own name
    try:
        dtype = np.dtype(name)
    except Exception:  # numpy raises TypeError, or SyntaxError for some malformed names
        raise ValueError(f"{path}: unknown dtype {name!r}") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise ValueError(f"{path}: dtype {name!r} cannot be memory-mapped")
    return dtype


@dataclass(frozen=True)
class ArrayMeta:
    """What ``np.memmap`` needs to open a fixed-shape array: dtype, shape and order."""

    dtype: np.dtype
    shape: Tuple[int, ...]
    order: str = "C"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one entry along the first axis."""
        return int(np.prod(self.shape[1:], dtype=object)) * self.dtype.itemsize

    def with_rows(self, rows: int) -> "ArrayMeta":
        return ArrayMeta(self.dtype, (rows, *self.shape[1:]), self.order)

    @classmethod
    def read(cls, out_dir: Path, shape_file: Optional[Path] = None) -> "ArrayMeta":
        """The metadata in ``out_dir`` (the shape from ``shape_file`` when given)."""
        dtype = dtype_from_name(read_text(out_dir / DTYPE), out_dir / DTYPE)
        shape = read_shape(shape_file or out_dir / SHAPE)
        order = read_text(out_dir / ORDER)
        if order not in ("C", "F"):
            raise ValueError(f"{out_dir / ORDER}: order must be 'C' or 'F', found {order!r}")
        return cls(dtype, shape, order)
