"""Fixed-shape maps: an array of same-shaped samples in one ``np.memmap``, growable along its
first axis.

A map is a directory with ``data.ninja`` (the raw bytes, in C or Fortran order) and
``dtype.ninja``, ``shape.ninja``, ``order.ninja``, ``type.ninja`` (``numpy``). Functions that
open a map return a ``np.memmap``, so everything numpy does works on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core, _keys, _meta
from ._format.build import building
from ._format.kinds import register
from ._format.numpy import append_rows, create, open_dir, verify_dir
from ._format.verify import VERIFY_LIMIT, Report, verify_map
from ._lifecycle import _appended_keys, _listed_keys
from ._meta import ArrayMeta
from ._storage import ArrayDir, Commit, Replacement, WriterLock, check_holds, link_map, open_consistent
from .base import (
    PathLike,
    Wrapped,
    as_dir,
    cast_values,
    check_options,
    in_batches,
    known_length,
    map_type,
    progress,
    stored_dtype,
)
from .base import from_generator_base as from_generator_base  # kept: mmap_ninja 0.9.0 had it here too

_OPEN_MODES = ("r", "r+", "c", "readonly", "readwrite", "copyonwrite")


def _empty(out_dir: PathLike, dtype: Any, shape: Sequence[int], order: str) -> np.memmap:
    """Create a zero-filled map of ``shape`` and ``dtype`` in ``order`` (``"C"`` or ``"F"``)
    and return it as a writable ``np.memmap``, to be filled in place."""
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', got {order!r}")
    out_dir = as_dir(out_dir)
    meta = ArrayMeta(stored_dtype(dtype), tuple(int(axis) for axis in shape), order)
    if any(axis < 0 for axis in meta.shape):
        raise ValueError(f"negative dimensions are not allowed: {meta.shape}")
    with building(out_dir) as build:
        array, commit = ArrayDir(build), Commit()
        array.commit_rows(array.allocate(meta, commit), commit)
        commit.finish()
    return open_existing(out_dir, "r+")


def from_ndarray(out_dir: PathLike, arr: Any, *, keys: Optional[Iterable[str]] = None) -> np.memmap:
    """Store ``arr`` (any array-like) as a map at ``out_dir``, keeping its C or Fortran order,
    and return it as a writable ``np.memmap`` of the same shape and dtype. ``keys``: one
    unique ``str`` per sample (along the first axis), to find samples by (``index_of``)."""
    arr = np.asarray(arr)
    order = "F" if np.isfortran(arr) else "C"
    out_dir = as_dir(out_dir)
    if keys is not None and arr.ndim == 0:
        raise ValueError("a 0-d array has no samples to give keys to")
    with building(out_dir) as build:
        if keys is not None:
            _keys.KeyFeed(build, keys).finish(arr.shape[0])
        create(build, arr, order)
    return open_existing(out_dir, "r+")


def _stack(samples: List[Any], meta: Optional[ArrayMeta], first_index: int) -> np.ndarray:
    """Samples as one array ``(len(samples), *sample_shape)`` of the map's dtype (or of the
    first sample's, for a new map)."""
    arrays = [np.asarray(sample) for sample in samples]
    if meta is None:
        dtype, sample_shape = stored_dtype(arrays[0].dtype), arrays[0].shape
    else:
        dtype, sample_shape = meta.dtype, meta.shape[1:]
    out = np.empty((len(arrays), *sample_shape), dtype=dtype)
    for k, arr in enumerate(arrays):
        if arr.shape != sample_shape:
            raise ValueError(f"sample {first_index + k} has shape {arr.shape}, "
                             f"but the map's samples have shape {sample_shape}")
        out[k] = arr if arr.dtype == dtype else cast_values(arr, dtype, f"sample {first_index + k}")
    return out


def from_generator(
    out_dir: PathLike,
    sample_generator: Iterable[Any],
    batch_size: int,
    n: Optional[int] = None,
    verbose: bool = False,
    *,
    keys: Optional[Iterable[str]] = None,
) -> np.memmap:
    """Build a map from an iterable of same-shaped samples, writing every ``batch_size``
    samples to disk, and return it as a writable ``np.memmap`` of shape
    ``(number of samples, *sample_shape)``.

    ``n``, the expected number of samples, sizes the progress bar (``verbose=True``) and the
    file, which is reserved up front and trimmed at the end if fewer samples came. (A bool in
    its place is taken as ``verbose``, where mmap_ninja 0.9.0 had it.) ``keys``: an iterable
    of one unique ``str`` per sample, consumed alongside.
    """
    if isinstance(n, (bool, np.bool_)):
        n, verbose = None, bool(n)
    check_options(verbose)
    out_dir = as_dir(out_dir)
    total = n if n is not None else known_length(sample_generator)
    array: Optional[ArrayDir] = None
    with building(out_dir) as build, progress(total, verbose, desc=f"Writing {out_dir.name}") as bar:
        feed = _keys.KeyFeed(build, keys) if keys is not None else None
        batches = in_batches(sample_generator, batch_size)
        for batch in batches if feed is None else feed.batches(batches):
            if array is None:
                array = create(build, _stack(batch, None, 0))
                if n is not None and n > array.rows:
                    array.reserve(n)
            else:
                append_rows(array, _stack(batch, array.meta, array.rows))
            bar.update(len(batch))
        if array is None:
            raise ValueError(f"sample_generator yielded no samples, so {out_dir} cannot be created: "
                             f"a numpy map takes its dtype and sample shape from the first sample")
        array.release()  # the space reserved for samples that did not come
        if feed is not None:
            feed.finish(array.rows)
    return open_existing(out_dir, "r+")


class NumpyMmap(np.memmap):
    """The ``np.memmap`` that ``open_existing`` gives: everything numpy does works on it, and

    - ``__getitems__(indices)``: the rows at ``indices`` as a new (writable) array, gathered in
      one compiled pass (``take``): a ``torch.utils.data.DataLoader`` over the map fetches its
      batches so, and its default collate makes them tensors without copying them row by row
      or warning about read-only arrays;
    - a map opened read-only pickles as its folder and length, and is mapped again where it is
      unpickled (a ``DataLoader`` worker started by spawn maps the file instead of receiving a
      copy of the data). Slices, views and maps opened otherwise pickle as numpy arrays do."""

    def __array_finalize__(self, obj: Any) -> None:
        super().__array_finalize__(obj)
        self._source: Optional[Tuple[str, int]] = None  # (folder, rows) of a whole map opened read-only

    def __getitems__(self, indices: Sequence[int]) -> np.ndarray:
        return take(self, indices)

    # as np.memmap does for itself: what is not a view of the mapped file is a plain ndarray
    def __array_wrap__(self, arr: np.ndarray, context: Any = None, return_scalar: bool = False) -> Any:
        arr = np.ndarray.__array_wrap__(self, arr, context, return_scalar)
        if self is arr:
            return arr
        return arr[()] if return_scalar else arr.view(np.ndarray)

    def __getitem__(self, index: Any) -> Any:
        found = np.ndarray.__getitem__(self, index)
        if type(found) is NumpyMmap and found._mmap is None:
            return found.view(np.ndarray)
        return found

    def __reduce_ex__(self, protocol: Any):
        if self._source is not None:
            return _reopen_rows, self._source
        return super().__reduce_ex__(protocol)


def _reopen_rows(out_dir: str, rows: int) -> NumpyMmap:
    """The map at ``out_dir`` opened read-only, cut to its first ``rows`` rows (the length it had
    when it was pickled)."""
    arr = open_existing(out_dir)
    if rows > len(arr):
        raise ValueError(f"{out_dir}: holds {len(arr)} rows, fewer than the {rows} of the map pickled")
    if rows == len(arr):
        return arr
    cut = arr[:rows]
    cut._source = (out_dir, rows)
    return cut


def open_existing(out_dir: PathLike, mode: str = "r") -> NumpyMmap:
    """Open the map at ``out_dir`` as a ``np.memmap`` (a ``NumpyMmap``; ``mode``: ``"r"``
    read-only, ``"r+"`` writable in place, ``"c"`` copy-on-write). The flattened data of a
    ragged map opens too."""
    if mode not in _OPEN_MODES:
        raise ValueError(f"mode must be one of {_OPEN_MODES}, got {mode!r}")
    out_dir = as_dir(out_dir)
    mapped = open_consistent(out_dir, lambda: open_dir(out_dir, ("numpy", "ragged")).map(mode))
    arr = mapped.view(NumpyMmap)
    # the file it maps (an empty map maps none, and np.memmap does not pass its file on then)
    arr._mmap, arr.filename, arr.offset, arr.mode = mapped._mmap, mapped.filename, mapped.offset, mapped.mode
    if mode in ("r", "readonly") and arr.ndim:
        arr._source = (str(out_dir), len(arr))
    return arr


def take(arr: np.ndarray, indices: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Rows ``arr[indices]`` gathered into a new array (or into ``out``, a writable
    C-contiguous array of shape ``(len(indices), *arr.shape[1:])`` and ``arr``'s dtype).

    ``arr`` is a ``np.memmap`` of a map, or any array with a first axis; ``indices`` a
    sequence, array, boolean mask or slice, with numpy's semantics. Rows of a C-ordered array
    are copied without the GIL, so several threads can gather at once.
    """
    if not isinstance(arr, np.ndarray) or arr.ndim == 0:
        raise TypeError("take needs an array with at least one axis")
    index = _core.batch_index(indices, arr.shape[0])
    if out is None:
        out = np.empty((len(index), *arr.shape[1:]), dtype=arr.dtype)
    if arr.flags.c_contiguous and not arr.dtype.hasobject and not np.may_share_memory(arr, out):
        return _core.gather_rows(arr, index, out)
    return np.take(arr, index, axis=0, out=out)  # numpy buffers an out that overlaps arr


def prefetch(arr: np.ndarray, indices: Any) -> None:
    """Start reading the rows ``arr[indices]`` of a map (a ``np.memmap``; ``indices`` as
    ``take`` takes them) from disk into the page cache in the background, and return at once:
    a later read of them finds them in memory. Cheap when they are there already; nothing is
    done for an array in Fortran order (its rows are not contiguous). ``IndexError`` for an
    index out of range."""
    if not isinstance(arr, np.ndarray) or arr.ndim == 0:
        raise TypeError("prefetch needs an array with at least one axis")
    index = _core.batch_index(indices, arr.shape[0])
    if arr.flags.c_contiguous and len(index) and arr.nbytes:
        _core.prefetch_rows(arr, index)


def extend_dir(out_dir: PathLike, arr: Any, *, keys: Optional[Iterable[str]] = None) -> None:
    """Append the samples ``arr`` (shape ``(k, *sample_shape)``) to the map at ``out_dir``.

    Values are cast to the map's dtype when that loses nothing but float rounding; otherwise,
    or when the sample shape differs, the map is left unchanged and an error is raised.
    ``keys``: one new ``str`` per sample, needed when the map's samples have keys.
    """
    out_dir = as_dir(out_dir)
    map_type(out_dir, must_exist=True)  # the folder must be there before the lock creates it
    with WriterLock(out_dir) as lock:
        array = open_dir(out_dir)
        arr = np.asarray(arr)
        shape = array.meta.shape
        if not shape:
            raise ValueError(f"{array.path} holds a 0-d array, which has no axis to extend")
        if arr.ndim == 0 or arr.shape[1:] != shape[1:]:
            raise ValueError(f"cannot extend {array.path} (shape {shape}) with an array of shape "
                             f"{arr.shape}: its samples must have shape {shape[1:]}")
        arr = cast_values(arr, array.meta.dtype, f"extending {array.path}")
        keys = _listed_keys(keys, arr.shape[0])
        encoded = _keys.check_extension(out_dir, keys, shape[0])
        array.finish_pending()
        check_holds(array.data_file, array.meta.nbytes)  # before the keys: a refused write writes nothing
        if keys is not None and arr.shape[0]:  # committed first: a map never has samples without keys
            _keys.write_keys(out_dir, keys, shape[0], encoded=encoded)
        if array.meta.order == "F" and len(shape) > 1 and shape[0] > 0:
            # Fortran order interleaves the first axis: the array is written anew, aside
            combined = np.concatenate([array.map("r"), arr], axis=0)
            with Replacement(lock) as build:
                if (out_dir / _meta.KEYS).exists():
                    link_map(out_dir / _meta.KEYS, build / _meta.KEYS)
                create(build, combined, "F")
        else:
            append_rows(array, arr)


def verify(out_dir: PathLike, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
    """Check the map at ``out_dir`` (metadata, data size, and the metadata its last commit
    recorded; with ``deep``, every byte against the checksums of its commits) and return what
    is wrong, one line per problem naming the file (an empty list when the map is sound), at
    most ``limit`` lines, with ``.omitted`` and ``.notes`` as ``mmap_ninja.verify`` gives them."""
    return verify_map(as_dir(out_dir), verify_dir, limit, deep)


def _map_dir(memmap_or_dir: Any, what: str) -> Path:
    """The folder of the map that a ``np.memmap`` opened by this module maps, or the folder
    itself."""
    if isinstance(memmap_or_dir, np.ndarray):
        filename = getattr(memmap_or_dir, "filename", None)
        if filename is None:
            raise TypeError(f"{what} needs a np.memmap opened by mmap_ninja.numpy; use {what}_dir(out_dir, ...) "
                            f"with the map's directory instead" if what == "extend" else
                            f"{what} needs a np.memmap opened by mmap_ninja.numpy, or the map's directory")
        return Path(filename).parent
    return as_dir(memmap_or_dir)


def extend(np_mmap: np.memmap, arr: Any, *, keys: Optional[Iterable[str]] = None) -> None:
    """Append the samples ``arr`` to the map that ``np_mmap`` was opened from (with their
    ``keys`` in a map whose samples have keys).

    ``np_mmap`` keeps its old shape; reopen the map with ``open_existing`` to see the new
    samples.
    """
    extend_dir(_map_dir(np_mmap, "extend"), arr, keys=keys)


def append(np_mmap: np.memmap, sample: Any, key: Optional[str] = None, *,
           keys: Optional[Sequence[str]] = None) -> None:
    """Append one sample (shape ``sample_shape``) to the map that ``np_mmap`` was opened
    from (with its ``key``, or ``keys=[key]``, in a map whose samples have keys)."""
    extend(np_mmap, np.expand_dims(np.asarray(sample), axis=0), keys=_appended_keys(key, keys))


# The keys of the numpy maps looked up lately, by folder, with the identity of the files they
# were read from: reused while those files are the same (a commit replaces them by renaming).
_OPENED_KEYS: Dict[Path, Tuple[tuple, _keys.KeyIndex, int]] = {}
_OPENED_KEYS_KEPT = 16


def _keys_stamp(out_dir: Path) -> Optional[tuple]:
    stamp = []
    for path in (out_dir / _meta.SHAPE, out_dir / _meta.KEYS / "starts" / _meta.SHAPE,
                 out_dir / _meta.KEYS / _meta.KEY_INDEX, out_dir / _meta.PENDING):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            if path.name == _meta.PENDING:
                continue
            return None
        stamp.append((info.st_ino, info.st_dev, info.st_mtime_ns, info.st_size))
    return tuple(stamp)


def _key_index(memmap_or_dir: Any, what: str) -> Tuple[_keys.KeyIndex, int]:
    out_dir = _map_dir(memmap_or_dir, what)
    stamp = _keys_stamp(out_dir)
    cached = _OPENED_KEYS.get(out_dir)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1], cached[2]

    def read() -> Tuple[Optional[_keys.KeyIndex], int]:
        array = open_dir(out_dir)  # the samples first: the keys read after are at least as many
        return _keys.KeyIndex.open(out_dir), array.rows

    index, rows = open_consistent(out_dir, read)
    if index is None:
        raise ValueError(f"{out_dir} has no keys: {_keys.KeyLookups._no_keys_hint}")
    count = min(rows, index.count)
    if stamp is not None and stamp == _keys_stamp(out_dir):  # unchanged while it was read
        if len(_OPENED_KEYS) >= _OPENED_KEYS_KEPT:
            _OPENED_KEYS.pop(next(iter(_OPENED_KEYS)))
        _OPENED_KEYS[out_dir] = (stamp, index, count)
    return index, count


def index_of(memmap_or_dir: Any, key_or_keys: Any) -> Any:
    """The position of the sample whose key is ``key_or_keys`` (an int), or of each of a
    sequence of keys (``int64`` array), in the map at ``memmap_or_dir`` (its folder, or a
    ``np.memmap`` opened from it); ``KeyError`` naming the first key not in the map."""
    index, n = _key_index(memmap_or_dir, "index_of")
    return index.index_of(key_or_keys, n)


def keys(memmap_or_dir: Any) -> List[str]:
    """The key of every sample of the map at ``memmap_or_dir``, in order."""
    index, n = _key_index(memmap_or_dir, "keys")
    return index.keys(n)


@dataclass
class NumpyBytesSlices:
    """Kept from mmap_ninja 0.9.0: arrays flattened end to end in ``buffer``, array ``i`` being
    the ``flattened_shapes[i]`` elements ``buffer[starts[i]:ends[i]]``, of shape ``shapes[i]``."""

    buffer: np.ndarray
    starts: List[int]
    ends: List[int]
    flattened_shapes: List[int]
    shapes: List[Tuple[int, ...]]


def _open_map(out_dir: Path, wrapper_fn: Optional[Callable[[Any], Any]], mode: Optional[str]) -> Any:
    memmap = open_existing(out_dir, "r" if mode is None else mode)
    return memmap if wrapper_fn is None else Wrapped(memmap, wrapper_fn)


def _build_map(out_dir: Path, samples: Iterable[Any], batch_size: int, keys: Optional[Iterable[str]]) -> Any:
    return from_generator(out_dir, samples, batch_size, keys=keys)


def _extend_map(out_dir: Path, samples: Any) -> None:
    extend_dir(out_dir, samples)


register("numpy", _open_map, _build_map, _extend_map)
