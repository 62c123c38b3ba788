"""Keys of the samples of a map: one ``str`` per sample, unique within the map, found in O(1).

The keys of the map at ``DIR`` live in ``DIR/keys/``, which mmap_ninja 0.9.0 ignores and which
is itself a strings map (``StringsMmap(DIR / "keys")`` reads them): ``data.ninja`` holds the
keys' UTF-8 bytes, ``starts/`` and ``ends/`` their offsets, with the checksums of every commit.
Beside them, ``index.ninja`` is a hash table of their positions (``_keyindex``): a 64-byte
header (``MNKEYIDX``, version, position bits, capacity as ``<8sIIQ``) and ``capacity`` slots.

Keys are committed before the samples they name, so a map's folder always holds at least as
many keys as samples; keys past the map's length (left by a writer that died between the two
commits) are not the map's and are written over by the next ``extend``. The table is updated in
place (slots only ever filled) and built anew, beside it, when it fills past half.
"""

from __future__ import annotations

import collections
import os
import struct
from pathlib import Path
from typing import Any, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, _keyindex, _meta
from ._storage import ArrayDir, Commit, _fsync_path, make_private, map_bytes, shared, verify_checksums

KEYS_DIR = _meta.KEYS
INDEX = _meta.KEY_INDEX
_HEADER = struct.Struct("<8sIIQ")
_MAGIC = b"MNKEYIDX"
_VERSION = 1
_HEADER_BYTES = 64
_MIN_CAPACITY = 1024
# The slots of a table that holds no key.
_NO_SLOTS = np.zeros(1, np.uint64)
_NO_SLOTS.flags.writeable = False


def _encode(keys: Sequence[Any], first: int) -> Tuple[bytes, np.ndarray]:
    """The UTF-8 bytes of ``keys``, back to back, and their offsets (``len + 1``); a key that
    is not a ``str`` raises ``TypeError`` naming the sample (``first`` is the first's index)."""
    try:
        joined = "".join(keys)  # a TypeError for anything but str
    except TypeError:
        joined = None
    if joined is not None and joined.isascii():  # a byte per character: no key encoded alone
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)), out=offsets[1:])
        return joined.encode("ascii"), offsets
    try:
        encoded = [key.encode("utf-8") for key in keys]
        ok = all(type(raw) is bytes for raw in encoded) if encoded and type(keys[0]) is not str else True
    except (AttributeError, TypeError, UnicodeEncodeError):
        ok = False
    if not ok:
        for k, key in enumerate(keys):
            if not isinstance(key, str):
                raise TypeError(f"the key of sample {first + k} is a {type(key).__name__}, not a str")
            try:
                key.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"the key of sample {first + k} is not valid UTF-8 text: {exc}") from None
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    return b"".join(encoded), offsets


def _query(key_or_keys: Any) -> Tuple[bool, List[Any]]:
    """``(single, keys)`` of what ``index_of`` was asked."""
    if isinstance(key_or_keys, str):
        return True, [key_or_keys]
    if isinstance(key_or_keys, np.ndarray):
        return False, key_or_keys.reshape(-1).tolist()
    try:
        return False, list(key_or_keys)
    except TypeError:
        raise TypeError(f"keys are str, or sequences of str; got a {type(key_or_keys).__name__}") from None


def _capacity_for(count: int) -> int:
    """The number of slots of a table built for ``count`` keys: at most half full."""
    capacity = _MIN_CAPACITY
    while capacity < 2 * count:
        capacity *= 2
    return capacity


class KeyIndex:
    """The keys of one version of a map, mapped: ``count`` keys stored (at least the map's
    length), their bytes, offsets and hash table."""

    def __init__(self, path: Path, count: int, stored: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        self.path, self.count = path, count
        self.stored, self.starts, self.ends = stored, starts, ends
        self._slots: Optional[np.ndarray] = None

    @property
    def slots(self) -> np.ndarray:
        """The hash table, mapped at its first use (a damaged one raises there, not when the
        map opens)."""
        if self._slots is None:
            self._slots = _map_table(self.path / INDEX, self.count) if self.count else _NO_SLOTS
        return self._slots

    @classmethod
    def open(cls, map_dir: Path) -> Optional["KeyIndex"]:
        """The keys of the map at ``map_dir``; ``None`` when it has none."""
        path = map_dir / KEYS_DIR
        if not (path / _meta.TYPE).exists():
            return None
        if not (path / "starts" / _meta.TYPE).exists():  # keys made, none committed yet
            empty = np.zeros(0, np.int64)
            return cls(path, 0, np.zeros(0, np.uint8), empty, empty)
        starts, ends = ArrayDir.open(path / "starts"), ArrayDir.open(path / "ends")
        for array in (starts, ends):
            if array.meta.dtype != np.int64 or len(array.meta.shape) != 1:
                raise ValueError(f"{array.path}: expected a 1-d int64 array of offsets, found {array.meta.dtype} "
                                 f"of shape {array.meta.shape}")
        count = min(starts.rows, ends.rows)
        stored = np.frombuffer(map_bytes(path / _meta.DATA), dtype=np.uint8) if count else np.zeros(0, np.uint8)
        return cls(path, count, stored, starts.map(), ends.map())

    def positions(self, keys: Sequence[Any], count: int) -> np.ndarray:
        """The position of each key among the first ``count`` (-1 where absent); ``TypeError``
        for a key that is not a ``str``."""
        slots = self.slots if count else _NO_SLOTS  # no key to find: the table is not read
        return _keyindex.find_strings(slots, self.stored, self.ends, count, keys, str(self.path))

    def index_of(self, key_or_keys: Any, count: int) -> Union[int, np.ndarray]:
        """The position of a key (an int), or of each of a sequence of keys (``int64``);
        ``KeyError`` naming the first key that is not one of the first ``count``."""
        single, keys = _query(key_or_keys)
        found = self.positions(keys, count)
        missing = np.flatnonzero(found < 0)
        if missing.size:
            raise KeyError(keys[int(missing[0])])
        return int(found[0]) if single else found

    def keys(self, count: int, start: int = 0) -> List[str]:
        """Keys ``start`` to ``count``, in order."""
        if count <= start:
            return []
        reader = _core.StringsReader(memoryview(self.stored), self.starts[:count], self.ends[:count],
                                     source=str(self.path))
        return [raw.decode("utf-8") for raw in reader.get_many(np.arange(start, count, dtype=np.int64), True)]


class KeyLookups:
    """What a map whose samples may have keys offers: ``keyed``, ``index_of``, ``keys()`` and
    ``by_key``. A map supplies ``_keys_and_length()``: its ``KeyIndex`` (``None`` without keys)
    and its number of samples, read together."""

    _no_keys_hint = "build it with keys=[...] (one str per sample) to find samples by key"
    out_dir: Path

    def _keys_and_length(self) -> Tuple[Optional["KeyIndex"], int]:
        raise NotImplementedError

    @property
    def keyed(self) -> bool:
        """Whether the samples have keys."""
        return self._keys_and_length()[0] is not None

    def _key_index(self) -> Tuple["KeyIndex", int]:
        index, n = self._keys_and_length()
        if index is None:
            raise ValueError(f"{self.out_dir} has no keys: {self._no_keys_hint}")
        return index, min(n, index.count)

    def index_of(self, key_or_keys: Any) -> Any:
        """The position of the sample whose key is ``key_or_keys`` (an int), or of each of a
        sequence of keys (``int64`` array); ``KeyError`` naming the first key not in the map.
        O(1) per key (a compiled hash table stored with the map; one for all the parts of a
        sharded map)."""
        index, n = self._key_index()
        return index.index_of(key_or_keys, n)

    def keys(self) -> List[str]:
        """The key of every sample, in order."""
        index, n = self._key_index()
        return index.keys(n)

    @property
    def by_key(self) -> "_ByKey":
        """``m.by_key[key]`` is ``m[m.index_of(key)]``, for a key or a sequence of keys."""
        return _ByKey(self)


class _ByKey:
    """``m.by_key[key_or_keys]``: the samples of ``m`` found by key."""

    def __init__(self, m: KeyLookups):
        self._map = m

    def __getitem__(self, key_or_keys: Any) -> Any:
        return self._map[self._map.index_of(key_or_keys)]

    def __contains__(self, key: Any) -> bool:
        index, n = self._map._key_index()
        return bool(isinstance(key, str) and index.positions([key], n)[0] >= 0)


def _map_table(path: Path, count: int) -> np.ndarray:
    """The slots of the hash table at ``path``, checked to index ``count`` keys. The header is
    read from, and the slots mapped through, one open file: a table built anew and renamed over
    ``path`` meanwhile is never read with the header of the one it replaced."""
    try:
        table = open(path, "rb")
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: the keys of {path.parent.parent} cannot be looked up "
                         f"(verify reports it; writing keys again rebuilds it)") from None
    with table:
        header = table.read(_HEADER_BYTES)
        if len(header) < _HEADER_BYTES:
            raise ValueError(f"{path}: {len(header)} bytes, too short for the header of a key table")
        magic, version, bits, capacity = _HEADER.unpack_from(header)
        if magic != _MAGIC or version != _VERSION or bits != _keyindex.POSITION_BITS:
            raise ValueError(f"{path}: not a key table of a known version ({magic!r}, version {version})")
        if capacity < 2 or capacity & (capacity - 1) or capacity < count:
            raise ValueError(f"{path}: a table of {capacity} slots cannot index {count} keys: damaged")
        size = os.fstat(table.fileno()).st_size
        if size < _HEADER_BYTES + 8 * capacity:
            raise ValueError(f"{path}: {size} bytes cannot hold {capacity} slots: damaged or cut short")
        return np.memmap(table, dtype=np.uint64, mode="r", offset=_HEADER_BYTES, shape=(capacity,))


def _starts_of(ends: np.ndarray, at: int, total: int) -> np.ndarray:
    """Where keys ``at`` to ``total`` start: keys lie back to back, so each where the one before
    ends (key 0 at 0)."""
    starts = np.empty(total - at, dtype=np.int64)
    if total > at:
        starts[0] = ends[at - 1] if at else 0
        starts[1:] = ends[at:total - 1]
    return starts


def _write_table(path: Path, stored: np.ndarray, ends: np.ndarray, durable: bool) -> None:
    """A new table at ``path`` indexing the keys ending at ``ends`` in ``stored``, written
    beside it and renamed into place."""
    count = len(ends)
    starts = _starts_of(ends, 0, count)
    capacity = _capacity_for(count)
    new = path.with_name(path.name + ".new")
    with open(new, "wb") as table:
        table.write(_HEADER.pack(_MAGIC, _VERSION, _keyindex.POSITION_BITS, capacity).ljust(_HEADER_BYTES, b"\0"))
        table.truncate(_HEADER_BYTES + 8 * capacity)
    if count:
        slots = np.memmap(new, dtype=np.uint64, mode="r+", offset=_HEADER_BYTES, shape=(capacity,))
        _keyindex.insert(slots, _keyindex.hash_keys(stored, starts, ends), 0)
        slots.flush()
        del slots
    if durable:
        _fsync_path(new)
    os.replace(new, path)


def _check_repeats(keys: Sequence[Any], first: int, seen: dict) -> None:
    """Record in ``seen`` (key -> sample) the keys of samples ``first, first + 1, ...``;
    ``ValueError`` naming a key given twice."""
    for k, key in enumerate(keys, first):
        earlier = seen.setdefault(key, k)
        if earlier != k:
            raise ValueError(f"the key {key!r} is given twice: for samples {earlier} and {k}")


def check_new(map_dir: Path, keys: Sequence[Any], at: int) -> Tuple[bytes, np.ndarray]:
    """Raise unless ``keys`` can name samples ``at, at + 1, ...`` of the map at ``map_dir``: each
    a ``str`` (``TypeError``), none given twice nor the key of one of the first ``at`` samples
    (``ValueError`` naming it). Returns their encoding, for ``write_keys``."""
    encoded = _encode(keys, at)
    _check_repeats(keys, at, {})
    if at == 0:
        return encoded
    index = KeyIndex.open(map_dir)
    if index is None or index.count < at:
        held = 0 if index is None else index.count
        raise ValueError(f"{map_dir} holds keys for {held} of its {at} samples: keys can only be added to a map "
                         f"that has one for every sample (build it with keys=)")
    found = index.positions(keys, at)
    clash = np.flatnonzero(found >= 0)
    if clash.size:
        k = int(clash[0])
        raise ValueError(f"the key {keys[k]!r} of sample {at + k} is already the key of sample {int(found[k])} "
                         f"of {map_dir}")
    return encoded


def write_keys(map_dir: Path, keys: Sequence[str], at: int, durable: Optional[bool] = None,
               encoded: Optional[Tuple[bytes, np.ndarray]] = None) -> None:
    """Commit ``keys`` (checked by ``check_new``, whose ``encoded`` keys may be given) as the
    keys of samples ``at, at + 1, ...`` of the map at ``map_dir`` (keys stored past ``at`` are
    written over), and index them."""
    path = map_dir / KEYS_DIR
    commit = Commit(durable)
    data, offsets = encoded if encoded is not None else _encode(keys, at)
    starts_dir, ends_dir = ArrayDir(path / "starts"), ArrayDir(path / "ends")
    if (path / "starts" / _meta.TYPE).exists():
        starts_dir, ends_dir = ArrayDir.open(path / "starts"), ArrayDir.open(path / "ends")
    held = min(starts_dir.rows, ends_dir.rows)
    if at > held:
        raise ValueError(f"{path} holds {held} keys: keys for samples from {at} on cannot be added")
    data_file = path / _meta.DATA
    offset = 0  # keys lie back to back: the new ones go right after key at - 1 (over stale ones)
    if at:
        held_ends = ends_dir.map()
        offset = int(held_ends[at - 1])
        before = int(held_ends[at - 2]) if at > 1 else 0
        size = data_file.stat().st_size if data_file.exists() else 0
        if not before <= offset <= size:  # never write over the bytes of a committed key
            raise ValueError(f"{path / 'ends'}: key {at - 1} ends at byte {offset}, before it starts ({before}) "
                             f"or past the {size} bytes of {data_file}: damaged (verify reports it)")
    if not (path / _meta.TYPE).exists():
        path.mkdir(parents=True, exist_ok=True)
        commit.replace(path / _meta.TYPE, b"string")
    commit.write(data_file, offset, data, truncate=not at, checksum=(path, b"", offset))
    if offset + len(data) == 0:
        commit.write(data_file, 0, b"\0")  # as every data file: 0.9.0 cannot map an empty one
    ends = offset + offsets[1:]
    starts = offset + offsets[:-1]
    ends_meta = ends_dir.write_rows(ends, commit, at if ends_dir.meta is not None else None)
    starts_meta = starts_dir.write_rows(starts, commit, at if starts_dir.meta is not None else None)
    ends_dir.commit_rows(ends_meta, commit)
    starts_dir.commit_rows(starts_meta, commit)
    commit.finish()
    _index(path, at, len(keys), commit.durable, stale=held > at)


def _index(path: Path, at: int, added: int, durable: bool, stale: bool = False) -> None:
    """Enter keys ``at`` to ``at + added`` of the keys at ``path`` into its table (built anew
    when it would be more than half full, is missing or damaged, or holds slots of ``stale``
    keys, left past the map's length by a write that failed and now written over)."""
    total = at + added
    stored = np.frombuffer(map_bytes(path / _meta.DATA), dtype=np.uint8) if total else np.zeros(0, np.uint8)
    ends = np.asarray(ArrayDir.open(path / "ends").map()[:total]) if total else np.zeros(0, np.int64)
    table = path / INDEX
    try:
        slots = _map_table(table, at)
    except ValueError:
        slots = None
    if slots is None or stale or 2 * total > len(slots):
        _write_table(table, stored, ends, durable)
        return
    if not added:
        return
    if shared(table):  # a table another path names (linked by hand) is never written through
        make_private(table, durable)
    slots = np.memmap(table, dtype=np.uint64, mode="r+", offset=_HEADER_BYTES, shape=(len(slots),))
    _keyindex.insert(slots, _keyindex.hash_keys(stored, _starts_of(ends, at, total), ends[at:]), at)
    slots.flush()
    if durable:
        _fsync_path(table)


def check_extension(map_dir: Path, keys: Optional[Sequence[Any]], at: int) -> Optional[Tuple[bytes, np.ndarray]]:
    """Raise unless samples ``at, at + 1, ...`` may be added to the map at ``map_dir`` with
    ``keys`` (``None``: without keys, which a map whose samples have keys refuses). Returns
    the keys' encoding, for ``write_keys`` (``None`` without keys)."""
    if keys is not None:
        return check_new(map_dir, keys, at)
    if (map_dir / KEYS_DIR / _meta.TYPE).exists():
        raise ValueError(f"the samples of {map_dir} have keys: give one for each new sample (keys=[...])")
    return None


class KeysAlongside:
    """Keys read so far and not yet taken, as an iterator for ``KeyFeed``: whoever reads the
    samples puts each one's key in ``pending`` as it reads it, so a build takes every batch's
    keys from the same rows (an iterator that stops while ``pending`` is empty)."""

    def __init__(self) -> None:
        self.pending: Deque[Any] = collections.deque()

    def __iter__(self) -> "KeysAlongside":
        return self

    def __next__(self) -> Any:
        if not self.pending:
            raise StopIteration
        return self.pending.popleft()


class KeyFeed:
    """The keys of a build, taken from ``keys`` (any iterable, consumed alongside the samples)
    batch by batch, checked and written into the map being built at ``build``."""

    def __init__(self, build: Path, keys: Iterable[Any]):
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys= takes one str per sample (a list, say), not one str")
        self.build, self.iterator, self.count = build, iter(keys), 0
        self.seen: dict = {}

    def take(self, n: int) -> None:
        """Write the keys of the next ``n`` samples."""
        keys = []
        for _ in range(n):
            try:
                keys.append(next(self.iterator))
            except StopIteration:
                raise ValueError(f"keys ran out at sample {self.count + len(keys)}: one key is needed per "
                                 f"sample") from None
        encoded = _encode(keys, self.count)
        _check_repeats(keys, self.count, self.seen)  # unique across the whole build, checked as it goes
        write_keys(self.build, keys, self.count, durable=False, encoded=encoded)
        self.count += n

    def batches(self, batches: Iterable[List[Any]]) -> Iterator[List[Any]]:
        """``batches``, each one's keys written before it is."""
        for batch in batches:
            self.take(len(batch))
            yield batch

    def finish(self, samples: int) -> None:
        """Check that the keys and the ``samples`` of the build match one for one (the keys
        were taken for exactly the samples written) and mark a build without samples keyed."""
        if self.count < samples:
            self.take(samples - self.count)
        if self.count > samples:
            raise ValueError(f"{self.count} keys for {samples} samples")
        extra = next(self.iterator, _NOTHING)
        if extra is not _NOTHING:
            raise ValueError(f"more keys than samples: the key {extra!r} has no sample")
        if self.count == 0:
            write_keys(self.build, [], 0, durable=False)


_NOTHING = object()


def problems(map_dir: Path, n: int, deep: bool) -> Tuple[List[str], List[str]]:
    """What ``verify`` reports of the keys of the map at ``map_dir`` of ``n`` samples: their
    files and checksums, and that the table finds every key at its own position (so keys are
    unique)."""
    path = map_dir / KEYS_DIR
    if not path.exists():
        return [], []
    index = KeyIndex.open(map_dir)
    if index is None:
        return [f"{path}: keys without {_meta.TYPE}: damaged, or a first commit cut short"], []
    if index.count < n:
        return [f"{path} holds {index.count} keys for {n} samples (samples appended by a version that writes no "
                f"keys, or damage)"], []
    if n == 0:
        return [], []
    starts, ends = np.asarray(index.starts[:n]), np.asarray(index.ends[:n])
    outside = np.flatnonzero((starts < 0) | (ends < starts) | (ends > len(index.stored)))
    if outside.size:
        i = int(outside[0])
        return [f"{path}: the offsets of key {i} ([{int(starts[i])}, {int(ends[i])})) fall outside the "
                f"{len(index.stored)} bytes of its {_meta.DATA}: damaged"], []
    apart = np.flatnonzero(starts != _starts_of(ends, 0, n))
    if apart.size:  # lookups read where a key starts from where the one before ends
        i = int(apart[0])
        return [f"{path}: key {i} starts at byte {int(starts[i])}, not where key {i - 1} ends "
                f"({int(ends[i - 1]) if i else 0}): keys are stored back to back; damaged"], []
    found: List[str] = []
    notes: List[str] = []
    for name in ("starts", "ends"):
        array = ArrayDir.open(path / name)
        more, noted = array.verify_checksums(deep)
        found += more
        notes += noted
    more, noted = verify_checksums(path, path / _meta.DATA, int(index.ends[:n].max(initial=0)), None, deep)
    found += more
    notes += noted
    bad = _keyindex.misplaced(index.slots, index.stored, index.ends, n)
    if bad >= 0:
        key = index.keys(bad + 1, bad)[0]
        where = index.positions([key], n)[0]
        why = f"it finds sample {where}'s" if where >= 0 else "it does not find it"
        found.append(f"{path / INDEX}: the key {key!r} of sample {bad} is not indexed at its place ({why}): "
                     f"damaged, or keys given twice")
    return found, notes
