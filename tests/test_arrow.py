"""Tests of mmap_ninja.arrow: Arrow arrays and tables, Parquet files and Hugging Face datasets
into maps and maps into Arrow arrays, with the real pyarrow and datasets, and the command
``mmap-ninja convert DATA.parquet``."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import file_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

import mmap_ninja
from mmap_ninja import arrow, durability
from mmap_ninja import numpy as np_ninja
from mmap_ninja.cli import main
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.sharded import ShardedMmap, write_part
from mmap_ninja.string import StringsMmap
from mmap_ninja.table import TableMmap

NUMBER_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
                pa.float16(), pa.float32(), pa.float64(), pa.bool_()]


def values_of(type_: pa.DataType, count: int, seed: int = 0) -> np.ndarray:
    """``count`` values of the Arrow number type ``type_`` as numpy, spanning its range."""
    dtype = np.dtype(type_.to_pandas_dtype())
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, count).astype(bool)
    if dtype.kind == "f":
        return rng.standard_normal(count).astype(dtype) * 100
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)


def list_array(samples, type_: pa.DataType, large: bool = False) -> pa.Array:
    return pa.array([np.asarray(s).tolist() for s in samples], (pa.large_list if large else pa.list_)(type_))


def siblings(path):
    """What the folder of ``path`` holds: a build left behind would show."""
    return sorted(os.listdir(path.parent))


def assert_unchanged_after(call, out, exc, match):
    """``call()`` raises ``exc`` matching ``match`` and leaves the map at ``out`` and its folder
    as they were."""
    before, around = file_bytes(out), siblings(out)
    with pytest.raises(exc, match=match):
        call()
    assert file_bytes(out) == before and siblings(out) == around


# -- columns into maps -------------------------------------------------------------------------

def test_importing_the_package_imports_neither_pyarrow_nor_datasets():
    code = ("import sys, mmap_ninja, mmap_ninja.cli, mmap_ninja.sharded, mmap_ninja.generic; "
            "print(sorted(m for m in ('pyarrow', 'datasets', 'mmap_ninja.arrow') if m in sys.modules)); "
            "import mmap_ninja.arrow; print('datasets' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "False"]


@pytest.mark.parametrize("type_", NUMBER_TYPES, ids=str)
def test_every_number_type_round_trips(tmp_path, type_):
    values = values_of(type_, 40)
    samples = [values[a:b] for a, b in [(0, 3), (3, 3), (3, 17), (17, 40)]]
    m = arrow.from_arrow(tmp_path / "ragged", list_array(samples, type_))
    assert isinstance(m, RaggedMmap) and m.dtype == values.dtype and len(m) == 4
    for got, want in zip(m, samples):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert arrow.to_arrow(m).equals(list_array(samples, type_, large=True))
    rows = arrow.from_arrow(tmp_path / "numpy", pa.array(values, type_))
    assert isinstance(rows, np.memmap) and rows.dtype == values.dtype and np.array_equal(rows, values)
    assert arrow.to_arrow(rows).equals(pa.array(values, type_))
    fixed = arrow.from_arrow(tmp_path / "fixed", pa.array(values.reshape(10, 2, 2).tolist(),
                                                          pa.list_(pa.list_(type_, 2), 2)))
    assert fixed.shape == (10, 2, 2) and np.array_equal(fixed, values.reshape(10, 2, 2))
    assert arrow.to_arrow(fixed).to_pylist() == values.reshape(10, 2, 2).tolist()
    # the same column through a real Parquet file and a real HF dataset
    table = pa.table({"x": list_array(samples, type_), "n": pa.array(values[:4], type_)})
    pq.write_table(table, tmp_path / "x.parquet")
    for name, data in [("parquet", pq.ParquetFile(tmp_path / "x.parquet")), ("hf", datasets.Dataset(table))]:
        m = arrow.from_arrow(tmp_path / name, data, "x")
        assert m.dtype == values.dtype and len(m) == 4, name
        assert all(got.dtype == want.dtype and np.array_equal(got, want) for got, want in zip(m, samples)), name
        assert arrow.to_arrow(m).equals(list_array(samples, type_, large=True)), name
        numbers = arrow.from_arrow(tmp_path / f"{name}-n", data, "n")
        assert numbers.dtype == values.dtype and np.array_equal(numbers, values[:4]), name


def test_slices_chunks_and_offsets_are_honoured(tmp_path):
    samples = [np.arange(k, dtype=np.int32) * k for k in range(12)]
    column = list_array(samples, pa.int32())
    sliced = column.slice(3, 6)  # array offset 3
    m = arrow.from_arrow(tmp_path / "sliced", sliced)
    assert [s.tolist() for s in m] == [s.tolist() for s in samples[3:9]]
    chunked = pa.chunked_array([column.slice(0, 2), column.slice(2, 0), column.slice(2, 7), column.slice(9)])
    m = arrow.from_arrow(tmp_path / "chunked", chunked, batch_size=3)  # chunks cut into commits of 3 rows
    assert [s.tolist() for s in m] == [s.tolist() for s in samples]
    # offsets that do not start at 0, into a values array that is itself a slice
    values = pa.array(np.arange(100, dtype=np.int16)).slice(10)
    lists = pa.LargeListArray.from_arrays(pa.array([5, 7, 7, 20], pa.int64()), values)
    m = arrow.from_arrow(tmp_path / "offsets", lists)
    assert [s.tolist() for s in m] == [[15, 16], [], list(range(17, 30))]
    strings = pa.array(["zero", "one", "два", "", "四"]).slice(1, 3)
    assert arrow.from_arrow(tmp_path / "strings", strings)[:] == ["one", "два", ""]
    fixed = pa.array(np.arange(12).reshape(6, 2).tolist(), pa.list_(pa.int64(), 2)).slice(2, 3)
    assert np.array_equal(arrow.from_arrow(tmp_path / "fixed", fixed), np.arange(4, 10).reshape(3, 2))


def test_values_are_written_from_arrows_buffers(tmp_path):
    column = list_array([np.arange(5)] * 1000, pa.int64())
    batch = arrow._ragged_batch(column.slice(10), 10, arrow._layout(column.type, "x"), np.dtype(np.int64))
    assert batch.values.ctypes.data == column.values.buffers()[1].address + 10 * 5 * 8  # a view, no copy
    assert batch.counts.tolist() == [5] * 990 and batch.flat
    strings = pa.array(["abc", "de", "f"]).slice(1)
    payload, offsets = arrow._string_payload(strings, 1)
    assert payload.ctypes.data == strings.buffers()[2].address + 3 and offsets.tolist() == [0, 2, 3]


def test_n_d_samples(tmp_path):
    samples = [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((0, 3), np.float32),
               np.ones((4, 3), np.float32)]
    as_lists = [s.tolist() for s in samples]
    for type_ in (pa.list_(pa.list_(pa.float32())), pa.list_(pa.list_(pa.float32(), 3)),
                  pa.large_list(pa.large_list(pa.float32()))):
        m = arrow.from_arrow(tmp_path / "m", pa.array(as_lists, type_))
        assert not m.shapes_are_flat
        assert [s.shape for s in m] == [(2, 3), (0, 3 if pa.types.is_fixed_size_list(type_.value_type) else 0),
                                        (4, 3)]
        assert [s.tolist() for s in m] == as_lists
        assert arrow.to_arrow(m).to_pylist() == as_lists  # the sample of no rows fits the others' shape
    back = arrow.to_arrow(RaggedMmap.from_lists(tmp_path / "lists", samples))
    assert back.type == pa.large_list(pa.list_(pa.float32(), 3)) and back.to_pylist() == as_lists
    # three axes, the last fixed; a sliced column
    cubes = [np.arange(k * 4, dtype=np.uint8).reshape(k, 2, 2) for k in range(5)]
    column = pa.array([c.tolist() for c in cubes], pa.list_(pa.list_(pa.list_(pa.uint8(), 2)))).slice(1)
    m = arrow.from_arrow(tmp_path / "cubes", column)
    assert [s.shape for s in m] == [(k, 2, 2) for k in range(1, 5)]
    assert all(np.array_equal(a, b) for a, b in zip(m, cubes[1:]))
    assert arrow.to_arrow(m).to_pylist() == [c.tolist() for c in cubes[1:]]


def test_n_d_samples_must_be_rectangular_and_share_their_trailing_shape(tmp_path):
    ragged_inner = pa.array([[[1, 2], [3, 4]], [[1], [2, 3]]], pa.list_(pa.list_(pa.int64())))
    with pytest.raises(ValueError, match=r"row 1: its lists along axis 1 have different lengths \(1 and 2\)"):
        arrow.from_arrow(tmp_path / "bad", ragged_inner)
    assert not (tmp_path / "bad").exists()
    m = RaggedMmap.from_lists(tmp_path / "mixed", [np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match=r"sample 1 has shape \(2, 4\) and sample 0 \(2, 3\)"):
        arrow.to_arrow(m)
    m = RaggedMmap.from_lists(tmp_path / "ranks", [np.zeros((2, 3)), np.zeros(3)])
    with pytest.raises(ValueError, match="sample 1 has 1 axes and sample 0 2"):
        arrow.to_arrow(m)
    with pytest.raises(ValueError, match="an axis of size 0 past the first"):
        arrow.to_arrow(np_ninja.from_ndarray(tmp_path / "flat", np.zeros((3, 0))))
    m = RaggedMmap.from_lists(tmp_path / "scalars", [np.arange(3), 7])
    with pytest.raises(ValueError, match="sample 1 is a scalar"):
        arrow.to_arrow(m)


def test_strings(tmp_path):
    texts = ["plain", "", "Привет", "日本語", "emoji 🙂", "x" * 1000]
    for column in (pa.array(texts), pa.array(texts, pa.large_string()),
                   pa.array(texts).dictionary_encode(), pa.array(texts, pa.string_view())):
        m = arrow.from_arrow(tmp_path / "s", column)
        assert isinstance(m, StringsMmap) and m[:] == texts
    back = arrow.to_arrow(m)
    assert back.type == pa.large_string() and back.to_pylist() == texts
    compressed = arrow.from_arrow(tmp_path / "z", pa.array(texts), zstd_level=3)
    assert compressed.codec.compressed and compressed[:] == texts and arrow.to_arrow(compressed).to_pylist() == texts
    invalid = pa.StringArray.from_buffers(1, pa.py_buffer(np.array([0, 2], np.int32)), pa.py_buffer(b"\xff\xfe"))
    with pytest.raises(ValueError, match="rows 0 to 0: .*UTF8"):
        arrow.from_arrow(tmp_path / "invalid", invalid)


def test_tables_batches_readers_and_streams(tmp_path):
    table = pa.table({"tokens": list_array([np.arange(k) for k in range(7)], pa.int64()),
                      "text": [f"doc {k}" for k in range(7)], "label": np.arange(7, dtype=np.int8)})
    tokens = arrow.from_arrow(tmp_path / "t", table, column="tokens")
    assert [len(s) for s in tokens] == list(range(7))
    assert arrow.from_arrow(tmp_path / "b", table.to_batches()[0], column="text")[6] == "doc 6"
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=2))
    assert arrow.from_arrow(tmp_path / "r", reader, column="label").tolist() == list(range(7))

    class Stream:  # another library's table, seen through the Arrow PyCapsule interface
        def __arrow_c_stream__(self, requested_schema=None):
            return table.__arrow_c_stream__(requested_schema)

    assert arrow.from_arrow(tmp_path / "c", Stream(), column="text")[:2] == ["doc 0", "doc 1"]
    points = pa.array([{"xy": [1, 2], "name": "a"}, {"xy": [3], "name": "b"}])
    assert [s.tolist() for s in arrow.from_arrow(tmp_path / "f", points.slice(1), column="xy")] == [[3]]
    assert arrow.map_kind(table, "tokens") == "ragged" and arrow.map_kind(table, "label") == "numpy"


def test_empty_inputs_make_empty_maps_that_know_their_type(tmp_path):
    m = arrow.from_arrow(tmp_path / "r", pa.array([], pa.list_(pa.int16())))
    assert isinstance(m, RaggedMmap) and len(m) == 0 and m.dtype == np.int16
    assert arrow.to_arrow(m).equals(pa.array([], pa.large_list(pa.int16())))
    m = arrow.from_arrow(tmp_path / "c", pa.chunked_array([], pa.list_(pa.float32())))
    assert len(m) == 0 and m.dtype == np.float32
    s = arrow.from_arrow(tmp_path / "s", pa.table({"text": pa.array([], pa.string())}))
    assert isinstance(s, StringsMmap) and len(s) == 0 and len(arrow.to_arrow(s)) == 0
    rows = arrow.from_arrow(tmp_path / "n", pa.array([], pa.list_(pa.uint8(), 3)))
    assert rows.shape == (0, 3) and rows.dtype == np.uint8
    assert arrow.to_arrow(rows).type == pa.list_(pa.uint8(), 3)
    samples = [[], [[]], [[], []]]  # samples with no element, of 1 and 2 axes
    assert [s.tolist() for s in arrow.from_arrow(tmp_path / "e", pa.array(samples[:1], pa.list_(pa.int8())))] == [[]]
    m = arrow.from_arrow(tmp_path / "e2", pa.array(samples[1:], pa.list_(pa.list_(pa.int8()))))
    assert [s.shape for s in m] == [(1, 0), (2, 0)]


def test_nulls_are_refused_naming_the_row_and_leave_the_map_as_it_was(tmp_path):
    out = tmp_path / "m"
    RaggedMmap.from_lists(out, [np.arange(3)])
    cases = [
        (pa.array([[1], [2], None, [3]], pa.list_(pa.int64())), "row 2: is null"),
        (pa.array([[1], [2, None]], pa.list_(pa.int64())).slice(1), "row 0: holds a null value"),
        (pa.array([[[1]], [[2], None]], pa.list_(pa.list_(pa.int64()))), "row 1: holds a null list"),
        (pa.array([[[1, 2]], [[3, 4]], [[5, None]]], pa.list_(pa.list_(pa.int64(), 2))), "row 2: holds a null value"),
        (pa.array(["a", None]), "row 1: is null"),
        (pa.array([1.0, 2.0, None]), "row 2: is null"),
        (pa.array([[1, 2], None], pa.list_(pa.int64(), 2)), "row 1: is null"),
        (pa.array([[1, 2], [3, None]], pa.list_(pa.int64(), 2)), "row 1: is null or holds a null"),
    ]
    for column, message in cases:
        assert_unchanged_after(lambda column=column: arrow.from_arrow(out, column), out, ValueError, message)
    # a null past the first commit: the build is dropped whole
    late = pa.chunked_array([pa.array([[1]] * 5, pa.list_(pa.int64())), pa.array([[2], None], pa.list_(pa.int64()))])
    assert_unchanged_after(lambda: arrow.from_arrow(out, late, batch_size=2), out, ValueError, "row 6: is null")
    assert arrow.from_arrow(tmp_path / "filled", pc.fill_null(pa.array(["a", None]), "")) [:] == ["a", ""]


def test_what_no_map_holds_is_refused_and_leaves_the_map_as_it_was(tmp_path):
    out = tmp_path / "m"
    StringsMmap.from_strings(out, ["kept"])
    table = pa.table({"a": [1], "b": ["x"]})
    for data, exc, message in [
        (table.select([]), ValueError, "has no column"),
        ((table, "c"), ValueError, r"has no column 'c'; its columns: 'a', 'b'"),
        (pa.array([b"\x00"]), TypeError, "binary values cannot be stored"),
        (pa.array([["a"]]), TypeError, "the lists must hold numbers"),
        (pa.array([{"a": 1}]), TypeError, "struct"),
        (pa.array(np.array(["2020-01-01"], "datetime64[s]")), TypeError, "timestamp"),
        (pa.array([[[1]]], pa.list_(pa.list_(pa.int64()), 1)), TypeError, "fixed-size lists of variable-size"),
        (pa.array([1]), ValueError, "column='x' picks a column"),
        ([[1, 2]], TypeError, "not a list"),
        (datasets.DatasetDict({"train": datasets.Dataset.from_dict({"a": [1]})}), TypeError, r"data\['train'\]"),
    ]:
        if isinstance(data, tuple):
            data, column = data
        else:
            column = "x" if message.startswith("column=") else None
        assert_unchanged_after(lambda data=data, column=column: arrow.from_arrow(out, data, column), out, exc, message)
    with pytest.raises(ValueError, match="zstd_level compresses strings"):
        arrow.from_arrow(out, pa.array([1]), zstd_level=3)


# -- Hugging Face datasets and Parquet ---------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dataset():
    rows = 50
    return datasets.Dataset.from_dict({
        "input_ids": [list(range(k, k + k % 6)) for k in range(rows)],
        "text": [f"text number {k} ✓" for k in range(rows)],
        "label": list(range(rows)),
    })


def test_hf_datasets_in_the_order_of_their_indices_mapping(tmp_path, hf_dataset):
    m = arrow.from_arrow(tmp_path / "all", hf_dataset, column="input_ids")
    assert [s.tolist() for s in m] == hf_dataset["input_ids"]
    whole = arrow.from_arrow(tmp_path / "x", hf_dataset)  # every column: a table
    assert isinstance(whole, TableMmap) and whole["text"][:] == hf_dataset["text"]
    reordered = (hf_dataset.select(range(40, 3, -1)).shuffle(seed=3)
                 .filter(lambda row: row["label"] % 3 != 0, load_from_cache_file=False))
    assert reordered._indices is not None  # the rows are a mapping over the original table
    expected = reordered["label"]
    assert expected != sorted(expected) and len(expected) < 37
    ids = arrow.from_arrow(tmp_path / "ids", reordered, column="input_ids", batch_size=7)
    assert [s.tolist() for s in ids] == reordered["input_ids"]
    assert arrow.from_arrow(tmp_path / "text", reordered, column="text")[:] == reordered["text"]
    assert arrow.from_arrow(tmp_path / "label", reordered, column="label").tolist() == expected
    assert arrow.from_arrow(tmp_path / "reordered", reordered, batch_size=7)["label"].tolist() == expected
    grids = datasets.Dataset.from_dict({"grid": [np.full((k, 3), k, np.int32) for k in range(1, 4)]},
                                       features=datasets.Features({"grid": datasets.Array2D((None, 3), "int32")}))
    m = arrow.from_arrow(tmp_path / "grid", grids.select([2, 0]))
    assert [s.shape for s in m] == [(3, 3), (1, 3)] and m[0].dtype == np.int32 and int(m[0][0, 0]) == 3


def test_parquet_files_are_read_row_group_by_row_group(tmp_path):
    path = tmp_path / "data.parquet"
    samples = [np.arange(k % 9, dtype=np.uint16) + k for k in range(500)]
    pq.write_table(pa.table({"tokens": list_array(samples, pa.uint16()), "text": [str(k) for k in range(500)]}),
                   path, row_group_size=120)
    parquet = pq.ParquetFile(path)
    assert parquet.num_row_groups == 5
    m = arrow.from_arrow(tmp_path / "m", parquet, column="tokens", batch_size=50)
    assert len(m) == 500 and all(np.array_equal(a, b) for a, b in zip(m, samples))
    m = arrow.extend_from_arrow(tmp_path / "m", pq.ParquetFile(path), column="tokens")
    assert len(m) == 1000 and np.array_equal(m[999], samples[499])
    with pytest.raises(ValueError, match="the Parquet file has 2 columns"):  # a map holds one
        arrow.extend_from_arrow(tmp_path / "m", parquet)
    both = arrow.from_arrow(tmp_path / "x", parquet, batch_size=50)  # every column: a table
    assert both["text"][499] == "499" and np.array_equal(both[123]["tokens"], samples[123])


# -- maps into Arrow -----------------------------------------------------------------------------

def test_to_arrow_maps_the_files_without_copying_and_keeps_them_mapped(tmp_path):
    samples = [np.arange(k, dtype=np.int32) for k in range(1, 50)]
    m = RaggedMmap.from_lists(tmp_path / "r", samples)
    column = arrow.to_arrow(m)
    assert column.type == pa.large_list(pa.int32())
    assert column.values.buffers()[1].address == m.memmap.ctypes.data  # the mapped file itself
    assert column.offsets.to_numpy().tolist() == [0] + np.cumsum([len(s) for s in samples]).tolist()
    texts = [f"line {k}" for k in range(100)]
    s = StringsMmap.from_strings(tmp_path / "s", texts, mode="rb")
    strings = arrow.to_arrow(s)
    assert strings.buffers()[2].address == np.frombuffer(s.buffer, np.uint8).ctypes.data
    rows = np_ninja.from_ndarray(tmp_path / "n", np.arange(24, dtype=np.float64).reshape(6, 2, 2))
    fixed = arrow.to_arrow(rows)
    assert fixed.type == pa.list_(pa.list_(pa.float64(), 2), 2)
    assert fixed.values.values.buffers()[1].address == rows.ctypes.data
    m.close()
    s.close()
    del m, s, rows
    gc.collect()
    assert column.to_pylist() == [x.tolist() for x in samples]  # still mapped
    assert strings.to_pylist() == texts and fixed.to_pylist() == np.arange(24).reshape(6, 2, 2).tolist()


def test_to_arrow_copies_once_where_the_samples_are_not_back_to_back(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "r", [np.arange(3), np.arange(4), np.arange(5)], mode="r+")
    m[0] = [7, 8, 9]  # the replaced sample moves past the others
    column = arrow.to_arrow(m)
    assert column.to_pylist() == [[7, 8, 9], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert column.values.buffers()[1].address != m.memmap.ctypes.data
    s = StringsMmap.from_strings(tmp_path / "s", ["abc", "de", "f"])
    s[1] = "DE"
    assert arrow.to_arrow(s).to_pylist() == ["abc", "DE", "f"]
    extended = RaggedMmap.from_lists(tmp_path / "e", [np.zeros((1, 2))])
    extended.extend([np.ones((3, 2))])  # extending keeps the samples back to back
    assert arrow.to_arrow(extended).values.values.buffers()[1].address == extended.memmap.ctypes.data
    fortran = np_ninja.from_ndarray(tmp_path / "f", np.asfortranarray(np.arange(6).reshape(3, 2)))
    assert arrow.to_arrow(fortran).to_pylist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(TypeError, match="not a list"):
        arrow.to_arrow([1, 2])


def test_sharded_maps_become_chunked_arrays(tmp_path):
    records = [write_part(tmp_path / "r", [np.arange(k + i) for i in range(3)]) for k in range(3)]
    column = arrow.to_arrow(ShardedMmap.commit_parts(tmp_path / "r", records))
    assert isinstance(column, pa.ChunkedArray) and column.num_chunks == 3
    assert column.to_pylist() == [list(range(k + i)) for k in range(3) for i in range(3)]
    records = [write_part(tmp_path / "s", [f"{k}.{i}" for i in range(2)]) for k in range(2)]
    assert arrow.to_arrow(ShardedMmap.commit_parts(tmp_path / "s", records)).to_pylist() == ["0.0", "0.1", "1.0", "1.1"]
    records = [write_part(tmp_path / "n", np.full((2, 3), k, np.float32), "numpy") for k in range(2)]
    rows = arrow.to_arrow(ShardedMmap.commit_parts(tmp_path / "n", records))
    assert rows.type == pa.list_(pa.float32(), 3) and rows.to_pylist() == [[0.0] * 3] * 2 + [[1.0] * 3] * 2


# -- appending -------------------------------------------------------------------------------------

def test_extend_from_arrow_appends_batch_by_batch_in_the_maps_dtype(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "r", [np.arange(3, dtype=np.int32)])
    m = arrow.extend_from_arrow(tmp_path / "r", pa.array([[5, 6], [7]], pa.list_(pa.int64())))
    assert [s.tolist() for s in m] == [[0, 1, 2], [5, 6], [7]] and m.dtype == np.int32
    with pytest.raises(TypeError, match="do not fit in int32"):
        arrow.extend_from_arrow(tmp_path / "r", pa.array([[2**40]], pa.list_(pa.int64())))
    m = arrow.extend_from_arrow(tmp_path / "r", pa.array([[[1, 2]]], pa.list_(pa.list_(pa.int32()))))
    assert m[3].shape == (1, 2) and len(m) == 4  # the first 2-d sample: the map's shapes become ragged
    with pytest.raises(ValueError, match="row 3: is null"):  # the batches before the null are committed
        arrow.extend_from_arrow(tmp_path / "r", pa.array([[1]] * 3 + [None], pa.list_(pa.int32())), batch_size=2)
    assert len(RaggedMmap(tmp_path / "r")) == 6
    for level in (None, 3):
        s = StringsMmap.from_strings(tmp_path / f"s{level}", ["a"], zstd_level=level)
        s = arrow.extend_from_arrow(tmp_path / f"s{level}", pa.array(["b", "ç"], pa.large_string()))
        assert s[:] == ["a", "b", "ç"] and s.verify() == []
    rows = np_ninja.from_ndarray(tmp_path / "n", np.zeros((1, 2), np.float32))
    rows = arrow.extend_from_arrow(tmp_path / "n", pa.array([[1, 2]], pa.list_(pa.int8(), 2)))
    assert rows.tolist() == [[0, 0], [1, 2]] and rows.dtype == np.float32
    with pytest.raises(ValueError, match="holds a numpy map; the array .* makes a strings map"):
        arrow.extend_from_arrow(tmp_path / "n", pa.array(["x"]))
    fresh = arrow.extend_from_arrow(tmp_path / "new", pa.array(["x"]))
    assert fresh[:] == ["x"]


# -- keys ------------------------------------------------------------------------------------------

def keyed_table(rows: int) -> pa.Table:
    """Tokens, texts, numbers and a key per row, the key column chunked at other rows than the
    others (so reading both cuts them at the same rows)."""
    tokens = list_array([np.arange(k % 5, dtype=np.int32) + k for k in range(rows)], pa.int32())
    keys = [f"doc/{k:04d}-é" for k in range(rows)]
    cut = rows // 3
    return pa.table({
        "tokens": pa.chunked_array([tokens.slice(0, 2 * cut), tokens.slice(2 * cut)]),
        "text": [f"text {k}" for k in range(rows)],
        "score": pa.array(np.arange(rows, dtype=np.float32) / 2),
        "id": pa.chunked_array([pa.array(keys[:cut], pa.large_string()), pa.array(keys[cut:], pa.large_string())]),
    })


def keyed_sources(table: pa.Table, path) -> dict:
    pq.write_table(table, path, row_group_size=7)
    return {
        "table": lambda: table,
        "reader": lambda: pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=4)),
        "parquet": lambda: pq.ParquetFile(path),
        "dataset": lambda: datasets.Dataset(table),
    }


def sample_equal(a, b) -> bool:
    return a == b if isinstance(a, str) else np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("input_kind", ["table", "reader", "parquet", "dataset"])
@pytest.mark.parametrize("column", ["tokens", "text", "score"])
def test_a_key_column_keys_every_row(tmp_path, input_kind, column):
    table = keyed_table(40)
    data = keyed_sources(table, tmp_path / "data.parquet")[input_kind]()
    m = arrow.from_arrow(tmp_path / "m", data, column, key_column="id", batch_size=6)
    keys = table.column("id").to_pylist()
    expected = table.column(column).to_pylist()
    if column == "score":
        assert np_ninja.keys(m) == keys
        assert np_ninja.index_of(tmp_path / "m", keys[::-1]).tolist() == list(range(39, -1, -1))
    else:
        assert m.keyed and m.keys() == keys and m.index_of(keys[17]) == 17
        assert m.index_of(keys[::-1]).tolist() == list(range(39, -1, -1))
        assert sample_equal(m.by_key[keys[23]], expected[23])
        assert m.verify(deep=True) == []
    with pytest.raises(KeyError, match="doc/9999"):
        (np_ninja.index_of(m, ["doc/9999"]) if column == "score" else m.index_of("doc/9999"))


def test_keys_follow_the_rows_of_a_reordered_hf_dataset(tmp_path, hf_dataset):
    with_keys = hf_dataset.map(lambda row: {"key": f"row-{row['label']}"})
    reordered = with_keys.shuffle(seed=5).select(range(30))
    assert reordered._indices is not None
    m = arrow.from_arrow(tmp_path / "m", reordered, "text", key_column="key", batch_size=4)
    assert m.keys() == reordered["key"]
    for label in reordered["label"][:10]:
        assert m.by_key[f"row-{label}"] == hf_dataset["text"][label]


def test_keys_given_as_a_list_or_a_generator(tmp_path):
    column = pa.array([[k] * (k % 3) for k in range(10)], pa.list_(pa.int64()))
    m = arrow.from_arrow(tmp_path / "a", column, keys=[f"k{k}" for k in range(10)], batch_size=3)
    assert m.index_of("k7") == 7 and m.by_key["k7"].tolist() == [7]
    m = arrow.from_arrow(tmp_path / "b", pa.array(["x", "y"]), keys=(f"k{k}" for k in range(2)))
    assert m.by_key["k1"] == "y"
    rows = arrow.from_arrow(tmp_path / "c", pa.array([1.5, 2.5]), keys=["one", "two"])
    assert np_ninja.index_of(rows, "two") == 1
    with pytest.raises(ValueError, match="keys ran out at sample 2"):
        arrow.from_arrow(tmp_path / "d", pa.array(["x", "y", "z"]), keys=["a", "b"], batch_size=2)
    with pytest.raises(ValueError, match="more keys than samples"):
        arrow.from_arrow(tmp_path / "d", pa.array([1, 2]), keys=["a", "b", "c"])
    assert not (tmp_path / "d").exists() and siblings(tmp_path / "d") == ["a", "b", "c"]


def test_bad_keys_are_refused_and_leave_the_map_as_it_was(tmp_path):
    out = tmp_path / "m"
    StringsMmap.from_strings(out, ["kept"], keys=["k"])
    table = pa.table({"text": ["a", "b", "c"], "id": ["x", None, "z"], "n": [1, 2, 3]})
    assert_unchanged_after(lambda: arrow.from_arrow(out, table, "text", key_column="id"), out,
                           ValueError, r"row 1: its key \(column 'id'\) is null")
    twice = pa.table({"text": ["a", "b", "c"], "id": ["x", "y", "x"]})
    assert_unchanged_after(lambda: arrow.from_arrow(out, twice, key_column="id", batch_size=1), out,
                           ValueError, "'x'")
    assert_unchanged_after(lambda: arrow.from_arrow(out, table, "text", key_column="n"), out,
                           TypeError, "the key column 'n' holds int64; keys are strings")
    assert_unchanged_after(lambda: arrow.from_arrow(out, table, "text", key_column="nope"), out,
                           ValueError, r"no column 'nope' \(key_column\)")
    assert_unchanged_after(lambda: arrow.from_arrow(out, table, "id", key_column="id"), out,
                           ValueError, "column and key_column both name 'id'")
    assert_unchanged_after(lambda: arrow.from_arrow(out, pa.array(["a"]), key_column="id"), out,
                           ValueError, "an array has none")
    assert_unchanged_after(lambda: arrow.from_arrow(out, table, "text", keys=["a", "b", "c"], key_column="id"), out,
                           TypeError, "not both")
    assert_unchanged_after(lambda: arrow.from_arrow(out, table, key_column="id"), out,  # every column: a table
                           ValueError, r"row 1: its key \(column 'id'\) is null")
    assert StringsMmap(out).by_key["k"] == "kept"


def test_extend_from_arrow_with_keys(tmp_path):
    out = tmp_path / "m"
    RaggedMmap.from_lists(out, [np.arange(2, dtype=np.int32)], keys=["first"])
    more = pa.table({"tokens": list_array([np.full(k, k) for k in range(1, 6)], pa.int32()),
                     "id": [f"more-{k}" for k in range(1, 6)]})
    # a map whose samples have keys takes no rows without: refused before anything is written
    assert_unchanged_after(lambda: arrow.extend_from_arrow(out, more, "tokens"), out, ValueError, "have keys")
    clash = pa.table({"tokens": list_array([[1], [2]], pa.int32()), "id": ["new", "first"]})
    assert_unchanged_after(lambda: arrow.extend_from_arrow(out, clash, "tokens", key_column="id"), out,
                           ValueError, "'first' of sample 2 is already the key of sample 0")
    assert_unchanged_after(lambda: arrow.extend_from_arrow(out, more, "tokens", keys=["a"]), out,
                           ValueError, "1 keys for 5 rows")
    with_null = pa.table({"tokens": pa.array([[1], None], pa.list_(pa.int32())), "id": ["n1", "n2"]})
    assert_unchanged_after(lambda: arrow.extend_from_arrow(out, with_null, "tokens", key_column="id"), out,
                           ValueError, "row 1: is null")  # rows checked before their keys are written
    null_text = pa.table({"t": ["x", None], "id": ["n1", "n2"]})
    StringsMmap.from_strings(tmp_path / "nt", ["a"], keys=["a"])
    assert_unchanged_after(lambda: arrow.extend_from_arrow(tmp_path / "nt", null_text, "t", key_column="id"),
                           tmp_path / "nt", ValueError, "row 1: is null")
    m = arrow.extend_from_arrow(out, more, "tokens", key_column="id", batch_size=2)
    assert m.keys() == ["first"] + [f"more-{k}" for k in range(1, 6)] and m.by_key["more-4"].tolist() == [4] * 4
    m = arrow.extend_from_arrow(out, pa.array([[9]], pa.list_(pa.int32())), keys=iter(["nine"]))
    assert m.index_of("nine") == 6 and m.verify(deep=True) == []
    with pytest.raises(ValueError, match=r"keys ran out at row 2: .* \(rows 0 to 1 were appended\)"):
        arrow.extend_from_arrow(out, pa.array([[1], [2], [3]], pa.list_(pa.int32())), keys=iter(["p", "q"]),
                                batch_size=2)
    m = RaggedMmap(out)
    assert len(m) == 9 and m.keys()[-2:] == ["p", "q"] and m.verify(deep=True) == []
    texts = StringsMmap.from_strings(tmp_path / "s", ["a"], keys=["a"])
    assert_unchanged_after(lambda: arrow.extend_from_arrow(tmp_path / "s", pa.array(["b"])), texts.out_dir,
                           ValueError, "have keys")
    texts = arrow.extend_from_arrow(tmp_path / "s", pa.table({"t": ["b", "c"], "k": ["b", "c"]}), key_column="k")
    assert texts.by_key["c"] == "c" and texts.keys() == ["a", "b", "c"]
    np_ninja.from_ndarray(tmp_path / "n", np.zeros((1, 2)), keys=["zero"])
    assert_unchanged_after(lambda: arrow.extend_from_arrow(tmp_path / "n", pa.array([[1, 2]], pa.list_(pa.int8(), 2))),
                           tmp_path / "n", ValueError, "have keys")
    rows = arrow.extend_from_arrow(tmp_path / "n", pa.array([[1, 2]], pa.list_(pa.int8(), 2)), keys=["one"])
    assert np_ninja.index_of(rows, "one") == 1 and rows[1].tolist() == [1, 2]
    fresh = arrow.extend_from_arrow(tmp_path / "new", more, "tokens", key_column="id")
    assert fresh.index_of("more-1") == 0


# -- properties ------------------------------------------------------------------------------------

DTYPES = st.sampled_from([pa.int8(), pa.uint16(), pa.int32(), pa.int64(), pa.float32(), pa.float64()])


def _ragged_values(type_):
    dtype = np.dtype(type_.to_pandas_dtype())
    if dtype.kind == "f":
        return st.floats(-1e6, 1e6, width=dtype.itemsize * 8)
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max))


@st.composite
def ragged_columns(draw):
    type_ = draw(DTYPES)
    rows = draw(st.lists(st.lists(_ragged_values(type_), max_size=12), max_size=30))
    column = pa.array(rows, draw(st.sampled_from([pa.list_, pa.large_list]))(type_))
    start = draw(st.integers(0, len(rows)))
    return rows[start:], column.slice(start), type_


@settings(max_examples=25, deadline=None)
@given(ragged_columns(), st.integers(1, 8))
def test_property_ragged_columns_round_trip(case, batch_size):
    rows, column, type_ = case
    with tempfile.TemporaryDirectory() as folder, durability(False):
        m = arrow.from_arrow(os.path.join(folder, "m"), column, batch_size=batch_size)
        assert [s.tolist() for s in m] == rows and m.dtype == np.dtype(type_.to_pandas_dtype())
        back = arrow.to_arrow(m)
        assert back.equals(pa.array(rows, pa.large_list(type_)))
        reopened = RaggedMmap(os.path.join(folder, "m"))
        assert [s.tolist() for s in reopened] == rows and reopened.verify(deep=True) == []


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=30), st.integers(1, 8))
def test_property_strings_round_trip(texts, batch_size):
    with tempfile.TemporaryDirectory() as folder, durability(False):
        m = arrow.from_arrow(os.path.join(folder, "s"), pa.array(texts, pa.string()), batch_size=batch_size)
        assert m[:] == texts and arrow.to_arrow(m).to_pylist() == texts
        reopened = StringsMmap(os.path.join(folder, "s"), mode="rb")
        assert reopened[:] == texts and reopened.verify(deep=True) == []


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.integers(-1000, 1000), min_size=1, max_size=8), max_size=10),
       st.integers(1, 3))
def test_property_maps_to_arrow_and_back(rows, width):
    samples = [np.array(row, dtype=np.int16).repeat(width).reshape(-1, width) for row in rows]
    with tempfile.TemporaryDirectory() as folder, durability(False):
        m = RaggedMmap.from_lists(os.path.join(folder, "m"), samples, dtype=np.int16)
        column = arrow.to_arrow(m)
        assert column.to_pylist() == [s.tolist() for s in samples]
        again = arrow.from_arrow(os.path.join(folder, "again"), column)
        assert len(again) == len(samples) and all(np.array_equal(a, b) for a, b in zip(again, samples))


# -- the command line --------------------------------------------------------------------------------

def run(capsys, *args):
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_a_parquet_file(tmp_path, capsys):
    path = tmp_path / "data.parquet"
    samples = [list(range(k % 7)) for k in range(300)]
    pq.write_table(pa.table({"tokens": pa.array(samples, pa.list_(pa.int32())), "text": [f"t{k}" for k in range(300)],
                             "score": np.arange(300, dtype=np.float32)}), path, row_group_size=64)
    code, out, _ = run(capsys, "convert", path, tmp_path / "table", "--quiet")  # every column: a table
    assert code == 0 and out.startswith(f"wrote TableMmap('{tmp_path / 'table'}', 300 rows")
    table = TableMmap(tmp_path / "table")
    assert table.schema == {"tokens": "ragged", "text": "string", "score": "numpy"}
    assert [s.tolist() for s in table["tokens"]] == samples and table["score"].dtype == np.float32
    code, out, err = run(capsys, "convert", path, tmp_path / "out", "--column", "tokens", "--batch-size", "50")
    assert code == 0 and out.startswith(f"wrote RaggedMmap('{tmp_path / 'out'}', 300 1-d samples of int32)")
    assert "300/300" in err  # the progress bar counts rows
    assert [s.tolist() for s in RaggedMmap(tmp_path / "out")] == samples
    code, _, err = run(capsys, "convert", path, tmp_path / "out", "--column", "tokens")
    assert code == 2 and "--force replaces it, --append extends it" in err
    code, out, err = run(capsys, "convert", path, tmp_path / "out", "--column", "tokens", "--append", "--quiet")
    assert code == 0 and out.startswith("appended 300 samples: RaggedMmap(") and err == ""
    assert len(RaggedMmap(tmp_path / "out")) == 600
    code, _, err = run(capsys, "convert", path, tmp_path / "out", "--column", "text", "--append")
    assert code == 2 and "holds a ragged map, and the Parquet column makes a strings map" in err
    code, out, _ = run(capsys, "convert", path, tmp_path / "out", "--column", "text", "--force", "--quiet")
    assert code == 0 and StringsMmap(tmp_path / "out")[:3] == ["t0", "t1", "t2"]
    code, out, _ = run(capsys, "convert", path, tmp_path / "rows", "--column", "score", "--quiet")
    assert code == 0 and out.strip() == f"wrote numpy map '{tmp_path / 'rows'}' of shape (300,) and dtype float32"
    code, _, err = run(capsys, "convert", path, tmp_path / "x", "--column", "nope")
    assert code == 2 and "has no column 'nope'; its columns: tokens, text, score" in err
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    code, _, err = run(capsys, "convert", tmp_path / "bad.parquet", tmp_path / "x")
    assert code == 2 and "cannot be read as Parquet" in err and not (tmp_path / "x").exists()
    code, _, err = run(capsys, "convert", tmp_path, tmp_path / "x", "--kind", "parquet")
    assert code == 2 and "--kind parquet takes a .parquet file, not a folder" in err
    renamed = tmp_path / "data.bin"
    renamed.write_bytes(path.read_bytes())
    code, _, _ = run(capsys, "convert", renamed, tmp_path / "kind", "--kind", "parquet", "--column", "text", "--quiet")
    assert code == 0 and StringsMmap(tmp_path / "kind")[299] == "t299"
    code, _, err = run(capsys, "convert", path, tmp_path / "y", "--column", "text", "--field", "body")
    assert code == 2 and "--field names a field of a .jsonl file" in err and not (tmp_path / "y").exists()
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    code, _, err = run(capsys, "convert", folder, tmp_path / "y", "--column", "text")
    assert code == 2 and "--column names a column of a .parquet file" in err and not (tmp_path / "y").exists()


def test_a_parquet_append_that_fails_midway_says_what_it_appended(tmp_path, capsys):
    StringsMmap.from_strings(tmp_path / "out", ["old"])
    path = tmp_path / "more.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c", None, "e"]}), path)
    code, _, err = run(capsys, "convert", path, tmp_path / "out", "--append", "--quiet", "--batch-size", "2")
    assert code == 2 and "row 3: is null" in err and "2 rows were appended before the error" in err
    assert StringsMmap(tmp_path / "out")[:] == ["old", "a", "b"]


def test_convert_refuses_to_append_a_parquet_column_to_a_keyed_map(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    for k in range(3):
        (folder / f"doc_{k}.txt").write_text(f"text {k}")
    assert run(capsys, "convert", folder, tmp_path / "out", "--quiet")[0] == 0  # keyed by the files' paths
    before = file_bytes(tmp_path / "out")
    path = tmp_path / "more.parquet"
    pq.write_table(pa.table({"text": ["more 0", "more 1"]}), path)
    code, _, err = run(capsys, "convert", path, tmp_path / "out", "--append", "--quiet")
    assert code == 2 and "have keys, and a Parquet column has none to give" in err
    assert file_bytes(tmp_path / "out") == before


def test_convert_appends_a_parquet_column_to_a_map_with_paths_of_an_earlier_version(tmp_path, capsys):
    StringsMmap.from_strings(tmp_path / "out", ["text 0", "text 1", "text 2"])
    StringsMmap.from_strings(tmp_path / "out" / "paths", ["doc_0.txt", "doc_1.txt", "doc_2.txt"])
    path = tmp_path / "more.parquet"
    pq.write_table(pa.table({"text": ["more 0", "more 1"]}), path)
    code, out, _ = run(capsys, "convert", path, tmp_path / "out", "--append", "--quiet")
    assert code == 0 and out.startswith("appended 2 samples: StringsMmap(")
    assert StringsMmap(tmp_path / "out")[:] == ["text 0", "text 1", "text 2", "more 0", "more 1"]
    assert StringsMmap(tmp_path / "out" / "paths")[:] == ["doc_0.txt", "doc_1.txt", "doc_2.txt", "", ""]


# -- tables: data of several columns -------------------------------------------------------------


def _several_columns(rows: int) -> pa.Table:
    rng = np.random.default_rng(3)
    return pa.table({
        "id": [f"row{k}" for k in range(rows)],
        "tokens": pa.array([list(rng.integers(0, 99, k % 5)) for k in range(rows)], pa.list_(pa.int32())),
        "image": pa.array([np.full((2, 3), k, np.uint8).tolist() for k in range(rows)],
                          pa.list_(pa.list_(pa.uint8(), 3))),
        "label": pa.array(rng.integers(0, 10, rows), pa.int64()),
        "embedding": pa.array([[float(k), -float(k)] for k in range(rows)], pa.list_(pa.float32(), 2)),
        "text": [f"text {k}" for k in range(rows)],
    })


@pytest.mark.parametrize("form", ["table", "record_batch", "reader", "parquet", "hf"])
def test_from_arrow_of_several_columns_makes_a_table_of_each_columns_map(tmp_path, form):
    data = _several_columns(130)
    if form == "record_batch":
        source = data.combine_chunks().to_batches()[0]
    elif form == "reader":
        source = pa.RecordBatchReader.from_batches(data.schema, data.to_batches(max_chunksize=40))
    elif form == "parquet":
        pq.write_table(data, tmp_path / "d.parquet", row_group_size=50)
        source = pq.ParquetFile(tmp_path / "d.parquet")
    elif form == "hf":
        source = datasets.Dataset(data)
    else:
        source = data
    t = arrow.from_arrow(tmp_path / "t", source, key_column="id", batch_size=32)
    assert isinstance(t, TableMmap) and len(t) == 130 and t.keys()[:2] == ["row0", "row1"]
    assert t.schema == {"tokens": "ragged", "image": "ragged", "label": "numpy", "embedding": "numpy",
                        "text": "string"}
    for k in (0, 77, 129):
        row = t.by_key[f"row{k}"]
        assert row["tokens"].tolist() == data["tokens"][k].as_py() and row["image"].shape == (2, 3)
        assert row["label"] == data["label"][k].as_py() and row["embedding"].tolist() == [k, -k]
        assert row["text"] == f"text {k}"
    back = arrow.to_arrow(t)
    assert back.column_names == t.columns and back.num_rows == 130
    assert back.column("text").to_pylist() == data["text"].to_pylist()
    assert back.column("tokens").to_pylist() == data["tokens"].to_pylist()
    assert mmap_ninja.verify(tmp_path / "t") == []


def test_from_arrow_of_a_table_refuses_bad_columns_and_null_keys_writing_nothing(tmp_path):
    bad = pa.table({"a": [1, 2], "when": pa.array([1, 2], pa.date32())})
    with pytest.raises(TypeError):
        arrow.from_arrow(tmp_path / "t", bad)
    assert not (tmp_path / "t").exists()
    nulls = pa.table({"id": ["x", None], "a": [1, 2], "b": ["p", "q"]})
    with pytest.raises(ValueError, match="row 1: its key"):
        arrow.from_arrow(tmp_path / "t", nulls, key_column="id")
    assert not (tmp_path / "t").exists()
    empty = arrow.from_arrow(tmp_path / "e", _several_columns(3).slice(0, 0))
    assert len(empty) == 0 and empty.schema["text"] == "string"
    assert arrow.to_arrow(arrow.from_arrow(tmp_path / "one", _several_columns(4), column="text")).to_pylist()[3] == \
        "text 3"
