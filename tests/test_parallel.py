"""Tests of mmap_ninja.parallel.indexable_batches."""

from __future__ import annotations

import pytest

from mmap_ninja.parallel import indexable_batches


class Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i >= self.n:
            raise AssertionError("read past len()")
        return i * 10


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


def test_getitem_without_len_stops_at_key_error():
    data = {0: "a", 1: "b", 2: "c", 4: "lost after the gap"}
    assert list(indexable_batches(data, 10)) == [["a", "b", "c"]]


def test_other_errors_propagate():
    def sample(i):
        raise RuntimeError("broken source")

    with pytest.raises(RuntimeError, match="broken source"):
        list(indexable_batches(sample, 2))


def test_progress_bar_has_the_length_as_total(capsys):
    list(indexable_batches(Sized(5), 2, verbose=True))
    assert "5/5" in capsys.readouterr().err


def test_bad_arguments():
    with pytest.raises(TypeError, match="__getitem__"):
        list(indexable_batches(3, 2))
    with pytest.raises(ValueError, match="batch_size"):
        list(indexable_batches([1], 0))
