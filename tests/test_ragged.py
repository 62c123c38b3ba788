"""Tests of mmap_ninja.ragged: building, reading, indexing, extending and changing ragged maps."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from conftest import assert_sample_equal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmap_ninja import _meta
from mmap_ninja.ragged import RaggedBatch, RaggedMmap, RaggedMmmap
from mmap_ninja.sharded import ShardedMmap

MIXED = [np.array([11, 13, -1, 17]), np.arange(6).reshape(2, 3), np.array(5), np.array([], dtype=np.int64),
         np.arange(24).reshape(2, 3, 4)]


def read_all(m):
    return [m[i] for i in range(len(m))]


def assert_samples_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert_sample_equal(a, e)


# -- building and reading -------------------------------------------------------------------

def test_from_lists_flat_reads_back_views(tmp_path):
    samples = [np.array([11, 13, -1, 17]), np.array([2, 3, 4, 19]), np.array([90, 12])]
    m = RaggedMmap.from_lists(tmp_path / "simple", samples)
    assert len(m) == 3
    assert m.shapes_are_flat
    assert_samples_equal(read_all(m), samples)
    assert isinstance(m[0], np.ndarray) and not m[0].flags.owndata
    assert m.dtype == np.int64


def test_from_lists_mixed_ranks_scalars_and_empty(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "mixed", MIXED)
    assert not m.shapes_are_flat
    assert_samples_equal(read_all(m), MIXED)
    assert isinstance(m[2], int) and m[2] == 5


def test_scalars_in_flat_map_read_back_as_python_scalars(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "s", [0, 1, 2])
    assert m.shapes_are_flat and m.dtype == np.int64
    assert read_all(m) == [0, 1, 2]
    assert all(type(x) is int for x in read_all(m))


def test_dtype_argument_converts_and_refuses_losses(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "a", [[1, 2], [3]], dtype=np.uint8)
    assert m.dtype == np.uint8 and m[0].dtype == np.uint8
    with pytest.raises(TypeError, match="sample 1"):
        RaggedMmap.from_lists(tmp_path / "b", [[1, 2], [300]], dtype=np.uint8)
    with pytest.raises(TypeError, match="sample 0"):
        RaggedMmap.from_lists(tmp_path / "c", [[1.5]], dtype=np.int32)
    with pytest.raises(TypeError, match="object"):
        RaggedMmap.from_lists(tmp_path / "d", [np.array([{}, 1], dtype=object)])


def test_samples_take_first_samples_dtype(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "f", [np.array([1.5], np.float32), np.array([2.25])])
    assert m.dtype == np.float32
    assert_samples_equal(read_all(m), [np.array([1.5], np.float32), np.array([2.25], np.float32)])


def test_alias_with_three_ms(tmp_path):
    assert RaggedMmmap is RaggedMmap


def test_pathlike_and_str_paths(tmp_path):
    RaggedMmap.from_lists(str(tmp_path / "p"), [[1]])
    assert RaggedMmap(tmp_path / "p")[0].tolist() == [1]
    with pytest.raises(TypeError, match="os.PathLike"):
        RaggedMmap(42)


def test_repr_names_path_length_and_dtype(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "r", [np.zeros(3, np.float32)])
    assert repr(m) == f"RaggedMmap({str(tmp_path / 'r')!r}, 1 1-d samples of float32)"


def test_iteration_yields_every_sample(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "it", MIXED)
    assert_samples_equal(list(m), MIXED)


# -- indexing -------------------------------------------------------------------------------

@pytest.fixture
def ten(tmp_path):
    samples = [np.arange(i, dtype=np.int32) + 100 * i for i in range(10)]
    return RaggedMmap.from_lists(tmp_path / "ten", samples), samples


@pytest.mark.parametrize("item", [
    3, -1, -10, np.int64(4), np.uint8(2), np.int16(-3),
])
def test_integer_indices(ten, item):
    m, samples = ten
    assert_sample_equal(m[item], samples[int(item)])


@pytest.mark.parametrize("item", [
    slice(None), slice(2, 8, 3), slice(None, None, -1), slice(-3, None), slice(8, 2, -2), slice(20, 30),
    [0, 9, 0, -1], (1, 2), range(0, 10, 4), np.array([5, 5, 1], np.uint16), np.array([], np.int64), [],
    np.array([True, False] * 5), [True] * 10,
])
def test_batch_indices_follow_numpy(ten, item):
    m, samples = ten
    positions = np.arange(10)[np.asarray(item) if isinstance(item, (list, tuple, range)) and len(item) else item]
    assert_samples_equal(m[item], [samples[i] for i in np.atleast_1d(positions)])


@pytest.mark.parametrize("item", [10, -11, 2**70, [0, 10], np.array([-11])])
def test_out_of_range_raises_index_error_naming_index_and_length(ten, item):
    m, _ = ten
    with pytest.raises(IndexError, match="out of bounds for a map of length 10"):
        m[item]


@pytest.mark.parametrize("item", [1.0, "a", None, True, {1}, [0.5, 1.0]])
def test_non_integer_indices_raise_type_error(ten, item):
    m, _ = ten
    with pytest.raises(TypeError):
        m[item]


def test_wrong_length_mask_raises(ten):
    m, _ = ten
    with pytest.raises(IndexError, match="mask of length 3"):
        m[[True, False, True]]


def test_wrapper_fn_applies_to_every_sample_on_a_copy(tmp_path):
    RaggedMmap.from_lists(tmp_path / "w", [np.array([1, 2]), np.array([3])])
    seen = []

    def wrapper(sample):
        seen.append(sample)
        return sample.sum()

    m = RaggedMmap(tmp_path / "w", wrapper_fn=wrapper)
    assert m[0] == 3 and m[[1, 0]] == [3, 3]
    assert all(s.flags.owndata for s in seen)
    m = RaggedMmap(tmp_path / "w", wrapper_fn=lambda s: s, copy_before_wrapper_fn=False)
    assert not m[0].flags.owndata


# -- modes and files -------------------------------------------------------------------------

def test_default_mode_gives_read_only_views_and_r_plus_writes_through(tmp_path):
    RaggedMmap.from_lists(tmp_path / "m", [np.array([1, 2, 3])])
    view = RaggedMmap(tmp_path / "m")[0]
    with pytest.raises(ValueError):
        view[0] = 7
    writable = RaggedMmap(tmp_path / "m", mode="r+")[0]
    writable[0] = 7
    writable.base.flush()
    assert RaggedMmap(tmp_path / "m")[0].tolist() == [7, 2, 3]
    with pytest.raises(ValueError, match="mode"):
        RaggedMmap(tmp_path / "m", mode="w+")


def test_opens_read_only_files(tmp_path):
    RaggedMmap.from_lists(tmp_path / "ro", MIXED)
    for root, _, files in os.walk(tmp_path / "ro"):
        for name in files:
            os.chmod(os.path.join(root, name), stat.S_IRUSR)
    try:
        assert_samples_equal(read_all(RaggedMmap(tmp_path / "ro")), MIXED)
    finally:
        for root, _, files in os.walk(tmp_path / "ro"):
            for name in files:
                os.chmod(os.path.join(root, name), stat.S_IRUSR | stat.S_IWUSR)


# -- empty maps -----------------------------------------------------------------------------

def test_map_on_missing_path_is_empty_and_writes_nothing(tmp_path):
    m = RaggedMmap(tmp_path / "nothing" / "here")
    assert len(m) == 0
    assert m[:] == [] and m[[]] == []
    with pytest.raises(IndexError, match="length 0"):
        m[0]
    assert not (tmp_path / "nothing").exists()
    m.append(np.array([1, 2]))
    m.extend([np.array([3])])
    assert_samples_equal(read_all(m), [np.array([1, 2]), np.array([3])])
    assert_samples_equal(read_all(RaggedMmap(tmp_path / "nothing" / "here")), [np.array([1, 2]), np.array([3])])


def test_from_lists_of_nothing_is_an_empty_map_that_keeps_its_dtype(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "e", [], dtype=np.float32)
    assert len(m) == 0 and m.dtype == np.float32
    m = RaggedMmap(tmp_path / "e")
    m.extend([[1, 2]])
    assert m[0].dtype == np.float32


def test_empty_samples_and_empty_first_batch(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "e", [np.array([], np.int16), np.array([], np.int16)])
    assert [s.shape for s in read_all(m)] == [(0,), (0,)]
    m.extend([np.array([1, 2], np.int16), np.zeros((0, 3), np.int16)])
    m = RaggedMmap(tmp_path / "e")
    assert_samples_equal(read_all(m), [np.array([], np.int16), np.array([], np.int16),
                                       np.array([1, 2], np.int16), np.zeros((0, 3), np.int16)])
    assert m.memmap.tolist() == [1, 2]


def test_extend_with_nothing_changes_nothing(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "x", [[1]])
    m.extend([])
    assert len(RaggedMmap(tmp_path / "x")) == 1
    empty = RaggedMmap(tmp_path / "y")
    empty.extend([])
    assert not (tmp_path / "y").exists()


# -- extending --------------------------------------------------------------------------------

def test_extend_flat_then_nd_then_flat(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "g", [np.array([1, 2]), np.array(3)])
    assert m.shapes_are_flat
    m.extend([np.arange(6).reshape(3, 2)])
    assert not m.shapes_are_flat
    m.append(np.array([7, 8, 9]))
    m.append(4)
    expected = [np.array([1, 2]), np.array(3), np.arange(6).reshape(3, 2), np.array([7, 8, 9]), np.array(4)]
    assert_samples_equal(read_all(m), expected)
    assert_samples_equal(read_all(RaggedMmap(tmp_path / "g")), expected)
    assert not (tmp_path / "g" / "shapes.new").exists() and not (tmp_path / "g" / "shapes.old").exists()


def test_extend_casts_safely_and_refuses_lossy_values_leaving_the_map_unchanged(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "c", [np.array([1, 2], np.uint8)])
    m.extend([[3, 4], np.array([5.0])])
    assert m[2].dtype == np.uint8
    before = {p: p.read_bytes() for p in sorted((tmp_path / "c").rglob("*")) if p.is_file()}
    with pytest.raises(TypeError, match="sample 4"):
        m.extend([[1], [256]])
    with pytest.raises(TypeError, match="sample 3"):
        m.extend([[0.5]])
    after = {p: p.read_bytes() for p in sorted((tmp_path / "c").rglob("*")) if p.is_file()}
    assert before == after
    assert len(RaggedMmap(tmp_path / "c")) == 3


def test_open_reader_sees_extension_after_refresh(tmp_path):
    writer = RaggedMmap.from_lists(tmp_path / "rf", [[1]])
    reader = RaggedMmap(tmp_path / "rf")
    old = reader[0]
    writer.extend([[2, 3]])
    assert len(reader) == 1
    reader.refresh()
    assert len(reader) == 2 and reader[1].tolist() == [2, 3] and old.tolist() == [1]


# -- changing samples in place -----------------------------------------------------------

def test_setitem_replaces_same_size_samples(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "s", [np.array([1, 2]), np.zeros((2, 2)), np.array([5])])
    m[0] = [9, 8]
    m[1] = 7  # broadcast to the sample's shape
    m[-1] = np.array([6.0])
    m[[0, 2]] = [np.array([4, 4]), np.array([3])]
    m[1:2] = [np.eye(2)]
    reopened = RaggedMmap(tmp_path / "s")
    assert_samples_equal(read_all(reopened), [np.array([4, 4]), np.eye(2, dtype=np.int64), np.array([3])])


def test_setitem_with_another_size_raises_and_writes_nothing(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "s", [np.array([1, 2]), np.array([3])])
    with pytest.raises(ValueError, match="sample 1 has shape"):
        m[[0, 1]] = [np.array([7, 7]), np.array([1, 2])]
    with pytest.raises(ValueError, match="cannot assign 1 values to 2"):
        m[:] = [np.array([1, 2])]
    with pytest.raises(IndexError):
        m[5] = [1]
    assert_samples_equal(read_all(m), [np.array([1, 2]), np.array([3])])


# -- building from generators and indexables ----------------------------------------------

def test_from_generator_commits_batches_and_shows_progress(tmp_path, capsys):
    samples = [np.full((i % 4, 2), i, dtype=np.float32) for i in range(23)]
    m = RaggedMmap.from_generator(tmp_path / "g", iter(samples), batch_size=5, verbose=True)
    assert_samples_equal(read_all(m), samples)
    assert "23" in capsys.readouterr().err


def test_from_generator_progress_has_total_when_length_is_known(tmp_path, capsys):
    RaggedMmap.from_generator(tmp_path / "g", [[1]] * 7, batch_size=3, verbose=True)
    assert "7/7" in capsys.readouterr().err


def test_from_generator_of_nothing_gives_an_empty_map(tmp_path):
    m = RaggedMmap.from_generator(tmp_path / "g", iter([]), batch_size=4)
    assert len(m) == 0 and (tmp_path / "g" / _meta.TYPE).read_text() == "ragged"


def test_from_generator_error_leaves_no_part_of_the_map(tmp_path):
    # the map is built aside and swapped in whole: a source that breaks leaves nothing behind
    def samples():
        for i in range(7):
            yield [i]
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        RaggedMmap.from_generator(tmp_path / "g", samples(), batch_size=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_from_lists_replaces_an_existing_map(tmp_path):
    RaggedMmap.from_lists(tmp_path / "r", [np.zeros((2, 2))])
    (tmp_path / "r" / "notes.txt").write_text("mine")
    m = RaggedMmap.from_lists(tmp_path / "r", [[1, 2, 3]])
    assert m.shapes_are_flat and len(m) == 1
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


class Squares:
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return np.arange(i) ** 2


def test_from_indexable_with_len(tmp_path):
    m = RaggedMmap.from_indexable(tmp_path / "i", Squares(), batch_size=2)
    assert_samples_equal(read_all(m), [np.arange(i) ** 2 for i in range(5)])


def test_from_indexable_function_stops_at_index_error(tmp_path, capsys):
    def sample(i):
        if i >= 7:
            raise IndexError(i)
        return np.full(i, i)

    m = RaggedMmap.from_indexable(tmp_path / "f", sample, batch_size=3, verbose=True)
    assert_samples_equal(read_all(m), [np.full(i, i) for i in range(7)])
    assert "7" in capsys.readouterr().err


def test_from_indexable_dict_stops_at_key_error(tmp_path):
    m = RaggedMmap.from_indexable(tmp_path / "d", {0: [1], 1: [2, 3], 2: [4]}, batch_size=2)
    assert_samples_equal(read_all(m), [np.array([1]), np.array([2, 3]), np.array([4])])


def test_from_indexable_in_parallel(tmp_path):
    m = RaggedMmap.from_indexable(tmp_path / "p", Squares(), batch_size=2, n_jobs=2)
    assert_samples_equal(read_all(m), [np.arange(i) ** 2 for i in range(5)])


def test_from_indexable_rejects_what_is_not_indexable(tmp_path):
    with pytest.raises(TypeError, match="__getitem__"):
        RaggedMmap.from_indexable(tmp_path / "x", 42, batch_size=2)


# -- corrupted files -----------------------------------------------------------------------

def _rewrite_index_array(path, values):
    arr = np.asarray(values, dtype=np.int64)
    (path / "data.ninja").write_bytes(arr.tobytes())
    _meta.write_bytes(path / "shape.ninja", _meta.shape_bytes(arr.shape))


@pytest.mark.parametrize("component, values, message", [
    ("ends", [3, 99], "corrupted offsets for sample 1"),
    ("starts", [-5, 3], "corrupted offsets for sample 0"),
    ("starts", [4, 3], "corrupted offsets for sample 0"),
    ("starts", [1, 3], r"sample 0 has shape \(3,\) but 2 stored elements"),
])
def test_corrupted_offsets_raise_instead_of_reading_outside_the_data(tmp_path, component, values, message):
    RaggedMmap.from_lists(tmp_path / "c", [np.array([1, 2, 3]), np.array([4, 5])])
    _rewrite_index_array(tmp_path / "c" / component, values)
    m = RaggedMmap(tmp_path / "c")
    with pytest.raises(ValueError, match=message):
        read_all(m)


def test_shape_that_disagrees_with_offsets_raises(tmp_path):
    RaggedMmap.from_lists(tmp_path / "c", [np.zeros((2, 3)), np.zeros((1, 1))])
    nested = tmp_path / "c" / "shapes"
    (nested / "data.ninja").write_bytes(np.array([2, 4, 1, 1], np.int64).tobytes())
    m = RaggedMmap(tmp_path / "c")
    with pytest.raises(ValueError, match=r"sample 0 has shape \(2, 4\) but 6 stored elements"):
        m[0]
    assert m[1].shape == (1, 1)


def test_truncated_data_file_raises_at_open_naming_it(tmp_path):
    RaggedMmap.from_lists(tmp_path / "t", [np.arange(100)])
    with open(tmp_path / "t" / "data.ninja", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match="data.ninja"):
        RaggedMmap(tmp_path / "t")


def test_other_kind_of_map_is_refused(tmp_path):
    from mmap_ninja.string import StringsMmap

    StringsMmap.from_strings(tmp_path / "s", ["a"])
    with pytest.raises(ValueError, match="'string' map, expected a ragged map"):
        RaggedMmap(tmp_path / "s")


# -- properties ---------------------------------------------------------------------------

DTYPES = [np.int8, np.uint16, np.int64, np.float32, np.float64]


def ragged_samples(dtype):
    """Lists of arrays of ``dtype`` of any rank up to 3, empty ones and 0-d ones included."""
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
    return st.lists(hnp.arrays(dtype=dtype, shape=shapes), min_size=0, max_size=12)


any_ragged_samples = st.sampled_from(DTYPES).flatmap(ragged_samples)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=any_ragged_samples, data=st.data())
def test_write_reopen_identical_and_batches_equal_per_sample(tmp_path_factory, samples, data):
    out = tmp_path_factory.mktemp("prop") / "m"
    RaggedMmap.from_lists(out, samples)
    m = RaggedMmap(out)
    assert len(m) == len(samples)
    for actual, expected in zip(read_all(m), samples):
        np.testing.assert_array_equal(np.asarray(actual), expected)
        assert np.shape(actual) == expected.shape
    if samples:
        indices = data.draw(st.lists(st.integers(-len(samples), len(samples) - 1), max_size=20))
        batch = m[indices]
        assert len(batch) == len(indices)
        for actual, i in zip(batch, indices):
            np.testing.assert_array_equal(np.asarray(actual), np.asarray(m[i]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.sampled_from(DTYPES).flatmap(lambda dtype: st.lists(ragged_samples(dtype), min_size=1, max_size=4)))
def test_extend_in_batches_equals_one_build(tmp_path_factory, batches):
    flat = [s for batch in batches for s in batch]
    out = tmp_path_factory.mktemp("ext") / "m"
    m = RaggedMmap(out)
    start = 0
    for batch in batches:
        m.extend(flat[start:start + len(batch)])
        start += len(batch)
    reopened = RaggedMmap(out)
    assert len(reopened) == len(flat)
    for actual, expected in zip(read_all(reopened), flat):
        np.testing.assert_array_equal(np.asarray(actual), expected)
        assert np.shape(actual) == expected.shape


# -- batch outputs ---------------------------------------------------------------------------

index_lists = st.lists(st.integers(-1000, 1000), max_size=24)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=any_ragged_samples, raw_indices=index_lists)
def test_take_equals_per_sample_reads(tmp_path_factory, samples, raw_indices):
    m = RaggedMmap.from_lists(tmp_path_factory.mktemp("take") / "m", samples)
    indices = [i % len(samples) - (len(samples) if i < 0 else 0) for i in raw_indices] if samples else []
    batch = m.take(indices)
    assert len(batch) == len(indices)
    expected = [np.asarray(m[i]) for i in indices]
    for k, (got, want) in enumerate(zip(batch.arrays(), expected)):
        assert np.shape(got) == want.shape
        np.testing.assert_array_equal(np.asarray(got), want)
        np.testing.assert_array_equal(np.asarray(batch[k]), want)
    assert batch.shapes == [w.shape for w in expected]
    assert batch.lengths.tolist() == [w.size for w in expected]
    assert batch.offsets.tolist() == np.concatenate([[0], np.cumsum([w.size for w in expected])]).tolist()
    if samples:
        assert batch.values.dtype == m.dtype
        flat = np.concatenate([w.ravel() for w in expected] + [np.empty(0, m.dtype)])
        np.testing.assert_array_equal(batch.values, flat)


def test_take_copies_into_one_writable_buffer(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "t", [np.arange(3), np.arange(4).reshape(2, 2), np.array(7)])
    batch = m.take([1, 0, 2, 1])
    assert repr(batch) == "RaggedBatch(4 samples, 12 values of int64)"
    views = batch.arrays()
    assert all(v.base is batch.values for v in views[:2]) and views[2] == 7
    views[0][0, 0] = 100  # the batch is a copy: the map does not change
    assert batch.values[0] == 100 and m[1][0, 0] == 0
    assert not np.shares_memory(batch.values, m.memmap)
    assert [np.shape(v) for v in batch] == [(2, 2), (3,), (), (2, 2)]
    assert batch.nbytes == 12 * 8


def test_take_rejects_scalar_indices_and_reports_bad_ones(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "t", [np.arange(3)])
    with pytest.raises(TypeError, match="a batch needs"):
        m.take(0)
    with pytest.raises(IndexError, match="index 5 is out of bounds for a map of length 1"):
        m.take([0, 5])
    assert len(m.take(slice(None))) == 1 and len(m.take([])) == 0
    assert len(m.take([True])) == 1


def test_take_and_padded_on_an_empty_map(tmp_path):
    m = RaggedMmap(tmp_path / "none")
    assert len(m.take([])) == 0
    padded, lengths = m.padded([], max_len=4)
    assert padded.shape == (0, 4) and lengths.shape == (0,)
    with pytest.raises(IndexError):
        m.take([0])


sequence_maps = st.tuples(
    st.sampled_from([np.int32, np.float64, np.uint8]).map(np.dtype),
    hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3),
    st.lists(st.integers(0, 9), max_size=10),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=sequence_maps, raw_indices=index_lists, max_len=st.one_of(st.none(), st.integers(0, 12)),
       pad=st.integers(0, 100), use_out=st.booleans())
def test_padded_equals_reference(tmp_path_factory, spec, raw_indices, max_len, pad, use_out):
    dtype, row_shape, lengths = spec
    rng = np.random.default_rng(len(lengths))
    samples = [rng.integers(0, 100, size=(n, *row_shape)).astype(dtype) for n in lengths]
    m = RaggedMmap.from_lists(tmp_path_factory.mktemp("pad") / "m", samples)
    indices = [i % len(samples) for i in raw_indices] if samples else []
    longest = max([len(samples[i]) for i in indices], default=0)
    width = longest if max_len is None else max_len
    row = row_shape if samples and not m.shapes_are_flat else ()
    out = np.full((len(indices), width, *row), 255, dtype=m.dtype or np.float64) if use_out else None
    result, got_lengths = m.padded(indices, pad_value=pad, max_len=max_len, out=out)
    expected = np.full((len(indices), width, *row), pad, dtype=m.dtype or np.float64)
    for k, i in enumerate(indices):
        kept = min(len(samples[i]), width)
        expected[k, :kept] = samples[i][:kept].reshape(kept, *row)
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == (dtype if samples else np.float64)  # a map never written has no dtype
    assert got_lengths.tolist() == [min(len(samples[i]), width) for i in indices]
    if use_out:
        assert result is out


image_maps = st.tuples(
    st.sampled_from([np.uint8, np.int32, np.float32]).map(np.dtype),
    st.integers(1, 3),  # axes of every sample
    st.lists(st.lists(st.integers(0, 4), min_size=3, max_size=3), min_size=1, max_size=9),
)


def padded_reference(samples, width, rest, pad, dtype):
    """Samples padded along every axis one by one: the first to ``width``, the others to ``rest``."""
    expected = np.full((len(samples), width, *rest), pad, dtype=dtype)
    for k, sample in enumerate(samples):
        kept = sample[:width]
        expected[(k,) + tuple(slice(0, n) for n in kept.shape)] = kept
    return expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=image_maps, raw_indices=st.lists(st.integers(0, 100), min_size=1, max_size=12),
       max_len=st.one_of(st.none(), st.integers(0, 5)), pad=st.integers(0, 100), into=st.sampled_from(
           [None, "out", "larger out", "float64", "complex128"]), sharded=st.booleans())
def test_padded_along_every_axis_equals_the_per_sample_reference(tmp_path_factory, spec, raw_indices, max_len, pad,
                                                                 into, sharded):
    dtype, ndim, sizes = spec
    rng = np.random.default_rng(len(sizes))
    samples = [rng.integers(1, 100, size=size[:ndim]).astype(dtype) for size in sizes]
    folder = tmp_path_factory.mktemp("axes") / "m"
    m = ShardedMmap.from_generator(folder, samples, part_size=4) if sharded else RaggedMmap.from_lists(folder, samples)
    indices = [i % len(samples) for i in raw_indices]
    chosen = [samples[i] for i in indices]
    width = max(len(s) for s in chosen) if max_len is None else max_len
    rest = tuple(np.max([s.shape[1:] for s in chosen], axis=0).tolist()) if ndim > 1 else ()
    out_dtype = np.dtype(into) if into in ("float64", "complex128") else dtype
    out = None
    if into in ("out", "larger out"):
        rest = tuple(n + 2 for n in rest) if into == "larger out" else rest
        out = np.full((len(indices), width, *rest), 255, dtype=dtype)
    result, lengths, shapes = m.padded(indices, pad_value=pad, max_len=max_len, out=out, every_axis=True,
                                       dtype=None if out_dtype == dtype else out_dtype)
    np.testing.assert_array_equal(result, padded_reference(chosen, width, rest, pad, out_dtype))
    assert result.dtype == out_dtype and (out is None or result is out)
    assert lengths.tolist() == [min(len(s), width) for s in chosen]
    assert shapes.tolist() == [[min(len(s), width), *s.shape[1:]] for s in chosen]


def test_padded_along_every_axis_refuses_what_cannot_be_padded(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "p", [np.zeros((2, 3)), np.zeros((1, 4)), np.zeros(4), np.array(1.0)])
    with pytest.raises(ValueError, match=r"every_axis=True pads the others too"):
        m.padded([0, 1])
    padded, lengths, shapes = m.padded([0, 1], every_axis=True)
    assert padded.shape == (2, 2, 4) and shapes.tolist() == [[2, 3], [1, 4]]
    with pytest.raises(ValueError, match=r"sample 2 has shape \(4,\), sample 0 has shape \(2, 3\): a batch padded "
                                         r"along every axis needs samples of one number of axes"):
        m.padded([0, 2], every_axis=True)
    with pytest.raises(ValueError, match="sample 3 is a scalar"):
        m.padded([3], every_axis=True)
    with pytest.raises(ValueError, match="along axis 2, a sample of the batch 4"):
        m.padded([0, 1], out=np.zeros((2, 2, 3)), every_axis=True)
    empty, lengths, shapes = m.padded([], every_axis=True)
    assert empty.shape == (0, 0, 3) and shapes.shape == (0, 2)


def test_padded_refuses_what_cannot_be_padded(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "p", [np.zeros((2, 3)), np.zeros((1, 4)), np.array(1.0)])
    with pytest.raises(ValueError, match=r"sample 1 has shape \(1, 4\), sample 0 has shape \(2, 3\)"):
        m.padded([0, 1])
    with pytest.raises(ValueError, match="sample 2 is a scalar"):
        m.padded([2])
    with pytest.raises(ValueError, match=r"shape \(1, 2, 3\)"):
        m.padded([0], out=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="float64"):
        m.padded([0], out=np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="max_len"):
        m.padded([0], max_len=-1)
    with pytest.raises(TypeError, match="pad_value"):
        RaggedMmap.from_lists(tmp_path / "u", [np.zeros(2, np.uint8)]).padded([0], pad_value=-1)


def test_getitems_returns_the_batch_as_a_list_through_wrapper_fn(tmp_path):
    samples = [np.arange(i) for i in range(5)]
    RaggedMmap.from_lists(tmp_path / "g", samples)
    m = RaggedMmap(tmp_path / "g")
    assert_samples_equal(m.__getitems__([4, 0, 4]), [samples[4], samples[0], samples[4]])
    assert all(s.flags.writeable for s in m.__getitems__([1, 2]))
    wrapped = RaggedMmap(tmp_path / "g", wrapper_fn=len)
    assert wrapped.__getitems__([3, 1]) == [3, 1]


def test_dataloader_fetches_batches_through_getitems(tmp_path):
    import torch
    samples = [np.full(i % 4 + 1, i, dtype=np.int64) for i in range(10)]
    RaggedMmap.from_lists(tmp_path / "d", samples)
    calls = []

    class Recording(RaggedMmap):
        def __getitems__(self, indices):
            calls.append(list(indices))
            return super().__getitems__(indices)

    loader = torch.utils.data.DataLoader(Recording(tmp_path / "d"), batch_size=4, collate_fn=list)
    batches = list(loader)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert_samples_equal([s for batch in batches for s in batch], samples)


def test_threads_gather_at_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 1000, size=rng.integers(0, 300), dtype=np.int32) for _ in range(500)]
    m = RaggedMmap.from_lists(tmp_path / "th", samples)
    index_sets = [rng.integers(0, 500, size=64) for _ in range(40)]

    def check(indices):
        batch = m.take(indices)
        padded, lengths = m.padded(indices, pad_value=-1)
        for k, i in enumerate(indices):
            np.testing.assert_array_equal(batch[k], samples[i])
            np.testing.assert_array_equal(padded[k, :lengths[k]], samples[i])
            assert (padded[k, lengths[k]:] == -1).all()
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, index_sets))


# -- guards ---------------------------------------------------------------------------------------

def test_samples_of_too_many_axes_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="sample 1 has 40 axes; samples may have at most 32"):
        RaggedMmap.from_lists(tmp_path / "deep", [np.zeros((2, 2)), np.zeros((1,) * 40)])
    assert not (tmp_path / "deep" / "type.ninja").exists()


def test_big_endian_samples_are_stored_in_native_order(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "be", [np.arange(3, dtype=">i4"), np.arange(2, dtype="<i4")])
    assert m.dtype == np.dtype("int32") and m[0].tolist() == [0, 1, 2]


def test_options_that_would_be_misread_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        RaggedMmap.from_lists(tmp_path / "a", [[1]], None, len)  # the 4th argument is mode, as in 0.9.0
    with pytest.raises(TypeError, match="wrapper_fn must be callable"):
        RaggedMmap(tmp_path / "a", "r")
    with pytest.raises(TypeError, match="verbose must be True or False"):
        RaggedMmap.from_generator(tmp_path / "a", [[1]], 1, "yes")
    with pytest.raises(ValueError, match="starts_key='begin' is not supported"):
        RaggedMmap(tmp_path / "a", starts_key="begin")
    assert len(RaggedMmap(tmp_path / "a", starts_key="starts")) == 0
    with pytest.raises(TypeError, match="unexpected keyword arguments: colour"):
        RaggedMmap(tmp_path / "a", colour="red")
    m = RaggedMmap.from_lists(tmp_path / "b", [[1, 2]], None, "r", np.sum)
    assert m.mode == "r" and m[0] == 3


def test_names_of_mmap_ninja_090(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "o", [np.arange(3), np.zeros((2, 2)), np.array(5)])
    assert m.n == 3 and m.range.tolist() == [0, 1, 2]
    assert m.flattened_shapes.tolist() == [3, 4, 1]
    assert isinstance(m.shapes, RaggedMmap) and m.shapes[1].tolist() == [2, 2]
    assert m.get_single(2) == 5 and [s.shape for s in m.get_multiple([0, 1])] == [(3,), (2, 2)]
    m.set_single(0, [7, 8, 9])
    m.set_multiple([2], [6])
    assert m[0].tolist() == [7, 8, 9] and m[2] == 6
    flat = RaggedMmap.from_lists(tmp_path / "f", [np.arange(3), np.arange(1)])
    assert flat.shapes.tolist() == [[3], [1]]


def test_a_file_changing_under_a_reader_never_crashes_it(tmp_path):
    import threading

    samples = [np.zeros((2, 2), np.int16) for _ in range(200)]
    m = RaggedMmap.from_lists(tmp_path / "race", samples)
    shapes = RaggedMmap(tmp_path / "race" / "shapes", mode="r+").memmap
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            for value in (2, 1 << 20, -3, 2):
                shapes[0] = value

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for _ in range(300):
            for read in (lambda: m[0], lambda: m.take(np.zeros(64, np.int64)), lambda: m.padded([0, 0, 1])):
                try:
                    result = read()
                except ValueError:
                    continue
                if isinstance(result, RaggedBatch):
                    assert all(b.size == 4 for b in result)
    finally:
        stop.set()
        flipper.join()


def test_bool_maps_pad_with_false_by_default(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "b", [np.array([True, False, True]), np.array([True])])
    padded, lengths = m.padded([0, 1])
    assert padded.tolist() == [[True, False, True], [True, False, False]] and lengths.tolist() == [3, 1]
    with pytest.raises(TypeError, match="only 0 and 1"):
        m.extend([[2]])


NUMERIC = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
           np.float32, np.float64, np.complex64]
SAFE_PAIRS = [(a, b) for a in NUMERIC for b in NUMERIC if np.can_cast(a, b, "safe")]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=st.sampled_from(SAFE_PAIRS), lengths=st.lists(st.integers(0, 6), min_size=1, max_size=6),
       data=st.data())
def test_padded_into_any_safe_dtype_equals_the_per_sample_reference(tmp_path_factory, pair, lengths, data):
    stored, wanted = map(np.dtype, pair)
    rng = np.random.default_rng(len(lengths))
    info = np.iinfo(stored) if stored.kind in "iu" else None
    samples = [(rng.integers(info.min, info.max, size=n, endpoint=True, dtype=stored) if info is not None
                else (rng.random(n) * 1e3 - 500).astype(stored) if stored.kind in "fc"
                else rng.random(n) < 0.5) for n in lengths]
    m = RaggedMmap.from_lists(tmp_path_factory.mktemp("p") / "m", samples)
    assert m.dtype == stored
    indices = data.draw(st.lists(st.integers(0, len(samples) - 1), max_size=8))
    pad = data.draw(st.sampled_from([0, 1]))
    max_len = data.draw(st.none() | st.integers(0, 7))
    out, got_lengths = m.padded(indices, pad_value=pad, max_len=max_len, dtype=wanted)
    width = max_len if max_len is not None else max((lengths[i] for i in indices), default=0)
    assert out.dtype == wanted and out.shape == (len(indices), width)
    for row, i, n in zip(out, indices, got_lengths):
        kept = min(lengths[i], width)
        assert n == kept
        assert np.array_equal(row[:kept], samples[i][:kept].astype(wanted)) and (row[kept:] == pad).all()
    again, _ = m.padded(indices, pad_value=pad, max_len=max_len, dtype=wanted, out=np.full_like(out, 7))
    assert np.array_equal(again, out)


def test_padded_refuses_a_dtype_that_cannot_hold_the_values(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(3, dtype=np.int64)])
    with pytest.raises(TypeError, match="cannot hold samples of int64 exactly"):
        m.padded([0], dtype=np.int32)
    with pytest.raises(TypeError, match="cannot hold samples of int64 exactly"):
        m.padded([0], dtype=np.float32)
    with pytest.raises(ValueError, match="out must be a writable C-contiguous float64 array"):
        m.padded([0], dtype=np.float64, out=np.zeros((1, 3), dtype=np.int64))
    n_d = RaggedMmap.from_lists(tmp_path / "n", [np.ones((2, 3), np.int16), np.ones((1, 3), np.int16)])
    out, lengths = n_d.padded([0, 1], pad_value=-1, dtype=np.float32)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3) and (out[1, 1] == -1).all() and lengths.tolist() == [2, 1]


def test_batches_are_written_into_the_memory_alloc_gives(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(4, dtype=np.int16), np.arange(2, dtype=np.int16)])
    made = []

    def alloc(shape, dtype):
        made.append((shape, np.dtype(dtype)))
        return np.full(shape, 9, dtype)

    batch = m.take([1, 0], alloc=alloc)
    assert batch.values.tolist() == [0, 1, 0, 1, 2, 3] and made[-1] == ((6,), np.dtype(np.int16))
    padded, lengths = m.padded([1, 0], pad_value=-1, dtype=np.int32, alloc=alloc)
    assert padded.tolist() == [[0, 1, -1, -1], [0, 1, 2, 3]] and made[-1] == ((2, 4), np.dtype(np.int32))
    padded, _ = m.padded([1], dtype=np.complex64, alloc=alloc)  # converted by numpy, still into alloc's array
    assert padded.tolist() == [[0, 1]] and made[-1] == ((1, 2), np.dtype(np.complex64))
    before = m.padded([0, 1])[0].copy()
    with pytest.raises(ValueError, match=r"alloc must return a writable C-contiguous int16 array of shape \(2, 4\)"):
        m.padded([0, 1], alloc=lambda shape, dtype: np.zeros(shape, np.int64))
    with pytest.raises(ValueError, match="alloc must return"):
        m.take([0], alloc=lambda shape, dtype: np.zeros(shape, dtype)[::-1].copy().reshape(1, -1))
    with pytest.raises(ValueError, match="alloc must return"):
        m.take([0], alloc=lambda shape, dtype: np.zeros((shape[0] * 2,), dtype)[::2])
    assert np.array_equal(m.padded([0, 1])[0], before) and len(m) == 2
