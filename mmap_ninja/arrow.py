"""Arrow, Parquet and Hugging Face datasets, in and out (the ``arrow`` extra: pyarrow).

    from mmap_ninja import arrow
    tokens = arrow.from_arrow("tokens", table, column="input_ids")   # a RaggedMmap
    texts = arrow.from_arrow("texts", hf_dataset, column="text")      # a StringsMmap
    column = arrow.to_arrow(tokens)       # a pa.LargeListArray over the map's mapped files

``from_arrow`` takes a pyarrow ``Array``, ``ChunkedArray``, ``RecordBatch``, ``Table``,
``RecordBatchReader``, ``pyarrow.parquet.ParquetFile`` (read row group by row group), a Hugging
Face ``datasets.Dataset`` (its rows as its indices mapping orders them, after ``select``,
``shuffle`` or ``filter``) or any object with ``__arrow_c_stream__``, and reads it batch by batch:
no sample becomes a Python object. What the column holds decides the map:

- ``list``/``large_list`` of numbers (nested lists, or fixed-size lists, for n-d samples) make a
  ``RaggedMmap``: the values of each batch are written straight from Arrow's buffer, the
  offsets become the map's ``starts``/``ends`` in one vectorised step;
- ``string``/``large_string`` make a ``StringsMmap``: Arrow's UTF-8 bytes are its data, as
  they are;
- numbers and ``fixed_size_list`` of numbers make a numpy map of shape ``(rows, *sizes)``.

Nulls raise ``ValueError`` naming the row, as do n-d samples that are not rectangular; other
types (``binary``, structs, dates, ...) raise ``TypeError``. ``pyarrow`` is imported by this
module only; ``datasets`` is never imported here (a ``Dataset`` is recognised when the caller
has imported it).

``to_arrow`` goes the other way, without copying the values where the map's layout allows.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from . import _keys
from . import numpy as np_ninja
from ._extras import require
from ._format.build import build_aside, building
from ._format.kinds import KINDS, display_name
from ._format.ragged import SampleBatch
from ._format.strings import Codec, StringsFiles
from ._storage import ArrayDir, Commit, WriterLock, flush_tree
from .base import PathLike, as_dir, cast_values, check_options, check_positive, map_type, progress, stored_dtype
from .ragged import RaggedMmap
from .string import StringsMmap

require(__name__, "arrow", {"pyarrow": "pyarrow"})

import pyarrow as pa  # noqa: E402  (checked above)

__all__ = ["from_arrow", "extend_from_arrow", "to_arrow", "map_kind"]

# Rows read and committed at a time (a chunk of the input longer than this is cut, zero-copy).
BATCH_ROWS = 65536


# -- what a column holds ------------------------------------------------------------------------

@dataclass
class _Layout:
    """What an Arrow type makes: ``kind`` (``"ragged"``, ``"string"`` or ``"numpy"``), the
    numpy ``dtype`` of its numbers, and for a ragged map ``levels``, one per axis of a sample:
    ``None`` for a variable size (a list), else the fixed size; for a numpy map ``levels``
    are the fixed sizes of a row's axes."""

    kind: str
    dtype: Optional[np.dtype]
    levels: Tuple[Optional[int], ...] = ()


def _storage_type(type_: pa.DataType) -> pa.DataType:
    if isinstance(type_, pa.ExtensionType):  # e.g. Hugging Face's Array2D: a list type underneath
        return _storage_type(type_.storage_type)
    if pa.types.is_dictionary(type_):
        return _storage_type(type_.value_type)
    return type_


def _number_dtype(type_: pa.DataType, name: str) -> np.dtype:
    """The numpy dtype of an Arrow number type; ``TypeError`` for anything else."""
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_):
        return stored_dtype(type_.to_pandas_dtype())
    raise TypeError(f"{name}: {type_} values cannot be stored; a map holds lists of numbers (a RaggedMmap), "
                    f"strings (a StringsMmap), or numbers and fixed-size lists of numbers (a numpy map)")


def _layout(type_: pa.DataType, name: str) -> _Layout:
    """The map that a column of ``type_`` (named ``name`` in errors) makes."""
    outer = _storage_type(type_)
    if pa.types.is_string(outer) or pa.types.is_large_string(outer) or _is_string_view(outer):
        return _Layout("string", None)
    levels: List[Optional[int]] = []
    inner = outer
    while True:
        if pa.types.is_list(inner) or pa.types.is_large_list(inner):
            levels.append(None)
        elif pa.types.is_fixed_size_list(inner):
            levels.append(inner.list_size)
        else:
            break
        inner = inner.value_type  # dictionaries and extension types are taken only as the column's own type
    try:
        dtype = _number_dtype(inner, name)
    except TypeError:
        if levels:
            raise TypeError(f"{name}: {type_} cannot be stored: the lists must hold numbers (or lists of "
                            f"numbers), not {inner}") from None
        raise
    if levels and levels[0] is None:
        return _Layout("ragged", dtype, tuple(levels))
    if None in levels:
        raise TypeError(f"{name}: {type_} cannot be stored: fixed-size lists of variable-size lists are not "
                        f"supported")
    return _Layout("numpy", dtype, tuple(levels))


def _is_string_view(type_: pa.DataType) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(type_))


# -- where the rows come from -------------------------------------------------------------------

@dataclass
class _Source:
    """A column to read: its name (for messages), layout, number of rows when known, and the
    ``pa.Array`` chunks that hold it, in order, each with the chunk of the same rows of the key
    column ``key_name`` (``None`` without one)."""

    name: str
    layout: _Layout
    rows: Optional[int]
    chunks: Iterable[Tuple[pa.Array, Optional[pa.Array]]]
    key_name: Optional[str] = None


def _pick(names: List[str], column: Optional[str], what: str, key_column: Optional[str] = None) -> str:
    """The column to read among ``names``: ``column``, or the only one there is besides
    ``key_column`` (which must be there too)."""
    listed = ', '.join(map(repr, names))
    if key_column is not None:
        if key_column not in names:
            raise ValueError(f"{what} has no column {key_column!r} (key_column); its columns: {listed}")
        if column == key_column:
            raise ValueError(f"column and key_column both name {column!r}: the keys come from another column than "
                             f"the samples")
    if column is None:
        candidates = [name for name in names if name != key_column]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise ValueError(f"{what} has no column" + (" besides the key column" if key_column else ""))
        raise ValueError(f"{what} has {len(names)} columns ({listed}): pass column= to choose one")
    if column not in names:
        raise ValueError(f"{what} has no column {column!r}; its columns: {listed}")
    return column


def _check_key_type(type_: pa.DataType, name: str) -> None:
    outer = _storage_type(type_)
    if not (pa.types.is_string(outer) or pa.types.is_large_string(outer) or _is_string_view(outer)):
        raise TypeError(f"the key column {name!r} holds {type_}; keys are strings (cast the column to "
                        f"pa.string() first, e.g. with pyarrow.compute.cast)")


def _pairs(tables: Iterable[Any], name: str,
           key_column: Optional[str]) -> Iterator[Tuple[pa.Array, Optional[pa.Array]]]:
    """The chunks of column ``name`` of each table or record batch of ``tables``, each with
    the same rows of ``key_column`` (record batches cut both columns at the same rows)."""
    for table in tables:
        if key_column is None:
            column = table.column(name)
            yield from ((chunk, None) for chunk in _chunks_of(column))
        else:
            for batch in table.to_batches() if isinstance(table, pa.Table) else [table]:
                yield batch.column(name), batch.column(key_column)


def _hf_dataset(data: Any) -> bool:
    datasets = sys.modules.get("datasets")  # a Dataset exists only where datasets was imported
    return datasets is not None and isinstance(data, getattr(datasets, "Dataset", ()))


def _with_key(name: str, key_column: Optional[str]) -> List[str]:
    return [name] if key_column is None else [name, key_column]


def _open_source(data: Any, column: Optional[str], batch_rows: int, key_column: Optional[str] = None) -> _Source:
    """The column of ``data`` to read (see ``from_arrow``), with the key column ``key_column``
    if given, checked before anything is read."""
    if _hf_dataset(data):
        name = _pick(list(data.column_names), column, "the dataset", key_column)
        schema = data.data.schema
        # the Arrow format keeps the rows as Arrow data; iter honours an indices mapping
        # (select, shuffle, filter), and slices the table without copying when there is none
        tables = data.with_format("arrow", columns=_with_key(name, key_column)).iter(batch_size=batch_rows)
        rows: Optional[int] = len(data)
        chunks = _pairs(tables, name, key_column)
    else:
        parquet = sys.modules.get("pyarrow.parquet")
        if parquet is not None and isinstance(data, parquet.ParquetFile):
            schema = data.schema_arrow
            name = _pick(list(schema.names), column, "the Parquet file", key_column)
            # one row group in memory at a time
            groups = (data.read_row_group(k, columns=_with_key(name, key_column)) for k in range(data.num_row_groups))
            rows, chunks = data.metadata.num_rows, _pairs(groups, name, key_column)
        elif isinstance(data, (pa.Table, pa.RecordBatch)):
            schema = data.schema
            name = _pick(list(data.column_names), column, f"the {type(data).__name__}", key_column)
            rows, chunks = data.num_rows, _pairs([data], name, key_column)
        elif isinstance(data, (pa.Array, pa.ChunkedArray)):
            if key_column is not None:
                raise ValueError(f"key_column={key_column!r} picks a column of a table; an array has none (pass "
                                 f"keys=[...], one str per row)")
            return _array_source(data, column)
        else:
            if hasattr(data, "__arrow_c_stream__") and not isinstance(data, pa.RecordBatchReader):
                data = pa.RecordBatchReader.from_stream(data)  # a DataFrame of another library, say
            if not isinstance(data, pa.RecordBatchReader):
                if type(data).__name__ == "DatasetDict":
                    raise TypeError(f"from_arrow reads one split of a DatasetDict (e.g. "
                                    f"data[{next(iter(data), 'train')!r}])")
                raise TypeError(f"from_arrow reads a pyarrow Array, ChunkedArray, RecordBatch, Table, "
                                f"RecordBatchReader or parquet.ParquetFile, or a datasets.Dataset, not a "
                                f"{type(data).__name__}")
            schema = data.schema
            name = _pick(list(schema.names), column, "the RecordBatchReader", key_column)
            rows, chunks = None, _pairs(data, name, key_column)
    if key_column is not None:
        _check_key_type(schema.field(key_column).type, key_column)
    return _Source(name, _layout(schema.field(name).type, name), rows, chunks, key_column)


def _array_source(data: Union[pa.Array, pa.ChunkedArray], column: Optional[str]) -> _Source:
    """A pyarrow array to read (``column``: a field of a struct array)."""
    if column is not None:
        if not pa.types.is_struct(data.type):
            raise ValueError(f"column={column!r} picks a column of a table or a field of a struct array; "
                             f"this is an array of {data.type}")
        names = [data.type.field(k).name for k in range(data.type.num_fields)]
        name = _pick(names, column, "the struct array")
        if data.null_count:
            raise ValueError(f"row {_first_null(data)}: is null")
        data = pa.chunked_array([chunk.field(name) for chunk in _chunks_of(data)], data.type.field(name).type)
    else:
        name = "the array"
    return _Source(column or name, _layout(data.type, column or name), len(data),
                   ((chunk, None) for chunk in _chunks_of(data)))


def _chunks_of(data: Union[pa.Array, pa.ChunkedArray]) -> List[pa.Array]:
    return list(data.chunks) if isinstance(data, pa.ChunkedArray) else [data]


def _first_null(chunk: pa.Array) -> int:
    return int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])


def _batches(source: _Source, batch_rows: int) -> Iterator[Tuple[int, pa.Array, Optional[List[str]]]]:
    """``(first row, chunk, keys)`` for every chunk of ``source``, cut into at most
    ``batch_rows`` rows (slices: nothing is copied); extension and dictionary arrays become
    what they hold. ``keys``: the key of each row (``None`` without a key column)."""
    row = 0
    for chunk, key_chunk in source.chunks:
        chunk = _plain(chunk)
        for begin in range(0, len(chunk), batch_rows):
            cut = len(chunk) > batch_rows
            part = chunk.slice(begin, batch_rows) if cut else chunk
            keys = None
            if key_chunk is not None:
                keys = _key_list(key_chunk.slice(begin, batch_rows) if cut else key_chunk, row, source.key_name)
            yield row, part, keys
            row += len(part)


def _key_list(chunk: pa.Array, first_row: int, name: Optional[str]) -> List[str]:
    """The keys in ``chunk`` (strings, row 0 is row ``first_row``) as ``str``; ``ValueError``
    naming the first null."""
    chunk = _plain(chunk)
    if chunk.null_count:
        raise ValueError(f"row {first_row + _first_null(chunk)}: its key (column {name!r}) is null; every sample "
                         f"needs one")
    return chunk.to_pylist()


def _build_keys(source: _Source,
                keys: Optional[Iterable[str]]) -> Tuple[Optional[Iterable[str]], Optional[_keys.KeysAlongside]]:
    """What a build takes its keys from: ``keys`` as given, or the key column of ``source``
    (through the ``_keys.KeysAlongside`` returned second, to fill with each batch's keys)."""
    if source.key_name is None:
        return keys, None
    alongside = _keys.KeysAlongside()
    return alongside, alongside


def _plain(chunk: pa.Array) -> pa.Array:
    """``chunk`` as an array of its storage type (extension arrays, dictionaries decoded, string
    views as large strings)."""
    if isinstance(chunk, pa.ExtensionArray):
        return _plain(chunk.storage)
    if isinstance(chunk, pa.DictionaryArray):
        return _plain(chunk.dictionary_decode())
    if _is_string_view(chunk.type):
        return chunk.cast(pa.large_string())
    return chunk


# -- the values of a chunk, as numpy views of its buffers ------------------------------------

def _first_null_at(level: pa.Array, begin: int, end: int) -> Optional[int]:
    """The first position among ``[begin, end)`` of ``level`` that is null, or ``None``."""
    part = level.slice(begin, end - begin)
    return begin + _first_null(part) if part.null_count else None


def _leaf_values(leaf: pa.Array, begin: int, end: int, dtype: np.dtype) -> np.ndarray:
    """The values at positions ``[begin, end)`` of the number array ``leaf``: a view of its
    buffer (a copy for booleans, which Arrow stores as bits)."""
    if end <= begin:
        return np.empty(0, dtype=dtype)
    if pa.types.is_boolean(leaf.type):
        return leaf.slice(begin, end - begin).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    start = leaf.offset + begin
    return np.frombuffer(leaf.buffers()[1], dtype=dtype, count=end - begin, offset=start * dtype.itemsize)


def _offsets(level: pa.Array, begin: int, end: int) -> np.ndarray:
    """The offsets of the lists at positions ``[begin, end)`` of ``level`` (``end - begin + 1``
    of them, ``int64``)."""
    width = np.int64 if pa.types.is_large_list(level.type) else np.int32
    raw = np.frombuffer(level.buffers()[1], dtype=width, count=end - begin + 1,
                        offset=(level.offset + begin) * np.dtype(width).itemsize)
    return raw.astype(np.int64)


class _ArrowBatch:
    """Samples of a list column, as ``RaggedFiles.append`` takes a batch (a ``WriteBatch`` of
    ``mmap_ninja._format.ragged``): ``values`` (a view of the Arrow buffer when no cast was
    needed), the elements of each sample, and its size along each axis (``dims``, one array per
    axis)."""

    def __init__(self, values: np.ndarray, counts: np.ndarray, dims: List[np.ndarray]):
        self.values = values
        self.counts = counts
        self.dims = dims

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def flat(self) -> bool:
        return len(self.dims) == 1

    def flat_lengths(self) -> np.ndarray:
        return self.dims[0]

    def shape_batch(self) -> SampleBatch:
        ndims = np.full(len(self), len(self.dims), dtype=np.int64)
        return SampleBatch(np.stack(self.dims, axis=1).reshape(-1), ndims, None, ndims)

    def write_values(self, data: ArrayDir, commit: Commit):
        return data.write_rows(self.values, commit)

    def __len__(self) -> int:
        return len(self.counts)


def _ragged_batch(chunk: pa.Array, first_row: int, layout: _Layout, dtype: np.dtype) -> _ArrowBatch:
    """The samples of ``chunk`` (a list array whose row 0 is row ``first_row``) as a batch of
    ``dtype`` (the column's, or a map's to extend, cast as the map casts values)."""
    n = len(chunk)
    if chunk.null_count:
        raise ValueError(f"row {first_row + _first_null(chunk)}: is null; a map has no nulls (fill or drop them, "
                         f"e.g. with pyarrow.compute.fill_null or drop_null)")
    offsets = _offsets(chunk, 0, n)
    if n and (np.diff(offsets) < 0).any():
        raise ValueError(f"rows {first_row} to {first_row + n - 1}: the list offsets decrease (a damaged array)")
    starts, ends = offsets[:-1], offsets[1:]  # of each sample, in positions of the level below
    dims = [ends - starts]
    level = chunk.values
    for axis, size in enumerate(layout.levels[1:], 1):
        begin, end = (int(starts[0]), int(ends[-1])) if n else (0, 0)
        null = _first_null_at(level, begin, end)
        if null is not None:
            row = int(np.searchsorted(ends, null, side="right"))
            raise ValueError(f"row {first_row + row}: holds a null list; a map has no nulls")
        if size is not None:  # fixed size: positions scale, from where the level starts
            dims.append(np.full(n, size, dtype=np.int64))
            starts, ends = (level.offset + starts) * size, (level.offset + ends) * size
        else:
            inner = _offsets(level, begin, end)
            lengths = np.diff(inner)
            counts = ends - starts
            dim = np.zeros(n, dtype=np.int64)
            filled = counts > 0
            dim[filled] = lengths[starts[filled] - begin]
            bad = np.flatnonzero(lengths != np.repeat(dim, counts))
            if bad.size:
                row = int(np.searchsorted(ends, begin + int(bad[0]), side="right"))
                raise ValueError(f"row {first_row + row}: its lists along axis {axis} have different lengths "
                                 f"({int(dim[row])} and {int(lengths[bad[0]])}); an n-d sample must be rectangular")
            dims.append(dim)
            starts, ends = inner[starts - begin], inner[ends - begin]
        level = level.values
    begin, end = (int(starts[0]), int(ends[-1])) if n else (0, 0)
    null = _first_null_at(level, begin, end)
    if null is not None:
        row = int(np.searchsorted(ends, null, side="right"))
        raise ValueError(f"row {first_row + row}: holds a null value; a map has no nulls")
    values = _leaf_values(level, begin, end, layout.dtype)
    if values.dtype != dtype:
        values = cast_values(values, dtype, f"rows {first_row} to {first_row + n - 1}")
    return _ArrowBatch(values, ends - starts, dims)


def _string_payload(chunk: pa.Array, first_row: int) -> Tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of the strings of ``chunk`` back to back (a view of its buffer) and
    their offsets in them (``int64``, ``len + 1``, from 0)."""
    n = len(chunk)
    if chunk.null_count:
        raise ValueError(f"row {first_row + _first_null(chunk)}: is null; a StringsMmap has no nulls (fill or drop "
                         f"them, e.g. with pyarrow.compute.fill_null or drop_null)")
    try:
        chunk.validate(full=True)  # UTF-8, and offsets within the data
    except pa.ArrowInvalid as exc:
        raise ValueError(f"rows {first_row} to {first_row + n - 1}: {exc}") from None
    buffers = chunk.buffers()
    width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(buffers[1], dtype=width, count=n + 1,
                            offset=chunk.offset * np.dtype(width).itemsize).astype(np.int64)
    begin, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(buffers[2], dtype=np.uint8, count=end - begin, offset=begin) if end > begin else \
        np.empty(0, dtype=np.uint8)
    return data, offsets - begin


def _rows(chunk: pa.Array, first_row: int, layout: _Layout) -> np.ndarray:
    """The rows of ``chunk`` (numbers, or fixed-size lists of them) as an array ``(len, *sizes)``:
    a view of its buffer when it holds no booleans."""
    n = len(chunk)
    level, begin, end, scale = chunk, 0, n, 1  # row r holds the positions [begin + r * scale, ...)
    for size in layout.levels + (None,):
        null = _first_null_at(level, begin, end)
        if null is not None:
            row = (null - begin) // scale
            raise ValueError(f"row {first_row + row}: is null or holds a null; a map has no nulls")
        if size is None:
            break
        begin, end, scale = (level.offset + begin) * size, (level.offset + end) * size, scale * size
        level = level.values
    return _leaf_values(level, begin, end, layout.dtype).reshape(n, *layout.levels)


# -- writing -------------------------------------------------------------------------------------

def _append_strings(files: StringsFiles, chunk: pa.Array, first_row: int, commit: Commit,
                    payload: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> None:
    """Add the strings of ``chunk`` to ``commit``: Arrow's UTF-8 bytes written as they are, its
    offsets shifted into ``starts`` and ``ends`` (a compressed map takes them one by one).
    ``payload``: what ``_string_payload`` gave of ``chunk``, if it was called already."""
    if not len(chunk):
        return
    payload, offsets = payload or _string_payload(chunk, first_row)  # nulls and UTF-8 checked
    if files.codec.compressed:
        files.append(chunk.to_pylist(), commit)  # each string compressed on its own
        return
    n = files.n
    at = files.append_bytes(memoryview(payload), commit)
    ends_meta = files.ends.write_rows(at + offsets[1:], commit, n)
    starts_meta = files.starts.write_rows(at + offsets[:-1], commit, n)
    files.ends.commit_rows(ends_meta, commit)
    files.starts.commit_rows(starts_meta, commit)


@dataclass
class _StringRows:
    """A batch of a string column: ``chunk``, whose row 0 is row ``first_row``."""

    first_row: int
    chunk: pa.Array

    def __len__(self) -> int:
        return len(self.chunk)


def _build_ragged(out_dir: Path, source: _Source, batch_rows: int, bar, keys: Optional[Iterable[str]]) -> RaggedMmap:
    dtype = source.layout.dtype
    keys, alongside = _build_keys(source, keys)

    def batches() -> Iterator[_ArrowBatch]:
        for row, chunk, chunk_keys in _batches(source, batch_rows):
            batch = _ragged_batch(chunk, row, source.layout, dtype)
            if alongside is not None:
                alongside.pending.extend(chunk_keys)
            yield batch
            bar.update(len(batch))

    return RaggedMmap.from_batches(out_dir, batches(), dtype, keys=keys, mode="r+")


def _build_strings(out_dir: Path, source: _Source, batch_rows: int, bar, zstd_level: Optional[int],
                   keys: Optional[Iterable[str]]) -> StringsMmap:
    keys, alongside = _build_keys(source, keys)

    def batches() -> Iterator[_StringRows]:
        for row, chunk, chunk_keys in _batches(source, batch_rows):
            if alongside is not None:
                alongside.pending.extend(chunk_keys)
            yield _StringRows(row, chunk)
            bar.update(len(chunk))

    def create(build: Path, batch: Any) -> StringsFiles:
        files, commit = StringsFiles(build, Codec(zstd_level)), Commit(durable=False)
        files.create(commit)
        if len(batch):
            _append_strings(files, batch.chunk, batch.first_row, commit)
        commit.finish()
        return files

    def extend(files: StringsFiles, batch: _StringRows) -> None:
        commit = Commit(durable=False)
        _append_strings(files, batch.chunk, batch.first_row, commit)
        commit.finish()

    return StringsMmap(build_aside(out_dir, batches(), create, extend, keys), mode="r+b")


def _build_numpy(out_dir: Path, source: _Source, batch_rows: int, bar, keys: Optional[Iterable[str]]) -> np.memmap:
    keys, alongside = _build_keys(source, keys)
    with building(out_dir) as build:
        feed = None if keys is None else _keys.KeyFeed(build, keys)
        array = ArrayDir(build)
        for row, chunk, chunk_keys in _batches(source, batch_rows):
            if alongside is not None:
                alongside.pending.extend(chunk_keys)
            if feed is not None:
                feed.take(len(chunk))  # the keys first, as every build writes them
            commit = Commit(durable=False)  # flushed whole before the swap
            array.commit_rows(array.write_rows(_rows(chunk, row, source.layout), commit), commit)
            commit.finish()
            bar.update(len(chunk))
        if array.meta is None:  # no rows: the column's type still gives dtype and row shape
            commit = Commit(durable=False)
            array.commit_rows(array.write_rows(np.empty((0, *source.layout.levels), source.layout.dtype), commit),
                              commit)
            commit.finish()
        if feed is not None:
            feed.finish(array.rows)
        flush_tree(build)
    return np_ninja.open_existing(out_dir, "r+")


def from_arrow(out_dir: PathLike, data: Any, column: Optional[str] = None, verbose: bool = False, *,
               batch_size: int = BATCH_ROWS, zstd_level: Optional[int] = None, keys: Optional[Iterable[str]] = None,
               key_column: Optional[str] = None):
    """Write a column of Arrow data as a new map at ``out_dir`` and open it: a ``RaggedMmap``
    (lists of numbers; nested or fixed-size inner lists for n-d samples, opened ``"r+"``), a
    ``StringsMmap`` (strings, ``"r+b"``) or a numpy map (numbers and fixed-size lists of numbers,
    a ``np.memmap`` opened ``"r+"``). Data of several columns with no ``column`` given makes a
    ``TableMmap`` of every column (but ``key_column``), each as its own map would be.

    ``data``: a pyarrow ``Array`` or ``ChunkedArray`` (``column`` then picks a field of a struct
    array), ``RecordBatch``, ``Table``, ``RecordBatchReader``, ``pyarrow.parquet.ParquetFile``
    (read one row group at a time), a Hugging Face ``datasets.Dataset`` (its rows in the order of
    its indices mapping, as ``select``/``shuffle``/``filter`` leave it), or an object with
    ``__arrow_c_stream__``. ``column`` names the column to write of data with several (without
    it, every column is written, as a ``TableMmap``). The map's dtype is that of the column's
    numbers.

    Keys (``m.index_of``, ``m.by_key``): ``key_column`` names a string column of the same data
    holding each row's key (``column`` may then be left out when there is one other column), or
    ``keys`` gives one ``str`` per row, consumed alongside, as for every build. Keys are unique:
    a repeated or null key raises ``ValueError`` naming it.

    The rows are read and committed ``batch_size`` at a time, from Arrow's buffers: no row
    becomes a Python object (but in a compressed strings map, ``zstd_level``). The map is built
    beside ``out_dir`` and swapped in whole: on any error (a null, which raises ``ValueError``
    naming its row; an n-d sample that is not rectangular; a type that no map holds,
    ``TypeError``) the map at ``out_dir`` stays as it was and nothing is left behind. ``verbose``
    shows a progress bar of rows.
    """
    check_options(verbose)
    check_positive(batch_size=batch_size)
    out_dir = as_dir(out_dir)
    if column is None:
        parquet = sys.modules.get("pyarrow.parquet")
        if (hasattr(data, "__arrow_c_stream__") and not _hf_dataset(data)
                and not (parquet is not None and isinstance(data, parquet.ParquetFile))
                and not isinstance(data, (pa.RecordBatchReader, pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray))):
            data = pa.RecordBatchReader.from_stream(data)  # exported once, read by whichever path follows
        whole = _all_columns(data, int(batch_size))
        if whole is not None and len([name for name in whole[0].names if name != key_column]) > 1:
            if zstd_level is not None:
                raise ValueError("zstd_level compresses one strings map; pass column= to write one column")
            return _build_table(out_dir, whole, int(batch_size), verbose, keys, key_column)
    source = _open_source(data, column, int(batch_size), key_column)
    made = KINDS[source.layout.kind]
    if zstd_level is not None and not made.text:
        raise ValueError(f"zstd_level compresses strings; {source.name} makes a {source.layout.kind} map")
    if keys is not None and key_column is not None:
        raise TypeError("from_arrow takes keys= or key_column=, not both")
    with progress(source.rows, verbose, desc=f"Writing {out_dir.name}") as bar:
        if made.rows:
            return _build_numpy(out_dir, source, int(batch_size), bar, keys)
        if made.text:
            return _build_strings(out_dir, source, int(batch_size), bar, zstd_level, keys)
        return _build_ragged(out_dir, source, int(batch_size), bar, keys)


def _all_columns(data: Any, batch_rows: int) -> Optional[Tuple[pa.Schema, Optional[int], Iterator[Any]]]:
    """``(schema, rows, tables)`` of data of named columns (``rows`` ``None`` when not known;
    ``tables``: its rows as tables or record batches, in order, at most ``batch_rows`` in
    memory at a time where the data allows), or ``None`` for an array."""
    if _hf_dataset(data):
        return data.data.schema, len(data), data.with_format("arrow").iter(batch_size=batch_rows)
    parquet = sys.modules.get("pyarrow.parquet")
    if parquet is not None and isinstance(data, parquet.ParquetFile):
        groups = (data.read_row_group(k) for k in range(data.num_row_groups))
        return data.schema_arrow, data.metadata.num_rows, groups
    if isinstance(data, pa.Table):
        return data.schema, data.num_rows, iter(data.to_batches(max_chunksize=batch_rows))
    if isinstance(data, pa.RecordBatch):
        return data.schema, data.num_rows, iter([data])
    if isinstance(data, (pa.Array, pa.ChunkedArray)):
        return None
    if hasattr(data, "__arrow_c_stream__") and not isinstance(data, pa.RecordBatchReader):
        data = pa.RecordBatchReader.from_stream(data)
    if isinstance(data, pa.RecordBatchReader):
        return data.schema, None, iter(data)
    return None  # from_arrow's single-column path names what it takes


def _build_table(out_dir: Path, whole: Tuple[pa.Schema, Optional[int], Iterator[Any]], batch_rows: int,
                 verbose: bool, keys: Optional[Iterable[str]], key_column: Optional[str]):
    """A ``TableMmap`` at ``out_dir`` of every column of ``whole`` (see ``_all_columns``) but
    ``key_column``, which gives the keys: each column written as ``from_arrow`` writes it alone,
    batch by batch, in a table built aside and swapped in whole."""
    from ._format.table import column_dir, finish_build, new_schema
    from .table import TableMmap

    schema, rows, tables = whole
    if keys is not None and key_column is not None:
        raise TypeError("from_arrow takes keys= or key_column=, not both")
    if key_column is not None:
        if key_column not in schema.names:
            raise ValueError(f"the data has no column {key_column!r} (key_column); its columns: {schema.names}")
        _check_key_type(schema.field(key_column).type, key_column)
    names = [name for name in schema.names if name != key_column]
    table_schema = new_schema([(name, _layout(schema.field(name).type, name).kind) for name in names])
    key_list = None if keys is None else list(keys)
    with building(out_dir) as build, progress(rows, verbose, desc=f"Writing {out_dir.name}") as bar:
        written = 0
        found_keys: List[str] = []
        for table in tables:
            if table.num_rows == 0:
                continue
            for name in names:
                if written == 0:
                    from_arrow(column_dir(build, name), table, column=name, batch_size=batch_rows)
                else:
                    extend_from_arrow(column_dir(build, name), table, column=name, batch_size=batch_rows)
            if key_column is not None:
                key_chunk = table.column(key_column)
                if isinstance(key_chunk, pa.ChunkedArray):
                    key_chunk = key_chunk.combine_chunks()
                found_keys += _key_list(key_chunk, written, key_column)
            written += table.num_rows
            bar.update(table.num_rows)
        if written == 0:
            for name in names:
                from_arrow(column_dir(build, name), schema.empty_table(), column=name)
        finish_build(build, table_schema.with_length(written), found_keys if key_column is not None else key_list)
    return TableMmap(out_dir)


def map_kind(data: Any, column: Optional[str] = None) -> str:
    """The kind of map that ``from_arrow(out_dir, data, column)`` makes: ``"ragged"``,
    ``"string"`` or ``"numpy"`` (with ``from_arrow``'s errors for data it cannot store). Reads
    no rows."""
    return _open_source(data, column, BATCH_ROWS).layout.kind


class _GivenKeys:
    """Keys given as ``keys=`` to ``extend_from_arrow``, taken batch by batch."""

    def __init__(self, keys: Iterable[str], rows: Optional[int]):
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys= takes one str per row (a list, say), not one str")
        if rows is not None and hasattr(keys, "__len__") and len(keys) != rows:  # type: ignore[arg-type]
            raise ValueError(f"{len(keys)} keys for {rows} rows: one key is needed per row")  # type: ignore[arg-type]
        self.iterator = iter(keys)

    def take(self, n: int, first_row: int) -> List[str]:
        taken = list(itertools.islice(self.iterator, n))
        if len(taken) < n:
            appended = f"rows 0 to {first_row - 1} were appended" if first_row else "nothing was appended"
            raise ValueError(f"keys ran out at row {first_row + len(taken)}: one key is needed per row "
                             f"({appended})")
        return taken

    def finish(self) -> None:
        extra = next(self.iterator, _NOTHING)
        if extra is not _NOTHING:
            raise ValueError(f"more keys than rows: the key {extra!r} has no row (every row was appended with its "
                             f"key)")


_NOTHING = object()


def extend_from_arrow(out_dir: PathLike, data: Any, column: Optional[str] = None, verbose: bool = False, *,
                      batch_size: int = BATCH_ROWS, keys: Optional[Iterable[str]] = None,
                      key_column: Optional[str] = None):
    """Append a column of Arrow data (anything ``from_arrow`` reads) to the map at ``out_dir``,
    one commit per ``batch_size`` rows, and return the map opened anew (``from_arrow`` where
    there is no map yet). The values are cast to the map's dtype as ``extend`` casts them
    (``TypeError`` for values that do not fit). A map whose samples have keys needs one per new
    row, from ``key_column`` or ``keys`` (as in ``from_arrow``), none of them a key already
    (``ValueError`` naming it). An error leaves the map as the last commit before it left it:
    the batches before the one that failed are appended, with their keys."""
    check_options(verbose)
    check_positive(batch_size=batch_size)
    out_dir = as_dir(out_dir)
    if keys is not None and key_column is not None:
        raise TypeError("extend_from_arrow takes keys= or key_column=, not both")
    kind = map_type(out_dir)
    if kind is None:
        return from_arrow(out_dir, data, column, verbose, batch_size=batch_size, keys=keys, key_column=key_column)
    source = _open_source(data, column, int(batch_size), key_column)
    if kind != source.layout.kind:
        raise ValueError(f"{out_dir} holds a {display_name(kind)} map; {source.name} ({source.layout.kind} "
                         f"data) makes a {display_name(source.layout.kind)} map")
    registered = KINDS[kind]
    given = None if keys is None else _GivenKeys(keys, source.rows)
    with progress(source.rows, verbose, desc=f"Extending {out_dir.name}") as bar:
        for row, chunk, chunk_keys in _batches(source, int(batch_size)):
            if given is not None:
                chunk_keys = given.take(len(chunk), row)
            if not len(chunk):
                continue
            if registered.rows:
                np_ninja.extend_dir(out_dir, _rows(chunk, row, source.layout), keys=chunk_keys)
            else:
                with WriterLock(out_dir) as lock:
                    files = registered.read_files(out_dir)
                    encoded = _keys.check_extension(out_dir, chunk_keys, files.n)
                    if not registered.text:  # the rows checked (nulls, casts) before their keys are written
                        dtype = source.layout.dtype if files.dtype is None else files.dtype
                        batch = _ragged_batch(chunk, row, source.layout, dtype)
                    else:
                        payload = _string_payload(chunk, row)
                    if chunk_keys is not None:  # committed first: a map never has samples without keys
                        _keys.write_keys(out_dir, chunk_keys, files.n, encoded=encoded)
                    if not registered.text:
                        files.commit_batch(batch, lock)
                    else:
                        commit = Commit()
                        _append_strings(files, chunk, row, commit, payload)
                        commit.finish()
            bar.update(len(chunk))
        if given is not None:
            given.finish()
    return registered.open(out_dir)


# -- maps as Arrow arrays ------------------------------------------------------------------------

def _value_array(values: np.ndarray) -> pa.Array:
    """A 1-d numpy array as an Arrow array over the same memory (a copy for booleans, which
    Arrow stores as bits); the Arrow buffer keeps ``values`` (and its mapping) alive."""
    if values.dtype == np.bool_:
        return pa.array(values, type=pa.bool_())
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _nest(values: pa.Array, sizes: Tuple[int, ...]) -> pa.Array:
    """``values`` grouped into fixed-size lists, innermost axis last in ``sizes``."""
    if 0 in sizes:  # pyarrow refuses (or worse) fixed-size lists of size 0
        raise ValueError(f"samples of shape (..., {', '.join(map(str, sizes))}) have an axis of size 0 past the "
                         f"first, which an Arrow fixed-size list cannot hold")
    for size in reversed(sizes):
        values = pa.FixedSizeListArray.from_arrays(values, int(size))
    return values


def _back_to_back(starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether the items lie one after the other in the data, in order."""
    return bool(len(starts) == 0 or (np.all(starts[1:] == ends[:-1]) and np.all(ends >= starts)))


def _ragged_to_arrow(m: RaggedMmap) -> pa.Array:
    n = len(m)
    dtype = m.dtype if m.dtype is not None else np.dtype(np.float64)
    if n == 0:
        return pa.LargeListArray.from_arrays(pa.array([0], pa.int64()), _value_array(np.empty(0, dtype)))
    starts, ends = m.starts, m.ends
    counts = ends - starts
    if m.shapes_are_flat:
        lengths = np.asarray(m.shapes).reshape(-1)
        scalars = np.flatnonzero(lengths != counts)
        if scalars.size:
            raise ValueError(f"{m.out_dir}: sample {int(scalars[0])} is a scalar; an Arrow list array holds lists")
        trailing: Tuple[int, ...] = ()
        first = counts
    else:
        shapes = m.shapes.take(slice(None))
        ranks = np.diff(shapes.offsets)
        if (ranks != ranks[0]).any() or ranks[0] == 0:
            i = int(np.flatnonzero(ranks != ranks[0])[0]) if (ranks != ranks[0]).any() else 0
            raise ValueError(f"{m.out_dir}: sample {i} has {int(ranks[i])} axes and sample 0 {int(ranks[0])}: an "
                             f"Arrow list array holds samples of one rank, with at least one axis")
        dims = shapes.values.reshape(n, int(ranks[0]))
        filled = np.flatnonzero(dims[:, 0] > 0)  # a sample with no rows fits any trailing shape
        ref = int(filled[0]) if filled.size else 0
        other = filled[(dims[filled, 1:] != dims[ref, 1:]).any(axis=1)]
        if other.size:
            i = int(other[0])
            raise ValueError(f"{m.out_dir}: sample {i} has shape {tuple(dims[i].tolist())} and sample {ref} "
                             f"{tuple(dims[ref].tolist())}: an Arrow array of lists of fixed-size lists needs "
                             f"samples that differ only along their first axis")
        trailing = tuple(int(size) for size in dims[ref, 1:])
        first = dims[:, 0].astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(first, out=offsets[1:])
    if _back_to_back(starts, ends):  # the values as the file holds them: no copy
        values = m.memmap[int(starts[0]):int(ends[-1])]
    else:  # samples replaced by m[i] = v lie elsewhere: gathered in order, once
        values = m.take(slice(None)).values
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), _nest(_value_array(values), trailing))


def _strings_to_arrow(m: StringsMmap) -> pa.Array:
    n = len(m)
    if n == 0:
        return pa.array([], pa.large_string())
    starts, ends = m.starts, m.ends
    if m.codec.compressed or not _back_to_back(starts, ends):  # one copy, of the strings' UTF-8 bytes
        raws = []
        lengths = np.empty(n, dtype=np.int64)
        for begin in range(0, n, BATCH_ROWS):
            chunk = m.get_bytes(slice(begin, begin + BATCH_ROWS))
            lengths[begin:begin + len(chunk)] = [len(raw) for raw in chunk]
            raws.append(b"".join(chunk))
        data = pa.py_buffer(b"".join(raws))
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
    else:
        first = int(starts[0])
        data = pa.py_buffer(m.buffer).slice(first, int(ends[-1]) - first)
        offsets = np.empty(n + 1, dtype=np.int64)
        offsets[:n] = starts
        offsets[n] = ends[-1]
        offsets -= first
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), data)


def _numpy_to_arrow(memmap: np.ndarray) -> pa.Array:
    if memmap.ndim == 0:
        raise ValueError("a 0-d array has no rows to make an Arrow array of")
    values = memmap if memmap.flags.c_contiguous else np.ascontiguousarray(memmap)  # Fortran order: one copy
    return _nest(_value_array(values.reshape(-1)), memmap.shape[1:])


def to_arrow(m: Any) -> Union[pa.Array, pa.ChunkedArray]:
    """The samples of a map as an Arrow array, over the map's mapped files wherever they can
    be (the array keeps them mapped after the map is closed):

    - a ``RaggedMmap``: a ``pa.LargeListArray``, of the values for 1-d samples, of fixed-size
      lists (one per trailing axis) for n-d samples that share their shape past the first axis
      (``ValueError`` otherwise, and for scalar samples). The values are not copied when the
      samples lie back to back in the data file, as a map built and extended holds them; after
      ``m[i] = v`` they are gathered once. The offsets (``int64``, ``len + 1``) are built.
    - a ``StringsMmap``: a ``pa.LargeStringArray`` over ``data.ninja`` (copied once when the
      map is compressed or a string was replaced);
    - a numpy map (``np.memmap``, or any array): its rows, as numbers, or fixed-size lists of
      them for rows of more than one value (copied only when in Fortran order);
    - a ``ShardedMmap``: a ``pa.ChunkedArray``, one chunk per part;
    - a ``TableMmap``: a ``pa.Table`` of its columns, each as above.

    Booleans are copied (Arrow stores them as bits).
    """
    if isinstance(m, RaggedMmap):
        return _ragged_to_arrow(m)
    if isinstance(m, StringsMmap):
        return _strings_to_arrow(m)
    if isinstance(m, np.ndarray):
        return _numpy_to_arrow(m)
    sharded = sys.modules.get("mmap_ninja.sharded")
    if sharded is not None and isinstance(m, sharded.ShardedMmap):
        return _sharded_to_arrow(m)
    table = sys.modules.get("mmap_ninja.table")
    if table is not None and isinstance(m, table.TableMmap):
        return _table_to_arrow(m)
    raise TypeError(f"to_arrow takes a RaggedMmap, StringsMmap, numpy map, ShardedMmap or TableMmap, not a "
                    f"{type(m).__name__}")


def _table_to_arrow(t: Any) -> pa.Table:
    """A ``TableMmap`` as a ``pa.Table``: each column as ``to_arrow`` gives its map, cut to the
    table's length."""
    columns = []
    for name in t.columns:
        column = t[name]
        if isinstance(column, list):  # a column with no rows yet
            kind = KINDS[t.schema[name]]
            columns.append(pa.array([], pa.large_string() if kind.text else pa.float64() if kind.rows else
                                    pa.large_list(pa.float64())))
            continue
        array = to_arrow(column)
        columns.append(array if len(array) == len(t) else array.slice(0, len(t)))
    return pa.table(columns, names=t.columns)


def _sharded_to_arrow(m: Any) -> pa.ChunkedArray:
    bounds = m.part_bounds
    chunks = []
    for k in range(len(bounds) - 1):
        length = int(bounds[k + 1] - bounds[k])
        part = m.part(k)
        chunk = to_arrow(part[:length] if isinstance(part, np.ndarray) else part)
        chunks.append(chunk if len(chunk) == length else chunk.slice(0, length))
    if chunks:
        try:
            return pa.chunked_array(chunks)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"{m.out_dir}: its parts make Arrow arrays of different types ({exc})") from None
    dtype = pa.from_numpy_dtype(m.dtype if m.dtype is not None else np.dtype(np.float64))
    kind = KINDS[m.kind]
    return pa.chunked_array([], pa.large_string() if kind.text else dtype if kind.rows else pa.large_list(dtype))
