"""Maps past 32-bit sizes, made of sparse files so that they take no disk: 64-bit offsets
everywhere, and opening that reads nothing per sample."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mmap_ninja import _meta
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

GIB = 1 << 30


def grow_data(path, rows: int, dtype) -> None:
    """Make a map's data ``rows`` long with a hole, as if large samples had been committed."""
    os.truncate(path / "data.ninja", rows * np.dtype(dtype).itemsize)
    _meta.write_bytes(path / "shape.ninja", _meta.shape_bytes((rows,)))


def test_ragged_map_over_4_gib_with_more_than_2_31_elements(tmp_path):
    path = tmp_path / "big"
    first, second = np.arange(5, dtype=np.int32), np.arange(3, dtype=np.int32).reshape(3, 1)
    RaggedMmap.from_lists(path, [first, second])
    grow_data(path, 2**31 + 100, np.int32)  # 8 GiB of data, > 2**31 elements
    last = np.full((2, 3), -7, dtype=np.int32)
    m = RaggedMmap(path)
    m.extend([last, np.arange(4, dtype=np.int32)])
    m = RaggedMmap(path)
    assert int(m.starts[2]) == 2**31 + 100 and (path / "data.ninja").stat().st_size > 8 * GIB
    np.testing.assert_array_equal(m[2], last)
    np.testing.assert_array_equal(m[-1], np.arange(4))
    np.testing.assert_array_equal(m[0], first)
    batch = m.take([3, 2, 0])
    assert batch.shapes == [(4,), (2, 3), (5,)]
    np.testing.assert_array_equal(batch[1], last)
    assert m.verify() == []


def test_strings_map_over_4_gib(tmp_path):
    path = tmp_path / "big"
    StringsMmap.from_strings(path, ["first", "second"])
    os.truncate(path / "data.ninja", 5 * GIB)
    m = StringsMmap(path)
    m.extend(["past 4 GiB", "ещё"])
    m = StringsMmap(path)
    assert int(m.starts[2]) == 5 * GIB
    assert m[:] == ["first", "second", "past 4 GiB", "ещё"]
    assert m[[3, 0]] == ["ещё", "first"] and m.get_bytes(2) == b"past 4 GiB"


def sparse_index(path, values: dict, rows: int, column: bool = False) -> None:
    """A fixed-shape int64 array of ``rows`` zeros (a hole) but for ``values`` at positions."""
    path.mkdir(parents=True)
    shape = (rows, 1) if column else (rows,)
    (path / "data.ninja").touch()
    os.truncate(path / "data.ninja", rows * 8)
    with open(path / "data.ninja", "r+b") as f:
        for position, value in values.items():
            f.seek(position * 8)
            f.write(np.int64(value).tobytes())
    for name, text in (("dtype.ninja", "int64"), ("order.ninja", "C"), ("type.ninja", "numpy")):
        (path / name).write_text(text)
    _meta.write_bytes(path / "shape.ninja", _meta.shape_bytes(shape))


def test_opening_three_billion_samples_reads_nothing_per_sample(tmp_path):
    n = 3_000_000_000
    path = tmp_path / "many"
    path.mkdir()
    np.arange(10, dtype=np.int16).tofile(path / "data.ninja")
    for name, text in (("dtype.ninja", "int16"), ("order.ninja", "C"), ("type.ninja", "ragged")):
        (path / name).write_text(text)
    _meta.write_bytes(path / "shape.ninja", _meta.shape_bytes((10,)))
    (path / _meta.SHAPES_ARE_FLAT).write_bytes(_meta.int32_bytes(1))
    # every sample is empty but the last, which holds elements 4..9
    sparse_index(path / "starts", {n - 1: 4}, n)
    sparse_index(path / "ends", {n - 1: 10}, n)
    sparse_index(path / "flattened_shapes", {n - 1: 6}, n)
    sparse_index(path / "shapes", {n - 1: 6}, n, column=True)
    m = RaggedMmap(path)
    assert len(m) == n
    np.testing.assert_array_equal(m[-1], np.arange(4, 10))
    assert m[0].shape == (0,) and m[n // 2].shape == (0,)
    assert [s.tolist() for s in m[[n - 1, 7]]] == [[4, 5, 6, 7, 8, 9], []]


def test_batches_whose_total_overflows_raise_memory_error(tmp_path):
    """One sample spanning a 4 TiB sparse file, taken 2**22 times: the total would wrap 64 bits."""
    size = 1 << 42
    path = tmp_path / "huge"
    RaggedMmap.from_lists(path, [np.zeros(1, np.uint8)])
    grow_data(path, size, np.uint8)
    for name, value in (("starts", 0), ("ends", size), ("flattened_shapes", size)):
        with open(path / name / "data.ninja", "r+b") as f:
            f.write(np.int64(value).tobytes())
    with open(path / "shapes" / "data.ninja", "r+b") as f:
        f.write(np.int64(size).tobytes())
    m = RaggedMmap(path)
    assert len(m) == 1 and m[0].shape == (size,)
    with pytest.raises(MemoryError):
        m.take(np.zeros(1 << 22, np.int64))
    strings = tmp_path / "strings"
    StringsMmap.from_strings(strings, ["x"])
    os.truncate(strings / "data.ninja", size)
    with open(strings / "ends" / "data.ninja", "r+b") as f:
        f.write(np.int64(size).tobytes())
    with pytest.raises(MemoryError):
        StringsMmap(strings)[np.zeros(1 << 22, np.int64)]
