"""One map object shared by threads: one thread writes through it (extend, or refresh while
another object extends the map) while others read random batches from it. No read may raise,
and every value read must be right.

Loops are bounded by counts: the writer makes ``ROUNDS`` writes; readers read until the writer is
done (at least ``MIN_READS`` and at most ``MAX_READS`` times).
"""

from __future__ import annotations

import sys
import threading
import traceback

import numpy as np
import pytest

from mmap_ninja import durability
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

ROUNDS = 60  # writes (extends of BATCH samples, or refreshes between them)
BATCH = 50
START = 10  # samples in the map before the threads start
MIN_READS = 50  # reads per reader thread
MAX_READS = 200_000
MAX_ERRORS = 3


def ragged_sample(i: int) -> np.ndarray:
    return np.full(i % 7 + 1, i, dtype=np.int64)


def string_sample(i: int) -> str:
    return f"s{i}-" + "ж" * (i % 3) + "x" * (i % 4)


def index_of_ragged(sample) -> int:
    """The index that ``sample`` claims to be, checked against it."""
    sample = np.asarray(sample)
    assert sample.ndim == 1 and sample.size, f"a sample of shape {sample.shape}"
    i = int(sample[0])
    assert np.array_equal(sample, ragged_sample(i)), f"sample {sample.tolist()} is no sample"
    return i


def index_of_string(s: str) -> int:
    i = int(s[1:s.index("-")])
    assert s == string_sample(i), f"{s!r} is no string of the map"
    return i


def read_ragged(m: RaggedMmap, rng, seen: dict) -> None:
    n = len(m)
    assert n >= seen.get("n", START), f"the length went from {seen.get('n')} to {n}"
    seen["n"] = n
    indices = rng.integers(0, n, size=16)
    got = m[indices]
    assert [index_of_ragged(s) for s in got] == indices.tolist()
    batch = m.take(indices)
    assert [index_of_ragged(s) for s in batch.arrays()] == indices.tolist()
    assert np.array_equal(batch.values, np.concatenate([ragged_sample(int(i)) for i in indices]))
    i = int(indices[0])
    assert index_of_ragged(m[i]) == i
    assert index_of_ragged(m[-1]) >= n - 1


def read_strings(m: StringsMmap, rng, seen: dict) -> None:
    n = len(m)
    assert n >= seen.get("n", START), f"the length went from {seen.get('n')} to {n}"
    seen["n"] = n
    indices = rng.integers(0, n, size=16)
    assert [index_of_string(s) for s in m[indices]] == indices.tolist()
    assert m.get_bytes(indices) == [string_sample(int(i)).encode() for i in indices]
    i = int(indices[0])
    assert index_of_string(m[i]) == i
    assert m.get_bytes(i) == string_sample(i).encode()
    assert index_of_string(m[-1]) >= n - 1


KINDS = {
    "ragged": (lambda p: RaggedMmap.from_lists(p, [ragged_sample(i) for i in range(START)]),
               lambda p: RaggedMmap(p), ragged_sample, read_ragged),
    "strings": (lambda p: StringsMmap.from_strings(p, [string_sample(i) for i in range(START)]),
                lambda p: StringsMmap(p), string_sample, read_strings),
}


def run_threads(write, m, read, readers=2):
    """Run ``write(round)`` for ``ROUNDS`` rounds in one thread and ``read(m, rng, seen)`` in
    ``readers`` threads until the writer is done; return the readers' counts of reads."""
    done = threading.Event()
    errors, counts = [], [0] * readers

    def writer():
        try:
            with durability(False):
                for r in range(ROUNDS):
                    write(r)
        except BaseException:
            errors.append("writer: " + traceback.format_exc())
        finally:
            done.set()

    def reader(k):
        rng, seen = np.random.default_rng(k), {}
        failures = 0
        for count in range(MAX_READS):
            if done.is_set() and count >= MIN_READS:
                break
            try:
                read(m, rng, seen)
            except BaseException:
                errors.append(f"reader {k} (read {count}): " + traceback.format_exc())
                failures += 1
                if failures >= MAX_ERRORS:
                    break
            counts[k] = count + 1

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as a busy process would
    try:
        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(k,))
                                                      for k in range(readers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert not errors, f"{len(errors)} failures; the first:\n{errors[0]}"
    return counts


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_readers_share_a_map_with_a_thread_that_extends_it(tmp_path, kind):
    # Catches: extend replaces the object's reader, buffers and length one after another, so a
    # thread reading the same object meanwhile sees a length with no reader behind it
    # ("IndexError: index 7 is out of bounds for a map of length 0" on StringsMmap), a closed
    # buffer, or samples of another length.
    build, open_map, sample, read = KINDS[kind]
    path = tmp_path / kind
    build(path)
    m = open_map(path)

    def write(r):
        n = len(m)
        m.extend([sample(i) for i in range(n, n + BATCH)])

    run_threads(write, m, read)
    assert len(m) == START + ROUNDS * BATCH
    read(open_map(path), np.random.default_rng(9), {})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_readers_share_a_map_with_a_thread_that_refreshes_it(tmp_path, kind):
    # Catches: refresh() replaces the object's files, reader and buffers one after another (and
    # unmaps the old ones), so threads reading the same object meanwhile raise or read wrong
    # values. Another object extends the map between refreshes.
    build, open_map, sample, read = KINDS[kind]
    path = tmp_path / kind
    build(path)
    m = open_map(path)
    other = open_map(path)

    def write(r):
        n = len(other)
        other.extend([sample(i) for i in range(n, n + BATCH // 5)])
        for _ in range(4):
            m.refresh()

    run_threads(write, m, read)
    m.refresh()
    assert len(m) == START + ROUNDS * (BATCH // 5)
