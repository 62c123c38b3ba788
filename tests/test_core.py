"""Tests of the compiled core, mmap_ninja._core: index normalisation and the readers' checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmap_ninja import _core


def i64(*values):
    return np.array(values, dtype=np.int64)


# -- normalize_index --------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 50), data=st.data())
def test_slices_match_numpy(n, data):
    bounds = st.one_of(st.none(), st.integers(-60, 60))
    item = slice(data.draw(bounds), data.draw(bounds), data.draw(st.one_of(st.none(), st.integers(-7, 7).filter(bool))))
    out = _core.normalize_index(item, n)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.arange(n)[item])


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 50), data=st.data(),
       dtype=st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint64]))
def test_integer_arrays_match_numpy(n, data, dtype):
    info = np.iinfo(dtype)
    lo, hi = max(-n, int(info.min)), min(n - 1, int(info.max))
    values = data.draw(st.lists(st.integers(lo, hi), max_size=30))
    item = np.array(values, dtype=dtype)
    source = item.copy()
    out = _core.normalize_index(item, n)
    np.testing.assert_array_equal(out, np.arange(n)[item.astype(np.int64)])
    np.testing.assert_array_equal(item, source)  # the caller's array is left as it was
    assert _core.normalize_index(values, n).tolist() == out.tolist()


@settings(max_examples=200, deadline=None)
@given(mask=st.lists(st.booleans(), max_size=40))
def test_masks_match_numpy(mask):
    n = len(mask)
    np.testing.assert_array_equal(_core.normalize_index(np.array(mask, bool), n), np.arange(n)[np.array(mask, bool)])


@pytest.mark.parametrize("item, n, expected", [
    (0, 1, 0), (-1, 5, 4), (np.int32(-5), 5, 0), (np.uint64(3), 4, 3), (4, 5, 4),
])
def test_scalars(item, n, expected):
    out = _core.normalize_index(item, n)
    assert type(out) is int and out == expected


@pytest.mark.parametrize("item, n, message", [
    (5, 5, "index 5 is out of bounds for a map of length 5"),
    (-6, 5, "index -6 is out of bounds"),
    (2**80, 5, "out of bounds"),
    (np.uint64(2**64 - 1), 5, "out of bounds"),
    ([0, 1, 7], 5, "index 7 is out of bounds"),
    (np.array([2**63 - 1], np.uint64), 5, "out of bounds"),
    (np.array([[0, 1]]), 5, "1-d"),
    (np.ones(4, bool), 5, "mask of length 4"),
    (0, 0, "length 0"),
])
def test_index_errors(item, n, message):
    with pytest.raises(IndexError, match=message):
        _core.normalize_index(item, n)


@pytest.mark.parametrize("item", [1.0, np.float64(1), "1", b"1", None, True, np.bool_(False), [1.5], np.array([1.0]),
                                  object(), {0: 1}, iter([0])])
def test_type_errors(item):
    with pytest.raises(TypeError):
        _core.normalize_index(item, 5)


def test_empty_sequences_give_empty_positions():
    for item in ([], np.array([], np.float64), range(0)):
        out = _core.normalize_index(item, 3)
        assert out.dtype == np.int64 and out.shape == (0,)
    assert _core.normalize_index((), 3).tolist() == [0, 1, 2]  # as numpy: every position


def test_array_likes_index_as_numpy_does():
    import array

    import torch

    assert _core.normalize_index(np.array(2), 5) == 2
    assert _core.normalize_index(torch.tensor(-1), 5) == 4
    assert _core.normalize_index(torch.tensor([4, 0]), 5).tolist() == [4, 0]
    assert _core.normalize_index(array.array("q", [1, 3]), 5).tolist() == [1, 3]
    assert _core.normalize_index(memoryview(np.array([2, 2], np.int32)), 5).tolist() == [2, 2]

    class Position:
        def __index__(self):
            return 3

    assert _core.normalize_index(Position(), 5) == 3
    assert _core.normalize_index(slice(None, None, 2**65), 5).tolist() == [0]
    assert _core.normalize_index(slice(None, None, -(2**65)), 5).tolist() == [4]


# -- RaggedReader -----------------------------------------------------------------------------

def flat_reader(data, starts, ends, sizes):
    return _core.RaggedReader(np.asarray(data), i64(*starts), i64(*ends), sizes=i64(*sizes), source="m")


def test_views_share_the_data_and_keep_it_alive():
    data = np.arange(10, dtype=np.float32)
    reader = flat_reader(data, [0, 4], [4, 10], [4, 6])
    view = reader.sample(1)
    assert view.base is data and view.dtype == np.float32 and view.tolist() == list(range(4, 10))
    del data, reader
    assert view.tolist() == list(range(4, 10))


def test_read_only_data_gives_read_only_views():
    data = np.arange(4)
    data.flags.writeable = False
    view = flat_reader(data, [0], [4], [4]).sample(0)
    assert not view.flags.writeable


def test_stored_sizes_must_agree_with_the_offsets():
    reader = flat_reader(np.arange(10), [0, 3], [3, 10], [3, 6])  # as if a start had changed
    assert reader.sample(0).tolist() == [0, 1, 2]
    for read in (lambda: reader.sample(1), lambda: reader.take(i64(1)), lambda: reader.padded(i64(1), np.array(0))):
        with pytest.raises(ValueError, match=r"sample 1 has shape \(6,\) but 7 stored elements"):
            read()


def test_scalar_and_empty_samples():
    reader = flat_reader(np.array([7, 8]), [0, 1, 1], [1, 1, 2], [0, 0, 1])
    assert reader.sample(0) == 7 and type(reader.sample(0)) is int
    assert reader.sample(1).shape == (0,)
    assert reader.sample(-1).tolist() == [8]


def test_nested_shapes():
    data = np.arange(13, dtype=np.uint8)
    reader = _core.RaggedReader(data, i64(0, 6, 6, 12), i64(6, 6, 12, 13), shape_values=i64(2, 3, 0, 3, 1, 2),
                                shape_starts=i64(0, 2, 3, 6), shape_ends=i64(2, 3, 6, 6))
    assert reader.sample(0).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert reader.sample(1).shape == (0,)
    assert reader.sample(2).shape == (3, 1, 2)
    assert reader.sample(3) == 12
    assert [s if np.isscalar(s) else s.shape for s in reader.samples(i64(3, 0))] == [12, (2, 3)]


@pytest.mark.parametrize("starts, ends, sizes, message", [
    ([0], [11], [11], r"\[0, 11\) is not within the 10 stored elements"),
    ([-1], [2], [3], "corrupted offsets for sample 0"),
    ([5], [4], [1], "corrupted offsets"),
    ([2**62], [2**62 + 1], [1], "corrupted offsets"),
    ([0], [4], [5], r"shape \(5,\) but 4 stored elements"),
    ([0], [1], [2], "shape"),
])
def test_corrupted_flat_offsets_raise(starts, ends, sizes, message):
    reader = flat_reader(np.arange(10), starts, ends, sizes)
    with pytest.raises(ValueError, match=message):
        reader.sample(0)
    with pytest.raises(ValueError, match=message):
        reader.samples(i64(0))


@pytest.mark.parametrize("values, lo, hi, message", [
    ([2, -3], 0, 2, "shape"),
    ([2**40, 2**40], 0, 2, "shape"),
    ([4], 0, 5, "corrupted shape offsets"),
    ([4], -1, 1, "corrupted shape offsets"),
    ([1] * 40, 0, 40, "corrupted shape offsets"),
])
def test_corrupted_nested_shapes_raise(values, lo, hi, message):
    reader = _core.RaggedReader(np.arange(6), i64(0), i64(6), shape_values=i64(*values),
                                shape_starts=i64(lo), shape_ends=i64(hi))
    with pytest.raises(ValueError, match=message):
        reader.sample(0)


def test_short_component_arrays_are_refused_up_front():
    with pytest.raises(ValueError, match="ends holds 1 offsets"):
        _core.RaggedReader(np.arange(4), i64(0, 2), i64(2), sizes=i64(2, 2))
    with pytest.raises(ValueError, match="shapes holds 1 entries"):
        _core.RaggedReader(np.arange(4), i64(0, 2), i64(2, 4), sizes=i64(2))
    with pytest.raises(ValueError):
        _core.RaggedReader(np.arange(4).reshape(2, 2), i64(0), i64(1), sizes=i64(1))


# -- StringsReader ---------------------------------------------------------------------------

def test_strings_decode_and_bytes():
    raw = "añ😀".encode()
    reader = _core.StringsReader(raw, i64(0, 1, 3, 7), i64(1, 3, 7, 7))
    assert [reader.get(i) for i in range(4)] == ["a", "ñ", "😀", ""]
    assert reader.get(2, as_bytes=True) == "😀".encode()
    assert reader.get_many(i64(3, 0)) == ["", "a"]
    assert reader.get_many(i64(1), as_bytes=True) == ["ñ".encode()]
    assert reader.span(-2) == (3, 7)


@pytest.mark.parametrize("start, end", [(0, 5), (-1, 1), (3, 2), (2**62, 2**62 + 2)])
def test_corrupted_string_offsets_raise(start, end):
    reader = _core.StringsReader(b"abcd", i64(start), i64(end), source="s")
    with pytest.raises(ValueError, match="s: corrupted offsets for string 0"):
        reader.get(0)


def test_strings_reader_over_empty_data():
    reader = _core.StringsReader(b"", i64(0, 0), i64(0, 0))
    assert reader.get_many(i64(0, 1)) == ["", ""]
    with pytest.raises(ValueError):
        _core.StringsReader(b"", i64(0), i64(1)).get(0)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 30), start=st.one_of(st.none(), st.integers(-40, 40)),
       stop=st.one_of(st.none(), st.integers(-40, 40)), step=st.one_of(st.none(), st.integers(-5, 5).filter(bool)))
def test_slices_of_readers_match_python_slices(n, start, stop, step):
    item = slice(start, stop, step)
    data = np.arange(n, dtype=np.int16)
    ragged = _core.RaggedReader(data, np.arange(n, dtype=np.int64), np.arange(1, n + 1, dtype=np.int64),
                                sizes=np.ones(n, np.int64))
    assert [s.tolist() for s in ragged.samples_in(item)] == [[i] for i in range(n)][item]
    text = "".join(chr(ord("a") + i % 26) for i in range(n))
    strings = _core.StringsReader(text.encode(), np.arange(n, dtype=np.int64), np.arange(1, n + 1, dtype=np.int64))
    assert strings.get_in(item) == list(text)[item]
    assert strings.get_in(item, as_bytes=True) == [c.encode() for c in list(text)[item]]


# -- batch gathers ------------------------------------------------------------------------------

@pytest.mark.parametrize("starts, ends, sizes, bad", [
    ([0, 4], [4, 99], [4, 95], 1),
    ([0, -4], [4, 6], [4, 10], 1),
    ([0, 4], [4, 10], [4, 7], 1),
])
def test_take_and_padded_check_every_offset_before_copying(starts, ends, sizes, bad):
    reader = flat_reader(np.arange(10), starts, ends, sizes)
    with pytest.raises(ValueError, match=f"sample {bad}"):
        reader.take(i64(0, bad))
    with pytest.raises(ValueError, match=f"sample {bad}"):
        reader.padded(i64(0, bad), np.array(0))


def test_gathers_refuse_positions_outside_the_map():
    reader = flat_reader(np.arange(10), [0], [10], [10])
    with pytest.raises(IndexError, match="index 3 is out of bounds"):
        reader.take(i64(0, 3))
    with pytest.raises(IndexError, match="index -1 is out of bounds"):
        reader.padded(i64(-1), np.array(0))
    with pytest.raises(IndexError, match="index 2 is out of bounds for 2 rows"):
        _core.gather_rows(np.zeros((2, 3)), i64(0, 2), np.empty((2, 3)))


def test_nested_take_copies_shapes():
    data = np.arange(13, dtype=np.uint8)
    reader = _core.RaggedReader(data, i64(0, 6, 6, 12), i64(6, 6, 12, 13), shape_values=i64(2, 3, 0, 3, 1, 2),
                                shape_starts=i64(0, 2, 3, 6), shape_ends=i64(2, 3, 6, 6))
    batch = reader.take(i64(2, 3, 0, 1))
    assert batch.shapes == [(3, 1, 2), (), (2, 3), (0,)]
    assert batch.shape_offsets.tolist() == [0, 3, 3, 5, 6]
    assert batch[0].tolist() == [[[6, 7]], [[8, 9]], [[10, 11]]] and batch[1] == 12


@pytest.mark.parametrize("values, offsets, shape_values, shape_offsets, message", [
    (np.arange(3), [0, 4], [4], [0, 1], "sample 0 of a RaggedBatch"),
    (np.arange(3), [0, 2, 1], [2, 1], [0, 1, 2], "sample 1 of a RaggedBatch"),
    (np.arange(3), [0, 3], [2], [0, 1], "sample 0 of a RaggedBatch"),
    (np.arange(3), [0, 3], [3], [0, 2], "sample 0 of a RaggedBatch"),
    (np.arange(3), [0, 3], [3], [0], "both hold"),
    (np.zeros((2, 2)), [0], [], [0], "1-d"),
    (np.array([{}, 1], dtype=object), [0, 2], [2], [0, 1], "Python objects"),
])
def test_ragged_batch_checks_what_it_is_given(values, offsets, shape_values, shape_offsets, message):
    with pytest.raises(ValueError, match=message):
        _core.RaggedBatch(values, offsets, shape_values, shape_offsets)


def test_ragged_batch_keeps_its_offsets_to_itself():
    offsets = np.array([0, 2, 5])
    batch = _core.RaggedBatch(np.arange(5.0), offsets, [2, 3], [0, 1, 2])
    offsets[1] = 1 << 40  # the caller's array is not the batch's
    assert batch[1].tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="read-only"):
        batch.offsets[1] = 1 << 40
    assert len(_core.RaggedBatch.__new__(_core.RaggedBatch)) == 0
    import pickle

    copy = pickle.loads(pickle.dumps(batch))
    assert [b.tolist() for b in copy] == [[0.0, 1.0], [2.0, 3.0, 4.0]]


def test_ragged_batch_built_by_hand():
    batch = _core.RaggedBatch(np.arange(5.0), [0, 2, 5], [2, 3], [0, 1, 2])
    assert [b.tolist() for b in batch] == [[0.0, 1.0], [2.0, 3.0, 4.0]]
    assert batch.lengths.tolist() == [2, 3]
    with pytest.raises(IndexError):
        batch[2]


def test_pad_fill_of_every_width():
    for dtype in (np.uint8, np.int16, np.float32, np.complex128, "<U3"):
        data = np.array(["a", "b", "c"] if dtype == "<U3" else [1, 2, 3], dtype=dtype)
        reader = flat_reader(data, [0, 1], [1, 3], [1, 2])
        pad = np.array("zz" if dtype == "<U3" else 7, dtype=dtype)
        padded, lengths = reader.padded(i64(0, 1, 0), pad, 5)
        assert padded.dtype == data.dtype and lengths.tolist() == [1, 2, 1]
        expected = np.full((3, 5), pad, dtype=dtype)
        expected[0, 0], expected[1, :2], expected[2, 0] = data[0], data[1:], data[0]
        np.testing.assert_array_equal(padded, expected)


def test_packed_layout_known_answers_and_refusals():
    cu, positions, longest = _core.packed_layout(np.array([0, 3, 3, 7], np.int64))
    assert cu.dtype == np.int32 and cu.tolist() == [0, 3, 3, 7]
    assert positions.dtype == np.int64 and positions.tolist() == [0, 1, 2, 0, 1, 2, 3] and longest == 4
    cu, positions, longest = _core.packed_layout(np.array([0, 4, 10], np.int64), 2)
    assert cu.tolist() == [0, 2, 5] and positions.tolist() == [0, 1, 0, 1, 2] and longest == 3
    cu, positions, longest = _core.packed_layout(np.zeros(1, np.int64))
    assert cu.tolist() == [0] and positions.size == 0 and longest == 0
    with pytest.raises(ValueError, match="must start at 0"):
        _core.packed_layout(np.array([1, 3], np.int64))
    with pytest.raises(ValueError, match="sample 1 does not hold whole rows of 1 elements"):
        _core.packed_layout(np.array([0, 3, 2], np.int64))
    with pytest.raises(ValueError, match="sample 0 does not hold whole rows of 2 elements"):
        _core.packed_layout(np.array([0, 3], np.int64), 2)
    with pytest.raises(ValueError, match="at least one entry"):
        _core.packed_layout(np.zeros(0, np.int64))
    with pytest.raises(OverflowError, match="int32 cu_seqlens"):
        _core.packed_layout(np.array([0, 2**31], np.int64), 1, lambda shape, dtype: np.empty(0, dtype))
