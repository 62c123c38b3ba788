"""The one registry of the plain kinds of maps, as ``type.ninja`` names them: ``"numpy"``,
``"ragged"`` and ``"string"``. For each: the name messages use, the mode names it takes, how its
committed files are read and counted, how it is verified, how maps of it are concatenated, and
how a map of it is opened as an object. Everything that handles maps of any kind (``generic``,
``sharded``, the command line, the integrations) asks this registry rather than comparing kind
names.

The objects are the object layer's: each kind's public module registers its opener
(``register``) when it is imported, which ``import mmap_ninja`` does for every kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .. import _keys, _meta, _sharded
from .._storage import Commit, flush_tree, locking, open_consistent
from ..base import PathLike, as_dir, check_options, map_type, progress, stored_dtype
from . import numpy as numpy_format
from . import ragged as ragged_format
from . import strings as strings_format
from .build import building
from .verify import Found, Report, verify_map

# One mode for every kind of map: the file modes that strings maps take ("rb", "r+b") and the
# mapping modes of numpy and ragged maps ("r", "r+") mean the same.
ARRAY_MODES = {"rb": "r", "r+b": "r+"}
STRING_MODES = {"r": "rb", "r+": "r+b"}

# How a map object is opened: ``opener(out_dir, wrapper_fn, mode)``, ``mode`` already in the
# kind's own names (or ``None`` for its default).
Opener = Callable[[Path, Optional[Callable[[Any], Any]], Optional[str]], Any]
# How a new map is written from samples and opened: ``builder(out_dir, samples, batch_size,
# keys)`` (``samples`` an iterable read ``batch_size`` at a time, ``keys`` one per sample or
# ``None``).
Builder = Callable[[Path, Iterable[Any], int, Optional[Iterable[str]]], Any]
# How samples are appended to a map in one commit: ``extender(out_dir, samples)`` (``samples``
# a list, or an array of rows for numpy maps).
Extender = Callable[[Path, Any], None]


def mode_option(mode: Optional[str], translation: Dict[str, str]) -> dict:
    """``{"mode": ...}`` for an opener taking the modes of ``translation`` (empty for ``None``)."""
    return {} if mode is None else {"mode": translation.get(mode, mode)}


@dataclass
class Kind:
    """A plain kind of map: ``name`` in ``type.ninja``, ``display`` in messages, ``modes`` (the
    other kinds' mode names in its own), ``read_files(out_dir)`` (its committed files) and
    ``length(files)``, ``reader(files, mode)`` (what the compiled readers of a sharded map
    read a part through: its compiled reader, or the ``np.memmap`` of its rows; raises
    ``strings.CompressedStrings`` for strings the compiled reader does not decode),
    ``verify_dir(out_dir, limit, deep)``, ``concatenation(build, out_dir, dtype)``, the writer
    ``concatenate`` adds maps of it to, ``sharded_reader(bounds, part_reader, dtype,
    source)``, the compiled reader of a sharded map of such parts, and ``truncate(out_dir, n,
    commit)``, what makes a map of it hold its first ``n`` samples again (metadata only: a table
    drops the samples of a write cut short with it); ``components``, the folders a map of it
    holds besides its files.

    What its samples are: ``rows`` (rows of one fixed-shape array: a row shape, and a part
    needs a first sample to take it from), ``text`` (``str``), else arrays of any shape
    (``take``, ``padded``)."""

    name: str
    display: str
    modes: Dict[str, str]
    read_files: Callable[[Path], Any]
    length: Callable[[Any], int]
    reader: Callable[[Any, str], Any]
    verify_dir: Callable[[Path, int, bool], Found]
    concatenation: Callable[[Path, Path, Any], Any]
    sharded_reader: Callable[[np.ndarray, Callable[[int], Any], Optional[np.dtype], str], Any]
    truncate: Callable[[Path, int, Any], None]
    components: Tuple[str, ...] = ()
    rows: bool = False
    text: bool = False
    opener: Optional[Opener] = None
    builder: Optional[Builder] = None
    extender: Optional[Extender] = None

    @property
    def arrays(self) -> bool:
        """Its samples are arrays of any shape (neither ``rows`` nor ``text``)."""
        return not (self.rows or self.text)

    def read(self, path: Path) -> Any:
        """The committed files of the map at ``path``, all of one version."""
        return open_consistent(path, lambda: self.read_files(path))

    def open(self, out_dir: Path, wrapper_fn: Optional[Callable[[Any], Any]] = None, mode: Optional[str] = None):
        """The map at ``out_dir`` as an object (any mode name of any kind is understood)."""
        if self.opener is None:
            raise RuntimeError(f"no opener is registered for {self.display} maps: import mmap_ninja first")
        return self.opener(out_dir, wrapper_fn, mode_option(mode, self.modes).get("mode"))

    def build(self, out_dir: Path, samples: Iterable[Any], batch_size: int,
              keys: Optional[Iterable[str]] = None) -> Any:
        """A new map of this kind at ``out_dir`` of ``samples``, opened."""
        if self.builder is None:
            raise RuntimeError(f"no builder is registered for {self.display} maps: import mmap_ninja first")
        return self.builder(out_dir, samples, batch_size, keys)

    def extend(self, out_dir: Path, samples: Any) -> None:
        """Append ``samples`` to the map at ``out_dir`` in one commit."""
        if self.extender is None:
            raise RuntimeError(f"no extender is registered for {self.display} maps: import mmap_ninja first")
        self.extender(out_dir, samples)


def _strings_reader(files: strings_format.StringsFiles, mode: str) -> Any:
    if files.codec.compressed:
        raise strings_format.CompressedStrings(files.out_dir)
    return files.reader(mode)[0]


KINDS: Dict[str, Kind] = {kind.name: kind for kind in (
    Kind("numpy", "numpy", ARRAY_MODES, lambda path: numpy_format.open_dir(path), lambda array: array.rows,
         lambda array, mode: array.map(mode), numpy_format.verify_dir, numpy_format.Concatenation,
         lambda bounds, part_reader, dtype, source: _sharded.ShardedRowsReader(bounds, part_reader, source),
         numpy_format.truncate_dir, rows=True),
    Kind("ragged", "ragged", ARRAY_MODES, ragged_format.RaggedFiles.open, lambda files: files.n,
         lambda files, mode: files.reader(mode)[0], ragged_format.verify_dir, ragged_format.Concatenation,
         lambda bounds, part_reader, dtype, source: _sharded.ShardedRaggedReader(
             bounds, part_reader, np.float64 if dtype is None else dtype, source),
         ragged_format.truncate_dir, components=("starts", "ends", "shapes", "flattened_shapes")),
    Kind("string", "strings", STRING_MODES, strings_format.StringsFiles.open, lambda files: files.n,
         _strings_reader, strings_format.verify_dir, strings_format.Concatenation,
         lambda bounds, part_reader, dtype, source: _sharded.ShardedStringsReader(bounds, part_reader, source),
         strings_format.truncate_dir, components=("starts", "ends"), text=True),
)}
for _kind in KINDS.values():  # what the storage layer leaves in place when it replaces a map
    locking.COMPONENTS[_kind.name] = _kind.components
    locking.UNWRITTEN.update(_kind.components)


def kind_of_sample(sample: Any) -> str:
    """The kind a map of samples like ``sample`` is when none is given: strings for ``str``,
    else ragged."""
    return "string" if isinstance(sample, str) else "ragged"


def register(name: str, opener: Opener, builder: Builder, extender: Extender) -> None:
    """Make ``opener`` how maps of the kind ``name`` open as objects, ``builder`` how new ones
    are written from samples and ``extender`` how samples are appended to one (each kind's
    public module registers its own)."""
    KINDS[name].opener = opener
    KINDS[name].builder = builder
    KINDS[name].extender = extender


def display_name(type_name: Optional[str]) -> str:
    """The name messages give maps whose ``type.ninja`` says ``type_name``."""
    kind = KINDS.get(type_name)  # type: ignore[arg-type]
    return kind.display if kind is not None else str(type_name)


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
    appended as whole arrays (each kind's ``Concatenation``), and the checksums its commits
    recorded for the bytes copied are recorded again. Those commits are flushed to disk once,
    before the map is swapped in. A strings map keeps the compression of its first non-empty
    map: strings compressed otherwise are decoded and encoded again, ``batch_size`` at a time.
    Maps of another dtype (or, for numpy maps, sample shape) raise ``ValueError``.
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
    registered = KINDS[kind]
    known = None if any(count is None for count in counts) else sum(counts)
    with building(out_dir) as build, progress(known, verbose, desc=f"Writing {out_dir.name}") as bar:
        target = registered.concatenation(build, out_dir, None if dtype is None else stored_dtype(dtype))
        keys: List[str] = []
        unkeyed: Optional[Path] = None  # a map with samples and no keys
        keyed: Optional[Path] = None
        for path, count in zip(dirs, counts):
            part = registered.read(path)
            if count is None:
                count = registered.length(part)
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
            target.add(part, commit, count, batch_size)
            commit.finish()
            bar.update(count)
        commit = Commit(durable=False)
        target.finish(commit)
        commit.finish()
        if keyed is not None:
            _keys.write_keys(build, keys, 0, durable=False, encoded=_keys.check_new(build, keys, 0))
        flush_tree(build)
    return registered.open(out_dir, None, "r+")
