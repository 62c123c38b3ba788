"""mmap_ninja.ray on a real local Ray instance (2 CPUs, worker processes), started once for these
tests on loopback and shut down after them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from conftest import ray_on_loopback
from ray.data.extensions import ArrowPythonObjectArray

import mmap_ninja
from mmap_ninja import numpy as np_ninja
from mmap_ninja.base import map_type
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.ray import MmapNinjaDatasink, MmapNinjaDatasource, read_mmap
from mmap_ninja.sharded import ShardedMmap
from mmap_ninja.string import StringsMmap

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    with ray_on_loopback():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def execution_options():
    """Datasets in order (Ray's default lets blocks come in the order their tasks finish)."""
    options = ray.data.DataContext.get_current().execution_options
    saved = options.preserve_order
    options.preserve_order = True
    yield options
    options.preserve_order = saved


def ragged_samples(n, dtype=np.int64):
    """``n`` 1-d arrays of lengths 0 to 4, each holding its own index."""
    return [np.full(k % 5, k, dtype=dtype) for k in range(n)]


def items(samples, column="item"):
    return [{column: s} for s in samples]


def assert_same_samples(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        a = np.asarray(a)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_ragged_arrays_are_written_one_part_per_write_task_in_the_datasets_order(tmp_path):
    ints = ragged_samples(40)
    sink = MmapNinjaDatasink(tmp_path / "ints")
    ray.data.from_items(items(ints), override_num_blocks=5).write_datasink(sink)
    m = ShardedMmap(tmp_path / "ints")
    assert m.kind == "ragged" and m.dtype == np.int64 and len(m.part_names) == 5
    assert sink.committed == m.part_names
    assert_same_samples(m[:], ints)
    assert mmap_ninja.verify(tmp_path / "ints", deep=True) == []

    images = [np.arange(k * 6, dtype=np.float32).reshape(k, 2, 3) / 7 for k in range(1, 12)]
    ray.data.from_items(items(images), override_num_blocks=3).write_datasink(MmapNinjaDatasink(tmp_path / "floats"))
    m = ShardedMmap(tmp_path / "floats")
    assert m.dtype == np.float32
    assert_same_samples(m[:], images)
    assert mmap_ninja.verify(tmp_path / "floats", deep=True) == []


def test_write_results_finishing_out_of_order_are_committed_in_the_tasks_order(tmp_path, execution_options):
    execution_options.preserve_order = False  # Ray hands over the write results as the tasks finish

    def first_block_is_slow(batch):
        if batch["item"][0][0] == 0:
            time.sleep(0.5)  # the first task finishes last
        return batch

    samples = [np.full(3, k) for k in range(24)]
    ds = ray.data.from_items(items(samples), override_num_blocks=6).map_batches(first_block_is_slow)
    ds.write_datasink(MmapNinjaDatasink(tmp_path / "s"))
    assert_same_samples(ShardedMmap(tmp_path / "s")[:], samples)


def test_writes_are_done_by_worker_processes(tmp_path):
    class PidSink(MmapNinjaDatasink):
        def write(self, blocks, ctx):
            result = super().write(blocks, ctx)
            return dict(result, pid=os.getpid())

        def on_write_complete(self, write_result):
            self.pids = {r["pid"] for r in write_result.write_returns}
            super().on_write_complete(write_result)

    sink = PidSink(tmp_path / "s")
    ray.data.from_items(items(ragged_samples(12)), override_num_blocks=4).write_datasink(sink)
    assert os.getpid() not in sink.pids and len(sink.committed) == 4


def test_strings(tmp_path):
    docs = [f"doc {k} " + "é" * (k % 3) for k in range(30)]
    ray.data.from_items(docs, override_num_blocks=3).write_datasink(MmapNinjaDatasink(tmp_path / "t"))
    m = ShardedMmap(tmp_path / "t")
    assert m.kind == "string" and m[:] == docs and len(m.part_names) == 3
    assert mmap_ninja.verify(tmp_path / "t", deep=True) == []
    assert [row["item"] for row in read_mmap(tmp_path / "t").take_all()] == docs


def test_blocks_bundled_into_larger_parts(tmp_path):
    docs = [f"doc {k}" for k in range(30)]
    sink = MmapNinjaDatasink(tmp_path / "t", min_rows_per_part=10)
    ray.data.from_items(docs, override_num_blocks=10).write_datasink(sink)  # blocks of 3 rows
    m = ShardedMmap(tmp_path / "t")
    lengths = np.diff(m.part_bounds)
    assert m[:] == docs and len(lengths) < 10 and all(length >= 10 for length in lengths[:-1])


def test_numpy_kind(tmp_path):
    arr = np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 2, 3)
    ds = ray.data.from_numpy(arr).repartition(3)  # a tensor column named "data"
    ds.write_datasink(MmapNinjaDatasink(tmp_path / "n", kind="numpy"))
    m = ShardedMmap(tmp_path / "n")
    assert m.kind == "numpy" and len(m.part_names) == 3
    got = m[:]
    assert got.dtype == np.float32 and got.shape == (10, 2, 3) and np.array_equal(got, arr)
    assert mmap_ninja.verify(tmp_path / "n", deep=True) == []


def test_a_second_write_appends_its_parts_to_the_map(tmp_path):
    first, second = ragged_samples(10), [s + 100 for s in ragged_samples(6)]
    ray.data.from_items(items(first), override_num_blocks=2).write_datasink(MmapNinjaDatasink(tmp_path / "s"))
    names = ShardedMmap(tmp_path / "s").part_names
    ray.data.from_items(items(second), override_num_blocks=3).write_datasink(MmapNinjaDatasink(tmp_path / "s"))
    m = ShardedMmap(tmp_path / "s")
    assert m.part_names[:2] == names and len(m.part_names) == 5
    assert_same_samples(m[:], first + second)


def test_tasks_without_rows_write_no_part_and_an_empty_dataset_creates_no_map(tmp_path):
    samples = [np.full(3, k) for k in range(20)]
    ds = ray.data.from_items(items(samples), override_num_blocks=4).filter(lambda row: row["item"][0] < 5)
    ds.write_datasink(MmapNinjaDatasink(tmp_path / "s"))
    m = ShardedMmap(tmp_path / "s")
    assert len(m.part_names) == 1 and m.uncommitted_parts() == []
    assert_same_samples(m[:], samples[:5])

    with pytest.raises(ValueError, match="holds no samples"):
        ds.filter(lambda row: False).write_datasink(MmapNinjaDatasink(tmp_path / "none"))
    assert not (tmp_path / "none" / "type.ninja").exists()


def test_a_failed_write_commits_nothing(tmp_path):
    first = [np.full((2, 2), k, dtype=np.float64) for k in range(4)]
    ray.data.from_items(items(first), override_num_blocks=2).write_datasink(
        MmapNinjaDatasink(tmp_path / "n", kind="numpy"))
    names = ShardedMmap(tmp_path / "n").part_names
    shapes = [(2, 2)] * 8 + [(2, 2), (3, 3)]  # the last task's samples cannot be stacked
    sink = MmapNinjaDatasink(tmp_path / "n", kind="numpy")
    with pytest.raises(ValueError, match="shape"):
        ray.data.from_items(items([np.ones(shape) for shape in shapes]), override_num_blocks=5).write_datasink(sink)
    m = ShardedMmap(tmp_path / "n")
    assert m.part_names == names and sink.committed == [] and np.array_equal(m[:], np.stack(first))
    m.gc()  # what the tasks that succeeded wrote
    assert m.uncommitted_parts() == [] and mmap_ninja.verify(tmp_path / "n", deep=True) == []


def test_the_column_holding_the_samples(tmp_path):
    rows = [{"id": k, "tokens": np.arange(k % 4, dtype=np.int32)} for k in range(12)]
    ds = ray.data.from_items(rows, override_num_blocks=2)
    with pytest.raises(ValueError, match=r"no column 'text'; its columns are \['id', 'tokens'\]"):
        ds.write_datasink(MmapNinjaDatasink(tmp_path / "s", column="text"))
    assert not (tmp_path / "s").exists()  # nothing written
    ds.write_datasink(MmapNinjaDatasink(tmp_path / "s", column="tokens"))
    assert_same_samples(ShardedMmap(tmp_path / "s")[:], [row["tokens"] for row in rows])
    ds.write_datasink(MmapNinjaDatasink(tmp_path / "ids", column="id"))  # scalars: 0-d samples
    assert [int(v) for v in ShardedMmap(tmp_path / "ids")[:]] == list(range(12))
    ds.write_datasink(MmapNinjaDatasink(tmp_path / "both"))  # no column named: every column, as tables
    both = ShardedMmap(tmp_path / "both")
    assert both.columns == ["id", "tokens"] and both["id"][:].tolist() == list(range(12))


def test_a_key_column_keys_the_map(tmp_path):
    rows = [{"key": f"row-{k}", "tokens": np.arange(k % 4, dtype=np.int32)} for k in range(12)]
    ds = ray.data.from_items(rows, override_num_blocks=3)
    sink = MmapNinjaDatasink(tmp_path / "s", key_column="key")  # the samples: the one other column
    ds.write_datasink(sink)
    m = ShardedMmap(tmp_path / "s")
    assert len(sink.committed) == 3 and m.keys() == [row["key"] for row in rows]
    assert m.index_of("row-10") == 10 and np.array_equal(m.by_key["row-7"], rows[7]["tokens"])
    with pytest.raises(ValueError, match="row-3"):  # already a key of the map: nothing committed
        ray.data.from_items(rows[3:5], override_num_blocks=1).write_datasink(
            MmapNinjaDatasink(tmp_path / "s", key_column="key"))
    assert len(ShardedMmap(tmp_path / "s")) == 12 and mmap_ninja.verify(tmp_path / "s", deep=True) == []
    parts = sorted(os.listdir(tmp_path / "s" / "parts"))
    with pytest.raises(ValueError, match="have keys: parts without keys cannot join it"):  # before any task
        ds.write_datasink(MmapNinjaDatasink(tmp_path / "s", column="tokens"))
    assert sorted(os.listdir(tmp_path / "s" / "parts")) == parts
    texts = ray.data.from_items([{"text": f"t{k}", "id": f"id{k}"} for k in range(5)], override_num_blocks=2)
    texts.write_datasink(MmapNinjaDatasink(tmp_path / "t", column="text", key_column="id"))
    assert ShardedMmap(tmp_path / "t").by_key["id3"] == "t3"
    with pytest.raises(ValueError, match=r"no column 'nope' \(key_column\)"):
        texts.write_datasink(MmapNinjaDatasink(tmp_path / "x", key_column="nope"))
    numbered = ray.data.from_items([{"n": k, "x": float(k)} for k in range(4)])
    with pytest.raises(Exception, match="the key of sample 0 is a int, not a str"):  # nothing committed
        numbered.write_datasink(MmapNinjaDatasink(tmp_path / "x", column="x", key_column="n"))
    assert map_type(tmp_path / "x") is None


def test_parts_are_not_appended_to_a_map_of_another_kind(tmp_path):
    RaggedMmap.from_lists(tmp_path / "plain", ragged_samples(3))
    with pytest.raises(ValueError, match="not a sharded one"):
        ray.data.from_items(items(ragged_samples(3))).write_datasink(MmapNinjaDatasink(tmp_path / "plain"))
    assert len(RaggedMmap(tmp_path / "plain")) == 3


def test_a_folder_of_other_files_is_refused_before_any_task_writes(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files but no map"):
        ray.data.from_items(items(ragged_samples(3))).write_datasink(MmapNinjaDatasink(tmp_path / "notes"))
    assert sorted(p.name for p in (tmp_path / "notes").rglob("*")) == ["todo.txt"]


def test_a_write_task_whose_worker_dies_mid_part_is_retried_and_loses_and_doubles_nothing(tmp_path):
    marker = tmp_path / "died-once"
    driver = os.getpid()

    class DiesOnFirstAttempt:
        """A sample whose conversion to an array kills the worker process writing it, the first
        time."""

        def __init__(self, values):
            self.values = values

        def __array__(self, dtype=None, copy=None):
            if os.getpid() != driver and not marker.exists():  # never the test's own process
                marker.touch()
                os._exit(1)  # the worker dies while its part is being written
            return np.asarray(self.values, dtype=dtype)

    samples = ragged_samples(25)
    objects = list(samples)
    objects[17] = DiesOnFirstAttempt(samples[17])  # in the 4th of 5 blocks
    # blocks of a column of Python objects, as Ray makes for samples it cannot convert: the
    # sample travels to the worker as it is
    blocks = [pa.table({"item": ArrowPythonObjectArray.from_objects(objects[k:k + 5])}) for k in range(0, 25, 5)]
    ray.data.from_arrow(blocks).write_datasink(MmapNinjaDatasink(tmp_path / "s"))
    assert marker.exists()  # the worker did die once

    m = ShardedMmap(tmp_path / "s")
    assert len(m.part_names) == 5
    assert_same_samples(m[:], samples)
    leftovers = m.uncommitted_parts()
    assert leftovers  # what the dead attempt left: never read
    report = mmap_ninja.verify(tmp_path / "s", deep=True)
    assert report == [] and any("no commit lists" in note for note in report.notes)
    assert sorted(m.gc()) == leftovers and m.uncommitted_parts() == []
    assert_same_samples(ShardedMmap(tmp_path / "s")[:], samples)


def test_read_mmap_of_a_ragged_map_gives_arrays_of_their_own_shapes(tmp_path):
    samples = [np.arange(k * 3, dtype=np.float64).reshape(k, 3) for k in range(9)]
    RaggedMmap.from_lists(tmp_path / "r", samples)
    ds = read_mmap(tmp_path / "r", override_num_blocks=3)
    assert "VariableShapedTensor" in str(ds.schema().types[0]) and ds.schema().names == ["item"]
    assert_same_samples([row["item"] for row in ds.take_all()], samples)
    batch = next(iter(ds.iter_batches(batch_size=4, batch_format="numpy")))["item"]
    assert_same_samples(list(batch), samples[:4])


def test_read_mmap_of_samples_of_one_shape_in_a_ragged_map(tmp_path):
    samples = [np.full((2, 3), k, dtype=np.int32) for k in range(6)] + [np.zeros((1, 3), dtype=np.int32)]
    RaggedMmap.from_lists(tmp_path / "r", samples)
    ds = read_mmap(tmp_path / "r", override_num_blocks=2)  # the first block's samples are all (2, 3)
    assert_same_samples([row["item"] for row in ds.take_all()], samples)


def test_read_mmap_of_samples_of_several_ranks_gives_a_column_of_arrays_as_objects(tmp_path):
    samples = [np.zeros((2, 3)), np.arange(4.0), np.float64(5.0), np.ones((1, 1, 2))]
    RaggedMmap.from_lists(tmp_path / "r", samples)
    ds = read_mmap(tmp_path / "r", override_num_blocks=2)
    got = [row["item"] for row in ds.take_all()]
    assert_same_samples(got, [np.asarray(s) for s in samples])
    assert len(list(ds.iter_batches(batch_size=4, batch_format="numpy"))) == 1  # one type across blocks


def test_read_mmap_of_plain_numpy_and_strings_maps(tmp_path):
    images = np.arange(8 * 2 * 3, dtype=np.uint8).reshape(8, 2, 3)
    np_ninja.from_ndarray(tmp_path / "images", images)
    ds = read_mmap(tmp_path / "images", override_num_blocks=3)
    assert np.array_equal(np.stack([row["item"] for row in ds.take_all()]), images)
    labels = np.arange(8, dtype=np.int16)
    np_ninja.from_ndarray(tmp_path / "labels", labels)
    assert np.array_equal(read_mmap(tmp_path / "labels", column="label").to_pandas()["label"].to_numpy(), labels)
    docs = [f"line {k}" for k in range(7)]
    StringsMmap.from_strings(tmp_path / "docs", docs)
    ds = read_mmap(tmp_path / "docs", override_num_blocks=2)
    assert [row["item"] for row in ds.take_all()] == docs


def test_read_mmap_of_a_sharded_map_reads_one_task_per_part(tmp_path):
    samples = ragged_samples(23)
    ShardedMmap.from_generator(tmp_path / "s", samples, part_size=5)  # parts of 5, 5, 5, 5, 3
    assert len(MmapNinjaDatasource(tmp_path / "s").get_read_tasks(100)) == 5
    assert len(MmapNinjaDatasource(tmp_path / "s", num_tasks=2).get_read_tasks(100)) == 2
    assert_same_samples([row["item"] for row in read_mmap(tmp_path / "s").take_all()], samples)


@pytest.mark.parametrize("kind", ["ragged", "string", "numpy"])
def test_round_trip_from_a_map_through_ray_to_a_sharded_map(tmp_path, kind):
    if kind == "ragged":
        RaggedMmap.from_lists(tmp_path / "a", ragged_samples(30, np.int16))
    elif kind == "string":
        StringsMmap.from_strings(tmp_path / "a", [f"s{k}" for k in range(30)])
    else:
        np_ninja.from_ndarray(tmp_path / "a", np.arange(60, dtype=np.float64).reshape(30, 2))
    read_mmap(tmp_path / "a", override_num_blocks=4).write_datasink(
        MmapNinjaDatasink(tmp_path / "b", kind="numpy" if kind == "numpy" else None))
    a, b = mmap_ninja.open_existing(tmp_path / "a"), ShardedMmap(tmp_path / "b")
    assert b.kind == kind and len(b.part_names) == 4
    if kind == "string":
        assert b[:] == a[:]
    else:
        assert_same_samples(list(b[:]), [np.asarray(s) for s in a[:]])
    assert mmap_ninja.verify(tmp_path / "b", deep=True) == []


def test_importing_mmap_ninja_does_not_import_ray():
    code = ("import sys, mmap_ninja, mmap_ninja.sharded, mmap_ninja.generic, mmap_ninja.dask; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
    code = "import mmap_ninja.ray as m; print(m.ray.__name__, m.ray.__file__ != m.__file__, hasattr(m.ray, 'init'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ray True True", out.stderr


def test_a_dataset_of_several_columns_makes_a_sharded_map_of_tables_and_reads_back(tmp_path):
    rows = [{"image": np.arange(k % 4 + 1, dtype=np.float32), "label": k, "caption": f"caption {k}", "id": f"id{k}"}
            for k in range(30)]
    sink = MmapNinjaDatasink(tmp_path / "t", key_column="id")
    ray.data.from_items(rows, override_num_blocks=3).write_datasink(sink)
    m = ShardedMmap(tmp_path / "t")
    assert m.kind == "table" and len(m.part_names) == 3 and m.columns == ["image", "label", "caption"]
    batch = m[[29, 0, 13]]
    assert batch["label"].tolist() == [29, 0, 13] and batch["caption"] == ["caption 29", "caption 0", "caption 13"]
    assert_same_samples(batch["image"], [rows[k]["image"] for k in (29, 0, 13)])
    assert m.index_of("id13") == 13
    assert mmap_ninja.verify(tmp_path / "t", deep=True) == []
    back = read_mmap(tmp_path / "t").take_all()
    assert [r["label"] for r in back] == list(range(30)) and back[5]["caption"] == "caption 5"
    assert_same_samples([r["image"] for r in back], [r["image"] for r in rows])
    mmap_ninja.TableMmap.from_generator(tmp_path / "one", [{k: v for k, v in r.items() if k != "id"} for r in rows])
    back = read_mmap(tmp_path / "one").take_all()
    assert [r["caption"] for r in back] == [r["caption"] for r in rows]
