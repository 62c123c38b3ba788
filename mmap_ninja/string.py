"""Strings maps: a memory-mapped list of ``str``, decoded straight from the mapped bytes by the
compiled core. What they are on disk is ``mmap_ninja._format.strings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence

import numpy as np

from . import _core, _meta
from ._format.kinds import register
from ._format.strings import Codec, StringsFiles, check_strings, encode_strings, train_dictionary, verify_dir
from ._lifecycle import MapObject
from ._storage import LOCK_FILE, Commit, WriterLock
from .base import (  # noqa: F401  (BytesSlices: a name of 0.9.0's strings module, kept)
    BytesSlices,
    PathLike,
    Wrapped,
    as_dir,
    check_options,
    in_batches,
    known_length,
    map_type,
    progress,
)
from .base import (
    component_names as component_names_of,
)

_MODES = ("r+b", "rb", "r", "r+", "c")


class StringsMmap(MapObject):
    """A memory-mapped list of ``str``, opened from ``out_dir``.

    ``len(m)``; ``m[i]`` (negative ``i`` too) is a ``str``; ``m[slice]``, ``m[list or array of
    ints]`` and ``m[boolean mask]`` are lists of ``str``.

    ``mode`` (mmap_ninja 0.9.0's file modes, or the mapping modes of the other maps):
    ``"r+b"`` (the default; ``"r+"``) allows ``m[i] = s`` for strings of the same UTF-8
    length, committed as a new version of the map; ``"rb"`` (``"r"``) refuses assignments
    and works on read-only files; ``"c"`` changes this process's copy only. ``append`` and
    ``extend`` add strings in every mode but ``"c"``.

    A directory with no map (or no directory) opens as an empty map; nothing is written until
    the first ``append`` or ``extend``. ``close()`` (or ``with StringsMmap(...) as m``) lets go
    of the files; no file descriptor is held while the map is open.
    """

    MODES = _MODES
    assigned_nouns = ("strings", "items")

    def __init__(self, out_dir: PathLike, mode: str = "r+b", **component_names: str):
        check_options(**component_names_of(component_names, ("starts_key", "ends_key")))
        out_dir = as_dir(out_dir)
        if mode in ("rb", "r") and map_type(out_dir, must_exist=True) is None and \
                any(entry.name != LOCK_FILE for entry in out_dir.iterdir()):
            raise ValueError(f"{out_dir} is not a strings map: it has no {_meta.TYPE}")
        self._init_map(out_dir, mode)

    # -- what the lifecycle asks of a strings map ------------------------------------------

    @classmethod
    def _read_files(cls, out_dir: Path) -> StringsFiles:
        return StringsFiles.open(out_dir)

    def _open_reader(self, files: StringsFiles, mode: Optional[str] = None):
        return files.reader(mode or self._mapping_mode)

    def _prepare(self, samples: List[Any], files: StringsFiles, bar=None) -> List[str]:
        check_strings(samples, files.n)
        return samples

    def _append(self, lock: WriterLock, files: StringsFiles, batch: List[str], bar=None) -> None:
        commit = Commit()
        if not (self.out_dir / _meta.TYPE).exists():
            files.create(commit)
        files.append(batch, commit, bar)
        commit.finish()

    def _replacement_bytes(self, files: StringsFiles, reader: _core.StringsReader, i: int, value: Any) -> bytes:
        if files.codec.compressed:
            raise ValueError("in-place modification is not supported for compressed StringsMmap")
        (raw,) = encode_strings([value], i)
        start, end = reader.span(i)
        if len(raw) != end - start:
            raise ValueError(f"string {i} is {end - start} bytes long in UTF-8; a replacement "
                             f"of {len(raw)} bytes cannot be written in place")
        return raw

    def _append_bytes(self, files: StringsFiles, raw: bytes, commit: Commit) -> int:
        return files.append_bytes(raw, commit)

    @classmethod
    def _verify_dir(cls, out_dir: Path, limit: int, deep: bool):
        return verify_dir(out_dir, limit, deep)

    # -- reading ------------------------------------------------------------------------

    def __getitem__(self, item):
        files, reader, _ = self._state or self._live()  # _live() raises once closed
        codec = files.codec
        if type(item) is int and reader is not None and not codec.compressed:
            return reader.get(item)
        if reader is None:
            _core.normalize_index(item, 0)  # raises for any integer
            return []
        if type(item) is slice and not codec.compressed:
            return reader.get_in(item)
        index = _core.normalize_index(item, reader.n)
        if not codec.compressed:
            return reader.get(index) if type(index) is int else reader.get_many(index)
        if type(index) is int:
            return self._unpack(codec, index, reader.get(index, True))
        return [self._unpack(codec, i, raw) for i, raw in zip(index.tolist(), reader.get_many(index, True))]

    def _unpack(self, codec: Codec, i: int, raw: bytes) -> str:
        try:
            return codec.unpack(raw)
        except ValueError as exc:
            raise ValueError(f"{self.out_dir}: string {i}: {exc}") from None

    def __getitems__(self, indices: Sequence[int]) -> List[str]:
        """The strings at ``indices``, as a list (``torch.utils.data.DataLoader`` fetches
        whole batches with this method)."""
        return self[_core.batch_index(indices, len(self))]

    def get_bytes(self, item):
        """Like ``m[item]``, but the UTF-8 bytes of each string, without decoding them (a
        compressed map decompresses them)."""
        files, reader, _ = self._live()
        if reader is None:
            _core.normalize_index(item, 0)  # raises for any integer
            return []
        codec = files.codec
        index = _core.normalize_index(item, reader.n)
        if type(index) is int:
            raw = reader.get(index, True)
            return codec.decompress(raw) if codec.compressed else raw
        raws = reader.get_many(index, True)
        return [codec.decompress(raw) for raw in raws] if codec.compressed else raws

    @property
    def codec(self) -> Codec:
        """How the strings are stored: ``.compressed``, ``.level``, ``.dictionary``."""
        return self._live()[0].codec

    @property
    def starts(self) -> np.ndarray:
        """``int64`` byte offset in ``data.ninja`` where each string begins."""
        files = self._live()[0]
        return files.mapped["starts"][: files.n] if files.n else np.empty(0, np.int64)

    @property
    def ends(self) -> np.ndarray:
        """``int64`` byte offset in ``data.ninja`` one past the end of each string."""
        files = self._live()[0]
        return files.mapped["ends"][: files.n] if files.n else np.empty(0, np.int64)

    @property
    def buffer(self):
        """The mapped ``data.ninja`` (a buffer of bytes), as mmap_ninja 0.9.0 named it."""
        buffer = self._live()[2]
        return b"" if buffer is None else buffer

    def __repr__(self) -> str:
        if self.closed:
            return f"StringsMmap({str(self.out_dir)!r}, closed)"
        codec = self.codec
        compression = f", zstd level {codec.level}" if codec.compressed else ""
        return f"StringsMmap({str(self.out_dir)!r}, {len(self)} strings{compression})"

    # -- building -----------------------------------------------------------------------

    @classmethod
    def _build_strings(cls, out_dir: PathLike, batches: Iterable[List[Any]], zstd_level: Optional[int],
                       zstd_train_dictionary_size: Optional[int], mode: str, bar=None,
                       keys: Optional[Iterable[str]] = None) -> "StringsMmap":
        """Write ``batches`` of strings as a new map aside (``bar`` advances per string), swap
        it in and open it."""

        def create(build: Path, strings: List[Any]) -> StringsFiles:
            codec = Codec()
            if zstd_level is not None:
                dictionary = None
                if zstd_train_dictionary_size is not None:
                    dictionary = train_dictionary(encode_strings(strings, 0), zstd_train_dictionary_size)
                codec = Codec(zstd_level, dictionary)
            files, commit = StringsFiles(build, codec), Commit(durable=False)  # flushed whole by _build
            files.create(commit)
            files.append(strings, commit, bar)
            commit.finish()
            return files

        def extend(files: StringsFiles, strings: List[Any]) -> None:
            commit = Commit(durable=False)
            files.append(strings, commit, bar)
            commit.finish()

        return cls._build(out_dir, batches, create, extend, keys, mode=mode)

    @classmethod
    def from_strings(
        cls,
        out_dir: PathLike,
        strings: Iterable[str],
        verbose: bool = False,
        zstd_level: Optional[int] = None,
        zstd_train_dictionary_size: Optional[int] = None,
        *,
        mode: str = "r+b",
        keys: Optional[Iterable[str]] = None,
        **component_names: str,
    ) -> "StringsMmap":
        """Write ``strings`` as a new map at ``out_dir`` (replacing a map already there once
        the new one is whole) and open it. With ``zstd_level``, each string is compressed with
        zstd (the ``zstd`` extra), optionally with a dictionary of
        ``zstd_train_dictionary_size`` bytes trained on them. ``keys``: one unique ``str`` per
        string, to find strings by (``index_of``, ``by_key``)."""
        check_options(verbose, **component_names_of(component_names, ("starts_key", "ends_key")))
        with progress(known_length(strings), verbose, desc=f"Writing {as_dir(out_dir).name}") as bar:
            return cls._build_strings(out_dir, [list(strings)], zstd_level, zstd_train_dictionary_size, mode, bar,
                                      keys)

    @classmethod
    def from_generator(
        cls,
        out_dir: PathLike,
        sample_generator: Iterable[str],
        batch_size: int,
        verbose: bool = False,
        *,
        n: Optional[int] = None,
        zstd_level: Optional[int] = None,
        zstd_train_dictionary_size: Optional[int] = None,
        mode: str = "r+b",
        keys: Optional[Iterable[str]] = None,
    ) -> "StringsMmap":
        """Write the strings of an iterable as a new map at ``out_dir``, committing every
        ``batch_size`` strings to a folder beside it that replaces the map there once the
        iterable is exhausted, and open it (a zstd dictionary is trained on the first batch).
        ``verbose`` shows a progress bar, whose total is ``n`` (the expected number of strings)
        or the iterable's length when it has one. ``keys``: an iterable of one unique ``str``
        per string, consumed alongside."""
        check_options(verbose)
        out_dir = as_dir(out_dir)
        total = n if n is not None else known_length(sample_generator)
        with progress(total, verbose, desc=f"Writing {out_dir.name}") as bar:
            batches = in_batches(sample_generator, batch_size)
            return cls._build_strings(out_dir, batches, zstd_level, zstd_train_dictionary_size, mode, bar, keys)



def _open_map(out_dir: Path, wrapper_fn: Optional[Callable[[Any], Any]], mode: Optional[str]) -> Any:
    strings = StringsMmap(out_dir, **({} if mode is None else {"mode": mode}))
    return strings if wrapper_fn is None else Wrapped(strings, wrapper_fn)


def _build_map(out_dir: Path, samples: Iterable[Any], batch_size: int, keys: Optional[Iterable[str]]) -> Any:
    return StringsMmap.from_generator(out_dir, samples, batch_size, keys=keys)


def _extend_map(out_dir: Path, samples: Any) -> None:
    StringsMmap(out_dir, mode="r+b").extend(samples)


register("string", _open_map, _build_map, _extend_map)

StringsMmmap = StringsMmap
