"""The registry of the plain kinds of maps, as ``type.ninja`` names them: ``"numpy"``,
``"ragged"`` and ``"string"``. For each, the name messages use, how a map of it is opened and
verified, and how its committed files are read (for ``concatenate``, which writes maps of one
kind as one). ``mmap_ninja.generic`` and ``mmap_ninja.sharded`` ask this registry rather than
comparing kind names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import _keys, _meta, ragged, string
from . import numpy as np_ninja
from ._lifecycle import Found, Report, building, verify_map
from ._storage import ArrayDir, Commit, flush_tree, open_consistent
from .base import PathLike, Wrapped, as_dir, check_options, map_type, progress, stored_dtype
from .ragged import RaggedMmap
from .string import StringsMmap

# One mode for every kind of map: the file modes that StringsMmap takes ("rb", "r+b") and the
# mapping modes of numpy and ragged maps ("r", "r+") mean the same.
_ARRAY_MODES = {"rb": "r", "r+b": "r+"}
_STRING_MODES = {"r": "rb", "r+": "r+b"}


def _mode(mode: Optional[str], translation: dict) -> dict:
    return {} if mode is None else {"mode": translation.get(mode, mode)}


def _open_numpy(out_dir: Path, wrapper_fn: Optional[Callable[[Any], Any]], mode: Optional[str]):
    memmap = np_ninja.open_existing(out_dir, **_mode(mode, _ARRAY_MODES))
    return memmap if wrapper_fn is None else Wrapped(memmap, wrapper_fn)


def _open_ragged(out_dir: Path, wrapper_fn: Optional[Callable[[Any], Any]], mode: Optional[str]):
    return RaggedMmap(out_dir, wrapper_fn=wrapper_fn, **_mode(mode, _ARRAY_MODES))


def _open_strings(out_dir: Path, wrapper_fn: Optional[Callable[[Any], Any]], mode: Optional[str]):
    strings = StringsMmap(out_dir, **_mode(mode, _STRING_MODES))
    return strings if wrapper_fn is None else Wrapped(strings, wrapper_fn)


@dataclass(frozen=True)
class Kind:
    """A plain kind of map: ``name`` in ``type.ninja``, ``display`` in messages, ``open(out_dir,
    wrapper_fn, mode)`` (any mode name of any kind), ``verify_dir(out_dir, limit, deep)`` and
    ``read_files(out_dir)``, its committed files (all of one version when read through
    ``read``)."""

    name: str
    display: str
    open: Callable[[Path, Optional[Callable[[Any], Any]], Optional[str]], Any]
    verify_dir: Callable[[Path, int, bool], Found]
    read_files: Callable[[Path], Any]

    def read(self, path: Path) -> Any:
        """The committed files of the map at ``path``, all of one version."""
        return open_consistent(path, lambda: self.read_files(path))


KINDS: Dict[str, Kind] = {kind.name: kind for kind in (
    Kind("numpy", "numpy", _open_numpy, np_ninja._verify_dir, lambda path: np_ninja._open_dir(path)),
    Kind("ragged", "ragged", _open_ragged, ragged.verify_dir, ragged._RaggedFiles.open),
    Kind("string", "strings", _open_strings, string.verify_dir, string._StringsFiles.open),
)}


def verify_plain(out_dir: Path, type_name: Optional[str], limit: int, deep: bool) -> Report:
    """``verify`` of the map at ``out_dir`` whose ``type.ninja`` says ``type_name``, a plain
    kind (a problem line otherwise)."""
    kind = KINDS.get(type_name)  # type: ignore[arg-type]
    if kind is None:
        return Report([f"{out_dir} is not a mmap_ninja map: " + (f"it has no {_meta.TYPE}" if type_name is None
                       else f"unknown map type {type_name!r} in {out_dir / _meta.TYPE}")])
    return verify_map(out_dir, kind.verify_dir, limit, deep)


def concatenate(
    out_dir: PathLike,
    map_dirs: Sequence[PathLike],
    counts: Optional[Sequence[Optional[int]]] = None,
    *,
    kind: Optional[str] = None,
    dtype: Any = None,
    verbose: bool = False,
    batch_size: int = 65536,
):
    """Write the samples of the maps ``map_dirs`` (plain maps of one kind, ``"ragged"``,
    ``"string"`` or ``"numpy"``, and of one dtype), in order, as one new plain map at
    ``out_dir``, built aside and swapped in whole (replacing a map there; on an error, the map
    there stays as it was and nothing is left behind), and open it (mode ``"r+"``, ``"r+b"``
    for strings).

    ``counts``: how many samples to take from each map (``None``: all). ``kind``: by default
    the maps' own. ``dtype``: that of the map written when there are no samples (ragged).

    Keys go with their samples: when the maps' samples have keys, so do those of the new map
    (a key held by two of the maps raises ``ValueError`` naming it); maps with keys and maps
    without cannot be concatenated (``ValueError``).

    Each map is appended in one commit with no work per sample in Python: its data bytes are
    copied file to file, its offsets shifted by the data written before it and its shapes
    appended as whole arrays (``_RaggedFiles.append_map``, ``_StringsFiles.append_map``,
    ``numpy.append_map``), and the checksums its commits recorded for the bytes copied are
    recorded again. Those commits are flushed to disk once, before the map is swapped in. A
    strings map keeps the compression of its first non-empty map: strings compressed otherwise
    are decoded and encoded again, ``batch_size`` at a time. Maps of another dtype (or, for
    numpy maps, sample shape) raise ``ValueError``.
    """
    check_options(verbose)
    out_dir = as_dir(out_dir)
    dirs = [as_dir(path) for path in map_dirs]
    counts = [None] * len(dirs) if counts is None else list(counts)
    if len(counts) != len(dirs):
        raise ValueError(f"{len(counts)} counts for {len(dirs)} maps")
    if kind is None:
        kinds = {map_type(path, must_exist=True) for path in dirs} - {None}
        if len(kinds) != 1:
            raise ValueError(f"the maps must be of one kind, found {sorted(map(str, kinds)) or 'none'}")
        (kind,) = kinds
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    known = None if any(count is None for count in counts) else sum(counts)
    with building(out_dir) as build, progress(known, verbose, desc=f"Writing {out_dir.name}") as bar:
        target: Any = None
        if kind == "ragged":
            target = ragged._RaggedFiles(build)
            target.dtype = None if dtype is None else stored_dtype(dtype)
        elif kind == "numpy":
            target = ArrayDir(build)
        keys: List[str] = []
        unkeyed: Optional[Path] = None  # a map with samples and no keys
        keyed: Optional[Path] = None
        for path, count in zip(dirs, counts):
            part = KINDS[kind].read(path)
            if count is None:
                count = part.rows if kind == "numpy" else part.n
            if count == 0:
                continue
            index = _keys.KeyIndex.open(path)
            if index is None:
                unkeyed = path
            else:
                keyed = path
                if index.count < count:
                    raise ValueError(f"{path / _meta.KEYS}: holds {index.count} keys for {count} samples")
                keys += index.keys(count)
            if keyed is not None and unkeyed is not None:
                raise ValueError(f"the samples of {keyed} have keys and those of {unkeyed} have none: the maps "
                                 f"concatenated all have keys (carried into {out_dir}) or none has")
            commit = Commit(durable=False)  # the map is flushed whole before it is swapped in
            if kind == "ragged":
                target.append_map(part, commit, count)
            elif kind == "numpy":
                np_ninja.append_map(target, part, commit, count, batch_size)
            else:
                if target is None:
                    target = string._StringsFiles(build, part.codec)
                    target.create(commit)
                target.append_map(part, commit, count, batch_size)
            commit.finish()
            bar.update(count)
        commit = Commit(durable=False)
        if kind == "ragged" and target.n == 0:
            target.write_empty(target.dtype, commit)
        elif kind == "string" and target is None:
            string._StringsFiles(build, string._Codec()).create(commit)
        elif kind == "numpy" and target.meta is None:
            raise ValueError(f"the maps hold no samples, so {out_dir} cannot be created: a numpy map takes its "
                             f"dtype and sample shape from the first sample")
        commit.finish()
        if keyed is not None:
            _keys.write_keys(build, keys, 0, durable=False, encoded=_keys.check_new(build, keys, 0))
        flush_tree(build)
    if kind == "ragged":
        return RaggedMmap(out_dir, mode="r+")
    if kind == "string":
        return StringsMmap(out_dir)
    return np_ninja.open_existing(out_dir, "r+")
