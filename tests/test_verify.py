"""verify(): damage is reported, never raised; metadata edits are detected; checksums recorded by
every commit find flipped bytes with ``deep=True``; maps without checksums say so."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmap_ninja
from mmap_ninja import cli
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap


def build(kind: str, path: Path) -> None:
    """A map of ``kind`` built with several commits and every kind of write."""
    if kind == "ragged":
        m = RaggedMmap.from_generator(path, (np.full(i % 5 + 1, i, np.int32) for i in range(40)), batch_size=16)
        m.extend([np.arange(3, dtype=np.int32)])
        m = RaggedMmap(path, mode="r+")
        m[2] = np.full(3, 7)
    elif kind == "ragged_nested":
        m = RaggedMmap.from_lists(path, [np.arange(4), np.arange(3)])
        m.extend([np.zeros((2, 2), np.int64), 5])  # converts the shapes to a ragged map
    elif kind == "strings":
        m = StringsMmap.from_generator(path, (f"text {i} ж" for i in range(30)), batch_size=7)
        m.extend(["more"])
        m[0] = "TEXT 0 ж"
    elif kind == "strings_zstd":
        StringsMmap.from_strings(path, ["Torba " * 9, "Привет " * 5], zstd_level=3).extend(["x" * 50])
    elif kind == "numpy_c":
        np_ninja.from_generator(path, (np.full(4, i, np.int16) for i in range(20)), batch_size=6)
        np_ninja.extend_dir(path, np.ones((2, 4), np.int16))
    elif kind == "numpy_f":
        np_ninja.from_ndarray(path, np.asfortranarray(np.arange(12.0).reshape(3, 4)))
        np_ninja.extend_dir(path, np.ones((2, 4)))
    else:
        raise AssertionError(kind)


KINDS = ["ragged", "ragged_nested", "strings", "strings_zstd", "numpy_c", "numpy_f"]


@pytest.mark.parametrize("kind", KINDS)
def test_maps_written_here_verify_sound_deep_with_checksums_everywhere(tmp_path, kind):
    build(kind, tmp_path / "m")
    report = mmap_ninja.verify(tmp_path / "m", deep=True)
    assert report == [] and report.notes == []
    data_files = [p for p in (tmp_path / "m").rglob("data.ninja")]
    assert data_files and all((p.parent / "checksums.ninja").exists() for p in data_files)


def flip_byte(path: Path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind", KINDS)
def test_a_flipped_byte_is_found_by_deep_verify_only(tmp_path, kind):
    # before: a flipped byte in data.ninja was invisible to verify
    build(kind, tmp_path / "m")
    data = tmp_path / "m" / "data.ninja"
    position = data.stat().st_size // 2
    flip_byte(data, position)
    deep = mmap_ninja.verify(tmp_path / "m", deep=True)
    damaged = [line for line in deep if str(data) in line and "do not match their checksum" in line]
    assert len(damaged) == 1, deep
    start, end = (int(x) for x in damaged[0].split("bytes [")[1].split(")")[0].split(", "))
    assert start <= position < end


@pytest.mark.parametrize("component", ["starts", "ends", "flattened_shapes", "shapes"])
def test_flipped_bytes_in_components_are_found_and_named(tmp_path, component):
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(n) for n in (3, 1, 4, 1, 5)])
    data = tmp_path / "m" / component / "data.ninja"
    flip_byte(data, 8 * 2 + 7)  # the high byte of entry 2: offsets become absurd, but nothing may raise
    report = mmap_ninja.verify(tmp_path / "m", deep=True)
    assert any(str(data) in line and "checksum" in line for line in report), report


def test_a_truncated_component_is_a_problem_line_and_exit_code_1(tmp_path, capsys):
    # before: verify() raised ValueError here and `mmap-ninja verify` exited 2
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(n) for n in (3, 1, 4)])
    sizes = tmp_path / "m" / "flattened_shapes" / "data.ninja"
    sizes.write_bytes(sizes.read_bytes()[:5])
    report = mmap_ninja.verify(tmp_path / "m")
    assert len(report) == 1 and str(sizes) in report[0]
    assert cli.main(["verify", str(tmp_path / "m")]) == 1
    assert str(sizes) in capsys.readouterr().out


def test_verify_never_raises_on_an_unreadable_component(tmp_path):
    StringsMmap.from_strings(tmp_path / "s", ["a", "bc"])
    (tmp_path / "s" / "starts" / "dtype.ninja").write_text("float32")
    report = mmap_ninja.verify(tmp_path / "s")
    assert report and "starts" in report[0]


def test_a_shape_that_lost_an_axis_is_detected(tmp_path):
    # before: the map opened as a different array and verified as sound
    np_ninja.from_ndarray(tmp_path / "n", np.arange(24, dtype=np.int32).reshape(6, 4))
    (tmp_path / "n" / "shape.ninja").write_bytes(struct.pack("<Q", 24))
    assert np_ninja.open_existing(tmp_path / "n").shape == (24,)  # it still opens: only checksums can tell
    report = np_ninja.verify(tmp_path / "n")
    assert len(report) == 1 and "metadata" in report[0] and "not what the last commit recorded" in report[0]


@pytest.mark.parametrize("edit", [("dtype.ninja", b"uint32"), ("order.ninja", b"F"),
                                  ("shape.ninja", struct.pack("<QQ", 4, 6))])
def test_other_metadata_edits_are_detected(tmp_path, edit):
    np_ninja.from_ndarray(tmp_path / "n", np.arange(24, dtype=np.int32).reshape(6, 4))
    name, content = edit
    (tmp_path / "n" / name).write_bytes(content)
    assert any("not what the last commit recorded" in line for line in mmap_ninja.verify(tmp_path / "n"))


def test_a_changed_zstd_level_is_detected(tmp_path):
    StringsMmap.from_strings(tmp_path / "z", ["abc" * 10], zstd_level=3)
    (tmp_path / "z" / "zstd_level.ninja").write_bytes(b"9")
    assert any("zstd_level.ninja" in line for line in mmap_ninja.verify(tmp_path / "z"))


def test_maps_of_090_have_no_checksums_and_verify_says_so(fixtures_dir, tmp_path, capsys):
    names = [p.name for p in fixtures_dir.iterdir() if (p / "type.ninja").exists()]
    assert names
    for name in names:
        report = mmap_ninja.verify(fixtures_dir / name, deep=True)
        assert report == [], (name, report)
        assert any("no checksums recorded" in note for note in report.notes), (name, report.notes)
    assert cli.main(["verify", "--deep", str(fixtures_dir / names[0])]) == 0
    assert "note:" in capsys.readouterr().out


def test_checksums_of_a_090_map_cover_what_is_added_after_it(fixture_copy, expected):
    name = next(n for n, e in expected.items() if e["type"] == "ragged" and e.get("length", 1))
    path = fixture_copy(name)
    m = RaggedMmap(path)
    m.extend([np.zeros(2, dtype=m.dtype)])
    report = mmap_ninja.verify(path, deep=True)
    assert report == []
    assert any("written before checksums were recorded" in note for note in report.notes)
    flip_byte(path / "data.ninja", (path / "data.ninja").stat().st_size - 1)  # a byte the extend wrote
    assert any("do not match their checksum" in line for line in mmap_ninja.verify(path, deep=True))


def test_each_commit_adds_one_entry_per_file_it_writes(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(3)])
    log = tmp_path / "m" / "checksums.ninja"
    sizes = [log.stat().st_size]
    for i in range(5):
        m.extend([np.arange(i + 1)])
        sizes.append(log.stat().st_size)
    assert np.diff(sizes).tolist() == [24] * 5  # O(what the commit adds), not a rewrite


def test_an_interrupted_commit_leaves_no_false_alarm(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(3), np.arange(2)])
    log = tmp_path / "m" / "checksums.ninja"
    # a commit cut short after its data and checksum were written, before its metadata
    with open(log, "ab") as f:
        f.write(struct.pack("<QQII", 5 * 8, 16, 1234, 5678))
    with open(tmp_path / "m" / "data.ninja", "ab") as f:
        f.write(b"\xff" * 16)
    assert mmap_ninja.verify(tmp_path / "m", deep=True) == []
    m.extend([np.arange(4)])  # the next commit writes over the bytes and the entry left behind
    assert mmap_ninja.verify(tmp_path / "m", deep=True) == []
    assert [s.tolist() for s in RaggedMmap(tmp_path / "m")] == [[0, 1, 2], [0, 1], [0, 1, 2, 3]]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), fraction=st.floats(0, 0.999), bit=st.integers(0, 7))
def test_any_flipped_bit_in_committed_data_is_found(tmp_path_factory, kind, fraction, bit):
    root = tmp_path_factory.mktemp("flip")
    build(kind, root / "m")
    data = root / "m" / "data.ninja"
    size = data.stat().st_size
    committed = _committed_bytes(root / "m", kind)
    position = int(fraction * committed)
    raw = bytearray(data.read_bytes())
    raw[position] ^= 1 << bit
    data.write_bytes(bytes(raw))
    assert size == data.stat().st_size
    assert any("do not match their checksum" in line for line in mmap_ninja.verify(root / "m", deep=True))
    shutil.rmtree(root)


def _committed_bytes(path: Path, kind: str) -> int:
    if kind.startswith("numpy"):
        return np_ninja.open_existing(path).nbytes
    if kind.startswith("strings"):
        return int(StringsMmap(path).ends.max())
    m = RaggedMmap(path)
    return int(m.ends.max()) * m.dtype.itemsize


def test_a_shape_that_lost_rows_is_detected(tmp_path):
    np_ninja.from_ndarray(tmp_path / "n", np.arange(24, dtype=np.int32).reshape(6, 4))
    (tmp_path / "n" / "shape.ninja").write_bytes(struct.pack("<QQ", 3, 4))
    report = mmap_ninja.verify(tmp_path / "n")
    assert len(report) == 1 and "describes 48 bytes" in report[0]


@pytest.mark.parametrize("kind", ["ragged", "strings"])
def test_overlapping_items_are_a_problem_in_order_or_not(tmp_path, kind):
    if kind == "ragged":
        m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(4), np.arange(4), np.arange(4)], mode="r+")
    else:
        m = StringsMmap.from_strings(tmp_path / "m", ["abcd", "efgh", "ijkl"])
    assert mmap_ninja.verify(tmp_path / "m") == []
    m[0] = m[2] if kind == "strings" else np.arange(4)  # moves samples 0 and 2 past the others
    assert mmap_ninja.verify(tmp_path / "m") == []
    for name in ("starts", "ends"):  # item 1 now reaches into the new item 0 at [12, 16): [4, 14)
        path = tmp_path / "m" / name / "data.ninja"
        offsets = np.fromfile(path, dtype=np.int64)
        offsets[1] = 4 if name == "starts" else 14
        offsets.tofile(path)
    if kind == "ragged":  # keep the stored size in step, so that only the overlap is wrong
        sizes = tmp_path / "m" / "flattened_shapes" / "data.ninja"
        counts = np.fromfile(sizes, dtype=np.int64)
        counts[1] = 10
        counts.tofile(sizes)
        lengths = tmp_path / "m" / "shapes" / "data.ninja"
        stored = np.fromfile(lengths, dtype=np.int64)
        stored[1] = 10
        stored.tofile(lengths)
    report = mmap_ninja.verify(tmp_path / "m")
    assert any("overlap" in line for line in report), report


def damage_offsets(path: Path, count: int) -> None:
    """Point the ends of the first ``count`` samples (or strings) of the map at ``path`` far
    past its data."""
    ends = np.memmap(path / "ends" / "data.ninja", dtype=np.int64, mode="r+")
    ends[:count] = 1 << 40
    ends.flush()
    del ends


@pytest.mark.parametrize("kind", ["ragged", "strings"])
def test_problems_past_the_limit_are_counted_whatever_the_limit(tmp_path, kind):
    if kind == "ragged":
        RaggedMmap.from_lists(tmp_path / "m", [np.arange(i % 4 + 1) for i in range(200)])
    else:
        StringsMmap.from_strings(tmp_path / "m", [f"text {i}" for i in range(200)])
    damage_offsets(tmp_path / "m", 75)
    listed = mmap_ninja.verify(tmp_path / "m")
    assert len(listed) == mmap_ninja.VERIFY_LIMIT == 20
    assert listed.omitted >= 75 - 20  # every damaged sample is counted, and the other problems too
    for limit in (1, 7, 20, 500):
        report = mmap_ninja.verify(tmp_path / "m", limit=limit)
        assert len(report) == min(limit, len(listed) + listed.omitted)
        assert len(report) + report.omitted == len(listed) + listed.omitted
    opened = RaggedMmap(tmp_path / "m") if kind == "ragged" else StringsMmap(tmp_path / "m", mode="rb")
    assert opened.verify(limit=5) == mmap_ninja.verify(tmp_path / "m", limit=5)
    assert opened.verify(limit=5).omitted == mmap_ninja.verify(tmp_path / "m", limit=5).omitted


def test_a_sound_map_has_nothing_omitted(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(3)] * 10)
    report = m.verify(limit=1)
    assert report == [] and report.omitted == 0


@pytest.mark.parametrize("limit, error", [(0, ValueError), (-3, ValueError), (True, TypeError), (2.0, TypeError)])
def test_a_limit_that_could_hide_every_problem_is_refused(tmp_path, limit, error):
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(3)] * 10)
    with pytest.raises(error, match="limit"):
        mmap_ninja.verify(tmp_path / "m", limit=limit)
    with pytest.raises(error, match="limit"):
        RaggedMmap(tmp_path / "m").verify(limit=limit)


def test_parts_of_a_sharded_map_add_up_their_omitted_problems(tmp_path):
    from mmap_ninja.sharded import ShardedMmap

    sharded = ShardedMmap.from_generator(tmp_path / "s", (np.arange(i % 3 + 1) for i in range(90)), part_size=30)
    assert len(sharded.part_names) == 3
    whole = sum(len(mmap_ninja.verify(tmp_path / "s" / "parts" / name, limit=1000)) for name in sharded.part_names)
    assert whole == 0
    for name in sharded.part_names:
        damage_offsets(tmp_path / "s" / "parts" / name, 12)
    per_part = [mmap_ninja.verify(tmp_path / "s" / "parts" / name, limit=1000) for name in sharded.part_names]
    report = mmap_ninja.verify(tmp_path / "s", limit=10)
    assert len(report) == 10 and len(report) + report.omitted == sum(len(r) for r in per_part)
    assert sharded.verify(limit=10) == report
    with pytest.raises(ValueError, match="limit"):
        sharded.verify(limit=0)


def test_the_command_line_lists_as_many_as_python_and_says_how_many_more(tmp_path, capsys):
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(i % 4 + 1) for i in range(100)])
    damage_offsets(tmp_path / "m", 30)
    report = mmap_ninja.verify(tmp_path / "m")
    assert cli.main(["verify", str(tmp_path / "m")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:len(report)] == list(report)
    total = len(report) + report.omitted
    assert lines[len(report)] == (f"... and {report.omitted} more problems not shown (--limit {total} lists them)")
    assert cli.main(["verify", str(tmp_path / "m"), "--limit", str(total)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if not line.startswith("note:")]) == total
    assert not any(line.startswith("...") for line in lines)
