"""Strings maps on disk: their files, how strings become stored bytes (the codec: UTF-8, or one
zstd frame per string), how a batch is appended in one commit, read and verified.

``data.ninja`` holds the stored bytes of all strings back to back; ``starts/`` and ``ends/``
are ``int64`` byte offsets of each string. A compressed map has ``zstd_level.ninja`` and, with a
trained dictionary, ``zstd_dict.ninja``.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .. import _core, _meta
from .._keys import KeyIndex
from .._storage import CHECKSUMS, ArrayDir, Commit, map_bytes, read_checksum_entries, recorded_crcs, verify_checksums
from ..base import map_type
from .verify import VERIFY_LIMIT, Found, checksum_problems, overlap_problems

# Larger strings would come from a corrupted zstd frame header.
MAX_STRING_BYTES = 1 << 31


def zstandard_module():
    try:
        import zstandard
    except ImportError:
        raise ImportError("compressed strings maps need zstandard: pip install 'mmap_ninja[zstd]'") from None
    return zstandard


def check_strings(strings: Sequence[Any], first_index: int) -> None:
    """``TypeError`` naming the first item that is not a ``str``."""
    for k, string in enumerate(strings):
        if not isinstance(string, str):
            raise TypeError(f"item {first_index + k} is a {type(string).__name__}, "
                            f"a StringsMmap stores only str")


def encode_strings(strings: Sequence[Any], first_index: int) -> List[bytes]:
    """UTF-8 bytes of each string; ``TypeError`` names an item that is not a ``str``."""
    check_strings(strings, first_index)
    return [string.encode("utf-8") for string in strings]


class Codec:
    """How strings become stored bytes: plain UTF-8, or one zstd frame per string."""

    def __init__(self, level: Optional[int] = None, dictionary: Optional[bytes] = None):
        self.level = level
        self.dictionary = dictionary
        self._compressor = self._decompressor = None
        if level is not None:
            zstd = zstandard_module()
            dict_data = zstd.ZstdCompressionDict(dictionary) if dictionary is not None else None
            self._compressor = zstd.ZstdCompressor(level=level, dict_data=dict_data)
            self._decompressor = zstd.ZstdDecompressor(dict_data=dict_data)

    @property
    def compressed(self) -> bool:
        return self.level is not None

    @classmethod
    def read(cls, out_dir: Path) -> "Codec":
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
        encoded = encode_strings(strings, first_index)
        if self._compressor is not None:
            encoded = [self._compressor.compress(raw) for raw in encoded]
        if bar is not None:
            bar.update(len(encoded))
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        return b"".join(encoded), lengths

    def decompress(self, raw: bytes) -> bytes:
        """The UTF-8 bytes in one stored zstd frame; ``ValueError`` for a frame that is
        corrupted or claims more than ``MAX_STRING_BYTES``."""
        zstd = zstandard_module()
        try:
            size = zstd.frame_content_size(raw)
            if size > MAX_STRING_BYTES:
                raise ValueError(f"a compressed string claims {size} bytes")
            return self._decompressor.decompress(raw)
        except zstd.ZstdError as exc:
            raise ValueError(f"a compressed string does not decompress: {exc}") from None

    def unpack(self, raw: bytes) -> str:
        return self.decompress(raw).decode("utf-8")


class CompressedStrings(Exception):
    """The strings of a map are compressed, which the compiled readers do not decode (raised
    with the map's folder)."""


class StringsFiles:
    """The files of a strings map and the writer that appends to them (data first, then
    ``ends``, then ``starts``, whose length is the length of the map)."""

    def __init__(self, out_dir: Path, codec: Codec):
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
    def open(cls, out_dir: Path) -> "StringsFiles":
        type_name = map_type(out_dir)
        if type_name not in (None, "string"):
            raise ValueError(f"{out_dir} holds a {type_name!r} map, expected a strings map")
        files = cls(out_dir, Codec.read(out_dir))
        if type_name is not None and (out_dir / "starts" / _meta.TYPE).exists():  # written last
            files.starts = offsets_array(out_dir / "starts")
            files.ends = offsets_array(out_dir / "ends")
        return files

    def reader(self, mode: str = "r") -> Tuple[Optional[_core.StringsReader], Any]:
        """The compiled reader over the committed strings and the data it reads, mapped in
        ``mode`` (``(None, None)`` for an empty map)."""
        if self.n == 0:
            return None, None
        buffer = map_bytes(self.data_file, mode)
        # the reader's own mapping, read string by string (see RaggedFiles.reader)
        read = buffer if mode == "c" else map_bytes(self.data_file, mode, random_access=True)
        self.mapped = {"starts": self.starts.map(), "ends": self.ends.map()}
        reader = _core.StringsReader(read, self.mapped["starts"], self.mapped["ends"], source=str(self.out_dir))
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

    def append_map(self, part: "StringsFiles", commit: Commit, count: Optional[int] = None,
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


def offsets_array(path: Path) -> ArrayDir:
    array = ArrayDir.open(path)
    if array.meta.dtype != np.int64 or len(array.meta.shape) != 1:
        raise ValueError(f"{path}: expected a 1-d int64 array of offsets, found "
                         f"{array.meta.dtype} of shape {array.meta.shape}")
    return array


def truncate_dir(out_dir: Path, n: int, commit: Commit) -> None:
    """Add to ``commit`` what makes the strings map at ``out_dir`` hold its first ``n`` strings
    (at most as many as it holds): ``starts/shape.ninja``, whose length is the map's, then
    ``ends/shape.ninja``. No byte of data is written (the next strings go past the end of the
    data file, as always)."""
    files = StringsFiles.open(out_dir)
    if files.n <= n:
        return
    for offsets in (files.starts, files.ends):
        offsets.commit_rows(offsets.meta.with_rows(n), commit)


def verify_dir(out_dir: Path, limit: int = VERIFY_LIMIT, deep: bool = False) -> Found:
    """Problems and notes of the strings map at ``out_dir`` (none when it is sound), the
    strings' at most ``limit``, and the number of unsound strings not listed; ``deep`` also
    checks every byte against the checksums of its commits. Raises on damage that keeps the
    map from being read (``verify_map`` reports it)."""
    files = StringsFiles.open(out_dir)
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


def train_dictionary(samples: List[bytes], size: int) -> bytes:
    zstd = zstandard_module()
    try:
        return zstd.train_dictionary(size, samples).as_bytes()
    except zstd.ZstdError as exc:
        raise ValueError(f"could not train a zstd dictionary of {size} bytes on {len(samples)} "
                         f"strings ({exc}); use more strings or no dictionary") from None


class Concatenation:
    """The strings map being written at ``build`` by ``concatenate``, with the codec of the
    first map added (strings stored otherwise are encoded again); ``finish`` commits an empty
    uncompressed map if no string was added. ``dtype`` is not used (strings have none)."""

    def __init__(self, build: Path, out_dir: Path, dtype: Any = None):
        self.build = build
        self.files: Optional[StringsFiles] = None

    def add(self, part: StringsFiles, commit: Commit, count: int, batch_size: int) -> None:
        if self.files is None:
            self.files = StringsFiles(self.build, part.codec)
            self.files.create(commit)
        self.files.append_map(part, commit, count, batch_size)

    def finish(self, commit: Commit) -> None:
        if self.files is None:
            StringsFiles(self.build, Codec()).create(commit)
