"""``mmap-ninja push`` and ``pull``, and what ``info``, ``head`` and ``gc`` say of a map at a URL
(``verify`` of a URL goes through ``mmap_ninja.verify``)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from ..base import is_url
from ._common import human_bytes


def location(text: str) -> Union[str, Path]:
    """A command's map argument: a URL as given, else a local path."""
    return text if is_url(text) else Path(text)


def command_push(args) -> int:
    from ..remote import push

    manifest = push(args.map, args.url, verbose=not args.quiet)
    samples = sum(part["length"] for part in manifest["parts"])
    print(f"pushed {args.map} to {args.url}: version {manifest['version']}, {samples:,} {manifest['kind']} samples "
          f"in {len(manifest['parts'])} part{'s' if len(manifest['parts']) != 1 else ''}")
    return 0


def command_pull(args) -> int:
    from ..generic import open_existing
    from ..remote import pull

    path = pull(args.url, args.out, version=args.version, verbose=not args.quiet)
    print(f"pulled {args.url} to {path}: {open_existing(path)!r}")
    return 0


def describe_url(url: str) -> list:
    """``(label, value)`` lines that describe the map at ``url``, from its manifest alone."""
    from ..remote import Store, latest_manifest

    manifest = latest_manifest(Store(url))
    if manifest is None:
        raise FileNotFoundError(f"{url}: no map there")
    parts = manifest["parts"]
    size = sum(f["size"] for part in parts for f in part["files"])
    lines = [("url", url), ("kind", f"sharded ({manifest['kind']} parts)" + (", pushed from a plain map"
                                                                             if manifest.get("plain") else "")),
             ("samples", f"{sum(part['length'] for part in parts):,}"), ("parts", f"{len(parts):,}"),
             ("dtype", manifest.get("dtype") or "-"), ("version", str(manifest.get("version", 0))),
             ("keys", "one per sample" if manifest.get("keys") is not None and manifest.get("key_files") else "none"),
             ("stored", f"{human_bytes(size)} in {sum(len(part['files']) for part in parts):,} objects")]
    return lines


def command_gc_url(url: str, older_than: float) -> int:
    from ..remote import gc

    removed = gc(url, older_than=older_than)
    for name in removed:
        print(f"removed {url}/parts/{name}")
    print(f"{url}: {len(removed)} abandoned upload{'s' if len(removed) != 1 else ''} removed")
    return 0
