"""Sharded maps: many maps of one kind (the parts), read as one.

Parts are plain maps (numpy, ragged, strings) or tables (``mmap_ninja.table``): a sharded map of
tables reads dict batches, each column of every part read as one sharded map of the column's
kind (``m["image"]``).

A sharded map is a directory with ``type.ninja`` = ``sharded``, a ``manifest.ninja`` (JSON: the
kind and dtype of the parts, and the parts in order with their lengths) and a ``parts/`` folder
holding the parts, each a complete map in the 0.9.0 format (so any part opens in 0.9.0).

Parts are written independently, by any process (``write_part``), under new unique names, and
become part of the map only when ``ShardedMmap.commit_parts`` appends them to the manifest, in
the order given, in one atomic replacement of ``manifest.ninja`` under the map's writer lock. A
part written and never committed (a failed or retried task) is never read; ``verify`` lists it
and ``gc`` removes it. This is the engine-agnostic core that distributed builds stand on: each
worker writes parts, the client commits them.

Opening reads only the manifest; a part is opened on its first read. Batch reads map global
indices to (part, local index) and gathers every sample from its part in one compiled pass
(``_sharded.ShardedRaggedReader``, ``ShardedStringsReader``, ``ShardedRowsReader``), results in
the caller's order. Strings parts that hold compressed strings are read part by part.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _core, _keys, _meta
from ._format import kinds as _kinds
from ._format.build import building
from ._format.sharded import (
    FORMAT,
    KEYSETS,
    MANIFEST,
    MAX_SAMPLES,
    PART_KINDS,
    PARTS,
    TABLE,
    TYPE,
    VERSIONS,
    columns_text,
    describe_part,
    is_length,
    keys_home,
    part_dir,
    read_manifest,
    versions_of,
    write_manifest,
)
from ._format.strings import CompressedStrings
from ._format.table import COLUMNS
from ._format.table import verify_dir as verify_table
from ._format.verify import VERIFY_LIMIT, Report, check_limit
from ._storage import WriterLock, open_consistent
from .base import (
    Allocator,
    PathLike,
    as_dir,
    cast_values,
    check_max_len,
    check_options,
    check_positive,
    is_url,
    map_type,
    progress,
)
from .table import TableMmap

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["ShardedMmap", "write_part", "check_joining", "verify_dir", "versions_of", "Collected", "TYPE", "MANIFEST",
           "PARTS", "VERSIONS", "KEYSETS", "MAX_SAMPLES"]

KINDS = PART_KINDS  # what parts may be: the plain kinds of the registry, and tables
_NOTHING = object()
PREFETCH_PARTS = 2  # parts a look-ahead over a map at a URL keeps downloading ahead of the reads


class _RemoteReads:
    """The reads running on a map at a URL, each with the parts it reads. A part no running read
    needs may be closed and unpinned, so that the cache can evict it: after each read, the
    parts opened longest ago, until those open hold at most a quarter of the cache's limit; and
    all of them when a batch is read part by part (see ``RemoteShardedMmap._per_part``). A part
    a read of any thread needs is never closed under it."""

    def __init__(self, owner: "ShardedMmap"):
        self.owner = owner
        self.lock = threading.RLock()
        self.open: Dict[int, int] = {}  # part: bytes, oldest opened first
        self.calls: Dict[int, set] = {}  # running read: the parts it reads
        self.next_call = 0
        self.local = threading.local()  # this thread's read (``call``) and how long it waits (``wait``)

    @contextlib.contextmanager
    def reading(self, parts: Iterable[int]):
        """A read of ``parts`` (the parts' positions in the map), for its duration."""
        mirror = self.owner._mirror
        with self.lock:
            state = self.owner._state
            if mirror.forked() and state[3] is not None:  # a forked child pins the parts its readers have open
                for p in state[3].opened():
                    mirror.pin(state[0]["parts"][p]["name"])
            call = self.next_call
            self.next_call += 1
            self.calls[call] = set(parts)
        outer = getattr(self.local, "call", None)
        self.local.call = call
        try:
            yield call
        finally:
            self.local.call = outer
            with self.lock:
                del self.calls[call]
                self.settle(self.owner._mirror.cache.limit)

    @property
    def wait(self) -> Optional[float]:
        """How long a download of this thread's read waits for room: not at all at first (a
        batch whose parts do not fit is read part by part instead), the cache's wait then."""
        return getattr(self.local, "wait", 0.0)

    def busy(self) -> set:
        return set().union(*self.calls.values()) if self.calls else set()

    def opened(self, p: int, size: int) -> None:
        with self.lock:
            self.open[p] = size

    def settle(self, limit: Optional[int], budget: Optional[int] = None) -> None:
        """Close open parts that no running read needs, oldest first, until those open hold at
        most ``budget`` bytes (a quarter of ``limit``; nothing is closed without a limit)."""
        if limit is None:
            return
        budget = limit // 4 if budget is None else budget
        busy, total = self.busy(), sum(self.open.values())
        for p in list(self.open):
            if total <= budget:
                break
            if p not in busy:
                total -= self.open.pop(p)
                self.release(p)

    def narrow(self, parts: Iterable[int]) -> None:
        """This thread's read needs only ``parts`` now: close every part no read needs."""
        with self.lock:
            self.calls[self.local.call] = set(parts)
            self.settle(self.owner._mirror.cache.limit or 0, budget=0)

    def release(self, p: int) -> None:
        manifest, _, _, reader, _ = self.owner._state
        if reader is not None:
            reader.release(p)
        self.owner._opened.pop(p, None)
        self.owner._mirror.unpin(manifest["parts"][p]["name"])

    def forget(self) -> None:
        """Drop every pin (the map reads another version now)."""
        with self.lock:
            for name in self.owner._mirror.pinned():
                self.owner._mirror.unpin(name)
            self.open = {}


def _batch_of(samples: List[np.ndarray], dtype: Optional[np.dtype], alloc: Optional[Allocator]) -> _core.RaggedBatch:
    """One ``RaggedBatch`` of ``samples`` (arrays), back to back in their order."""
    sizes = np.array([sample.size for sample in samples], dtype=np.int64)
    offsets = np.zeros(len(samples) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    dtype = dtype if dtype is not None else (samples[0].dtype if samples else np.dtype(np.uint8))
    values = alloc((int(offsets[-1]),), dtype) if alloc is not None else np.empty(int(offsets[-1]), dtype)
    for k, sample in enumerate(samples):
        values[offsets[k]:offsets[k + 1]] = sample.reshape(-1)
    ndims = np.array([sample.ndim for sample in samples], dtype=np.int64)
    shape_offsets = np.zeros(len(samples) + 1, dtype=np.int64)
    np.cumsum(ndims, out=shape_offsets[1:])
    shape_values = np.array([d for sample in samples for d in sample.shape], dtype=np.int64)
    return _core.RaggedBatch(values, offsets, shape_values, shape_offsets)


def _open_url(url: str, options: Dict[str, Any]) -> "ShardedMmap":
    return ShardedMmap(url, **options)


def _open_part(path: Path, kind: str, mode: str = "r"):
    if kind == TABLE:
        return TableMmap(path)
    return _kinds.KINDS[kind].open(path, None, mode)


def _reopen(cls: type, args: tuple, options: Dict[str, Any]) -> "ShardedMmap":
    return cls(*args, **options)


def _column_of(whole: "ShardedMmap", name: str) -> "ShardedMmap":
    return whole[name]


def write_part(out_dir: PathLike, samples: Iterable[Any], kind: Optional[str] = None,
               batch_size: int = 65536, *, keys: Optional[Iterable[str]] = None,
               storage_options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write ``samples`` as a new part of the sharded map at ``out_dir`` (not yet committed:
    see ``ShardedMmap.commit_parts``) and return its record, a small picklable dict.

    ``kind``: ``"ragged"``, ``"string"``, ``"numpy"`` (same-shaped samples) or ``"table"``
    (samples are dicts of the columns' values: the part is a ``TableMmap``, its columns' kinds
    inferred from the first row); ``None`` takes ``"table"`` for dicts, ``"string"`` for
    ``str`` samples, else ``"ragged"``. The samples are read from the iterable
    ``batch_size`` at a time. Any process may write parts at once. ``keys``: one ``str`` per
    sample, consumed alongside (unique across the whole map: checked when the part is
    committed).

    ``out_dir`` may be a URL (``s3://bucket/corpus``): the part is written in local scratch
    and uploaded, and its record lists its files (``storage_options`` go to the fsspec
    filesystem); parts with keys are refused there (push a map with keys instead).
    """
    check_positive(batch_size=batch_size)
    if is_url(out_dir):
        return _write_part_to_url(out_dir, samples, kind, batch_size, keys, storage_options)
    if storage_options is not None:
        raise TypeError(f"storage_options is for parts written to a URL, not to the local folder {out_dir!r}")
    iterator = iter(samples)
    first = next(iterator, _NOTHING)
    if kind is None:
        kind = "ragged" if first is _NOTHING else TABLE if isinstance(first, Mapping) else _kinds.kind_of_sample(first)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if first is _NOTHING and (kind == TABLE or _kinds.KINDS[kind].rows):
        raise ValueError(f"a {kind} part needs at least one sample (its {'columns' if kind == TABLE else 'shape'} "
                         f"and dtype come from it)")
    name = f"part-{uuid.uuid4().hex}"
    path = as_dir(out_dir) / PARTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = iterator if first is _NOTHING else itertools.chain([first], iterator)
    if kind == TABLE:
        TableMmap.from_generator(path, stream, batch_size, keys=keys).close()
    else:
        _kinds.KINDS[kind].build(path, stream, batch_size, keys)
    (path / "writer.lock").unlink(missing_ok=True)
    found = describe_part(path, kind)
    record = {"name": name, "length": found["length"], "kind": kind, "dtype": found["dtype"]}
    if kind == TABLE:
        record["columns"] = found["columns"]
    return record


def _write_part_to_url(url: str, samples: Iterable[Any], kind: Optional[str], batch_size: int,
                       keys: Optional[Iterable[str]], storage_options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """``write_part`` to a map at a URL: the part is written in a scratch folder (under
    ``$MMAP_NINJA_SCRATCH``, else the system's temporary folder), uploaded, and removed."""
    import tempfile

    from .remote import Store, upload_part

    if keys is not None:
        raise ValueError(f"{url}: parts with keys cannot be written to a URL; write the map locally and push it")
    scratch = Path(tempfile.mkdtemp(prefix="mmap_ninja-part-", dir=os.environ.get("MMAP_NINJA_SCRATCH")))
    try:
        record = write_part(scratch, samples, kind, batch_size)
        return upload_part(Store(url, storage_options), scratch / PARTS / record["name"], record["name"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _first_shape(out_dir: Path, manifest: dict) -> Optional[list]:
    """The row shape of the first non-empty committed part of a numpy sharded map."""
    kind = manifest["kind"]
    for entry in manifest["parts"]:
        if entry["length"] and kind != TABLE and _kinds.KINDS[kind].rows:
            return describe_part(out_dir / PARTS / entry["name"], kind)["shape"]
    return None


def _columns_differ(found: Dict[str, Any], columns: Optional[list], what: Any, holder: Any) -> None:
    """``ValueError`` when the part described by ``found`` (a table holding rows) has other
    columns than ``columns`` (those of ``holder``; ``None``: not known yet)."""
    if columns is not None and found["length"] and found["columns"] != columns:
        raise ValueError(f"{what}: holds the columns {columns_text(found['columns'])}, but {holder} holds "
                         f"{columns_text(columns)}: the parts of a sharded map hold the same columns")


class ShardedMmap(_keys.KeyLookups):
    """Many maps of one kind (the parts of the directory ``out_dir``) read as one map.

    ``len(m)``, ``m[i]``, ``m[slice]``, ``m[indices]`` (a list, or rows of an array for numpy
    parts), ``__getitems__`` for DataLoaders, ``take``/``padded`` for ragged parts and
    ``get_bytes`` for strings parts; ``wrapper_fn`` applies to every sample read by ``[]``.
    Opening reads only the manifest; parts are opened on their first read.

    Every commit makes a new version of the map; an open map reads the version it opened (its
    parts are never changed, and stay until ``gc`` drops that version) until ``refresh()``.
    ``version``: read that earlier version (see ``versions()``) rather than the latest.

    ``out_dir`` may be a URL (``s3://bucket/corpus``; see ``mmap_ninja.remote``): each part is
    downloaded whole on its first read into the cache ``cache_dir`` (default
    ``$MMAP_NINJA_CACHE``, else ``~/.cache/mmap_ninja``), which holds at most ``cache_limit``
    bytes (an int or ``"20GB"``; default ``$MMAP_NINJA_CACHE_LIMIT``, else no limit) and is
    shared by every process of the machine; ``storage_options`` go to the fsspec filesystem.
    ``m.url`` is the URL (``None`` for a local map).
    """

    def __new__(cls, out_dir: Any = None, *args: Any, **kwargs: Any):
        # a map at a URL is a RemoteShardedMmap: the same reads, each counted (see _RemoteReads)
        return super().__new__(RemoteShardedMmap if cls is ShardedMmap and is_url(out_dir) else cls)

    def __init__(self, out_dir: PathLike, wrapper_fn: Optional[Callable[[Any], Any]] = None, mode: str = "r",
                 version: Optional[int] = None, *, cache_dir: Optional[PathLike] = None,
                 cache_limit: Optional[Any] = None, storage_options: Optional[Dict[str, Any]] = None,
                 columns: Optional[Sequence[str]] = None):
        if not isinstance(wrapper_fn, Mapping):  # a map of tables takes {column: fn}
            check_options(wrapper_fn=wrapper_fn)
        if mode not in ("r", "c"):
            raise ValueError(f"mode must be 'r' or 'c' (parts are changed through their own maps), got {mode!r}")
        if isinstance(columns, str):
            raise TypeError("columns= takes a list of column names, not one str")
        if is_url(out_dir):
            from .remote.cache import open_mirror

            self._mirror = open_mirror(out_dir, cache_dir, cache_limit, storage_options)
            self.url: Optional[str] = self._mirror.url
            self.out_dir = self._mirror.local
            self._reads: Any = _RemoteReads(self)
        else:
            if cache_dir is not None or cache_limit is not None or storage_options is not None:
                raise TypeError("cache_dir, cache_limit and storage_options are for maps at a URL "
                                f"(s3://bucket/prefix), not the local folder {out_dir!r}")
            self._mirror = None
            self.url = None
            self.out_dir = as_dir(out_dir)
            self._reads = None
        self.wrapper_fn = wrapper_fn
        self.mode = mode
        self.pinned = version
        self._selected = None if columns is None else list(columns)
        self._table: Optional[Dict[str, ShardedMmap]] = None
        self._within: Optional[Tuple[ShardedMmap, str]] = None  # (the map of tables, the column) of a column
        self.refresh()

    def refresh(self) -> None:
        """Re-read the manifest, to see parts committed since the map was opened (a map opened
        with ``version`` reads that version again)."""
        if self._within is not None:
            raise TypeError(f"column {self._within[1]!r} of a map of tables is refreshed with the map it belongs to")

        def read():
            type_name = map_type(self.out_dir, must_exist=True)
            if type_name != TYPE:
                raise ValueError(f"{self.out_dir} holds a {type_name!r} map, expected a sharded map")
            return read_manifest(self.out_dir, self.pinned)

        mirror = self._mirror
        if mirror is not None:
            self._reads.forget()
            manifest = mirror.manifest(self.pinned)
            home = mirror.ensure_keys(manifest)
        else:
            manifest = open_consistent(self.out_dir, read)
            home = keys_home(self.out_dir, manifest)  # committed before the manifest: at least as many
        self._keys = None if home is None else _keys.KeyIndex.open(home)
        self._load(manifest)

    def _load(self, manifest: dict, within: Optional[str] = None) -> None:
        """Read the parts of ``manifest`` (each part's folder ``within``, a column's, when given)."""
        lengths = np.array([part["length"] for part in manifest["parts"]], dtype=np.int64)
        bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=bounds[1:])
        mirror = self._mirror
        opened: Dict[int, Any] = {}  # part k's map object, for what the compiled readers do not do
        self._opened = opened
        compressed: set = set()  # strings parts whose strings are compressed (read part by part)
        if manifest["kind"] == TABLE:
            self._open_columns(manifest)
            kind = None
        else:
            self._close_columns()
            kind = _kinds.KINDS[manifest["kind"]]
            if self._selected is not None:
                raise TypeError(f"columns= selects columns of a map of tables; {self.url or self.out_dir} holds "
                                f"{manifest['kind']} parts")
            if isinstance(self.wrapper_fn, Mapping):
                raise TypeError(f"wrapper_fn is a dict {{column: fn}} for a map of tables; {self.out_dir} holds "
                                f"{manifest['kind']} parts")

        def part_path(k: int) -> Path:
            path = self.out_dir / PARTS / manifest["parts"][k]["name"]
            return path if within is None else path / within

        def part_files(k: int):
            """Part ``k``'s committed files, checked to hold the samples the manifest lists."""
            entry = manifest["parts"][k]
            path = part_path(k)
            if mirror is not None:  # downloaded (or waited for) and pinned
                from .remote.cache import files_size

                mirror.ensure(entry, self._reads.wait)
                self._reads.opened(k, files_size(entry["files"]))
            if kind is None:
                return None
            files = kind.read(path)
            if kind.length(files) < entry["length"]:
                raise ValueError(f"{path}: holds {kind.length(files)} samples, the manifest says {entry['length']}")
            return files

        def part_reader(k: int):
            """What the compiled reader reads part ``k`` through, from its files (no map object)."""
            try:
                return kind.reader(part_files(k), self.mode)
            except CompressedStrings:
                compressed.add(k)
                raise

        def open_part(k: int):
            """Part ``k``'s map, opened once (kept in ``opened``)."""
            part = opened.get(k)
            if part is None:
                part_files(k)
                part = opened[k] = _open_part(part_path(k), manifest["kind"], self.mode)
            return part

        reader = None
        if kind is not None:
            dtype = manifest.get("dtype")
            dtype = None if dtype is None else _meta.dtype_from_name(dtype, self.out_dir / MANIFEST)
            reader = kind.sharded_reader(bounds, part_reader, dtype, str(self.out_dir))
        self._state = (manifest, bounds, open_part, reader, compressed)
        self._kind = kind

    # -- maps of tables -------------------------------------------------------------------

    def _open_columns(self, manifest: dict) -> None:
        """Read each column (of ``columns=``, else every one) as a sharded map of its kind over
        the same parts (``self._table``): ``KeyError`` for a column the parts do not hold."""
        described = manifest.get("columns") or []
        names = [entry["name"] for entry in described]
        selected = names if self._selected is None else self._selected
        wrappers = self.wrapper_fn or {}
        if not isinstance(wrappers, Mapping):
            raise TypeError(f"{self.out_dir} holds tables: its wrapper_fn is a dict {{column: fn}}")
        for name in list(selected) + list(wrappers):
            if name not in names:
                raise KeyError(f"{name!r} is not a column of {self.url or self.out_dir} (its columns: {names})")
        self._close_columns()
        columns = {}
        for entry in described:
            if entry["name"] not in selected:
                continue
            view = object.__new__(type(self))
            view.url, view.out_dir, view.mode, view.pinned = self.url, self.out_dir, self.mode, self.pinned
            view._mirror = None if self._mirror is None else self._mirror.twin()  # pins of its own
            view._reads = None if self._mirror is None else _RemoteReads(view)
            view.wrapper_fn = wrappers.get(entry["name"])
            view._selected, view._table, view._keys = None, None, None
            view._within = (self, entry["name"])
            view._load({"kind": entry["kind"], "dtype": entry["dtype"], "parts": manifest["parts"],
                        "version": manifest.get("version", 0)}, f"{COLUMNS}/{entry['name']}")
            columns[entry["name"]] = view
        self._table = {name: columns[name] for name in selected if name in columns}

    def _close_columns(self) -> None:
        for view in (self._table or {}).values():
            if view._mirror is not None:
                view.close()
                view._mirror.close()
        self._table = None

    def _columns_read(self) -> Dict[str, "ShardedMmap"]:
        if self._table is None:
            raise TypeError(f"{self.url or self.out_dir} holds {self.kind} parts, not tables: it has no columns")
        return self._table

    @property
    def columns(self) -> List[str]:
        """The names of the columns read (a map of tables; ``TypeError`` for other parts)."""
        return list(self._columns_read())

    @property
    def schema(self) -> Dict[str, str]:
        """``{column: kind}`` of the columns read (a map of tables)."""
        return {name: view.kind for name, view in self._columns_read().items()}

    @property
    def classes(self) -> Dict[str, List[str]]:
        """``{column: class names}`` of the columns read that name their classes (a map of tables)."""
        read = self._columns_read()
        return {entry["name"]: list(entry["classes"]) for entry in self._state[0].get("columns") or []
                if entry["name"] in read and "classes" in entry}

    def select(self, columns: Sequence[str]) -> "ShardedMmap":
        """The map of tables reading only ``columns`` (a list of names), in that order."""
        self._columns_read()
        if isinstance(columns, str):
            raise TypeError("select takes a list of column names, not one str")
        wrappers = {name: fn for name, fn in (self.wrapper_fn or {}).items() if name in columns}
        options = self._options()
        options.update(wrapper_fn=wrappers or None, columns=list(columns))
        return _reopen(type(self) if self.url is None else ShardedMmap, (self.url or str(self.out_dir),), options)

    def _rows(self, item: Any) -> Any:
        """``m[item]`` of a map of tables: a column's map, a selection, a row or a dict of batches."""
        columns = self._table
        if isinstance(item, str):
            if item not in columns:
                raise KeyError(f"{item!r} is not a column of {self.url or self.out_dir} read here (its columns: "
                               f"{list(columns)})")
            return columns[item]
        if isinstance(item, (list, tuple)) and item and all(isinstance(name, str) for name in item):
            return self.select(list(item))
        index = _core.normalize_index(item, len(self))
        return {name: view[index] for name, view in columns.items()}

    def _take_rows(self, index: np.ndarray, alloc: Optional[Allocator]) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for name, view in self._table.items():
            if view._kind.arrays:
                out[name] = view.take(index, alloc=alloc)
            elif view._kind.rows and alloc is not None:
                rows = view._state[3].take(index)
                out[name] = alloc(rows.shape, rows.dtype)
                out[name][...] = rows
            else:
                out[name] = view[index]
        return out

    @property
    def version(self) -> int:
        """The version of the map this object reads (0 for a map written before versions)."""
        return self._state[0].get("version", 0)

    def versions(self) -> List[int]:
        """The versions of the map kept on disk, oldest first: each can be opened with
        ``ShardedMmap(path, version=k)`` until ``gc(keep_versions=...)`` drops it."""
        return versions_of(self.out_dir)

    # -- keys (see _keys.KeyLookups) -------------------------------------------------------

    _no_keys_hint = "write its parts with keys=[...] (one str per sample) to find samples by key"

    def _keys_and_length(self) -> Tuple[Optional[_keys.KeyIndex], int]:
        return self._keys, len(self)

    @property
    def kind(self) -> str:
        return self._state[0]["kind"]

    @property
    def dtype(self) -> Optional[np.dtype]:
        name = self._state[0].get("dtype")
        return None if name is None else _meta.dtype_from_name(name, self.out_dir / MANIFEST)

    @property
    def part_bounds(self) -> np.ndarray:
        """``int64`` of length ``parts + 1``: where each part begins in the map, then its length."""
        return self._state[1].copy()

    @property
    def part_names(self) -> List[str]:
        return [part["name"] for part in self._state[0]["parts"]]

    def __len__(self) -> int:
        return int(self._state[1][-1])

    def part(self, k: int):
        """The map of part ``k`` (in ``part_names`` order), opened on its first use."""
        return self._state[2](k)

    def _grouped(self, index: np.ndarray):
        """``(part, positions in the batch, local indices)`` for each part a batch touches."""
        parts, local = self._state[3].locate(index, open_parts=False)
        order = np.argsort(parts, kind="stable")
        cuts = np.flatnonzero(np.diff(parts[order])) + 1
        for group in np.split(order, cuts):
            if group.size:
                yield int(parts[group[0]]), group, local[group]

    def _gather(self, index: np.ndarray, read: Callable[[Any, np.ndarray], Sequence[Any]]) -> List[Any]:
        out: List[Any] = [None] * len(index)
        for k, positions, local in self._grouped(index):
            for position, sample in zip(positions.tolist(), read(self.part(k), local)):
                out[position] = sample
        return out

    def __getitem__(self, item):
        """``m[i]``, ``m[slice]``, ``m[indices]``: a sample, or a list (an array of rows for
        numpy parts). A map of tables: ``m[i]`` a dict of the row's values, ``m[indices]`` a
        dict of batches (as ``TableMmap`` gives them), ``m["image"]`` the column, read as a
        sharded map of its kind over the same parts, ``m[["image", "label"]]`` a selection."""
        if self._table is not None:
            return self._rows(item)
        reader = self._state[3]
        if self._kind.arrays:  # arrays of any shape
            if type(item) is int and self.wrapper_fn is None:
                return reader.sample(item)
            index = _core.normalize_index(item, reader.n)
            if type(index) is int:
                return self._wrap(reader.sample(index))
            samples = reader.samples(index)
            return samples if self.wrapper_fn is None else [self._wrap(sample) for sample in samples]
        index = _core.normalize_index(item, reader.n)
        if self._kind.rows:
            if type(index) is int:
                return self._wrap(reader.row(index))
            rows = reader.take(index)
            return rows if self.wrapper_fn is None else [self._wrap(row) for row in rows]
        if type(index) is int:
            return self._wrap(self._string(index, as_bytes=False))
        texts = self._strings(index, as_bytes=False)
        return texts if self.wrapper_fn is None else [self._wrap(text) for text in texts]

    def _string(self, i: int, as_bytes: bool):
        reader, compressed = self._state[3], self._state[4]
        if not compressed:
            try:
                return reader.get(i, as_bytes)
            except CompressedStrings:
                pass
        k, local = reader.part(i)
        part = self.part(k)
        return part.get_bytes(local) if as_bytes else part[local]

    def _strings(self, index: np.ndarray, as_bytes: bool) -> List[Any]:
        """The strings (or bytes) at ``index``, gathered from every part in one compiled pass;
        part by part, each decompressing, once a part holding compressed strings was opened."""
        reader, compressed = self._state[3], self._state[4]
        if not compressed:
            try:
                return reader.get_many(index, as_bytes)
            except CompressedStrings:
                pass
        return self._gather(index, lambda part, local: part.get_bytes(local) if as_bytes else part[local])

    def _wrap(self, sample):
        return sample if self.wrapper_fn is None else self.wrapper_fn(np.copy(sample)
                                                                       if isinstance(sample, np.ndarray) else sample)

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """The samples at ``indices`` (``torch.utils.data.DataLoader`` fetches whole batches
        with this method): copies for ragged parts, as ``RaggedMmap.__getitems__`` gives."""
        index = _core.batch_index(indices, len(self))
        if self._table is not None:  # a dict of batches: each column's, as its own __getitems__ gives them
            return {name: view.__getitems__(index) for name, view in self._table.items()}
        if self._kind.arrays:
            samples = self.take(index).arrays()
            return samples if self.wrapper_fn is None else [self.wrapper_fn(s) for s in samples]
        return self[index]

    def __iter__(self):
        if self._table is not None:
            names = list(self._table)
            for values in zip(*(iter(view) for view in self._table.values())):
                yield dict(zip(names, values))
            return
        for k in range(len(self._state[0]["parts"])):
            # each part's own iteration, which reads ahead, cut at the length committed
            for sample in itertools.islice(self.part(k), self._state[0]["parts"][k]["length"]):
                yield self._wrap(sample)

    def prefetch(self, indices) -> None:
        """Start reading the samples at ``indices`` (as ``take`` takes them) from disk into the
        page cache in the background, and return at once (see ``RaggedMmap.prefetch``); the
        parts they lie in are opened. ``IndexError`` for an index out of range."""
        if self._table is not None:
            for view in self._table.values():
                view.prefetch(indices)
            return
        reader = self._state[3]
        index = _core.batch_index(indices, reader.n)
        if not len(index):
            return
        try:
            reader.prefetch(index)
        except CompressedStrings:  # such parts are read part by part
            for k, _, local in self._grouped(index):
                self.part(k).prefetch(local)

    def _require(self, kind: str, what: str) -> None:
        if self.kind != kind:
            if self.kind == TABLE:
                raise TypeError(f"{what} needs {kind} parts; {self.out_dir} holds tables: {what} a column "
                                f"(m[name].{what}(...))")
            raise TypeError(f"{what} needs {kind} parts; {self.out_dir} holds {self.kind} parts")

    def take(self, indices, *, alloc: Optional[Allocator] = None) -> _core.RaggedBatch:
        """The samples at ``indices`` copied back to back into one buffer, in the caller's
        order, as a ``RaggedBatch`` (ragged parts; see ``RaggedMmap.take``): gathered from all
        parts in one compiled pass; ``alloc`` as there. A map of tables: a dict of each column's
        (an array for a numpy column, a ``RaggedBatch``, a list of ``str``), as ``TableMmap.take``."""
        if self._table is not None:
            return self._take_rows(_core.batch_index(indices, len(self)), alloc)
        self._require("ragged", "take")
        reader = self._state[3]
        return reader.take(_core.batch_index(indices, reader.n), alloc)

    def padded(self, indices, pad_value: Any = 0, max_len: Optional[int] = None,
               out: Optional[np.ndarray] = None, dtype: Any = None, *,
               alloc: Optional[Allocator] = None, every_axis: bool = False) -> Tuple[np.ndarray, ...]:
        """The samples at ``indices`` padded into one array ``(B, L, *row_shape)`` of ``dtype``
        and their lengths (with ``every_axis``, padded along every axis, and their shapes;
        ragged parts; see ``RaggedMmap.padded``), in the caller's order."""
        self._require("ragged", "padded")
        check_max_len(max_len, out)
        reader = self._state[3]
        out_dtype = reader.dtype if dtype is None else np.dtype(dtype)
        pad = cast_values(np.asarray(pad_value), out_dtype, "pad_value")
        index = _core.batch_index(indices, reader.n)
        return reader.padded(index, pad, -1 if max_len is None else int(max_len), out, out_dtype, alloc,
                             bool(every_axis))

    def get_bytes(self, item):
        """Like ``m[item]`` without decoding: the UTF-8 bytes of each string (strings parts)."""
        self._require("string", "get_bytes")
        index = _core.normalize_index(item, len(self))
        if type(index) is int:
            return self._string(index, as_bytes=True)
        return self._strings(index, as_bytes=True)

    # -- checking --------------------------------------------------------------------------

    def uncommitted_parts(self) -> List[str]:
        """Parts under ``parts/`` that no kept version lists (written by a task that failed or
        was retried): never read, removed by ``gc``."""
        return _uncommitted(self.out_dir, _referenced(self.out_dir))

    def verify(self, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
        """Check the manifest and every part (see ``mmap_ninja.verify``); uncommitted parts
        are listed in ``.notes``."""
        return verify_dir(self.out_dir, limit, deep)

    def gc(self, keep_versions: Optional[int] = None) -> "Collected":
        """Remove the parts that no kept version lists, and what writers that died left beside
        them, and return the names of what was removed. ``keep_versions``: first drop every
        version but the latest ``keep_versions`` (``None``: keep every version), with the parts
        and key tables only they use; a reader still on a dropped version then fails at its
        next first read of a part. A part (or build folder) whose writer still holds its lock is
        skipped, and so is a symbolic link: ``.skipped`` says which and why. A part written
        completely and not yet committed holds no lock: run ``gc`` when every build of this map
        has committed or failed."""
        if keep_versions is not None:
            check_positive(keep_versions=keep_versions)
        removed, skipped = Collected(), []
        with WriterLock(self.out_dir):
            kept = versions_of(self.out_dir)
            if keep_versions is not None:
                for version in kept[:-keep_versions]:
                    (self.out_dir / VERSIONS / f"{version}.ninja").unlink(missing_ok=True)
            committed = _referenced(self.out_dir)
            homes = _referenced(self.out_dir, what="keys")
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.out_dir / KEYSETS):
                    if f"{KEYSETS}/{entry.name}" not in homes and not entry.is_symlink():
                        shutil.rmtree(entry.path, ignore_errors=True)
            for name in _uncommitted(self.out_dir, committed):
                path = self.out_dir / PARTS / name
                if path.is_symlink():
                    skipped.append(f"{path}: a symbolic link, not a folder this map wrote: not removed")
                    continue
                owner = name[1:].split(".", 1)[0] if name.startswith(".") else name  # a build folder's part
                with contextlib.ExitStack() as held:
                    try:
                        for folder in dict.fromkeys([path, self.out_dir / PARTS / owner]):
                            held.enter_context(_idle(folder))
                    except BlockingIOError:
                        skipped.append(f"{path}: being written (its writer holds {folder / 'writer.lock'}): "
                                       f"not removed")
                        continue
                    shutil.rmtree(path, ignore_errors=True)
                if os.path.lexists(path):
                    skipped.append(f"{path}: could not be removed")
                else:
                    removed.append(name)
        removed.skipped = skipped
        return removed

    def _options(self) -> Dict[str, Any]:
        """What this map was opened with, as keyword arguments."""
        options = {"wrapper_fn": self.wrapper_fn, "mode": self.mode, "version": self.pinned, "columns": self._selected}
        if self._mirror is not None:
            mirror = self._mirror
            options.update(cache_dir=str(mirror.cache.root), cache_limit=mirror.cache.limit,
                           storage_options=mirror.store.storage_options)
        return options

    def __reduce__(self):
        if self._within is not None:  # a column: its map of tables, and the column's name
            return _column_of, self._within
        options = self._options()
        if self._mirror is not None:  # the version read here, in every process it is sent to
            return _open_url, (self.url, dict(options, version=self.version))
        return _reopen, (type(self), (str(self.out_dir),), options)

    def __repr__(self) -> str:
        what = f"rows of {{{', '.join(f'{n}: {v.kind}' for n, v in self._table.items())}}}" \
            if self._table is not None else f"{self.kind} samples"
        return (f"{type(self).__name__}({self.url or str(self.out_dir)!r}, {len(self)} {what} in "
                f"{len(self._state[0]['parts'])} parts)")

    # -- writing ---------------------------------------------------------------------------

    @classmethod
    def commit_parts(cls, out_dir: PathLike, records: Sequence[Dict[str, Any]], *,
                     storage_options: Optional[Dict[str, Any]] = None) -> "ShardedMmap":
        """Append the parts of ``records`` (from ``write_part``), in the order given, in one
        atomic commit of the manifest, under the map's writer lock; create the map if there is
        none. Every record is checked against its part on disk first. At a URL, the next
        version is created with a conditional put (see ``mmap_ninja.remote.commit``)."""
        if is_url(out_dir):
            from .remote import Store, commit

            commit(Store(out_dir, storage_options), records)
            return ShardedMmap(out_dir, storage_options=storage_options)
        out_dir = as_dir(out_dir)
        with WriterLock(out_dir):
            _commit(out_dir, list(records))
        return cls(out_dir)

    def append_maps(self, map_dirs: Sequence[PathLike], copy: bool = False) -> None:
        """Adopt existing maps of this map's kind, dtype and row shape as parts, appended in the
        order given: moved in (no data copied) unless ``copy``. Every check (kinds, dtypes, keys
        present or not and unique, a map given twice or holding this one) runs before anything
        moves; a refused call leaves every path as it was."""
        _adopt(self.out_dir, map_dirs, copy, create=False)
        self.refresh()

    @classmethod
    def from_maps(cls, out_dir: PathLike, map_dirs: Sequence[PathLike], copy: bool = False) -> "ShardedMmap":
        """A new sharded map at ``out_dir`` whose parts are the maps ``map_dirs`` (moved in,
        unless ``copy``), checked as ``append_maps`` checks them: a refused call leaves every
        path as it was."""
        out_dir = as_dir(out_dir)
        if map_type(out_dir) is not None:
            raise ValueError(f"{out_dir} holds a map already")
        _adopt(out_dir, map_dirs, copy, create=True)
        return cls(out_dir)

    @classmethod
    def from_generator(cls, out_dir: PathLike, sample_generator: Iterable[Any], part_size: int,
                       kind: Optional[str] = None, batch_size: int = 65536, verbose: bool = False, *,
                       keys: Optional[Iterable[str]] = None) -> "ShardedMmap":
        """Write the samples of an iterable as a new sharded map at ``out_dir``, a new part
        every ``part_size`` samples (``kind`` as in ``write_part``; samples read ``batch_size``
        at a time). Over a sharded map, the new parts are written beside its own and committed
        as a new version in place of its samples: readers of earlier versions keep reading
        them (see ``gc``). Elsewhere the map is built aside and swapped in whole (replacing a
        map of another kind there). On any error the map stays as it was. ``keys``: an
        iterable of one unique ``str`` per sample, consumed alongside."""
        check_options(verbose)
        check_positive(batch_size=batch_size, part_size=part_size)
        out_dir = as_dir(out_dir)
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys= takes one str per sample (a list, say), not one str")
        if map_type(out_dir) == TYPE:
            with WriterLock(out_dir):
                records = _write_parts(out_dir, sample_generator, part_size, kind, batch_size, verbose, keys)
                try:
                    _commit(out_dir, records, replace=True)
                except BaseException:
                    _remove_parts(out_dir, records)
                    raise
            return cls(out_dir)
        with building(out_dir) as build:
            _commit(build, _write_parts(build, sample_generator, part_size, kind, batch_size, verbose, keys,
                                        out_dir))  # under the build's own lock
        return cls(out_dir)

    def compact(self, out_dir: PathLike, batch_size: int = 65536, verbose: bool = False):
        """Write the samples, with their keys when they have some, as one plain map at
        ``out_dir`` (another folder than this map's, whose versions stay for their readers)
        and open it (see ``mmap_ninja.generic.concatenate``)."""
        if os.path.realpath(as_dir(out_dir)) == os.path.realpath(self.out_dir):
            raise ValueError(f"compact writes a plain map at another path than {self.out_dir}: replacing the sharded "
                             f"map with it would take the parts of every version from its readers")

        parts = self._state[0]["parts"]
        if self.kind == TABLE:
            return TableMmap.concatenate(out_dir, [self.out_dir / PARTS / part["name"] for part in parts],
                                         [part["length"] for part in parts], verbose=verbose, batch_size=batch_size)
        return _kinds.concatenate(out_dir, [self.out_dir / PARTS / part["name"] for part in parts],
                           [part["length"] for part in parts], kind=self.kind, dtype=self.dtype, verbose=verbose,
                           batch_size=batch_size)


class RemoteShardedMmap(ShardedMmap):
    """A sharded map at a URL (``ShardedMmap("s3://bucket/corpus", ...)`` makes one): every
    read is that of ``ShardedMmap``, counted so that the parts it no longer reads are closed
    and unpinned between reads (see ``mmap_ninja.remote``). ``prefetch`` downloads the parts
    of the samples asked for in background threads."""

    def _parts(self, index: Any) -> List[int]:
        """The parts that the samples at ``index`` (an int or positions) lie in."""
        reader = self._state[3]
        if type(index) is int:
            return [reader.part(index)[0]]
        return np.unique(reader.locate(index, open_parts=False)[0]).tolist()

    def _per_part(self, index: np.ndarray, read: Callable[[np.ndarray], Any]) -> List[Any]:
        """``[(positions, read(index[positions]))]``, one per part that ``index`` reads, each
        part read with every part no read of any thread needs closed first: for batches whose
        parts do not all fit in the cache at once."""
        reads = self._reads
        parts = self._state[3].locate(index, open_parts=False)[0]
        found = []
        reads.local.wait = None
        try:
            for p in np.unique(parts).tolist():
                positions = np.flatnonzero(parts == p)
                reads.narrow([p])
                found.append((positions, read(index[positions])))
        finally:
            reads.local.wait = 0.0
        return found

    def _by_part(self, index: np.ndarray, read: Callable[[np.ndarray], Sequence[Any]]) -> List[Any]:
        """``read(index)`` (a sequence per sample) part by part (see ``_per_part``)."""
        out: List[Any] = [None] * len(index)
        for positions, samples in self._per_part(index, read):
            for position, sample in zip(positions.tolist(), samples):
                out[position] = sample
        return out

    def _read(self, index: Any, read: Callable[[], Any], by_part: Callable[[np.ndarray], Any]):
        """``read()`` as a read of the parts of ``index``; when they do not fit in the cache at
        once, ``by_part(index)`` (reading them part by part) instead."""
        from .remote import CacheFull

        with self._reads.reading(self._parts(index)):
            try:
                return read()
            except CacheFull:
                if type(index) is int:
                    raise
                return by_part(index)

    def _list(self, index: np.ndarray, read: Callable[[np.ndarray], Any]):
        found = self._by_part(index, read)
        return np.stack(found) if self._kind.rows and self.wrapper_fn is None else found

    def __getitem__(self, item):
        if self._table is not None:  # each column counts its own reads
            return super().__getitem__(item)
        index = _core.normalize_index(item, len(self))
        get = super().__getitem__
        return self._read(index, lambda: get(item), lambda index: self._list(index, get))

    def __getitems__(self, indices):
        if self._table is not None:  # each column counts its own reads
            return super().__getitems__(indices)
        index = _core.batch_index(indices, len(self))
        get = super().__getitems__
        return self._read(index, lambda: get(index), lambda index: self._list(index, get))

    def take(self, indices, *, alloc=None):
        if self._table is not None:  # each column counts its own reads
            return super().take(indices, alloc=alloc)
        index = _core.batch_index(indices, len(self))
        take = super().take
        return self._read(index, lambda: take(index, alloc=alloc),  # part by part, then one batch in order
                          lambda index: _batch_of(self._by_part(index, lambda sub: take(sub).arrays()), self.dtype,
                                                  alloc))

    def padded(self, indices, pad_value=0, max_len=None, out=None, dtype=None, *, alloc=None, every_axis=False):
        if self._table is not None:  # each column counts its own reads
            return super().padded(indices, pad_value, max_len, out, dtype, alloc=alloc, every_axis=every_axis)
        index = _core.batch_index(indices, len(self))
        padded = super().padded

        def by_part(index):  # part by part, each padded to the batch's length (and largest along each axis)
            groups = self._per_part(index, lambda sub: padded(sub, pad_value, max_len, None, dtype,
                                                               every_axis=every_axis))
            arrays = [found[0] for _, found in groups]
            width = max_len if max_len is not None else out.shape[1] if out is not None else \
                max(array.shape[1] for array in arrays)
            rest = tuple(out.shape[2:]) if out is not None else \
                tuple(np.max([array.shape[2:] for array in arrays], axis=0)) if arrays[0].ndim > 2 else ()
            shape = (len(index), width) + rest
            result = out if out is not None else alloc(shape, arrays[0].dtype) if alloc is not None else \
                np.empty(shape, arrays[0].dtype)
            result[...] = np.asarray(pad_value, dtype=arrays[0].dtype)
            lengths = np.empty(len(index), dtype=np.int64)
            shapes = np.empty((len(index), len(shape) - 1), dtype=np.int64) if every_axis else None
            for positions, found in groups:
                array = found[0]
                result[(positions,) + tuple(slice(0, n) for n in array.shape[1:])] = array
                lengths[positions] = found[1]
                if shapes is not None:
                    shapes[positions] = found[2]
            return (result, lengths, shapes) if every_axis else (result, lengths)

        return self._read(index, lambda: padded(index, pad_value, max_len, out, dtype, alloc=alloc,
                                                every_axis=every_axis), by_part)

    def get_bytes(self, item):
        if self._table is not None:  # each column counts its own reads
            return super().get_bytes(item)
        index = _core.normalize_index(item, len(self))
        get = super().get_bytes
        return self._read(index, lambda: get(item), lambda index: self._by_part(index, get))

    def part(self, k: int):
        with self._reads.reading([k]):
            return super().part(k)

    def __iter__(self):
        if self._table is not None:  # each column counts its own reads
            yield from super().__iter__()
            return
        for start in range(0, len(self), 1024):  # in slices: each a read that releases parts after it
            yield from self[start:min(len(self), start + 1024)]

    @property
    def prefetch_span(self) -> int:
        """How many samples ahead of the reads a look-ahead (``LookaheadSampler``, ``Loader``'s
        ``lookahead``) asks ``prefetch`` for: the samples of ``PREFETCH_PARTS`` parts of mean
        length, as many fewer as keep two parts beside them under the cache's limit (a part
        takes longer to download than to read, so that the next parts download while one is
        read)."""
        manifest = self._state[0]
        parts = len(manifest["parts"])
        if not parts or not len(self):
            return 0
        from .remote.cache import files_size

        ahead = PREFETCH_PARTS
        limit = self._mirror.cache.limit
        if limit is not None:
            mean_bytes = sum(files_size(entry["files"]) for entry in manifest["parts"]) / parts
            ahead = max(0, min(ahead, int(limit // max(1.0, mean_bytes)) - 2))
        return ahead * -(-len(self) // parts)

    def prefetch(self, indices) -> None:
        """Start downloading the parts that hold the samples at ``indices`` into the cache in
        background threads, and return at once (``IndexError`` for an index out of range)."""
        if self._table is not None:  # a part holds every column: one column's look-ahead downloads it
            if self._table:
                next(iter(self._table.values())).prefetch(indices)
            return
        manifest, _, _, reader, _ = self._state
        index = _core.batch_index(indices, reader.n)
        if len(index):
            parts, _ = reader.locate(index, open_parts=False)
            self._mirror.prefetch([manifest["parts"][p] for p in np.unique(parts).tolist()])

    def versions(self) -> List[int]:
        """The versions of the map kept at its URL, oldest first."""
        found = set()
        for entry in self._mirror.store.list(VERSIONS):
            stem = entry["name"].rsplit("/", 1)[-1]
            if stem.endswith(".ninja") and stem[:-6].isdigit():
                found.add(int(stem[:-6]))
        return sorted(found | {self.version})

    def uncommitted_parts(self) -> List[str]:
        raise TypeError(f"{self.url}: uncommitted parts of a map at a URL are found and removed by "
                        f"mmap_ninja.remote.gc(url)")

    def verify(self, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
        """Check the map at its URL (see ``mmap_ninja.remote.verify``)."""
        from .remote import verify

        return verify(self.url, self._mirror.store.storage_options, limit, deep)

    def gc(self, keep_versions: Optional[int] = None) -> "Collected":
        raise TypeError(f"{self.url}: abandoned uploads of a map at a URL are removed by mmap_ninja.remote.gc(url)")

    def compact(self, out_dir: PathLike, batch_size: int = 65536, verbose: bool = False):
        """Download every part and write the samples as one plain map at ``out_dir``."""
        with self._reads.reading(range(len(self._state[0]["parts"]))):
            for k in range(len(self._state[0]["parts"])):
                super().part(k)
            return super().compact(out_dir, batch_size, verbose)

    def close(self) -> None:
        """Release every part this object holds in the cache that no read of another thread
        needs (it reads on, fetching again)."""
        for view in (self._table or {}).values():
            view.close()
        with self._reads.lock:
            self._reads.settle(0, budget=0)


def _commit(out_dir: Path, records: List[Dict[str, Any]], replace: bool = False) -> None:
    """Commit the parts of ``records`` as a new version of the map at ``out_dir`` (the caller
    holds its writer lock): appended to the latest version's parts, or with ``replace`` in
    their place (the parts of earlier versions stay for their readers until ``gc`` drops those
    versions). Nothing in a record is trusted: each must name, in one path component, an
    uncommitted part folder under ``parts/`` whose kind, dtype, row shape and length on disk are
    the record's and the map's; else ``ValueError``, and nothing is committed."""
    type_name = map_type(out_dir)
    if type_name not in (None, TYPE):
        raise ValueError(f"{out_dir} holds a {type_name!r} map, not a sharded one: parts cannot be committed to it")
    new = type_name is None
    if (new or replace) and not records:
        raise ValueError(f"no parts to commit to {out_dir}, which {'holds no map yet' if new else 'they replace'}")
    previous = read_manifest(out_dir) if not new else None
    committed = _referenced(out_dir) if not new else set()
    manifest = previous if not replace else None
    kind = manifest["kind"] if manifest is not None else (records[0].get("kind") if isinstance(records[0], dict)
                                                          else None)
    if kind not in KINDS:
        raise ValueError(f"a record's kind must be one of {KINDS}, found {kind!r}")
    dtype = manifest.get("dtype") if manifest is not None else None
    shape = _first_shape(out_dir, manifest) if manifest is not None else None
    columns = manifest.get("columns") if manifest is not None else None
    keyed = []
    for record in records:
        if not isinstance(record, dict):
            raise TypeError(f"a record is a dict from write_part, not a {type(record).__name__}")
        path = part_dir(out_dir, record.get("name"))
        if record["name"] in committed:
            raise ValueError(f"part {record['name']!r} is committed already")
        if not is_length(record.get("length")):
            raise ValueError(f"{path}: its record's length must be an int from 0 to {MAX_SAMPLES}, "
                             f"found {record.get('length')!r}")
        if record.get("kind") != kind:
            raise ValueError(f"{path}: its record says it holds {record.get('kind')} samples, but {out_dir} holds "
                             f"{kind} samples")
        found = describe_part(path, kind)
        if found["length"] != record["length"]:
            raise ValueError(f"{path}: holds {found['length']} samples, its record says {record['length']}")
        if kind == TABLE:
            _columns_differ(found, record.get("columns"), path, "its record")
            _columns_differ(found, columns, path, out_dir)
            columns = columns if columns is not None or not found["length"] else found["columns"]
        if found["length"]:
            if record.get("dtype") != found["dtype"]:
                raise ValueError(f"{path}: holds samples of {found['dtype']}, its record says {record.get('dtype')}")
            if dtype is not None and found["dtype"] != dtype:
                raise ValueError(f"{path}: holds samples of {found['dtype']}, but {out_dir} holds samples of {dtype}")
            if shape is not None and found["shape"] != shape:
                raise ValueError(f"{path}: holds rows of shape {tuple(found['shape'])}, but {out_dir} holds rows of "
                                 f"shape {tuple(shape)}")
            dtype = found["dtype"] if dtype is None else dtype
            shape = found["shape"] if shape is None else shape
        committed.add(record["name"])
        keyed.append((path / _meta.KEYS / _meta.TYPE).exists())
    home = keys_home(out_dir, manifest)
    map_keyed = home is not None if manifest is not None else bool(keyed and keyed[0])
    for record, part_keyed in zip(records, keyed):
        if part_keyed != map_keyed:
            raise ValueError(f"{out_dir / PARTS / record['name']}: its samples {'have' if part_keyed else 'have no'} "
                             f"keys, but those of {out_dir} {'do not' if part_keyed else 'do'}: the parts of a map all "
                             f"have keys or none has")
    version = 0 if previous is None else previous.get("version", 0) + 1
    if manifest is None:  # a new map, or new samples in place of the latest version's
        manifest = {"kind": kind, "dtype": dtype, "parts": []}
        home = (out_dir if new else out_dir / KEYSETS / f"v{version}") if map_keyed else None
    manifest = dict(manifest, format=FORMAT, version=version, dtype=dtype,
                    keys=None if home is None else os.path.relpath(home, out_dir))
    if kind == TABLE:
        manifest["columns"] = columns
    if sum(part["length"] for part in manifest["parts"]) + sum(r["length"] for r in records) > MAX_SAMPLES:
        raise ValueError(f"{out_dir} would hold more than {MAX_SAMPLES} samples")
    if home is not None:  # committed before the manifest: a map never has samples without keys
        at = sum(part["length"] for part in manifest["parts"])
        added = [key for record in records for key in _part_keys(out_dir / PARTS / record["name"], record["length"])]
        _keys.write_keys(home, added, at, encoded=_keys.check_new(home, added, at))
    manifest["parts"] = manifest["parts"] + [{"name": r["name"], "length": r["length"]} for r in records]
    write_manifest(out_dir, manifest, new, previous)


def _write_parts(out_dir: Path, sample_generator: Iterable[Any], part_size: int, kind: Optional[str],
                 batch_size: int, verbose: bool, keys: Optional[Iterable[str]], shown: Optional[Path] = None
                 ) -> List[Dict[str, Any]]:
    """Write the samples of ``sample_generator`` as uncommitted parts of ``out_dir``, a part every
    ``part_size`` samples, and return their records; on any error, remove the parts written."""
    iterator = iter(sample_generator)
    key_iterator = None if keys is None else iter(keys)
    records: List[Dict[str, Any]] = []
    try:
        with progress(None, verbose, desc=f"Writing {(shown or out_dir).name}") as bar:
            while True:
                first = next(iterator, _NOTHING)
                if first is _NOTHING:
                    break
                part = itertools.chain([first], itertools.islice(iterator, part_size - 1))
                part_keys = None if key_iterator is None else itertools.islice(key_iterator, part_size)
                records.append(write_part(out_dir, part, kind, min(batch_size, part_size), keys=part_keys))
                kind = records[-1]["kind"]
                bar.update(records[-1]["length"])
        if not records:
            raise ValueError(f"sample_generator yielded no samples, so {shown or out_dir} cannot be created")
        extra = _NOTHING if key_iterator is None else next(key_iterator, _NOTHING)
        if extra is not _NOTHING:
            raise ValueError(f"more keys than samples: the key {extra!r} has no sample")
    except BaseException:
        _remove_parts(out_dir, records)
        raise
    return records


def _remove_parts(out_dir: Path, records: List[Dict[str, Any]]) -> None:
    """Remove the uncommitted parts of ``records`` (a write that failed)."""
    for record in records:
        shutil.rmtree(out_dir / PARTS / record["name"], ignore_errors=True)


def check_joining(out_dir: PathLike, keyed: bool) -> None:
    """Raise ``ValueError`` before any part is written when parts with keys (``keyed``) or
    without cannot join the map at ``out_dir``, as ``commit_parts`` would refuse them once
    written: a map of another kind, a folder holding files but no map (what an interrupted
    write of parts leaves, parts never committed and a writer's lock, does not count), or a
    sharded map whose samples have keys when these have none, or the reverse. At a URL: keyed
    parts are refused (push a map with keys instead), and so is a URL holding another kind."""
    if is_url(out_dir):
        if keyed:
            raise ValueError(f"{out_dir}: parts with keys cannot be written to a URL; write the map locally and "
                             f"push it")
        return
    out_dir = as_dir(out_dir)
    type_name = map_type(out_dir)
    if type_name not in (None, TYPE):
        raise ValueError(f"{out_dir} holds a {type_name!r} map, not a sharded one: parts cannot be appended to it")
    if type_name is None:
        if out_dir.exists():
            stray = sorted(set(os.listdir(out_dir)) - {PARTS, "writer.lock"})
            if (out_dir / PARTS).is_dir():
                stray += [f"{PARTS}/{name}" for name in sorted(os.listdir(out_dir / PARTS))
                          if not name.startswith(("part-", ".part-"))]
            elif (out_dir / PARTS).exists():
                stray.append(PARTS)
            if stray:
                raise ValueError(f"{out_dir} holds files but no map ({', '.join(stray[:3])}"
                                 f"{', ...' if len(stray) > 3 else ''}): a new sharded map needs an empty or absent "
                                 f"folder")
        return
    map_keyed = keys_home(out_dir, read_manifest(out_dir)) is not None
    if keyed != map_keyed:
        raise ValueError(f"the samples of {out_dir} {'have' if map_keyed else 'have no'} keys: parts "
                         f"{'without' if map_keyed else 'with'} keys cannot join it (the parts of a map all have "
                         f"keys or none has)")


def _part_keys(path: Path, length: int) -> List[str]:
    """The keys of the first ``length`` samples of the part at ``path``."""
    index = _keys.KeyIndex.open(path)
    if index is None or index.count < length:
        raise ValueError(f"{path}: holds keys for {0 if index is None else index.count} of its {length} samples")
    return index.keys(length)


class Collected(list):
    """What ``gc`` removed (names under ``parts/``), with ``skipped``: a line for each entry it
    left, and why."""

    def __init__(self, names: Iterable[str] = (), skipped: Iterable[str] = ()):
        super().__init__(names)
        self.skipped = list(skipped)


@contextlib.contextmanager
def _idle(folder: Path):
    """Hold the writer lock of ``folder`` if it has one (without creating one), so that no
    writer starts meanwhile; ``BlockingIOError`` when a writer holds it now."""
    try:
        fd = os.open(folder / "writer.lock", os.O_RDWR | os.O_CLOEXEC)
    except OSError:  # no lock file (or no folder): no writer
        yield
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def _referenced(out_dir: Path, what: str = "parts") -> set:
    """The names of the parts that some kept version of the map at ``out_dir`` lists (or with
    ``what="keys"``, the folders of their key tables, relative to ``out_dir``)."""
    manifests = [read_manifest(out_dir)]
    for version in versions_of(out_dir):
        with contextlib.suppress(FileNotFoundError):
            manifests.append(read_manifest(out_dir, version))
    if what == "keys":
        return {manifest.get("keys", ".") for manifest in manifests} - {None}
    return {part["name"] for manifest in manifests for part in manifest["parts"]}


def _uncommitted(out_dir: Path, committed: set) -> List[str]:
    """Parts no commit lists, and what writers of parts that died left beside them."""
    try:
        names = [entry.name for entry in os.scandir(out_dir / PARTS) if entry.is_dir() or entry.is_symlink()]
    except FileNotFoundError:
        return []
    return sorted(name for name in names
                  if (name.startswith("part-") and name not in committed) or name.startswith(".part-"))


def _within(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_adoption(out_dir: Path, map_dirs: Sequence[PathLike], copy: bool) -> List[Tuple[Path, Dict[str, Any]]]:
    """``(map folder, record without a name)`` of each of ``map_dirs``, after every check that
    adopting them as parts of ``out_dir`` needs, so that nothing is moved when one fails:
    maps of one kind, dtype and row shape (the map's, when there is one), each given once,
    none a link, none holding ``out_dir`` or inside it, on its file system (unless ``copy``),
    and all with keys or none (the map's way), no key repeated within or across them nor
    held by the map."""
    type_name = map_type(out_dir)
    if type_name not in (None, TYPE):
        raise ValueError(f"{out_dir} holds a {type_name!r} map, not a sharded one: maps cannot join it as parts")
    manifest = read_manifest(out_dir) if type_name == TYPE else None
    target = os.path.realpath(out_dir)
    seen: Dict[str, Path] = {}
    checked: List[Tuple[Path, Dict[str, Any]]] = []
    for map_dir in map_dirs:
        map_dir = as_dir(map_dir)
        if map_dir.is_symlink():
            raise ValueError(f"{map_dir} is a symbolic link: give the folder of the map itself")
        kind = map_type(map_dir, must_exist=True)
        if kind not in KINDS:
            raise ValueError(f"{map_dir} is not a map of one of the kinds {KINDS}")
        real = os.path.realpath(map_dir)
        if real in seen:
            raise ValueError(f"{map_dir} is given twice (as {seen[real]} before)")
        seen[real] = map_dir
        if _within(real, target) or _within(target, real):
            raise ValueError(f"{map_dir} {'is' if real == target else 'lies in' if _within(real, target) else 'holds'} "
                             f"{out_dir}: a map cannot join a sharded map it holds or lies in")
        if not copy:
            home = Path(target)
            while not home.exists():
                home = home.parent
            if os.stat(map_dir).st_dev != os.stat(home).st_dev:
                raise ValueError(f"{map_dir} is on another file system than {out_dir}: it cannot be moved in "
                                 f"(copy=True copies it)")
        checked.append((map_dir, describe_part(map_dir, kind)))
    if not checked:
        return checked
    # what every map must hold: the sharded map's samples, else the first map's
    kind, source = (manifest["kind"], out_dir) if manifest is not None else (checked[0][1]["kind"], checked[0][0])
    dtype = manifest.get("dtype") if manifest is not None else None
    shape = _first_shape(out_dir, manifest) if manifest is not None else None
    columns = manifest.get("columns") if manifest is not None else None
    for map_dir, record in checked:
        if record["kind"] != kind:
            raise ValueError(f"{map_dir} holds {record['kind']} samples, {source} holds {kind} samples: the parts "
                             f"of a sharded map cannot hold several kinds of samples")
        if not record["length"]:
            continue
        if kind == TABLE:
            _columns_differ(record, columns, map_dir, source)
            if columns is None:
                columns, source = record["columns"], map_dir
            continue
        if dtype is None:
            dtype, shape, source = record["dtype"], record["shape"], map_dir
        if record["dtype"] != dtype or record["shape"] != shape:
            raise ValueError(f"{map_dir} holds samples of {record['dtype']}"
                             + (f" in rows of shape {tuple(record['shape'])}" if record["shape"] else "")
                             + f", but {source} holds samples of {dtype}"
                             + (f" in rows of shape {tuple(shape)}" if shape else "")
                             + ": the parts of a sharded map cannot hold several kinds or dtypes of samples")
    map_keyed = keys_home(out_dir, manifest) is not None if manifest is not None else None
    keys: List[str] = []
    for map_dir, record in checked:
        keyed = (map_dir / _meta.KEYS / _meta.TYPE).exists()
        map_keyed = keyed if map_keyed is None else map_keyed
        if keyed != map_keyed:
            raise ValueError(f"the samples of {map_dir} {'have' if keyed else 'have no'} keys, but those of "
                             f"{out_dir if manifest is not None else checked[0][0]} {'do not' if keyed else 'do'}: "
                             f"the parts of a map all have keys or none has")
        if keyed:
            keys += _part_keys(map_dir, record["length"])
    if map_keyed:  # repeated within or across the maps, or held by the map: ValueError naming the key
        home = keys_home(out_dir, manifest)
        _keys.check_new(out_dir if home is None else home, keys,
                        sum(part["length"] for part in manifest["parts"]) if manifest else 0)
    return checked


def _adopt(out_dir: Path, map_dirs: Sequence[PathLike], copy: bool, create: bool) -> None:
    """Move (or copy) the maps ``map_dirs`` under ``out_dir/parts`` and commit them, in the
    order given, under the map's writer lock; ``create``: ``out_dir`` must hold no map yet.
    Everything is checked before anything moves, and when a move or the commit fails, every
    map moved so far goes back where it was: a refused call leaves every path as it was."""
    created = not out_dir.exists()
    try:
        with WriterLock(out_dir):
            if create and map_type(out_dir) is not None:
                raise ValueError(f"{out_dir} holds a map already")
            checked = _check_adoption(out_dir, map_dirs, copy)
            parts = out_dir / PARTS
            parts_created = not parts.exists()
            placed: List[Tuple[Path, Path]] = []
            try:
                parts.mkdir(parents=True, exist_ok=True)
                for map_dir, record in checked:
                    record["name"] = f"part-{uuid.uuid4().hex}"
                    target = parts / record["name"]
                    placed.append((map_dir, target))
                    if copy:
                        shutil.copytree(map_dir, target, ignore=shutil.ignore_patterns("writer.lock"))
                    else:
                        os.rename(map_dir, target)
                _commit(out_dir, [{key: value for key, value in record.items() if key != "shape"}
                                  for _, record in checked])
            except BaseException:
                _put_back(placed, copy)
                if parts_created:
                    with contextlib.suppress(OSError):
                        parts.rmdir()
                raise
    except BaseException:
        if created:  # nothing of this call stays: not even the folder it made
            with contextlib.suppress(OSError):
                (out_dir / "writer.lock").unlink()
                out_dir.rmdir()
        raise


def _put_back(placed: List[Tuple[Path, Path]], copy: bool) -> None:
    """Undo the moves (or copies) of ``placed``, ``(map folder, part folder)`` pairs, last first;
    raises naming what could not be put back."""
    stuck = []
    for map_dir, target in reversed(placed):
        try:
            if copy:
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists() and not map_dir.exists():
                os.rename(target, map_dir)
        except OSError as exc:
            stuck.append(f"{map_dir} is at {target} ({exc})")
    if stuck:
        raise OSError("a failed adoption could not put every map back: " + "; ".join(stuck))


def verify_dir(out_dir: Path, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
    """Problems and notes of the sharded map at ``out_dir``: the manifest, every part (with its
    length), and the parts no commit lists (notes); at most ``limit`` problems listed, the
    rest counted in ``omitted``."""
    limit = check_limit(limit)
    try:
        manifest = read_manifest(out_dir)
        if manifest.get("dtype") is not None:
            _meta.dtype_from_name(manifest["dtype"], out_dir / MANIFEST)
    except Exception as exc:  # damage is reported, never raised
        return Report([str(exc)])
    problems: List[str] = []
    notes: List[str] = []
    omitted = 0
    shape: Optional[list] = None
    for entry in manifest["parts"]:
        path = out_dir / PARTS / entry["name"]
        try:
            part_dir(out_dir, entry["name"])
            found_type = map_type(path)
            report = verify_table(path, limit, deep) if found_type == TABLE else \
                _kinds.verify_plain(path, found_type, limit, deep)
        except Exception as exc:
            problems.append(str(exc))
            continue
        problems += report
        notes += report.notes
        omitted += report.omitted
        if report:
            continue
        try:  # the part against what the manifest says of it
            found = describe_part(path, manifest["kind"])
            if manifest["kind"] == TABLE:
                _columns_differ(found, manifest.get("columns"), path, f"{out_dir / MANIFEST}")
        except Exception as exc:
            problems.append(str(exc))
            continue
        if found["length"] != entry["length"]:
            problems.append(f"{path}: holds {found['length']} samples, the manifest says {entry['length']}")
        if found["length"] and found["dtype"] != manifest.get("dtype"):
            problems.append(f"{path}: holds samples of {found['dtype']}, the manifest says {manifest.get('dtype')}")
        if found["length"] and found["shape"] is not None:
            shape = found["shape"] if shape is None else shape
            if found["shape"] != shape:
                problems.append(f"{path}: holds rows of shape {tuple(found['shape'])}, the parts before it rows of "
                                f"shape {tuple(shape)}")
    if not problems:
        try:
            home = keys_home(out_dir, manifest)
            found_keys, noted = ([], []) if home is None else \
                _keys.problems(home, sum(entry["length"] for entry in manifest["parts"]), deep)
        except Exception as exc:
            found_keys, noted = [f"{out_dir / _meta.KEYS}: {exc}"], []
        problems += found_keys
        notes += noted
    try:
        referenced = _referenced(out_dir)
    except Exception as exc:
        problems.append(str(exc))
        referenced = {p["name"] for p in manifest["parts"]}
    for name in _uncommitted(out_dir, referenced):
        notes.append(f"{out_dir / PARTS / name}: a part no commit lists (a failed or retried write); never "
                     f"read, removed by gc()")
    return Report.cut(problems, notes, limit, omitted)
