"""The compiled readers of sharded maps (mmap_ninja._sharded) over parts given as readers of
mmap_ninja._core: known answers, properties against the samples of the parts, and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmap_ninja import _core, _sharded


def packed_reader(samples, dtype=np.int32, source="part"):
    """A ``RaggedReader`` over 1-d ``samples`` stored back to back."""
    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    ends = np.cumsum(lengths)
    data = np.concatenate([np.asarray(s, dtype=dtype) for s in samples]) if samples else np.empty(0, dtype)
    return _core.RaggedReader(data, ends - lengths, ends, sizes=lengths, source=source)


def nested_reader(samples, dtype=np.int32, source="part"):
    """A ``RaggedReader`` over n-d ``samples`` with their shapes stored apart."""
    counts = np.array([np.size(s) for s in samples], dtype=np.int64)
    ends = np.cumsum(counts)
    ndims = np.array([np.ndim(s) for s in samples], dtype=np.int64)
    shape_ends = np.cumsum(ndims)
    shape_values = np.array([d for s in samples for d in np.shape(s)], dtype=np.int64)
    data = np.concatenate([np.asarray(s, dtype=dtype).reshape(-1) for s in samples])
    return _core.RaggedReader(data, ends - counts, ends, shape_values=shape_values,
                              shape_starts=shape_ends - ndims, shape_ends=shape_ends, source=source)


def sharded(parts, make=packed_reader, dtype=np.int32):
    """A ``ShardedRaggedReader`` over parts given as lists of samples, and the parts it opened."""
    bounds = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    opened = []

    def opener(k):
        opened.append(k)
        return make(parts[k], dtype, source=f"part {k}")

    return _sharded.ShardedRaggedReader(bounds, opener, dtype, "sharded"), opened


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.lists(st.integers(-50, 50), max_size=5), max_size=4), min_size=1, max_size=6),
       st.data())
def test_sharded_batches_equal_the_samples_of_the_parts_in_the_callers_order(parts, data):
    samples = [s for part in parts for s in part]
    reader, _ = sharded(parts)
    assert len(reader) == len(samples)
    if not samples:
        return
    indices = data.draw(st.lists(st.integers(0, len(samples) - 1), max_size=12))
    index = np.array(indices, dtype=np.int64)
    want = [np.array(samples[i], dtype=np.int32) for i in indices]
    assert all(np.array_equal(a, b) for a, b in zip(reader.samples(index), want))
    batch = reader.take(index)
    assert len(batch) == len(want) and all(np.array_equal(a, b) for a, b in zip(batch.arrays(), want))
    assert all(a.dtype == np.int32 for a in batch.arrays())
    out, lengths = reader.padded(index, np.int32(-7))
    longest = max((len(w) for w in want), default=0)
    assert out.shape == (len(want), longest) and lengths.tolist() == [len(w) for w in want]
    for row, w in zip(out, want):
        assert np.array_equal(row[:len(w)], w) and (row[len(w):] == -7).all()
    for i in (0, len(samples) - 1, -1):
        assert np.array_equal(reader.sample(i), np.array(samples[i], dtype=np.int32))


def test_sharded_parts_may_be_flat_or_nested_in_one_batch():
    parts = [[np.arange(3), np.arange(2)], [np.arange(6).reshape(2, 3), np.array(7)], [np.arange(4)]]
    make = lambda samples, dtype, source: (nested_reader if any(np.ndim(s) != 1 for s in samples)  # noqa: E731
                                           else packed_reader)(samples, dtype, source)
    reader, _ = sharded(parts, make)
    samples = [s for part in parts for s in part]
    index = np.array([2, 4, 3, 0, 2], dtype=np.int64)
    batch = reader.take(index)
    assert batch.shapes == [(2, 3), (4,), (), (3,), (2, 3)]
    assert all(np.array_equal(a, samples[i]) for a, i in zip(batch.arrays(), index))
    assert reader.sample(3) == 7


def test_a_sharded_reader_opens_a_part_on_its_first_read_only():
    reader, opened = sharded([[[1]], [[2], [2, 2]], [], [[3]], [[4]]])  # samples 0 | 1 2 | | 3 | 4
    assert opened == []
    reader.take(np.array([3, 1], dtype=np.int64))
    assert sorted(opened) == [1, 3]
    reader.sample(2)
    reader.samples(np.array([1, 3, 3], dtype=np.int64))
    assert sorted(opened) == [1, 3]
    assert reader.part(3) == (3, 0) and reader.part(-1) == (4, 0)  # the empty part holds nothing
    parts, local = reader.locate(np.array([0, 3, 2], dtype=np.int64))
    assert parts.tolist() == [0, 3, 1] and local.tolist() == [0, 0, 1]


def test_sharded_readers_name_the_index_the_part_and_the_problem():
    reader, _ = sharded([[[1, 2]], [[3]]])
    with pytest.raises(IndexError, match="index 2 is out of bounds for a map of length 2"):
        reader.take(np.array([0, 2], dtype=np.int64))
    with pytest.raises(IndexError, match="index -3"):
        reader.sample(-3)
    with pytest.raises(ValueError, match="non-decreasing"):
        _sharded.ShardedRaggedReader(np.array([0, 3, 2], dtype=np.int64), None, np.int32)
    wrong, _ = sharded([[[1, 2]], [[3]]], lambda s, d, source: packed_reader(s, np.int64, source))
    with pytest.raises(ValueError, match="part 0: holds samples of int64, the map's are of int32"):
        wrong.sample(0)
    short = _sharded.ShardedRaggedReader(np.array([0, 3], dtype=np.int64), lambda k: packed_reader([[1]]), np.int32)
    with pytest.raises(ValueError, match="holds 1 samples, the manifest says 3"):
        short.take(np.array([0], dtype=np.int64))
    other = _sharded.ShardedRaggedReader(np.array([0, 1], dtype=np.int64), lambda k: "not a reader", np.int32)
    with pytest.raises(TypeError, match="not a ragged map"):
        other.sample(0)


def test_a_corrupted_part_raises_naming_it_before_anything_is_copied():
    good = packed_reader([[1, 2], [3]], source="part 0")
    data = np.arange(4, dtype=np.int32)
    bad = _core.RaggedReader(data, np.array([0, 2], dtype=np.int64), np.array([2, 99], dtype=np.int64),
                             sizes=np.array([2, 97], dtype=np.int64), source="part 1")
    reader = _sharded.ShardedRaggedReader(np.array([0, 2, 4], dtype=np.int64), [good, bad].__getitem__, np.int32)
    for read in (reader.take, lambda index: reader.padded(index, np.int32(0)), reader.samples):
        with pytest.raises(ValueError, match=r"part 1: corrupted offsets for sample 1: \[2, 99\)"):
            read(np.array([0, 3], dtype=np.int64))
    assert reader.take(np.array([2, 1], dtype=np.int64)).values.tolist() == [0, 1, 3]


def test_sharded_padded_batches_need_one_row_shape():
    reader, _ = sharded([[np.zeros((2, 3))], [np.zeros((1, 4))]], nested_reader)
    with pytest.raises(ValueError, match=r"sample 1 has shape \(1, 4\), sample 0 has shape \(2, 3\)"):
        reader.padded(np.array([0, 1], dtype=np.int64), np.int32(0))
    out, lengths = reader.padded(np.array([0, 0], dtype=np.int64), np.int32(0), 3)
    assert out.shape == (2, 3, 3) and lengths.tolist() == [2, 2]


def strings_reader(texts, source="part"):
    raw = [t.encode() for t in texts]
    ends = np.cumsum([len(r) for r in raw]).astype(np.int64)
    return _core.StringsReader(np.frombuffer(b"".join(raw) or b"\0", dtype=np.uint8)[:int(ends[-1]) if raw else 0],
                               ends - [len(r) for r in raw], ends, source=source)


def test_sharded_strings_come_from_their_parts_in_the_callers_order():
    parts = [["a", "bb"], [], ["ccc", "ж"], ["e"]]
    bounds = np.array([0, 2, 2, 4, 5], dtype=np.int64)
    reader = _sharded.ShardedStringsReader(bounds, lambda k: strings_reader(parts[k], f"part {k}"), "s")
    flat = [t for part in parts for t in part]
    index = np.array([4, 0, 3, 2, 1, 3], dtype=np.int64)
    assert reader.get_many(index) == [flat[i] for i in index]
    assert reader.get_many(index, True) == [flat[i].encode() for i in index]
    assert [reader.get(i) for i in range(-5, 5)] == flat + flat
    with pytest.raises(IndexError, match="index 5 is out of bounds"):
        reader.get_many(np.array([5], dtype=np.int64))
    bad = _core.StringsReader(np.frombuffer(b"abc", dtype=np.uint8), np.array([0, 1], dtype=np.int64),
                              np.array([1, 99], dtype=np.int64), source="part 1")
    damaged = _sharded.ShardedStringsReader(np.array([0, 1, 3], dtype=np.int64),
                                         [strings_reader(["x"]), bad].__getitem__, "s")
    with pytest.raises(ValueError, match=r"part 1: corrupted offsets for string 1: \[1, 99\)"):
        damaged.get_many(np.array([0, 2], dtype=np.int64))
    assert damaged.get_many(np.array([1, 0], dtype=np.int64)) == ["a", "x"]


def test_sharded_rows_come_from_c_and_fortran_ordered_parts():
    parts = [np.arange(12, dtype=np.float32).reshape(4, 3), np.asfortranarray(np.arange(12, 18, dtype=np.float32)
                                                                              .reshape(2, 3))]
    reader = _sharded.ShardedRowsReader(np.array([0, 4, 6], dtype=np.int64), parts.__getitem__, "n")
    whole = np.concatenate(parts)
    index = np.array([5, 0, 4, 3, 5], dtype=np.int64)
    out = reader.take(index)
    assert out.dtype == np.float32 and np.array_equal(out, whole[index])
    assert np.array_equal(reader.row(-1), whole[-1]) and reader.row_shape == (3,)
    assert reader.take(np.empty(0, dtype=np.int64)).shape == (0, 3)
    other = _sharded.ShardedRowsReader(np.array([0, 1, 2], dtype=np.int64),
                                    [np.zeros((1, 3)), np.zeros((1, 4))].__getitem__, "n")
    with pytest.raises(ValueError, match=r"part 1 holds rows \(4,\) of float64, the map's are \(3,\) of float64"):
        other.take(np.array([0, 1], dtype=np.int64))
