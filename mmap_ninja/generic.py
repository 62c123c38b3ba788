"""Opening a map of any kind from its directory, dispatching on ``type.ninja``."""

from __future__ import annotations

from typing import Any, Callable, Optional

from . import _meta
from . import numpy as np_ninja
from .base import PathLike, Wrapped, as_dir, map_type
from .ragged import RaggedMmap
from .string import StringsMmap


def open_existing(out_dir: PathLike, wrapper_fn: Optional[Callable[[Any], Any]] = None, mode: Optional[str] = None):
    """Open the map at ``out_dir``: a ``np.memmap`` for a numpy map, a ``RaggedMmap`` or a
    ``StringsMmap``; with ``wrapper_fn``, each item is passed through it (a ``Wrapped`` for
    numpy and strings maps). ``mode``, if given, is passed to the opener.

    ``FileNotFoundError`` when there is nothing at ``out_dir``; ``ValueError`` when it is not a
    map or of an unknown type.
    """
    out_dir = as_dir(out_dir)
    type_name = map_type(out_dir, must_exist=True)
    mode_kwargs = {} if mode is None else {"mode": mode}
    if type_name == "numpy":
        memmap = np_ninja.open_existing(out_dir, **mode_kwargs)
        return memmap if wrapper_fn is None else Wrapped(memmap, wrapper_fn)
    if type_name == "ragged":
        return RaggedMmap(out_dir, wrapper_fn=wrapper_fn, **mode_kwargs)
    if type_name == "string":
        memmap = StringsMmap(out_dir, **mode_kwargs)
        return memmap if wrapper_fn is None else Wrapped(memmap, wrapper_fn)
    if type_name is None:
        raise ValueError(f"{out_dir} is not a mmap_ninja map: it has no {_meta.TYPE}")
    raise ValueError(f"unknown map type {type_name!r} in {out_dir / _meta.TYPE}; "
                     f"expected 'numpy', 'ragged' or 'string'")
