"""The ``mmap-ninja`` command (also ``python -m mmap_ninja``): inspect, check, convert and
benchmark maps.

    mmap-ninja info PATH                  what a map holds (and how many samples have a path)
    mmap-ninja verify PATH [--deep]       check a whole map (--deep: every byte against its
                                          checksum); exit 1 when something is wrong
    mmap-ninja head PATH [-n K]           the first K samples, one line each, with their paths
    mmap-ninja merge OUT MAP...           maps of one kind into a new sharded map (--move: no copy)
    mmap-ninja compact SHARDED OUT        a sharded map into one plain map
    mmap-ninja gc SHARDED                 remove the parts no commit lists
    mmap-ninja convert SOURCE OUT         a folder tree of images, .txt or .npy files, or a .jsonl
                                          field, into a RaggedMmap or StringsMmap at OUT;
                                          refused when OUT holds a map already
    mmap-ninja convert DATA.parquet OUT --column NAME    a column of a Parquet file, read row
                                          group by row group (pyarrow)
    mmap-ninja convert SOURCE OUT --force     replace the map at OUT
    mmap-ninja convert SOURCE OUT --append    extend the map at OUT (of the same kind)
    mmap-ninja convert --from megatron PREFIX OUT     Megatron's PREFIX.bin/PREFIX.idx into a
                                          RaggedMmap, PREFIX.bin linked as its data when it can
                                          be (--copy: copied; --checksum: its CRC-32 recorded)
    mmap-ninja convert --to megatron MAP PREFIX       a RaggedMmap of 1-d sequences into
                                          Megatron's PREFIX.bin/PREFIX.idx
    mmap-ninja bench {images,texts}       files read one by one against a map

``convert`` reads a folder recursively, in natural order of the files' paths (``doc_2`` before
``doc_10``, ``a/x`` before ``b/x``), skips hidden files and folders and files of other kinds
(and says so on stderr), and keeps the path of each sample relative to SOURCE in the strings map
``OUT/paths``.

Exit codes: 0 done, 1 ``verify`` found a problem, 2 wrong usage or input. Errors are one line;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__, _keys, _meta
from . import numpy as np_ninja
from .base import in_batches, map_type, progress
from .generic import VERIFY_LIMIT, open_existing, verify
from .parallel import indexable_batches
from .ragged import RaggedMmap
from .string import StringsMmap

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# What ``convert`` reads from a folder, in the order that breaks a tie when guessing the kind.
FOLDER_KINDS = (("images", IMAGE_SUFFIXES), ("texts", (".txt",)), ("npy", (".npy",)))
# The sub-folder of a converted map that holds the relative path of each sample.
PATHS = "paths"
# How each kind of map is named in messages.
MAP_NAMES = {"numpy": "numpy", "ragged": "ragged", "string": "strings"}


class UsageError(Exception):
    """Wrong input: reported in one line, exit code 2."""


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")


def disk_usage(path: Path) -> int:
    """Bytes that the files under ``path`` occupy on disk (holes of sparse files excluded)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def open_paths(path: Path) -> Optional[StringsMmap]:
    """The relative path of each sample kept beside the map at ``path`` by earlier versions of
    ``convert`` (``path/paths``; now the paths are the samples' keys), or ``None`` when it has
    none."""
    folder = path / PATHS
    if not folder.is_dir() or map_type(folder) != "string":
        return None
    return StringsMmap(folder, mode="rb")


def _paths_to_extend(out: Path, samples: int) -> Optional[StringsMmap]:
    """``open_paths(out)``, checked to hold one path per sample of the map's ``samples`` before
    an append adds more."""
    paths = open_paths(out)
    if paths is not None and len(paths) != samples:
        raise UsageError(f"{out / PATHS} holds {len(paths):,} paths for {samples:,} samples: remove it to append "
                         f"without paths, or rebuild the map with --force")
    return paths


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
    kind = map_type(path, must_exist=True)
    if kind is None:
        raise UsageError(f"{path} is not a mmap_ninja map: it has no {_meta.TYPE}")
    lines = [("path", str(path))]
    if kind == "numpy":
        memmap = np_ninja.open_existing(path)
        lines += [("kind", f"numpy ({'Fortran' if memmap.flags.f_contiguous and memmap.ndim > 1 else 'C'} order)"),
                  ("samples", f"{memmap.shape[0]:,}" if memmap.ndim else "0-d array"),
                  ("dtype", memmap.dtype.name), ("shape", str(memmap.shape))]
    elif kind == "ragged":
        m = RaggedMmap(path)
        lines += [("kind", "ragged (" + ("1-d samples" if m.shapes_are_flat else "samples of several shapes") + ")"),
                  ("samples", f"{len(m):,}"), ("dtype", "unknown" if m.dtype is None else m.dtype.name)]
        if len(m):
            lines.append(("elements", _length_summary(m.ends - m.starts, "per sample")))
            if not m.shapes_are_flat:
                lines.append(("shapes", _shape_summary(m)))
    elif kind == "string":
        s = StringsMmap(path, mode="rb")
        compression = _compression(s.codec)
        lines += [("kind", "strings"), ("samples", f"{len(s):,}")]
        if len(s):
            unit = "per string" + (" (compressed)" if compression != "none" else "")
            lines.append(("bytes", _length_summary(s.ends - s.starts, unit)))
        lines.append(("compression", compression))
    elif kind == "sharded":
        from .sharded import ShardedMmap

        m = ShardedMmap(path)
        lines += [("kind", f"sharded ({m.kind} parts)"), ("samples", f"{len(m):,}"),
                  ("parts", f"{len(m.part_names):,}" + (f", {len(m.uncommitted_parts()):,} never committed"
                                                        if m.uncommitted_parts() else "")),
                  ("dtype", "-" if m.dtype is None else m.dtype.name)]
    else:
        raise UsageError(f"{path}: unknown map type {kind!r}")
    samples = len(open_existing(path)) if kind != "numpy" or np_ninja.open_existing(path).ndim else 0
    lines.append(("keys", _keys_summary(path, samples)))
    paths = open_paths(path)
    if paths is not None:
        lines.append(("paths", _paths_summary(paths, samples)))
    files = [p for p in path.rglob("*") if p.is_file()]
    lines.append(("on disk", f"{human_bytes(disk_usage(path))} in {len(files)} files"))
    return lines


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
    lines = describe(args.path)
    width = max(len(label) for label, _ in lines) + 1
    for label, value in lines:
        print(f"{label + ':':<{width}} {value}")
    return 0


# -- verify and head ----------------------------------------------------------------------------

def command_verify(args) -> int:
    if not args.path.exists():
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
    in full, or the dtype, shape, range and first values of a larger array."""
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
    from .sharded import ShardedMmap

    if map_type(args.out) is not None:
        raise UsageError(f"{args.out} holds a map already")
    m = ShardedMmap.from_maps(args.out, args.maps, copy=not args.move)
    print(f"wrote {m!r}")
    return 0


def command_compact(args) -> int:
    from .sharded import ShardedMmap

    if map_type(args.sharded, must_exist=True) != "sharded":
        raise UsageError(f"{args.sharded} is not a sharded map")
    if map_type(args.out) is not None and not args.force:
        raise UsageError(f"{args.out} holds a map already: --force replaces it")
    print(f"wrote {ShardedMmap(args.sharded).compact(args.out, verbose=not args.quiet)!r}")
    return 0


def command_gc(args) -> int:
    from .sharded import ShardedMmap

    if map_type(args.path, must_exist=True) != "sharded":
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
    names = first_keys(args.path, count)
    if names is None:
        paths = open_paths(args.path)
        if paths is not None and len(paths) == len(m):  # else out of step with the samples: see ``info``
            names = [paths[i] for i in range(count)]
    for i in range(count):
        name = names[i] if names is not None and i < len(names) else ""
        print(f"[{i}] " + (f"{name}: " if name else "") + _show(m[i]))
    if len(m) > count:
        print(f"... {len(m) - count:,} more")
    return 0


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


def read_image(path: Path) -> np.ndarray:
    """The pixels of an image file, as ``uint8`` (H, W) or (H, W, channels)."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading images needs Pillow: pip install 'mmap_ninja[images]'") from None
    with Image.open(path) as image:
        return np.asarray(image)


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


class _FileReader:
    """``reader(files[i])``, indexable and picklable, for ``from_indexable`` with workers; an
    unreadable file becomes an error that names it."""

    def __init__(self, files: List[Path], reader: Callable):
        self.files, self.reader = files, reader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return _read(self.reader, self.files[i])


def _read(reader: Callable, path: Path):
    try:
        return reader(path)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None


def _jsonl_values(path: Path, name: str) -> Iterator:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or name not in record:
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


def open_source(source: Path, kind: Optional[str], name: Optional[str], column: Optional[str] = None) -> Source:
    """The samples of ``source``: a folder tree (its kind guessed from the whole tree unless
    ``kind`` is given), the field ``name`` of a .jsonl file or the ``column`` of a .parquet file."""
    if source.is_file() and (kind == "parquet" or kind is None and source.suffix.lower() == ".parquet"):
        return _parquet_source(source, column)
    if source.is_file():
        if kind not in (None, "jsonl") or (kind is None and source.suffix.lower() != ".jsonl"):
            raise UsageError(f"{source}: convert takes a folder, or a .jsonl file with --field, or a .parquet file")
        if not name:
            raise UsageError("a .jsonl source needs --field NAME")
        return _jsonl_source(source, name)
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
        samples = _FileReader(files, read_image if kind == "images" else np.load)
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


def _parquet_source(path: Path, column: Optional[str]) -> Source:
    """A column of a Parquet file (``column``: needed when it has several), read row group by
    row group by ``mmap_ninja.arrow``."""
    try:
        import pyarrow.parquet as pq

        from . import arrow
    except ImportError:
        raise UsageError("reading Parquet files needs pyarrow: pip install 'mmap_ninja[arrow]'") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet
        raise UsageError(f"{path}: cannot be read as Parquet ({exc})") from None
    names = parquet.schema_arrow.names
    if column is None and len(names) != 1:
        raise UsageError(f"{path} has {len(names)} columns ({', '.join(names)}): --column NAME chooses one")
    if column is not None and column not in names:
        raise UsageError(f"{path} has no column {column!r}; its columns: {', '.join(names)}")
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
        raise UsageError(f"{out} already holds a {MAP_NAMES.get(existing, existing)} map: "
                         f"--force replaces it, --append extends it")
    source = open_source(args.source, args.kind, args.field, args.column)
    if args.column is not None and source.kind != "parquet":
        raise UsageError(f"--column names a column of a .parquet file; {args.source} holds {source.kind}")
    if args.field is not None and source.kind != "jsonl":
        raise UsageError(f"--field names a field of a .jsonl file; {args.source} holds {source.kind}")
    if args.batch_size is None:  # a Parquet column is written from Arrow's buffers: larger commits pay
        args.batch_size = 65536 if source.kind == "parquet" else 1024
    if source.skipped:
        print(f"mmap-ninja convert: {source.skipped}", file=sys.stderr)
    if args.append and existing not in (None, source.makes):
        raise UsageError(f"cannot append to {out}: it holds a {MAP_NAMES.get(existing, existing)} map, "
                         f"and {'the Parquet column makes' if source.kind == 'parquet' else source.kind + ' make'} "
                         f"a {MAP_NAMES[source.makes]} map")
    verbose = not args.quiet
    if args.append and existing is not None:
        m, added = _append(out, source, args.batch_size, _workers(args), verbose)
        print(f"appended {added:,} samples: {_described(m)}")
    else:
        m = _write(out, source, args, verbose)
        print(f"wrote {_described(m)}"
              + (", each sample's key its file's relative path" if source.paths is not None else ""))
    return 0


def _described(m) -> str:
    """``repr(m)``, but a numpy map (a Parquet column of numbers) by its path, shape and dtype."""
    if isinstance(m, np.memmap):
        return f"numpy map {str(Path(m.filename).parent)!r} of shape {m.shape} and dtype {m.dtype}"
    return repr(m)


def _write(out: Path, source: Source, args, verbose: bool):
    """Write ``source`` as a new map at ``out`` (replacing one there), each sample's key the
    relative path of its file (for a folder)."""
    if source.kind == "parquet":
        from .arrow import from_arrow

        if args.zstd is not None and source.makes != "string":
            raise UsageError(f"--zstd compresses strings; the column {source.column or ''} makes a "
                             f"{MAP_NAMES[source.makes]} map")
        m = from_arrow(out, source.samples, source.column, verbose, batch_size=args.batch_size, zstd_level=args.zstd)
    elif source.makes == "string":
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


def _append(out: Path, source: Source, batch_size: int, workers: Optional[int], verbose: bool):
    """Extend the map at ``out`` with ``source``, one commit per batch: with each file's path
    as its key when the map's samples have keys (or it is empty), else without keys (and, in
    the paths an earlier version kept beside the map, with the path of each new sample, an
    empty one for samples without)."""
    if source.kind == "parquet":
        return _append_parquet(out, source, batch_size, verbose)
    m = StringsMmap(out) if source.makes == "string" else RaggedMmap(out)
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
    from .arrow import extend_from_arrow

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
    from . import megatron

    given = [flag for flag, value in (("--append", args.append), ("--kind", args.kind), ("--field", args.field),
                                      ("--workers", args.workers > 1), ("--zstd", args.zstd is not None)) if value]
    if given:
        raise UsageError(f"{', '.join(given)}: not for Megatron's indexed datasets")
    verbose = not args.quiet
    if args.to_format:
        if args.copy or args.checksum:
            raise UsageError("--copy and --checksum go with --from megatron")
        kind = map_type(args.source, must_exist=True)
        if kind != "ragged":
            what = "no map" if kind is None else f"a {MAP_NAMES.get(kind, kind)} map"
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
        raise UsageError(f"{args.out} already holds a {MAP_NAMES.get(existing, existing)} map: --force replaces it")
    m, how, reason = megatron._to_ragged(prefix, args.out, args.batch_size or 65536, verbose, link=not args.copy,
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


# -- entry point --------------------------------------------------------------------------------

def positive(text: str) -> int:
    """An argument that must be a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmap-ninja", description="Inspect, check, convert and benchmark "
                                     "memory-mapped datasets.")
    parser.add_argument("--version", action="version", version=f"mmap_ninja {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="what a map holds")
    info.add_argument("path", type=Path)
    info.set_defaults(run=command_info)

    check = commands.add_parser("verify", help="check a whole map; exit 1 when something is wrong")
    check.add_argument("path", type=Path)
    check.add_argument("--limit", type=positive, default=VERIFY_LIMIT,
                       help=f"list at most this many problems, counting the rest (default {VERIFY_LIMIT})")
    check.add_argument("--deep", action="store_true", help="also read every byte and compare it with the "
                       "checksums recorded by its commit")
    check.set_defaults(run=command_verify)

    head = commands.add_parser("head", help="print the first samples")
    head.add_argument("path", type=Path)
    head.add_argument("-n", type=positive, default=5, help="how many (default 5)")
    head.set_defaults(run=command_head)

    convert = commands.add_parser("convert", help="files into a map: a folder tree of images, .txt or .npy "
                                  "files, a field of a .jsonl file or a column of a .parquet file")
    convert.add_argument("source", type=Path, metavar="SOURCE", help="a folder (read recursively), a .jsonl file "
                         "or a .parquet file")
    convert.add_argument("out", type=Path, metavar="OUT", help="the folder of the map")
    existing = convert.add_mutually_exclusive_group()
    existing.add_argument("--force", action="store_true", help="replace a map already at OUT")
    existing.add_argument("--append", action="store_true", help="extend the map at OUT (of the same kind)")
    convert.add_argument("--kind", choices=["images", "texts", "npy", "jsonl", "parquet"],
                         help="what the source holds (default: guessed from it)")
    convert.add_argument("--field", help="the field of each .jsonl record to store")
    convert.add_argument("--column", help="the column of a .parquet file to store (needed when it has several)")
    convert.add_argument("--batch-size", type=positive, default=None,
                         help="samples per commit (default 1024; 65536 for a .parquet file and with --from/--to "
                              "megatron)")
    convert.add_argument("--workers", type=positive, default=1, help="processes reading files (images, .npy)")
    convert.add_argument("--zstd", type=int, default=None, metavar="LEVEL", help="compress strings with zstd")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    megatron = convert.add_mutually_exclusive_group()
    megatron.add_argument("--from", dest="from_format", choices=["megatron"],
                          help="SOURCE is the PREFIX of Megatron's PREFIX.bin and PREFIX.idx")
    megatron.add_argument("--to", dest="to_format", choices=["megatron"],
                          help="SOURCE is a ragged map of 1-d sequences, written as Megatron's OUT.bin and OUT.idx")
    convert.add_argument("--copy", action="store_true", help="with --from megatron: copy PREFIX.bin's tokens instead "
                         "of linking the file as the map's data")
    convert.add_argument("--checksum", action="store_true", help="with --from megatron: read the linked tokens once "
                         "to record their CRC-32 (for verify --deep)")
    convert.set_defaults(run=command_convert)

    merge = commands.add_parser("merge", help="maps of one kind into a new sharded map (copied, or --move)")
    merge.add_argument("out", type=Path)
    merge.add_argument("maps", type=Path, nargs="+")
    merge.add_argument("--move", action="store_true", help="move the maps in instead of copying them")
    merge.set_defaults(run=command_merge)

    compact = commands.add_parser("compact", help="a sharded map into one plain map")
    compact.add_argument("sharded", type=Path)
    compact.add_argument("out", type=Path)
    compact.add_argument("--force", action="store_true", help="replace a map at OUT")
    compact.add_argument("--quiet", action="store_true", help="no progress bar")
    compact.set_defaults(run=command_compact)

    gc = commands.add_parser("gc", help="remove the parts of a sharded map that no commit lists")
    gc.add_argument("path", type=Path)
    gc.set_defaults(run=command_gc)

    from .benchmark import add_bench_command

    add_bench_command(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("mmap-ninja: interrupted", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        message = str(exc) if isinstance(exc, (UsageError, OSError, ValueError)) else f"{type(exc).__name__}: {exc}"
        print(f"mmap-ninja {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
