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

from mmap_ninja.parallel import indexable_batches
from mmap_ninja.ragged import RaggedMmap

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
