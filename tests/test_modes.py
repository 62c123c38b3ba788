"""Modes, as np.memmap and mmap_ninja 0.9.0 define them.

- ``"r"`` (``"rb"`` for strings): read-only; ``m[i] = v`` raises ``ValueError`` and changes no
  file.
- ``"r+"`` (``"r+b"``): ``m[i] = v`` and writes into views reach the file.
- ``"c"``: copy-on-write; ``m[i] = v`` and writes into views change what this object reads,
  never the file.
- ``extend``/``append`` work in ``"r"`` and ``"r+"`` (appending never changes a sample already
  stored) and raise ``ValueError`` in ``"c"``, changing no file.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import file_bytes

import mmap_ninja
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

RAGGED = [np.arange(4, dtype=np.int64), np.arange(6, dtype=np.int64).reshape(2, 3) + 10, np.array([7, 8])]
RAGGED_FLAT = [np.arange(4, dtype=np.int64), np.array([5, 6, 7]), np.array([7, 8])]
STRINGS = ["abc", "дом", "xyz!"]


@pytest.fixture(params=["flat", "n-d"])
def ragged_path(request, tmp_path):
    path = tmp_path / "ragged"
    RaggedMmap.from_lists(path, RAGGED_FLAT if request.param == "flat" else RAGGED)
    return path


@pytest.fixture
def strings_path(tmp_path):
    path = tmp_path / "strings"
    StringsMmap.from_strings(path, STRINGS)
    return path


@pytest.fixture(params=["C", "F"])
def numpy_path(request, tmp_path):
    path = tmp_path / "numpy"
    arr = np.arange(12, dtype=np.int64).reshape(4, 3)
    np_ninja.from_ndarray(path, arr if request.param == "C" else np.asfortranarray(arr))
    return path


def as_lists(samples):
    return [np.asarray(s).tolist() for s in samples]


# -- ragged maps -------------------------------------------------------------------------------

def test_ragged_read_only_mode_refuses_setitem(ragged_path):
    # Catches: m[i] = v on a RaggedMmap opened with mode="r" (the default) writes the file.
    before = file_bytes(ragged_path)
    expected = as_lists(RaggedMmap(ragged_path)[:])
    m = RaggedMmap(ragged_path, mode="r")
    with pytest.raises(ValueError):
        m[0] = [9, 9, 9, 9]
    with pytest.raises(ValueError):
        m[[0, 2]] = [[9, 9, 9, 9], [9, 9]]
    with pytest.raises(ValueError):
        m[:] = [np.zeros_like(s) for s in m[:]]
    assert file_bytes(ragged_path) == before
    assert as_lists(m[:]) == expected and as_lists(RaggedMmap(ragged_path)[:]) == expected
    view = m[0]
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0] = 5
    assert file_bytes(ragged_path) == before


def test_ragged_copy_on_write_mode_changes_the_object_not_the_files(ragged_path):
    # Catches: m[i] = v on a RaggedMmap opened with mode="c" writes the file (every other open
    # sees it), where copy-on-write changes only what this object reads.
    before = file_bytes(ragged_path)
    expected = as_lists(RaggedMmap(ragged_path)[:])
    m = RaggedMmap(ragged_path, mode="c")
    m[0] = [9, 9, 9, 9]
    assert m[0].tolist() == [9, 9, 9, 9]
    m[[2]] = [[4, 5]]
    assert m[2].tolist() == [4, 5]
    assert file_bytes(ragged_path) == before
    assert as_lists(RaggedMmap(ragged_path)[:]) == expected
    assert as_lists(mmap_ninja.open_existing(ragged_path, mode="c")[:]) == expected


def test_ragged_copy_on_write_views_are_writable_and_private(ragged_path):
    # Catches: views handed out in mode "c" that are read-only, or whose writes reach the file.
    before = file_bytes(ragged_path)
    expected = as_lists(RaggedMmap(ragged_path)[:])
    m = RaggedMmap(ragged_path, mode="c")
    view = m[1]
    assert view.flags.writeable
    view[...] = -1
    for sample in m[[0, 2]]:
        sample[...] = -2
    assert (np.asarray(m[1]) == -1).all()
    assert file_bytes(ragged_path) == before
    assert as_lists(RaggedMmap(ragged_path)[:]) == expected


def test_ragged_read_write_mode_writes_through(ragged_path):
    # Catches: m[i] = v or a write into a view of a RaggedMmap opened with mode="r+" that does
    # not reach the file.
    m = RaggedMmap(ragged_path, mode="r+")
    m[0] = [9, 9, 9, 9]
    assert m[0].tolist() == [9, 9, 9, 9]
    assert RaggedMmap(ragged_path)[0].tolist() == [9, 9, 9, 9]
    m[[2]] = [[4, 5]]
    assert RaggedMmap(ragged_path)[2].tolist() == [4, 5]
    view = m[1]
    assert view.flags.writeable
    view[...] = 3
    del view
    assert (np.asarray(RaggedMmap(ragged_path)[1]) == 3).all()


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_ragged_extend_and_append_in_reading_modes(ragged_path, mode):
    # Catches: extend/append refused in "r" or "r+", or appending that changes samples already
    # stored (for this object, for views handed out before, or in the files).
    m = RaggedMmap(ragged_path, mode=mode)
    old = as_lists(m[:])
    views = m[:]
    m.extend([np.array([1, 2]), np.array([3])])
    m.append(np.array([4, 5, 6]))
    assert len(m) == len(old) + 3
    assert as_lists(m[:len(old)]) == old and as_lists(views) == old
    fresh = RaggedMmap(ragged_path)
    assert as_lists(fresh[:]) == old + [[1, 2], [3], [4, 5, 6]]


def test_ragged_extend_and_append_refused_in_copy_on_write_mode(ragged_path):
    # Catches: extend/append on a RaggedMmap opened with mode="c" writes the files.
    before = file_bytes(ragged_path)
    m = RaggedMmap(ragged_path, mode="c")
    n = len(m)
    with pytest.raises(ValueError):
        m.extend([np.array([1, 2])])
    with pytest.raises(ValueError):
        m.append(np.array([1, 2]))
    assert file_bytes(ragged_path) == before
    assert len(m) == n and len(RaggedMmap(ragged_path)) == n


# -- strings maps ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["rb", "r"])
def test_strings_read_only_modes_refuse_setitem(strings_path, mode):
    # Catches: mode "r" not accepted as "rb", or m[i] = s in a read-only mode that writes the
    # file or raises something other than ValueError.
    before = file_bytes(strings_path)
    m = StringsMmap(strings_path, mode=mode)
    with pytest.raises(ValueError):
        m[0] = "zzz"
    with pytest.raises(ValueError):
        m[[0, 2]] = ["zzz", "zzzz"]
    assert file_bytes(strings_path) == before
    assert m[:] == STRINGS and StringsMmap(strings_path)[:] == STRINGS


def test_strings_copy_on_write_mode_changes_the_object_not_the_files(strings_path):
    # Catches: mode "c" refused by StringsMmap, or m[i] = s in "c" that writes the file or is
    # not seen by the object.
    before = file_bytes(strings_path)
    m = StringsMmap(strings_path, mode="c")
    m[0] = "zzz"
    assert m[0] == "zzz"
    m[[1, 2]] = ["мир", "qrs?"]
    assert m[:] == ["zzz", "мир", "qrs?"]
    assert m.get_bytes(1) == "мир".encode()
    assert file_bytes(strings_path) == before
    assert StringsMmap(strings_path)[:] == STRINGS


@pytest.mark.parametrize("mode", ["r+b", "r+"])
def test_strings_read_write_modes_write_through(strings_path, mode):
    # Catches: mode "r+" not accepted as "r+b", or m[i] = s that does not reach the file.
    m = StringsMmap(strings_path, mode=mode)
    m[0] = "zzz"
    m[[2]] = ["qrs?"]
    assert m[0] == "zzz"
    assert StringsMmap(strings_path, mode="rb")[:] == ["zzz", "дом", "qrs?"]


@pytest.mark.parametrize("mode", ["rb", "r", "r+b", "r+"])
def test_strings_extend_and_append_in_reading_modes(strings_path, mode):
    # Catches: extend/append refused in a reading mode (mmap_ninja 0.9.0 appends in "rb"), or
    # appending that changes strings already stored.
    m = StringsMmap(strings_path, mode=mode)
    m.extend(["new", "ж"])
    m.append("last")
    assert m[:] == STRINGS + ["new", "ж", "last"]
    assert StringsMmap(strings_path, mode="rb")[:] == STRINGS + ["new", "ж", "last"]


def test_strings_extend_and_append_refused_in_copy_on_write_mode(strings_path):
    # Catches: mode "c" refused by StringsMmap, or extend/append in "c" that writes the files.
    before = file_bytes(strings_path)
    m = StringsMmap(strings_path, mode="c")
    with pytest.raises(ValueError):
        m.extend(["new"])
    with pytest.raises(ValueError):
        m.append("new")
    assert file_bytes(strings_path) == before
    assert m[:] == STRINGS and StringsMmap(strings_path)[:] == STRINGS


# -- numpy maps --------------------------------------------------------------------------------

def test_numpy_read_only_mode(numpy_path):
    # Catches: np_ninja.open_existing(mode="r") handing out a writable array.
    before = file_bytes(numpy_path)
    arr = np_ninja.open_existing(numpy_path, mode="r")
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0, 0] = 99
    assert file_bytes(numpy_path) == before


def test_numpy_copy_on_write_mode(numpy_path):
    # Catches: np_ninja.open_existing(mode="c") handing out a read-only array, or one whose
    # writes reach the file.
    before = file_bytes(numpy_path)
    expected = np.array(np_ninja.open_existing(numpy_path)).tolist()
    arr = np_ninja.open_existing(numpy_path, mode="c")
    assert arr.flags.writeable
    arr[0, 0] = 99
    arr[3] = -1
    assert arr[0, 0] == 99 and arr[3].tolist() == [-1, -1, -1]
    assert file_bytes(numpy_path) == before
    assert np.array(np_ninja.open_existing(numpy_path)).tolist() == expected


def test_numpy_read_write_mode(numpy_path):
    # Catches: np_ninja.open_existing(mode="r+") whose writes do not reach the file.
    arr = np_ninja.open_existing(numpy_path, mode="r+")
    arr[1, 2] = 99
    arr.flush()
    assert np_ninja.open_existing(numpy_path)[1, 2] == 99


# -- mmap_ninja.open_existing passes modes through -----------------------------------------------

def write_first(m, kind):
    """``m[0] = ...`` for a map of ``kind``: a new value of the same size; returns what it reads
    back as."""
    if kind == "strings":
        m[0] = "zzz"
        return "zzz"
    if kind == "numpy":
        m[0] = -5
        return [-5, -5, -5]
    m[0] = np.full(np.shape(m[0]), -5)
    return np.full(np.shape(m[0]), -5).tolist()


def first(m, kind):
    return m[0] if kind == "strings" else np.asarray(m[0]).tolist()


@pytest.mark.parametrize("kind", ["ragged", "strings", "numpy"])
@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_generic_open_existing_passes_the_mode(tmp_path, kind, mode):
    # Catches: mmap_ninja.open_existing(path, mode=...) that drops the mode, refuses it for a kind
    # (StringsMmap and "c"), or opens with one that behaves otherwise.
    path = tmp_path / kind
    if kind == "ragged":
        RaggedMmap.from_lists(path, RAGGED)
    elif kind == "strings":
        StringsMmap.from_strings(path, STRINGS)
    else:
        np_ninja.from_ndarray(path, np.arange(12, dtype=np.int64).reshape(4, 3))
    before = file_bytes(path)
    original = first(mmap_ninja.open_existing(path), kind)
    m = mmap_ninja.open_existing(path, mode=mode)
    if mode == "r":
        with pytest.raises(ValueError):
            write_first(m, kind)
        assert file_bytes(path) == before
    elif mode == "c":
        new = write_first(m, kind)
        assert first(m, kind) == new
        assert file_bytes(path) == before
        assert first(mmap_ninja.open_existing(path), kind) == original
    else:
        new = write_first(m, kind)
        if kind == "numpy":
            m.flush()
        assert first(mmap_ninja.open_existing(path), kind) == new
