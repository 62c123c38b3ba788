"""Tests of mmap_ninja._storage: commits, durability, the writer lock, and recovery of
interrupted commits."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import mmap_ninja
from mmap_ninja import _meta
from mmap_ninja import numpy as np_ninja
from mmap_ninja._storage import Commit, WriterLock, durability, set_durability
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_commit_makes_metadata_visible_in_order_at_finish(tmp_path):
    commit = Commit()
    commit.write(tmp_path / "data.bin", 0, b"abc")
    commit.replace(tmp_path / "first.ninja", b"1")
    commit.replace(tmp_path / "second.ninja", b"2")
    assert (tmp_path / "data.bin").read_bytes() == b"abc"
    assert not (tmp_path / "first.ninja").exists()
    commit.finish()
    assert (tmp_path / "first.ninja").read_bytes() == b"1" and (tmp_path / "second.ninja").read_bytes() == b"2"
    assert listing(tmp_path) == ["data.bin", "first.ninja", "second.ninja"]


def test_durability_switches(tmp_path):
    assert Commit().durable
    with durability(False):
        assert not Commit().durable
        with durability(True):
            assert Commit().durable
        assert not Commit().durable
    assert Commit().durable
    set_durability(False)
    try:
        assert not Commit().durable
        RaggedMmap.from_lists(tmp_path / "fast", [[1, 2]]).extend([[3]])
        assert len(RaggedMmap(tmp_path / "fast")) == 2
    finally:
        set_durability(True)
    assert mmap_ninja.durability is durability


def test_writer_lock_is_exclusive_and_released(tmp_path):
    with WriterLock(tmp_path):
        with pytest.raises(BlockingIOError, match="being written by another writer"):
            with WriterLock(tmp_path):
                pass
    with WriterLock(tmp_path):
        pass


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mmap_ninja._storage import WriterLock
    with WriterLock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(60)
    """
)


@pytest.mark.parametrize("kind", ["ragged", "strings", "numpy"])
def test_a_second_writer_fails_at_once_while_readers_go_on(tmp_path, kind):
    path = tmp_path / kind
    if kind == "ragged":
        RaggedMmap.from_lists(path, [[1], [2, 3]])
    elif kind == "strings":
        StringsMmap.from_strings(path, ["a", "bc"])
    else:
        np_ninja.from_ndarray(path, np.arange(6).reshape(3, 2))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(BlockingIOError, match=str(path)):
            if kind == "ragged":
                RaggedMmap(path).extend([[4]])
            elif kind == "strings":
                StringsMmap(path).append("d")
            else:
                np_ninja.extend_dir(path, np.zeros((1, 2)))
        assert time.monotonic() - start < 5  # at once, not after waiting for the other writer
        with pytest.raises(BlockingIOError):
            RaggedMmap.from_lists(path, [[9]])
        assert mmap_ninja.open_existing(path)[1] is not None  # readers take no lock
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert len(mmap_ninja.open_existing(path)) in (2, 3)


def test_readers_write_nothing(tmp_path):
    RaggedMmap.from_lists(tmp_path / "r", [np.zeros((2, 2)), np.arange(3)])
    StringsMmap.from_strings(tmp_path / "s", ["a"], zstd_level=1)
    np_ninja.from_ndarray(tmp_path / "n", np.zeros(3))
    for name in ("r", "s", "n"):
        (tmp_path / name / "writer.lock").unlink()
    before = listing(tmp_path)
    m = RaggedMmap(tmp_path / "r")
    m[0], m[[0, 1]], m.take([1]), m.verify()
    StringsMmap(tmp_path / "s", mode="rb")[:]
    np_ninja.open_existing(tmp_path / "n")
    mmap_ninja.verify(tmp_path / "r")
    RaggedMmap(tmp_path / "none")
    StringsMmap(tmp_path / "none")
    assert listing(tmp_path) == before


def test_an_interrupted_fortran_rewrite_reads_as_done_and_is_finished_by_the_next_writer(tmp_path):
    path = tmp_path / "f"
    np_ninja.from_ndarray(path, np.asfortranarray(np.arange(6).reshape(2, 3)))
    # the state a writer killed inside the commit of a 3-row extend leaves behind
    grown = np.asfortranarray(np.arange(9).reshape(3, 3))
    (path / "data.ninja.new").write_bytes(grown.tobytes(order="F"))
    (path / "shape.ninja.new").write_bytes(_meta.shape_bytes((3, 3)))
    (path / "pending.ninja").write_text("data.ninja.new data.ninja\nshape.ninja.new shape.ninja\n")
    np.testing.assert_array_equal(np_ninja.open_existing(path), grown)
    (path / "data.ninja.new").rename(path / "data.ninja")  # one of the two renames was done
    np.testing.assert_array_equal(np_ninja.open_existing(path), grown)
    np_ninja.extend_dir(path, np.full((1, 3), 9))
    np.testing.assert_array_equal(np_ninja.open_existing(path), np.vstack([grown, np.full((1, 3), 9)]))
    assert not (path / "pending.ninja").exists() and not (path / "shape.ninja.new").exists()


def test_new_files_of_an_unlisted_rewrite_are_ignored_and_cleaned(tmp_path):
    path = tmp_path / "f"
    arr = np.asfortranarray(np.arange(6).reshape(2, 3))
    np_ninja.from_ndarray(path, arr)
    (path / "data.ninja.new").write_bytes(b"garbage")
    (path / "shape.ninja.new").write_bytes(_meta.shape_bytes((5, 3)))
    np.testing.assert_array_equal(np_ninja.open_existing(path), arr)
    np_ninja.append(np_ninja.open_existing(path), [6, 7, 8])
    np.testing.assert_array_equal(np_ninja.open_existing(path), np.vstack([arr, [6, 7, 8]]))
    assert not (path / "data.ninja.new").exists()


def test_an_interrupted_conversion_to_nested_shapes_reads_and_is_repaired(tmp_path):
    path = tmp_path / "r"
    RaggedMmap.from_lists(path, [np.arange(3), np.array(7)])
    RaggedMmap(path).append(np.zeros((2, 2)))
    # a writer killed between switching shapes/ and writing the flag leaves it behind
    (path / _meta.SHAPES_ARE_FLAT).write_bytes(_meta.int32_bytes(1))
    m = RaggedMmap(path)
    assert [np.shape(s) for s in m] == [(3,), (), (2, 2)]
    assert any("interrupted write" in problem for problem in m.verify())
    m.append(np.arange(2))
    assert _meta.read_int32(path / _meta.SHAPES_ARE_FLAT) == 0 and m.verify() == []


APPEND_FOREVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mmap_ninja import durability
    from mmap_ninja.ragged import RaggedMmap
    m = RaggedMmap(sys.argv[1])
    with durability(False):
        while True:
            m.extend([np.full(n % 7 + 1, n) for n in range(len(m), len(m) + 3)])
    """
)


def test_maps_opened_while_a_writer_commits_are_consistent(tmp_path):
    path = tmp_path / "busy"
    RaggedMmap.from_lists(path, [np.full(1, 0)])
    writer = subprocess.Popen([sys.executable, "-c", APPEND_FOREVER, str(path)])
    try:
        deadline = time.monotonic() + 3
        opened = 0
        while time.monotonic() < deadline:
            m = RaggedMmap(path)
            i = len(m) - 1
            np.testing.assert_array_equal(m[i], np.full(i % 7 + 1, i))
            opened += 1
        assert opened > 20 and len(RaggedMmap(path)) > 4
    finally:
        writer.kill()
        writer.wait()


# -- a writer cut short at every step of a commit ------------------------------------------------

class Killed(BaseException):
    """Stands for the process dying: nothing after it runs."""


def cut_short(monkeypatch, steps: int):
    """Make the ``steps + 1``-th file system write (data, metadata, rename) raise ``Killed``."""
    import os

    from mmap_ninja import _meta as meta_module
    from mmap_ninja import _storage as storage_module

    done = [0]

    def counted(original):
        def write(*args, **kwargs):
            if done[0] >= steps:
                raise Killed()
            done[0] += 1
            return original(*args, **kwargs)
        return write

    monkeypatch.setattr(storage_module, "write_at", counted(storage_module.write_at))
    monkeypatch.setattr(meta_module, "write_bytes", counted(meta_module.write_bytes))
    monkeypatch.setattr(os, "replace", counted(os.replace))


def ragged_contents(path):
    return [np.asarray(s).tolist() for s in RaggedMmap(path)]


def strings_contents(path):
    return StringsMmap(path)[:]


def numpy_contents(path):
    try:
        return np_ninja.open_existing(path).tolist()
    except (FileNotFoundError, ValueError):
        return None


SCENARIOS = {
    # name: (prepare(path), write(path), read(path), then(path): a further write of one sample)
    "ragged from_lists": (None, lambda p: RaggedMmap.from_lists(p, [np.arange(3), np.arange(2)]), ragged_contents,
                          lambda p: RaggedMmap(p).extend([np.arange(1)])),
    "ragged from_lists nested": (None, lambda p: RaggedMmap.from_lists(p, [np.zeros((2, 2)), 5]), ragged_contents,
                                 lambda p: RaggedMmap(p).extend([np.ones((1, 2))])),
    "ragged extend of an empty map": (lambda p: RaggedMmap.from_lists(p, [], dtype=np.int16),
                                      lambda p: RaggedMmap(p).extend([np.arange(3)]), ragged_contents,
                                      lambda p: RaggedMmap(p).extend([np.arange(1)])),
    "ragged extend, flat to nested": (lambda p: RaggedMmap.from_lists(p, [np.arange(3), 4]),
                                      lambda p: RaggedMmap(p).extend([np.zeros((2, 2), np.int64)]), ragged_contents,
                                      lambda p: RaggedMmap(p).extend([np.arange(1)])),
    "ragged from_generator": (None, lambda p: RaggedMmap.from_generator(p, iter([[1], [2, 3], [4]]), 2),
                              ragged_contents, lambda p: RaggedMmap(p).extend([[9]])),
    "strings from_strings": (None, lambda p: StringsMmap.from_strings(p, ["ab", "", "cd"]), strings_contents,
                             lambda p: StringsMmap(p).extend(["x"])),
    "strings zstd": (None, lambda p: StringsMmap.from_strings(p, ["ab", "cd"], zstd_level=1), strings_contents,
                     lambda p: StringsMmap(p).extend(["x"])),
    "strings extend of an empty map": (lambda p: StringsMmap.from_strings(p, []),
                                       lambda p: StringsMmap(p).extend(["a", "b"]), strings_contents,
                                       lambda p: StringsMmap(p).extend(["x"])),
    "numpy from_ndarray": (None, lambda p: np_ninja.from_ndarray(p, np.arange(6).reshape(3, 2)), numpy_contents,
                           None),
    "numpy extend, Fortran order": (lambda p: np_ninja.from_ndarray(p, np.asfortranarray(np.zeros((2, 2)))),
                                    lambda p: np_ninja.extend_dir(p, np.ones((1, 2))), numpy_contents,
                                    lambda p: np_ninja.extend_dir(p, np.full((1, 2), 7.0))),
}


# States a write of several commits may also stop at: the batches committed so far.
BETWEEN_COMMITS = {"ragged from_generator": [[[1], [2, 3]]]}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_commit_cut_short_at_any_step_leaves_the_state_before_or_after(tmp_path, monkeypatch, name):
    prepare, write, read, then = SCENARIOS[name]
    clean = tmp_path / "clean" / "map"
    if prepare:
        prepare(clean)
    write(clean)
    expected_after = read(clean)
    for steps in range(200):
        path = tmp_path / f"{steps}" / "map"
        if prepare:
            prepare(path)
        before = read(path)
        with monkeypatch.context() as patch:
            cut_short(patch, steps)
            try:
                write(path)
                finished = True
            except Killed:
                finished = False
        after = read(path)
        if finished:
            assert after == expected_after
            break
        assert after in [before, expected_after] + BETWEEN_COMMITS.get(name, []), (steps, before, after)
        if then is not None:
            then(path)  # and the map takes the next write
            assert len(read(path)) == len(after or []) + 1
    assert finished and steps > 3


EXTEND_FORTRAN_FOREVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mmap_ninja import durability, numpy as np_ninja
    with durability(False):
        while True:
            n = len(np_ninja.open_existing(sys.argv[1]))
            np_ninja.extend_dir(sys.argv[1], np.full((1, 3), n))
    """
)


def test_fortran_maps_opened_while_a_writer_rewrites_them_are_consistent(tmp_path):
    path = tmp_path / "f"
    np_ninja.from_ndarray(path, np.asfortranarray(np.zeros((1, 3), np.int64)))
    writer = subprocess.Popen([sys.executable, "-c", EXTEND_FORTRAN_FOREVER, str(path)])
    try:
        deadline, opened = time.monotonic() + 3, 0
        while time.monotonic() < deadline:
            rows = np.asarray(np_ninja.open_existing(path))
            np.testing.assert_array_equal(rows, np.repeat(np.arange(len(rows))[:, None], 3, axis=1))
            opened += 1
        assert opened > 20 and len(np_ninja.open_existing(path)) > 3
    finally:
        writer.kill()
        writer.wait()


def test_a_numpy_map_whose_creation_was_cut_short_is_no_map(tmp_path):
    np_ninja.from_ndarray(tmp_path / "n", np.zeros(3))
    (tmp_path / "n" / "type.ninja").unlink()
    with pytest.raises(ValueError, match="not a mmap_ninja map"):
        np_ninja.open_existing(tmp_path / "n")
    assert mmap_ninja.verify(tmp_path / "n") == [f"{tmp_path / 'n'} is not a mmap_ninja map: it has no type.ninja"]


def test_a_failing_generator_leaves_neither_the_map_nor_its_reserved_space(tmp_path):
    def rows():
        yield from np.zeros((4, 2))
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        np_ninja.from_generator(tmp_path / "g", rows(), batch_size=2, n=10**6)
    assert list(tmp_path.iterdir()) == []


def _build_in_child(path: str) -> int:
    RaggedMmap.from_generator(path, (np.arange(i % 7) for i in range(300)), batch_size=16)
    return len(RaggedMmap(path))


def test_a_build_aside_starts_flushing_its_batches_and_a_forked_child_builds_too(tmp_path, monkeypatch):
    import multiprocessing
    import threading

    from mmap_ninja._storage import files

    flushed = []
    flush = files._fsync_path
    monkeypatch.setattr(files, "_fsync_path", lambda path, directory=False: (flushed.append(
        (threading.current_thread().name, str(path))), flush(path, directory))[1])
    RaggedMmap.from_generator(tmp_path / "m", (np.arange(i % 7) for i in range(300)), batch_size=16)
    early = [path for name, path in flushed if name.startswith("mmap_ninja-writeback")]
    assert any(path.endswith("data.ninja") for path in early), flushed  # flushed while the build went on
    # and the thread is gone once the build is swapped in: a parallel build after it still forks
    assert not any(thread.name == "mmap_ninja-writeback" for thread in threading.enumerate())
    assert [s.tolist() for s in RaggedMmap(tmp_path / "m")][:8] == [list(range(i % 7)) for i in range(8)]
    monkeypatch.undo()
    # a child forked while this process's writeback thread exists starts its own, and finishes
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_build_in_child, (str(tmp_path / "child"),)).get(timeout=120) == 300
    flushed.clear()
    monkeypatch.setattr(files, "_fsync_path", lambda path, directory=False: flushed.append(str(path)))
    with durability(False):  # nothing is flushed, early or late
        RaggedMmap.from_generator(tmp_path / "n", (np.arange(3) for _ in range(50)), batch_size=8)
    assert flushed == []
    RaggedMmap.from_generator(tmp_path / "o", (np.arange(3) for _ in range(50)), batch_size=8)
    assert flushed  # the same patch sees the flushes of a durable build
