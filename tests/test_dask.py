"""mmap_ninja.dask on a real Dask cluster: LocalCluster(n_workers=2, processes=True) on
loopback, started and closed by these tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dask
import dask.bag as db
import numpy as np
import pytest
from distributed import Client, LocalCluster

import mmap_ninja
from mmap_ninja.dask import read_mmap, to_mmap
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.sharded import ShardedMmap
from mmap_ninja.string import StringsMmap


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    with Client(cluster) as connected:
        yield connected
    cluster.close()


def expected_partition(i):
    return [np.full(k % 4 + 1, 100 * i + k, dtype=np.int64) for k in range(5)]


def test_a_bag_is_written_one_part_per_partition_in_the_bags_order(client, tmp_path):
    def partition(i):
        return expected_partition(i)

    bag = db.from_delayed([dask.delayed(partition)(i) for i in range(6)])
    m = to_mmap(bag, tmp_path / "s")
    assert len(m.part_names) == 6 and len(m) == 30
    want = [s for i in range(6) for s in expected_partition(i)]
    assert all(np.array_equal(a, b) for a, b in zip(m[:], want))
    pids = client.run(os.getpid)
    assert len(pids) == 2 and os.getpid() not in pids.values()  # written by worker processes
    assert mmap_ninja.verify(tmp_path / "s", deep=True) == []


def test_a_task_that_dies_mid_part_and_is_retried_loses_and_doubles_nothing(client, tmp_path):
    marker = tmp_path / "died-once"

    class DiesOnFirstAttempt:
        """A sample whose conversion to an array kills its worker process, the first time."""

        def __init__(self, values):
            self.values = values

        def __array__(self, dtype=None, copy=None):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # the worker dies while its part is being written
            return np.asarray(self.values, dtype=dtype)

    def partition(i):
        samples = expected_partition(i)
        if i == 3:
            samples[2] = DiesOnFirstAttempt(samples[2])
        return samples

    bag = db.from_delayed([dask.delayed(partition)(i) for i in range(5)])
    m = to_mmap(bag, tmp_path / "s")
    assert marker.exists()  # the worker did die once
    want = [s for i in range(5) for s in expected_partition(i)]
    got = m[:]
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    leftovers = m.uncommitted_parts()
    assert leftovers  # what the dead attempt left: never read
    report = mmap_ninja.verify(tmp_path / "s")
    assert report == [] and any("no commit lists" in note for note in report.notes)
    assert sorted(m.gc()) == leftovers and m.uncommitted_parts() == []
    assert len(ShardedMmap(tmp_path / "s")) == 25


def test_delayed_objects_and_strings(client, tmp_path):
    parts = [dask.delayed(lambda i: [f"doc {i}.{k}" for k in range(i)])(i) for i in range(4)]
    m = to_mmap(parts, tmp_path / "t")  # partition 0 is empty: no part
    assert m.kind == "string" and m[:] == [f"doc {i}.{k}" for i in range(4) for k in range(i)]
    assert len(m.part_names) == 3


def test_a_bag_of_key_sample_pairs_makes_a_keyed_map(client, tmp_path):
    def partition(i):
        return [(f"p{i}/s{k}", sample) for k, sample in enumerate(expected_partition(i))]

    bag = db.from_delayed([dask.delayed(partition)(i) for i in range(4)])
    m = to_mmap(bag, tmp_path / "s", keyed=True)
    assert m.keyed and len(m.part_names) == 4
    assert m.keys() == [f"p{i}/s{k}" for i in range(4) for k in range(5)]
    assert m.index_of("p2/s3") == 13 and np.array_equal(m.by_key["p2/s3"], expected_partition(2)[3])
    more = db.from_sequence([("more", "text")], npartitions=1)
    texts = to_mmap(more, tmp_path / "t", keyed=True)
    assert texts.by_key["more"] == "text"
    # a key repeated across partitions: refused when the parts are committed, nothing committed
    repeated = db.from_delayed([dask.delayed(partition)(i) for i in (7, 8, 7)])
    with pytest.raises(ValueError, match="p7/s0"):
        to_mmap(repeated, tmp_path / "s", keyed=True)
    assert len(ShardedMmap(tmp_path / "s")) == 20 and mmap_ninja.verify(tmp_path / "s", deep=True) == []
    with pytest.raises(TypeError, match="element 0 of this partition is a ndarray"):
        to_mmap(db.from_sequence([np.arange(2)], npartitions=1), tmp_path / "u", keyed=True)
    parts = sorted(os.listdir(tmp_path / "s" / "parts"))
    with pytest.raises(ValueError, match="have keys: parts without keys cannot join it"):
        to_mmap(db.from_sequence([np.arange(2)], npartitions=1), tmp_path / "s")  # refused before any is written
    assert len(ShardedMmap(tmp_path / "s")) == 20 and sorted(os.listdir(tmp_path / "s" / "parts")) == parts


def files_of(folder):
    """Every file under ``folder`` with its bytes, by relative path."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(Path(folder).rglob("*"))
            if path.is_file()}


def test_a_folder_that_is_not_a_sharded_map_is_refused_before_any_task_runs(client, tmp_path):
    ran = tmp_path / "ran"
    ran.mkdir()

    def partition(i):
        (ran / str(i)).touch()  # on the worker that computes it
        return expected_partition(i)

    def bag():
        return db.from_delayed([dask.delayed(partition)(i) for i in range(4)])

    plain = RaggedMmap.from_lists(tmp_path / "plain", expected_partition(9))
    before = files_of(plain.out_dir)
    with pytest.raises(ValueError, match="holds a 'ragged' map, not a sharded one: parts cannot be appended"):
        to_mmap(bag(), plain.out_dir)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files but no map"):
        to_mmap(bag(), other)
    assert files_of(plain.out_dir) == before and not (plain.out_dir / "parts").exists()
    assert files_of(other) == {"notes.txt": b"mine"} and os.listdir(ran) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(to_mmap(bag(), empty)) == 20 and sorted(os.listdir(ran)) == ["0", "1", "2", "3"]


def test_what_an_interrupted_write_left_does_not_stop_a_new_one(client, tmp_path):
    def partition(i):
        return [(f"k{i % 2}", sample) for sample in expected_partition(i)[:1]]

    with pytest.raises(ValueError, match="k0"):  # a key twice: the parts are written, none committed
        to_mmap(db.from_delayed([dask.delayed(partition)(i) for i in range(3)]), tmp_path / "s", keyed=True)
    leftovers = sorted(os.listdir(tmp_path / "s" / "parts"))
    assert len(leftovers) == 3
    m = to_mmap(db.from_delayed([dask.delayed(partition)(i) for i in range(2)]), tmp_path / "s", keyed=True)
    assert m.keys() == ["k0", "k1"] and m.uncommitted_parts() == leftovers

def test_read_mmap_gives_a_bag_of_any_map(client, tmp_path):
    StringsMmap.from_strings(tmp_path / "plain", [f"line {i}" for i in range(25)])
    bag = read_mmap(tmp_path / "plain", npartitions=4)
    assert bag.npartitions == 4 and bag.map(str.upper).compute() == [f"LINE {i}" for i in range(25)]
    sharded = to_mmap(db.from_sequence([[1, 2], [3], [4, 5, 6]], npartitions=3), tmp_path / "s")
    bag = read_mmap(tmp_path / "s")
    assert bag.npartitions == len(sharded.part_names)
    assert [s.tolist() for s in bag.compute()] == [[1, 2], [3], [4, 5, 6]]


def test_importing_mmap_ninja_imports_no_engine():
    code = "import sys, mmap_ninja, mmap_ninja.sharded; print('dask' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False False", out.stderr


def test_a_bag_of_dicts_makes_a_sharded_map_of_tables(client, tmp_path):
    def row(i):
        return {"tokens": np.arange(i % 5 + 1, dtype=np.int32), "label": i, "text": f"doc {i}"}

    bag = db.from_sequence(range(40), npartitions=4).map(row)
    m = to_mmap(bag, tmp_path / "t")
    assert m.kind == "table" and len(m.part_names) == 4 and len(m) == 40
    assert m.schema == {"tokens": "ragged", "label": "numpy", "text": "string"}
    batch = m[[39, 0, 17]]
    assert batch["label"].tolist() == [39, 0, 17] and batch["text"] == ["doc 39", "doc 0", "doc 17"]
    assert [len(t) for t in batch["tokens"]] == [5, 1, 3]
    assert mmap_ninja.verify(tmp_path / "t", deep=True) == []
    rows = read_mmap(tmp_path / "t").compute()
    assert [r["label"] for r in rows] == list(range(40)) and rows[8]["text"] == "doc 8"
    assert np.array_equal(rows[8]["tokens"], np.arange(4, dtype=np.int32))
    other = db.from_sequence([{"tokens": np.zeros(2, np.int32), "label": 1, "caption": "x"}], npartitions=1)
    with pytest.raises(ValueError, match="the same columns"):
        to_mmap(other, tmp_path / "t")
    assert len(ShardedMmap(tmp_path / "t")) == 40
