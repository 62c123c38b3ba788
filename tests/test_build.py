"""Tests of mmap_ninja._build, the compiled packing and writing of the samples of ragged maps:
every kind of sample (arrays taken as they are, lists and tuples of Python numbers converted in
the compiled pass, anything else through the general path) is stored exactly as the general
rule (``np.asarray``, then ``base.cast_values`` into the map's dtype) stores it, refused with the
same error, and written with the checksums ``verify`` expects."""

from __future__ import annotations

import gc
import os
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mmap_ninja
from mmap_ninja import _build, _storage
from mmap_ninja._format.ragged import as_array
from mmap_ninja.base import cast_values
from mmap_ninja.ragged import RaggedMmap

DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
          np.float16, np.float32, np.float64, np.complex64]


def reference(sample, dtype, index):
    """Sample ``index`` as the general rule stores it in a map of ``dtype`` (or the error it
    raises)."""
    return cast_values(np.asarray(sample), np.dtype(dtype), f"sample {index}")


def outcome(fn):
    try:
        return fn(), None
    except (TypeError, ValueError) as exc:
        return None, (type(exc), str(exc))


def assert_stored_as(m, samples, dtype):
    assert len(m) == len(samples)
    assert m.dtype == np.dtype(dtype)
    for i, sample in enumerate(samples):
        expected = reference(sample, dtype, i)
        actual = np.asarray(m[i])  # a 0-d sample reads back as a Python scalar
        assert actual.shape == expected.shape
        assert actual.dtype == np.dtype(dtype) or not expected.ndim
        np.testing.assert_array_equal(actual, expected)


# -- samples of every kind ------------------------------------------------------------------

python_numbers = st.one_of(st.integers(-300, 300), st.integers(-(2 ** 70), 2 ** 70), st.booleans(),
                           st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, -2.0, 0.5, 1e39]))


def samples_for(dtype):
    """Samples a map of ``dtype`` may be given: arrays of its dtype and of others, C-contiguous
    or not, of rank 0 to 3, empty ones, lists and tuples of Python numbers (empty ones
    included), Python scalars and nested lists."""
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
    own = hnp.arrays(dtype=dtype, shape=shapes)
    other = hnp.arrays(dtype=st.sampled_from([np.int8, np.int64, np.float64, np.bool_, np.uint8]), shape=shapes)
    strided = hnp.arrays(dtype=dtype, shape=st.tuples(st.integers(0, 8), st.integers(1, 3))).map(lambda a: a[::2].T)
    numbers = st.lists(python_numbers, max_size=9)
    small = st.lists(st.integers(0, 1), max_size=9)
    return st.one_of(own, own, other, strided, numbers, small, numbers.map(tuple), st.integers(0, 1),
                     st.lists(st.lists(st.integers(0, 1), min_size=2, max_size=2), max_size=3))


def _storable(sample, dtype):
    return outcome(lambda: reference(sample, dtype, 0))[1] is None


mixed_batches = st.sampled_from(DTYPES).flatmap(
    lambda dtype: st.tuples(st.just(dtype), st.lists(samples_for(dtype), max_size=12)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mixed_batches)
def test_packing_stores_every_sample_as_the_general_rule_or_raises_its_error(case):
    dtype, samples = case
    expected = [outcome(lambda i=i, s=s: reference(s, dtype, i)) for i, s in enumerate(samples)]
    first_error = next((error for _, error in expected if error is not None), None)
    packed, error = outcome(lambda: _build.pack(samples, np.dtype(dtype), 0, as_array))
    assert error == first_error
    if error is not None:
        return
    arrays = [array for array, _ in expected]
    assert len(packed) == len(samples)
    assert packed.dtype == np.dtype(dtype)
    assert packed.counts.tolist() == [a.size for a in arrays]
    assert packed.ndims.tolist() == [a.ndim for a in arrays]
    assert packed.dims.tolist() == [d for a in arrays for d in a.shape]
    assert packed.flat == all(a.ndim <= 1 for a in arrays)
    if packed.flat:
        assert packed.lengths.tolist() == [a.shape[0] if a.ndim else 0 for a in arrays]
    values = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.empty(0, dtype)
    assert packed.size == values.size and packed.nbytes == values.nbytes
    np.testing.assert_array_equal(packed.values(), values)
    assert packed.values().dtype == np.dtype(dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mixed_batches, batch_size=st.integers(1, 5), data=st.data())
def test_build_reopen_gives_the_samples_as_the_general_rule_stores_them(tmp_path_factory, case, batch_size, data):
    dtype, samples = case
    samples = [s for s in samples if _storable(s, dtype)]
    root = tmp_path_factory.mktemp("build")
    m = RaggedMmap.from_lists(root / "lists", samples, dtype=dtype)
    assert_stored_as(RaggedMmap(root / "lists"), samples, dtype)
    assert m.verify(deep=True) == []
    RaggedMmap.from_generator(root / "gen", iter(samples), batch_size, dtype=dtype)
    assert_stored_as(RaggedMmap(root / "gen"), samples, dtype)
    assert RaggedMmap(root / "gen").verify(deep=True) == []
    split = data.draw(st.integers(0, len(samples)))
    grown = RaggedMmap.from_lists(root / "grown", samples[:split], dtype=dtype)
    grown.extend(samples[split:])
    assert_stored_as(RaggedMmap(root / "grown"), samples, dtype)
    assert grown.verify(deep=True) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=st.lists(st.one_of(st.lists(st.integers(-(2 ** 40), 2 ** 40), max_size=8),
                                  hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))),
                        min_size=1, max_size=10))
def test_without_a_dtype_the_map_takes_the_first_samples(tmp_path_factory, samples):
    out = tmp_path_factory.mktemp("first") / "m"
    m = RaggedMmap.from_lists(out, samples)
    dtype = np.asarray(samples[0]).dtype
    assert m.dtype == dtype
    assert_stored_as(RaggedMmap(out), samples, dtype)


def test_python_lists_convert_as_numpy_would_at_the_edges_of_each_dtype(tmp_path):
    cases = {
        np.int8: [[-128, 127, True, False], [], (5, -5)],
        np.uint8: [[0, 255], [True]],
        np.int32: [[-(2 ** 31), 2 ** 31 - 1]],
        np.uint32: [[2 ** 32 - 1, 0]],
        np.int64: [[-(2 ** 63), 2 ** 63 - 1]],
        np.uint64: [[2 ** 63 - 1], [2 ** 64 - 1]],  # the second through the general path
        np.bool_: [[True, False, 1, 0]],
        np.float32: [[0.1, 2 ** 24, -(2 ** 24), 2 ** 24 + 1, 3.4e38, float("nan"), float("-inf")], [1, 0.5]],
        np.float64: [[0.1, 2 ** 53, 2 ** 53 + 1, -(2 ** 63), True]],
    }
    for dtype, samples in cases.items():
        m = RaggedMmap.from_lists(tmp_path / np.dtype(dtype).name, samples, dtype=dtype)
        assert_stored_as(m, samples, dtype)


@pytest.mark.parametrize("dtype, bad, match", [
    (np.int8, [1, 128], r"sample 1: values in \[1, 128\] do not fit in int8"),
    (np.uint8, [-1], r"sample 1: values in \[-1, -1\] do not fit in uint8"),
    (np.int32, [0.5], "sample 1: float64 values with fractions"),
    (np.int64, [2 ** 70], "sample 1: object values cannot be stored as int64"),
    (np.bool_, [2], "sample 1: only 0 and 1 can be stored as bool"),
    (np.float32, [1e39], "sample 1: the value 1e[+]?39 does not fit in float32"),
    (np.int32, ["a"], "sample 1: <U1 values cannot be stored as int32"),
])
def test_a_list_that_cannot_be_stored_is_named_and_the_map_is_unchanged(tmp_path, dtype, bad, match):
    out = tmp_path / "m"
    RaggedMmap.from_lists(out, [[1, 0]], dtype=dtype)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    with pytest.raises(TypeError, match=match):
        RaggedMmap.from_lists(out, [[1], bad, [0]], dtype=dtype)
    with pytest.raises(TypeError, match=match):
        RaggedMmap.from_generator(out, iter([[1], bad, [0]]), 1, dtype=dtype)
    with pytest.raises(TypeError, match=match.replace("sample 1", "sample 2")):
        RaggedMmap(out).extend([[0], bad])
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before
    assert [sample.tolist() for sample in RaggedMmap(out)] == [[1, 0]]


# -- writing --------------------------------------------------------------------------------

def test_large_and_small_samples_cross_the_write_buffer_with_their_checksum(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [3, (1 << 18) // 8, 0, 5, (1 << 20) // 8 + 1, 7, (1 << 18) // 8 - 1] + [100] * 3000 + [(3 << 20) // 8]
    samples = [rng.integers(-1000, 1000, size, dtype=np.int64) for size in sizes]
    samples[5] = samples[5].tolist()
    m = RaggedMmap.from_lists(tmp_path / "m", samples)
    assert_stored_as(m, samples, np.int64)
    assert m.verify(deep=True) == []
    m.extend(samples[::-1])
    assert_stored_as(RaggedMmap(tmp_path / "m"), samples + samples[::-1], np.int64)
    assert m.verify(deep=True) == []


def test_tiny_and_empty_samples(tmp_path):
    samples = [np.array([7], dtype=np.int32)] * 5000 + [np.empty(0, np.int32)] * 100 + [[1, 2], [], ()]
    m = RaggedMmap.from_lists(tmp_path / "tiny", samples)
    assert_stored_as(m, samples, np.int32)
    empty = RaggedMmap.from_lists(tmp_path / "empty", [[], np.empty(0, np.int16)], dtype=np.int16)
    assert [s.shape for s in empty] == [(0,), (0,)]
    assert (tmp_path / "empty" / "data.ninja").stat().st_size == 1  # the byte mmap_ninja 0.9.0 needs
    assert empty.verify(deep=True) == []


def test_n_d_samples_after_flat_ones_in_later_batches(tmp_path):
    samples = [[1, 2], np.arange(3), np.int64(4), np.arange(6).reshape(2, 3), [[1], [2]],
               np.arange(24).reshape(2, 3, 4)]
    for batch_size in (1, 2, 3, 6):
        m = RaggedMmap.from_generator(tmp_path / f"b{batch_size}", iter(samples), batch_size)
        assert not m.shapes_are_flat
        assert_stored_as(m, samples, np.int64)
        assert m.verify(deep=True) == []


def test_packed_samples_stay_whole_when_the_callers_list_and_arrays_go():
    samples = [np.arange(5, dtype=np.int32), [1, 2, 3], np.arange(4, dtype=np.int64)]
    packed = _build.pack(samples, np.dtype(np.int32), 0, as_array)
    samples.clear()
    gc.collect()
    np.testing.assert_array_equal(packed.values(), [0, 1, 2, 3, 4, 1, 2, 3, 0, 1, 2, 3])


def test_pack_reports_progress_for_every_sample():
    class Bar:
        updates: list = []

        def update(self, k):
            self.updates.append(k)

    bar = Bar()
    _build.pack([[1]] * 40_000, np.dtype(np.int64), 0, as_array, bar)
    assert sum(bar.updates) == 40_000 and len(bar.updates) > 1


def test_pack_refuses_samples_without_a_general_path():
    with pytest.raises(TypeError, match="made by pack"):
        _build.PackedSamples()
    with pytest.raises(TypeError, match="sample 3: expected a C-contiguous array of int32"):
        _build.pack([np.arange(2, dtype=np.float64)], np.dtype(np.int32), 3)
    with pytest.raises(TypeError, match="sample 0: the conversion gave no C-contiguous array of int32"):
        _build.pack([np.arange(2, dtype=np.float64)], np.dtype(np.int32), 0, lambda s, dtype, i: s)


@pytest.mark.parametrize("sizes", [[3, 0, 5], [100] * 2000, [(1 << 18) // 8] * 3 + [7] * 50 + [(3 << 20) // 8]])
def test_write_to_writes_the_values_from_an_offset_and_returns_their_crc(tmp_path, sizes):
    rng = np.random.default_rng(1)
    samples = [rng.integers(-5, 5, size) for size in sizes]
    packed = _build.pack(samples, np.dtype(np.int64), 0, as_array)
    values = packed.values().tobytes()
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    fd = os.open(path, os.O_WRONLY)
    try:
        assert packed.write_to(fd, 7) == zlib.crc32(values)
        assert packed.write_to(fd, 7 + len(values), False) is None
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 7 + values + values


@pytest.mark.parametrize("size", [10, 1 << 20])
def test_a_failed_write_raises_and_leaves_no_thread(tmp_path, size):
    packed = _build.pack([np.arange(size)], np.dtype(np.int64), 0, as_array)
    threads = threading.active_count()
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            packed.write_to(fd, 0)
    finally:
        os.close(fd)
    assert threading.active_count() == threads


def test_a_build_is_flushed_whole_once_before_the_swap(tmp_path, monkeypatch):
    flushed = []
    real = _storage.locking._fsync_path

    def fsync_path(path, directory=False):
        parts = Path(path).parts
        if not directory and any(part.endswith(".building") for part in parts):
            inside = next(k for k, part in enumerate(parts) if part.endswith(".building"))
            flushed.append(Path(*parts[inside + 1:]))  # relative to the folder of the build
        real(path, directory)

    monkeypatch.setattr(_storage.locking, "_fsync_path", fsync_path)
    samples = [np.arange(k % 5) for k in range(100)] + [np.zeros((2, 2), dtype=np.int64)]
    RaggedMmap.from_generator(tmp_path / "m", iter(samples), batch_size=10)
    files = {p.relative_to(tmp_path / "m") for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert set(flushed) == files
    assert len(flushed) == len(files)  # each once, not once per batch
    flushed.clear()
    with mmap_ninja.durability(False):
        RaggedMmap.from_generator(tmp_path / "n", iter(samples), batch_size=10)
    assert flushed == []
