"""Ragged maps: samples of different shapes, and even of different ranks, in one map. What they
are on disk (data, offsets, shapes) is ``mmap_ninja._format.ragged``.

``ragged[i]`` is a view of the mapped data (nothing is copied), or a Python scalar for a 0-d
sample; ``ragged[indices]`` is a list of such views.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._format.build import building
from ._format.kinds import register
from ._format.ragged import RaggedFiles, WriteBatch, as_arrays, flatten, verify_dir
from ._keys import KeyFeed
from ._lifecycle import MapObject
from ._storage import BUILD_PARTS, Commit, WriterLock, durability, flush_tree
from .base import (
    Allocator,
    PathLike,
    as_dir,
    cast_values,
    check_max_len,
    check_options,
    in_batches,
    known_length,
    progress,
    stored_dtype,
)
from .base import (
    component_names as component_names_of,
)
from .parallel import indexable_batches, indexable_parts, worker_count

_MODES = ("r", "r+", "c")
_COMPONENT_KEYS = ("starts_key", "ends_key", "shapes_key", "flattened_shapes_key")

RaggedBatch = _core.RaggedBatch


class RaggedMmap(MapObject):
    """A memory-mapped list of numpy arrays of any shapes, opened from ``out_dir``.

    ``len(m)``; ``m[i]`` (negative ``i`` too) is sample ``i`` as an array view of the file (a
    Python scalar for a 0-d sample); ``m[slice]``, ``m[list or array of ints]`` and
    ``m[boolean mask]`` are lists of samples. With ``wrapper_fn``, every sample is passed
    through it (after a copy, unless ``copy_before_wrapper_fn=False``).

    ``mode``: ``"r"`` (the default) maps the files read-only and refuses ``m[i] = value``;
    ``"r+"`` gives writable views and ``m[i] = value`` commits a new version of the map;
    ``"c"`` is copy-on-write: assignments change this process's copy only. ``append`` and
    ``extend`` add samples in ``"r"`` and ``"r+"``.

    A directory with no map (or no directory) opens as an empty map; nothing is written
    until the first ``append`` or ``extend``. ``close()`` (or ``with RaggedMmap(...) as m``)
    lets go of the files; no file descriptor is held while the map is open.
    """

    MODES = _MODES

    def __init__(
        self,
        out_dir: PathLike,
        wrapper_fn: Optional[Callable[[Any], Any]] = None,
        mode: str = "r",
        *,
        copy_before_wrapper_fn: bool = True,
        **component_names: str,
    ):
        check_options(wrapper_fn=wrapper_fn, **component_names_of(component_names, _COMPONENT_KEYS))
        self.wrapper_fn = wrapper_fn
        self.copy_before_wrapper_fn = copy_before_wrapper_fn
        self._init_map(out_dir, mode)

    # -- what the lifecycle asks of a ragged map -------------------------------------------

    @classmethod
    def _read_files(cls, out_dir: Path) -> RaggedFiles:
        return RaggedFiles.open(out_dir)

    def _open_reader(self, files: RaggedFiles, mode: Optional[str] = None):
        return files.reader(mode or self._mapping_mode)

    def _options(self) -> dict:
        return {"wrapper_fn": self.wrapper_fn, "mode": self.mode, "copy_before_wrapper_fn": self.copy_before_wrapper_fn}

    def _prepare(self, samples: List[Any], files: RaggedFiles, bar=None) -> WriteBatch:
        return flatten(samples, files.dtype, files.n, bar)

    def _append(self, lock: WriterLock, files: RaggedFiles, batch: WriteBatch, bar=None) -> None:
        files.commit_batch(batch, lock)

    def _replacement_bytes(self, files: RaggedFiles, reader: _core.RaggedReader, i: int, value: Any) -> bytes:
        shape = np.shape(reader.sample(i))
        arr = cast_values(np.asarray(value), reader.dtype, f"value for sample {i}")
        try:
            arr = np.broadcast_to(arr, shape)
        except ValueError:
            raise ValueError(f"sample {i} has shape {shape}; a value of shape {arr.shape} "
                             f"cannot replace it (samples keep their size)") from None
        return np.ascontiguousarray(arr).tobytes()

    def _unit(self, files: RaggedFiles) -> int:
        return files.dtype.itemsize

    def _append_bytes(self, files: RaggedFiles, raw: bytes, commit: Commit) -> int:
        offset = files.data.rows
        files.data.commit_rows(files.data.write_rows(np.frombuffer(raw, dtype=files.dtype), commit), commit,
                               type_name=None)
        return offset

    @classmethod
    def _verify_dir(cls, out_dir: Path, limit: int, deep: bool):
        return verify_dir(out_dir, limit, deep)

    # -- reading ------------------------------------------------------------------------

    def __getitem__(self, item):
        state = self._state
        reader = state[1] if state is not None else self._live()[1]  # _live() raises once closed
        if reader is None:
            _core.normalize_index(item, 0)  # raises for any integer
            return []
        if type(item) is int and self.wrapper_fn is None:
            return reader.sample(item)
        if type(item) is slice:
            return [self._wrap(sample) for sample in reader.samples_in(item)]
        index = _core.normalize_index(item, reader.n)
        if type(index) is int:
            return self._wrap(reader.sample(index))
        return [self._wrap(sample) for sample in reader.samples(index)]

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """The samples at ``indices`` (through ``wrapper_fn``), copied in one pass into one
        buffer: each is a writable view of it. ``torch.utils.data.DataLoader`` fetches whole
        batches with this method."""
        batch = self.take(indices)
        if self.wrapper_fn is None:
            return batch.arrays()
        return [self.wrapper_fn(sample) for sample in batch.arrays()]

    def take(self, indices, *, alloc: Optional[Allocator] = None) -> RaggedBatch:
        """The samples at ``indices`` (a sequence, array, boolean mask or slice) copied back to
        back into one new buffer, as a ``RaggedBatch``: ``.values`` (1-d), ``.offsets``
        (``int64``, ``len + 1``), ``.shapes``, and ``batch[k]`` / ``batch.arrays()`` as views of
        ``.values``. ``wrapper_fn`` is not applied.

        ``alloc(shape, dtype)``, when given, makes the buffer (a writable C-contiguous array of
        that shape and dtype: in shared memory, say)."""
        files, reader, _ = self._live()
        if reader is None:
            _core.batch_index(indices, 0)
            empty = np.empty(0, dtype=files.dtype or np.float64)
            return RaggedBatch(empty, np.zeros(1, np.int64), np.empty(0, np.int64), np.zeros(1, np.int64))
        return reader.take(_core.batch_index(indices, reader.n), alloc)

    def padded(
        self,
        indices,
        pad_value: Any = 0,
        max_len: Optional[int] = None,
        out: Optional[np.ndarray] = None,
        dtype: Any = None,
        *,
        alloc: Optional[Allocator] = None,
        every_axis: bool = False,
    ) -> Tuple[np.ndarray, ...]:
        """The samples at ``indices`` (sequences along their first axis, same shape after it)
        as one array ``(B, L, *row_shape)`` padded with ``pad_value``, and the number of valid
        entries of each along the first axis (``int64``, ``B``).

        ``every_axis=True``: samples of one number of axes that differ in any of them (images
        of different heights and widths) are padded along every axis, to the batch's largest
        (or to ``out``'s size along it), in the same compiled pass; the samples' shapes
        ``(B, ndim)`` (``int64``, the first axis as kept) are returned third.

        ``L`` is ``max_len`` when given (longer samples are cut), else ``out.shape[1]`` when
        ``out`` (a preallocated C-contiguous array) is given, else the longest sample's length.
        ``dtype``: of the array (default: the map's); the samples are converted as they are
        copied, in one pass, when it holds every value of the map's dtype exactly (``int32``
        into ``int64``, say), else ``TypeError``. ``alloc(shape, dtype)``, when given and
        ``out`` is not, makes the array. ``wrapper_fn`` is not applied.
        """
        check_max_len(max_len, out)
        files, reader, _ = self._live()
        out_dtype = np.dtype(dtype) if dtype is not None else files.dtype or np.dtype(np.float64)
        pad = cast_values(np.asarray(pad_value), out_dtype, "pad_value")
        if reader is None:
            _core.batch_index(indices, 0)
            length = max_len if max_len is not None else (out.shape[1] if out is not None and out.ndim > 1 else 0)
            empty = np.full((0, length), pad, dtype=out_dtype) if out is None else out, np.empty(0, np.int64)
            return empty + (np.zeros((0, 1), np.int64),) if every_axis else empty
        index = _core.batch_index(indices, reader.n)
        return reader.padded(index, pad, -1 if max_len is None else int(max_len), out, out_dtype, alloc,
                             bool(every_axis))

    def _wrap(self, sample):
        if self.wrapper_fn is None:
            return sample
        if self.copy_before_wrapper_fn and isinstance(sample, np.ndarray):
            sample = sample.copy()
        return self.wrapper_fn(sample)

    @property
    def dtype(self) -> Optional[np.dtype]:
        """The dtype of every sample (``None`` for an empty map that was never given one)."""
        return self._live()[0].dtype

    @property
    def shapes_are_flat(self) -> bool:
        """Whether every sample is 1-d or a scalar."""
        return self._live()[0].flat

    @property
    def memmap(self) -> np.ndarray:
        """All samples flattened and concatenated, as one 1-d array (mapped in the map's
        mode)."""
        files, reader, data = self._live()
        return data if reader is not None else np.empty(0, files.dtype or np.float64)

    @property
    def starts(self) -> np.ndarray:
        """``int64`` element offset in ``memmap`` where each sample begins."""
        files = self._live()[0]
        return files.mapped["starts"][: files.n] if files.n else np.empty(0, np.int64)

    @property
    def ends(self) -> np.ndarray:
        """``int64`` element offset in ``memmap`` one past the end of each sample."""
        files = self._live()[0]
        return files.mapped["ends"][: files.n] if files.n else np.empty(0, np.int64)

    # -- the names mmap_ninja 0.9.0 gave (see also Legacy090Names) ---------------------------

    @property
    def flattened_shapes(self) -> np.ndarray:
        """``int64`` number of elements of each sample."""
        return self.ends - self.starts

    @property
    def shapes(self):
        """The stored shapes: an ``(n, 1)`` array of lengths for a map of 1-d samples, else a
        ``RaggedMmap`` whose sample ``i`` is the shape of sample ``i``."""
        files = self._live()[0]
        if files.flat:
            return files.mapped["shapes"][: files.n] if files.n else np.empty((0, 1), np.int64)
        if not files.n:
            return RaggedMmap(self.out_dir / "shapes")
        shapes = RaggedMmap.__new__(RaggedMmap)  # the shapes of the version this map read
        shapes.out_dir, shapes.mode, shapes.wrapper_fn, shapes.copy_before_wrapper_fn = (
            self.out_dir / "shapes", "r", None, True)
        shapes._state = files.mapped["shapes"]
        return shapes

    def __repr__(self) -> str:
        if self.closed:
            return f"RaggedMmap({str(self.out_dir)!r}, closed)"
        dtype = "unknown" if self.dtype is None else self.dtype.name
        kind = "1-d samples" if self.shapes_are_flat else "n-d samples"
        return f"RaggedMmap({str(self.out_dir)!r}, {len(self)} {kind} of {dtype})"

    # -- building -----------------------------------------------------------------------

    @classmethod
    def _build_ragged(cls, out_dir: PathLike, batches: Iterable[Any], dtype: Any, bar=None,
                      keys: Optional[Iterable[str]] = None, **open_kwargs) -> "RaggedMmap":
        """Write ``batches`` of samples (lists of samples, or ``WriteBatch`` objects laid out
        already) as a new map aside, one commit per batch (``bar`` advances as samples are
        packed; the map is flushed whole before the swap, see ``build_aside``), swap it in and
        open it."""
        dtype = None if dtype is None else stored_dtype(dtype)

        def pack(samples: Any, dtype: Optional[np.dtype], first_index: int) -> WriteBatch:
            return samples if isinstance(samples, WriteBatch) else flatten(samples, dtype, first_index, bar)

        def create(build: Path, samples: Any) -> RaggedFiles:
            batch = pack(samples, dtype, 0)
            files, commit = RaggedFiles(build), Commit(durable=False)
            if len(batch):
                files.append(batch, commit)
            else:
                files.write_empty(dtype, commit)
            commit.finish()
            return files

        def extend(files: RaggedFiles, samples: Any) -> None:
            commit = Commit(durable=False)
            files.append(pack(samples, files.dtype, files.n), commit)
            commit.finish()

        return cls._build(out_dir, batches, create, extend, keys, **open_kwargs)

    @classmethod
    def from_batches(
        cls,
        out_dir: PathLike,
        batches: Iterable[Any],
        dtype: Any = None,
        *,
        keys: Optional[Iterable[str]] = None,
        wrapper_fn: Optional[Callable[[Any], Any]] = None,
        mode: str = "r",
    ) -> "RaggedMmap":
        """A new map at ``out_dir`` of the samples of ``batches``, in order, each batch
        committed before the next is read; it replaces any map there, swapped in whole once
        complete (on an error, the map there stays as it was). A batch is a list of samples
        (arrays or array-likes, as ``from_lists`` takes), or samples laid out for writing
        already (an object with the interface of ``mmap_ninja._format.ragged.WriteBatch``, as
        the Arrow and Megatron readers make). ``dtype``: by default the first sample's.
        ``keys``: one unique ``str`` per sample, consumed alongside."""
        return cls._build_ragged(out_dir, batches, dtype, None, keys, wrapper_fn=wrapper_fn, mode=mode)

    @classmethod
    def from_lists(
        cls,
        out_dir: PathLike,
        lists: Iterable[Any],
        dtype: Any = None,
        mode: str = "r+",
        wrapper_fn: Optional[Callable[[Any], Any]] = None,
        *,
        copy_before_wrapper_fn: bool = True,
        verbose: bool = False,
        keys: Optional[Iterable[str]] = None,
        **component_names: str,
    ) -> "RaggedMmap":
        """Write the samples ``lists`` (arrays of any shapes) as a new map at ``out_dir``,
        replacing a map already there once the new one is whole, and open it. ``dtype``
        defaults to the first sample's. ``keys``: one unique ``str`` per sample, to find
        samples by (``index_of``, ``by_key``). (The order of the arguments is mmap_ninja
        0.9.0's.)"""
        check_options(verbose, wrapper_fn, **component_names_of(component_names, _COMPONENT_KEYS))
        with progress(known_length(lists), verbose, desc=f"Writing {as_dir(out_dir).name}") as bar:
            return cls._build_ragged(out_dir, [list(lists)], dtype, bar, keys, wrapper_fn=wrapper_fn, mode=mode,
                                     copy_before_wrapper_fn=copy_before_wrapper_fn)

    @classmethod
    def from_generator(
        cls,
        out_dir: PathLike,
        sample_generator: Iterable[Any],
        batch_size: int,
        verbose: bool = False,
        *,
        n: Optional[int] = None,
        dtype: Any = None,
        wrapper_fn: Optional[Callable[[Any], Any]] = None,
        mode: str = "r+",
        copy_before_wrapper_fn: bool = True,
        keys: Optional[Iterable[str]] = None,
    ) -> "RaggedMmap":
        """Write the samples of an iterable as a new map at ``out_dir``, committing every
        ``batch_size`` samples to a folder beside it that replaces the map there once the
        iterable is exhausted, and open it. ``verbose`` shows a progress bar, whose total is
        ``n`` (the expected number of samples) or the iterable's length when it has one.
        ``keys``: an iterable of one unique ``str`` per sample, consumed alongside."""
        check_options(verbose, wrapper_fn)
        out_dir = as_dir(out_dir)
        total = n if n is not None else known_length(sample_generator)
        with progress(total, verbose, desc=f"Writing {out_dir.name}") as bar:
            return cls._build_ragged(out_dir, in_batches(sample_generator, batch_size), dtype, bar, keys,
                                     wrapper_fn=wrapper_fn, mode=mode, copy_before_wrapper_fn=copy_before_wrapper_fn)

    @classmethod
    def from_indexable(
        cls,
        out_dir: PathLike,
        indexable: Any,
        batch_size: int,
        n_jobs: Optional[int] = None,
        verbose: bool = False,
        *,
        dtype: Any = None,
        wrapper_fn: Optional[Callable[[Any], Any]] = None,
        mode: str = "r+",
        copy_before_wrapper_fn: bool = True,
        keys: Optional[Iterable[str]] = None,
    ) -> "RaggedMmap":
        """Write ``indexable[0], indexable[1], ...`` (or ``indexable(i)`` for a function) as a
        new map at ``out_dir``, until ``len(indexable)`` or the first ``IndexError``/
        ``KeyError``; ``n_jobs`` other than ``None`` or 1 reads the samples in that many worker
        processes (``-1``: one per core), which each receive ``indexable`` once, and write
        them there (see ``_build_from_parts``): the map is the same as a serial build's.
        ``keys``: one unique ``str`` per sample, in the samples' order."""
        check_options(verbose, wrapper_fn)
        open_kwargs = {"wrapper_fn": wrapper_fn, "mode": mode, "copy_before_wrapper_fn": copy_before_wrapper_fn}
        if worker_count(indexable, batch_size, n_jobs) > 1:
            return cls._build_from_parts(out_dir, indexable, batch_size, n_jobs, dtype, verbose, keys, **open_kwargs)
        batches = indexable_batches(indexable, batch_size, n_jobs=n_jobs, verbose=verbose)
        with contextlib.closing(batches):  # a failed write stops the workers at once
            return cls._build_ragged(out_dir, batches, dtype, None, keys, **open_kwargs)

    @classmethod
    def _build_from_parts(cls, out_dir: PathLike, indexable: Any, batch_size: int, n_jobs: int, dtype: Any,
                          verbose: bool, keys: Optional[Iterable[str]] = None, **open_kwargs) -> "RaggedMmap":
        """``from_indexable`` with worker processes, which write the samples themselves.

        Each worker reads a chunk of indices and writes it as a part (``sharded.write_part``,
        under ``BUILD_PARTS`` in the folder where the map is built aside), cast to the map's
        dtype as the serial build casts it; only the part's record comes back. Here, the parts
        are appended to the map in index order as they come (``RaggedFiles.append_map``: data
        copied file to file, one commit per part, nothing done per sample in Python) while the
        workers write the next ones, and each is removed once appended. The build is not
        visible until it is swapped in: its commits are flushed to disk once, at the end. The map's dtype is
        its first sample's (unless ``dtype`` is given): until the first chunk is back, the
        workers send their samples, which are written here as the serial build writes them.
        On any error the workers are stopped, and the build, its parts with it, is removed.
        """
        if open_kwargs.get("mode") not in cls.MODES:  # checked before anything is written
            raise ValueError(f"mode must be one of {cls.MODES}, got {open_kwargs.get('mode')!r}")
        out_dir = as_dir(out_dir)
        dtype = None if dtype is None else stored_dtype(dtype)
        with building(out_dir) as build:
            files = RaggedFiles(build)
            feed = KeyFeed(build, keys) if keys is not None else None
            scratch = build / BUILD_PARTS
            chunks = indexable_parts(indexable, batch_size, n_jobs, _write_chunk_part,
                                     lambda: (str(scratch), dtype if files.dtype is None else files.dtype), verbose)
            try:
                for start, result in chunks:
                    # not flushed one by one: the map is flushed whole before it is swapped in
                    commit = Commit(durable=False)
                    if isinstance(result, list):  # samples read before the dtype was known
                        files.append(flatten(result, dtype if files.dtype is None else files.dtype, start), commit)
                        commit.finish()
                        continue
                    part_dir = scratch / "parts" / result["name"]
                    files.append_map(RaggedFiles.open(part_dir), commit)
                    commit.finish()
                    shutil.rmtree(part_dir)
            finally:
                chunks.close()  # the workers are stopped before their parts go
                shutil.rmtree(scratch, ignore_errors=True)
            if feed is not None:
                feed.finish(files.n)
            commit = Commit(durable=False)
            if files.n == 0:
                files.write_empty(dtype, commit)
            commit.finish()
            flush_tree(build)
        return cls(out_dir, **open_kwargs)


def _write_chunk_part(samples: List[Any], first_index: int, folder: str, dtype: Optional[np.dtype]) -> Any:
    """In a worker of ``RaggedMmap._build_from_parts``: the samples ``first_index, ...`` cast to
    ``dtype`` as the serial build casts them (errors name the sample), written as a part under
    ``folder``, whose record is returned; or, while the map's dtype is not known yet (``None``),
    the samples themselves."""
    if dtype is None:
        return samples
    arrays, _ = as_arrays(samples, dtype, first_index)
    name = f"part-{uuid.uuid4().hex}"
    with durability(False):  # a scratch copy: the commit that appends it to the map is flushed
        RaggedMmap.from_lists(Path(folder) / "parts" / name, arrays, dtype=dtype)
    return {"name": name, "length": len(arrays)}



def _open_map(out_dir: Path, wrapper_fn: Optional[Callable[[Any], Any]], mode: Optional[str]) -> RaggedMmap:
    return RaggedMmap(out_dir, wrapper_fn=wrapper_fn, **({} if mode is None else {"mode": mode}))


def _build_map(out_dir: Path, samples: Iterable[Any], batch_size: int, keys: Optional[Iterable[str]]) -> Any:
    return RaggedMmap.from_generator(out_dir, samples, batch_size, keys=keys)


def _extend_map(out_dir: Path, samples: Any) -> None:
    RaggedMmap(out_dir, mode="r+").extend(samples)


register("ragged", _open_map, _build_map, _extend_map)

RaggedMmmap = RaggedMmap
