"""Sharded maps: many maps of one kind (the parts), read as one.

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

import itertools
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core, _keys, _meta, _sharded
from . import numpy as np_ninja
from ._lifecycle import VERIFY_LIMIT, Report, building, check_limit
from ._storage import WriterLock, open_consistent
from .base import (
    Allocator,
    PathLike,
    as_dir,
    cast_values,
    check_max_len,
    check_options,
    check_positive,
    map_type,
    progress,
)
from .ragged import RaggedBatch, RaggedMmap
from .string import StringsMmap

MANIFEST = _meta.MANIFEST
PARTS = "parts"
KINDS = ("ragged", "string", "numpy")
_FORMAT = 1
_NOTHING = object()


def _kind_of(sample: Any) -> str:
    return "string" if isinstance(sample, str) else "ragged"


def _open_part(path: Path, kind: str, mode: str = "r"):
    if kind == "ragged":
        return RaggedMmap(path, mode=mode)
    if kind == "string":
        return StringsMmap(path, mode=mode)
    return np_ninja.open_existing(path, mode)


class _CompressedPart(Exception):
    """A strings part holds compressed strings, which the compiled reader does not decode."""


def _plain_strings(part: StringsMmap, k: int, compressed: set):
    """The compiled reader of strings part ``k``, or ``_CompressedPart`` (recorded in
    ``compressed``) when its strings are compressed."""
    if part.codec.compressed:
        compressed.add(k)
        raise _CompressedPart(k)
    return part._live()[1]


def _dtype_of(part: Any, kind: str) -> Optional[str]:
    if kind == "string":
        return None
    dtype = part.dtype
    return None if dtype is None else _meta.dtype_name(dtype)


def write_part(out_dir: PathLike, samples: Iterable[Any], kind: Optional[str] = None,
               batch_size: int = 65536, *, keys: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """Write ``samples`` as a new part of the sharded map at ``out_dir`` (not yet committed:
    see ``ShardedMmap.commit_parts``) and return its record, a small picklable dict.

    ``kind``: ``"ragged"``, ``"string"`` or ``"numpy"`` (same-shaped samples); ``None`` takes
    ``"string"`` for ``str`` samples, else ``"ragged"``. The samples are read from the iterable
    ``batch_size`` at a time. Any process may write parts at once. ``keys``: one ``str`` per
    sample, consumed alongside (unique across the whole map: checked when the part is
    committed).
    """
    check_positive(batch_size=batch_size)
    iterator = iter(samples)
    first = next(iterator, _NOTHING)
    if kind is None:
        kind = _kind_of(first) if first is not _NOTHING else "ragged"
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    name = f"part-{uuid.uuid4().hex}"
    path = as_dir(out_dir) / PARTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if first is _NOTHING and kind == "numpy":
        raise ValueError("a numpy part needs at least one sample (its shape and dtype come from it)")
    if first is _NOTHING:
        part = RaggedMmap.from_lists(path, [], keys=keys) if kind == "ragged" else \
            StringsMmap.from_strings(path, [], keys=keys)
    else:
        stream = itertools.chain([first], iterator)
        if kind == "ragged":
            part = RaggedMmap.from_generator(path, stream, batch_size, keys=keys)
        elif kind == "string":
            part = StringsMmap.from_generator(path, stream, batch_size, keys=keys)
        else:
            part = np_ninja.from_generator(path, stream, batch_size, keys=keys)
    (path / "writer.lock").unlink(missing_ok=True)
    return {"name": name, "length": len(part), "kind": kind, "dtype": _dtype_of(part, kind)}


def _read_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST
    try:
        manifest = json.loads(_meta.read_text(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") not in KINDS or \
            not isinstance(manifest.get("parts"), list):
        raise ValueError(f"{path}: expected {{'kind', 'dtype', 'parts'}}, found {str(manifest)[:80]!r}")
    for part in manifest["parts"]:
        if not isinstance(part, dict) or not isinstance(part.get("name"), str) or "/" in part["name"] \
                or not isinstance(part.get("length"), int) or part["length"] < 0:
            raise ValueError(f"{path}: a part must be {{'name', 'length'}}, found {part!r}")
    return manifest


def _write_manifest(out_dir: Path, manifest: dict, new: bool) -> None:
    from ._storage import _durable

    _meta.write_bytes(out_dir / MANIFEST, json.dumps(manifest, indent=1).encode(), durable=_durable)
    if new:
        _meta.write_bytes(out_dir / _meta.TYPE, b"sharded", durable=_durable)


def _check_record(record: Dict[str, Any], kind: str, dtype: Optional[str], out_dir: Path) -> None:
    if record.get("kind") != kind or record.get("dtype") != dtype and record.get("length"):
        raise ValueError(f"part {record.get('name')!r} holds {record.get('kind')} samples of "
                         f"{record.get('dtype')}, but {out_dir} holds {kind} samples of {dtype}")


class ShardedMmap(_keys.KeyLookups):
    """Many maps of one kind (the parts of the directory ``out_dir``) read as one map.

    ``len(m)``, ``m[i]``, ``m[slice]``, ``m[indices]`` (a list, or rows of an array for numpy
    parts), ``__getitems__`` for DataLoaders, ``take``/``padded`` for ragged parts and
    ``get_bytes`` for strings parts; ``wrapper_fn`` applies to every sample read by ``[]``.
    Opening reads only the manifest; parts are opened on their first read.
    """

    def __init__(self, out_dir: PathLike, wrapper_fn: Optional[Callable[[Any], Any]] = None, mode: str = "r"):
        check_options(wrapper_fn=wrapper_fn)
        if mode not in ("r", "c"):
            raise ValueError(f"mode must be 'r' or 'c' (parts are changed through their own maps), got {mode!r}")
        self.out_dir = as_dir(out_dir)
        self.wrapper_fn = wrapper_fn
        self.mode = mode
        self.refresh()

    def refresh(self) -> None:
        """Re-read the manifest, to see parts committed since the map was opened."""
        def read():
            type_name = map_type(self.out_dir, must_exist=True)
            if type_name != "sharded":
                raise ValueError(f"{self.out_dir} holds a {type_name!r} map, expected a sharded map")
            return _read_manifest(self.out_dir)

        manifest = open_consistent(self.out_dir, read)
        lengths = np.array([part["length"] for part in manifest["parts"]], dtype=np.int64)
        bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=bounds[1:])
        opened: Dict[int, Any] = {}
        compressed: set = set()  # strings parts whose strings are compressed (read part by part)

        def open_part(k: int):
            """Part ``k``'s map, opened once (kept in ``opened``)."""
            part = opened.get(k)
            if part is None:
                entry = manifest["parts"][k]
                path = self.out_dir / PARTS / entry["name"]
                part = _open_part(path, manifest["kind"], self.mode)
                if len(part) < entry["length"]:
                    raise ValueError(f"{path}: holds {len(part)} samples, the manifest says {entry['length']}")
                opened[k] = part
            return part

        source = str(self.out_dir)
        if manifest["kind"] == "ragged":
            dtype = manifest.get("dtype")
            dtype = np.float64 if dtype is None else _meta.dtype_from_name(dtype, self.out_dir / MANIFEST)
            reader = _sharded.ShardedRaggedReader(bounds, lambda k: open_part(k)._live()[1], dtype, source)
        elif manifest["kind"] == "string":
            reader = _sharded.ShardedStringsReader(
                bounds, lambda k: _plain_strings(open_part(k), k, compressed), source)
        else:
            reader = _sharded.ShardedRowsReader(bounds, open_part, source)
        self._keys = _keys.KeyIndex.open(self.out_dir)  # committed before the manifest: at least as many
        self._state = (manifest, bounds, open_part, reader, compressed)

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

    def _part(self, k: int):
        """Part ``k``'s map, opened on its first read."""
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
            for position, sample in zip(positions.tolist(), read(self._part(k), local)):
                out[position] = sample
        return out

    def __getitem__(self, item):
        manifest, _, _, reader, _ = self._state
        if manifest["kind"] == "ragged":
            if type(item) is int and self.wrapper_fn is None:
                return reader.sample(item)
            index = _core.normalize_index(item, reader.n)
            if type(index) is int:
                return self._wrap(reader.sample(index))
            samples = reader.samples(index)
            return samples if self.wrapper_fn is None else [self._wrap(sample) for sample in samples]
        index = _core.normalize_index(item, reader.n)
        if manifest["kind"] == "numpy":
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
            except _CompressedPart:
                pass
        k, local = reader.part(i)
        part = self._part(k)
        return part.get_bytes(local) if as_bytes else part[local]

    def _strings(self, index: np.ndarray, as_bytes: bool) -> List[Any]:
        """The strings (or bytes) at ``index``, gathered from every part in one compiled pass;
        part by part, each decompressing, once a part holding compressed strings was opened."""
        reader, compressed = self._state[3], self._state[4]
        if not compressed:
            try:
                return reader.get_many(index, as_bytes)
            except _CompressedPart:
                pass
        return self._gather(index, lambda part, local: part.get_bytes(local) if as_bytes else part[local])

    def _wrap(self, sample):
        return sample if self.wrapper_fn is None else self.wrapper_fn(np.copy(sample)
                                                                       if isinstance(sample, np.ndarray) else sample)

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """The samples at ``indices`` (``torch.utils.data.DataLoader`` fetches whole batches
        with this method): copies for ragged parts, as ``RaggedMmap.__getitems__`` gives."""
        index = _core.batch_index(indices, len(self))
        if self.kind == "ragged":
            samples = self.take(index).arrays()
            return samples if self.wrapper_fn is None else [self.wrapper_fn(s) for s in samples]
        return self[index]

    def __iter__(self):
        for k in range(len(self._state[0]["parts"])):
            part = self._part(k)
            for i in range(self._state[0]["parts"][k]["length"]):
                yield self._wrap(part[i])

    def _require(self, kind: str, what: str) -> None:
        if self.kind != kind:
            raise TypeError(f"{what} needs {kind} parts; {self.out_dir} holds {self.kind} parts")

    def take(self, indices, *, alloc: Optional[Allocator] = None) -> RaggedBatch:
        """The samples at ``indices`` copied back to back into one buffer, in the caller's
        order, as a ``RaggedBatch`` (ragged parts; see ``RaggedMmap.take``): gathered from all
        parts in one compiled pass; ``alloc`` as there."""
        self._require("ragged", "take")
        reader = self._state[3]
        return reader.take(_core.batch_index(indices, reader.n), alloc)

    def padded(self, indices, pad_value: Any = 0, max_len: Optional[int] = None,
               out: Optional[np.ndarray] = None, dtype: Any = None, *,
               alloc: Optional[Allocator] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The samples at ``indices`` padded into one array ``(B, L, *row_shape)`` of ``dtype``
        and their lengths (ragged parts; see ``RaggedMmap.padded``), in the caller's order."""
        self._require("ragged", "padded")
        check_max_len(max_len, out)
        reader = self._state[3]
        out_dtype = reader.dtype if dtype is None else np.dtype(dtype)
        pad = cast_values(np.asarray(pad_value), out_dtype, "pad_value")
        index = _core.batch_index(indices, reader.n)
        return reader.padded(index, pad, -1 if max_len is None else int(max_len), out, out_dtype, alloc)

    def get_bytes(self, item):
        """Like ``m[item]`` without decoding: the UTF-8 bytes of each string (strings parts)."""
        self._require("string", "get_bytes")
        index = _core.normalize_index(item, len(self))
        if type(index) is int:
            return self._string(index, as_bytes=True)
        return self._strings(index, as_bytes=True)

    # -- checking --------------------------------------------------------------------------

    def uncommitted_parts(self) -> List[str]:
        """Parts under ``parts/`` that no commit lists (written by a task that failed or was
        retried): never read, removed by ``gc``."""
        return _uncommitted(self.out_dir, set(self.part_names))

    def verify(self, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
        """Check the manifest and every part (see ``mmap_ninja.verify``); uncommitted parts
        are listed in ``.notes``."""
        return verify_dir(self.out_dir, limit, deep)

    def gc(self) -> List[str]:
        """Remove the parts that no commit lists and return their names. Run it while no
        build of this map is writing parts."""
        with WriterLock(self.out_dir):
            removed = _uncommitted(self.out_dir, {part["name"] for part in _read_manifest(self.out_dir)["parts"]})
            for name in removed:
                shutil.rmtree(self.out_dir / PARTS / name, ignore_errors=True)
        return removed

    def __reduce__(self):
        return type(self), (str(self.out_dir), self.wrapper_fn, self.mode)

    def __repr__(self) -> str:
        return (f"ShardedMmap({str(self.out_dir)!r}, {len(self)} {self.kind} samples in "
                f"{len(self._state[0]['parts'])} parts)")

    # -- writing ---------------------------------------------------------------------------

    @classmethod
    def commit_parts(cls, out_dir: PathLike, records: Sequence[Dict[str, Any]]) -> "ShardedMmap":
        """Append the parts of ``records`` (from ``write_part``), in the order given, in one
        atomic commit of the manifest, under the map's writer lock; create the map if there is
        none. Every record is checked against its part on disk first."""
        out_dir = as_dir(out_dir)
        with WriterLock(out_dir):
            _commit(out_dir, list(records))
        return cls(out_dir)

    def append_maps(self, map_dirs: Sequence[PathLike], copy: bool = False) -> None:
        """Adopt existing maps of this map's kind and dtype as parts, appended in the order
        given: moved in (no data copied) unless ``copy``. All are checked before any moves."""
        self.commit_parts(self.out_dir, _adopt(self.out_dir, map_dirs, copy))
        self.refresh()

    @classmethod
    def from_maps(cls, out_dir: PathLike, map_dirs: Sequence[PathLike], copy: bool = False) -> "ShardedMmap":
        """A new sharded map at ``out_dir`` whose parts are the maps ``map_dirs`` (moved in,
        unless ``copy``)."""
        out_dir = as_dir(out_dir)
        if map_type(out_dir) is not None:
            raise ValueError(f"{out_dir} holds a map already")
        return cls.commit_parts(out_dir, _adopt(out_dir, map_dirs, copy))

    @classmethod
    def from_generator(cls, out_dir: PathLike, sample_generator: Iterable[Any], part_size: int,
                       kind: Optional[str] = None, batch_size: int = 65536, verbose: bool = False, *,
                       keys: Optional[Iterable[str]] = None) -> "ShardedMmap":
        """Write the samples of an iterable as a new sharded map at ``out_dir``, a new part
        every ``part_size`` samples (``kind`` as in ``write_part``; samples read ``batch_size``
        at a time), built aside and swapped in whole (replacing a map there). ``keys``: an
        iterable of one unique ``str`` per sample, consumed alongside."""
        check_options(verbose)
        check_positive(batch_size=batch_size, part_size=part_size)
        out_dir = as_dir(out_dir)
        iterator = iter(sample_generator)
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys= takes one str per sample (a list, say), not one str")
        key_iterator = None if keys is None else iter(keys)
        with building(out_dir) as build, progress(None, verbose, desc=f"Writing {out_dir.name}") as bar:
            records = []
            while True:
                first = next(iterator, _NOTHING)
                if first is _NOTHING:
                    break
                part = itertools.chain([first], itertools.islice(iterator, part_size - 1))
                part_keys = None if key_iterator is None else itertools.islice(key_iterator, part_size)
                records.append(write_part(build, part, kind, min(batch_size, part_size), keys=part_keys))
                kind = records[-1]["kind"]
                bar.update(records[-1]["length"])
            if not records:
                raise ValueError(f"sample_generator yielded no samples, so {out_dir} cannot be created")
            extra = _NOTHING if key_iterator is None else next(key_iterator, _NOTHING)
            if extra is not _NOTHING:
                raise ValueError(f"more keys than samples: the key {extra!r} has no sample")
            _commit(build, records)  # under the build's own lock
        return cls(out_dir)

    def compact(self, out_dir: PathLike, batch_size: int = 65536, verbose: bool = False):
        """Write the samples as one plain map at ``out_dir`` and open it."""
        from .generic import concatenate  # the parts' files, copied file to file, in one commit each

        parts = self._state[0]["parts"]
        return concatenate(out_dir, [self.out_dir / PARTS / part["name"] for part in parts],
                           [part["length"] for part in parts], kind=self.kind, dtype=self.dtype, verbose=verbose,
                           batch_size=batch_size)


def _commit(out_dir: Path, records: List[Dict[str, Any]]) -> None:
    """Append the parts of ``records`` to the manifest of ``out_dir`` (the caller holds its
    writer lock), checking each against its part on disk first."""
    type_name = map_type(out_dir)
    if type_name not in (None, "sharded"):
        raise ValueError(f"{out_dir} holds a {type_name!r} map, not a sharded one: parts cannot be committed to it")
    new = type_name is None
    if new and not records:
        raise ValueError(f"no parts to commit to {out_dir}, which holds no map yet")
    manifest = {"format": _FORMAT, "kind": records[0]["kind"], "dtype": records[0]["dtype"], "parts": []} \
        if new else _read_manifest(out_dir)
    if manifest.get("dtype") is None:
        manifest["dtype"] = next((r["dtype"] for r in records if r.get("length")), None)
    committed = {part["name"] for part in manifest["parts"]}
    keyed = [(out_dir / PARTS / record["name"] / _meta.KEYS / _meta.TYPE).exists() for record in records]
    map_keyed = (out_dir / _meta.KEYS / _meta.TYPE).exists() if not new else bool(keyed and keyed[0])
    for record, part_keyed in zip(records, keyed):
        _check_record(record, manifest["kind"], manifest["dtype"], out_dir)
        if record["name"] in committed:
            raise ValueError(f"part {record['name']!r} is committed already")
        path = out_dir / PARTS / record["name"]
        part = _open_part(path, manifest["kind"])
        if len(part) != record["length"]:
            raise ValueError(f"{path}: holds {len(part)} samples, its record says {record['length']}")
        if part_keyed != map_keyed:
            raise ValueError(f"{path}: its samples {'have' if part_keyed else 'have no'} keys, but those of "
                             f"{out_dir} {'do not' if part_keyed else 'do'}: the parts of a map all have keys or "
                             f"none has")
        committed.add(record["name"])
    if map_keyed:  # committed before the manifest: a map never has samples without keys
        at = sum(part["length"] for part in manifest["parts"])
        added = [key for record in records for key in _part_keys(out_dir / PARTS / record["name"], record["length"])]
        _keys.write_keys(out_dir, added, at, encoded=_keys.check_new(out_dir, added, at))
    manifest["parts"] = manifest["parts"] + [{"name": r["name"], "length": r["length"]} for r in records]
    _write_manifest(out_dir, manifest, new)


def check_joining(out_dir: PathLike, keyed: bool) -> None:
    """Raise ``ValueError`` before any part is written when parts with keys (``keyed``) or
    without cannot join the sharded map at ``out_dir`` (as ``commit_parts`` would refuse them
    once written); any parts can start a new map."""
    out_dir = as_dir(out_dir)
    if map_type(out_dir) != "sharded":
        return
    map_keyed = (out_dir / _meta.KEYS / _meta.TYPE).exists()
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


def _uncommitted(out_dir: Path, committed: set) -> List[str]:
    """Parts no commit lists, and what writers of parts that died left beside them."""
    try:
        names = [entry.name for entry in os.scandir(out_dir / PARTS) if entry.is_dir()]
    except FileNotFoundError:
        return []
    return sorted(name for name in names
                  if (name.startswith("part-") and name not in committed) or name.startswith(".part-"))


def _adopt(out_dir: Path, map_dirs: Sequence[PathLike], copy: bool) -> List[Dict[str, Any]]:
    """Records of ``map_dirs`` moved (or copied) under ``out_dir/parts``, all checked first."""
    checked = []
    for map_dir in map_dirs:
        map_dir = as_dir(map_dir)
        kind = map_type(map_dir, must_exist=True)
        if kind not in KINDS:
            raise ValueError(f"{map_dir} is not a map of one of the kinds {KINDS}")
        part = _open_part(map_dir, kind)
        checked.append((map_dir, {"length": len(part), "kind": kind, "dtype": _dtype_of(part, kind)}))
    kinds = {(r["kind"], r["dtype"]) for _, r in checked if r["length"]}
    if len(kinds) > 1:
        raise ValueError(f"the maps hold samples of several kinds or dtypes: {sorted(map(str, kinds))}")
    (out_dir / PARTS).mkdir(parents=True, exist_ok=True)
    records = []
    for map_dir, record in checked:
        record["name"] = f"part-{uuid.uuid4().hex}"
        target = out_dir / PARTS / record["name"]
        if copy:
            shutil.copytree(map_dir, target, ignore=shutil.ignore_patterns("writer.lock"))
        else:
            os.rename(map_dir, target)
        records.append(record)
    return records


def verify_dir(out_dir: Path, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
    """Problems and notes of the sharded map at ``out_dir``: the manifest, every part (with its
    length), and the parts no commit lists (notes); at most ``limit`` problems listed, the
    rest counted in ``omitted``."""
    from .generic import verify

    limit = check_limit(limit)
    try:
        manifest = _read_manifest(out_dir)
    except (OSError, ValueError) as exc:
        return Report([str(exc)])
    problems: List[str] = []
    notes: List[str] = []
    omitted = 0
    for entry in manifest["parts"]:
        path = out_dir / PARTS / entry["name"]
        report = verify(path, limit, deep)
        problems += report
        notes += report.notes
        omitted += report.omitted
        if not report:
            try:
                length = len(_open_part(path, manifest["kind"]))
            except (OSError, ValueError) as exc:
                problems.append(str(exc))
                continue
            if length != entry["length"]:
                problems.append(f"{path}: holds {length} samples, the manifest says {entry['length']}")
    if not problems:
        found, noted = _keys.problems(out_dir, sum(entry["length"] for entry in manifest["parts"]), deep)
        problems += found
        notes += noted
    for name in _uncommitted(out_dir, {p["name"] for p in manifest["parts"]}):
        notes.append(f"{out_dir / PARTS / name}: a part no commit lists (a failed or retried write); never "
                     f"read, removed by gc()")
    return Report.cut(problems, notes, limit, omitted)
