"""Corrupted maps raise clear exceptions, never crash or hang: hypothesis damages copies of valid
maps (flipped bytes, truncated, deleted, swapped or garbage files) and every way of opening,
reading and verifying them must either work or raise. tools/fuzz_maps.py runs many more cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmap_ninja
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

# What a damaged map may raise: nothing else, and no crash.
EXPECTED = (ValueError, IndexError, TypeError, OSError, MemoryError, ImportError)


def build_maps(root: Path) -> dict:
    """One valid map of every kind and layout, to be damaged."""
    rng = np.random.default_rng(0)
    maps = {
        "ragged_flat": lambda p: RaggedMmap.from_lists(p, [rng.integers(0, 9, size=n) for n in (3, 0, 5, 1)] + [7]),
        "ragged_nested": lambda p: RaggedMmap.from_lists(
            p, [np.zeros((2, 3)), np.arange(4.0), np.array(2.5), np.ones((1, 1, 2))]),
        "strings": lambda p: StringsMmap.from_strings(p, ["Torba", "", "Привет", "日本語", "x" * 40]),
        "strings_zstd": lambda p: StringsMmap.from_strings(p, ["Torba " * 9, "", "Привет " * 5], zstd_level=3),
        "numpy_c": lambda p: np_ninja.from_ndarray(p, np.arange(24, dtype=np.int16).reshape(6, 4)),
        "numpy_f": lambda p: np_ninja.from_ndarray(p, np.asfortranarray(np.arange(12.0).reshape(3, 4))),
    }
    for name, build in maps.items():
        build(root / name)
        (root / name / "writer.lock").unlink()
    return {name: sorted(p.relative_to(root / name) for p in (root / name).rglob("*") if p.is_file())
            for name in maps}


@pytest.fixture(scope="module")
def valid_maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    return root, build_maps(root)


def damage(path: Path, files: list, data) -> str:
    """Apply one random kind of damage to the map at ``path``; describe it."""
    target = path / data.draw(st.sampled_from(files), label="file")
    kind = data.draw(st.sampled_from(["flip", "truncate", "delete", "swap", "garbage", "grow"]), label="damage")
    content = target.read_bytes()
    if kind == "flip" and content:
        raw = bytearray(content)
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            position = data.draw(st.integers(0, len(raw) - 1), label="position")
            raw[position] = data.draw(st.integers(0, 255), label="byte")
        target.write_bytes(bytes(raw))
    elif kind == "truncate":
        target.write_bytes(content[: data.draw(st.integers(0, max(len(content) - 1, 0)), label="size")])
    elif kind == "delete":
        target.unlink()
    elif kind == "swap":
        other = path / data.draw(st.sampled_from(files), label="other")
        other_content = other.read_bytes()
        other.write_bytes(content)
        target.write_bytes(other_content)
    elif kind == "garbage":
        target.write_bytes(data.draw(st.binary(max_size=24), label="garbage"))
    else:
        target.write_bytes(content + data.draw(st.binary(min_size=1, max_size=64), label="tail"))
    return f"{kind} {target.relative_to(path)}"


def exercise(path: Path, name: str) -> None:
    """Every way of opening, reading and checking the map; each works or raises EXPECTED."""
    attempts = [lambda: mmap_ninja.verify(path), lambda: mmap_ninja.open_existing(path)]
    if name.startswith("ragged"):
        def read_ragged():
            m = RaggedMmap(path)
            [m[i] for i in range(len(m))]
            m[:], m[::-1], m.take(list(range(len(m)))), m.verify()
            if len(m):
                m.padded([0])
        attempts.append(read_ragged)
    elif name.startswith("strings"):
        def read_strings():
            m = StringsMmap(path, mode="rb")
            [m[i] for i in range(len(m))]
            m[:], m[list(range(len(m)))], m.get_bytes(slice(None)), m.verify()
        attempts.append(read_strings)
    else:
        attempts.append(lambda: np.asarray(np_ninja.open_existing(path)).sum())
    for attempt in attempts:
        try:
            result = attempt()
        except EXPECTED:
            continue
        if isinstance(result, list):  # verify(): a list of problems, each one line of text
            assert all(isinstance(problem, str) and problem for problem in result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_maps_raise_clear_errors(valid_maps, tmp_path_factory, data):
    root, files = valid_maps
    name = data.draw(st.sampled_from(sorted(files)), label="map")
    path = tmp_path_factory.mktemp("damaged") / name
    shutil.copytree(root / name, path)
    damage(path, files[name], data)
    exercise(path, name)


def test_verify_names_what_is_wrong(valid_maps, tmp_path):
    root, _ = valid_maps
    shutil.copytree(root / "ragged_flat", tmp_path / "r")
    np.array([0, 3, 3, 99, 9], dtype=np.int64).tofile(tmp_path / "r" / "ends" / "data.ninja")
    problems = mmap_ninja.verify(tmp_path / "r")
    assert any("corrupted offsets for sample 3: [8, 99)" in p for p in problems), problems
    shutil.copytree(root / "strings", tmp_path / "s")
    with open(tmp_path / "s" / "data.ninja", "r+b") as f:
        f.seek(5)
        f.write(b"\xff")
    assert any("string 2 is not valid UTF-8" in p for p in mmap_ninja.verify(tmp_path / "s"))
    (tmp_path / "n").mkdir()
    assert mmap_ninja.verify(tmp_path / "n") == [f"{tmp_path / 'n'} is not a mmap_ninja map: it has no type.ninja"]
    for name in ("ragged_flat", "ragged_nested", "strings", "strings_zstd", "numpy_c", "numpy_f"):
        assert mmap_ninja.verify(root / name) == []
