"""The lifecycle every kind of map shares: open, refresh, close, pickle, append, replace samples,
build aside and swap, verify.

``MapObject`` is the base of ``RaggedMmap`` and ``StringsMmap``. A kind supplies only what
differs: how it reads its committed files (``_read_files``), how it maps them into a compiled
reader (``_open_reader``), how it turns a batch of samples into a commit (``_prepare`` and
``_append``), the bytes that replace one sample (``_replacement_bytes``), and what its
``verify`` checks (``_verify_dir``). Fixed-shape maps are ``np.memmap`` objects rather than
instances of a class; ``mmap_ninja.numpy`` uses ``building`` and ``verify_map`` from here.

Thread safety: the state a map object reads (its files, its compiled reader and the mapping
under it) is one tuple, replaced by a single assignment when the map is refreshed; every read
takes it once. A thread reading while another extends or refreshes the same object sees the
map before or after, never a mix, and no mapping is ever unmapped while a view of it exists
(mappings are released only when the last array over them goes away).

Modes (as ``np.memmap`` and mmap_ninja 0.9.0 define them): ``"r"`` maps the files read-only and
refuses ``m[i] = v``; ``"r+"`` maps them writable and ``m[i] = v`` commits a new version of the
map; ``"c"`` maps them copy-on-write: ``m[i] = v`` and writes through views change this
process's copy, never the files. ``extend``/``append`` add samples in ``"r"`` and ``"r+"``
(they never change a sample already stored), and are refused in ``"c"``.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core, _keys, _meta
from ._format.build import build_aside
from ._format.verify import VERIFY_LIMIT, Found, Report, verify_map
from ._storage import (
    ArrayDir,
    Commit,
    Replacement,
    WriterLock,
    check_holds,
    link_map,
    open_consistent,
)
from .base import Legacy090Names, PathLike, as_dir, progress

# Every mode a map object takes, and the mapping mode it stands for: strings maps keep the
# file modes of mmap_ninja 0.9.0 ("rb", "r+b").
MAPPING_MODES = {"r": "r", "rb": "r", "r+": "r+", "r+b": "r+", "c": "c"}


def _reopen(cls, out_dir: str, options: dict) -> "MapObject":
    """Reopen a pickled map."""
    return cls(out_dir, **options)


# Samples read ahead by iteration: while a stretch of this many is read, the kernel reads the
# next one (the data is mapped for random access, so a page fault reads its own page only).
ITER_AHEAD = 1024


class OpenState:
    """What every map object does with the state it reads (``self._state``, made by
    ``_open_state()`` from the files of ``self.out_dir``, all of one version): refresh, close,
    use as a context manager, and refuse reads once closed."""

    out_dir: Path
    _state: Any

    def _open_state(self) -> Any:
        raise NotImplementedError

    def refresh(self) -> None:
        """Re-read the map from disk, to see what was committed since it was opened (or
        reopen a closed map). In mode ``"c"``, changes made in this process are dropped."""
        self._state = open_consistent(self.out_dir, self._open_state)

    def close(self) -> None:
        """Let go of the mapped files: reading raises ``ValueError`` until ``refresh()``.
        Views and batches already handed out stay valid (the memory is unmapped when the last
        of them goes away)."""
        self._state = None

    @property
    def closed(self) -> bool:
        return self._state is None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _live(self) -> Any:
        state = self._state
        if state is None:
            raise ValueError(f"{self.out_dir}: the {type(self).__name__} is closed; refresh() reopens it")
        return state


class MapObject(OpenState, Legacy090Names, _keys.KeyLookups):
    """The lifecycle shared by ``RaggedMmap`` and ``StringsMmap`` (see the module docstring).

    The state read by every access is ``self._state = (files, reader, buffer)``: the kind's
    committed files, its compiled reader (``None`` for an empty map) and the mapped data
    (``buffer``, written by ``m[i] = v`` in mode ``"c"``). ``None`` once closed.
    """

    MODES: ClassVar[Tuple[str, ...]] = ("r", "r+", "c")
    # what ``m[indices] = values`` assigns, and to what, in its errors
    assigned_nouns: ClassVar[Tuple[str, str]] = ("values", "samples")

    out_dir: Path
    mode: str

    # -- what each kind supplies ----------------------------------------------------------

    @classmethod
    def _read_files(cls, out_dir: Path) -> Any:
        """The committed state of the map at ``out_dir`` (an empty one where there is none);
        it has ``.n``, ``.starts`` and ``.ends`` (``ArrayDir``)."""
        raise NotImplementedError

    def _open_reader(self, files: Any, mode: Optional[str] = None) -> Tuple[Any, Any]:
        """``(reader, buffer)`` over ``files`` mapped in ``mode`` (default: this map's mapping
        mode); ``(None, None)`` for an empty map."""
        raise NotImplementedError

    def _prepare(self, samples: List[Any], files: Any, bar=None) -> Any:
        """``samples`` checked and converted for ``_append`` to ``files`` (raising, naming the
        sample, for one that cannot be stored)."""
        raise NotImplementedError

    def _append(self, lock: WriterLock, files: Any, batch: Any, bar=None) -> None:
        """Commit ``batch`` after the samples of ``files``, under ``lock``."""
        raise NotImplementedError

    def _replacement_bytes(self, files: Any, reader: Any, i: int, value: Any) -> bytes:
        """The stored bytes of ``value`` as the new sample ``i`` of the map ``files`` read by
        ``reader``: as many as sample ``i`` has (``ValueError`` or ``TypeError`` naming ``i``
        otherwise)."""
        raise NotImplementedError

    def _append_bytes(self, files: Any, raw: bytes, commit: Commit) -> int:
        """Write ``raw`` (whole samples' bytes) past the committed data of ``files`` in
        ``commit`` and return the offset, in the units of ``starts``, where it begins."""
        raise NotImplementedError

    @classmethod
    def _verify_dir(cls, out_dir: Path, limit: int, deep: bool) -> Found:
        """Problems, notes and the number of problems found past ``limit`` of the map at
        ``out_dir`` (see ``verify_map``)."""
        raise NotImplementedError

    def _options(self) -> dict:
        """The options that reopen this map as it is (for pickling)."""
        return {"mode": self.mode}

    # -- opening and closing -------------------------------------------------------------

    def _init_map(self, out_dir: PathLike, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.out_dir = as_dir(out_dir)
        self.mode = mode
        self._state: Optional[tuple] = None
        self.refresh()

    @property
    def _mapping_mode(self) -> str:
        return MAPPING_MODES[self.mode]

    def _open_state(self) -> tuple:
        files = self._read_files(self.out_dir)
        reader, buffer = self._open_reader(files)
        files.keys = _keys.KeyIndex.open(self.out_dir)  # read after the samples: at least as many
        return files, reader, buffer

    def __len__(self) -> int:
        return self._live()[0].n

    def __iter__(self):
        n = len(self)
        for i in range(n):
            if i % ITER_AHEAD == 0:  # the samples one stretch ahead are read meanwhile
                start = i + ITER_AHEAD if i else 0
                reader = self._live()[1]
                if reader is not None and start < n:
                    reader.prefetch(np.arange(start, min(n, i + 2 * ITER_AHEAD), dtype=np.int64))
            yield self[i]

    def prefetch(self, indices) -> None:
        """Start reading the samples at ``indices`` (a sequence, array, boolean mask or slice,
        as ``take`` takes them) from disk into the page cache in the background, and return at
        once: a later read of them finds them in memory. A few of them are looked up in the page
        cache first, and when all are there the kernel is asked nothing.
        ``IndexError`` for an index out of range."""
        files, reader, _ = self._live()
        index = _core.batch_index(indices, files.n)
        if reader is not None and len(index):
            reader.prefetch(index)

    # -- keys (see _keys.KeyLookups) ---------------------------------------------------

    def _keys_and_length(self) -> Tuple[Optional[_keys.KeyIndex], int]:
        files = self._live()[0]
        return files.keys, files.n

    def __reduce__(self):
        # a map pickles as its path and options, and reopens where it is unpickled
        return _reopen, (type(self), str(self.out_dir), self._options())

    def verify(self, limit: int = VERIFY_LIMIT, deep: bool = False) -> Report:
        """Check the whole map and return what is wrong, one line per problem naming the
        file, at most ``limit`` lines (an empty list when it is sound), with ``.omitted``, the
        number of problems found past them, and ``.notes`` on what could not be checked.
        Structure, offsets and the metadata each commit recorded are always checked; ``deep``
        also reads every byte written by a commit against its checksum. Damage is reported,
        never raised."""
        return verify_map(self.out_dir, self._verify_dir, limit, deep)

    # -- writing -------------------------------------------------------------------------

    def _refuse_in_copy_on_write(self, what: str) -> None:
        if self.mode == "c":
            raise ValueError(f"{self.out_dir} was opened copy-on-write (mode='c'): its changes stay in this "
                             f"process, so it cannot {what}; open it with mode='r+' (or 'r') for that")

    def append(self, sample: Any, key: Optional[str] = None, *, keys: Optional[Sequence[str]] = None) -> None:
        """Append one sample (with its ``key``, in a map whose samples have keys; ``keys=[key]``
        works too)."""
        self.extend([sample], keys=_appended_keys(key, keys))

    def extend(self, samples: Iterable[Any], verbose: bool = False, *, keys: Optional[Iterable[str]] = None) -> None:
        """Append samples in one commit, under the map's writer lock; on an error (a sample
        that cannot be stored, a key that is not new, a full disk) nothing is written.

        ``keys``: one ``str`` per sample, none already a key of the map; needed by a map whose
        samples have keys, and allowed for an empty map, which then keeps keys."""
        self._refuse_in_copy_on_write("append samples")
        samples = list(samples)
        keys = _listed_keys(keys, len(samples))
        if not samples:
            return
        files = self._live()[0]
        with progress(len(samples), verbose, desc=f"Extending {self.out_dir.name}") as bar:
            batch = self._prepare(samples, files, bar)  # checked before the lock creates anything
            with WriterLock(self.out_dir) as lock:
                current = self._read_files(self.out_dir)  # another writer may have extended it
                self._check_stored(current)
                if current.n != files.n or getattr(current, "dtype", None) != getattr(files, "dtype", None):
                    batch = self._prepare(samples, current)
                encoded = _keys.check_extension(self.out_dir, keys, current.n)
                if keys is not None:  # committed first: a map never has samples without keys
                    _keys.write_keys(self.out_dir, keys, current.n, encoded=encoded)
                self._append(lock, current, batch, bar)
        self.refresh()

    def __setitem__(self, key, value) -> None:
        """Replace samples: ``m[i] = v`` or ``m[slice or indices] = values``, each value of the
        size of the sample it replaces; all are checked before any is written. Mode ``"r+"``
        commits a new version of the map (readers see all the new samples or none), ``"c"``
        changes this process's copy only, ``"r"`` refuses."""
        if self.mode in ("r", "rb"):
            raise io.UnsupportedOperation(f"{self.out_dir} was opened read-only (mode={self.mode!r}): samples "
                                          f"cannot be assigned; open it with mode='r+' to change them")
        files, reader, buffer = self._live()
        index = _core.normalize_index(key, files.n)
        if type(index) is int:
            pairs = [(index, value)]
        else:
            values = [value] if isinstance(value, (str, bytes)) else list(value)
            if len(values) != len(index):
                what, where = self.assigned_nouns
                raise ValueError(f"cannot assign {len(values)} {what} to {len(index)} {where}")
            pairs = list(zip(index.tolist(), values))
        if not pairs:
            return
        if self.mode == "c":
            writes = [(i, self._replacement_bytes(files, reader, i, v)) for i, v in pairs]
            target = np.frombuffer(buffer, dtype=np.uint8)
            for i, raw in writes:
                start = reader.span(i)[0] * self._unit(files)
                target[start:start + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            return
        with WriterLock(self.out_dir) as lock:
            # the values are checked against the map as it is now on disk, not as this object
            # last read it: another writer may have rebuilt it meanwhile
            current = self._read_files(self.out_dir)
            self._check_stored(current)
            if current.n != files.n:
                raise ValueError(f"{self.out_dir} holds {current.n} samples now, not the {files.n} it held when "
                                 f"it was read (changed by another writer); refresh() and assign again")
            current_reader = self._open_reader(current, "r")[0]
            writes = [(i, self._replacement_bytes(current, current_reader, i, v)) for i, v in pairs]
            with Replacement(lock) as build:
                self._replace_samples(build, writes)
        self.refresh()

    def _check_stored(self, files: Any) -> None:
        """Before any write: ``ValueError`` naming the data file when it holds fewer bytes than
        the committed samples reach (shortened through another of its names)."""
        if files.n:
            check_holds(self.out_dir / _meta.DATA, int(files.ends.map()[files.n - 1]) * self._unit(files))

    def _unit(self, files: Any) -> int:
        """Bytes per unit of ``starts``/``ends`` offsets."""
        return 1

    def _replace_samples(self, build: Path, writes: Sequence[Tuple[int, bytes]]) -> None:
        """Lay out in ``build`` the map with samples ``i`` replaced by the bytes ``raw`` for
        each ``(i, raw)`` in ``writes``: the data files are shared with the current version
        by hard links, the new bytes appended past what is committed, and ``starts``/``ends``
        written anew."""
        link_map(self.out_dir, build)
        files = self._read_files(build)
        n = files.n
        starts = np.array(files.starts.map()[:n])
        ends = np.array(files.ends.map()[:n])
        unit = self._unit(files)
        replaced = dict(writes)  # the last value given for an index wins, as in numpy
        if n - 1 not in replaced:
            # mmap_ninja 0.9.0 appends after the end of the last sample: it must stay the end
            # of the data, so the last sample moves along past the replaced ones
            data = np.frombuffer(self._open_reader(files, "r")[1], dtype=np.uint8)
            replaced[n - 1] = data[starts[n - 1] * unit:ends[n - 1] * unit].tobytes()
        writes = list(replaced.items())
        commit = Commit()
        offset = self._append_bytes(files, b"".join(raw for _, raw in writes), commit)
        sizes = np.array([len(raw) // unit for _, raw in writes], dtype=np.int64)
        new_ends = offset + np.cumsum(sizes)
        indices = np.array([i for i, _ in writes], dtype=np.int64)
        starts[indices] = new_ends - sizes
        ends[indices] = new_ends
        for name, offsets in (("ends", ends), ("starts", starts)):
            shutil.rmtree(build / name, ignore_errors=True)
            array = ArrayDir(build / name)
            array.commit_rows(array.write_rows(offsets, commit), commit)
        commit.finish()

    # -- building ------------------------------------------------------------------------

    @classmethod
    def _build(cls, out_dir: PathLike, batches: Iterable[List[Any]], create: Callable[[Path, List[Any]], Any],
               extend: Callable[[Any, List[Any]], None], keys: Optional[Iterable[str]] = None, **open_kwargs):
        """Write ``batches`` as a new map (``create(build, first batch)``, then ``extend(files,
        batch)`` for each next one) aside, swap it in when it is whole, and open it. ``keys``
        (one per sample, consumed alongside) are written before each batch.

        Nobody reads the map before it is swapped in, so its commits need not be flushed one
        by one (``create`` and ``extend`` commit with ``Commit(durable=False)``): it is flushed
        to disk whole, once, before the swap (when durability is on)."""
        mode = open_kwargs.get("mode")
        if mode not in cls.MODES:  # checked before anything is written
            raise ValueError(f"mode must be one of {cls.MODES}, got {mode!r}")
        out_dir = build_aside(out_dir, batches, create, extend, keys)
        return cls(out_dir, **open_kwargs)


def _appended_keys(key: Optional[str], keys: Optional[Sequence[str]]) -> Optional[Sequence[str]]:
    """The keys of one appended sample, given as ``key=`` or ``keys=[key]``."""
    if key is None:
        return keys
    if keys is not None:
        raise TypeError("append takes key= or keys=, not both")
    return [key]


def _listed_keys(keys: Optional[Iterable[str]], count: int) -> Optional[List[str]]:
    """``keys`` as a list of ``count`` keys (``ValueError`` for another number)."""
    if keys is None:
        return None
    if isinstance(keys, (str, bytes)):
        raise TypeError("keys= takes one str per sample (a list, say), not one str")
    keys = list(keys)
    if len(keys) != count:
        raise ValueError(f"{len(keys)} keys for {count} samples: one key is needed per sample")
    return keys
