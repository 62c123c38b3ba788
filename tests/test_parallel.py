"""Tests of mmap_ninja.parallel.indexable_batches, serially and with worker processes (real
ones: the datasets below write what the workers do into files)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_sample_equal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmap_ninja
from mmap_ninja.parallel import indexable_batches
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

# None: multiprocessing's default (fork on Linux before Python 3.14: the workers inherit the dataset)
START_METHODS = [None] + [m for m in ("forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]


class Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i >= self.n:
            raise AssertionError("read past len()")
        return i * 10


class Logged:
    """``n`` samples ``i * 10`` (uneven busy work, so that chunks finish out of order) that
    write a line to ``log`` when pickled (``pickled``), unpickled (``loaded <pid>``) and read
    (``read <pid> <i>``)."""

    def __init__(self, n, log, fail_at=None, exit_at=None, array=False):
        self.n, self.log, self.fail_at, self.exit_at, self.array = n, str(log), fail_at, exit_at, array

    def _write(self, line):
        with open(self.log, "a") as f:
            f.write(line + "\n")

    def __reduce__(self):
        self._write("pickled")
        return _load_logged, (self.n, self.log, self.fail_at, self.exit_at, self.array)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise AssertionError(f"read {i} outside 0..{self.n - 1}")
        self._write(f"read {os.getpid()} {i}")
        if i == self.fail_at:
            raise ValueError(f"bad sample {i}")
        if i == self.exit_at:
            os._exit(3)
        sum(range((i * 7919) % 20000))
        if self.array:
            return np.arange(i % 13, dtype=np.int32) * i
        return i * 10


def _load_logged(n, log, fail_at, exit_at, array):
    dataset = Logged(n, log, fail_at, exit_at, array)
    dataset._write(f"loaded {os.getpid()}")
    return dataset


def log_lines(log: Path, kind: str) -> list:
    if not log.exists():
        return []
    return [line.split()[1:] for line in log.read_text().splitlines() if line.split()[0] == kind]


def reader_pids(log: Path) -> set:
    return {int(pid) for pid, _ in log_lines(log, "read")} - {os.getpid()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class PickyError(Exception):
    """An exception that cannot be unpickled (its constructor needs two arguments)."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")


def raise_picky(i):
    if i == 4:
        raise PickyError("img_4.png", "truncated")
    return i


# -- serial and parallel alike --------------------------------------------------------------

@pytest.mark.parametrize("n_jobs", [None, 1, 2])
def test_batches_in_order_up_to_len(n_jobs):
    assert list(indexable_batches(Sized(7), 3, n_jobs=n_jobs)) == [[0, 10, 20], [30, 40, 50], [60]]
    assert list(indexable_batches(Sized(6), 3, n_jobs=n_jobs)) == [[0, 10, 20], [30, 40, 50]]
    assert list(indexable_batches(Sized(0), 3, n_jobs=n_jobs)) == []


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_function_without_len_stops_at_first_index_error(n_jobs):
    def sample(i):
        if i == 5:
            raise IndexError(i)
        return -i

    assert list(indexable_batches(sample, 2, n_jobs=n_jobs)) == [[0, -1], [-2, -3], [-4]]


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_getitem_without_len_stops_at_key_error(n_jobs):
    class Gapped:  # no len(): read until the first KeyError
        data = {0: "a", 1: "b", 2: "c", 4: "lost after the gap"}

        def __getitem__(self, i):
            return self.data[i]

    assert list(indexable_batches(Gapped(), 10, n_jobs=n_jobs, chunk_size=1)) == [["a", "b", "c"]]


def test_other_errors_propagate():
    def sample(i):
        raise RuntimeError("broken source")

    with pytest.raises(RuntimeError, match="broken source"):
        list(indexable_batches(sample, 2))


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_progress_bar_has_the_length_as_total(capsys, n_jobs):
    list(indexable_batches(Sized(5), 2, n_jobs=n_jobs, verbose=True))
    assert "5/5" in capsys.readouterr().err


def test_bad_arguments():
    with pytest.raises(TypeError, match="__getitem__"):
        list(indexable_batches(3, 2))
    with pytest.raises(ValueError, match="batch_size"):
        list(indexable_batches([1], 0))
    with pytest.raises(ValueError, match="chunk_size"):
        list(indexable_batches([1, 2], 2, n_jobs=2, chunk_size=0))
    with pytest.raises(ValueError, match="n_jobs"):
        list(indexable_batches([1, 2], 2, n_jobs=0))
    with pytest.raises(ValueError, match="start_method"):
        list(indexable_batches([1, 2], 2, n_jobs=2, start_method="teleport"))


# -- worker processes -----------------------------------------------------------------------

@pytest.mark.parametrize("start_method", START_METHODS)
def test_dataset_is_pickled_at_most_once_per_worker(tmp_path, start_method):
    log = tmp_path / "log"
    dataset = Logged(200, log)
    batches = list(indexable_batches(dataset, 9, n_jobs=2, chunk_size=3, start_method=start_method))

    assert [x for batch in batches for x in batch] == [i * 10 for i in range(200)]
    pickles, loads = log_lines(log, "pickled"), [pid for pid, in log_lines(log, "loaded")]
    assert 1 <= len(reader_pids(log)) <= 2, "the samples were not read by 1 or 2 worker processes"
    assert len(pickles) <= 2, f"pickled {len(pickles)} times for 2 workers"  # 67 chunks
    assert len(loads) == len(set(loads)) <= 2, f"unpickled in the workers {loads}"


@pytest.mark.parametrize("n, batch_size, chunk_size", [
    (1, 7, 3), (23, 7, 3), (23, 5, 5), (100, 7, 10), (1001, 64, None), (50, 4, None),
])
def test_order_is_kept_with_two_workers(tmp_path, n, batch_size, chunk_size):
    dataset = Logged(n, tmp_path / "log")
    serial = list(indexable_batches(dataset, batch_size))
    parallel = list(indexable_batches(dataset, batch_size, n_jobs=2, chunk_size=chunk_size))

    assert parallel == serial
    assert [x for batch in parallel for x in batch] == [i * 10 for i in range(n)]
    assert all(len(batch) == batch_size for batch in parallel[:-1])


@pytest.mark.parametrize("start_method", START_METHODS)
def test_index_error_ends_a_function_without_len(start_method):
    def sample(i):  # a local function: the workers get it by value
        if i == 17:
            raise IndexError(i)
        if i > 17:
            raise RuntimeError(f"read {i}, past the end")  # read ahead, must be discarded
        return -i

    batches = list(indexable_batches(sample, 5, n_jobs=2, chunk_size=3, start_method=start_method))
    assert batches == [[-i for i in range(k, min(k + 5, 17))] for k in range(0, 17, 5)]


def test_exceptions_keep_their_type_and_message_and_stop_the_workers(tmp_path):
    log = tmp_path / "log"
    dataset = Logged(100, log, fail_at=13)
    with pytest.raises(ValueError, match="bad sample 13"):
        list(indexable_batches(dataset, 5))
    serial = []
    with pytest.raises(ValueError) as raised:
        for batch in indexable_batches(dataset, 5, n_jobs=2, chunk_size=2):
            serial.append(batch)

    assert type(raised.value) is ValueError and str(raised.value) == "bad sample 13"
    assert serial == [[0, 10, 20, 30, 40], [50, 60, 70, 80, 90]]  # the batches before the failing one
    workers = reader_pids(log)
    assert workers and not [pid for pid in workers if alive(pid)], "workers left running after the error"


def test_an_exception_that_cannot_be_unpickled_arrives_as_its_text():
    with pytest.raises(RuntimeError, match="PickyError: img_4.png: truncated"):
        list(indexable_batches(raise_picky, 3, n_jobs=2, chunk_size=2))


def test_a_dying_worker_raises_broken_process_pool(tmp_path):
    with pytest.raises(BrokenProcessPool):
        list(indexable_batches(Logged(50, tmp_path / "log", exit_at=7), 5, n_jobs=2, chunk_size=2))


class LoadsOnlyHere:
    """Cannot be unpickled: what a worker's import of a missing module would do."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return i

    def __reduce__(self):
        return _fail_to_load, ("/data/index.json",)


def _fail_to_load(path):
    raise FileNotFoundError(f"no such file: {path}")


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver")
def test_a_dataset_that_a_worker_cannot_load_raises_the_loading_error():
    with pytest.raises(FileNotFoundError, match="no such file: /data/index.json"):
        list(indexable_batches(LoadsOnlyHere(), 4, n_jobs=2, start_method="forkserver"))


def test_closing_the_generator_early_stops_the_workers(tmp_path):
    log = tmp_path / "log"
    batches = indexable_batches(Logged(10**6, log), 10, n_jobs=2, chunk_size=5)
    assert next(batches) == [i * 10 for i in range(10)]
    batches.close()

    workers = reader_pids(log)
    assert workers and not [pid for pid in workers if alive(pid)], "workers left running after close()"
    read = log_lines(log, "read")
    assert len(read) < 100, f"{len(read)} samples read for a batch of 10: the reading ahead is not bounded"


def test_n_jobs_minus_one_uses_all_cores(tmp_path):
    log = tmp_path / "log"
    assert list(indexable_batches(Logged(40, log), 6, n_jobs=-1, chunk_size=2)) == list(indexable_batches(Sized(40), 6))
    assert 1 <= len(reader_pids(log)) <= max(1, os.cpu_count() or 1)


# -- through RaggedMmap.from_indexable -------------------------------------------------------

def test_from_indexable_with_two_workers_equals_serial(tmp_path):
    log = tmp_path / "log"
    dataset = Logged(1003, log, array=True)
    serial = RaggedMmap.from_indexable(tmp_path / "serial", dataset, batch_size=100)
    parallel = RaggedMmap.from_indexable(tmp_path / "parallel", dataset, batch_size=100, n_jobs=2)

    assert len(parallel) == len(serial) == 1003
    for i in range(1003):
        assert_sample_equal(parallel[i], serial[i])
    assert len(log_lines(log, "pickled")) <= 2


def test_from_indexable_stops_the_workers_when_writing_fails(tmp_path):
    def sample(i):  # sample 250 cannot be stored as int64: the writer fails, not the reader
        with open(tmp_path / "log", "a") as f:
            f.write(f"read {os.getpid()} {i}\n")
        return np.full(3, 0.5) if i == 250 else np.arange(i % 5)

    with pytest.raises(TypeError, match="int64") as raised:
        RaggedMmap.from_indexable(tmp_path / "m", sample, batch_size=50, n_jobs=2, dtype=np.int64)
    workers = reader_pids(tmp_path / "log")
    assert workers and not [pid for pid in workers if alive(pid)], "workers left running after the error"
    assert raised.value.__traceback__ is not None  # (what kept the reading generator alive)


def test_a_process_running_other_threads_is_not_forked():
    # a fork copies other threads' locks as they are: the children of a process with a Dask
    # client, say, could hang or die
    import multiprocessing
    import threading

    from mmap_ninja.parallel import _start_context

    if multiprocessing.get_start_method() != "fork":
        assert _start_context(None).get_start_method() == multiprocessing.get_start_method()
        return
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert _start_context(None).get_start_method() == "forkserver"
        assert _start_context("fork").get_start_method() == "fork"  # asked for explicitly
        assert list(indexable_batches(Sized(7), 3, n_jobs=2)) == [[0, 10, 20], [30, 40, 50], [60]]
    finally:
        stop.set()
        thread.join()
    expected = "fork" if threading.active_count() == 1 else "forkserver"  # other tests may leave threads
    assert _start_context(None).get_start_method() == expected


# -- from_indexable with workers that write parts --------------------------------------------

def _sample_of(kind, i, dtype):
    if kind == "flat":
        return np.arange(i % 9, dtype=dtype) * i
    if kind == "nd":
        return np.full((2, i % 4), i, dtype=dtype)
    if kind == "scalar":
        return np.asarray(i, dtype=dtype)[()]
    if kind == "empty":
        return np.empty((0, 3) if i % 2 else 0, dtype=dtype)
    return np.full((1, 2, i % 3 + 1), -i, dtype=dtype)  # "3d"


class Samples:
    """A dataset of the given samples, which checks that nothing reads past its end."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        if not 0 <= i < len(self.samples):
            raise AssertionError(f"read {i}, past the end")
        return self.samples[i]


def assert_same_maps(parallel, serial):
    assert len(parallel) == len(serial)
    assert parallel.dtype == serial.dtype and parallel.shapes_are_flat == serial.shapes_are_flat
    for i in range(len(serial)):
        assert_sample_equal(parallel[i], serial[i])
        assert type(parallel[i]) is type(serial[i])


def leftovers(folder: Path) -> list:
    """What builds left beside the maps in ``folder`` and inside them (build folders, parts)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if ".building" in p.name or p.name.startswith("part-"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(["flat", "nd", "scalar", "empty", "3d"]), min_size=1, max_size=60),
       batch_size=st.integers(1, 9), given_dtype=st.booleans())
def test_workers_writing_parts_build_the_map_a_serial_build_does(tmp_path_factory, kinds, batch_size, given_dtype):
    tmp = tmp_path_factory.mktemp("parts")
    samples = Samples([_sample_of(kind, i, np.int16) for i, kind in enumerate(kinds)])
    dtype = np.float32 if given_dtype else None
    serial = RaggedMmap.from_indexable(tmp / "serial", samples, batch_size, dtype=dtype)
    parallel = RaggedMmap.from_indexable(tmp / "parallel", samples, batch_size, n_jobs=2, dtype=dtype)
    assert_same_maps(parallel, serial)
    assert mmap_ninja.verify(tmp / "parallel", deep=True) == []
    assert leftovers(tmp) == []


def test_many_parts_are_concatenated_while_the_workers_write_and_removed_once_appended(tmp_path):
    log = tmp_path / "log"
    dataset = PartsSeen(600, tmp_path, log)
    m = RaggedMmap.from_indexable(tmp_path / "m", dataset, batch_size=4, n_jobs=2)
    assert [s.tolist() for s in m] == [[i] * (i % 5) for i in range(600)]
    assert mmap_ninja.verify(tmp_path / "m", deep=True) == []
    seen = [int(line.split()[1]) for line in log.read_text().splitlines()]
    # about 150 parts of 4 samples, but never more on disk than those in flight (2 per worker)
    # and the one being appended
    assert 1 <= max(seen) <= 5, f"up to {max(seen)} parts waited on disk at once"
    assert leftovers(tmp_path) == []


class PartsSeen:
    """Samples ``[i] * (i % 5)`` that log how many parts wait in the build folders of ``folder``."""

    def __init__(self, n, folder, log):
        self.n, self.folder, self.log = n, str(folder), str(log)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        parts = list(Path(self.folder).glob(".*.building/.parts.building/parts/part-*"))
        with open(self.log, "a") as f:
            f.write(f"{i} {len(parts)}\n")
        return np.full(i % 5, i, dtype=np.int64)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_function_without_len_stops_at_the_first_index_error_and_the_parts_read_ahead_go(tmp_path, start_method):
    def sample(i):
        if i >= 57:
            raise IndexError(i)
        return np.arange(i % 4 + 1) if i % 3 else np.ones((2, 2)) * i

    multiprocessing_default = multiprocessing.get_start_method()
    try:
        if start_method is not None:
            multiprocessing.set_start_method(start_method, force=True)
        parallel = RaggedMmap.from_indexable(tmp_path / "p", sample, batch_size=5, n_jobs=2)
    finally:
        multiprocessing.set_start_method(multiprocessing_default, force=True)
    serial = RaggedMmap.from_indexable(tmp_path / "s", sample, batch_size=5)
    assert len(parallel) == 57
    assert_same_maps(parallel, serial)
    assert leftovers(tmp_path) == []


def test_samples_cast_to_the_first_samples_dtype_as_in_a_serial_build(tmp_path):
    def integral(i):  # int64 first, then floats with integral values: cast to int64
        return np.arange(3) * i if i < 100 else np.full(2, float(i))

    serial = RaggedMmap.from_indexable(tmp_path / "s", Samples([integral(i) for i in range(300)]), 10)
    parallel = RaggedMmap.from_indexable(tmp_path / "p", Samples([integral(i) for i in range(300)]), 10, n_jobs=2)
    assert parallel.dtype == np.int64
    assert_same_maps(parallel, serial)

    def fractions(i):  # then a float with a fraction, which int64 cannot take
        return np.full(2, 0.5) if i == 150 else np.arange(3) * i

    errors = []
    for n_jobs in (None, 2):
        with pytest.raises(TypeError) as raised:
            RaggedMmap.from_indexable(tmp_path / f"f{n_jobs}", Samples([fractions(i) for i in range(300)]), 10,
                                      n_jobs=n_jobs)
        errors.append(str(raised.value))
    assert errors[0] == errors[1] and errors[0].startswith("sample 150: float64 values with fractions")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "s"]


def test_an_error_in_a_worker_leaves_the_map_there_unchanged_and_nothing_behind(tmp_path):
    from conftest import file_bytes

    RaggedMmap.from_lists(tmp_path / "m", [np.arange(3), np.arange(4)])
    before = file_bytes(tmp_path / "m")
    log = tmp_path / "log"
    with pytest.raises(ValueError, match="bad sample 371"):
        RaggedMmap.from_indexable(tmp_path / "m", Logged(1000, log, fail_at=371, array=True), 7, n_jobs=2)
    assert file_bytes(tmp_path / "m") == before
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["log", "m"]
    workers = reader_pids(log)
    assert workers and not [pid for pid in workers if alive(pid)], "workers left running after the error"

    with pytest.raises(BrokenProcessPool):  # a worker that dies, maybe while it writes a part
        RaggedMmap.from_indexable(tmp_path / "m", Logged(1000, tmp_path / "log2", exit_at=500, array=True), 7,
                                  n_jobs=2)
    assert file_bytes(tmp_path / "m") == before and leftovers(tmp_path) == []


def test_a_new_map_that_fails_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="bad sample 60"):
        RaggedMmap.from_indexable(tmp_path / "new", Logged(100, tmp_path / "log", fail_at=60, array=True), 5,
                                  n_jobs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]


def test_progress_bar_of_a_build_with_workers(tmp_path, capsys):
    RaggedMmap.from_indexable(tmp_path / "m", Samples([np.arange(i % 3) for i in range(50)]), 4, n_jobs=2,
                              verbose=True)
    assert "50/50" in capsys.readouterr().err


def test_convert_with_two_workers_writes_the_map_of_one(tmp_path, capsys):
    from mmap_ninja.cli import main

    (tmp_path / "npy").mkdir()
    for i in range(40):
        np.save(tmp_path / "npy" / f"{i}.npy", np.full((i % 3 + 1,) * (1 + i % 2), i, dtype=np.uint8))
    assert main(["convert", str(tmp_path / "npy"), str(tmp_path / "one"), "--quiet", "--batch-size", "3"]) == 0
    assert main(["convert", str(tmp_path / "npy"), str(tmp_path / "two"), "--quiet", "--batch-size", "3",
                 "--workers", "2"]) == 0
    assert_same_maps(RaggedMmap(tmp_path / "two"), RaggedMmap(tmp_path / "one"))
    assert StringsMmap(tmp_path / "two" / "paths")[:] == StringsMmap(tmp_path / "one" / "paths")[:]
    assert mmap_ninja.verify(tmp_path / "two", deep=True) == []
    assert leftovers(tmp_path) == []


def test_a_map_built_by_workers_opens_in_090(tmp_path, ref090):
    samples = Samples([np.arange(i % 4) if i % 5 else np.ones((2, 2), np.int64) * i for i in range(40)])
    RaggedMmap.from_indexable(tmp_path / "m", samples, 3, n_jobs=2)
    result = ref090.run(f"""
from mmap_ninja.ragged import RaggedMmap
m = RaggedMmap({str(tmp_path / 'm')!r})
result = [m[i].tolist() for i in range(len(m))]
""", tmp_path)
    assert result == [np.asarray(s).tolist() for s in samples.samples]
