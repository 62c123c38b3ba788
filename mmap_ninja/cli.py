"""The ``mmap-ninja`` command (also ``python -m mmap_ninja``): inspect, check, convert and
benchmark maps.

    mmap-ninja info PATH                  what a map holds
    mmap-ninja verify PATH                check a whole map; exit 1 when something is wrong
    mmap-ninja head PATH [-n K]           the first K samples
    mmap-ninja convert SOURCE OUT         a folder of images, .txt or .npy files, or a .jsonl
                                          field, into a RaggedMmap or StringsMmap
    mmap-ninja bench {images,texts}       files read one by one against a map

Exit codes: 0 done, 1 ``verify`` found a problem, 2 wrong usage or input. Errors are one line;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np

from . import __version__, _meta
from . import numpy as np_ninja
from .base import map_type
from .generic import open_existing, verify
from .ragged import RaggedMmap
from .string import StringsMmap

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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


# -- info ---------------------------------------------------------------------------------------

def _length_summary(lengths: np.ndarray, unit: str) -> str:
    if not len(lengths):
        return "-"
    return (f"min {int(lengths.min()):,}, max {int(lengths.max()):,}, mean {float(lengths.mean()):,.1f} {unit}")


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
        codec = s.codec
        lines += [("kind", "strings"), ("samples", f"{len(s):,}")]
        if len(s):
            unit = "per string" + (" (compressed)" if codec.compressed else "")
            lines.append(("bytes", _length_summary(s.ends - s.starts, unit)))
        compression = "none" if not codec.compressed else (
            f"zstd level {codec.level}" + (f", {len(codec.dictionary):,}-byte dictionary" if codec.dictionary else ""))
        lines.append(("compression", compression))
    else:
        raise UsageError(f"{path}: unknown map type {kind!r}")
    files = [p for p in path.rglob("*") if p.is_file()]
    lines.append(("on disk", f"{human_bytes(disk_usage(path))} in {len(files)} files"))
    return lines


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
    problems = verify(args.path, limit=args.limit)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{args.path}: sound")
    return 1 if problems else 0


def _show(sample) -> str:
    if isinstance(sample, str):
        return repr(sample if len(sample) <= 200 else sample[:200] + "…")
    array = np.asarray(sample)
    if array.ndim == 0:
        return repr(array.item())
    text = np.array2string(array, threshold=20, edgeitems=3, max_line_width=100)
    return f"{array.dtype.name} {array.shape}: " + text.replace("\n", "\n    ")


def command_head(args) -> int:
    m = open_existing(args.path)
    count = min(args.n, len(m))
    for i in range(count):
        print(f"[{i}] {_show(m[i])}")
    if len(m) > count:
        print(f"... {len(m) - count:,} more")
    return 0


# -- convert ------------------------------------------------------------------------------------

def _files(source: Path, suffixes: Sequence[str]) -> List[Path]:
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise UsageError(f"{source} holds no {'/'.join(suffixes)} files")
    return files


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


def _jsonl_values(path: Path, field: str) -> Iterator:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or field not in record:
                raise UsageError(f"{path}:{number}: no field {field!r}")
            yield record[field]


def _detect(source: Path, field: Optional[str]) -> str:
    if source.is_file():
        if source.suffix.lower() != ".jsonl":
            raise UsageError(f"{source}: convert takes a folder, or a .jsonl file with --field")
        if not field:
            raise UsageError("a .jsonl source needs --field NAME")
        return "jsonl"
    if not source.is_dir():
        raise UsageError(f"no such file or folder: {source}")
    suffixes = {p.suffix.lower() for p in source.iterdir() if p.is_file()}
    for kind, wanted in (("images", IMAGE_SUFFIXES), ("texts", (".txt",)), ("npy", (".npy",))):
        if suffixes & set(wanted):
            return kind
    raise UsageError(f"{source} holds no image, .txt or .npy files")


def command_convert(args) -> int:
    kind = args.kind or _detect(args.source, args.field)
    verbose = not args.quiet
    if kind == "jsonl":
        values = _jsonl_values(args.source, args.field)
        seen = []  # values read ahead to find the dtype: the first that is not an empty list
        for value in values:
            seen.append(value)
            if isinstance(value, str) or np.size(value):
                break
        if not seen:
            raise UsageError(f"{args.source} holds no records")
        values = itertools.chain(seen, values)
        if isinstance(seen[-1], str):
            m = StringsMmap.from_generator(args.out, values, args.batch_size, verbose, zstd_level=args.zstd)
        else:
            dtype = np.asarray(seen[-1]).dtype if np.size(seen[-1]) else np.int64
            m = RaggedMmap.from_generator(args.out, values, args.batch_size, verbose, dtype=dtype)
    elif kind == "texts":
        files = _files(args.source, (".txt",))
        texts = (_read(read_text, path) for path in files)
        m = StringsMmap.from_generator(args.out, texts, args.batch_size, verbose, n=len(files), zstd_level=args.zstd)
    else:
        reader, suffixes = (read_image, IMAGE_SUFFIXES) if kind == "images" else (np.load, (".npy",))
        files = _files(args.source, suffixes)
        workers = None if args.workers <= 1 else args.workers
        m = RaggedMmap.from_indexable(args.out, _FileReader(files, reader), args.batch_size,
                                      n_jobs=workers, verbose=verbose)
    print(f"wrote {m!r}")
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
    check.add_argument("--limit", type=positive, default=100, help="report at most this many problems")
    check.set_defaults(run=command_verify)

    head = commands.add_parser("head", help="print the first samples")
    head.add_argument("path", type=Path)
    head.add_argument("-n", type=positive, default=5, help="how many (default 5)")
    head.set_defaults(run=command_head)

    convert = commands.add_parser("convert", help="files into a map: a folder of images, .txt or .npy files, "
                                  "or a field of a .jsonl file")
    convert.add_argument("source", type=Path)
    convert.add_argument("out", type=Path)
    convert.add_argument("--kind", choices=["images", "texts", "npy", "jsonl"],
                         help="what the source holds (default: guessed from it)")
    convert.add_argument("--field", help="the field of each .jsonl record to store")
    convert.add_argument("--batch-size", type=positive, default=1024, help="samples per commit (default 1024)")
    convert.add_argument("--workers", type=positive, default=1, help="processes reading files (images, .npy)")
    convert.add_argument("--zstd", type=int, default=None, metavar="LEVEL", help="compress strings with zstd")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.set_defaults(run=command_convert)

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
