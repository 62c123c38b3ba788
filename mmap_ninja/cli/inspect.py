"""``mmap-ninja info``, ``verify``, ``head``, and the commands of sharded maps (``merge``,
``compact``, ``gc``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from .. import _keys, _meta
from .._format.kinds import KINDS
from ..base import is_url, map_type
from ..generic import open_existing, verify
from ..ragged import RaggedMmap
from ..sharded import TYPE, ShardedMmap
from ..string import StringsMmap
from ..table import TableMmap
from ._common import UsageError, disk_usage, human_bytes, open_paths
from .remote import command_gc_url, describe_url

# -- info ---------------------------------------------------------------------------------------

def _length_summary(lengths: np.ndarray, unit: str) -> str:
    if not len(lengths):
        return "-"
    return (f"min {int(lengths.min()):,}, max {int(lengths.max()):,}, mean {float(lengths.mean()):,.1f} {unit}")


def first_keys(path: Path, count: int) -> Optional[List[str]]:
    """The keys of the first ``count`` samples of the map at ``path`` (fewer if it holds fewer),
    or ``None`` when its samples have no keys."""
    index = _keys.KeyIndex.open(path)
    if index is None:
        return None
    return index.keys(min(count, index.count, len(open_existing(path))))


def _keys_summary(path: Path, samples: int) -> str:
    index = _keys.KeyIndex.open(path)
    if index is None:
        return "none"
    if index.count < samples:
        return f"{index.count:,} for {samples:,} samples: out of step (see verify)"
    return f"one per sample, unique (index_of, by_key; {path / _meta.KEYS})"


def describe(path: Path) -> List[tuple]:
    """``(label, value)`` lines that describe the map at ``path``."""
    try:
        m = open_existing(path, mode="r")
    except ValueError as exc:  # not a map, or of a type this version does not know
        raise UsageError(str(exc)) from None
    lines = [("path", str(path))]
    if isinstance(m, np.ndarray):
        lines += [("kind", f"numpy ({'Fortran' if m.flags.f_contiguous and m.ndim > 1 else 'C'} order)"),
                  ("samples", f"{m.shape[0]:,}" if m.ndim else "0-d array"),
                  ("dtype", m.dtype.name), ("shape", str(m.shape))]
    elif isinstance(m, RaggedMmap):
        lines += [("kind", "ragged (" + ("1-d samples" if m.shapes_are_flat else "samples of several shapes") + ")"),
                  ("samples", f"{len(m):,}"), ("dtype", "unknown" if m.dtype is None else m.dtype.name)]
        if len(m):
            lines.append(("elements", _length_summary(m.ends - m.starts, "per sample")))
            if not m.shapes_are_flat:
                lines.append(("shapes", _shape_summary(m)))
    elif isinstance(m, StringsMmap):
        compression = _compression(m.codec)
        lines += [("kind", "strings"), ("samples", f"{len(m):,}")]
        if len(m):
            unit = "per string" + (" (compressed)" if compression != "none" else "")
            lines.append(("bytes", _length_summary(m.ends - m.starts, unit)))
        lines.append(("compression", compression))
    elif isinstance(m, TableMmap):
        lines += [("kind", f"table ({len(m.columns)} columns)"), ("samples", f"{len(m):,}")]
        lines += [(f"column {name}", _column_summary(m, name)) for name in m.columns]
    else:
        uncommitted = m.uncommitted_parts()
        lines += [("kind", f"sharded ({m.kind} parts)"), ("samples", f"{len(m):,}"),
                  ("parts", f"{len(m.part_names):,}" + (f", {len(uncommitted):,} never committed"
                                                        if uncommitted else ""))]
        if m.kind == "table":
            lines += [(f"column {name}", _sharded_column_summary(m, name)) for name in m.columns]
        else:
            lines.append(("dtype", "-" if m.dtype is None else m.dtype.name))
    samples = len(m) if not isinstance(m, np.ndarray) or m.ndim else 0
    del m
    lines.append(("keys", _keys_summary(path, samples)))
    paths = open_paths(path)
    if paths is not None:
        lines.append(("paths", _paths_summary(paths, samples)))
    files = [p for p in path.rglob("*") if p.is_file()]
    lines.append(("on disk", f"{human_bytes(disk_usage(path))} in {len(files)} files"))
    return lines


def _column_text(kind_name: str, dtype: Any, row_shape: Any, size: int, classes: Any) -> str:
    """A column's kind, dtype (and row shape), bytes on disk and class names."""
    kind = KINDS[kind_name]
    if kind.rows:
        what = "numpy, " + ("unknown dtype" if dtype is None else np.dtype(dtype).name) + \
            (f" rows of shape {tuple(row_shape)}" if row_shape else "")
    elif kind.arrays:
        what = "ragged, " + ("unknown dtype" if dtype is None else np.dtype(dtype).name)
    else:
        what = "strings"
    named = "" if not classes else "; classes: " + ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
    return f"{what}; {human_bytes(size)}{named}"


def _column_summary(table: TableMmap, name: str) -> str:
    """A table column's kind, dtype (and row shape) and bytes on disk."""
    column = table[name]
    folder = table.out_dir / "columns" / name
    return _column_text(table.schema[name], getattr(column, "dtype", None), getattr(column, "shape", (0,))[1:],
                        disk_usage(folder) if folder.exists() else 0, table.classes.get(name))


def _sharded_column_summary(m: ShardedMmap, name: str) -> str:
    """A column of a sharded map of tables: as ``_column_summary``, its bytes summed over the parts."""
    column = m[name]
    row_shape = np.shape(column[0]) if column.kind == "numpy" and len(column) else ()
    size = sum(disk_usage(folder) for folder in (m.out_dir / "parts" / part / "columns" / name
                                                 for part in m.part_names) if folder.exists())
    return _column_text(column.kind, column.dtype, row_shape, size, m.classes.get(name))


def _compression(codec) -> str:
    """How a strings map is compressed (``codec``: its ``StringsMmap.codec``)."""
    if not codec.compressed:
        return "none"
    dictionary = f", {len(codec.dictionary):,}-byte dictionary" if codec.dictionary else ""
    return f"zstd level {codec.level}{dictionary}"


def _paths_summary(paths: StringsMmap, samples: int) -> str:
    """How many of ``samples`` have a path in ``paths`` (an empty path stands for none)."""
    with_path = int(np.count_nonzero(paths.ends - paths.starts)) if len(paths) else 0
    text = f"{with_path:,} of {samples:,} samples have one ({paths.out_dir})"
    if len(paths) != samples:
        text += f"; out of step: it holds {len(paths):,} entries"
    return text


def _shape_summary(m: RaggedMmap, limit: int = 100_000) -> str:
    """Ranks and the range of each axis, over the first ``limit`` samples."""
    shapes = [tuple(shape) for shape in m.shapes.take(slice(0, min(len(m), limit))).arrays()]
    by_rank = {}
    for shape in shapes:
        by_rank.setdefault(len(shape), []).append(shape)
    parts = []
    for rank, group in sorted(by_rank.items()):
        if rank == 0:
            parts.append(f"{len(group):,} scalar" + ("s" if len(group) > 1 else ""))
            continue
        axes = np.array(group)
        ranges = ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in zip(axes.min(0), axes.max(0)))
        parts.append(f"{len(group):,} of ({ranges})")
    scope = "" if len(m) <= limit else f" (first {limit:,} samples)"
    return "; ".join(parts) + scope


def command_info(args) -> int:
    lines = describe_url(args.path) if is_url(args.path) else describe(args.path)
    width = max(len(label) for label, _ in lines) + 1
    for label, value in lines:
        print(f"{label + ':':<{width}} {value}")
    return 0


# -- verify and head ----------------------------------------------------------------------------

def command_verify(args) -> int:
    if not is_url(args.path) and not args.path.exists():
        raise UsageError(f"no map at {args.path}")
    report = verify(args.path, limit=args.limit, deep=args.deep)
    for problem in report:
        print(problem)
    if report.omitted:
        print(f"... and {report.omitted:,} more problem{'s' if report.omitted > 1 else ''} not shown "
              f"(--limit {len(report) + report.omitted} lists them)")
    for note in report.notes:
        print(f"note: {note}")
    if not report:
        checked = "every byte checked against its checksum" if args.deep else "structure and metadata checked"
        print(f"{args.path}: sound ({checked})")
    return 1 if report else 0


# Samples longer than this print as a summary; strings are cut to this many characters.
SHORT_ARRAY = 10
LONG_STRING = 200
# Values shown of a sample printed as a summary.
FIRST_VALUES = 8


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _show(sample: Any) -> str:
    """One line that shows ``sample``: a string (cut when long), a scalar, a short 1-d array
    in full, or the dtype, shape, range and first values of a larger array; each field of a
    table's row."""
    if isinstance(sample, dict):
        return "{" + ", ".join(f"{name}: {_show(value)}" for name, value in sample.items()) + "}"
    if isinstance(sample, str):
        if len(sample) <= LONG_STRING:
            return repr(sample)
        return f"{sample[:LONG_STRING] + '…'!r} ({len(sample):,} chars)"
    array = np.asarray(sample)
    if array.ndim == 0:
        return repr(array.item())
    head = f"{array.dtype.name} {array.shape}"
    if array.ndim == 1 and array.size <= SHORT_ARRAY:
        return f"{head}: " + np.array2string(array, max_line_width=sys.maxsize, threshold=SHORT_ARRAY)
    if array.size == 0:
        return f"{head}: empty"
    first = " ".join(_number(value) for value in array.flat[:FIRST_VALUES].tolist())
    more = " ..." if array.size > FIRST_VALUES else ""
    return f"{head} min {_number(array.min().item())} max {_number(array.max().item())}: {first}{more}"


# -- sharded maps ----------------------------------------------------------------------------------

def command_merge(args) -> int:

    if map_type(args.out) is not None:
        raise UsageError(f"{args.out} holds a map already")
    m = ShardedMmap.from_maps(args.out, args.maps, copy=not args.move)
    print(f"wrote {m!r}")
    return 0


def command_compact(args) -> int:

    if map_type(args.sharded, must_exist=True) != TYPE:
        raise UsageError(f"{args.sharded} is not a sharded map")
    if map_type(args.out) is not None and not args.force:
        raise UsageError(f"{args.out} holds a map already: --force replaces it")
    print(f"wrote {ShardedMmap(args.sharded).compact(args.out, verbose=not args.quiet)!r}")
    return 0


def command_gc(args) -> int:
    if is_url(args.path):
        return command_gc_url(args.path, args.older_than)

    if map_type(args.path, must_exist=True) != TYPE:
        raise UsageError(f"{args.path} is not a sharded map")
    removed = ShardedMmap(args.path).gc()
    for name in removed:
        print(f"removed {args.path / 'parts' / name}")
    for line in removed.skipped:
        print(f"skipped {line}")
    print(f"{args.path}: {len(removed)} uncommitted part{'s' if len(removed) != 1 else ''} removed")
    return 0


def command_head(args) -> int:
    m = open_existing(args.path)
    count = min(args.n, len(m))
    names = None if is_url(args.path) else first_keys(args.path, count)
    if names is None and not is_url(args.path):
        paths = open_paths(args.path)
        if paths is not None and len(paths) == len(m):  # else out of step with the samples: see ``info``
            names = [paths[i] for i in range(count)]
    for i in range(count):
        name = names[i] if names is not None and i < len(names) else ""
        print(f"[{i}] " + (f"{name}: " if name else "") + _show(m[i]))
    if len(m) > count:
        print(f"... {len(m) - count:,} more")
    return 0
