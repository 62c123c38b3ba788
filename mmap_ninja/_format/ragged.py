"""Ragged maps on disk: their component files, how a batch of samples is laid out and appended
to them in one commit, how they are read into the compiled reader and verified.

All samples are flattened in C order and concatenated into one 1-d array (the map directory is
itself a fixed-shape array, ``data.ninja`` and its metadata). Beside it:

- ``starts/``, ``ends/``: ``int64`` element offsets of each sample in the data;
- ``flattened_shapes/``: ``int64`` number of elements of each sample;
- ``shapes/`` and ``shapes_are_flat.ninja``: when every sample is 1-d (or a scalar), an
  ``int64`` array of shape ``(n, 1)`` with each length (0 for a scalar); otherwise a ragged map
  whose sample ``i`` is the shape of sample ``i``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

from .. import _build, _core, _meta
from .._keys import KeyIndex
from .._storage import ArrayDir, Commit, Replacement, WriterLock, link_map
from ..base import cast_values, map_type, reset_map_dir, stored_dtype
from .verify import VERIFY_LIMIT, Found, checksum_problems, overlap_problems

# Axes a sample may have (as many as NumPy 1.x allows).
MAX_NDIM = 32


@runtime_checkable
class WriteBatch(Protocol):
    """Samples laid out for ``RaggedFiles.append``: ``len(batch)`` samples of ``dtype``, the
    number of elements of each (``counts``, ``int64``), whether all are 1-d or scalars
    (``flat``), and the values, written past a data array's committed rows by
    ``write_values``. ``SampleBatch`` and ``PackedBatch`` are the library's own; Arrow columns
    and Megatron files supply theirs."""

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def counts(self) -> np.ndarray: ...

    @property
    def flat(self) -> bool: ...

    def flat_lengths(self) -> np.ndarray:
        """``int64`` ``(len,)``: each sample's length (0 for a scalar), of a flat batch."""

    def shape_batch(self) -> "WriteBatch":
        """The batch of the samples' shape vectors (``int64``), as ``shapes/`` stores them."""

    def write_values(self, data: ArrayDir, commit: Commit) -> _meta.ArrayMeta:
        """Write the values past the committed rows of ``data`` in ``commit``."""

    def __len__(self) -> int: ...


@dataclass
class SampleBatch:
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

    def shape_batch(self) -> "SampleBatch":
        """The batch of the samples' shape vectors, as the ``shapes/`` map stores them."""
        return shape_batch(self.shapes)

    def write_values(self, data: ArrayDir, commit: Commit) -> _meta.ArrayMeta:
        """Write the values past the committed ones of ``data`` in ``commit``."""
        return data.write_rows(self.values, commit)

    def __len__(self) -> int:
        return len(self.counts)


class PackedBatch:
    """Samples checked and laid out by ``_build.pack``, as ``RaggedFiles.append`` takes a
    batch (the interface of ``SampleBatch``): their values are written straight from the samples'
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

    def shape_batch(self) -> SampleBatch:
        ndims = self.packed.ndims
        return SampleBatch(self.packed.dims, ndims, None, ndims)

    def write_values(self, data: ArrayDir, commit: Commit) -> _meta.ArrayMeta:
        return data.write_packed(self.packed, commit)

    def __len__(self) -> int:
        return len(self.packed)


def flatten(samples: Iterable[Any], dtype: Optional[np.dtype], first_index: int = 0, bar=None):
    """Check ``samples`` (arrays or array-likes) and lay them out for writing as one batch of
    ``dtype`` (by default the dtype of the first sample), in one compiled pass
    (``_build.pack``; samples it does not take as they are go through ``as_array``);
    ``TypeError`` or ``ValueError`` names a sample that cannot be stored."""
    samples = samples if type(samples) is list else list(samples)
    if dtype is None:
        if not samples:
            return SampleBatch(np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64), [])
        dtype = _first_dtype(samples[0], first_index)
    return PackedBatch(_build.pack(samples, dtype, first_index, as_array, bar))


def _first_dtype(sample: Any, index: int) -> np.dtype:
    """The dtype of a map whose first sample (number ``index``) is ``sample``."""
    arr = np.asarray(sample)
    if arr.ndim > MAX_NDIM:
        raise ValueError(f"sample {index} has {arr.ndim} axes; samples may have at most {MAX_NDIM}")
    try:
        return stored_dtype(arr.dtype)
    except TypeError as exc:
        raise TypeError(f"sample {index}: {exc}") from None


def as_array(sample: Any, dtype: np.dtype, index: int) -> np.ndarray:
    """Sample number ``index`` as a C-contiguous array of ``dtype``; ``TypeError`` or
    ``ValueError`` naming it when it cannot be stored."""
    arr = np.asarray(sample)
    if arr.ndim > MAX_NDIM:
        raise ValueError(f"sample {index} has {arr.ndim} axes; samples may have at most {MAX_NDIM}")
    if arr.dtype != dtype:
        arr = cast_values(arr, dtype, f"sample {index}")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def as_arrays(samples: Iterable[Any], dtype: Optional[np.dtype],
               first_index: int = 0) -> Tuple[List[np.ndarray], Optional[np.dtype]]:
    """``samples`` as C-contiguous arrays of ``dtype`` (by default the dtype of the first
    sample), and that dtype; ``TypeError`` or ``ValueError`` names a sample that cannot be
    stored."""
    samples = list(samples)
    if dtype is None and samples:
        dtype = _first_dtype(samples[0], first_index)
    return [as_array(sample, dtype, first_index + k) for k, sample in enumerate(samples)], dtype


class RaggedFiles:
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
        self.nested_shapes: Optional[RaggedFiles] = None
        self.flat = True
        self.flag_on_disk: Optional[bool] = None  # what shapes_are_flat.ninja says
        self.dtype: Optional[np.dtype] = None
        self.mapped: dict = {}  # offsets and shapes mapped by ``reader``
        self.keys: Optional[KeyIndex] = None  # the samples' keys, when they have some

    @property
    def n(self) -> int:
        return self.starts.rows

    @classmethod
    def open(cls, out_dir: Path) -> "RaggedFiles":
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
        files.starts = flat_array(out_dir / "starts")
        files.ends = flat_array(out_dir / "ends")
        files.flattened_shapes = flat_array(out_dir / "flattened_shapes")
        flag = _meta.read_int32(out_dir / _meta.SHAPES_ARE_FLAT)
        if flag not in (0, 1):
            raise ValueError(f"{out_dir / _meta.SHAPES_ARE_FLAT}: expected 0 or 1, found {flag}")
        files.flag_on_disk = bool(flag)
        # shapes/ says what it holds; the flag lags behind it if a conversion was interrupted
        shapes_type = map_type(out_dir / "shapes")
        files.flat = shapes_type == "numpy" if shapes_type in ("numpy", "ragged") else bool(flag)
        if files.flat:
            files.flat_shapes = flat_array(out_dir / "shapes")
        else:
            files.nested_shapes = RaggedFiles.open(out_dir / "shapes")
            if files.nested_shapes.dtype != np.int64 and files.nested_shapes.n:
                raise ValueError(f"{out_dir / 'shapes' / _meta.DTYPE}: expected int64, found "
                                 f"{files.nested_shapes.dtype}")
            if not files.nested_shapes.flat:
                raise ValueError(f"{out_dir / 'shapes'}: the shapes of a ragged map must be 1-d")
            if files.nested_shapes.n < files.n:
                raise ValueError(f"{out_dir / 'shapes'}: holds {files.nested_shapes.n} shapes "
                                 f"for {files.n} samples")
        files.data = flat_array(out_dir, any_dtype=True)
        files.dtype = files.data.meta.dtype
        return files

    def reader(self, mode: str) -> Tuple[Optional[_core.RaggedReader], Optional[np.ndarray]]:
        """The compiled reader over the committed samples and the flattened data it reads,
        mapped in ``mode`` (``(None, None)`` for an empty map). The mapped offsets and shapes
        stay here (``mapped``), so that what the map shows of them is of the version read."""
        if self.n == 0:
            return None, None
        data = self.data.map(mode).reshape(-1)
        # the reader's own mapping, read sample by sample (a fault reads its page only); the
        # data shown to the user keeps the kernel's read-ahead for whole scans. A private
        # mapping ("c") is one, so that the reader sees what m[i] = v writes into it.
        read = data if mode == "c" else self.data.map(mode, random_access=True).reshape(-1)
        starts, ends = self.starts.map(), self.ends.map()
        source = str(self.out_dir)
        if self.flat:
            lengths = self.flat_shapes.map()
            self.mapped = {"starts": starts, "ends": ends, "shapes": lengths}
            return _core.RaggedReader(read, starts, ends, sizes=lengths.reshape(-1), source=source), data
        shapes = self.nested_shapes
        shapes_reader, shape_values = shapes.reader("r")
        self.mapped = {"starts": starts, "ends": ends, "shapes": (shapes, shapes_reader, shape_values)}
        return _core.RaggedReader(
            read, starts, ends, shape_values=shape_values, shape_starts=shapes.mapped["starts"],
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

    def append(self, batch: SampleBatch, commit: Commit, at: Optional[int] = None) -> None:
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

    def commit_batch(self, batch: WriteBatch, lock: WriterLock) -> None:
        """Append ``batch`` in a commit of its own, under ``lock``. The first samples of another
        rank than the flat samples stored turn the shapes into a ragged map: that append makes
        a new version of the map, built aside (its files linked) and swapped in."""
        if self.n and self.flat and not batch.flat:
            with Replacement(lock) as build:
                link_map(self.out_dir, build)
                files = RaggedFiles.open(build)
                commit = Commit()
                files.append(batch, commit)
                commit.finish()
            return
        commit = Commit()
        self.append(batch, commit)
        commit.finish()

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
            self.nested_shapes = RaggedFiles(self.out_dir / "shapes")
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

    def append_map(self, part: "RaggedFiles", commit: Commit, count: Optional[int] = None,
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
                self.nested_shapes.append(SampleBatch(lengths[axes == 1], axes, None, axes), commit, at)
            else:
                self.nested_shapes.append_map(part.nested_shapes, commit, n, at)

        self._commit_append(commit, (data_meta, counts_meta, shapes_meta, ends_meta, starts_meta), new_map, flat,
                            part.dtype, append_nested_shapes)

    def _copy_data_of(self, part: "RaggedFiles", starts: np.ndarray, counts: np.ndarray, commit: Commit):
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
        self.nested_shapes = RaggedFiles.open(shapes_dir)
        self.flat = self.flag_on_disk = False


def truncate_dir(out_dir: Path, n: int, commit: Commit) -> None:
    """Add to ``commit`` what makes the ragged map at ``out_dir`` hold its first ``n`` samples
    (at most as many as it holds): ``starts/shape.ninja`` first (its length is the map's), then
    those of ``ends/``, ``flattened_shapes/`` and the shapes (the nested shapes' map cut the same
    way), and the flattened data's, cut to ``ends[n - 1]`` elements, where 0.9.0 appends. No
    byte of data is written."""
    files = RaggedFiles.open(out_dir)
    if files.n <= n:
        return
    end = int(files.ends.map()[n - 1]) if n else 0
    for offsets in (files.starts, files.ends, files.flattened_shapes):
        offsets.commit_rows(offsets.meta.with_rows(n), commit)
    if files.flat:
        files.flat_shapes.commit_rows(files.flat_shapes.meta.with_rows(n), commit)
    else:
        truncate_dir(out_dir / "shapes", n, commit)
    files.data.commit_rows(files.data.meta.with_rows(end), commit, type_name=None)


def verify_dir(out_dir: Path, limit: int = VERIFY_LIMIT, deep: bool = False) -> Found:
    """Problems and notes of the ragged map at ``out_dir`` (none when it is sound), the samples'
    at most ``limit``, and the number of unsound samples not listed; ``deep`` also checks every
    byte against the checksums of its commits. Raises on damage that keeps the map from being
    read (``verify_map`` reports it)."""
    files = RaggedFiles.open(out_dir)
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


def shape_batch(shapes: Sequence[Tuple[int, ...]]) -> SampleBatch:
    """The batch of shape vectors stored in the ``shapes/`` map of a ragged map."""
    counts = np.fromiter((len(shape) for shape in shapes), dtype=np.int64, count=len(shapes))
    values = np.fromiter((axis for shape in shapes for axis in shape), dtype=np.int64, count=int(counts.sum()))
    return SampleBatch(values, counts, [(len(shape),) for shape in shapes])


def flat_array(path: Path, any_dtype: bool = False) -> ArrayDir:
    """A component array of a ragged map, checked: ``int64`` (unless ``any_dtype``), of shape
    ``(n,)`` or ``(n, 1)``."""
    array = ArrayDir.open(path)
    meta = array.meta
    if not any_dtype and meta.dtype != np.int64:
        raise ValueError(f"{path / _meta.DTYPE}: expected int64, found {meta.dtype}")
    if not (len(meta.shape) == 1 or (len(meta.shape) == 2 and meta.shape[1] == 1)):
        raise ValueError(f"{path / _meta.SHAPE}: expected shape (n,) or (n, 1), found {meta.shape}")
    return array


class Concatenation:
    """The ragged map being written at ``build`` by ``concatenate``: ``add`` appends the first
    ``count`` samples of another ragged map's files in ``commit``; ``finish`` commits an empty
    map (of ``dtype``, when known) if no sample was added."""

    def __init__(self, build: Path, out_dir: Path, dtype: Optional[np.dtype]):
        self.files = RaggedFiles(build)
        self.files.dtype = dtype

    def add(self, part: RaggedFiles, commit: Commit, count: int, batch_size: int) -> None:
        self.files.append_map(part, commit, count)

    def finish(self, commit: Commit) -> None:
        if self.files.n == 0:
            self.files.write_empty(self.files.dtype, commit)
