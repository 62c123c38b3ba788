"""Files of a map, in four modules, each importing only the ones listed before it:

- ``files``: the durability switch (``durability``, ``set_durability``) and the file primitives
  under the rest: flushing to disk, writes at an offset, copies of byte ranges within the
  kernel, copy-on-write clones, mappings of whole files.
- ``locking``: the writer lock (``WriterLock``), files shared with other paths and made private
  (``shared``, ``make_private``, ``check_holds``), and whole maps built aside and swapped in
  (``link_map``, ``Replacement``, ``flush_tree``, recovery of abandoned builds).
- ``commit``: commits (``Commit``) and the checksums they record (``checksums.ninja``: reading,
  ``recorded_crcs``, ``verify_checksums``).
- ``arrays``: fixed-shape array directories (``ArrayDir``), mapping their files (``map_file``,
  ``empty_memmap``) and opening a map that a writer may be replacing (``open_consistent``).

Every name the rest of the package imports from ``mmap_ninja._storage`` is importable from here.
To replace one of them (as tests do to make a write fail), set it in the submodule that calls it.
"""

from __future__ import annotations

from typing import Any

from .._mapping import exchange
from . import files
from .arrays import ArrayDir, ChangedWhileOpening, byte_view, empty_memmap, map_file, open_consistent
from .commit import CHECKSUMS, Commit, metadata_bytes, read_checksum_entries, recorded_crcs, verify_checksums
from .files import (
    FICLONE,
    _fsync_path,
    clone_file,
    copy_ranges,
    durability,
    map_bytes,
    set_durability,
    write_at,
)
from .locking import (
    BUILD_PARTS,
    LOCK_FILE,
    PENDING,
    Replacement,
    WriterLock,
    check_holds,
    flush_tree,
    link_map,
    make_private,
    recover_abandoned_builds,
    shared,
)

__all__ = [
    "ArrayDir", "BUILD_PARTS", "CHECKSUMS", "ChangedWhileOpening", "Commit", "FICLONE", "LOCK_FILE", "PENDING",
    "Replacement", "WriterLock", "_fsync_path", "byte_view", "check_holds", "clone_file", "copy_ranges",
    "durability", "empty_memmap", "exchange", "flush_tree", "link_map", "make_private", "map_bytes", "map_file",
    "metadata_bytes", "open_consistent", "read_checksum_entries", "recorded_crcs", "recover_abandoned_builds",
    "set_durability", "shared", "verify_checksums", "write_at",
]


def __getattr__(name: str) -> Any:
    # ``_durable`` changes with ``durability``: read it where it lives, not a copy made at import
    if name == "_durable":
        return files._durable
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

