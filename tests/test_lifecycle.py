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
