"""The lifecycle shared by every kind of map (mmap_ninja._lifecycle and _storage.Replacement):
building aside and swapping, what moves along, what is cleaned up, and the one cast rule."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmap_ninja
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

BUILDERS = {
    "ragged": lambda p, v: RaggedMmap.from_lists(p, [np.full(3, v)]),
    "strings": lambda p, v: StringsMmap.from_strings(p, [f"v{v}"]),
    "numpy": lambda p, v: np_ninja.from_ndarray(p, np.full((2, 2), v)),
}


def first_value(path):
    m = mmap_ninja.open_existing(path)
    sample = m[0]
    return sample if isinstance(sample, str) else int(np.asarray(sample).reshape(-1)[0])


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_rebuild_keeps_the_users_own_files_in_the_folder(tmp_path, kind):
    BUILDERS[kind](tmp_path / "m", 1)
    (tmp_path / "m" / "README.txt").write_text("my notes")
    (tmp_path / "m" / "extra").mkdir()
    BUILDERS[kind](tmp_path / "m", 2)
    assert (tmp_path / "m" / "README.txt").read_text() == "my notes" and (tmp_path / "m" / "extra").is_dir()
    assert first_value(tmp_path / "m") in (2, "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_map_folder_behind_a_symlink_is_rebuilt_where_it_is(tmp_path, kind):
    BUILDERS[kind](tmp_path / "real", 1)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    BUILDERS[kind](tmp_path / "link", 2)
    assert (tmp_path / "link").is_symlink()
    assert first_value(tmp_path / "real") in (2, "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


BUILD_AND_DIE = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from mmap_ninja.ragged import RaggedMmap

    def samples():
        for i in range(10):
            yield np.arange(i + 1)
        os._exit(9)  # dies in the middle of the build, with no clean-up

    RaggedMmap.from_generator(sys.argv[1], samples(), batch_size=3)
    """
)


def test_builds_abandoned_by_dead_writers_are_removed_by_the_next_write(tmp_path):
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(2)])
    (tmp_path / "m.b").mkdir()  # a folder whose name merely starts alike is not touched
    died = subprocess.run([sys.executable, "-c", BUILD_AND_DIE, str(tmp_path / "m")])
    assert died.returncode == 9
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".building")
    assert [s.tolist() for s in RaggedMmap(tmp_path / "m")] == [[0, 1]]  # the old map, untouched
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(3)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.b"]


def test_replaced_samples_last_value_wins_and_batches_commit_once(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.zeros(2, np.int64), np.zeros(3, np.int64)], mode="r+")
    m[[0, 0, 1]] = [np.full(2, 5), np.full(2, 6), np.full(3, 7)]
    assert [s.tolist() for s in RaggedMmap(tmp_path / "m")] == [[6, 6], [7, 7, 7]]
    assert mmap_ninja.verify(tmp_path / "m", deep=True) == []


def test_an_assignment_after_another_writer_changed_the_map_is_refused(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.zeros(2, np.int64)], mode="r+")
    RaggedMmap(tmp_path / "m").extend([np.ones(1, np.int64)])
    with pytest.raises(ValueError, match="changed by another writer"):
        m[0] = [3, 3]
    m.refresh()
    m[0] = [3, 3]
    assert [s.tolist() for s in RaggedMmap(tmp_path / "m")] == [[3, 3], [1]]


@pytest.mark.parametrize("cls,build", [(RaggedMmap, lambda p: RaggedMmap.from_lists(p, [[1, 2]])),
                                        (StringsMmap, lambda p: StringsMmap.from_strings(p, ["ab"]))])
def test_a_closed_map_pickles_and_reopens(tmp_path, cls, build):
    build(tmp_path / "m")
    m = cls(tmp_path / "m")
    m.close()
    assert "closed" in repr(m)
    copy = pickle.loads(pickle.dumps(m))
    assert len(copy) == 1 and not copy.closed


# -- one cast rule for every kind: values that would overflow are refused ----------------------

@pytest.mark.parametrize("value,dtype", [(1e300, np.float32), (1e39, np.float32), (1e10, np.float16),
                                         (70000, np.float16), (1e300 + 1j, np.complex64)])
def test_values_that_overflow_a_float_dtype_are_refused_and_the_map_is_unchanged(tmp_path, value, dtype):
    # before: stored as inf with only a numpy warning
    ragged = RaggedMmap.from_lists(tmp_path / "r", [np.zeros(2, dtype)])
    with pytest.raises(TypeError, match="sample 1: the value .* does not fit in"):
        ragged.extend([np.array([1.0, value])])
    assert len(RaggedMmap(tmp_path / "r")) == 1
    np_ninja.from_ndarray(tmp_path / "n", np.zeros((1, 2), dtype))
    with pytest.raises(TypeError, match="does not fit in"):
        np_ninja.extend_dir(tmp_path / "n", np.array([[1.0, value]]))
    with pytest.raises(TypeError, match="sample 1"):
        np_ninja.from_generator(tmp_path / "g", iter([np.zeros(2, dtype), np.array([value, 0])]), batch_size=1)
    assert np_ninja.open_existing(tmp_path / "n").shape == (1, 2)


def test_infinities_and_nans_that_were_given_are_kept(tmp_path):
    ragged = RaggedMmap.from_lists(tmp_path / "r", [np.zeros(1, np.float16)])
    ragged.extend([np.array([np.inf, -np.inf, np.nan, 65504.0])])
    stored = RaggedMmap(tmp_path / "r")[1]
    assert np.isposinf(stored[0]) and np.isneginf(stored[1]) and np.isnan(stored[2]) and stored[3] == 65504


def test_no_descriptor_is_held_by_open_maps(tmp_path):
    RaggedMmap.from_lists(tmp_path / "r", [np.zeros((2, 2)), np.arange(3.0)])
    StringsMmap.from_strings(tmp_path / "s", ["a", "b"])
    np_ninja.from_ndarray(tmp_path / "n", np.zeros((3, 3)))
    before = len(os.listdir("/proc/self/fd"))
    kept = [RaggedMmap(tmp_path / "r"), StringsMmap(tmp_path / "s"), np_ninja.open_existing(tmp_path / "n")]
    assert len(os.listdir("/proc/self/fd")) == before
    assert kept[0][0].shape == (2, 2) and kept[1][1] == "b" and kept[2].shape == (3, 3)


# -- what a review of the swap found ------------------------------------------------------------

def test_user_files_with_names_like_the_maps_own_survive_every_replacement(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "r", [np.zeros(2), np.zeros(3)], mode="r+")
    (tmp_path / "r" / "notes.tmp").write_text("mine")
    (tmp_path / "r" / "model.new").write_text("mine too")
    m[0] = [1, 1]
    np_ninja.from_ndarray(tmp_path / "n", np.zeros((2, 2)))
    (tmp_path / "n" / "ends").mkdir()  # a numpy map has no component folders: this one is the user's
    (tmp_path / "n" / "ends" / "x").write_text("kept")
    np_ninja.extend_dir(tmp_path / "n", np.ones((1, 2)))
    np_ninja.from_ndarray(tmp_path / "n", np.ones((3, 2)))
    assert (tmp_path / "r" / "notes.tmp").read_text() == "mine" and (tmp_path / "r" / "model.new").exists()
    assert (tmp_path / "n" / "ends" / "x").read_text() == "kept"


def test_user_files_of_a_version_whose_writer_died_after_the_swap_come_back(tmp_path):
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(3)])
    # what a writer killed right after its swap leaves: the old version, with the user's file,
    # beside the map
    old = tmp_path / ".m.0123456789ab.building"
    RaggedMmap.from_lists(old, [np.arange(2)])
    (old / "labels.json").write_text("{}")
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(4)])
    assert (tmp_path / "m" / "labels.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_assignment_checks_values_against_the_map_as_another_writer_left_it(tmp_path):
    stale = StringsMmap.from_strings(tmp_path / "s", ["abc", "def"])
    StringsMmap.from_strings(tmp_path / "s", ["xyz" * 20, "uvw" * 20], zstd_level=3)  # same length
    with pytest.raises(ValueError, match="compressed"):
        stale[1] = "ghi"
    assert StringsMmap(tmp_path / "s")[:] == ["xyz" * 20, "uvw" * 20]
    old = RaggedMmap.from_lists(tmp_path / "r", [np.zeros(3, np.int64), np.zeros(3, np.int64)], mode="r+")
    RaggedMmap.from_lists(tmp_path / "r", [np.zeros(2, np.float32), np.zeros(5, np.float32)])
    with pytest.raises(ValueError, match="sample 0 has shape"):
        old[0] = [1, 2, 3]
    assert mmap_ninja.verify(tmp_path / "r", deep=True) == []


@pytest.mark.parametrize("kind", ["ragged", "ragged n-d", "strings"])
def test_an_open_map_shows_the_offsets_and_shapes_of_the_version_it_read(tmp_path, kind):
    if kind == "strings":
        m = StringsMmap.from_strings(tmp_path / "m", ["ab", "cd", "ef"])
        StringsMmap(tmp_path / "m")[0] = "xy"  # another object commits a new version
    else:
        first = np.zeros((2, 2)) if kind == "ragged n-d" else np.zeros(4)
        m = RaggedMmap.from_lists(tmp_path / "m", [first, np.zeros(2), np.zeros(3)])
        RaggedMmap(tmp_path / "m", mode="r+")[0] = np.ones_like(first)
    assert m.starts.tolist() == [0, 2, 4] if kind == "strings" else m.starts.tolist() == [0, 4, 6]
    assert len(m.ends) == 3
    if kind != "strings":
        assert m.flattened_shapes.tolist() == [4, 2, 3]
        shapes = m.shapes
        assert [tuple(np.asarray(shapes[i]).reshape(-1)) for i in range(3)] == (
            [(2, 2), (2,), (3,)] if kind == "ragged n-d" else [(4,), (2,), (3,)])


def test_a_replacement_keeps_the_folders_permissions(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.zeros(2)], mode="r+")
    os.chmod(tmp_path / "m", 0o2750)
    os.chmod(tmp_path / "m" / "data.ninja", 0o640)
    m[0] = [1, 1]
    assert oct((tmp_path / "m").stat().st_mode & 0o7777) == oct(0o2750)
    assert oct((tmp_path / "m" / "data.ninja").stat().st_mode & 0o777) == oct(0o640)


def test_the_working_folder_can_be_rebuilt_by_a_relative_path(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path / "m")
    built = RaggedMmap.from_lists(".", [np.arange(3), np.arange(1)])  # "." is the folder being replaced
    assert len(built) == 2 and built.out_dir == tmp_path / "m"
    assert [s.tolist() for s in RaggedMmap(tmp_path / "m")] == [[0, 1, 2], [0]]


def test_without_an_atomic_exchange_replacements_still_work_and_a_writer_killed_between_renames_loses_nothing(
        tmp_path, monkeypatch):
    import errno as errno_module

    from mmap_ninja import _storage

    def no_exchange(a, b):
        raise OSError(errno_module.ENOSYS, "no renameat2 here")

    monkeypatch.setattr(_storage.locking, "exchange", no_exchange)  # a file system without RENAME_EXCHANGE
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(3)])
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(5)])
    assert [s.tolist() for s in RaggedMmap(tmp_path / "m")] == [[0, 1, 2, 3, 4]]
    # a writer killed after renaming the map away, before putting the new version in place
    (tmp_path / "m").rename(tmp_path / ".m.0123456789ab.building.old")
    with pytest.raises(mmap_ninja.ChangedWhileOpening):
        RaggedMmap(tmp_path / "m")  # readers wait for the swap, and say so if it never ends
    with _storage.WriterLock(tmp_path / "m"):  # the first step of any write: it finishes the recovery
        pass
    assert [s.tolist() for s in RaggedMmap(tmp_path / "m")] == [[0, 1, 2, 3, 4]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_full_disk_during_a_rebuild_keeps_the_old_map_and_leaves_nothing(tmp_path, monkeypatch, kind):
    import errno as errno_module

    from mmap_ninja import _storage

    BUILDERS[kind](tmp_path / "m", 1)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError(errno_module.ENOSPC, "No space left on device")

    monkeypatch.setattr(_storage.commit, "write_at", disk_full)  # every data write of the new version fails
    with pytest.raises(OSError, match="No space left"):
        BUILDERS[kind](tmp_path / "m", 2)
    monkeypatch.undo()
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before and first_value(tmp_path / "m") in (1, "v1")
