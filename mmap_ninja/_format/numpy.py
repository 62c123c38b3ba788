"""Fixed-shape maps on disk: one array directory (``data.ninja`` and its metadata), appended to
along the first axis; how one is opened, created, appended to (rows, or another map's rows
copied file to file) and verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from .. import _meta
from .._storage import ArrayDir, Commit
from ..base import PathLike, as_dir, map_type, native, stored_dtype
from .verify import Found


def open_dir(out_dir: PathLike, types: Tuple[str, ...] = ("numpy",)) -> ArrayDir:
    """The array directory at ``out_dir``, checked to hold a map of one of ``types``."""
    out_dir = as_dir(out_dir)
    type_name = map_type(out_dir, must_exist=True)
    if type_name is None:  # type.ninja comes last: a map whose creation was cut short has none
        raise ValueError(f"{out_dir} is not a mmap_ninja map: it has no {_meta.TYPE}")
    if type_name not in types:
        raise ValueError(f"{out_dir} holds a {type_name!r} map, expected a numpy map")
    return ArrayDir.open(out_dir)


def create(out_dir: Path, arr: np.ndarray, order: str = "C") -> ArrayDir:
    """Write ``arr`` as a new map in the new folder ``out_dir``."""
    arr = native(arr)
    stored_dtype(arr.dtype)
    array, commit = ArrayDir(out_dir), Commit()
    array.commit_rows(array.write_rows(arr, commit, order=order), commit)
    commit.finish()
    return array


def append_rows(array: ArrayDir, rows: np.ndarray) -> None:
    """Append ``rows`` to ``array`` in one commit."""
    commit = Commit()
    array.commit_rows(array.write_rows(rows, commit), commit)
    commit.finish()


def append_map(array: ArrayDir, part: ArrayDir, commit: Commit, count: Optional[int] = None,
               batch_size: int = 65536) -> None:
    """Add to ``commit`` the first ``count`` rows (default: all) of the numpy map ``part``
    after the rows of ``array`` (a new array takes ``part``'s dtype and sample shape, in C
    order), and make them visible: the bytes are copied file to file (``ArrayDir.copy_rows``;
    the checksums that ``part``'s commits recorded are kept when they cover exactly those
    bytes), with no work per row in Python. A part in Fortran order with more than one axis
    longer than 1, whose rows are not contiguous, is written ``batch_size`` rows at a time. ``ValueError``
    when ``part``'s dtype or sample shape is not ``array``'s."""
    shape = part.meta.shape
    if not shape:
        raise ValueError(f"{part.path} holds a 0-d array, which has no rows to append")
    count = part.rows if count is None else count
    if count > part.rows:
        raise ValueError(f"{part.path} holds {part.rows} rows, not {count}")
    if array.meta is not None and (array.meta.dtype != part.meta.dtype or array.meta.shape[1:] != shape[1:]):
        raise ValueError(f"{part.path} holds samples of {part.meta.dtype} and shape {shape[1:]}, {array.path} "
                         f"samples of {array.meta.dtype} and shape {array.meta.shape[1:]}")
    if part.meta.order == "F" and sum(axis > 1 for axis in shape) > 1:  # else its bytes are in C order too
        source = part.map("r")
        for begin in range(0, count, batch_size):
            rows = np.ascontiguousarray(source[begin:min(count, begin + batch_size)])
            array.commit_rows(array.write_rows(rows, commit), commit)
        return
    nbytes = count * part.meta.row_bytes
    meta = array.copy_rows(part.data_file, [(0, nbytes)], count, part.meta, commit, part.recorded_crcs(0, nbytes))
    array.commit_rows(meta, commit)


def truncate_dir(out_dir: Path, n: int, commit: Commit) -> None:
    """Add to ``commit`` what makes the numpy map at ``out_dir`` hold its first ``n`` rows (at
    most as many as it holds): its ``shape.ninja``. No byte of data is written."""
    array = open_dir(out_dir)
    if array.rows <= n:
        return
    if array.meta.order == "F" and sum(axis > 1 for axis in array.meta.shape[1:]) >= 1:
        raise ValueError(f"{out_dir}: a Fortran-ordered array of rows of more than one value cannot be cut short "
                         f"in place")
    array.commit_rows(array.meta.with_rows(n), commit)


def verify_dir(out_dir: Path, limit: int, deep: bool) -> Found:
    array = open_dir(out_dir)
    array.map("r")
    problems, notes = array.verify_checksums(deep)
    return problems, notes, 0


class Concatenation:
    """The numpy map being written at ``build`` by ``concatenate``: it takes the dtype and sample
    shape of the first map added; ``finish`` refuses a map with no rows, whose dtype and shape
    are unknown. ``dtype`` is not used."""

    def __init__(self, build: Path, out_dir: Path, dtype: Any = None):
        self.out_dir = out_dir
        self.array = ArrayDir(build)

    def add(self, part: ArrayDir, commit: Commit, count: int, batch_size: int) -> None:
        append_map(self.array, part, commit, count, batch_size)

    def finish(self, commit: Commit) -> None:
        if self.array.meta is None:
            raise ValueError(f"the maps hold no samples, so {self.out_dir} cannot be created: a numpy map "
                             f"takes its dtype and sample shape from the first sample")
