"""Opening a map of any kind from its directory, dispatching on ``type.ninja``."""

from __future__ import annotations

from typing import Any, Callable, Optional

from . import _meta, ragged, string
from . import numpy as np_ninja
from ._lifecycle import Report, verify_map
from .base import PathLike, Wrapped, as_dir, map_type
from .ragged import RaggedMmap
from .string import StringsMmap

# One mode for every kind of map: the file modes that StringsMmap takes ("rb", "r+b") and the
# mapping modes of numpy and ragged maps ("r", "r+") mean the same.
_ARRAY_MODES = {"rb": "r", "r+b": "r+"}
_STRING_MODES = {"r": "rb", "r+": "r+b"}


def _mode(mode: Optional[str], translation: dict) -> dict:
    return {} if mode is None else {"mode": translation.get(mode, mode)}


def verify(out_dir: PathLike, limit: int = 20, deep: bool = False) -> Report:
    """Check the map at ``out_dir``, of any kind, and return what is wrong, one line per
    problem naming the file, at most ``limit`` lines (an empty list when it is sound), with
    ``.notes`` on what could not be checked. ``deep`` also checks every byte written by a
    commit against its checksum. Damage is reported, never raised."""
    out_dir = as_dir(out_dir)
    try:
        type_name = map_type(out_dir, must_exist=True)
    except (OSError, ValueError) as exc:
        return Report([str(exc)])
    if type_name == "sharded":
        from . import sharded

        return sharded.verify_dir(out_dir, limit, deep)
    verifiers = {"numpy": np_ninja._verify_dir, "ragged": ragged.verify_dir, "string": string.verify_dir}
    if type_name not in verifiers:
        return Report([f"{out_dir} is not a mmap_ninja map: " + (f"it has no {_meta.TYPE}" if type_name is None
                       else f"unknown map type {type_name!r} in {out_dir / _meta.TYPE}")])
    return verify_map(out_dir, verifiers[type_name], limit, deep)


def open_existing(out_dir: PathLike, wrapper_fn: Optional[Callable[[Any], Any]] = None, mode: Optional[str] = None):
    """Open the map at ``out_dir``: a ``np.memmap`` for a numpy map, a ``RaggedMmap`` or a
    ``StringsMmap``; with ``wrapper_fn``, each item is passed through it (a ``Wrapped`` for
    numpy and strings maps). ``mode``, if given, is passed to the opener.

    ``FileNotFoundError`` when there is nothing at ``out_dir``; ``ValueError`` when it is not a
    map or of an unknown type.
    """
    out_dir = as_dir(out_dir)
    type_name = map_type(out_dir, must_exist=True)
    if type_name == "numpy":
        memmap = np_ninja.open_existing(out_dir, **_mode(mode, _ARRAY_MODES))
        return memmap if wrapper_fn is None else Wrapped(memmap, wrapper_fn)
    if type_name == "ragged":
        return RaggedMmap(out_dir, wrapper_fn=wrapper_fn, **_mode(mode, _ARRAY_MODES))
    if type_name == "string":
        memmap = StringsMmap(out_dir, **_mode(mode, _STRING_MODES))
        return memmap if wrapper_fn is None else Wrapped(memmap, wrapper_fn)
    if type_name == "sharded":
        from .sharded import ShardedMmap

        return ShardedMmap(out_dir, wrapper_fn=wrapper_fn, **_mode(mode, _ARRAY_MODES))
    if type_name is None:
        raise ValueError(f"{out_dir} is not a mmap_ninja map: it has no {_meta.TYPE}")
    raise ValueError(f"unknown map type {type_name!r} in {out_dir / _meta.TYPE}; "
                     f"expected 'numpy', 'ragged', 'string' or 'sharded'")
