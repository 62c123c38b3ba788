"""Building a map aside: a new map of any kind is written in a folder beside the one it replaces
and swapped in whole when it is complete, so that readers see the old map or the new one and an
error leaves the old one as it was."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional

from .. import _keys
from .._storage import Replacement, WriterLock, flush_tree
from ..base import PathLike, as_dir, build_in_batches


@contextlib.contextmanager
def building(out_dir: PathLike) -> Iterator[Path]:
    """A folder in which to build a new map that replaces whatever map is at ``out_dir`` when
    the block ends without an error; on any error the old map stays exactly as it was, and
    nothing is left behind (not even ``out_dir``, when this call created it)."""
    out_dir = as_dir(out_dir)
    created = not out_dir.exists()
    lock = WriterLock(out_dir).__enter__()  # another writer: BlockingIOError, and nothing is touched
    try:
        with Replacement(lock) as build:
            yield build
    except BaseException:
        if created:  # still holding the lock: nobody else writes here
            with contextlib.suppress(OSError):
                (out_dir / "writer.lock").unlink()
                out_dir.rmdir()
        raise
    finally:
        lock.__exit__()


def build_aside(out_dir: PathLike, batches: Iterable[Any], create: Callable[[Path, Any], Any],
                extend: Callable[[Any, Any], None], keys: Optional[Iterable[str]] = None) -> Path:
    """Write ``batches`` as a new map (``create(build, first batch)``, which returns the map's
    files, an object with ``.n``, then ``extend(files, batch)`` for each next one) aside, and
    swap it in at ``out_dir`` when it is whole; returns ``out_dir``, absolute. ``keys`` (one
    per sample, consumed alongside) are written before each batch.

    Nobody reads the map before it is swapped in, so its commits need not be flushed one by one
    (``create`` and ``extend`` commit with ``Commit(durable=False)``): it is flushed to disk
    whole, once, before the swap (when durability is on)."""
    out_dir = as_dir(out_dir)  # absolute before the folder (maybe the working one) is replaced
    with building(out_dir) as build:
        feed = _keys.KeyFeed(build, keys) if keys is not None else None
        batches_with_keys: Iterable[List[Any]] = batches if feed is None else feed.batches(batches)
        files = build_in_batches(batches_with_keys, lambda batch: create(build, batch), extend)
        if feed is not None:
            feed.finish(files.n)
        flush_tree(build)
    return out_dir
