"""Opening, checking and concatenating maps of any kind, dispatching on ``type.ninja`` (the
plain kinds through the registry of ``mmap_ninja._format.kinds``)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from . import _meta, sharded, table
from ._format.kinds import ARRAY_MODES, KINDS, mode_option, verify_plain
from ._format.kinds import concatenate as concatenate_maps
from ._format.verify import VERIFY_LIMIT, Report, check_limit
from .base import PathLike, Wrapped, as_dir, is_url, map_type
from .ragged import RaggedMmap
from .string import StringsMmap
from .table import TableMmap

__all__ = ["VERIFY_LIMIT", "open_existing", "verify", "concatenate", "Wrapped", "RaggedMmap", "StringsMmap",
           "TableMmap"]


def verify(out_dir: PathLike, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
    """Check the map at ``out_dir``, of any kind, and return what is wrong, one line per
    problem naming the file, at most ``limit`` lines (an empty list when it is sound), with
    ``.omitted``, the number of problems found and not listed, and ``.notes`` on what could
    not be checked. ``deep`` also checks every byte written by a commit against its
    checksum. Damage is reported, never raised. A URL is checked in object storage (see
    ``mmap_ninja.remote.verify``)."""
    if is_url(out_dir):
        from .remote import verify as verify_url

        return verify_url(out_dir, limit=limit, deep=deep)
    out_dir = as_dir(out_dir)
    limit = check_limit(limit)
    try:
        type_name = map_type(out_dir, must_exist=True)
    except (OSError, ValueError) as exc:
        return Report([str(exc)])
    if type_name == sharded.TYPE:
        return sharded.verify_dir(out_dir, limit, deep)
    if type_name == table.TYPE:
        return table.TableMmap.verify_dir(out_dir, limit, deep)
    return verify_plain(out_dir, type_name, limit, deep)


def concatenate(out_dir: PathLike, map_dirs: Sequence[PathLike], counts: Optional[Sequence[Optional[int]]] = None,
                **options: Any):
    """Write the samples of the maps ``map_dirs`` (of one kind), in order, as one new map at
    ``out_dir``, built aside and swapped in whole, and open it: plain maps as
    ``mmap_ninja._format.kinds.concatenate`` describes (``kind=``, ``dtype=``, ``verbose=``,
    ``batch_size=``), tables column by column (``TableMmap.concatenate``)."""
    dirs = [as_dir(path) for path in map_dirs]
    if dirs and all(map_type(path, must_exist=True) == table.TYPE for path in dirs):
        return table.TableMmap.concatenate(out_dir, dirs, counts, **options)
    return concatenate_maps(out_dir, dirs, counts, **options)


def open_existing(out_dir: PathLike, wrapper_fn: Optional[Callable[[Any], Any]] = None, mode: Optional[str] = None,
                  **url_options: Any):
    """Open the map at ``out_dir``: a ``np.memmap`` for a numpy map, a ``RaggedMmap``, a
    ``StringsMmap``, a ``ShardedMmap`` or a ``TableMmap``; with ``wrapper_fn``, each item is
    passed through it (a ``Wrapped`` for numpy and strings maps; for a table, a dict
    ``{column: fn}``). ``mode``, if given, is passed to the opener (the
    mode names of every kind are understood).

    ``FileNotFoundError`` when there is nothing at ``out_dir``; ``ValueError`` when it is not a
    map or of an unknown type.

    A URL (``s3://bucket/corpus``) opens the map there as a ``ShardedMmap`` (a plain map pushed
    there is one part); ``url_options``: its ``cache_dir``, ``cache_limit`` and
    ``storage_options``.
    """
    if is_url(out_dir):
        return sharded.ShardedMmap(out_dir, wrapper_fn=wrapper_fn, **mode_option(mode, ARRAY_MODES), **url_options)
    if url_options:
        raise TypeError(f"{', '.join(sorted(url_options))}: options of maps at a URL, not of the local folder "
                        f"{out_dir!r}")
    out_dir = as_dir(out_dir)
    type_name = map_type(out_dir, must_exist=True)
    if type_name in KINDS:
        return KINDS[type_name].open(out_dir, wrapper_fn, mode)
    if type_name == sharded.TYPE:
        return sharded.ShardedMmap(out_dir, wrapper_fn=wrapper_fn, **mode_option(mode, ARRAY_MODES))
    if type_name == table.TYPE:
        return table.TableMmap(out_dir, **mode_option(mode, ARRAY_MODES), wrapper_fn=wrapper_fn)
    if type_name is None:
        raise ValueError(f"{out_dir} is not a mmap_ninja map: it has no {_meta.TYPE}")
    raise ValueError(f"unknown map type {type_name!r} in {out_dir / _meta.TYPE}; "
                     f"expected one of {sorted(KINDS) + [sharded.TYPE, table.TYPE]}")
