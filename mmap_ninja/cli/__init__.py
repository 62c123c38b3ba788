"""The ``mmap-ninja`` command (also ``python -m mmap_ninja``): inspect, check, convert and
benchmark maps.

    mmap-ninja info PATH                  what a map holds (and how many samples have a path)
    mmap-ninja verify PATH [--deep]       check a whole map (--deep: every byte against its
                                          checksum); exit 1 when something is wrong
    mmap-ninja head PATH [-n K]           the first K samples, one line each, with their paths
    mmap-ninja merge OUT MAP...           maps of one kind into a new sharded map (--move: no copy)
    mmap-ninja compact SHARDED OUT        a sharded map into one plain map
    mmap-ninja gc SHARDED                 remove the parts no commit lists
    mmap-ninja push MAP URL               a map into object storage (s3://bucket/prefix, ...)
    mmap-ninja pull URL OUT               a map in object storage into the new folder OUT
    info, verify, head and gc take a URL too (credentials and endpoint from the environment:
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION for s3://).
    mmap-ninja convert SOURCE OUT         a folder tree of images, .txt or .npy files, or a .jsonl
                                          field, into a RaggedMmap or StringsMmap at OUT;
                                          refused when OUT holds a map already
    mmap-ninja convert IMAGES OUT         a folder whose sub-folders are classes (cat/1.png,
                                          dog/2.png, ...): a TableMmap of image and label, with
                                          the class names
    mmap-ninja convert DATA.jsonl OUT     every field of the records into a TableMmap (numbers as
                                          numpy columns); --key-field id keys rows by a field
    mmap-ninja convert DATA.parquet OUT   every column of a Parquet file into a TableMmap, read
                                          row group by row group (pyarrow); --column NAME: one
                                          column, into the map of its kind
    --skip-errors                         skip unreadable files and records (listed on stderr)
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
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from .. import __version__
from ..generic import VERIFY_LIMIT
from ._common import UsageError, positive
from .bench import add_bench_command
from .convert import command_convert, natural_key
from .inspect import command_compact, command_gc, command_head, command_info, command_merge, command_verify
from .remote import command_pull, command_push, location

__all__ = ["main", "build_parser", "UsageError", "natural_key"]


# -- entry point --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmap-ninja", description="Inspect, check, convert and benchmark "
                                     "memory-mapped datasets.")
    parser.add_argument("--version", action="version", version=f"mmap_ninja {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="what a map holds (a folder or a URL)")
    info.add_argument("path", type=location)
    info.set_defaults(run=command_info)

    check = commands.add_parser("verify", help="check a whole map; exit 1 when something is wrong")
    check.add_argument("path", type=location)
    check.add_argument("--limit", type=positive, default=VERIFY_LIMIT,
                       help=f"list at most this many problems, counting the rest (default {VERIFY_LIMIT})")
    check.add_argument("--deep", action="store_true", help="also read every byte and compare it with the "
                       "checksums recorded by its commit")
    check.set_defaults(run=command_verify)

    head = commands.add_parser("head", help="print the first samples")
    head.add_argument("path", type=location)
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
    convert.add_argument("--field", help="the field of each .jsonl record to store (default: every field, as a "
                         "table)")
    convert.add_argument("--key-field", help="the field of each .jsonl record (or column of a .parquet file) that "
                         "keys its row, in a table")
    convert.add_argument("--skip-errors", action="store_true", help="skip unreadable files and records, listing them "
                         "on stderr, instead of stopping at the first")
    convert.add_argument("--column", help="the one column of a .parquet file to store (default: every column, as a "
                         "table)")
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

    gc = commands.add_parser("gc", help="remove the parts of a sharded map (or uploads to a URL) that no commit lists")
    gc.add_argument("path", type=location)
    gc.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                    help="at a URL, only uploads older than this (default 3600: builds running now keep theirs)")
    gc.set_defaults(run=command_gc)

    push = commands.add_parser("push", help="a local map to object storage (a URL such as s3://bucket/corpus)")
    push.add_argument("map", type=Path)
    push.add_argument("url")
    push.add_argument("--quiet", action="store_true", help="no progress bar")
    push.set_defaults(run=command_push)

    pull = commands.add_parser("pull", help="a map in object storage into a new local folder")
    pull.add_argument("url")
    pull.add_argument("out", type=Path)
    pull.add_argument("--version", type=int, default=None, help="an earlier version (default: the latest)")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(run=command_pull)

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
