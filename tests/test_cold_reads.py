"""Reads from disk: every batch read asks the kernel for all of its ranges first, reads what it
reads correctly whatever is in the page cache (evicted before, or evicted meanwhile by another
thread), reads a bounded number of bytes beyond the batch's own, and ``prefetch`` starts
reading in the background."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmap_ninja import RaggedMmap, StringsMmap, open_existing, pagecache
from mmap_ninja import numpy as np_ninja
from mmap_ninja.sharded import ShardedMmap

N = 1500


def _lengths(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, N)


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """The folder of a map of every kind (and of sharded maps of three kinds), with the samples
    it holds. Tests open them anew after evicting them: pages a process has mapped and read
    stay in the page cache."""
    root = tmp_path_factory.mktemp("cold")
    rng = np.random.default_rng(7)
    tokens = [rng.integers(-2**31, 2**31, n, dtype=np.int32) for n in _lengths(1)]
    rows = [rng.standard_normal((n, 3)).astype(np.float32) for n in _lengths(2) // 10]
    texts = ["".join(chr(c) for c in rng.integers(32, 0x2FFF, n // 3)) for n in _lengths(3)]
    table = rng.standard_normal((N, 40))
    RaggedMmap.from_lists(root / "ragged", tokens)
    RaggedMmap.from_lists(root / "rows", rows)
    StringsMmap.from_strings(root / "strings", texts)
    np_ninja.from_ndarray(root / "numpy", table)
    ShardedMmap.from_generator(root / "s_ragged", tokens, part_size=400)
    ShardedMmap.from_generator(root / "s_strings", texts, part_size=400)
    ShardedMmap.from_generator(root / "s_numpy", list(table), part_size=400, kind="numpy")
    return {"ragged": (root / "ragged", Samples(tokens)), "rows": (root / "rows", Samples(rows)),
            "strings": (root / "strings", Samples(texts)), "numpy": (root / "numpy", Samples(table)),
            "sharded ragged": (root / "s_ragged", Samples(tokens)),
            "sharded strings": (root / "s_strings", Samples(texts)),
            "sharded numpy": (root / "s_numpy", Samples(table))}


class Samples(list):
    """The samples a map holds (shown by their number only)."""

    def __repr__(self) -> str:
        return f"<{len(self)} samples>"


def _data_files(folder: Path) -> list:
    """The files of the samples' bytes under ``folder`` (a map's, or each part's of a sharded
    map), not those of their offsets and shapes."""
    components = {"starts", "ends", "shapes", "flattened_shapes", "keys"}
    return [path for path in folder.rglob("data.ninja") if not components & set(path.relative_to(folder).parts)]


def _data_resident(folder: Path) -> int:
    """Bytes of the samples' data files under ``folder`` in the page cache."""
    return sum(pagecache.residency(path)[0] for path in _data_files(folder))


def _cold(folder: Path):
    """The map at ``folder`` opened anew, none of its samples' bytes in the page cache (maps
    and views of it no longer used are let go of first)."""
    gc.collect()
    pagecache.evict(folder)
    assert _data_resident(folder) == 0
    return open_existing(folder)


def _batches(m, index):
    """Every batch read of ``m`` at ``index`` (a list of ints), as lists of samples."""
    if isinstance(m, np.memmap):
        return {"take": list(np_ninja.take(m, index))}
    out = {"getitem": list(m[index]), "getitems": list(m.__getitems__(index))}
    kind = m.kind if isinstance(m, ShardedMmap) else type(m).__name__
    if kind in ("ragged", "RaggedMmap"):
        out["take"] = m.take(index).arrays()
        if all(np.ndim(m[i]) >= 1 for i in index):
            padded, lengths = m.padded(index)
            out["padded"] = [padded[k, :lengths[k]] for k in range(len(index))]
    if kind in ("string", "StringsMmap"):
        out["get_bytes"] = [b.decode() for b in m.get_bytes(index)]
    return out


def _assert_same(read, expected):
    assert len(read) == len(expected)
    for a, b in zip(read, expected):
        if isinstance(b, str):
            assert a == b
        else:
            np.testing.assert_array_equal(np.asarray(a), b)


ALL = ["ragged", "rows", "strings", "numpy", "sharded ragged", "sharded strings", "sharded numpy"]


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_batch_read_equals_the_samples_after_eviction(maps, name, data):
    folder, samples = maps[name]
    index = data.draw(st.lists(st.integers(0, N - 1), min_size=0, max_size=300))
    for how in list(_batches(open_existing(folder), [0])):
        read = _batches(_cold(folder), index)[how]  # each read starts from disk
        _assert_same(read, [samples[i] for i in index])
        del read


@pytest.mark.parametrize("name", ["ragged", "strings", "sharded ragged", "sharded strings"])
def test_slices_and_iteration_after_eviction(maps, name):
    folder, samples = maps[name]
    _assert_same(_cold(folder)[100:1300:3], samples[100:1300:3])
    _assert_same(_cold(folder)[-700:], samples[-700:])
    _assert_same(list(_cold(folder)), samples)


@pytest.mark.parametrize("name", ALL)
def test_batches_read_while_another_thread_keeps_evicting(maps, name):
    folder, samples = maps[name]
    stop = threading.Event()
    evictions = [0]

    def evict_again_and_again():
        while not stop.is_set():
            pagecache.evict(folder)
            evictions[0] += 1

    evicting = threading.Thread(target=evict_again_and_again)
    evicting.start()
    try:
        rng = np.random.default_rng(3)
        rounds = 0
        while rounds < 30 or evictions[0] < 10:
            rounds += 1
            m = open_existing(folder)  # anew: what it has not read yet can be evicted meanwhile
            index = rng.integers(0, N, 256).tolist()
            for read in _batches(m, index).values():
                _assert_same(read, [samples[i] for i in index])
            del m
    finally:
        stop.set()
        evicting.join()
    assert evictions[0] >= 10


def _prefetch(m, index):
    if isinstance(m, np.memmap):
        np_ninja.prefetch(m, index)
    else:
        m.prefetch(index)


@pytest.mark.parametrize("name", ["ragged", "strings", "numpy", "sharded ragged", "sharded strings",
                                  "sharded numpy"])
def test_prefetch_reads_the_samples_in_the_background(maps, name):
    folder, samples = maps[name]
    m = _cold(folder)
    total = sum(path.stat().st_size for path in _data_files(folder))
    _prefetch(m, list(range(0, N, 2)))  # half of the samples, spread over every part
    deadline = time.monotonic() + 20
    while _data_resident(folder) < 0.4 * total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _data_resident(folder) >= 0.4 * total
    _prefetch(m, [])  # nothing to read
    _prefetch(m, slice(None))  # in memory already: harmless
    _assert_same(_batches(m, [0, N - 1, 5])["getitem" if not isinstance(m, np.memmap) else "take"],
                 [samples[0], samples[N - 1], samples[5]])


@pytest.mark.parametrize("name", ["ragged", "strings", "numpy", "sharded ragged", "sharded numpy"])
def test_prefetch_refuses_an_index_out_of_range(maps, name):
    m = open_existing(maps[name][0])
    with pytest.raises(IndexError, match=str(N)):
        _prefetch(m, [0, N])
    with pytest.raises(IndexError):
        _prefetch(m, [-N - 1])


def test_prefetch_of_a_closed_map_raises_and_of_an_empty_map_does_nothing(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(3)])
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.prefetch([0])
    empty = RaggedMmap.from_lists(tmp_path / "e", [])
    empty.prefetch([])
    with pytest.raises(IndexError):
        empty.prefetch([0])
    assert np_ninja.prefetch(np.asfortranarray(np.ones((4, 3))), [1]) is None  # Fortran order: nothing to do
    with pytest.raises(TypeError):
        np_ninja.prefetch(np.float64(3), [0])


def _mapped_flags(path: Path) -> list:
    """The ``VmFlags`` of every mapping of ``path`` in this process."""
    flags, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line and not line[0].isupper() and len(line.split()) >= 6:
            current = line.split(maxsplit=5)[5]
        elif line.startswith("VmFlags:") and current == str(path):
            flags.append(line.split()[1:])
    return flags


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_the_readers_mapping_is_advised_for_random_access_and_the_users_data_is_not(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(100000)])
    flags = _mapped_flags(m.out_dir / "data.ninja")
    assert any("rr" in f for f in flags), flags  # the reader's: a fault reads its own page only
    assert any("rr" not in f for f in flags), flags  # m.memmap: whole scans keep the read-ahead
    s = StringsMmap.from_strings(tmp_path / "s", ["a" * 100000])
    assert any("rr" in f for f in _mapped_flags(s.out_dir / "data.ninja"))


_COLD_BATCH = """
import json, sys
import numpy as np
from mmap_ninja import RaggedMmap, pagecache
def read_bytes():
    for line in open("/proc/self/io"):
        if line.startswith("read_bytes"):
            return int(line.split()[1])
m = RaggedMmap(sys.argv[1])
pagecache.evict(m.out_dir / "data.ninja")
assert pagecache.residency(m.out_dir / "data.ninja")[0] == 0
index = np.random.default_rng(int(sys.argv[2])).choice(len(m), 256, replace=False)
before = read_bytes()
batch = getattr(m, sys.argv[3])(index)
used = int(sum(np.asarray(m[int(i)]).nbytes for i in index))
print(json.dumps({"read": read_bytes() - before, "used": used}))
"""


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
@pytest.mark.parametrize("how", ["take", "padded", "__getitems__"])
def test_a_cold_batch_reads_at_most_three_times_its_own_bytes(tmp_path, how):
    rng = np.random.default_rng(11)
    m = RaggedMmap.from_generator(tmp_path / "m", (rng.integers(0, 1000, n, dtype=np.int32)
                                                  for n in rng.integers(2000, 8000, 12000)), batch_size=1000)
    assert m.memmap.nbytes > 200 << 20  # far more than any read-ahead around 256 faults would stay under
    for seed in (1, 2):
        out = subprocess.run([sys.executable, "-c", _COLD_BATCH, str(m.out_dir), str(seed), how],
                             capture_output=True, text=True, check=True)
        counted = json.loads(out.stdout)
        assert 0 < counted["read"] <= 3 * counted["used"], counted


def test_the_offsets_are_read_in_when_a_map_opens(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(i % 7) for i in range(300000)])
    del m
    pagecache.evict(tmp_path / "m" / "starts")
    pagecache.evict(tmp_path / "m" / "ends")
    m = RaggedMmap(tmp_path / "m")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        resident = [pagecache.residency(tmp_path / "m" / name) for name in ("starts", "ends")]
        if all(r >= 0.9 * t for r, t in resident):
            break
        time.sleep(0.05)
    assert all(r >= 0.9 * t for r, t in resident), resident
    assert len(m) == 300000
    os.sync()


def test_prefetch_reads_a_sample_far_larger_than_the_devices_read_ahead_whole(tmp_path):
    """The kernel reads at most the device's read-ahead per ``madvise`` call and drops the rest:
    a 48 MB sample is asked for in pieces, and comes in whole."""
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(3), np.ones(12 << 20, dtype=np.int32), np.arange(2)])
    m = _cold(tmp_path / "m")
    m.prefetch([1])
    data = tmp_path / "m" / "data.ninja"
    deadline = time.monotonic() + 30
    while pagecache.residency(data)[0] < 0.95 * (48 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pagecache.residency(data)[0] >= 0.95 * (48 << 20)
    assert int(m[1].sum()) == 12 << 20


def test_a_large_sample_read_alone_is_asked_for_whole_before_it_is_touched(tmp_path):
    """The reader maps the data for random access (a page fault reads one page): a sample of
    more than 32 KiB read alone is asked of the kernel whole, so a scan of it does not fault
    page by page."""
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(3), np.arange(1 << 20, dtype=np.int32), np.arange(2)])
    m = _cold(tmp_path / "m")
    view = m[1]  # a view: nothing of it touched yet
    deadline = time.monotonic() + 30
    while _data_resident(tmp_path / "m") < 0.95 * (4 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _data_resident(tmp_path / "m") >= 0.95 * (4 << 20)
    assert int(view[-1]) == (1 << 20) - 1
    del view, m
    small = _cold(tmp_path / "m")[0]  # a few pages: left to the page faults
    assert _data_resident(tmp_path / "m") <= 16384 and small.tolist() == [0, 1, 2]
