"""Tables on disk (FORMAT.md section 16): ``table.ninja``, the schema and the committed length,
and ``columns/<name>/``, one plain map per column; the values of each kind of column checked and
converted before anything is written; a column's rows past the table's length (a write cut
short) dropped; a table verified."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _keys, _meta
from .._storage import Commit, WriterLock, flush_tree, locking
from ..base import cast_values, map_type, stored_dtype
from .kinds import KINDS, Kind, verify_plain
from .verify import Report

TYPE = "table"
SCHEMA = _meta.TABLE
COLUMNS = "columns"
MAX_LENGTH = 2 ** 62
_COLUMN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
# The folder of a column being built aside (section 11), or the old version of a swap.
_BUILD = re.compile(r"\.([A-Za-z0-9_-][A-Za-z0-9_.-]{0,63})\.[0-9a-f]{12}\.building(?:\.old)?")
locking.COMPONENTS[TYPE] = (COLUMNS,)  # what a replaced table leaves in place (see _storage)

# The kind names a schema may give: the registry's, and "strings" for "string".
KIND_NAMES = {**{name: name for name in KINDS}, "strings": "string"}


def check_column_name(name: Any) -> str:
    """``name`` if it is a column name (one path component: 1 to 64 of ``A-Z a-z 0-9 _ - .``,
    not beginning with ``.``); ``ValueError`` otherwise."""
    if not isinstance(name, str) or _COLUMN_NAME.fullmatch(name) is None:
        raise ValueError(f"{name!r} is not a column name: 1 to 64 of A-Z a-z 0-9 _ - . , not beginning with '.'")
    return name


def kind_name(kind: Any, column: str) -> str:
    """The registry's name of the kind ``kind`` given for ``column``."""
    if kind not in KIND_NAMES:
        raise ValueError(f"column {column!r}: kind must be one of {sorted(KIND_NAMES)}, got {kind!r}")
    return KIND_NAMES[kind]


def infer_kind(value: Any, column: str) -> str:
    """The kind of a column whose first value is ``value``: strings for ``str``, numpy for a
    scalar (one value per row), ragged for an array or a sequence."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray, dict)) or value is None:
        raise TypeError(f"column {column!r}: cannot store a {type(value).__name__}; give str, a number or an array")
    if isinstance(value, (bool, int, float, complex, np.generic)) or (
            isinstance(value, np.ndarray) and value.ndim == 0):
        return "numpy"
    return "ragged"


@dataclass(frozen=True)
class Schema:
    """What ``table.ninja`` holds: the committed ``length``, the ``columns``, each ``(name,
    kind)``, in order, and ``classes``, ``(name, class names)`` of the columns of integer labels
    that have them."""

    length: int
    columns: Tuple[Tuple[str, str], ...]
    classes: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()

    @property
    def names(self) -> List[str]:
        return [name for name, _ in self.columns]

    @property
    def kinds(self) -> Dict[str, str]:
        return dict(self.columns)

    @property
    def class_names(self) -> Dict[str, List[str]]:
        return {name: list(names) for name, names in self.classes}

    def with_length(self, length: int) -> "Schema":
        return replace(self, length=length)

    def without(self, column: str) -> "Schema":
        """This schema without the column ``column``."""
        return Schema(self.length, tuple(pair for pair in self.columns if pair[0] != column),
                      tuple(pair for pair in self.classes if pair[0] != column))

    def to_bytes(self) -> bytes:
        classes = dict(self.classes)
        columns = [{"name": name, "kind": kind} for name, kind in self.columns]
        for column in columns:
            if column["name"] in classes:
                column["classes"] = list(classes[column["name"]])
        body = {"format": 1, "length": self.length, "columns": columns}
        return json.dumps(body, indent=1).encode()


def new_schema(columns: Sequence[Tuple[str, str]], length: int = 0,
               classes: Optional[Dict[str, Sequence[str]]] = None) -> Schema:
    """A schema of ``columns`` (``(name, kind)`` pairs, kinds as users give them) and
    ``classes`` (``{column: names}``, for numpy columns of integer labels), checked."""
    if not columns:
        raise ValueError("a table has at least one column")
    seen: Dict[str, str] = {}
    checked = []
    for name, kind in columns:
        check_column_name(name)
        if name.casefold() in seen:  # one folder on file systems that ignore case
            other = seen[name.casefold()]
            raise ValueError(f"column {name!r} is given twice" if other == name else
                             f"columns {other!r} and {name!r} differ only in case: their folders would be one "
                             f"on file systems that ignore case")
        seen[name.casefold()] = name
        checked.append((name, kind_name(kind, name)))
    kinds = dict(checked)
    named = []
    for name, names in (classes or {}).items():
        if kinds.get(name) != "numpy":
            raise ValueError(f"classes= names {name!r}, which is not a numpy column (of integer labels)")
        if isinstance(names, str) or not all(isinstance(item, str) for item in names):
            raise ValueError(f"the classes of column {name!r} must be a list of str")
        named.append((name, tuple(names)))
    return Schema(length, tuple(checked), tuple(named))


def read_schema(out_dir: Path) -> Schema:
    """The schema in ``out_dir/table.ninja``, checked (``ValueError`` naming the file)."""
    path = out_dir / SCHEMA
    raw = _meta.read_bytes(path)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON table schema ({exc})") from None
    if not isinstance(body, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if body.get("format") != 1 or isinstance(body.get("format"), bool):
        raise ValueError(f"{path}: format {body.get('format')!r}, this library reads format 1")
    length = body.get("length")
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
        raise ValueError(f"{path}: length must be an int from 0 to 2**62, found {length!r}")
    columns = body.get("columns")
    if not isinstance(columns, list) or not columns:
        raise ValueError(f"{path}: columns must be a non-empty list")
    pairs, classes = [], {}
    for entry in columns:
        if not isinstance(entry, dict) or not {"name", "kind"} <= set(entry) or entry.get("kind") not in KINDS:
            raise ValueError(f"{path}: each column must be {{\"name\": ..., \"kind\": one of {sorted(KINDS)}}}, "
                             f"found {entry!r}")
        pairs.append((entry["name"], entry["kind"]))
        if "classes" in entry:
            if not isinstance(entry["classes"], list):
                raise ValueError(f"{path}: the classes of column {entry['name']!r} must be a list of str")
            classes[entry["name"]] = entry["classes"]
    try:
        return new_schema(pairs, length, classes)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def write_schema(out_dir: Path, schema: Schema, commit: Commit) -> None:
    """Add ``table.ninja`` holding ``schema`` to ``commit`` (a new table's ``type.ninja`` after it)."""
    commit.replace(out_dir / SCHEMA, schema.to_bytes())
    if map_type(out_dir) != TYPE:
        commit.replace(out_dir / _meta.TYPE, TYPE.encode())


def column_dir(out_dir: Path, name: str) -> Path:
    return out_dir / COLUMNS / check_column_name(name)


def column_length(path: Path, kind: str) -> int:
    """The number of samples of the column map at ``path`` (0 when there is none yet)."""
    if map_type(path) is None:
        return 0
    registered = KINDS[kind]
    return registered.length(registered.read(path))


def roll_back(out_dir: Path, schema: Schema) -> None:
    """Make every column of the table at ``out_dir`` hold ``schema.length`` samples again, where
    a write cut short left more (metadata only, each under the column's writer lock), and
    remove the column folders ``schema`` does not list (an ``add_column`` cut short, or what a
    ``drop_column`` cut short left). Called under the table's writer lock."""
    listed = set(schema.names)
    columns = out_dir / COLUMNS
    if columns.is_dir():
        for entry in os.scandir(columns):
            build = _BUILD.fullmatch(entry.name)
            unlisted = build.group(1) if build else None if entry.name.startswith(".") else entry.name
            if unlisted is not None and unlisted not in listed and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)  # a column no longer listed, or the build of one never listed
    for name, kind in schema.columns:
        path = column_dir(out_dir, name)
        if not path.is_dir():
            continue  # a column that has no rows yet
        with WriterLock(path):
            locking.recover_abandoned_builds(path)  # a column's build cut short: its folder goes
            if column_length(path, kind) > schema.length:
                commit = Commit()
                KINDS[kind].truncate(path, schema.length, commit)
                commit.finish()


def finish_build(build: Path, schema: Schema, keys: Optional[List[str]]) -> None:
    """The table's keys, ``table.ninja`` and ``type.ninja`` in the build folder, then the
    folder flushed (it is swapped in next)."""
    if keys is not None:
        if len(keys) != schema.length:
            raise ValueError(f"{len(keys)} keys for {schema.length} rows: one key is needed per row")
        _keys.write_keys(build, keys, 0, durable=False, encoded=_keys.check_new(build, keys, 0))
    commit = Commit(durable=False)
    write_schema(build, schema, commit)
    commit.finish()
    flush_tree(build)


# -- the values of a column, checked before anything is written ---------------------------------


def column_values(kind: str, name: str, values: Sequence[Any], rows: Sequence[int], like: Any = None) -> Any:
    """``values`` (one per row, of the rows numbered ``rows``) as the column ``name`` of
    ``kind`` stores them: a list of ``str``; an array of rows (numpy; of the dtype and row shape
    of ``like``, the column's map, when it has one); a list of arrays (ragged; of ``like``'s
    dtype). ``TypeError`` or ``ValueError`` naming the row and the column for a value that
    cannot be stored, or would lose anything in the cast."""
    registered: Kind = KINDS[kind]
    dtype = None if like is None or getattr(like, "dtype", None) is None else like.dtype
    if registered.rows and isinstance(values, np.ndarray) and values.ndim >= 1 and values.dtype.kind in "biufcmM":
        shape = tuple(like.shape[1:]) if like is not None else values.shape[1:]
        if values.shape[1:] != shape:
            raise ValueError(f"column {name!r}: expected rows of shape {shape}, got {values.shape[1:]}")
        return _cast(values, dtype, name, rows, list(values))
    if registered.text:
        for k, value in enumerate(values):
            if not isinstance(value, str):
                raise TypeError(f"row {rows[k]}, column {name!r}: expected str, got {type(value).__name__}")
        return list(values)
    arrays = []
    for k, value in enumerate(values):
        if isinstance(value, (str, bytes, bytearray, dict)) or value is None:
            raise TypeError(f"row {rows[k]}, column {name!r}: expected a number or an array, got "
                            f"{type(value).__name__}")
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"row {rows[k]}, column {name!r}: {exc}") from None
        if array.dtype.hasobject or array.dtype.kind in "USV":
            raise TypeError(f"row {rows[k]}, column {name!r}: expected numbers, got an array of "
                            f"{array.dtype}")
        arrays.append(array)
    if registered.rows:
        shape = tuple(like.shape[1:]) if like is not None else (arrays[0].shape if arrays else ())
        for k, array in enumerate(arrays):
            if array.shape != shape:
                raise ValueError(f"row {rows[k]}, column {name!r}: expected shape {shape}, got {array.shape}")
        stacked = np.stack(arrays) if arrays else np.empty((0, *shape), dtype or np.float64)
        return _cast(stacked, dtype, name, rows, arrays)
    if dtype is None and arrays:
        dtype = functools.reduce(np.promote_types, {array.dtype for array in arrays})
    return [_cast(array, dtype, name, rows[k:k + 1], [array]) for k, array in enumerate(arrays)]


def _cast(values: np.ndarray, dtype: Optional[np.dtype], name: str, rows: Sequence[int],
          values_of_rows: Sequence[np.ndarray]) -> np.ndarray:
    """``values`` cast to ``dtype`` (kept when ``None``); on a lossy cast, the error names the
    first of ``rows`` whose value (``values_of_rows``) loses something."""
    if dtype is None:
        stored_dtype(values.dtype)
        return values
    try:
        return cast_values(values, np.dtype(dtype), f"column {name!r}")
    except (TypeError, ValueError):
        for row, value in zip(rows, values_of_rows):
            try:
                cast_values(np.asarray(value), np.dtype(dtype), f"column {name!r}")
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"row {row}, {exc}") from None
        raise


def split_rows(rows: Sequence[Any], names: Sequence[str], numbers: Sequence[int]) -> Dict[str, List[Any]]:
    """``rows`` (dicts, numbered ``numbers``) as one list of values per column of
    ``names``; ``TypeError`` or ``ValueError`` naming the row and the field for a row that is
    not a mapping, or misses a column, or has a field the table does not."""
    columns: Dict[str, List[Any]] = {name: [] for name in names}
    wanted = set(names)
    for number, row in zip(numbers, rows):
        if not hasattr(row, "keys") or not hasattr(row, "__getitem__"):
            raise TypeError(f"row {number}: expected a dict of {sorted(names)}, got {type(row).__name__}")
        fields = set(row.keys())
        if fields != wanted:
            missing, extra = sorted(wanted - fields, key=str), sorted(fields - wanted, key=str)
            what = (f"no field {missing[0]!r}" if missing else f"a field {extra[0]!r} that the table has no "
                    f"column for")
            raise ValueError(f"row {number}: {what} (the columns are {list(names)})")
        for name in names:
            columns[name].append(row[name])
    return columns


# -- verify -------------------------------------------------------------------------------


def verify_dir(out_dir: Path, limit: int, deep: bool) -> Report:
    """What is wrong with the table at ``out_dir``: its ``table.ninja``, each column (as
    ``verify`` checks a map of its kind; fewer samples than the table's length is damage), the
    keys; notes for the rows a write cut short left past the length, and unlisted folders."""
    try:
        schema = read_schema(out_dir)
    except (OSError, ValueError) as exc:
        return Report([str(exc)])
    problems: List[str] = []
    notes: List[str] = []
    omitted = 0
    for name, kind in schema.columns:
        path = column_dir(out_dir, name)
        if map_type(path) is None:
            if schema.length:
                problems.append(f"{path}: column {name!r} is missing ({schema.length} rows in {out_dir / SCHEMA})")
            continue
        found = map_type(path)
        if found != kind:
            problems.append(f"{path / _meta.TYPE}: column {name!r} holds a {found!r} map, {out_dir / SCHEMA} "
                            f"says {kind!r}")
            continue
        report = verify_plain(path, kind, limit, deep)
        problems += list(report)
        notes += report.notes
        omitted += report.omitted
        try:
            length = column_length(path, kind)
        except (OSError, ValueError):
            continue  # reported by the column's check
        if length < schema.length:
            problems.append(f"{path}: column {name!r} holds {length} rows, {out_dir / SCHEMA} says {schema.length}")
        elif length > schema.length:
            notes.append(f"{path}: column {name!r} holds {length - schema.length} rows past the table's "
                         f"{schema.length} (an interrupted write; the next write drops them)")
    columns = out_dir / COLUMNS
    if columns.is_dir():
        for entry in sorted(os.listdir(columns)):
            if entry not in schema.kinds and not entry.startswith("."):
                notes.append(f"{columns / entry}: not a column of the table (an interrupted add_column or "
                             f"drop_column; the next write removes it)")
    key_problems, key_notes = _keys.problems(out_dir, schema.length, deep)
    return Report.cut(problems + key_problems, notes + key_notes, limit, omitted)
