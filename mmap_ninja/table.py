"""Tables: several fields per sample (an image, its label and its caption), one map per column,
committed, read and pickled as one.

A ``TableMmap`` is a folder holding ``table.ninja`` (the columns, their kinds and the committed
number of rows) and ``columns/<name>/``, each a plain map of its kind (``"numpy"``: one
fixed-shape row per sample; ``"ragged"``: arrays of any shape; ``"string"``: ``str``), so
mmap_ninja 0.9.0 opens any column on its own. Keys, when the rows have them, are the table's.

Every write of rows is one commit for all columns: the columns are appended to first, and the
new length in ``table.ninja`` makes the rows visible at once. A reader, or a process killed at
any moment, sees every column at one committed length (FORMAT.md, section 16).

    >>> t = TableMmap.from_columns(path, {"image": images, "label": np.array(labels), "caption": captions})
    >>> t[3]                      # {"image": array(h, w, 3), "label": 7, "caption": "..."}
    >>> t[[5, 1, 9]]              # {"image": [3 arrays], "label": array(3,), "caption": [3 str]}
    >>> t.extend([{"image": im, "label": 1, "caption": "a cat"}])
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _core, _keys, _meta
from . import numpy as np_ninja
from ._format.build import building
from ._format.kinds import KINDS
from ._format.kinds import concatenate as concatenate_maps
from ._format.table import (
    COLUMNS,
    SCHEMA,
    TYPE,
    Schema,
    column_dir,
    column_values,
    finish_build,
    infer_kind,
    kind_name,
    new_schema,
    read_schema,
    roll_back,
    split_rows,
    write_schema,
)
from ._format.table import verify_dir as _verify_table
from ._format.verify import VERIFY_LIMIT, Report, check_limit
from ._iteration import in_batches, known_length, progress
from ._lifecycle import OpenState
from ._storage import ChangedWhileOpening, Commit, Replacement, WriterLock, link_map
from .base import Allocator, PathLike, as_dir, check_positive, map_type
from .parallel import indexable_batches

__all__ = ["TableMmap", "TYPE"]

Row = Mapping[str, Any]
Columns = Mapping[str, Any]
WrapperFns = Optional[Mapping[str, Callable[[Any], Any]]]


# Times a table's columns are read again when one fails to open while table.ninja stays the same:
# a writer may be cutting back rows a killed writer left (its length files are replaced one by one).
_COLUMN_ATTEMPTS = 5


def _reopen(out_dir: str, options: dict) -> "TableMmap":
    return TableMmap(out_dir, **options)


class _State:
    """What a table object reads, replaced whole by ``refresh``: the schema, each column's map
    (``None`` for a column with no rows yet; a numpy column as its rows ``[:length]``) and the
    keys."""

    def __init__(self, schema: Schema, columns: Dict[str, Any], keys: Optional[_keys.KeyIndex]):
        self.schema = schema
        self.columns = columns
        self.keys = keys


class TableMmap(OpenState, _keys.KeyLookups):
    """A table of ``len(t)`` rows and the columns ``t.columns`` (see the module docstring).

    ``mode``: ``"r"`` (rows may be added, not changed) or ``"r+"`` (``t[i] = row`` too).
    ``wrapper_fn``: ``{column: fn}``, applied to each value of that column read. ``columns``:
    read only these (as ``select``)."""

    MODES = ("r", "r+")

    def __init__(self, out_dir: PathLike, mode: str = "r", wrapper_fn: WrapperFns = None,
                 columns: Optional[Sequence[str]] = None):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.out_dir = as_dir(out_dir)
        self.mode = mode
        if wrapper_fn is not None and not isinstance(wrapper_fn, Mapping):
            raise TypeError("the wrapper_fn of a table is a dict {column: fn}")
        self._wrappers = dict(wrapper_fn or {})
        self._selected = None if columns is None else list(columns)
        if isinstance(columns, str):
            raise TypeError("columns= takes a list of column names, not one str")
        self._state: Optional[_State] = None
        self.refresh()
        unknown = sorted(set(self._wrappers) - set(self._state.schema.names))
        if unknown:
            raise KeyError(f"wrapper_fn names {unknown[0]!r}, not a column of {self.out_dir} "
                           f"(its columns: {self._state.schema.names})")

    # -- opening ---------------------------------------------------------------------------

    def _open_state(self) -> _State:
        type_name = map_type(self.out_dir, must_exist=True)
        if type_name != TYPE:
            raise ValueError(f"{self.out_dir} holds a {type_name!r} map, not a table" if type_name else
                             f"{self.out_dir} is not a mmap_ninja map: it has no {_meta.TYPE}")
        schema = read_schema(self.out_dir)
        for attempt in range(_COLUMN_ATTEMPTS):
            try:
                return self._open_columns(schema)
            except (OSError, ValueError):
                # a column dropped or replaced since table.ninja was read: read the table again
                if read_schema(self.out_dir) != schema:
                    raise ChangedWhileOpening(f"{self.out_dir / SCHEMA} changed while the table was opened") from None
                if attempt == _COLUMN_ATTEMPTS - 1:
                    raise  # the same error each time: the column is damaged
                time.sleep(0.001 * 2 ** attempt)  # a column cut back to the table's length meanwhile
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_columns(self, schema: Schema) -> _State:
        names = schema.names if self._selected is None else self._selected
        for name in names:
            if name not in schema.kinds:
                raise KeyError(f"{name!r} is not a column of {self.out_dir} (its columns: {schema.names})")
        columns = {}
        for name in names:
            kind = schema.kinds[name]
            path = column_dir(self.out_dir, name)
            found = map_type(path)
            if found is None:
                if schema.length:
                    raise ValueError(f"{path}: column {name!r} is missing; {self.out_dir / SCHEMA} says "
                                     f"{schema.length} rows")
                columns[name] = None
                continue
            if found != kind:
                raise ValueError(f"{path / _meta.TYPE}: column {name!r} holds a {found!r} map, "
                                 f"{self.out_dir / SCHEMA} says {kind!r}")
            column = KINDS[kind].open(path, None, "r")
            if len(column) < schema.length:
                raise ValueError(f"{path}: column {name!r} holds {len(column)} rows, {self.out_dir / SCHEMA} "
                                 f"says {schema.length}")
            if KINDS[kind].rows and len(column) > schema.length:
                column = column[:schema.length]
            columns[name] = column
        return _State(schema, columns, _keys.KeyIndex.open(self.out_dir))

    def __reduce__(self):
        # a table pickles as its path and options, and reopens where it is unpickled
        return _reopen, (str(self.out_dir), {"mode": self.mode, "wrapper_fn": self._wrappers or None,
                                             "columns": self._selected})

    def __repr__(self) -> str:
        state = self._state
        if state is None:
            return f"TableMmap({str(self.out_dir)!r}, closed)"
        kinds = ", ".join(f"{name}: {state.schema.kinds[name]}" for name in state.columns)
        return f"TableMmap({str(self.out_dir)!r}, {state.schema.length} rows, {{{kinds}}})"

    # -- what it holds -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._live().schema.length

    @property
    def columns(self) -> List[str]:
        """The names of the columns read, in the table's order."""
        return list(self._live().columns)

    @property
    def schema(self) -> Dict[str, str]:
        """``{column: kind}`` of the columns read (kinds: ``"numpy"``, ``"ragged"``, ``"string"``)."""
        state = self._live()
        return {name: state.schema.kinds[name] for name in state.columns}

    @property
    def classes(self) -> Dict[str, List[str]]:
        """``{column: names}`` of the columns of integer labels that name their classes (label
        ``k`` is ``names[k]``), as a build's ``classes=`` gave them."""
        return self._live().schema.class_names

    def _keys_and_length(self) -> Tuple[Optional[_keys.KeyIndex], int]:
        state = self._live()
        return state.keys, state.schema.length

    def select(self, columns: Sequence[str]) -> "TableMmap":
        """The table reading only ``columns`` (a list of names), in that order."""
        if isinstance(columns, str):
            raise TypeError("select takes a list of column names, not one str")
        wrappers = {name: fn for name, fn in self._wrappers.items() if name in columns}
        return TableMmap(self.out_dir, self.mode, wrappers, list(columns))

    # -- reading -------------------------------------------------------------------------------

    def _column(self, state: _State, name: str) -> Any:
        try:
            return state.columns[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a column of {self.out_dir} read here (its columns: "
                           f"{list(state.columns)})") from None

    def __getitem__(self, item: Any) -> Any:
        """``t["label"]``: the column's map (a ``np.memmap`` of its rows for a numpy column, a
        ``RaggedMmap``, a ``StringsMmap``). ``t[i]``: row ``i`` as a dict. ``t[indices]`` (a
        sequence, array, boolean mask or slice): a dict of batches, as ``__getitems__``."""
        state = self._live()
        if isinstance(item, str):
            column = self._column(state, item)
            return [] if column is None else column
        if isinstance(item, (list, tuple)) and item and all(isinstance(name, str) for name in item):
            return self.select(list(item))
        index = _core.normalize_index(item, state.schema.length)
        if type(index) is int:
            return {name: self._wrap(name, column[index]) for name, column in state.columns.items()}
        return self._batch(state, index)

    def __getitems__(self, indices: Sequence[int]) -> Dict[str, Any]:
        """The rows at ``indices`` as one dict of batches: a numpy column's as one array of shape
        ``(len(indices), *row_shape)`` (a copy), a ragged column's as a list of arrays (read-only
        views of the mapped column: nothing is copied until they are used; ``take`` copies them
        into one buffer), a strings column's as a list of ``str`` (each value through the
        column's ``wrapper_fn``, which makes a list of any column). Each column is read by its
        compiled reader in one pass. ``torch.utils.data.DataLoader`` fetches whole batches with
        this method; ``mmap_ninja.pytorch.collate`` turns them into tensors with one copy."""
        state = self._live()
        return self._batch(state, _core.batch_index(indices, state.schema.length))

    def _batch(self, state: _State, index: np.ndarray) -> Dict[str, Any]:
        batch = {}
        for name, column in state.columns.items():
            if column is None:
                values: Any = []
            elif KINDS[state.schema.kinds[name]].rows:
                values = np_ninja.take(column, index)
            elif KINDS[state.schema.kinds[name]].text:
                values = column.__getitems__(index)
            else:
                values = column[index]  # views of the mapped column: nothing copied
            fn = self._wrappers.get(name)
            batch[name] = values if fn is None else [fn(value) for value in values]
        return batch

    def take(self, indices: Any, *, alloc: Optional[Allocator] = None) -> Dict[str, Any]:
        """The rows at ``indices`` as a dict of each column's compiled gather, with no
        ``wrapper_fn``: an array for a numpy column, a ``RaggedBatch`` (one buffer) for a ragged
        column, a list of ``str`` for a strings column. ``alloc(shape, dtype)``, when given,
        makes the arrays of the numpy and ragged columns (in shared memory, or a
        ``mmap_ninja.pytorch.BufferPool`` of batches already gone, say)."""
        state = self._live()
        index = _core.batch_index(indices, state.schema.length)
        out = {}
        for name, column in state.columns.items():
            kind = KINDS[state.schema.kinds[name]]
            if column is None:
                out[name] = []
            elif kind.rows:
                rows = None if alloc is None else alloc((len(index), *column.shape[1:]), column.dtype)
                out[name] = np_ninja.take(column, index, out=rows)
            elif kind.text:
                out[name] = column.__getitems__(index)
            else:
                out[name] = column.take(index, alloc=alloc)
        return out

    def _wrap(self, name: str, value: Any) -> Any:
        fn = self._wrappers.get(name)
        return value if fn is None else fn(value)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def prefetch(self, indices: Any) -> None:
        """Start reading the rows at ``indices`` of every column read from disk into the page
        cache in the background, and return at once."""
        state = self._live()
        index = _core.batch_index(indices, state.schema.length)
        for name, column in state.columns.items():
            if column is None or not len(index):
                continue
            if KINDS[state.schema.kinds[name]].rows:
                np_ninja.prefetch(column, index)
            else:
                column.prefetch(index)

    @staticmethod
    def verify_dir(out_dir: PathLike, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
        """``verify`` of the table at ``out_dir``, without opening it (damage is reported)."""
        return _verify_table(as_dir(out_dir), check_limit(limit), deep)

    def verify(self, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
        """Check the whole table (every column, as ``verify`` checks a map of its kind; a column
        holding fewer rows than the table is damaged) and return what is wrong, one line per
        problem naming the file; damage is reported, never raised."""
        return _verify_table(self.out_dir, check_limit(limit), deep)

    # -- writing ----------------------------------------------------------------------------

    def append(self, row: Row, key: Optional[str] = None, *, keys: Optional[Sequence[str]] = None) -> None:
        """Append one row (a dict with a value for every column), with its ``key`` in a table
        whose rows have keys."""
        if key is not None and keys is not None:
            raise TypeError("append takes key= or keys=, not both")
        self.extend([row], keys=[key] if key is not None else keys)

    def extend(self, rows: Iterable[Row], verbose: bool = False, *, keys: Optional[Iterable[str]] = None) -> None:
        """Append ``rows`` (dicts with a value for every column, and no other field) in one
        commit of every column. A row that misses a field, has one the table has not, or holds a
        value its column cannot store is refused, naming the row and the field, and nothing is
        written. ``keys``: one new ``str`` per row, needed when the rows have keys."""
        rows = list(rows)
        schema = read_schema(self.out_dir)
        columns = split_rows(rows, schema.names, range(schema.length, schema.length + len(rows)))
        self.extend_columns(columns, verbose, keys=keys)

    def extend_columns(self, columns: Columns, verbose: bool = False, *, keys: Optional[Iterable[str]] = None) -> None:
        """Append rows given column by column, ``{"image": [...], "label": array, ...}`` (every
        column, each with as many values), in one commit of every column (see ``extend``)."""
        keys = None if keys is None else _listed(keys)
        with _writing(self.out_dir) as schema:
            count = _column_count(columns, schema.names)
            if keys is not None and len(keys) != count:
                raise ValueError(f"{len(keys)} keys for {count} rows: one key is needed per row")
            if count == 0:
                return
            with progress(count, verbose, desc=f"Extending {self.out_dir.name}") as bar:
                _append_rows(self.out_dir, schema, columns, keys)
                bar.update(count)
        self.refresh()

    def __setitem__(self, item: Any, value: Any) -> None:
        """``t[i] = row`` or ``t[indices] = rows`` (dicts with a value for every column), in mode
        ``"r+"``: the table with those rows replaced is built aside and swapped in whole, so a
        reader sees every column old or every column new. Each column is changed as its kind's
        own assignment changes it: a ragged or strings value keeps the size of the one it
        replaces (the column's data file is copied once), a numpy column is written anew. Every
        value is checked before anything is written; one of another size fails the build, and
        nothing visible changes."""
        if self.mode != "r+":
            raise io.UnsupportedOperation(f"{self.out_dir} was opened read-only (mode={self.mode!r}): rows cannot "
                                          f"be assigned; open it with mode='r+' to change them")
        with WriterLock(self.out_dir) as lock:
            schema = read_schema(self.out_dir)
            roll_back(self.out_dir, schema)  # what a write cut short left is dropped first
            index = _core.normalize_index(item, schema.length)
            if type(index) is int:
                positions, rows = [index], [value]
            else:
                rows = [value] if isinstance(value, Mapping) else list(value)
                positions = index.tolist()
                if len(rows) != len(positions):
                    raise ValueError(f"cannot assign {len(rows)} rows to {len(positions)} rows")
            if not positions:
                return
            columns = split_rows(rows, schema.names, positions)
            converted = {}
            for name, kind in schema.columns:
                like = KINDS[kind].open(column_dir(self.out_dir, name), None, "r")
                converted[name] = column_values(kind, name, columns[name], positions, like)
            with Replacement(lock) as build:
                _link_table(self.out_dir, build, schema)
                for name, kind in schema.columns:
                    _replace_rows(column_dir(build, name), kind, schema.length, positions, converted[name])
        self.refresh()

    def add_column(self, name: str, values: Any, kind: Optional[str] = None, batch_size: int = 65536) -> None:
        """Add the column ``name`` holding ``values`` (one per row: ``len(t)`` of them), of
        ``kind`` (by default inferred from the first value). It is written aside and renamed
        into place, then listed in ``table.ninja``: readers see the table with it or without."""
        with _writing(self.out_dir) as schema:
            if name in schema.kinds:
                raise ValueError(f"{self.out_dir} has a column {name!r} already")
            values = list(values) if not isinstance(values, np.ndarray) else values
            if len(values) != schema.length:
                raise ValueError(f"column {name!r}: {len(values)} values for the table's {schema.length} rows")
            kind = _schema_of({name: values}, None if kind is None else {name: kind}, len(values)).kinds[name]
            added = new_schema(list(schema.columns) + [(name, kind)], schema.length, schema.class_names)
            if len(values):
                prepared = column_values(kind, name, values, range(len(values)))
                _create_column(column_dir(self.out_dir, name), kind, prepared, batch_size)
            commit = Commit()
            write_schema(self.out_dir, added, commit)
            commit.finish()
        self.refresh()

    def drop_column(self, name: str) -> None:
        """Remove the column ``name``: ``table.ninja`` stops listing it, then its folder goes."""
        with _writing(self.out_dir) as schema:
            if name not in schema.kinds:
                raise KeyError(f"{name!r} is not a column of {self.out_dir} (its columns: {schema.names})")
            if len(schema.columns) == 1:
                raise ValueError(f"{name!r} is the only column of {self.out_dir}: a table keeps at least one")
            commit = Commit()
            write_schema(self.out_dir, schema.without(name), commit)
            commit.finish()
            shutil.rmtree(column_dir(self.out_dir, name), ignore_errors=True)
        self._selected = None if self._selected is None else [c for c in self._selected if c != name]
        self._wrappers.pop(name, None)
        self.refresh()

    # -- building --------------------------------------------------------------------------

    @classmethod
    def from_columns(cls, out_dir: PathLike, data: Columns, *, keys: Optional[Iterable[str]] = None,
                     columns: Optional[Mapping[str, str]] = None, verbose: bool = False, mode: str = "r",
                     wrapper_fn: WrapperFns = None, classes: Optional[Mapping[str, Sequence[str]]] = None
                     ) -> "TableMmap":
        """A new table at ``out_dir`` (replacing any map there, built aside and swapped in whole)
        of ``data``: ``{"image": [...], "label": np.array([...]), "caption": [...]}``, each
        with one value per row. ``columns``: ``{column: "numpy" | "ragged" | "strings"}`` for
        the columns whose kind is not to be inferred from their first value (``str`` → strings,
        a scalar → numpy, an array → ragged). ``keys``: one unique ``str`` per row.
        ``classes``: ``{column: names}`` for numpy columns of integer labels (``t.classes``)."""
        if mode not in cls.MODES:
            raise ValueError(f"mode must be one of {cls.MODES}, got {mode!r}")
        count = _column_count(data, list(data) if isinstance(data, Mapping) else [])
        schema = _schema_of(data, columns, count, classes)
        out_dir = as_dir(out_dir)
        with building(out_dir) as build, progress(count, verbose, desc=f"Writing {out_dir.name}") as bar:
            _write_prepared(build, schema, _prepared(build, schema, data, range(count)))
            bar.update(count)
            finish_build(build, schema.with_length(count), None if keys is None else _listed(keys))
        return cls(out_dir, mode, wrapper_fn)

    @classmethod
    def from_generator(cls, out_dir: PathLike, rows: Iterable[Row], batch_size: int = 1024, n: Optional[int] = None,
                       verbose: bool = False, *, keys: Optional[Iterable[str]] = None,
                       columns: Optional[Mapping[str, str]] = None, mode: str = "r",
                       wrapper_fn: WrapperFns = None, classes: Optional[Mapping[str, Sequence[str]]] = None
                       ) -> "TableMmap":
        """A new table at ``out_dir`` (built aside and swapped in whole) of ``rows``, dicts with
        the same fields, written ``batch_size`` rows at a time; the columns and their kinds come
        from the first row (``columns`` and ``classes`` as for ``from_columns``). ``keys`` (one
        per row) are read alongside, ``batch_size`` at a time. ``n``: how many rows to expect
        (for the progress bar)."""
        check_positive(batch_size=batch_size)
        return cls._build(out_dir, in_batches(rows, batch_size), n if n is not None else known_length(rows),
                          verbose, keys, columns, mode, wrapper_fn, classes)

    @classmethod
    def from_indexable(cls, out_dir: PathLike, indexable: Any, batch_size: int = 1024, n_jobs: Optional[int] = None,
                       verbose: bool = False, *, keys: Optional[Iterable[str]] = None,
                       columns: Optional[Mapping[str, str]] = None, mode: str = "r",
                       wrapper_fn: WrapperFns = None, classes: Optional[Mapping[str, Sequence[str]]] = None
                       ) -> "TableMmap":
        """A new table of the rows ``indexable[0], indexable[1], ...`` (dicts; or
        ``indexable(i)`` for a function), until ``len(indexable)`` or the first
        ``IndexError``/``KeyError``; ``n_jobs`` other than ``None`` or 1 reads them in that many
        worker processes (``-1``: one per core), written here in order."""
        batches = indexable_batches(indexable, batch_size, n_jobs=n_jobs)
        with contextlib.closing(batches):  # a failed write stops the workers at once
            return cls._build(out_dir, batches, known_length(indexable), verbose, keys, columns, mode, wrapper_fn,
                              classes)

    @classmethod
    def concatenate(cls, out_dir: PathLike, tables: Sequence[PathLike],
                    counts: Optional[Sequence[Optional[int]]] = None, *, verbose: bool = False,
                    batch_size: int = 65536) -> "TableMmap":
        """The rows of ``tables`` (folders of tables of the same columns, of the same kinds), in
        order, as one new table at ``out_dir``, built aside and swapped in whole: each column
        concatenated as ``mmap_ninja.generic.concatenate`` concatenates maps (data copied file
        to file), the keys carried along when every table has keys (``ValueError`` for a key
        two of them hold, and when some have keys and some not), the class names kept.
        ``counts``: how many rows to take of each table (``None``: all)."""
        dirs = [as_dir(path) for path in tables]
        schemas = [read_schema(path) if map_type(path, must_exist=True) == TYPE else _not_a_table(path)
                   for path in dirs]
        counts = [None] * len(dirs) if counts is None else list(counts)
        if len(counts) != len(dirs):
            raise ValueError(f"{len(counts)} counts for {len(dirs)} tables")
        if not dirs:
            raise ValueError("concatenate needs at least one table, to take the columns from")
        first = schemas[0]
        for path, schema in zip(dirs[1:], schemas[1:]):
            if schema.columns != first.columns or schema.classes != first.classes:
                raise ValueError(f"{path} has the columns {dict(schema.columns)} (classes {schema.class_names}), "
                                 f"{dirs[0]} {dict(first.columns)} (classes {first.class_names}): tables "
                                 f"concatenated have the same columns")
        counts = [schema.length if count is None else int(count) for schema, count in zip(schemas, counts)]
        for path, schema, count in zip(dirs, schemas, counts):
            if not 0 <= count <= schema.length:
                raise ValueError(f"{path} holds {schema.length} rows, not {count}")
        taken = [(path, count) for path, count in zip(dirs, counts) if count]
        keyed = [_keys.KeyIndex.open(path) for path, _ in taken]
        if any(index is None for index in keyed) and any(index is not None for index in keyed):
            raise ValueError("the rows of some of the tables have keys and those of others have none: the tables "
                             "concatenated all have keys or none has")
        keys = None
        if keyed and keyed[0] is not None:
            keys = [key for index, (_, count) in zip(keyed, taken) for key in index.keys(count)]
        out_dir = as_dir(out_dir)
        with building(out_dir) as build, progress(sum(counts), verbose, desc=f"Writing {out_dir.name}") as bar:
            (build / COLUMNS).mkdir()
            for name, kind in first.columns:
                if taken:
                    concatenate_maps(column_dir(build, name), [column_dir(path, name) for path, _ in taken],
                                     [count for _, count in taken], kind=kind, batch_size=batch_size)
            bar.update(sum(counts))
            finish_build(build, first.with_length(sum(counts)), keys)
        return cls(out_dir)

    @classmethod
    def _build(cls, out_dir: PathLike, batches: Iterator[List[Row]], total: Optional[int], verbose: bool,
               keys: Optional[Iterable[str]], kinds: Optional[Mapping[str, str]], mode: str,
               wrapper_fn: WrapperFns, classes: Optional[Mapping[str, Sequence[str]]] = None) -> "TableMmap":
        if mode not in cls.MODES:
            raise ValueError(f"mode must be one of {cls.MODES}, got {mode!r}")
        out_dir = as_dir(out_dir)
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys= takes one str per row (a list, say), not one str")
        with building(out_dir) as build, progress(total, verbose, desc=f"Writing {out_dir.name}") as bar:
            feed = None if keys is None else _keys.KeyFeed(build, keys)
            schema: Optional[Schema] = None
            written = 0
            for batch in batches:
                if not batch:
                    continue
                if schema is None:
                    first = batch[0]
                    if not isinstance(first, Mapping):
                        raise TypeError(f"row 0: expected a dict of the columns' values, got {type(first).__name__}")
                    schema = _schema_of({name: [value] for name, value in first.items()}, kinds, 1, classes)
                if feed is not None:  # taken after the batch is read: a generator may make both
                    feed.take(len(batch))
                rows = range(written, written + len(batch))
                _write_prepared(build, schema, _prepared(build, schema, split_rows(batch, schema.names, rows), rows))
                written += len(batch)
                bar.update(len(batch))
            if schema is None:
                if not kinds:
                    raise ValueError("no rows to take the columns from: give columns={column: kind} for an empty table")
                schema = new_schema(list(kinds.items()), 0, classes)
            if feed is not None:
                feed.finish(written)
            finish_build(build, schema.with_length(written), None)
        return cls(out_dir, mode, wrapper_fn)


# -- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _writing(out_dir: Path) -> Iterator[Schema]:
    """The table's schema as committed, under its writer lock, with the columns rolled back to
    its length (what a write cut short left is dropped first)."""
    if map_type(out_dir, must_exist=True) != TYPE:
        raise ValueError(f"{out_dir} is not a table")
    with WriterLock(out_dir):
        schema = read_schema(out_dir)
        roll_back(out_dir, schema)
        yield schema


def _not_a_table(path: Path) -> Schema:
    raise ValueError(f"{path} holds a {map_type(path)!r} map, not a table")


def _listed(keys: Iterable[str]) -> List[str]:
    if isinstance(keys, (str, bytes)):
        raise TypeError("keys= takes one str per row (a list, say), not one str")
    return list(keys)


def _column_count(columns: Columns, names: Sequence[str]) -> int:
    """The number of rows of ``columns`` (one value sequence per name of ``names``, no other):
    ``ValueError`` naming a missing or extra column, or one of another length."""
    if not isinstance(columns, Mapping):
        raise TypeError(f"expected a dict of column values, got {type(columns).__name__}")
    missing = [name for name in names if name not in columns]
    extra = [name for name in columns if name not in names]
    if missing:
        raise ValueError(f"no values for the column {missing[0]!r} (the columns are {list(names)})")
    if extra:
        raise ValueError(f"values for {extra[0]!r}, which is not a column (the columns are {list(names)})")
    lengths = {name: len(columns[name]) for name in names}
    if len(set(lengths.values())) > 1:
        first = names[0]
        other = next(name for name in names if lengths[name] != lengths[first])
        raise ValueError(f"column {other!r} has {lengths[other]} values and column {first!r} {lengths[first]}: "
                         f"every column needs one value per row")
    return lengths[names[0]] if names else 0


def _schema_of(columns: Columns, kinds: Optional[Mapping[str, str]], count: int,
               classes: Optional[Mapping[str, Sequence[str]]] = None) -> Schema:
    """The schema of ``columns``: each kind from ``kinds`` or inferred from its first value."""
    kinds = dict(kinds or {})
    unknown = sorted(set(kinds) - set(columns))
    if unknown:
        raise ValueError(f"columns= names {unknown[0]!r}, which is not a column (the columns are {list(columns)})")
    pairs = []
    for name, values in columns.items():
        if name in kinds:
            pairs.append((name, kind_name(kinds[name], name)))
        elif count == 0:
            raise ValueError(f"column {name!r} has no value to infer its kind from: give columns={{{name!r}: ...}}")
        else:
            first = values[0]
            if isinstance(values, np.ndarray) and values.ndim >= 1 and not values.dtype.hasobject:
                pairs.append((name, "string" if values.dtype.kind == "U" else "numpy"))  # rows of one shape
            else:
                pairs.append((name, infer_kind(first, name)))
    return new_schema(pairs, 0, dict(classes or {}))


def _prepared(table: Path, schema: Schema, columns: Mapping[str, Any], rows: Sequence[int]) -> Dict[str, Any]:
    """``columns`` (values per column, of the rows numbered ``rows``) checked and converted as the
    columns of the table at ``table`` store them (see ``column_values``); nothing is written."""
    prepared = {}
    for name, kind in schema.columns:
        path = column_dir(table, name)
        like = KINDS[kind].open(path, None, "r") if map_type(path) is not None else None
        prepared[name] = column_values(kind, name, columns[name], rows, like)
    return prepared


def _write_prepared(table: Path, schema: Schema, prepared: Mapping[str, Any]) -> None:
    """Append ``prepared`` values to each column of the table at ``table``, creating a column
    at its first rows."""
    for name, kind in schema.columns:
        path = column_dir(table, name)
        if not len(prepared[name]):
            continue
        if map_type(path) is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_column(path, kind, prepared[name])
        else:
            KINDS[kind].extend(path, prepared[name])


def _create_column(path: Path, kind: str, prepared: Any, batch_size: Optional[int] = None) -> None:
    """A new column map of ``kind`` at ``path`` holding ``prepared`` (as ``column_values`` gives),
    written ``batch_size`` values at a time (default: at once)."""
    if isinstance(prepared, np.ndarray):  # in C order: rows are appended, and cut back, in place
        np_ninja.from_ndarray(path, np.ascontiguousarray(prepared))
    else:
        KINDS[kind].build(path, prepared, batch_size or max(1, len(prepared)), None)


def _append_rows(out_dir: Path, schema: Schema, columns: Columns, keys: Optional[List[str]]) -> None:
    """Append ``columns`` to the table at ``out_dir`` (under its writer lock, its columns at
    ``schema.length``): the keys, each column, then ``table.ninja``. On an error the columns
    are rolled back to ``schema.length``; the committed table never changed."""
    n = schema.length
    count = len(columns[schema.names[0]])
    prepared = _prepared(out_dir, schema, columns, range(n, n + count))
    encoded = _keys.check_extension(out_dir, keys, n)
    if keys is not None:  # committed first: a table never has rows without keys
        _keys.write_keys(out_dir, keys, n, encoded=encoded)
    try:
        _write_prepared(out_dir, schema, prepared)
        commit = Commit()
        write_schema(out_dir, schema.with_length(n + count), commit)
        commit.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            roll_back(out_dir, schema)
        raise


def _link_table(source: Path, build: Path, schema: Schema) -> None:
    """Lay out at ``build`` the table at ``source``, sharing its files by hard links: its
    ``type.ninja``, ``table.ninja`` and keys, and each listed column."""
    for name in (_meta.TYPE, SCHEMA):  # replaced only by renames: the two versions never share a change
        os.link(source / name, build / name)
    if (source / _meta.KEYS).is_dir():
        link_map(source / _meta.KEYS, build / _meta.KEYS)
    (build / COLUMNS).mkdir()
    for name, _ in schema.columns:
        if map_type(column_dir(source, name)) is not None:
            link_map(column_dir(source, name), column_dir(build, name))


def _replace_rows(path: Path, kind: str, length: int, positions: List[int], values: Any) -> None:
    """In the column map at ``path`` (a linked copy, in a build folder), replace the rows at
    ``positions`` by ``values`` (as ``column_values`` gives them), as that kind's own
    assignment does; a numpy column is written anew."""
    if KINDS[kind].rows:
        rows = np.array(np_ninja.open_existing(path)[:length], order="C")  # a copy, in C order
        rows[positions] = values
        shutil.rmtree(path)
        np_ninja.from_ndarray(path, rows)
        return
    column = KINDS[kind].open(path, None, "r+")
    column[positions] = values
    column.close()
