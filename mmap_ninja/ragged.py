"""Ragged maps: samples of different shapes, and even of different ranks, in one map.

All samples are flattened in C order and concatenated into one 1-d array (the map directory is
itself a fixed-shape array, ``data.ninja`` and its metadata). Beside it:

- ``starts/``, ``ends/``: ``int64`` element offsets of each sample in the data;
- ``flattened_shapes/``: ``int64`` number of elements of each sample;
- ``shapes/`` and ``shapes_are_flat.ninja``: when every sample is 1-d (or a scalar), an
  ``int64`` array of shape ``(n, 1)`` with each length (0 for a scalar); otherwise a ragged map
  whose sample ``i`` is the shape of sample ``i``.

``ragged[i]`` is a view of the mapped data (nothing is copied), or a Python scalar for a 0-d
sample; ``ragged[indices]`` is a list of such views.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _build, _core, _meta
from ._keys import KeyFeed, KeyIndex
from ._lifecycle import VERIFY_LIMIT, Found, MapObject, building, checksum_problems, overlap_problems
from ._storage import BUILD_PARTS, ArrayDir, Commit, Replacement, WriterLock, durability, flush_tree, link_map
from .base import (
    Allocator,
    PathLike,
    as_dir,
    cast_values,
    check_max_len,
    check_options,
    in_batches,
    known_length,
    map_type,
    progress,
    reset_map_dir,
    stored_dtype,
)
from .base import (
    component_names as component_names_of,
)
from .parallel import indexable_batches, indexable_parts, worker_count

_MODES = ("r", "r+", "c")
_COMPONENT_KEYS = ("starts_key", "ends_key", "shapes_key", "flattened_shapes_key")
# Axes a sample may have (as many as NumPy 1.x allows).
_MAX_NDIM = 32

RaggedBatch = _core.RaggedBatch


@dataclass
class _Batch:
    """Samples flattened for writing: all values back to back, and per sample its number of
    elements and its shape (``()`` for a scalar); or, for samples that are all 1-d or scalars,
    ``shapes=None`` and ``lengths``, the length of each (0 for a scalar) as an array."""

    values: np.ndarray
    counts: np.ndarray
    shapes: Optional[List[Tuple[int, ...]]]
    lengths: Optional[np.ndarray] = None

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def flat(self) -> bool:
        return self.shapes is None or all(len(shape) <= 1 for shape in self.shapes)

    def flat_lengths(self) -> np.ndarray:
        """The length of each sample (0 for a scalar), of a flat batch."""
        if self.lengths is not None:
            return self.lengths
        return np.array([shape[0] if shape else 0 for shape in self.shapes], dtype=np.int64)

    def shape_batch(self) -> "_Batch":
        """The batch of the samples' shape vectors, as the ``shapes/`` map stores them."""
        return _shape_batch(self.shapes)

    def write_values(self, data: ArrayDir, commit: Commit) -> _meta.ArrayMeta:
        """Write the values past the committed ones of ``data`` in ``commit``."""
        return data.write_rows(self.values, commit)

    def __len__(self) -> int:
        return len(self.counts)


class _PackedBatch:
    """Samples checked and laid out by ``_build.pack``, as ``_RaggedFiles.append`` takes a
    batch (the interface of ``_Batch``): their values are written straight from the samples'
    buffers, never concatenated first."""

    def __init__(self, packed: _build.PackedSamples):
        self.packed = packed

    @property
    def dtype(self) -> np.dtype:
        return self.packed.dtype

    @property
    def counts(self) -> np.ndarray:
        return self.packed.counts

    @property
    def flat(self) -> bool:
        return self.packed.flat

    def flat_lengths(self) -> np.ndarray:
        return self.packed.lengths

    def shape_batch(self) -> _Batch:
        ndims = self.packed.ndims
        return _Batch(self.packed.dims, ndims, None, ndims)

    def write_values(self, data: ArrayDir, commit: Commit) -> _meta.ArrayMeta:
        return data.write_packed(self.packed, commit)

    def __len__(self) -> int:
        return len(self.packed)


def _already_packed(batch: Any, dtype: Optional[np.dtype], first_index: int) -> Any:
    """``pack`` for ``RaggedMmap._build_ragged`` of batches made already (with the interface of
    ``_Batch``): each as it is."""
    return batch


def _flatten(samples: Iterable[Any], dtype: Optional[np.dtype], first_index: int = 0, bar=None):
    """Check ``samples`` (arrays or array-likes) and lay them out for writing as one batch of
    ``dtype`` (by default the dtype of the first sample), in one compiled pass
    (``_build.pack``; samples it does not take as they are go through ``_as_array``);
    ``TypeError`` or ``ValueError`` names a sample that cannot be stored."""
    samples = samples if type(samples) is list else list(samples)
    if dtype is None:
        if not samples:
            return _Batch(np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64), [])
        dtype = _first_dtype(samples[0], first_index)
    return _PackedBatch(_build.pack(samples, dtype, first_index, _as_array, bar))


def _first_dtype(sample: Any, index: int) -> np.dtype:
    """The dtype of a map whose first sample (number ``index``) is ``sample``."""
    arr = np.asarray(sample)
    if arr.ndim > _MAX_NDIM:
        raise ValueError(f"sample {index} has {arr.ndim} axes; samples may have at most {_MAX_NDIM}")
    try:
        return stored_dtype(arr.dtype)
    except TypeError as exc:
        raise TypeError(f"sample {index}: {exc}") from None


def _as_array(sample: Any, dtype: np.dtype, index: int) -> np.ndarray:
    """Sample number ``index`` as a C-contiguous array of ``dtype``; ``TypeError`` or
    ``ValueError`` naming it when it cannot be stored."""
    arr = np.asarray(sample)
    if arr.ndim > _MAX_NDIM:
        raise ValueError(f"sample {index} has {arr.ndim} axes; samples may have at most {_MAX_NDIM}")
    if arr.dtype != dtype:
        arr = cast_values(arr, dtype, f"sample {index}")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _as_arrays(samples: Iterable[Any], dtype: Optional[np.dtype],
               first_index: int = 0) -> Tuple[List[np.ndarray], Optional[np.dtype]]:
    """``samples`` as C-contiguous arrays of ``dtype`` (by default the dtype of the first
    sample), and that dtype; ``TypeError`` or ``ValueError`` names a sample that cannot be
    stored."""
    samples = list(samples)
    if dtype is None and samples:
        dtype = _first_dtype(samples[0], first_index)
    return [_as_array(sample, dtype, first_index + k) for k, sample in enumerate(samples)], dtype


class _RaggedFiles:
    """The component arrays of a ragged map directory, with what is committed of each, and the
    writer that appends a batch to them.

    A batch is appended in one ``Commit``: every component gets its new entries past its
    committed end (nothing visible yet), then the components' ``shape.ninja`` files are
    replaced in an order that ends with ``starts``, whose length is the length of the map.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.data = ArrayDir(out_dir)
        self.starts = ArrayDir(out_dir / "starts")
        self.ends = ArrayDir(out_dir / "ends")
        self.flattened_shapes = ArrayDir(out_dir / "flattened_shapes")
        self.flat_shapes = ArrayDir(out_dir / "shapes")
        self.nested_shapes: Optional[_RaggedFiles] = None
        self.flat = True
        self.flag_on_disk: Optional[bool] = None  # what shapes_are_flat.ninja says
        self.dtype: Optional[np.dtype] = None
        self.mapped: dict = {}  # offsets and shapes mapped by ``reader``
        self.keys: Optional[KeyIndex] = None  # the samples' keys, when they have some

    @property
    def n(self) -> int:
        return self.starts.rows

    @classmethod
    def open(cls, out_dir: Path) -> "_RaggedFiles":
        """Read what is committed at ``out_dir``; a directory without a map (or no directory)
        gives an empty map."""
        files = cls(out_dir)
        type_name = map_type(out_dir)
        if type_name is None:
            return files  # no map, or one whose first commit was cut short: type.ninja comes last
        if type_name != "ragged":
            raise ValueError(f"{out_dir} holds a {type_name!r} map, expected a ragged map")
        if (out_dir / _meta.DTYPE).exists():
            files.dtype = _meta.dtype_from_name(_meta.read_text(out_dir / _meta.DTYPE), out_dir / _meta.DTYPE)
        if not (out_dir / "starts" / _meta.TYPE).exists():
            return files  # an empty map (which may know its dtype): starts/type.ninja comes last
        # starts, whose length is the map's, is committed last: read it first, so that every
        # component read after it is at least as new
        files.starts = _flat_array(out_dir / "starts")
        files.ends = _flat_array(out_dir / "ends")
        files.flattened_shapes = _flat_array(out_dir / "flattened_shapes")
        flag = _meta.read_int32(out_dir / _meta.SHAPES_ARE_FLAT)
        if flag not in (0, 1):
            raise ValueError(f"{out_dir / _meta.SHAPES_ARE_FLAT}: expected 0 or 1, found {flag}")
        files.flag_on_disk = bool(flag)
        # shapes/ says what it holds; the flag lags behind it if a conversion was interrupted
        shapes_type = map_type(out_dir / "shapes")
        files.flat = shapes_type == "numpy" if shapes_type in ("numpy", "ragged") else bool(flag)
        if files.flat:
            files.flat_shapes = _flat_array(out_dir / "shapes")
        else:
            files.nested_shapes = _RaggedFiles.open(out_dir / "shapes")
            if files.nested_shapes.dtype != np.int64 and files.nested_shapes.n:
                raise ValueError(f"{out_dir / 'shapes' / _meta.DTYPE}: expected int64, found "
                                 f"{files.nested_shapes.dtype}")
            if not files.nested_shapes.flat:
                raise ValueError(f"{out_dir / 'shapes'}: the shapes of a ragged map must be 1-d")
            if files.nested_shapes.n < files.n:
                raise ValueError(f"{out_dir / 'shapes'}: holds {files.nested_shapes.n} shapes "
                                 f"for {files.n} samples")
        files.data = _flat_array(out_dir, any_dtype=True)
        files.dtype = files.data.meta.dtype
        return files

    def reader(self, mode: str) -> Tuple[Optional[_core.RaggedReader], Optional[np.ndarray]]:
        """The compiled reader over the committed samples and the flattened data it reads,
        mapped in ``mode`` (``(None, None)`` for an empty map). The mapped offsets and shapes
        stay here (``mapped``), so that what the map shows of them is of the version read."""
        if self.n == 0:
            return None, None
        data = self.data.map(mode).reshape(-1)
        starts, ends = self.starts.map(), self.ends.map()
        source = str(self.out_dir)
        if self.flat:
            lengths = self.flat_shapes.map()
            self.mapped = {"starts": starts, "ends": ends, "shapes": lengths}
            return _core.RaggedReader(data, starts, ends, sizes=lengths.reshape(-1), source=source), data
        shapes = self.nested_shapes
        shapes_reader, shape_values = shapes.reader("r")
        self.mapped = {"starts": starts, "ends": ends, "shapes": (shapes, shapes_reader, shape_values)}
        return _core.RaggedReader(
            data, starts, ends, shape_values=shape_values, shape_starts=shapes.mapped["starts"],
            shape_ends=shapes.mapped["ends"], source=source,
        ), data

    def arrays(self) -> List[ArrayDir]:
        """The component arrays of a non-empty map, nested shapes' included."""
        arrays = [self.data, self.starts, self.ends, self.flattened_shapes]
        return arrays + ([self.flat_shapes] if self.flat else self.nested_shapes.arrays())

    def write_empty(self, dtype: Optional[np.dtype], commit: Commit) -> None:
        """Add to ``commit`` a map with no samples: ``dtype.ninja`` when known, and
        ``type.ninja``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if dtype is not None:
            commit.replace(self.out_dir / _meta.DTYPE, _meta.dtype_name(dtype).encode())
        commit.replace(self.out_dir / _meta.TYPE, b"ragged")
        self.dtype = dtype

    def append(self, batch: _Batch, commit: Commit, at: Optional[int] = None) -> None:
        """Add ``batch`` to ``commit``, after the first ``at`` samples (default: all committed
        ones)."""
        if len(batch) == 0:
            return
        at, new_map, flat = self._begin_append(at, batch.flat, commit.durable)
        ends = self.data.rows + np.cumsum(batch.counts)
        data_meta = batch.write_values(self.data, commit)
        counts_meta = self.flattened_shapes.write_rows(batch.counts, commit, at)
        shapes_meta = self.flat_shapes.write_rows(batch.flat_lengths().reshape(-1, 1), commit, at) if flat else None
        ends_meta = self.ends.write_rows(ends, commit, at)
        starts_meta = self.starts.write_rows(ends - batch.counts, commit, at)
        self._commit_append(commit, (data_meta, counts_meta, shapes_meta, ends_meta, starts_meta), new_map, flat,
                            batch.dtype, lambda: self.nested_shapes.append(batch.shape_batch(), commit, at))

    def _begin_append(self, at: Optional[int], flat_samples: bool, durable: bool) -> Tuple[int, bool, bool]:
        """``(at, new_map, flat)`` of an append after the first ``at`` samples (default: all
        committed ones): an append at 0 starts the map anew, and samples that are not all flat
        (``flat_samples``) turn this map's flat shapes into ragged ones (in a commit of its own,
        flushed when ``durable``, as the append's is)."""
        at = self.n if at is None else at
        new_map = at == 0
        if new_map:
            # an empty map keeps its type.ninja and dtype.ninja: cut short, this commit leaves it
            # as it was; anything left by an earlier such commit goes
            keep = (_meta.TYPE, _meta.DTYPE) if map_type(self.out_dir) == "ragged" else ()
            reset_map_dir(self.out_dir, keep=keep)
            self.__init__(self.out_dir)
        flat = flat_samples and (self.flat or new_map)
        if not flat and self.flat and not new_map:
            self._convert_shapes_to_nested(at, durable)
        elif not flat and self.nested_shapes is None:
            self.nested_shapes = _RaggedFiles(self.out_dir / "shapes")
        return at, new_map, flat

    def _commit_append(self, commit: Commit, metas: tuple, new_map: bool, flat: bool, dtype: np.dtype,
                       append_nested_shapes: Callable[[], None]) -> None:
        """Commit the rows an append wrote (``metas``: of data, counts, flat shapes, ends and
        starts), in the order that keeps every prefix a sound map; ``append_nested_shapes``
        adds the samples' shapes when they are not flat."""
        data_meta, counts_meta, shapes_meta, ends_meta, starts_meta = metas
        self.data.commit_rows(data_meta, commit, type_name=None)  # type.ninja comes last
        self.flattened_shapes.commit_rows(counts_meta, commit)
        if flat:
            self.flat_shapes.commit_rows(shapes_meta, commit)
        else:
            append_nested_shapes()
        if self.flag_on_disk != flat:
            commit.replace(self.out_dir / _meta.SHAPES_ARE_FLAT, _meta.int32_bytes(int(flat)))
        self.ends.commit_rows(ends_meta, commit)
        self.starts.commit_rows(starts_meta, commit)
        if new_map:
            commit.replace(self.out_dir / _meta.TYPE, b"ragged")
        self.flat, self.flag_on_disk, self.dtype = flat, flat, dtype

    def append_map(self, part: "_RaggedFiles", commit: Commit, count: Optional[int] = None,
                   at: Optional[int] = None) -> None:
        """Add to ``commit`` the first ``count`` samples (default: all) of the ragged map
        ``part`` (as ``open`` reads it), after the first ``at`` samples of this map (default:
        all committed ones), with no work per sample in Python: the data bytes are copied file
        to file (``ArrayDir.copy_rows``; the checksums that ``part``'s commits recorded are
        kept when the bytes copied are exactly theirs), the offsets shifted by this map's data
        length and the shapes appended as whole arrays. The first samples of another rank turn
        this map's shapes into a ragged map, as ``append`` does. ``part`` must hold samples of
        this map's dtype: ``ValueError`` otherwise."""
        n = part.n if count is None else count
        if n > part.n:
            raise ValueError(f"{part.out_dir} holds {part.n} samples, not {n}")
        if n == 0:
            return
        if self.dtype is not None and part.dtype != self.dtype:
            raise ValueError(f"{part.out_dir} holds samples of {part.dtype}, {self.out_dir} samples of {self.dtype}: "
                             f"the maps concatenated must share one dtype")
        at, new_map, flat = self._begin_append(at, part.flat, commit.durable)
        starts = np.asarray(part.starts.map()[:n])
        counts = np.asarray(part.ends.map()[:n]) - starts
        ends = self.data.rows + np.cumsum(counts)
        data_meta = self._copy_data_of(part, starts, counts, commit)
        counts_meta = self.flattened_shapes.write_rows(counts, commit, at)
        lengths = np.asarray(part.flat_shapes.map()).reshape(-1)[:n] if part.flat else None
        shapes_meta = self.flat_shapes.write_rows(lengths.reshape(-1, 1), commit, at) if flat else None
        ends_meta = self.ends.write_rows(ends, commit, at)
        starts_meta = self.starts.write_rows(ends - counts, commit, at)

        def append_nested_shapes() -> None:
            if part.flat:  # 1-d samples and scalars into ragged shapes: shape (length,) or ()
                axes = np.where((lengths == 0) & (counts == 1), 0, 1).astype(np.int64)
                self.nested_shapes.append(_Batch(lengths[axes == 1], axes, None, axes), commit, at)
            else:
                self.nested_shapes.append_map(part.nested_shapes, commit, n, at)

        self._commit_append(commit, (data_meta, counts_meta, shapes_meta, ends_meta, starts_meta), new_map, flat,
                            part.dtype, append_nested_shapes)

    def _copy_data_of(self, part: "_RaggedFiles", starts: np.ndarray, counts: np.ndarray, commit: Commit):
        """Write the data of the samples of ``part`` at ``starts`` (``counts`` elements each)
        past this map's data, back to back: one file-to-file copy per run of samples stored
        one after the other (a single run but where samples of ``part`` were replaced)."""
        filled = counts > 0
        first, sizes = starts[filled], counts[filled]
        total = int(sizes.sum())
        if int(counts.min()) < 0 or total and (int(first.min()) < 0 or int((first + sizes).max()) > part.data.rows):
            raise ValueError(f"{part.out_dir}: the offsets of its samples fall outside its data")
        if not total:
            return self.data.write_rows(np.empty(0, dtype=part.dtype), commit)
        last = first + sizes
        cuts = np.flatnonzero(first[1:] != last[:-1]) + 1
        run_starts = first[np.concatenate(([0], cuts))]
        run_ends = last[np.concatenate((cuts - 1, [len(first) - 1]))]
        unit = part.dtype.itemsize
        ranges = [(int(a) * unit, int(b - a) * unit) for a, b in zip(run_starts.tolist(), run_ends.tolist())]
        crcs = part.data.recorded_crcs(ranges[0][0], ranges[0][0] + ranges[0][1]) if len(ranges) == 1 else None
        return self.data.copy_rows(part.data.data_file, ranges, total, _meta.ArrayMeta(part.dtype, (total,)), commit,
                                   crcs)

    def _convert_shapes_to_nested(self, n: int, durable: bool) -> None:
        """Turn the flat shapes of the first ``n`` samples into a ragged map of shapes, in
        place and in a commit of its own, before samples of other ranks are appended.

        The lengths already stored become the data of the new map: sample ``i``'s shape is
        the one value at position ``i``, or no value for a scalar (whose stored 0 is skipped).
        Its offsets, sizes and shapes are written beside them; replacing ``shapes/type.ninja``
        switches readers over, and ``shapes_are_flat.ninja`` follows for mmap_ninja 0.9.0.
        """
        commit = Commit(durable=durable)
        shapes_dir = self.out_dir / "shapes"
        lengths = self.flat_shapes.map().reshape(-1)[:n]
        counts = self.ends.map()[:n] - self.starts.map()[:n]
        axes = np.where((lengths == 0) & (counts == 1), 0, 1).astype(np.int64)
        positions = np.arange(n, dtype=np.int64)
        for name, rows in (("starts", positions), ("ends", positions + axes),
                           ("flattened_shapes", axes), ("shapes", axes.reshape(-1, 1))):
            component = ArrayDir(shapes_dir / name)
            if component.path.exists():
                shutil.rmtree(component.path)  # left by an interrupted conversion
            component.commit_rows(component.write_rows(rows, commit), commit)
        commit.replace(shapes_dir / _meta.SHAPES_ARE_FLAT, _meta.int32_bytes(1))
        commit.replace(shapes_dir / _meta.TYPE, b"ragged")
        commit.replace(shapes_dir / _meta.SHAPE, _meta.shape_bytes((n,)))
        commit.replace(self.out_dir / _meta.SHAPES_ARE_FLAT, _meta.int32_bytes(0))
        commit.finish()
        self.nested_shapes = _RaggedFiles.open(shapes_dir)
        self.flat = self.flag_on_disk = False


def verify_dir(out_dir: Path, limit: int = VERIFY_LIMIT, deep: bool = False) -> Found:
    """Problems and notes of the ragged map at ``out_dir`` (none when it is sound), the samples'
    at most ``limit``, and the number of unsound samples not listed; ``deep`` also checks every
    byte against the checksums of its commits. Raises on damage that keeps the map from being
    read (``verify_map`` reports it)."""
    files = _RaggedFiles.open(out_dir)
    reader, _ = files.reader("r")
    if reader is None:
        return [], [], 0
    problems, unsound = reader.verify(limit)
    omitted = unsound - len(problems)
    n = files.n
    starts, ends = files.mapped["starts"][:n], files.mapped["ends"][:n]  # as the reader mapped them
    if not problems:
        problems = overlap_problems(starts, ends, out_dir, "sample")
    sizes = files.flattened_shapes
    if sizes.rows < n:
        problems.append(f"{sizes.path}: holds {sizes.rows} sizes for {n} samples")
    else:
        stored = sizes.map().reshape(-1)
        for start in range(0, n, _VERIFY_CHUNK):
            stop = min(start + _VERIFY_CHUNK, n)
            counts = ends[start:stop] - starts[start:stop]
            bad = np.flatnonzero(stored[start:stop] != counts)
            if bad.size:
                i = start + int(bad[0])
                problems.append(f"{sizes.path}: sample {i} has size {int(stored[i])}, "
                                f"its offsets hold {int(counts[bad[0]])} elements")
                break
    if files.flag_on_disk != files.flat:
        problems.append(f"{out_dir / _meta.SHAPES_ARE_FLAT}: says {int(files.flag_on_disk)} but shapes/ holds "
                        f"{'an array of lengths' if files.flat else 'a ragged map of shapes'} (left by an "
                        f"interrupted write; the next write corrects it)")
    notes: List[str] = []
    if not files.flat:
        found, notes, more = verify_dir(out_dir / "shapes", limit, deep)
        problems += found
        omitted += more
    found, noted = checksum_problems(files.arrays() if files.flat else files.arrays()[:4], deep)
    return problems + found, noted + notes, omitted


# Samples checked at a time by verify, to bound its memory.
_VERIFY_CHUNK = 1 << 20


def _shape_batch(shapes: Sequence[Tuple[int, ...]]) -> _Batch:
    """The batch of shape vectors stored in the ``shapes/`` map of a ragged map."""
    counts = np.fromiter((len(shape) for shape in shapes), dtype=np.int64, count=len(shapes))
    values = np.fromiter((axis for shape in shapes for axis in shape), dtype=np.int64, count=int(counts.sum()))
    return _Batch(values, counts, [(len(shape),) for shape in shapes])


def _flat_array(path: Path, any_dtype: bool = False) -> ArrayDir:
    """A component array of a ragged map, checked: ``int64`` (unless ``any_dtype``), of shape
    ``(n,)`` or ``(n, 1)``."""
    array = ArrayDir.open(path)
    meta = array.meta
    if not any_dtype and meta.dtype != np.int64:
        raise ValueError(f"{path / _meta.DTYPE}: expected int64, found {meta.dtype}")
    if not (len(meta.shape) == 1 or (len(meta.shape) == 2 and meta.shape[1] == 1)):
        raise ValueError(f"{path / _meta.SHAPE}: expected shape (n,) or (n, 1), found {meta.shape}")
    return array


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
    def _read_files(cls, out_dir: Path) -> _RaggedFiles:
        return _RaggedFiles.open(out_dir)

    def _open_reader(self, files: _RaggedFiles, mode: Optional[str] = None):
        return files.reader(mode or self._mapping_mode)

    def _options(self) -> dict:
        return {"wrapper_fn": self.wrapper_fn, "mode": self.mode, "copy_before_wrapper_fn": self.copy_before_wrapper_fn}

    def _prepare(self, samples: List[Any], files: _RaggedFiles, bar=None) -> _Batch:
        return _flatten(samples, files.dtype, files.n, bar)

    def _append(self, lock: WriterLock, files: _RaggedFiles, batch: _Batch, bar=None) -> None:
        if files.n and files.flat and not batch.flat:
            # the first sample of another rank: the shapes become a ragged map, in a new version
            with Replacement(lock) as build:
                link_map(self.out_dir, build)
                files = _RaggedFiles.open(build)
                commit = Commit()
                files.append(batch, commit)
                commit.finish()
            return
        commit = Commit()
        files.append(batch, commit)
        commit.finish()

    def _replacement_bytes(self, files: _RaggedFiles, reader: _core.RaggedReader, i: int, value: Any) -> bytes:
        shape = np.shape(reader.sample(i))
        arr = cast_values(np.asarray(value), reader.dtype, f"value for sample {i}")
        try:
            arr = np.broadcast_to(arr, shape)
        except ValueError:
            raise ValueError(f"sample {i} has shape {shape}; a value of shape {arr.shape} "
                             f"cannot replace it (samples keep their size)") from None
        return np.ascontiguousarray(arr).tobytes()

    def _unit(self, files: _RaggedFiles) -> int:
        return files.dtype.itemsize

    def _append_bytes(self, files: _RaggedFiles, raw: bytes, commit: Commit) -> int:
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
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The samples at ``indices`` (sequences along their first axis, same shape after it)
        as one array ``(B, L, *row_shape)`` padded with ``pad_value``, and the number of valid
        entries of each along the first axis (``int64``, ``B``).

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
            return np.full((0, length), pad, dtype=out_dtype) if out is None else out, np.empty(0, np.int64)
        index = _core.batch_index(indices, reader.n)
        return reader.padded(index, pad, -1 if max_len is None else int(max_len), out, out_dtype, alloc)

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
                      keys: Optional[Iterable[str]] = None, pack: Optional[Callable[..., Any]] = None,
                      **open_kwargs) -> "RaggedMmap":
        """Write ``batches`` of samples as a new map aside, one commit per batch (``bar``
        advances as samples are packed; the map is flushed whole before the swap, see
        ``MapObject._build``), swap it in and open it. ``pack(samples, dtype, first_index)``
        makes a batch of what ``_RaggedFiles.append`` takes (``_flatten`` by default)."""
        dtype = None if dtype is None else stored_dtype(dtype)
        if pack is None:
            def pack(samples: List[Any], dtype: Optional[np.dtype], first_index: int) -> _Batch:
                return _flatten(samples, dtype, first_index, bar)

        def create(build: Path, samples: Any) -> _RaggedFiles:
            batch = pack(samples, dtype, 0)
            files, commit = _RaggedFiles(build), Commit(durable=False)
            if len(batch):
                files.append(batch, commit)
            else:
                files.write_empty(dtype, commit)
            commit.finish()
            return files

        def extend(files: _RaggedFiles, samples: Any) -> None:
            commit = Commit(durable=False)
            files.append(pack(samples, files.dtype, files.n), commit)
            commit.finish()

        return cls._build(out_dir, batches, create, extend, keys, **open_kwargs)

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
        are appended to the map in index order as they come (``_RaggedFiles.append_map``: data
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
            files = _RaggedFiles(build)
            feed = KeyFeed(build, keys) if keys is not None else None
            scratch = build / BUILD_PARTS
            chunks = indexable_parts(indexable, batch_size, n_jobs, _write_chunk_part,
                                     lambda: (str(scratch), dtype if files.dtype is None else files.dtype), verbose)
            try:
                for start, result in chunks:
                    # not flushed one by one: the map is flushed whole before it is swapped in
                    commit = Commit(durable=False)
                    if isinstance(result, list):  # samples read before the dtype was known
                        files.append(_flatten(result, dtype if files.dtype is None else files.dtype, start), commit)
                        commit.finish()
                        continue
                    part_dir = scratch / "parts" / result["name"]
                    files.append_map(_RaggedFiles.open(part_dir), commit)
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
    arrays, _ = _as_arrays(samples, dtype, first_index)
    name = f"part-{uuid.uuid4().hex}"
    with durability(False):  # a scratch copy: the commit that appends it to the map is flushed
        RaggedMmap.from_lists(Path(folder) / "parts" / name, arrays, dtype=dtype)
    return {"name": name, "length": len(arrays)}


RaggedMmmap = RaggedMmap
