"""Strings maps: a memory-mapped list of ``str``.

``data.ninja`` holds the UTF-8 bytes of all strings back to back (or one zstd frame per string,
when compressed); ``starts/`` and ``ends/`` are ``int64`` byte offsets of each string. A
compressed map has ``zstd_level.ninja`` and, with a trained dictionary, ``zstd_dict.ninja``.
Strings are decoded straight from the mapped bytes by the compiled core.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core, _meta
from ._keys import KeyIndex
from ._lifecycle import VERIFY_LIMIT, Found, MapObject, checksum_problems, overlap_problems
from ._storage import (
    CHECKSUMS,
    LOCK_FILE,
    ArrayDir,
    Commit,
    WriterLock,
    map_bytes,
    read_checksum_entries,
    recorded_crcs,
    verify_checksums,
)
from .base import (  # noqa: F401  (BytesSlices: a name of 0.9.0's strings module, kept)
    BytesSlices,
    PathLike,
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
# Larger strings would come from a corrupted zstd frame header.
_MAX_STRING_BYTES = 1 << 31


def _zstandard():
    try:
        import zstandard
    except ImportError:
        raise ImportError("compressed strings maps need zstandard: pip install 'mmap_ninja[zstd]'") from None
    return zstandard


def _check_items(strings: Sequence[Any], first_index: int) -> None:
    """``TypeError`` naming the first item that is not a ``str``."""
    for k, string in enumerate(strings):
        if not isinstance(string, str):
            raise TypeError(f"item {first_index + k} is a {type(string).__name__}, "
                            f"a StringsMmap stores only str")


def _encode(strings: Sequence[Any], first_index: int) -> List[bytes]:
    """UTF-8 bytes of each string; ``TypeError`` names an item that is not a ``str``."""
    _check_items(strings, first_index)
    return [string.encode("utf-8") for string in strings]


class _Codec:
    """How strings become stored bytes: plain UTF-8, or one zstd frame per string."""

    def __init__(self, level: Optional[int] = None, dictionary: Optional[bytes] = None):
        self.level = level
        self.dictionary = dictionary
        self._compressor = self._decompressor = None
        if level is not None:
            zstd = _zstandard()
            dict_data = zstd.ZstdCompressionDict(dictionary) if dictionary is not None else None
            self._compressor = zstd.ZstdCompressor(level=level, dict_data=dict_data)
            self._decompressor = zstd.ZstdDecompressor(dict_data=dict_data)

    @property
    def compressed(self) -> bool:
        return self.level is not None

    @classmethod
    def read(cls, out_dir: Path) -> "_Codec":
        level_file = out_dir / _meta.ZSTD_LEVEL
        if not level_file.exists():
            return cls()
        text = _meta.read_text(level_file)
        try:
            level = int(text)
        except ValueError:
            raise ValueError(f"{level_file}: expected an integer zstd level, found {text!r}") from None
        dict_file = out_dir / _meta.ZSTD_DICT
        return cls(level, _meta.read_bytes(dict_file) if dict_file.exists() else None)

    def metadata(self) -> bytes:
        """What the checksum of the codec's files covers: level and dictionary."""
        return f"{self.level}|".encode() + (self.dictionary or b"")

    def write(self, out_dir: Path, commit: Commit) -> None:
        """Add the codec's files to ``commit``."""
        if self.dictionary is not None:
            commit.replace(out_dir / _meta.ZSTD_DICT, self.dictionary)
        if self.level is not None:
            commit.replace(out_dir / _meta.ZSTD_LEVEL, str(self.level).encode())

    def pack(self, strings: Sequence[Any], first_index: int, bar=None) -> Tuple[bytes, np.ndarray]:
        """The stored bytes of ``strings`` back to back, and the length of each (``bar``
        advances per string)."""
        encoded = _encode(strings, first_index)
        if self._compressor is not None:
            encoded = [self._compressor.compress(raw) for raw in encoded]
        if bar is not None:
            bar.update(len(encoded))
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        return b"".join(encoded), lengths

    def decompress(self, raw: bytes) -> bytes:
        """The UTF-8 bytes in one stored zstd frame; ``ValueError`` for a frame that is
        corrupted or claims more than ``_MAX_STRING_BYTES``."""
        zstd = _zstandard()
        try:
            size = zstd.frame_content_size(raw)
            if size > _MAX_STRING_BYTES:
                raise ValueError(f"a compressed string claims {size} bytes")
            return self._decompressor.decompress(raw)
        except zstd.ZstdError as exc:
            raise ValueError(f"a compressed string does not decompress: {exc}") from None

    def unpack(self, raw: bytes) -> str:
        return self.decompress(raw).decode("utf-8")


class _StringsFiles:
    """The files of a strings map and the writer that appends to them (data first, then
    ``ends``, then ``starts``, whose length is the length of the map)."""

    def __init__(self, out_dir: Path, codec: _Codec):
        self.out_dir = out_dir
        self.codec = codec
        self.starts = ArrayDir(out_dir / "starts")
        self.ends = ArrayDir(out_dir / "ends")
        self.mapped: dict = {}  # offsets mapped by ``reader``
        self.keys: Optional[KeyIndex] = None  # the strings' keys, when they have some

    @property
    def data_file(self) -> Path:
        return self.out_dir / _meta.DATA

    @property
    def n(self) -> int:
        return self.starts.rows

    @classmethod
    def open(cls, out_dir: Path) -> "_StringsFiles":
        type_name = map_type(out_dir)
        if type_name not in (None, "string"):
            raise ValueError(f"{out_dir} holds a {type_name!r} map, expected a strings map")
        files = cls(out_dir, _Codec.read(out_dir))
        if type_name is not None and (out_dir / "starts" / _meta.TYPE).exists():  # written last
            files.starts = _offsets(out_dir / "starts")
            files.ends = _offsets(out_dir / "ends")
        return files

    def reader(self, mode: str = "r") -> Tuple[Optional[_core.StringsReader], Any]:
        """The compiled reader over the committed strings and the data it reads, mapped in
        ``mode`` (``(None, None)`` for an empty map)."""
        if self.n == 0:
            return None, None
        buffer = map_bytes(self.data_file, mode)
        self.mapped = {"starts": self.starts.map(), "ends": self.ends.map()}
        reader = _core.StringsReader(buffer, self.mapped["starts"], self.mapped["ends"], source=str(self.out_dir))
        return reader, buffer

    def create(self, commit: Commit) -> None:
        """Add an empty map to ``commit``: the codec's files, then ``type.ninja``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.codec.write(self.out_dir, commit)
        commit.replace(self.out_dir / _meta.TYPE, b"string")

    def append(self, strings: Sequence[Any], commit: Commit, bar=None) -> None:
        """Add ``strings`` to ``commit`` (for a map whose ``type.ninja`` is written, or in
        ``commit`` already)."""
        n = self.n
        payload, lengths = self.codec.pack(strings, n, bar)
        if not len(lengths):
            return
        offset = self.append_bytes(payload, commit)
        ends = offset + np.cumsum(lengths)
        ends_meta = self.ends.write_rows(ends, commit, n)
        starts_meta = self.starts.write_rows(ends - lengths, commit, n)
        self.ends.commit_rows(ends_meta, commit)
        self.starts.commit_rows(starts_meta, commit)


    def append_bytes(self, payload: bytes, commit: Commit) -> int:
        """Write ``payload`` past everything in the data file (for the strings of this commit)
        and record its checksum; returns the byte offset where it begins."""
        n = self.n
        offset = self.data_file.stat().st_size if n else 0
        commit.write(self.data_file, offset, payload, truncate=not n,
                     checksum=(self.out_dir, self.codec.metadata(), offset))
        if offset + len(payload) == 0:
            commit.write(self.data_file, 0, b"\0")  # 0.9.0 cannot map an empty data file
        return offset

    def append_map(self, part: "_StringsFiles", commit: Commit, count: Optional[int] = None,
                   batch_size: int = 65536) -> None:
        """Add to ``commit`` the first ``count`` strings (default: all) of the strings map
        ``part`` (as ``open`` reads it), after all of this map's, with no work per string in
        Python when both store strings alike (same compression, if any, and dictionary): the
        stored bytes are copied file to file (``Commit.copy``; the checksums that ``part``'s
        commits recorded are kept when the bytes copied are exactly theirs) and the offsets
        shifted. Strings stored otherwise are decoded and encoded again, ``batch_size`` at a
        time."""
        n = part.n if count is None else count
        if n > part.n:
            raise ValueError(f"{part.out_dir} holds {part.n} strings, not {n}")
        if n == 0:
            return
        if (part.codec.level, part.codec.dictionary) != (self.codec.level, self.codec.dictionary):
            reader, _ = part.reader("r")
            for begin in range(0, n, batch_size):
                raws = reader.get_many(np.arange(begin, min(n, begin + batch_size), dtype=np.int64), True)
                if part.codec.compressed:
                    raws = [part.codec.decompress(raw) for raw in raws]
                self.append([raw.decode("utf-8") for raw in raws], commit)
            return
        at = self.n
        starts = np.asarray(part.starts.map()[:n])
        lengths = np.asarray(part.ends.map()[:n]) - starts
        filled = lengths > 0
        first, sizes = starts[filled], lengths[filled]
        total = int(sizes.sum())
        size = part.data_file.stat().st_size
        if int(lengths.min()) < 0 or total and (int(first.min()) < 0 or int((first + sizes).max()) > size):
            raise ValueError(f"{part.out_dir}: the offsets of its strings fall outside its data")
        if total:
            last = first + sizes
            cuts = np.flatnonzero(first[1:] != last[:-1]) + 1
            run_starts = first[np.concatenate(([0], cuts))].tolist()
            run_ends = last[np.concatenate((cuts - 1, [len(first) - 1]))].tolist()
            ranges = [(a, b - a) for a, b in zip(run_starts, run_ends)]
            crcs = recorded_crcs(part.out_dir, size, ranges[0][0], ranges[0][0] + ranges[0][1]) \
                if len(ranges) == 1 else None
            offset = self.data_file.stat().st_size if at else 0
            commit.copy(self.data_file, offset, part.data_file, ranges, truncate=not at,
                        checksum=(self.out_dir, self.codec.metadata(), offset), crcs=crcs)
        else:
            offset = self.append_bytes(b"", commit)
        ends = offset + np.cumsum(lengths)
        ends_meta = self.ends.write_rows(ends, commit, at)
        starts_meta = self.starts.write_rows(ends - lengths, commit, at)
        self.ends.commit_rows(ends_meta, commit)
        self.starts.commit_rows(starts_meta, commit)

    def codec_checksum_problem(self) -> List[str]:
        """A problem when the compression files are not what the last commit recorded."""
        entries = read_checksum_entries(self.out_dir / CHECKSUMS)
        if entries and entries[-1][3] != zlib.crc32(self.codec.metadata()):
            return [f"{self.out_dir}: {_meta.ZSTD_LEVEL} or {_meta.ZSTD_DICT} is not what the last commit "
                    f"recorded in {CHECKSUMS}: edited or damaged"]
        return []


def _offsets(path: Path) -> ArrayDir:
    array = ArrayDir.open(path)
    if array.meta.dtype != np.int64 or len(array.meta.shape) != 1:
        raise ValueError(f"{path}: expected a 1-d int64 array of offsets, found "
                         f"{array.meta.dtype} of shape {array.meta.shape}")
    return array


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
    def _read_files(cls, out_dir: Path) -> _StringsFiles:
        return _StringsFiles.open(out_dir)

    def _open_reader(self, files: _StringsFiles, mode: Optional[str] = None):
        return files.reader(mode or self._mapping_mode)

    def _prepare(self, samples: List[Any], files: _StringsFiles, bar=None) -> List[str]:
        _check_items(samples, files.n)
        return samples

    def _append(self, lock: WriterLock, files: _StringsFiles, batch: List[str], bar=None) -> None:
        commit = Commit()
        if not (self.out_dir / _meta.TYPE).exists():
            files.create(commit)
        files.append(batch, commit, bar)
        commit.finish()

    def _replacement_bytes(self, files: _StringsFiles, reader: _core.StringsReader, i: int, value: Any) -> bytes:
        if files.codec.compressed:
            raise ValueError("in-place modification is not supported for compressed StringsMmap")
        (raw,) = _encode([value], i)
        start, end = reader.span(i)
        if len(raw) != end - start:
            raise ValueError(f"string {i} is {end - start} bytes long in UTF-8; a replacement "
                             f"of {len(raw)} bytes cannot be written in place")
        return raw

    def _append_bytes(self, files: _StringsFiles, raw: bytes, commit: Commit) -> int:
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

    def _unpack(self, codec: _Codec, i: int, raw: bytes) -> str:
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
    def codec(self) -> _Codec:
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

        def create(build: Path, strings: List[Any]) -> _StringsFiles:
            codec = _Codec()
            if zstd_level is not None:
                dictionary = None
                if zstd_train_dictionary_size is not None:
                    dictionary = _train_dictionary(_encode(strings, 0), zstd_train_dictionary_size)
                codec = _Codec(zstd_level, dictionary)
            files, commit = _StringsFiles(build, codec), Commit(durable=False)  # flushed whole by _build
            files.create(commit)
            files.append(strings, commit, bar)
            commit.finish()
            return files

        def extend(files: _StringsFiles, strings: List[Any]) -> None:
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


def verify_dir(out_dir: Path, limit: int = VERIFY_LIMIT, deep: bool = False) -> Found:
    """Problems and notes of the strings map at ``out_dir`` (none when it is sound), the
    strings' at most ``limit``, and the number of unsound strings not listed; ``deep`` also
    checks every byte against the checksums of its commits. Raises on damage that keeps the
    map from being read (``verify_map`` reports it)."""
    files = _StringsFiles.open(out_dir)
    reader, _ = files.reader("r")
    if reader is None:
        return [], [], 0
    problems, unsound = reader.verify(limit, not files.codec.compressed)
    omitted = unsound - len(problems)
    if not unsound:
        problems = overlap_problems(files.mapped["starts"][:files.n], files.mapped["ends"][:files.n], out_dir,
                                    "string")
    if files.codec.compressed:
        for i in range(len(reader)):
            try:
                raw = reader.get(i, True)
            except ValueError:  # offsets outside the data: counted by reader.verify
                continue
            try:
                files.codec.unpack(raw)
            except ValueError as exc:  # a corrupted frame, not UTF-8
                if len(problems) < limit:
                    problems.append(f"{out_dir}: string {i} cannot be read: {exc}")
                else:
                    omitted += 1
    found, notes = checksum_problems([files.starts, files.ends], deep)
    problems += found
    data_problems, data_notes = verify_checksums(out_dir, files.data_file, files.data_file.stat().st_size,
                                                 None, deep)
    codec_problem = files.codec_checksum_problem()
    return problems + data_problems + codec_problem, notes + data_notes, omitted


def _train_dictionary(samples: List[bytes], size: int) -> bytes:
    zstd = _zstandard()
    try:
        return zstd.train_dictionary(size, samples).as_bytes()
    except zstd.ZstdError as exc:
        raise ValueError(f"could not train a zstd dictionary of {size} bytes on {len(samples)} "
                         f"strings ({exc}); use more strings or no dictionary") from None


StringsMmmap = StringsMmap
