"""Tests of mmap_ninja.numpy: fixed-shape maps as np.memmap."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mmap_ninja
from mmap_ninja import _meta
from mmap_ninja import numpy as np_ninja


def files_of(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("order", ["C", "F"])
def test_from_ndarray_keeps_values_dtype_shape_and_order(tmp_path, order):
    arr = np.asarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4), order=order)
    memmap = np_ninja.from_ndarray(tmp_path / "a", arr)
    assert isinstance(memmap, np.memmap)
    np.testing.assert_array_equal(memmap, arr)
    opened = np_ninja.open_existing(tmp_path / "a")
    np.testing.assert_array_equal(opened, arr)
    assert opened.dtype == np.int16 and opened.flags.f_contiguous == (order == "F")
    assert (tmp_path / "a" / _meta.ORDER).read_text() == order


def test_from_ndarray_of_a_list_and_of_a_scalar(tmp_path):
    np.testing.assert_array_equal(np_ninja.from_ndarray(tmp_path / "l", [[1, 2], [3, 4]]), [[1, 2], [3, 4]])
    scalar = np_ninja.from_ndarray(tmp_path / "s", np.float32(2.5))
    assert scalar.shape == () and float(np_ninja.open_existing(tmp_path / "s")) == 2.5
    assert (tmp_path / "s" / _meta.SHAPE).read_bytes() == b""


def test_open_modes(tmp_path):
    np_ninja.from_ndarray(tmp_path / "m", np.zeros(3))
    with pytest.raises(ValueError):
        np_ninja.open_existing(tmp_path / "m")[0] = 1
    writable = np_ninja.open_existing(tmp_path / "m", mode="r+")
    writable[0] = 7
    writable.flush()
    assert np_ninja.open_existing(tmp_path / "m")[0] == 7
    private = np_ninja.open_existing(tmp_path / "m", mode="c")
    private[1] = 9
    assert np_ninja.open_existing(tmp_path / "m")[1] == 0
    with pytest.raises(ValueError, match="mode"):
        np_ninja.open_existing(tmp_path / "m", mode="w+")


@pytest.mark.parametrize("order", ["C", "F"])
def test_extend_extend_dir_and_append(tmp_path, order):
    arr = np.asarray(np.arange(6).reshape(2, 3), order=order)
    memmap = np_ninja.from_ndarray(tmp_path / "g", arr)
    np_ninja.extend(memmap, np.array([[6, 7, 8]]))
    np_ninja.extend_dir(tmp_path / "g", np.array([[9, 10, 11], [12, 13, 14]]))
    np_ninja.append(memmap, np.array([15, 16, 17]))
    opened = np_ninja.open_existing(tmp_path / "g")
    np.testing.assert_array_equal(opened, np.arange(18).reshape(6, 3))
    assert opened.flags.f_contiguous == (order == "F")
    assert memmap.shape == (2, 3)  # the memmap given to extend keeps its shape


def test_aliases_exported_by_the_package(tmp_path):
    memmap = mmap_ninja.np_from_ndarray(tmp_path / "a", np.arange(3))
    mmap_ninja.np_extend(memmap, np.arange(3, 5))
    mmap_ninja.np_extend_dir(tmp_path / "a", np.arange(5, 6))
    mmap_ninja.np_append(memmap, 6)
    np.testing.assert_array_equal(mmap_ninja.np_open_existing(tmp_path / "a"), np.arange(7))
    gen = mmap_ninja.np_from_generator(tmp_path / "b", iter([1, 2]), batch_size=1)
    np.testing.assert_array_equal(gen, [1, 2])


def test_extend_with_wrong_shape_or_lossy_dtype_raises_and_changes_nothing(tmp_path):
    np_ninja.from_ndarray(tmp_path / "e", np.zeros((2, 3), np.uint8))
    before = files_of(tmp_path / "e")
    with pytest.raises(ValueError, match=r"samples must have shape \(3,\)"):
        np_ninja.extend_dir(tmp_path / "e", np.zeros((1, 4)))
    with pytest.raises(ValueError, match="shape"):
        np_ninja.extend_dir(tmp_path / "e", np.uint8(1))
    with pytest.raises(TypeError, match="do not fit in uint8"):
        np_ninja.extend_dir(tmp_path / "e", np.full((1, 3), 256))
    with pytest.raises(TypeError, match="fractions"):
        np_ninja.extend_dir(tmp_path / "e", np.full((1, 3), 0.5))
    assert files_of(tmp_path / "e") == before
    np_ninja.extend_dir(tmp_path / "e", np.full((1, 3), 255.0))
    assert np_ninja.open_existing(tmp_path / "e")[2].tolist() == [255, 255, 255]


def test_extend_needs_a_memmap_from_this_module():
    with pytest.raises(TypeError, match="extend_dir"):
        np_ninja.extend(np.zeros((1, 2)), np.zeros((1, 2)))


def test_zero_row_map_opens_and_grows(tmp_path):
    memmap = np_ninja.from_ndarray(tmp_path / "z", np.zeros((0, 2), np.float32))
    assert memmap.shape == (0, 2)
    opened = np_ninja.open_existing(tmp_path / "z")
    assert isinstance(opened, np.memmap) and opened.shape == (0, 2)
    np_ninja.extend(opened, np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(np_ninja.open_existing(tmp_path / "z"), np.ones((2, 2)))
    assert (tmp_path / "z" / "data.ninja").stat().st_size == 16


def test_empty_creates_a_zero_filled_writable_map(tmp_path):
    memmap = np_ninja._empty(tmp_path / "e", "float32", (4, 2), "F")
    assert memmap.shape == (4, 2) and memmap.dtype == np.float32 and not memmap.any()
    memmap[:] = np.arange(8).reshape(4, 2)
    memmap.flush()
    opened = np_ninja.open_existing(tmp_path / "e")
    np.testing.assert_array_equal(opened, np.arange(8).reshape(4, 2))
    assert opened.flags.f_contiguous
    with pytest.raises(ValueError, match="order"):
        np_ninja._empty(tmp_path / "x", "float32", (1,), "K")


def simple_gen(k=30):
    for i in range(k):
        yield np.array([i, i * i])


def test_from_generator_with_n_shows_progress_and_trims(tmp_path, capsys):
    memmap = np_ninja.from_generator(tmp_path / "g", simple_gen(), batch_size=4, n=30, verbose=True)
    np.testing.assert_array_equal(memmap, [[i, i * i] for i in range(30)])
    assert "30/30" in capsys.readouterr().err
    memmap = np_ninja.from_generator(tmp_path / "h", simple_gen(10), batch_size=4, n=1000)
    assert memmap.shape == (10, 2)
    assert (tmp_path / "h" / "data.ninja").stat().st_size == 10 * 2 * 8
    memmap = np_ninja.from_generator(tmp_path / "i", simple_gen(10), batch_size=3, n=2)
    np.testing.assert_array_equal(memmap, [[i, i * i] for i in range(10)])


def test_from_generator_without_samples_or_with_a_misfit_sample(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        np_ninja.from_generator(tmp_path / "n", iter([]), batch_size=2)
    with pytest.raises(ValueError, match="sample 3 has shape"):
        np_ninja.from_generator(tmp_path / "m", iter([[1, 2], [3, 4], [5, 6], [7]]), batch_size=2)
    assert not (tmp_path / "m").exists()  # a build that fails leaves nothing, not a part of the map
    with pytest.raises(ValueError, match="batch_size"):
        np_ninja.from_generator(tmp_path / "b", iter([[1]]), batch_size=0)


def test_open_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no map at"):
        np_ninja.open_existing(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a mmap_ninja map"):
        np_ninja.open_existing(tmp_path / "plain")
    from mmap_ninja.string import StringsMmap

    StringsMmap.from_strings(tmp_path / "s", ["a"])
    with pytest.raises(ValueError, match="'string' map, expected a numpy map"):
        np_ninja.open_existing(tmp_path / "s")
    np_ninja.from_ndarray(tmp_path / "t", np.zeros(4))
    with open(tmp_path / "t" / "data.ninja", "r+b") as f:
        f.truncate(8)
    with pytest.raises(ValueError, match="data.ninja"):
        np_ninja.open_existing(tmp_path / "t")


def test_flattened_data_of_a_ragged_map_opens(tmp_path):
    from mmap_ninja.ragged import RaggedMmap

    RaggedMmap.from_lists(tmp_path / "r", [np.array([1, 2]), np.array([3])])
    np.testing.assert_array_equal(np_ninja.open_existing(tmp_path / "r"), [1, 2, 3])
    with pytest.raises(ValueError, match="expected a numpy map"):
        np_ninja.extend_dir(tmp_path / "r", np.array([4]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=hnp.arrays(dtype=st.sampled_from(["int8", "uint32", "float64", "complex64", "bool", "<U3"]),
                      shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)),
       fortran=st.booleans(), extra=st.integers(0, 3))
def test_write_extend_reopen_identical(tmp_path_factory, arr, fortran, extra):
    out = tmp_path_factory.mktemp("np") / "a"
    arr = np.asfortranarray(arr) if fortran else arr
    np_ninja.from_ndarray(out, arr)
    rows = arr[:extra] if len(arr) else arr
    np_ninja.extend_dir(out, rows)
    np.testing.assert_array_equal(np_ninja.open_existing(out), np.concatenate([arr, rows]))
    assert np_ninja.open_existing(out).dtype == arr.dtype


# -- gathering rows -------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=hnp.arrays(dtype=st.sampled_from(["uint8", "int32", "float64", "complex64", "<U2"]),
                      shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)),
       data=st.data(), fortran=st.booleans(), use_out=st.booleans())
def test_take_equals_numpy_fancy_indexing(tmp_path_factory, arr, data, fortran, use_out):
    memmap = np_ninja.from_ndarray(tmp_path_factory.mktemp("take") / "a", np.asfortranarray(arr) if fortran else arr)
    n = len(arr)
    indices = data.draw(st.one_of(
        st.lists(st.integers(-n, n - 1), max_size=20),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.builds(slice, st.one_of(st.none(), st.integers(-n, n)), st.one_of(st.none(), st.integers(-n, n)),
                  st.one_of(st.none(), st.integers(-3, 3).filter(bool))),
    ))
    expected = arr[np.asarray(indices, dtype=bool if indices and isinstance(indices[0], bool) else np.int64)] \
        if isinstance(indices, list) else arr[indices]
    out = np.empty_like(expected, order="C") if use_out else None
    result = np_ninja.take(memmap, indices, out=out)
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == arr.dtype and result.flags.c_contiguous and not isinstance(result, np.memmap)
    if use_out:
        assert result is out


def test_take_errors():
    arr = np.arange(12).reshape(4, 3)
    with pytest.raises(IndexError, match="index 4 is out of bounds for a map of length 4"):
        np_ninja.take(arr, [0, 4])
    with pytest.raises(ValueError, match=r"out has shape \(2, 4\), expected \(2, 3\)"):
        np_ninja.take(arr, [0, 1], out=np.empty((2, 4), arr.dtype))
    with pytest.raises(ValueError, match="out has dtype float32"):
        np_ninja.take(arr, [0, 1], out=np.empty((2, 3), np.float32))
    with pytest.raises(TypeError, match="a batch needs"):
        np_ninja.take(arr, 1)
    with pytest.raises(TypeError, match="at least one axis"):
        np_ninja.take(np.float32(1), [0])


def test_verify(tmp_path):
    np_ninja.from_ndarray(tmp_path / "v", np.zeros((4, 2)))
    assert np_ninja.verify(tmp_path / "v") == []
    with open(tmp_path / "v" / "data.ninja", "r+b") as f:
        f.truncate(10)
    assert len(np_ninja.verify(tmp_path / "v")) == 1 and "data.ninja" in np_ninja.verify(tmp_path / "v")[0]
    assert np_ninja.verify(tmp_path / "missing") == [f"no map at {tmp_path / 'missing'}"]


def test_take_of_objects_and_of_an_overlapping_out_is_numpy_take():
    objects = np.array([[1.5, "text"], [2.5, "more"]], dtype=object)
    for _ in range(20):
        assert np_ninja.take(objects, [1, 0, 1]).tolist() == [[2.5, "more"], [1.5, "text"], [2.5, "more"]]
    assert objects.tolist() == [[1.5, "text"], [2.5, "more"]]
    a = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(np_ninja.take(a, [2, 1, 0], out=a), [[4, 5], [2, 3], [0, 1]])


def test_from_generator_takes_verbose_where_090_had_it(tmp_path, capsys):
    np_ninja.from_generator(tmp_path / "g", iter([[1], [2]]), 1, True)
    assert "samples" in capsys.readouterr().err
    with pytest.raises(TypeError, match="verbose"):
        np_ninja.from_generator(tmp_path / "h", iter([[1]]), 1, verbose="yes")


def test_memmap_filename_is_a_str(tmp_path):
    memmap = np_ninja.from_ndarray(tmp_path / "s", np.arange(3))
    assert isinstance(memmap.filename, str) and memmap.filename.endswith("data.ninja")


def test_a_map_opened_read_only_pickles_as_its_folder_and_length(tmp_path):
    rows = np.arange(3000, dtype=np.int64).reshape(1000, 3)
    np_ninja.from_ndarray(tmp_path / "rows", rows)
    m = np_ninja.open_existing(tmp_path / "rows")
    data = pickle.dumps(m)
    assert len(data) < 500  # the folder, not the rows
    np_ninja.extend_dir(tmp_path / "rows", np.ones((5, 3), np.int64))
    again = pickle.loads(data)
    assert isinstance(again, np.memmap) and again.shape == (1000, 3) and np.array_equal(again, rows)
    assert len(pickle.loads(pickle.dumps(again))) == 1000
    view = m[10:20]
    assert len(pickle.dumps(view)) > 240 and np.array_equal(pickle.loads(pickle.dumps(view)), rows[10:20])
    writable = np_ninja.open_existing(tmp_path / "rows", "r+")
    assert len(pickle.dumps(writable)) > 24000  # r+ and c maps pickle their values, as numpy arrays do
    assert type(m + 1) is np.ndarray and type(m[[1, 2]]) is np.ndarray and isinstance(m[1:3], np.memmap)
