"""Tests of mmap_ninja.generic.open_existing."""

from __future__ import annotations

import numpy as np
import pytest

from mmap_ninja import generic
from mmap_ninja import numpy as np_ninja
from mmap_ninja.base import Wrapped
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap


def test_dispatches_on_the_type_of_map(tmp_path):
    np_ninja.from_ndarray(tmp_path / "n", np.arange(4))
    RaggedMmap.from_lists(tmp_path / "r", [np.arange(2), np.arange(3)])
    StringsMmap.from_strings(tmp_path / "s", ["a", "bc"])
    numpy_map = generic.open_existing(tmp_path / "n")
    assert isinstance(numpy_map, np.memmap) and numpy_map.tolist() == [0, 1, 2, 3]
    ragged = generic.open_existing(str(tmp_path / "r"))
    assert isinstance(ragged, RaggedMmap) and ragged[1].tolist() == [0, 1, 2]
    strings = generic.open_existing(tmp_path / "s")
    assert isinstance(strings, StringsMmap) and strings[:] == ["a", "bc"]


def test_wrapper_fn_for_every_kind(tmp_path):
    np_ninja.from_ndarray(tmp_path / "n", np.arange(4))
    RaggedMmap.from_lists(tmp_path / "r", [np.arange(2), np.arange(3)])
    StringsMmap.from_strings(tmp_path / "s", ["a", "bc"])
    assert isinstance(generic.open_existing(tmp_path / "n", wrapper_fn=float), Wrapped)
    assert generic.open_existing(tmp_path / "n", wrapper_fn=float)[3] == 3.0
    assert generic.open_existing(tmp_path / "r", wrapper_fn=len)[1] == 3
    assert generic.open_existing(tmp_path / "s", wrapper_fn=str.upper)[1] == "BC"


def test_mode_is_passed_on(tmp_path):
    StringsMmap.from_strings(tmp_path / "s", ["a"])
    assert generic.open_existing(tmp_path / "s", mode="rb").mode == "rb"
    np_ninja.from_ndarray(tmp_path / "n", np.arange(4))
    generic.open_existing(tmp_path / "n", mode="r+")[0] = 5
    assert generic.open_existing(tmp_path / "n")[0] == 5


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no map at"):
        generic.open_existing(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no type.ninja"):
        generic.open_existing(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "type.ninja").write_text("hdf5")
    with pytest.raises(ValueError, match="unknown map type 'hdf5'"):
        generic.open_existing(tmp_path / "odd")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        generic.open_existing(tmp_path / "file")


def test_every_mode_name_works_for_every_kind(tmp_path):
    np_ninja.from_ndarray(tmp_path / "n", np.arange(4))
    RaggedMmap.from_lists(tmp_path / "r", [np.arange(2)])
    StringsMmap.from_strings(tmp_path / "s", ["a"])
    for mode in ("rb", "r"):
        assert generic.open_existing(tmp_path / "n", mode=mode).mode in ("r", "readonly")
        assert generic.open_existing(tmp_path / "r", mode=mode).mode == "r"
        assert generic.open_existing(tmp_path / "s", mode=mode).mode == "rb"
    assert generic.open_existing(tmp_path / "r", mode="r+b").mode == "r+"
    assert generic.open_existing(tmp_path / "s", mode="r+").mode == "r+b"
