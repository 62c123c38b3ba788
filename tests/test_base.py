"""Tests of mmap_ninja.base: Wrapped, batching and the casting rule."""

from __future__ import annotations

import numpy as np
import pytest

import mmap_ninja
from mmap_ninja.base import Wrapped, cast_values, in_batches


def test_wrapped_applies_the_function_lazily_on_a_copy():
    data = [np.array([1, 2, 3]), np.array([-1, 10])]
    calls = []

    def double(sample):
        calls.append(sample)
        sample *= 2  # must not change the data it came from
        return sample

    wrapped = Wrapped(data, wrapper_fn=double)
    assert calls == [] and len(wrapped) == 2
    assert wrapped[1].tolist() == [-2, 20]
    assert data[1].tolist() == [-1, 10]
    assert [s.tolist() for s in wrapped] == [[2, 4, 6], [-2, 20]]
    assert mmap_ninja.Wrapped is Wrapped


def test_wrapped_without_copy_passes_the_item_itself():
    data = [np.array([1])]
    assert Wrapped(data, wrapper_fn=lambda s: s, copy_before_wrapper_fn=False)[0] is data[0]
    assert "wrapper_fn" in repr(Wrapped(data, wrapper_fn=len))


def test_in_batches_splits_any_iterable():
    assert list(in_batches(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(in_batches([], 3)) == []
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="batch_size"):
            list(in_batches([1], bad))


@pytest.mark.parametrize("values, dtype", [
    (np.array([1, 2], np.int64), np.uint8),
    (np.array([True]), np.int8),
    (np.array([1.0, -2.0]), np.int16),
    (np.array([1.5]), np.float32),
    (np.array([3], np.int64), np.float32),
    (np.array([1 + 2j], np.complex128), np.complex64),
    (np.array([2**63], np.uint64), np.uint64),
    (np.array([], np.float64), np.int8),
])
def test_cast_values_allows_lossless_and_float_rounding(values, dtype):
    out = cast_values(values, np.dtype(dtype), "x")
    assert out.dtype == dtype
    np.testing.assert_allclose(out.astype(np.complex128), values.astype(np.complex128), rtol=1e-6)


@pytest.mark.parametrize("values, dtype, message", [
    (np.array([256]), np.uint8, r"values in \[256, 256\] do not fit in uint8"),
    (np.array([-1]), np.uint32, "do not fit"),
    (np.array([0.5]), np.int64, "fractions"),
    (np.array([np.nan]), np.int64, "non-finite"),
    (np.array([1j]), np.float64, "cannot be stored as float64"),
    (np.array(["a"]), np.int64, "cannot be stored"),
    (np.array([2**63], np.uint64), np.int64, "do not fit"),
])
def test_cast_values_refuses_losses(values, dtype, message):
    with pytest.raises(TypeError, match=message):
        cast_values(values, np.dtype(dtype), "x")


def test_reset_map_dir_removes_a_map_and_nothing_else(tmp_path):
    from mmap_ninja.base import reset_map_dir
    from mmap_ninja.ragged import RaggedMmap

    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "my_annotations.json").write_text("{}")
    (tmp_path / "starts").mkdir()
    (tmp_path / "starts" / "notes.txt").write_text("mine")
    (tmp_path / "results.ninja.bak").write_text("mine too")
    reset_map_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["my_annotations.json", "notes.txt", "results.ninja.bak",
                                                          "shapes", "starts"]
    RaggedMmap.from_lists(tmp_path / "m", [np.zeros((2, 2))])
    (tmp_path / "m" / "keep.txt").write_text("x")
    reset_map_dir(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["keep.txt", "writer.lock"]


def test_dtypes_without_bytes_are_refused():
    from mmap_ninja.base import stored_dtype

    for dtype in ("S0", "U0", "V0"):
        with pytest.raises(TypeError, match="no bytes"):
            stored_dtype(dtype)
    assert stored_dtype(">f8") == np.dtype("float64")


def test_a_build_without_a_progress_bar_starts_no_thread(tmp_path):
    import threading

    from mmap_ninja.ragged import RaggedMmap

    before = threading.active_count()
    RaggedMmap.from_lists(tmp_path / "r", [np.arange(3), np.arange(2)])
    RaggedMmap.from_generator(tmp_path / "g", iter([np.arange(3)]), batch_size=1)
    assert threading.active_count() == before  # a process with no other thread may still fork workers
