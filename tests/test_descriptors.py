"""File descriptors and closing.

An open map holds no file descriptor: a process may keep thousands of maps open (a dataset of
many shards, a DataLoader worker per shard...) under the usual limit of 1,024 descriptors.
Every map object has ``close()`` and is a context manager; reading a closed map raises
``ValueError`` saying it is closed; views handed out before stay valid, after ``close()`` and
after the map object is gone; ``refresh()`` reopens a closed map.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

OPENS = 2_000  # maps of one kind alive at once
SHARDS = 5  # distinct maps of each kind, each opened OPENS / SHARDS times
SLACK = 10  # descriptors the process may gain while it opens the maps of one kind

MANY_MAPS = textwrap.dedent(
    """
    import gc, json, os, resource, sys
    import numpy as np

    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    from mmap_ninja import numpy as np_ninja
    from mmap_ninja.ragged import RaggedMmap
    from mmap_ninja.string import StringsMmap

    root, kinds, opens, shards = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])

    def sample(kind, j, k):
        if kind == "ragged":
            return np.full(k + 1, j * 100 + k, dtype=np.int64)
        if kind == "ragged n-d":
            return np.full((2, k + 1), j * 100 + k, dtype=np.int64)
        if kind == "strings":
            return f"shard {j} string {k} ж"
        return np.full(3, j * 100 + k, dtype=np.int64)

    def build(kind, path, j):
        samples = [sample(kind, j, k) for k in range(5)]
        if kind.startswith("ragged"):
            RaggedMmap.from_lists(path, samples)
        elif kind == "strings":
            StringsMmap.from_strings(path, samples)
        else:
            np_ninja.from_ndarray(path, np.stack(samples))

    def open_map(kind, path):
        if kind.startswith("ragged"):
            return RaggedMmap(path)
        if kind == "strings":
            return StringsMmap(path, mode="rb")
        return np_ninja.open_existing(path)

    def check(kind, m, j):
        if kind == "strings":
            assert m[3] == sample(kind, j, 3) and m[[0, 4]] == [sample(kind, j, 0), sample(kind, j, 4)]
            assert m.get_bytes(1) == sample(kind, j, 1).encode()
            return
        assert np.array_equal(m[3], sample(kind, j, 3))
        if kind.startswith("ragged"):
            batch = m.take([0, 4])
            assert np.array_equal(batch[1], sample(kind, j, 4))

    paths = {}
    for kind in kinds:
        for j in range(shards):
            paths[kind, j] = os.path.join(root, f"{kind.replace(' ', '_')}{j}")
            build(kind, paths[kind, j], j)

    def descriptors():
        return len(os.listdir("/proc/self/fd"))

    # open the maps of one kind after another, keeping all of them; a kind that runs out of
    # descriptors is reported, and its maps dropped so that the next kinds can be tried
    report, maps = {}, []
    for kind in kinds:
        before, opened = descriptors(), []
        try:
            for c in range(opens):
                j = c % shards
                m = open_map(kind, paths[kind, j])
                check(kind, m, j)
                opened.append((kind, j, m))
            report[kind] = {"descriptors": descriptors() - before}
            maps += opened
        except Exception as exc:
            report[kind] = {"error": f"after {len(opened)} maps: {exc!r}"}
            del opened
            gc.collect()
    for kind, j, m in maps:  # every map still open and readable
        check(kind, m, j)
    print(json.dumps({"kinds": report, "maps": len(maps)}))
    """
)

KINDS = ["ragged", "ragged n-d", "strings", "numpy"]


def test_thousands_of_open_maps_hold_no_descriptors(tmp_path):
    # Catches: every open map keeping a file descriptor per mapped file (np.memmap and
    # mmap.mmap duplicate the descriptor they map), so a process that keeps 2,000 maps of each
    # kind open at once (8,000 maps) runs out of descriptors (OSError: Too many open files)
    # under a limit of 1,024.
    proc = subprocess.run([sys.executable, "-c", MANY_MAPS, str(tmp_path), ",".join(KINDS), str(OPENS), str(SHARDS)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {kind: r for kind, r in result["kinds"].items() if "error" in r or r["descriptors"] > SLACK}
    assert not failed, f"keeping {OPENS} maps of a kind open: {failed}"
    assert result["maps"] == OPENS * len(KINDS)


# -- close() and context managers --------------------------------------------------------------

FLAT = [np.arange(i + 1, dtype=np.int64) + 10 * i for i in range(6)]
NESTED = [np.arange(6, dtype=np.int64).reshape(2, 3) * i for i in range(6)] + [np.arange(3)]
STRINGS = [f"string {i} ж" for i in range(6)]


def reading_calls(m):
    """Every way of reading ``m``."""
    if isinstance(m, StringsMmap):
        return [lambda: m[0], lambda: m[[0, 2]], lambda: m[1:3], lambda: m.get_bytes(0), lambda: m.get_bytes([1]),
                lambda: m[-1]]
    return [lambda: m[0], lambda: m[[0, 2]], lambda: m[1:3], lambda: m.take([0, 1]), lambda: m.padded([0]),
            lambda: m[-1]]


@pytest.fixture(params=["ragged", "ragged n-d", "strings"])
def built(request, tmp_path):
    path = tmp_path / "map"
    if request.param == "strings":
        StringsMmap.from_strings(path, STRINGS)
        return path, (lambda: StringsMmap(path, mode="rb")), STRINGS
    samples = FLAT if request.param == "ragged" else NESTED
    RaggedMmap.from_lists(path, samples)
    return path, (lambda: RaggedMmap(path)), samples


def same(a, b) -> bool:
    if isinstance(b, str):
        return a == b
    return np.shape(a) == np.shape(b) and np.array_equal(a, b)


def test_reading_a_closed_map_raises(built):
    # Catches: a map with no close(), or one that reads (or crashes) after close() instead of
    # raising ValueError saying it is closed.
    path, open_map, samples = built
    m = open_map()
    m.close()
    for call in reading_calls(m):
        with pytest.raises(ValueError, match="closed"):
            call()
    m.close()  # closing twice is harmless


def test_refresh_reopens_a_closed_map(built):
    # Catches: a closed map that refresh() does not bring back.
    path, open_map, samples = built
    m = open_map()
    m.close()
    m.refresh()
    assert len(m) == len(samples)
    assert all(same(m[i], samples[i]) for i in range(len(samples)))


def test_maps_are_context_managers(built):
    # Catches: a map that is no context manager, or that stays open after the with block.
    path, open_map, samples = built
    with open_map() as m:
        assert same(m[1], samples[1])
        kept = m[2]
    assert same(kept, samples[2])
    with pytest.raises(ValueError, match="closed"):
        m[0]


def test_views_outlive_close_and_the_map_object(built):
    # Catches: close() (or dropping the map object) unmapping memory that views handed out
    # still use: reading them then crashes or returns garbage.
    path, open_map, samples = built
    m = open_map()
    single, several = m[1], m[[0, 2]]
    extra = []
    if isinstance(m, RaggedMmap):
        extra = [m.take([2, 1]), m.memmap]
    m.close()
    del m
    gc.collect()
    for _ in range(2):
        assert same(single, samples[1])
        assert all(same(a, samples[i]) for a, i in zip(several, (0, 2)))
        if extra:
            batch, flat = extra
            assert same(batch[0], samples[2]) and same(batch[1], samples[1])
            assert np.array_equal(flat, np.concatenate([np.ravel(s) for s in samples]))
        # open and drop many more maps meanwhile: their memory must not take the views' place
        for _ in range(50):
            other = open_map()
            other[0]
            other.close()
        gc.collect()


def test_views_outlive_a_dropped_map_that_was_never_closed(built):
    # Catches: a map object whose finaliser unmaps memory that views handed out still use.
    path, open_map, samples = built
    m = open_map()
    views = [m[i] for i in range(len(samples))]
    del m
    gc.collect()
    assert all(same(v, s) for v, s in zip(views, samples))
