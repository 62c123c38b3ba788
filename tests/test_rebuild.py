"""A failed rebuild keeps the old map exactly.

Every ``from_*`` of every kind of map, over an existing map, with an item that cannot be stored
or a source that raises midway (after several batches): the exception propagates, and the old
map is left as it was, byte for byte, with no debris beside it or in it. A ``from_*`` that
succeeds over an existing map leaves no debris either, and one into a new path that fails
leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import file_bytes

import mmap_ninja
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

LOCK = "writer.lock"
GOOD = 30  # good items before the bad one: several batches of BATCH
BATCH = 8


class SourceBroke(Exception):
    """What a user's generator or dataset raises midway."""


def entries(path: Path) -> list:
    """Every file and folder under ``path`` (but the writer's lock file)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.name != LOCK)


def contents(path: Path):
    """What the map at ``path`` reads as, opened as any map."""
    m = mmap_ninja.open_existing(path)
    if isinstance(m, np.ndarray):
        return ("numpy", m.dtype.str, m.shape, np.array(m).tolist())
    if isinstance(m, StringsMmap):
        return ("strings", m[:])
    return ("ragged", str(m.dtype), [(np.shape(s), np.asarray(s).tolist()) for s in m[:]])


def failing_generator(items, bad):
    """``items``, then ``bad`` (an exception instance is raised instead of yielded)."""
    yield from items
    if isinstance(bad, BaseException):
        raise bad
    yield bad


class Dataset:
    """An indexable source of ``GOOD + 10`` samples whose sample ``GOOD`` is ``bad`` (raised when
    it is an exception)."""

    def __init__(self, good, bad):
        self.good, self.bad = good, bad

    def __len__(self):
        return GOOD + 10

    def __getitem__(self, i):
        if i >= len(self):
            raise IndexError(i)
        if i == GOOD:
            if isinstance(self.bad, BaseException):
                raise self.bad
            return self.bad
        return self.good(i)


# -- the old maps ------------------------------------------------------------------------------

def old_ragged(path):
    RaggedMmap.from_lists(path, [np.arange(i % 5 + 1, dtype=np.int64) * 10 + i for i in range(20)])


def old_ragged_nd(path):
    RaggedMmap.from_lists(path, [np.full((2, i % 3 + 1), i, dtype=np.int64) for i in range(20)] + [np.int64(7)])


def old_strings(path):
    StringsMmap.from_strings(path, [f"old {i} ж" for i in range(20)])


def old_numpy(path):
    np_ninja.from_ndarray(path, np.arange(60, dtype=np.int64).reshape(20, 3))


def ragged_good(i):
    return np.arange(i % 4 + 1, dtype=np.uint8)


def object_array():
    return np.array([object(), 1], dtype=object)


def string_good(i):
    return f"new {i}"


def numpy_good(i):
    return np.full(4, i, dtype=np.float32)


# name: (build the old map, failing rebuild, expected exception)
FAILURES = {
    # RaggedMmap.from_lists
    "ragged from_lists, value does not fit the dtype": (
        old_ragged, lambda p: RaggedMmap.from_lists(p, [ragged_good(i) for i in range(GOOD)] + [[300]],
                                                    dtype=np.uint8), (TypeError, ValueError)),
    "ragged from_lists, iterable raises": (
        old_ragged, lambda p: RaggedMmap.from_lists(
            p, failing_generator((ragged_good(i) for i in range(GOOD)), SourceBroke("midway"))), SourceBroke),
    "ragged from_lists, object array": (
        old_ragged_nd, lambda p: RaggedMmap.from_lists(p, [ragged_good(i) for i in range(GOOD)] + [object_array()]),
        (TypeError, ValueError)),
    # RaggedMmap.from_generator
    "ragged from_generator, value does not fit the dtype": (
        old_ragged, lambda p: RaggedMmap.from_generator(
            p, failing_generator((ragged_good(i) for i in range(GOOD)), np.array([300])), BATCH, dtype=np.uint8),
        (TypeError, ValueError)),
    "ragged from_generator, object array": (
        old_ragged_nd, lambda p: RaggedMmap.from_generator(
            p, failing_generator((ragged_good(i) for i in range(GOOD)), object_array()), BATCH),
        (TypeError, ValueError)),
    "ragged from_generator, generator raises": (
        old_ragged, lambda p: RaggedMmap.from_generator(
            p, failing_generator((ragged_good(i) for i in range(GOOD)), SourceBroke("midway")), BATCH),
        SourceBroke),
    # RaggedMmap.from_indexable
    "ragged from_indexable, value does not fit the dtype": (
        old_ragged, lambda p: RaggedMmap.from_indexable(p, Dataset(ragged_good, np.array([-1])), BATCH),
        (TypeError, ValueError)),
    "ragged from_indexable, object array": (
        old_ragged_nd, lambda p: RaggedMmap.from_indexable(p, Dataset(ragged_good, object_array()), BATCH),
        (TypeError, ValueError)),
    "ragged from_indexable, dataset raises": (
        old_ragged, lambda p: RaggedMmap.from_indexable(p, Dataset(ragged_good, SourceBroke("midway")), BATCH),
        SourceBroke),
    # StringsMmap.from_strings
    "strings from_strings, lone surrogate": (
        old_strings, lambda p: StringsMmap.from_strings(p, [string_good(i) for i in range(GOOD)] + ["bad \udcff"]),
        (ValueError, TypeError)),
    "strings from_strings, not a str": (
        old_strings, lambda p: StringsMmap.from_strings(p, [string_good(i) for i in range(GOOD)] + [5]),
        (TypeError, ValueError)),
    "strings from_strings, iterable raises": (
        old_strings, lambda p: StringsMmap.from_strings(
            p, failing_generator((string_good(i) for i in range(GOOD)), SourceBroke("midway"))), SourceBroke),
    # StringsMmap.from_generator
    "strings from_generator, lone surrogate": (
        old_strings, lambda p: StringsMmap.from_generator(
            p, failing_generator((string_good(i) for i in range(GOOD)), "bad \udcff"), BATCH),
        (ValueError, TypeError)),
    "strings from_generator, not a str": (
        old_strings, lambda p: StringsMmap.from_generator(
            p, failing_generator((string_good(i) for i in range(GOOD)), b"bytes"), BATCH),
        (TypeError, ValueError)),
    "strings from_generator, generator raises": (
        old_strings, lambda p: StringsMmap.from_generator(
            p, failing_generator((string_good(i) for i in range(GOOD)), SourceBroke("midway")), BATCH),
        SourceBroke),
    # np_ninja.from_ndarray
    "numpy from_ndarray, object array": (
        old_numpy, lambda p: np_ninja.from_ndarray(p, np.array([[1, None], ["x", 2]], dtype=object)),
        (TypeError, ValueError)),
    # np_ninja.from_generator
    "numpy from_generator, sample of another shape": (
        old_numpy, lambda p: np_ninja.from_generator(
            p, failing_generator((numpy_good(i) for i in range(GOOD)), np.zeros(5, np.float32)), BATCH),
        (ValueError, TypeError)),
    "numpy from_generator, value that cannot be stored": (
        old_numpy, lambda p: np_ninja.from_generator(
            p, failing_generator((numpy_good(i) for i in range(GOOD)), np.array(["a", "b", "c", "d"])), BATCH),
        (TypeError, ValueError)),
    "numpy from_generator, generator raises": (
        old_numpy, lambda p: np_ninja.from_generator(
            p, failing_generator((numpy_good(i) for i in range(GOOD)), SourceBroke("midway")), BATCH),
        SourceBroke),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_a_failed_rebuild_keeps_the_old_map(tmp_path, name):
    # Catches: a from_* over an existing map removes the old map (or writes over its files)
    # before it knows that the new one can be built, so an item that cannot be stored, or a
    # source that fails after several batches, leaves a half-written new map, an empty map, or
    # temporary files and folders.
    build_old, rebuild, error = FAILURES[name]
    parent = tmp_path / "parent"
    path = parent / "map"
    build_old(path)
    (parent / "other").mkdir()
    before_files, before_entries = file_bytes(path), entries(path)
    before_parent, before_contents = sorted(os.listdir(parent)), contents(path)

    with pytest.raises(error):
        rebuild(path)

    assert sorted(os.listdir(parent)) == before_parent, "entries were left beside the map"
    assert entries(path) == before_entries, "the map folder does not hold the files it held"
    after_files = file_bytes(path)
    changed = sorted(name for name in before_files if after_files.get(name) != before_files[name])
    assert not changed, f"files of the old map changed: {changed}"
    assert contents(path) == before_contents
    assert mmap_ninja.verify(path) == []


# name: (build the old map, build the new map at a path)
SUCCESSES = {
    "ragged from_lists": (old_ragged, lambda p: RaggedMmap.from_lists(p, [np.full((2, 2), i) for i in range(9)])),
    "ragged from_generator": (old_ragged_nd, lambda p: RaggedMmap.from_generator(
        p, (ragged_good(i) for i in range(GOOD)), BATCH)),
    "ragged from_indexable": (old_ragged, lambda p: RaggedMmap.from_indexable(
        p, Dataset(ragged_good, ragged_good(GOOD)), BATCH)),
    "strings from_strings": (old_strings, lambda p: StringsMmap.from_strings(p, ["x", "yy", "ж"])),
    "strings from_strings, zstd": (old_strings, lambda p: StringsMmap.from_strings(p, ["x" * 50] * 9, zstd_level=3)),
    "strings from_generator": (old_strings, lambda p: StringsMmap.from_generator(
        p, (string_good(i) for i in range(GOOD)), BATCH)),
    "numpy from_ndarray": (old_numpy, lambda p: np_ninja.from_ndarray(p, np.ones((3, 2), np.float32))),
    "numpy from_ndarray, Fortran order": (old_numpy, lambda p: np_ninja.from_ndarray(
        p, np.asfortranarray(np.arange(12).reshape(4, 3)))),
    "numpy from_generator": (old_numpy, lambda p: np_ninja.from_generator(
        p, (numpy_good(i) for i in range(GOOD)), BATCH, n=100)),
}


@pytest.mark.parametrize("name", sorted(SUCCESSES))
def test_a_rebuild_over_a_map_leaves_no_debris(tmp_path, name):
    # Catches: a from_* that replaces a map leaves files of the old map (a stale shapes/ folder,
    # zstd files, reserved bytes) or temporary files and folders behind.
    build_old, build = SUCCESSES[name]
    build(tmp_path / "fresh")
    expected_entries, expected_contents = entries(tmp_path / "fresh"), contents(tmp_path / "fresh")
    parent = tmp_path / "parent"
    path = parent / "map"
    build_old(path)
    before_parent = sorted(os.listdir(parent))

    build(path)

    assert sorted(os.listdir(parent)) == before_parent, "entries were left beside the map"
    assert entries(path) == expected_entries, "the rebuilt map holds other files than a map built afresh"
    assert contents(path) == expected_contents
    assert mmap_ninja.verify(path) == []


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_a_failed_build_of_a_new_map_leaves_nothing(tmp_path, name):
    # Catches: a from_* into a new path that fails leaves a half-written map, a folder with
    # files in it, or temporary folders beside it.
    _, build, error = FAILURES[name]
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "other").mkdir()
    path = parent / "new"

    with pytest.raises(error):
        build(path)

    assert not path.exists() or not any(path.iterdir()), f"left behind: {sorted(os.listdir(path))}"
    assert sorted(os.listdir(parent)) in (["other"], ["new", "other"]), sorted(os.listdir(parent))
