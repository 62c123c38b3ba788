"""``mmap-ninja convert``: folder trees of images, ``.txt`` or ``.npy`` files, ``.jsonl`` fields,
Parquet columns and Megatron's indexed datasets into maps, and maps into Megatron's files."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np

from .. import _keys
from .._format.kinds import KINDS, display_name
from ..base import in_batches, map_type, progress
from ..generic import open_existing
from ..parallel import indexable_batches
from ..ragged import RaggedMmap
from ..string import StringsMmap
from ._common import FOLDER_KINDS, PATHS, UsageError, _paths_to_extend, open_paths, read_image

# -- convert ------------------------------------------------------------------------------------

def natural_key(path: str) -> tuple:
    """Sort key of a relative POSIX path in natural order: folder by folder, runs of digits
    compared as integers and the rest case-insensitively, ties broken by the path itself."""
    parts = tuple(tuple(int(piece) if k % 2 else piece.casefold() for k, piece in enumerate(_DIGITS.split(part)))
                  for part in path.split("/"))
    return parts, path


_DIGITS = re.compile(r"([0-9]+)")


@dataclass
class Skipped:
    """What a walk through a folder passed over."""

    hidden_files: int = 0
    hidden_folders: int = 0
    not_regular: int = 0
    repeated_folders: int = 0
    other_kind: Counter = field(default_factory=Counter)  # suffix -> files of another known kind
    other_suffix: Counter = field(default_factory=Counter)  # suffix -> files of no known kind

    def message(self) -> str:
        """One line that says what was skipped and why, or ``""`` when nothing was."""
        files = [(sum(self.other_kind.values()), f"of another kind ({_suffixes(self.other_kind)})"),
                 (sum(self.other_suffix.values()), f"with other suffixes ({_suffixes(self.other_suffix)})"),
                 (self.hidden_files, "hidden"),
                 (self.not_regular, "broken link or special file" if self.not_regular == 1 else
                  "broken links or special files")]
        parts = []
        total = sum(count for count, _ in files)
        if total:
            parts.append(f"{_plural(total, 'file')}: " + ", ".join(f"{count:,} {why}" for count, why in files if count))
        if self.hidden_folders:
            parts.append(_plural(self.hidden_folders, "hidden folder"))
        if self.repeated_folders:
            parts.append(_plural(self.repeated_folders, "folder") + " reached again through a link")
        return "skipped " + "; ".join(parts) if parts else ""


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _suffixes(counts: Counter, limit: int = 5) -> str:
    names = [suffix or "no suffix" for suffix, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def walk(source: Path, skipped: Skipped) -> List[Tuple[str, Path]]:
    """Every regular file in the tree under ``source``, as its path relative to ``source`` (POSIX
    form) and its path; hidden files and folders (``.name``) and anything else passed over are
    counted in ``skipped``. Links to folders are followed, each folder visited once: through its
    own path when it is in the tree, else through the first link in natural order."""
    found = []
    seen = set()
    folders, links = [(source, "")], []
    while folders or links:
        if folders:
            folder, prefix = folders.pop()
        else:
            links.sort(key=lambda link: natural_key(link[1]), reverse=True)
            folder, prefix = links.pop()
        info = folder.stat()
        if (info.st_dev, info.st_ino) in seen:
            skipped.repeated_folders += 1
            continue
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(folder) as entries:
            for entry in entries:
                is_dir = entry.is_dir()
                if entry.name.startswith("."):
                    if is_dir:
                        skipped.hidden_folders += 1
                    else:
                        skipped.hidden_files += 1
                elif is_dir:
                    (links if entry.is_symlink() else folders).append((Path(entry.path), prefix + entry.name + "/"))
                elif entry.is_file():
                    found.append((_printable(prefix + entry.name), Path(entry.path)))
                else:
                    skipped.not_regular += 1  # a broken link, a socket, a device
    return found


def _printable(path: str) -> str:
    """``path`` as text that UTF-8 can store (bytes that are not UTF-8 as ``\\xNN``)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


class _FileReader:
    """``reader(files[i])``, indexable and picklable, for ``from_indexable`` with workers; an
    unreadable file becomes an error that names it, or, with ``skip``, a ``_Unreadable``.
    With ``labels``, each item is a row ``{"image": ..., "label": labels[i]}``."""

    def __init__(self, files: List[Path], reader: Callable, skip: bool = False, labels: Optional[List[int]] = None):
        self.files, self.reader, self.skip, self.labels = files, reader, skip, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            sample = _read(self.reader, self.files[i])
        except UsageError as exc:
            if not self.skip:
                raise
            return _Unreadable(str(exc))
        return sample if self.labels is None else {"image": sample, "label": self.labels[i]}


@dataclass
class _Unreadable:
    """A file ``--skip-errors`` passes over, and why."""

    why: str


class Skips:
    """What ``--skip-errors`` skipped: ``(where, why)``, reported on stderr once done."""

    def __init__(self):
        self.items: List[Tuple[str, str]] = []

    def add(self, where: str, why: str) -> None:
        self.items.append((where, why))

    def report(self, limit: int = 5) -> None:
        if not self.items:
            return
        shown = "; ".join(f"{where}: {why}" for where, why in self.items[:limit])
        more = f"; ... and {len(self.items) - limit:,} more" if len(self.items) > limit else ""
        what = "file or record" if len(self.items) == 1 else "files or records"
        print(f"mmap-ninja convert: skipped {len(self.items):,} {what} it could not read or store: {shown}{more}",
              file=sys.stderr)


def _read(reader: Callable, path: Path):
    try:
        return reader(path)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None


def _jsonl_values(path: Path, name: str) -> Iterator:
    for number, record in _jsonl_records(path, None):
        if name not in record:
            raise UsageError(f"{path}:{number}: no field {name!r}")
        yield record[name]


@dataclass
class Source:
    """What ``convert`` reads, in order, and the kind of map it makes."""

    kind: str  # "images", "texts", "npy" or "jsonl"
    makes: str  # the map type it makes: "ragged" or "string"
    samples: Any  # a _FileReader (images, .npy) or an iterator (texts, .jsonl values)
    count: Optional[int] = None
    paths: Optional[List[str]] = None  # the path of each sample relative to the source folder
    dtype: Any = None  # of a ragged map made of .jsonl values
    skipped: str = ""  # what was passed over, in one line
    column: Optional[str] = None  # of a Parquet file
    key_field: Optional[str] = None  # the field (or column) keying each row of a table
    columns: Optional[dict] = None  # the kind of each column of a table, when known ahead
    classes: Optional[List[str]] = None  # the class names of an image folder's labels

    @property
    def text(self) -> bool:
        """It makes a strings map."""
        return KINDS[self.makes].text


def open_source(source: Path, kind: Optional[str], name: Optional[str], column: Optional[str] = None,
                key_field: Optional[str] = None, skips: Optional[Skips] = None) -> Source:
    """The samples of ``source``: a folder tree (its kind guessed from the whole tree unless
    ``kind`` is given; images in class sub-folders make a table), the field ``name`` of a .jsonl
    file (every field, as a table, without one) or the ``column`` of a .parquet file (every
    column, as a table, without one). ``skips``: where ``--skip-errors`` records what it skips."""
    if source.is_file() and (kind == "parquet" or kind is None and source.suffix.lower() == ".parquet"):
        return _parquet_source(source, column, key_field)
    if source.is_file():
        if kind not in (None, "jsonl") or (kind is None and source.suffix.lower() != ".jsonl"):
            raise UsageError(f"{source}: convert takes a folder, or a .jsonl file, or a .parquet file")
        if not name:
            return _jsonl_table_source(source, key_field, skips)
        if key_field is not None:
            raise UsageError("--key-field keys the rows of a table: leave out --field to convert every field")
        return _jsonl_source(source, name)
    if key_field is not None:
        raise UsageError("--key-field names a field of a .jsonl file or a column of a .parquet file; the files of "
                         "a folder are keyed by their paths")
    if not source.is_dir():
        raise UsageError(f"no such file or folder: {source}")
    if kind in ("jsonl", "parquet"):
        raise UsageError(f"{source}: --kind {kind} takes a .{kind} file, not a folder")
    skipped = Skipped()
    found = walk(source, skipped)
    known = {suffix: folder_kind for folder_kind, suffixes in FOLDER_KINDS for suffix in suffixes}
    by_kind = Counter(known.get(path.suffix.lower()) for _, path in found)
    if kind is None:
        present = [folder_kind for folder_kind, _ in FOLDER_KINDS if by_kind[folder_kind]]
        if not present:
            raise UsageError(f"{source} holds no image, .txt or .npy files")
        kind = max(present, key=lambda folder_kind: by_kind[folder_kind])  # the first of the most common
    chosen = []
    for relative, path in found:
        suffix = path.suffix.lower()
        if known.get(suffix) == kind:
            chosen.append((relative, path))
        elif suffix in known:
            skipped.other_kind[suffix] += 1
        else:
            skipped.other_suffix[suffix] += 1
    if not chosen:
        raise UsageError(f"{source} holds no {'/'.join(dict(FOLDER_KINDS)[kind])} files")
    chosen.sort(key=lambda item: natural_key(item[0]))
    paths = [relative for relative, _ in chosen]
    files = [path for _, path in chosen]
    if kind == "texts":
        samples = (_read(read_text, path) for path in files)
    else:
        samples = _FileReader(files, read_image if kind == "images" else np.load, skip=skips is not None)
    classes = sorted({path.split("/", 1)[0] for path in paths if "/" in path}, key=natural_key)
    if kind == "images" and len(classes) >= 2 and all("/" in path for path in paths):
        # sub-folders of classes: a table of the images and their labels, the folders' names kept
        label = {name: k for k, name in enumerate(classes)}
        samples.labels = [label[path.split("/", 1)[0]] for path in paths]
        return Source(kind, "table", samples, len(files), paths, skipped=skipped.message(),
                      columns={"image": "ragged", "label": "numpy"}, classes=classes)
    return Source(kind, "string" if kind == "texts" else "ragged", samples, len(files), paths,
                  skipped=skipped.message())


def _jsonl_source(path: Path, name: str) -> Source:
    values = _jsonl_values(path, name)
    seen = []  # values read ahead to find the dtype: the first that is not an empty list
    for value in values:
        seen.append(value)
        if isinstance(value, str) or np.size(value):
            break
    if not seen:
        raise UsageError(f"{path} holds no records")
    values = itertools.chain(seen, values)
    if isinstance(seen[-1], str):
        return Source("jsonl", "string", values)
    dtype = np.asarray(seen[-1]).dtype if np.size(seen[-1]) else np.int64
    return Source("jsonl", "ragged", values, dtype=dtype)


def _jsonl_records(path: Path, skips: Optional[Skips]) -> Iterator[Tuple[int, dict]]:
    """``(line number, record)`` of each record of a .jsonl file; a line that is not a JSON
    object is an error naming it, or, with ``skips``, skipped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                why = f"not UTF-8 (byte {exc.start})"
            except json.JSONDecodeError as exc:
                why = f"not JSON ({exc.msg})"
            else:
                if isinstance(record, dict):
                    yield number, record
                    continue
                why = f"not a JSON object but {type(record).__name__}"
            if skips is None:
                raise UsageError(f"{path}:{number}: {why}")
            skips.add(f"{path.name}:{number}", why)


def _value_kind(value: Any) -> Optional[str]:
    """The kind of column a JSON value goes into: ``numpy`` (a number or a bool), ``string``,
    ``ragged`` (a list of numbers, nested or not), or ``None`` (null, an object, a list of
    anything else)."""
    if isinstance(value, (bool, int, float)):
        return "numpy"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        try:
            array = np.asarray(value)
        except ValueError:  # lists of different lengths: not rectangular
            return None
        return "ragged" if array.dtype.kind in "biuf" else None
    return None


_INT64 = (-2 ** 63, 2 ** 63 - 1)


def _out_of_place(value: Any, first: Any) -> Optional[str]:
    """Why a number ``value`` cannot join a numpy column whose first value was ``first``:
    a boolean among numbers or a number among booleans, an integer past int64's range."""
    if isinstance(value, bool) != isinstance(first, bool):
        return f"holds {json.dumps(value)}, the column {'booleans' if isinstance(first, bool) else 'numbers'}"
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        return f"holds {value}, past the range of int64"
    return None


def _check_record(record: dict, fields: List[str], kinds: dict, key_field: Optional[str],
                  firsts: Optional[dict] = None) -> Optional[str]:
    """Why ``record`` cannot be a row of a table of ``fields`` of ``kinds`` (keyed by
    ``key_field``; ``firsts``: the first record's values), or ``None``."""
    names = set(record) - ({key_field} if key_field else set())
    if names != set(fields):
        missing, extra = sorted(set(fields) - names), sorted(names - set(fields))
        return f"no field {missing[0]!r}" if missing else f"a field {extra[0]!r} that the first record has not"
    if key_field is not None:
        key = record.get(key_field)
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            return f"its key (field {key_field!r}) is {json.dumps(key)[:40]}, not a str or an int"
    for name in fields:
        found = _value_kind(record[name])
        if found != kinds[name] and not (KINDS[kinds[name]].arrays and record[name] == []):
            return f"field {name!r} holds {json.dumps(record[name])[:40]}, not a value of its {kinds[name]} column"
        why = _out_of_place(record[name], firsts[name]) if firsts is not None and KINDS[kinds[name]].rows else None
        if why is not None:
            return f"field {name!r} {why}"
    return None


def _jsonl_table_source(path: Path, key_field: Optional[str], skips: Optional[Skips]) -> Source:
    """Every field of the records of a .jsonl file, as the columns of a table (``key_field``: the
    field keying each row). The file is read twice: once to check every record and find each
    column's kind and dtype (numbers are floats in a column where any is; integers else), once
    to write."""
    fields: Optional[List[str]] = None
    kinds: dict = {}
    floats: set = set()
    bad: set = set()
    rows = 0
    for number, record in _jsonl_records(path, skips):
        if fields is None:
            if key_field is not None and key_field not in record:
                raise UsageError(f"{path}:{number}: no field {key_field!r} (--key-field)")
            fields = [name for name in record if name != key_field]
            if not fields:
                raise UsageError(f"{path}:{number}: no field besides the key")
            kinds = {name: _value_kind(record[name]) for name in fields}
            firsts = {name: record[name] for name in fields}
            empty = [name for name in fields if kinds[name] is None]
            if empty:
                raise UsageError(f"{path}:{number}: field {empty[0]!r} holds {json.dumps(record[empty[0]])[:40]}, "
                                 f"which no column holds (numbers, strings and lists of numbers do)")
        why = _check_record(record, fields, kinds, key_field, firsts)
        if why is not None:
            if skips is None:
                raise UsageError(f"{path}:{number}: {why}")
            skips.add(f"{path.name}:{number}", why)
            bad.add(number)
            continue
        for name in fields:
            if not KINDS[kinds[name]].text and np.size(record[name]) and np.asarray(record[name]).dtype.kind == "f":
                floats.add(name)
        rows += 1
    if fields is None:
        raise UsageError(f"{path} holds no records")
    dtypes = {name: np.float64 if name in floats else None for name in fields}
    keys = _keys.KeysAlongside() if key_field is not None else None

    def records() -> Iterator[dict]:
        for number, record in _jsonl_records(path, None if skips is None else Skips()):
            if number in bad:
                continue
            if keys is not None:
                keys.pending.append(str(record[key_field]))
            yield {name: record[name] if KINDS[kinds[name]].text else
                   np.asarray(record[name], dtype=dtypes[name] or (np.int64 if record[name] == [] else None))
                   for name in fields}

    return Source("jsonl", "table", (records(), keys), rows, key_field=key_field, columns=kinds)


def _parquet_source(path: Path, column: Optional[str], key_field: Optional[str] = None) -> Source:
    """A column of a Parquet file (``column``: needed when it has several), read row group by
    row group by ``mmap_ninja.arrow``."""
    try:
        import pyarrow.parquet as pq

        from .. import arrow
    except ImportError:
        raise UsageError("reading Parquet files needs pyarrow: pip install 'mmap_ninja[arrow]'") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet
        raise UsageError(f"{path}: cannot be read as Parquet ({exc})") from None
    names = parquet.schema_arrow.names
    if key_field is not None and key_field not in names:
        raise UsageError(f"{path} has no column {key_field!r} (--key-field); its columns: {', '.join(names)}")
    if column is not None and column not in names:
        raise UsageError(f"{path} has no column {column!r}; its columns: {', '.join(names)}")
    if column is None and len([name for name in names if name != key_field]) > 1:
        try:  # every column is checked before anything is written
            kinds = {name: arrow.map_kind(parquet, name) for name in names if name != key_field}
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        return Source("parquet", "table", parquet, parquet.metadata.num_rows, key_field=key_field, columns=kinds)
    if key_field is not None:
        raise UsageError("--key-field keys the rows of a table: leave out --column to convert every column")
    try:
        makes = arrow.map_kind(parquet, column)
    except TypeError as exc:
        raise UsageError(str(exc)) from None
    return Source("parquet", makes, parquet, parquet.metadata.num_rows, column=column)


def _workers(args) -> Optional[int]:
    return None if args.workers <= 1 else args.workers


def command_convert(args) -> int:
    if args.from_format or args.to_format:
        return _convert_megatron(args)
    if args.copy or args.checksum:
        raise UsageError("--copy and --checksum go with --from megatron")
    out = args.out
    existing = map_type(out)
    if args.append and existing is not None and args.zstd is not None:
        raise UsageError(f"--zstd sets the compression of a new map; {out} keeps its own when appended to")
    if existing is not None and not (args.force or args.append):
        raise UsageError(f"{out} already holds a {display_name(existing)} map: "
                         f"--force replaces it, --append extends it")
    skips = Skips() if getattr(args, "skip_errors", False) else None
    source = open_source(args.source, args.kind, args.field, args.column, getattr(args, "key_field", None), skips)
    if args.column is not None and source.kind != "parquet":
        raise UsageError(f"--column names a column of a .parquet file; {args.source} holds {source.kind}")
    if args.field is not None and source.kind != "jsonl":
        raise UsageError(f"--field names a field of a .jsonl file; {args.source} holds {source.kind}")
    if args.batch_size is None:  # a Parquet column is written from Arrow's buffers: larger commits pay
        args.batch_size = 65536 if source.kind == "parquet" else 1024
    if source.skipped:
        print(f"mmap-ninja convert: {source.skipped}", file=sys.stderr)
    if args.append and source.makes == "table":
        raise UsageError(f"{args.source} makes a table, which convert writes anew: --force replaces {out}")
    if args.append and existing not in (None, source.makes):
        raise UsageError(f"cannot append to {out}: it holds a {display_name(existing)} map, "
                         f"and {'the Parquet column makes' if source.kind == 'parquet' else source.kind + ' make'} "
                         f"a {display_name(source.makes)} map")
    verbose = not args.quiet
    if args.append and existing is not None:
        m, added = _append(out, source, args.batch_size, _workers(args), verbose)
        print(f"appended {added:,} samples: {_described(m)}")
    else:
        m = _write(out, source, args, verbose, skips)
        print(f"wrote {_described(m)}"
              + (", each sample's key its file's relative path" if source.paths is not None else "")
              + (f", the classes {source.classes[:5]}" + (" ..." if len(source.classes) > 5 else "")
                 if source.classes else ""))
    if skips is not None:
        skips.report()
    return 0


def _described(m) -> str:
    """``repr(m)``, but a numpy map (a Parquet column of numbers) by its path, shape and dtype."""
    if isinstance(m, np.memmap):
        return f"numpy map {str(Path(m.filename).parent)!r} of shape {m.shape} and dtype {m.dtype}"
    return repr(m)


def _write(out: Path, source: Source, args, verbose: bool, skips: Optional[Skips] = None):
    """Write ``source`` as a new map at ``out`` (replacing one there), each sample's key the
    relative path of its file (for a folder)."""
    if source.makes == "table":
        m = _write_table(out, source, args, verbose, skips)
    elif isinstance(source.samples, _FileReader) and skips is not None:
        samples, keys = _readable(source, args, skips)
        m = RaggedMmap.from_generator(out, samples, args.batch_size, verbose, n=source.count, keys=keys)
    elif source.kind == "parquet":
        from ..arrow import from_arrow

        if args.zstd is not None and not source.text:
            raise UsageError(f"--zstd compresses strings; the column {source.column or ''} makes a "
                             f"{display_name(source.makes)} map")
        m = from_arrow(out, source.samples, source.column, verbose, batch_size=args.batch_size, zstd_level=args.zstd)
    elif source.text:
        m = StringsMmap.from_generator(out, source.samples, args.batch_size, verbose, n=source.count,
                                       zstd_level=args.zstd, keys=source.paths)
    elif source.kind == "jsonl":
        m = RaggedMmap.from_generator(out, source.samples, args.batch_size, verbose, dtype=source.dtype)
    else:
        m = RaggedMmap.from_indexable(out, source.samples, args.batch_size, n_jobs=_workers(args), verbose=verbose,
                                      keys=source.paths)
    if open_paths(out) is not None:
        shutil.rmtree(out / PATHS)  # the paths kept by an earlier version beside the map just replaced
    return m


def _readable(source: Source, args, skips: Skips) -> Tuple[Iterator[Any], _keys.KeysAlongside]:
    """The samples of a ``_FileReader`` source that can be read (workers reading them), and
    their keys alongside; the others recorded in ``skips``."""
    keys = _keys.KeysAlongside()

    def samples() -> Iterator[Any]:
        at = 0
        for batch in indexable_batches(source.samples, args.batch_size, n_jobs=_workers(args)):
            for sample in batch:
                if isinstance(sample, _Unreadable):
                    skips.add(source.paths[at], sample.why.split(": ", 1)[-1])
                else:
                    keys.pending.append(source.paths[at])
                    yield sample
                at += 1

    return samples(), keys


def _write_table(out: Path, source: Source, args, verbose: bool, skips: Optional[Skips]):
    """A ``TableMmap`` at ``out`` of a table source: every column of a Parquet file, every field
    of a .jsonl file, the images of class folders with their labels."""
    from ..table import TableMmap

    if source.kind == "parquet":
        from ..arrow import from_arrow

        if args.zstd is not None:
            raise UsageError("--zstd compresses one strings map: with --column NAME a column of strings is one")
        return from_arrow(out, source.samples, None, verbose, batch_size=args.batch_size, key_column=source.key_field)
    if args.zstd is not None:
        raise UsageError("--zstd compresses one strings map; a table's columns are written uncompressed")
    if source.kind == "jsonl":
        rows, keys = source.samples
        return TableMmap.from_generator(out, rows, args.batch_size, n=source.count, verbose=verbose, keys=keys,
                                        columns=source.columns)
    classes = {"label": source.classes}
    if skips is not None:
        rows, keys = _readable(source, args, skips)
        return TableMmap.from_generator(out, rows, args.batch_size, n=source.count, verbose=verbose, keys=keys,
                                        columns=source.columns, classes=classes)
    return TableMmap.from_indexable(out, source.samples, args.batch_size, n_jobs=_workers(args), verbose=verbose,
                                    keys=source.paths, columns=source.columns, classes=classes)


def _append(out: Path, source: Source, batch_size: int, workers: Optional[int], verbose: bool):
    """Extend the map at ``out`` with ``source``, one commit per batch: with each file's path
    as its key when the map's samples have keys (or it is empty), else without keys (and, in
    the paths an earlier version kept beside the map, with the path of each new sample, an
    empty one for samples without)."""
    if source.kind == "parquet":
        return _append_parquet(out, source, batch_size, verbose)
    m = StringsMmap(out) if source.text else RaggedMmap(out)
    keyed = m.keyed or (len(m) == 0 and source.paths is not None)
    if m.keyed and source.paths is None:
        raise UsageError(f"the samples of {out} have keys (their files' paths), and {source.kind} have none to give")
    paths = None if keyed else _paths_to_extend(out, len(m))
    if not keyed and paths is None and source.paths is not None:
        print(f"mmap-ninja convert: the samples of {out} have no keys, so the new ones get none (their paths are "
              f"not kept); rebuild with --force to key every sample by its path", file=sys.stderr)
    if isinstance(source.samples, _FileReader):
        batches = indexable_batches(source.samples, batch_size, n_jobs=workers)
    else:
        batches = in_batches(source.samples, batch_size)
    added = 0
    with progress(source.count, verbose, desc=f"Extending {out.name}") as bar:
        for batch in batches:
            m.extend(batch, keys=source.paths[added:added + len(batch)] if keyed else None)
            if paths is not None:
                paths.extend(source.paths[added:added + len(batch)] if source.paths is not None else [""] * len(batch))
            added += len(batch)
            bar.update(len(batch))
    return m, added



def _append_parquet(out: Path, source: Source, batch_size: int, verbose: bool):
    """Extend the map at ``out`` with a Parquet column, one commit per batch of rows (and the
    paths an earlier version kept beside the map with an empty one per new sample)."""
    from ..arrow import extend_from_arrow

    if _keys.KeyIndex.open(out) is not None:
        raise UsageError(f"the samples of {out} have keys, and a Parquet column has none to give")
    m = open_existing(out)
    before = len(m)
    paths = _paths_to_extend(out, before)
    failed = True
    try:  # one commit per batch: the paths follow what was committed, even when a later batch fails
        m = extend_from_arrow(out, source.samples, source.column, verbose, batch_size=batch_size)
        failed = False
    finally:
        try:
            added = len(open_existing(out)) - before
        except Exception:  # not readable: the error being raised says why
            added = 0
        if failed and added:
            print(f"mmap-ninja convert: {added:,} rows were appended before the error", file=sys.stderr)
        if paths is not None and added:
            paths.extend([""] * added)
    return m, added

# -- Megatron's indexed datasets -----------------------------------------------------------------

def _megatron_prefix(path: Path, existing: bool) -> Path:
    """The prefix of a Megatron pair named by ``path``: ``PREFIX``, or ``PREFIX.bin`` or
    ``PREFIX.idx`` (of a pair that exists, when ``existing``)."""
    if path.suffix not in (".bin", ".idx") or existing and Path(f"{path}.bin").is_file():
        return path
    return path.with_suffix("")


def _convert_megatron(args) -> int:
    """``convert --from megatron PREFIX OUT`` and ``convert --to megatron MAP PREFIX``."""
    from .. import megatron

    given = [flag for flag, value in (("--append", args.append), ("--kind", args.kind), ("--field", args.field),
                                      ("--workers", args.workers > 1), ("--zstd", args.zstd is not None)) if value]
    if given:
        raise UsageError(f"{', '.join(given)}: not for Megatron's indexed datasets")
    verbose = not args.quiet
    if args.to_format:
        if args.copy or args.checksum:
            raise UsageError("--copy and --checksum go with --from megatron")
        kind = map_type(args.source, must_exist=True)
        if kind not in KINDS or not KINDS[kind].arrays:
            what = "no map" if kind is None else f"a {display_name(kind)} map"
            raise UsageError(f"{args.source} holds {what}: Megatron's indexed datasets are written from a ragged "
                             f"map of 1-d sequences")
        prefix = _megatron_prefix(args.out, existing=False)
        bin_path, idx_path = Path(f"{prefix}.bin"), Path(f"{prefix}.idx")
        there = [str(path) for path in (bin_path, idx_path) if os.path.lexists(path)]
        if there and not args.force:
            raise UsageError(f"{' and '.join(there)} already exist{'s' if len(there) == 1 else ''}: --force "
                             f"replaces them")
        m = RaggedMmap(args.source)
        try:
            megatron.export(m, prefix, chunk=args.batch_size or 65536, verbose=verbose)
        except (TypeError, ValueError) as exc:  # n-d samples, scalars, a dtype Megatron has no code for
            raise UsageError(str(exc)) from None
        dtype = np.dtype(np.int32) if m.dtype is None else m.dtype  # as export writes an empty map
        print(f"wrote {bin_path} and {idx_path}: {len(m):,} sequences of {dtype}")
        return 0
    prefix = _megatron_prefix(args.source, existing=True)
    missing = [str(path) for path in (Path(f"{prefix}.bin"), Path(f"{prefix}.idx")) if not path.is_file()]
    if missing:
        raise UsageError(f"no Megatron dataset at {prefix}: {' and '.join(missing)} missing")
    existing = map_type(args.out)
    if existing is not None and not args.force:
        raise UsageError(f"{args.out} already holds a {display_name(existing)} map: --force replaces it")
    m, how, reason = megatron.convert(prefix, args.out, args.batch_size or 65536, verbose, link=not args.copy,
                                      checksum=args.checksum)
    bin_name = f"{prefix}.bin"
    if how == "copied":
        detail = f"the tokens were copied ({reason})"
    else:
        detail = (f"its data.ninja is hard-linked to {bin_name} (one file under two names until the map's first "
                  f"write, which gives the map a copy of its own; rewriting {bin_name} in place before then "
                  f"changes the map; --copy copies it now)"
                  if how == "linked" else f"its data.ninja is a copy-on-write clone of {bin_name}")
        if not args.checksum:
            detail += "; those bytes carry no checksum (--checksum reads them once to record one)"
    print(f"wrote {m!r}: {detail}")
    return 0
