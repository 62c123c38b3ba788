"""Tests of mmap_ninja.string: building, reading, indexing, extending and changing strings maps."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmap_ninja import _meta
from mmap_ninja.string import StringsMmap, StringsMmmap

TEXTS = ["Torba", "", "Привет, мир", "日本語のテキスト", "emoji 😀 ok", "a" * 1000, "x"]


def test_from_strings_reads_back_every_string(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "s", TEXTS)
    assert len(m) == len(TEXTS)
    assert [m[i] for i in range(len(m))] == TEXTS
    assert m[:] == TEXTS and list(m) == TEXTS
    assert all(type(s) is str for s in m[:])


def test_alias_with_three_ms():
    assert StringsMmmap is StringsMmap


@pytest.mark.parametrize("item", [
    slice(None, None, 2), slice(None, None, -1), [6, 0, 0, -1], (2, 3), np.array([1, 4], np.uint32),
    np.array([True, False, True, False, True, False, True]), [], np.array([], np.int8),
])
def test_batch_indices_follow_numpy(tmp_path, item):
    m = StringsMmap.from_strings(tmp_path / "s", TEXTS)
    positions = np.arange(len(TEXTS))[np.asarray(item) if isinstance(item, (list, tuple)) and item else item]
    assert m[item] == [TEXTS[i] for i in np.atleast_1d(positions)]


def test_negative_and_numpy_integer_indices(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "s", TEXTS)
    assert m[-1] == "x" and m[np.int64(2)] == TEXTS[2] and m[np.uint8(0)] == "Torba"
    with pytest.raises(IndexError, match="index 7 is out of bounds for a map of length 7"):
        m[7]
    with pytest.raises(IndexError, match="index -8"):
        m[[0, -8]]
    with pytest.raises(TypeError):
        m["a"]


def test_repr(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "s", ["a", "b"], zstd_level=3)
    assert repr(m) == f"StringsMmap({str(tmp_path / 's')!r}, 2 strings, zstd level 3)"


@pytest.mark.parametrize("options", [{}, {"zstd_level": 3}, {"zstd_level": 1, "zstd_train_dictionary_size": 2048}])
def test_compressed_and_plain_maps_read_back_and_extend(tmp_path, options):
    texts = [f"{word} sample {i} " * (i % 5 + 1) for i in range(300) for word in ("Torba", "Бойлер")]
    m = StringsMmap.from_strings(tmp_path / "z", texts, **options)
    assert m[:] == texts
    m.extend(["новое", "", "more 😀"])
    m.append("last")
    assert StringsMmap(tmp_path / "z")[:] == texts + ["новое", "", "more 😀", "last"]
    if options:
        assert (tmp_path / "z" / _meta.ZSTD_LEVEL).read_text() == str(options["zstd_level"])
        assert (tmp_path / "z" / "data.ninja").stat().st_size < sum(len(t.encode()) for t in texts)


def test_dictionary_training_on_too_few_strings_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="could not train a zstd dictionary"):
        StringsMmap.from_strings(tmp_path / "d", ["a", "b"], zstd_level=3, zstd_train_dictionary_size=4096)


def test_from_generator_commits_batches_and_shows_progress(tmp_path, capsys):
    m = StringsMmap.from_generator(tmp_path / "g", (str(i) for i in range(25)), batch_size=4, verbose=True)
    assert m[:] == [str(i) for i in range(25)]
    assert "25" in capsys.readouterr().err


def test_from_generator_with_zstd_uses_it_for_every_batch(tmp_path):
    texts = [f"line {i}" for i in range(10)]
    m = StringsMmap.from_generator(tmp_path / "g", iter(texts), batch_size=3, zstd_level=5)
    assert m[:] == texts
    assert (tmp_path / "g" / "data.ninja").read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame


def test_map_on_missing_path_is_empty_and_writes_nothing(tmp_path):
    m = StringsMmap(tmp_path / "none")
    assert len(m) == 0 and m[:] == [] and m[[]] == []
    with pytest.raises(IndexError):
        m[0]
    assert not (tmp_path / "none").exists()
    m.extend(["a", "bb"])
    m.append("ccc")
    assert StringsMmap(tmp_path / "none")[:] == ["a", "bb", "ccc"]


def test_empty_list_gives_an_empty_map_that_can_grow(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "e", [])
    assert len(m) == 0 and (tmp_path / "e" / _meta.TYPE).read_text() == "string"
    m.extend(["x"])
    assert StringsMmap(tmp_path / "e")[:] == ["x"]


def test_only_empty_strings(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "e", ["", ""])
    assert m[:] == ["", ""]
    m.extend(["", "abc"])
    assert StringsMmap(tmp_path / "e")[:] == ["", "", "", "abc"]


def test_non_str_items_raise_and_leave_the_map_unchanged(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "t", ["a"])
    before = {p: p.read_bytes() for p in sorted((tmp_path / "t").rglob("*")) if p.is_file()}
    with pytest.raises(TypeError, match="item 2 is a bytes"):
        m.extend(["b", b"c"])
    with pytest.raises(TypeError, match="item 1 is a int"):
        m.append(5)
    after = {p: p.read_bytes() for p in sorted((tmp_path / "t").rglob("*")) if p.is_file()}
    assert before == after
    with pytest.raises(TypeError, match="item 0 is a NoneType"):
        StringsMmap.from_strings(tmp_path / "u", [None])


def test_setitem_same_byte_length(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "s", ["foo", "bar", "Привет"])
    m[0] = "baz"
    m[-1] = "Пакет!"[:5] + "ы"  # 6 two-byte letters
    m[[1]] = ["BAR"]
    assert StringsMmap(tmp_path / "s")[:] == ["baz", "BAR", "Пакеты"]


def test_setitem_other_length_raises_and_writes_nothing(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "s", ["foo", "bar"])
    with pytest.raises(ValueError, match="string 1 is 3 bytes long"):
        m[0:2] = ["abc", "ab"]
    with pytest.raises(ValueError, match="cannot assign 1 strings to 2"):
        m[:] = ["abc"]
    assert m[:] == ["foo", "bar"]


def test_setitem_on_compressed_map_is_refused(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "z", ["foo"], zstd_level=3)
    with pytest.raises(ValueError, match="compressed"):
        m[0] = "bar"


def test_read_only_mode_on_read_only_files(tmp_path):
    StringsMmap.from_strings(tmp_path / "ro", TEXTS)
    files = [os.path.join(root, name) for root, _, names in os.walk(tmp_path / "ro") for name in names]
    for path in files:
        os.chmod(path, stat.S_IRUSR)
    try:
        m = StringsMmap(tmp_path / "ro", mode="rb")
        assert m[:] == TEXTS
        with pytest.raises(io.UnsupportedOperation, match="read-only"):
            m[0] = TEXTS[0]
        assert StringsMmap(tmp_path / "ro", mode="rb")[:] == TEXTS
    finally:
        for path in files:
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def test_close_then_refresh(tmp_path):
    with StringsMmap.from_strings(tmp_path / "c", ["a", "b"]) as m:
        assert m[1] == "b"
    with pytest.raises(ValueError, match="closed"):
        m[0]
    m.refresh()
    assert m[0] == "a"


def test_reader_sees_appended_strings_after_refresh(tmp_path):
    writer = StringsMmap.from_strings(tmp_path / "r", ["a"])
    reader = StringsMmap(tmp_path / "r", mode="rb")
    writer.extend(["b"])
    assert len(reader) == 1
    reader.refresh()
    assert reader[:] == ["a", "b"]


def test_corrupted_offsets_raise(tmp_path):
    StringsMmap.from_strings(tmp_path / "c", ["abc", "de"])
    ends = np.array([3, 500], np.int64)
    (tmp_path / "c" / "ends" / "data.ninja").write_bytes(ends.tobytes())
    m = StringsMmap(tmp_path / "c")
    assert m[0] == "abc"
    with pytest.raises(ValueError, match="corrupted offsets for string 1"):
        m[1]
    with pytest.raises(ValueError, match="corrupted offsets for string 1"):
        m[:]


def test_invalid_utf8_raises_unicode_error(tmp_path):
    StringsMmap.from_strings(tmp_path / "u", ["ab"])
    (tmp_path / "u" / "data.ninja").write_bytes(b"\xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        StringsMmap(tmp_path / "u")[0]


def test_other_kind_of_map_is_refused(tmp_path):
    from mmap_ninja.ragged import RaggedMmap

    RaggedMmap.from_lists(tmp_path / "r", [[1]])
    with pytest.raises(ValueError, match="'ragged' map, expected a strings map"):
        StringsMmap(tmp_path / "r")


def test_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        StringsMmap(tmp_path / "m", mode="w")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.text(max_size=40), max_size=10), min_size=1, max_size=4),
       compressed=st.booleans(), data=st.data())
def test_write_extend_reopen_identical_and_batches_equal_per_string(tmp_path_factory, batches, compressed, data):
    out = tmp_path_factory.mktemp("prop") / "s"
    options = {"zstd_level": 3} if compressed else {}
    StringsMmap.from_strings(out, batches[0], **options)
    for batch in batches[1:]:
        StringsMmap(out).extend(batch)
    expected = [s for batch in batches for s in batch]
    m = StringsMmap(out, mode="rb")
    assert [m[i] for i in range(len(m))] == expected
    if expected:
        indices = data.draw(st.lists(st.integers(-len(expected), len(expected) - 1), max_size=20))
        assert m[indices] == [expected[i] for i in indices]


# -- batches -------------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=30), max_size=15), raw_indices=st.lists(st.integers(-100, 100), max_size=20),
       compressed=st.booleans())
def test_batches_bytes_and_getitems_equal_per_string_reads(tmp_path_factory, texts, raw_indices, compressed):
    out = tmp_path_factory.mktemp("batch") / "s"
    m = StringsMmap.from_strings(out, texts, **({"zstd_level": 1} if compressed else {}))
    indices = [i % len(texts) - (len(texts) if i < 0 else 0) for i in raw_indices] if texts else []
    assert m[indices] == [texts[i] for i in indices]
    assert m.__getitems__(indices) == [texts[i] for i in indices]
    assert m.get_bytes(indices) == [texts[i].encode() for i in indices]
    if texts:
        assert m.get_bytes(indices[0] if indices else 0) == texts[indices[0] if indices else 0].encode()
    assert m.get_bytes(slice(None, None, -1)) == [t.encode() for t in texts[::-1]]


def test_get_bytes_on_an_empty_map(tmp_path):
    m = StringsMmap(tmp_path / "none")
    assert m.get_bytes([]) == [] and m.__getitems__([]) == []
    with pytest.raises(IndexError):
        m.get_bytes(0)
    with pytest.raises(TypeError, match="a batch needs"):
        StringsMmap.from_strings(tmp_path / "s", ["a"]).__getitems__(0)


def test_read_only_open_needs_a_map(tmp_path):
    with pytest.raises(FileNotFoundError, match="no map at"):
        StringsMmap(tmp_path / "none", mode="rb")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a strings map: it has no type.ninja"):
        StringsMmap(tmp_path / "other", mode="rb")
    (tmp_path / "empty").mkdir()  # how mmap_ninja 0.9.0 leaves a map of no strings
    assert len(StringsMmap(tmp_path / "empty", mode="rb")) == 0


def test_corrupted_zstd_frames_raise_value_errors(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "z", ["hello " * 20, "world " * 20], zstd_level=3)
    raw = bytearray((tmp_path / "z" / "data.ninja").read_bytes())
    raw[4] |= 0xC0  # the frame header now claims an 8-byte content size, read from the payload
    (tmp_path / "z" / "data.ninja").write_bytes(bytes(raw))
    m.refresh()
    with pytest.raises(ValueError, match="compressed string"):
        m[0]
    assert m[1] == "world " * 20
    assert any("string 0 cannot be read" in problem for problem in m.verify())
