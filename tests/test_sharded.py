"""Sharded maps (mmap_ninja.sharded): parts written independently, committed in one step, read
as one map."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmap_ninja
from mmap_ninja import cli
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.sharded import ShardedMmap, write_part
from mmap_ninja.string import StringsMmap


def ragged_sample(i):
    return np.full((i % 5 + 1,) if i % 7 else (2, i % 3 + 1), i, dtype=np.int32)


def samples_of(kind, n, start=0):
    if kind == "ragged":
        return [ragged_sample(i) for i in range(start, start + n)]
    if kind == "string":
        return [f"text {i} ж" * (i % 3 + 1) for i in range(start, start + n)]
    return [np.full(3, i, dtype=np.float32) for i in range(start, start + n)]


def same(a, b):
    if isinstance(b, str):
        return a == b
    return np.shape(a) == np.shape(b) and np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["ragged", "string", "numpy"])
def test_parts_committed_in_the_order_given_read_as_one_map(tmp_path, kind):
    path = tmp_path / "sharded"
    chunks = [samples_of(kind, n, start) for n, start in ((4, 0), (1, 4), (6, 5))]
    records = [write_part(path, chunk, kind) for chunk in chunks]
    assert all(len(pickle.dumps(r)) < 300 for r in records)
    m = ShardedMmap.commit_parts(path, [records[2], records[0], records[1]])  # the order given wins
    expected = chunks[2] + chunks[0] + chunks[1]
    assert len(m) == 11 and m.kind == kind
    assert all(same(m[i], expected[i]) for i in range(11)) and same(m[-1], expected[-1])
    got = m[[10, 0, 3, 3, 7]]
    assert all(same(g, expected[i]) for g, i in zip(got, [10, 0, 3, 3, 7]))
    assert all(same(g, e) for g, e in zip(m[2:9:3], expected[2:9:3]))
    with pytest.raises(IndexError, match="out of bounds"):
        m[11]
    reopened = mmap_ninja.open_existing(path)
    assert isinstance(reopened, ShardedMmap) and len(pickle.loads(pickle.dumps(m))) == 11
    assert mmap_ninja.verify(path, deep=True) == []


def test_a_part_never_committed_is_never_read_listed_by_verify_and_removed_by_gc(tmp_path):
    path = tmp_path / "s"
    committed = write_part(path, ["a", "b"])
    orphan = write_part(path, ["lost"])  # a task that failed after writing its part
    m = ShardedMmap.commit_parts(path, [committed])
    assert m[:] == ["a", "b"] and m.uncommitted_parts() == [orphan["name"]]
    report = m.verify()
    assert report == [] and any(orphan["name"] in note and "no commit lists" in note for note in report.notes)
    assert m.gc() == [orphan["name"]] and m.uncommitted_parts() == []
    assert not (path / "parts" / orphan["name"]).exists()


def test_commits_check_records_against_their_parts(tmp_path):
    path = tmp_path / "s"
    first = write_part(path, [np.arange(3)])
    ShardedMmap.commit_parts(path, [first])
    with pytest.raises(ValueError, match="committed already"):
        ShardedMmap.commit_parts(path, [first])
    strings = write_part(path, ["x"])
    with pytest.raises(ValueError, match="holds string samples"):
        ShardedMmap.commit_parts(path, [strings])
    floats = write_part(path, [np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match="float32"):
        ShardedMmap.commit_parts(path, [floats])
    lying = dict(write_part(path, [np.arange(2)]), length=5)
    with pytest.raises(ValueError, match="its record says 5"):
        ShardedMmap.commit_parts(path, [lying])
    assert len(ShardedMmap(path)) == 1  # nothing of the refused commits


def write_and_return(args):
    path, start = args
    return write_part(path, samples_of("ragged", 3, start))


def test_parts_written_by_other_processes_are_committed_by_one(tmp_path):
    path = tmp_path / "s"
    with multiprocessing.get_context("fork").Pool(2) as pool:
        records = pool.map(write_and_return, [(path, start) for start in range(0, 30, 3)])
    m = ShardedMmap.commit_parts(path, records)
    assert len(m) == 30 and all(same(m[i], ragged_sample(i)) for i in range(30))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6), data=st.data())
def test_random_batches_equal_the_per_sample_reference(tmp_path_factory, sizes, data):
    path = tmp_path_factory.mktemp("h") / "s"
    reference = samples_of("ragged", sum(sizes))
    records, start = [], 0
    for size in sizes:
        records.append(write_part(path, reference[start:start + size]))
        start += size
    m = ShardedMmap.commit_parts(path, records)
    indices = data.draw(st.lists(st.integers(-len(reference), len(reference) - 1), max_size=20))
    wanted = [reference[i] for i in indices]
    assert all(same(a, b) for a, b in zip(m[indices], wanted)) and len(m[indices]) == len(wanted)
    batch = m.take(indices)
    assert len(batch) == len(wanted) and all(same(a, b) for a, b in zip(batch.arrays(), wanted))
    assert all(same(a, b) for a, b in zip(m.__getitems__(indices), wanted))


def test_padded_and_get_bytes_keep_the_callers_order(tmp_path):
    tokens = [np.arange(n, dtype=np.int64) + 10 * n for n in (3, 1, 4, 2, 5)]
    m = ShardedMmap.from_generator(tmp_path / "t", iter(tokens), part_size=2)
    padded, lengths = m.padded([4, 0, 3], pad_value=-1)
    expected, expected_lengths = RaggedMmap.from_lists(tmp_path / "one", tokens).padded([4, 0, 3], pad_value=-1)
    assert np.array_equal(padded, expected) and np.array_equal(lengths, expected_lengths)
    texts = ShardedMmap.from_generator(tmp_path / "x", iter(["a", "bb", "ccc"]), part_size=2)
    assert texts.get_bytes([2, 0]) == [b"ccc", b"a"] and texts.get_bytes(1) == b"bb"
    with pytest.raises(TypeError, match="needs ragged parts"):
        texts.take([0])


def test_numpy_parts_give_rows(tmp_path):
    rows = [np.full(3, i, dtype=np.float32) for i in range(7)]
    m = ShardedMmap.from_generator(tmp_path / "n", iter(rows), part_size=3, kind="numpy")
    got = m[[6, 0, 4]]
    assert isinstance(got, np.ndarray) and got.shape == (3, 3) and got[:, 0].tolist() == [6, 0, 4]


def test_from_maps_moves_them_in_and_append_maps_adds_more(tmp_path):
    a = RaggedMmap.from_lists(tmp_path / "a", [np.arange(2), np.arange(3)])
    b = RaggedMmap.from_lists(tmp_path / "b", [np.arange(1)])
    del a, b
    m = ShardedMmap.from_maps(tmp_path / "s", [tmp_path / "b", tmp_path / "a"])
    assert [s.tolist() for s in m[:]] == [[0], [0, 1], [0, 1, 2]]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # moved, not copied
    RaggedMmap.from_lists(tmp_path / "c", [np.arange(4)])
    m.append_maps([tmp_path / "c"], copy=True)
    assert len(m) == 4 and (tmp_path / "c").exists()
    StringsMmap.from_strings(tmp_path / "d", ["no"])
    with pytest.raises(ValueError, match="holds string samples"):
        m.append_maps([tmp_path / "d"], copy=True)
    with pytest.raises(ValueError, match="several kinds"):
        ShardedMmap.from_maps(tmp_path / "s2", [tmp_path / "c", tmp_path / "d"])
    assert (tmp_path / "c").exists() and (tmp_path / "d").exists()  # checked before anything moved


def test_compact_writes_one_plain_map_with_the_same_samples(tmp_path):
    texts = [f"{i}" * (i % 4) for i in range(25)]
    m = ShardedMmap.from_generator(tmp_path / "s", iter(texts), part_size=4)
    assert len(m.part_names) == 7
    plain = m.compact(tmp_path / "plain")
    assert isinstance(plain, StringsMmap) and plain[:] == texts
    tokens = ShardedMmap.from_generator(tmp_path / "r", iter(samples_of("ragged", 9)), part_size=4)
    assert all(same(a, b) for a, b in zip(tokens.compact(tmp_path / "rp")[:], samples_of("ragged", 9)))


def test_from_generator_replaces_a_map_whole_and_a_failure_keeps_the_old_one(tmp_path):
    ShardedMmap.from_generator(tmp_path / "s", iter(["a", "b", "c"]), part_size=2)

    def broken():
        yield from ["x", "y", "z"]
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        ShardedMmap.from_generator(tmp_path / "s", broken(), part_size=2)
    assert ShardedMmap(tmp_path / "s")[:] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_opening_reads_only_the_manifest(tmp_path):
    m = ShardedMmap.from_generator(tmp_path / "s", iter(samples_of("ragged", 6)), part_size=2)
    damaged = tmp_path / "s" / "parts" / m.part_names[1] / "starts" / "data.ninja"
    damaged.write_bytes(b"")
    opened = ShardedMmap(tmp_path / "s")  # opens: no part is read
    assert same(opened[0], ragged_sample(0)) and same(opened[5], ragged_sample(5))
    with pytest.raises(ValueError):
        opened[2]
    assert any(str(damaged.parent) in line for line in mmap_ninja.verify(tmp_path / "s"))


def test_the_command_line_reads_and_checks_sharded_maps(tmp_path, capsys):
    ShardedMmap.from_generator(tmp_path / "s", iter(["first", "second", "third"]), part_size=2)
    assert cli.main(["head", str(tmp_path / "s"), "-n", "2"]) == 0
    assert "'first'" in capsys.readouterr().out
    assert cli.main(["verify", str(tmp_path / "s")]) == 0
    assert cli.main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "sharded (string parts)" in out and "parts:   2" in out and "samples: 3" in out


def test_every_part_opens_in_090(tmp_path, ref090):
    m = ShardedMmap.from_generator(tmp_path / "s", iter(samples_of("ragged", 5)), part_size=2)
    dirs = [str(tmp_path / "s" / "parts" / name) for name in m.part_names]
    lengths = ref090.run(f"""
from mmap_ninja.ragged import RaggedMmap
result = [len(RaggedMmap(d)) for d in {dirs!r}]
""", tmp_path)
    assert lengths == [2, 2, 1]


def test_numpy_parts_are_checked_like_numpy_maps(tmp_path):
    m = ShardedMmap.from_generator(tmp_path / "n", iter([np.zeros(2)] * 5), part_size=2, kind="numpy")
    part = tmp_path / "n" / "parts" / m.part_names[0]
    assert np_ninja.verify(part) == []
    (part / "shape.ninja").write_bytes(np.array([4], dtype=np.uint64).tobytes())
    assert mmap_ninja.verify(tmp_path / "n")  # a part whose shape was edited is a problem


def test_merge_compact_and_gc_on_the_command_line(tmp_path, capsys):
    RaggedMmap.from_lists(tmp_path / "a", [np.arange(2)])
    RaggedMmap.from_lists(tmp_path / "b", [np.arange(3), np.arange(1)])
    assert cli.main(["merge", str(tmp_path / "s"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert (tmp_path / "a").exists()  # copied by default
    assert cli.main(["merge", str(tmp_path / "s"), str(tmp_path / "a")]) == 2  # never over a map
    assert [x.tolist() for x in ShardedMmap(tmp_path / "s")[:]] == [[0, 1], [0, 1, 2], [0]]
    assert cli.main(["compact", str(tmp_path / "s"), str(tmp_path / "one"), "--quiet"]) == 0
    assert [x.tolist() for x in RaggedMmap(tmp_path / "one")[:]] == [[0, 1], [0, 1, 2], [0]]
    assert cli.main(["compact", str(tmp_path / "s"), str(tmp_path / "one"), "--quiet"]) == 2
    orphan = write_part(tmp_path / "s", [np.arange(5)])
    capsys.readouterr()
    assert cli.main(["gc", str(tmp_path / "s")]) == 0
    assert orphan["name"] in capsys.readouterr().out and ShardedMmap(tmp_path / "s").uncommitted_parts() == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 5), min_size=1, max_size=7), data=st.data())
def test_every_read_equals_one_map_of_the_same_samples(tmp_path_factory, sizes, data):
    folder = tmp_path_factory.mktemp("h")
    lengths = data.draw(st.lists(st.integers(1, 6), min_size=sum(sizes), max_size=sum(sizes)))
    reference = [np.arange(n, dtype=np.int16) * (i + 1) for i, n in enumerate(lengths)]
    records, start = [], 0
    for size in sizes:
        records.append(write_part(folder / "s", reference[start:start + size], kind="ragged"))
        start += size
    if not reference:
        return
    m = ShardedMmap.commit_parts(folder / "s", records)
    one = RaggedMmap.from_lists(folder / "one", reference)
    indices = data.draw(st.lists(st.integers(-len(reference), len(reference) - 1), max_size=16))
    for i in indices:
        assert same(m[i], one[i])
    assert all(same(a, b) for a, b in zip(m[indices], one[indices])) and len(m[indices]) == len(indices)
    assert all(same(a, b) for a, b in zip(m[1::2], one[1::2]))
    assert all(same(a, b) for a, b in zip(m.take(indices).arrays(), one.take(indices).arrays()))
    max_len = data.draw(st.none() | st.integers(0, 7))
    for dtype in (None, np.int64, np.float32):
        for got, want in zip(m.padded(indices, pad_value=-3, max_len=max_len, dtype=dtype),
                             one.padded(indices, pad_value=-3, max_len=max_len, dtype=dtype)):
            assert got.dtype == want.dtype and np.array_equal(got, want)


def test_a_damaged_part_raises_naming_its_file_and_sample(tmp_path):
    m = ShardedMmap.from_generator(tmp_path / "s", (np.arange(i % 4 + 1) for i in range(12)), part_size=4)
    part = tmp_path / "s" / "parts" / m.part_names[1]
    ends = np_ninja.open_existing(part / "ends", mode="r+")
    ends[2] = 10 ** 9
    ends.flush()
    del ends
    m = ShardedMmap(tmp_path / "s")
    assert same(m[0], np.arange(1)) and same(m[5], np.arange(2))
    for read in (lambda: m[6], lambda: m[[0, 6]], lambda: m.take([6]), lambda: m.padded([1, 6])):
        with pytest.raises(ValueError, match=rf"{part.name}: corrupted offsets for sample 2"):
            read()
    assert any(part.name in problem for problem in mmap_ninja.verify(tmp_path / "s"))


def test_threads_reading_parts_opened_on_first_read_all_get_the_right_samples(tmp_path):
    import threading

    reference = [np.arange(i % 9 + 1, dtype=np.int64) + i for i in range(64 * 8)]
    ShardedMmap.from_generator(tmp_path / "s", iter(reference), part_size=8)
    m = ShardedMmap(tmp_path / "s")  # no part opened yet
    errors = []

    def read(seed):
        try:
            rng = np.random.default_rng(seed)
            for _ in range(30):
                index = rng.integers(0, len(reference), 32)
                batch = m.take(index) if seed % 2 else m[index]
                assert all(same(a, reference[i]) for a, i in zip(batch, index))
                assert same(m[int(index[0])], reference[index[0]])
        except BaseException as exc:  # noqa: B902 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


READ_EVERY_PART = """
import os, resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from mmap_ninja.sharded import ShardedMmap
m = ShardedMmap(sys.argv[1])
firsts = m.part_bounds[:-1]
singles = [int(m[int(i)][0]) for i in firsts]
taken = [int(a[0]) for a in m.take(firsts[::-1]).arrays()]
print(len(singles), singles == list(range(len(firsts))), taken == singles[::-1], len(os.listdir("/proc/self/fd")))
"""


def test_one_process_reads_from_more_parts_than_it_may_open_files(tmp_path):
    parts = 1_100  # more than the 1,024 descriptors the reading process may hold
    with mmap_ninja.durability(False):
        records = [write_part(tmp_path / "s", [np.full(k % 3 + 1, k, dtype=np.int32)]) for k in range(parts)]
        ShardedMmap.commit_parts(tmp_path / "s", records)
    result = subprocess.run([sys.executable, "-c", READ_EVERY_PART, str(tmp_path / "s")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    count, in_order, taken_in_order, descriptors = result.stdout.split()
    assert (count, in_order, taken_in_order) == (str(parts), "True", "True")
    assert int(descriptors) < 64


@pytest.mark.parametrize("kind", ["ragged", "string", "numpy"])
def test_from_generator_streams_parts_of_part_size_in_batches(tmp_path, kind):
    produced = []

    def samples():
        for sample in samples_of(kind, 13):
            produced.append(sample)
            yield sample

    m = ShardedMmap.from_generator(tmp_path / "s", samples(), part_size=5, kind=kind, batch_size=2)
    assert np.diff(m.part_bounds).tolist() == [5, 5, 3] and m.kind == kind
    assert all(same(m[i], s) for i, s in enumerate(samples_of(kind, 13)))
    assert len(produced) == 13 and mmap_ninja.verify(tmp_path / "s", deep=True) == []
    for bad in ({"part_size": 0}, {"part_size": 2, "batch_size": 0}, {"part_size": True}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            ShardedMmap.from_generator(tmp_path / "t", samples_of(kind, 3), **bad)
    assert not (tmp_path / "t").exists()


# -- compact: the parts' files concatenated ----------------------------------------------------

def mixed_sample(i):
    kind = i % 6
    if kind == 0:
        return np.int32(i)
    if kind == 1:
        return np.empty(0, np.int32)
    if kind == 2:
        return np.full((2, i % 3), i, np.int32)
    if kind == 3:
        return np.empty((0, 4), np.int32)
    return np.arange(i % 7, dtype=np.int32) - i


def assert_compacts_to(m, out, expected):
    plain = m.compact(out)
    assert len(plain) == len(expected)
    if isinstance(plain, np.ndarray):
        assert np.array_equal(plain, np.stack(expected)) and plain.dtype == np.asarray(expected[0]).dtype
    else:
        for i, want in enumerate(expected):
            got, sharded = plain[i], m[i]
            assert same(got, want) and type(got) is type(sharded) and np.shape(got) == np.shape(sharded)
            assert isinstance(got, str) or np.asarray(got).dtype == np.asarray(sharded).dtype
    assert mmap_ninja.verify(out, deep=True) == [] and mmap_ninja.open_existing(out) is not None
    assert not any(".building" in p.name for p in out.parent.iterdir())
    return plain


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 7), min_size=1, max_size=6), start=st.integers(0, 11),
       kind=st.sampled_from(["ragged", "mixed", "string", "numpy"]))
def test_compact_equals_the_samples_of_any_parts(tmp_path_factory, sizes, start, kind):
    tmp = tmp_path_factory.mktemp("c")
    reference = [mixed_sample(i) for i in range(start, start + sum(sizes))] if kind == "mixed" \
        else samples_of(kind, sum(sizes), start)
    records, at = [], 0
    for size in sizes:
        records.append(write_part(tmp / "s", reference[at:at + size], "ragged" if kind == "mixed" else kind))
        at += size
    m = ShardedMmap.commit_parts(tmp / "s", records)
    assert_compacts_to(m, tmp / "plain", reference)


def test_compact_takes_what_the_manifest_lists_of_parts_extended_or_changed_since(tmp_path):
    reference = [mixed_sample(i) for i in range(30)]
    m = ShardedMmap.from_generator(tmp_path / "s", iter(reference), part_size=7)
    first = tmp_path / "s" / "parts" / m.part_names[0]
    RaggedMmap(first).extend([np.arange(100, dtype=np.int32)])  # not listed: never read
    replaced = RaggedMmap(tmp_path / "s" / "parts" / m.part_names[1], mode="r+")
    replaced[3] = np.full(np.shape(reference[10]), -5, np.int32)  # moves past the others: runs of data
    reference[10] = np.full(np.shape(reference[10]), -5, np.int32)
    strings = ShardedMmap.from_generator(tmp_path / "t", iter(["ab", "", "ж" * 3, "c"] * 3), part_size=5)
    texts = StringsMmap(tmp_path / "t" / "parts" / strings.part_names[0], mode="r+")
    texts[0] = "xy"
    texts.extend(["not listed"])
    assert_compacts_to(ShardedMmap(tmp_path / "s"), tmp_path / "plain", reference)
    assert_compacts_to(ShardedMmap(tmp_path / "t"), tmp_path / "text", ["xy", "", "ж" * 3, "c"] + ["ab", "", "ж" * 3,
                                                                                              "c"] * 2)


def test_compact_of_parts_without_checksums_or_in_fortran_order_or_compressed(tmp_path):
    RaggedMmap.from_lists(tmp_path / "a", [np.arange(3), np.arange(5)])
    (tmp_path / "a" / "checksums.ninja").unlink()  # as mmap_ninja 0.9.0 writes maps: none recorded
    RaggedMmap.from_lists(tmp_path / "b", [np.arange(2)])
    m = ShardedMmap.from_maps(tmp_path / "s", [tmp_path / "a", tmp_path / "b"])
    assert_compacts_to(m, tmp_path / "one", [np.arange(3), np.arange(5), np.arange(2)])

    grid = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(4, 3, 2))
    np_ninja.from_ndarray(tmp_path / "f", grid)
    np_ninja.from_ndarray(tmp_path / "c", grid[:1].copy())
    rows = ShardedMmap.from_maps(tmp_path / "n", [tmp_path / "f", tmp_path / "c"])
    assert_compacts_to(rows, tmp_path / "rows", list(grid) + [grid[0]])

    pytest.importorskip("zstandard")
    StringsMmap.from_strings(tmp_path / "z1", ["alpha", "beta"], zstd_level=3)
    StringsMmap.from_strings(tmp_path / "z2", ["gamma"], zstd_level=3)
    StringsMmap.from_strings(tmp_path / "plain", ["delta", ""])
    texts = ShardedMmap.from_maps(tmp_path / "t", [tmp_path / "z1", tmp_path / "z2", tmp_path / "plain"])
    one = assert_compacts_to(texts, tmp_path / "texts", ["alpha", "beta", "gamma", "delta", ""])
    assert one.codec.level == 3  # the first part's compression, kept; the plain part's strings compressed


def test_compact_of_empty_parts_and_of_no_samples(tmp_path):
    empty = RaggedMmap.from_lists(tmp_path / "e", [], dtype=np.float32)
    RaggedMmap.from_lists(tmp_path / "f", [np.ones(2, np.float32)])
    del empty
    m = ShardedMmap.from_maps(tmp_path / "s", [tmp_path / "e", tmp_path / "f"])
    assert_compacts_to(m, tmp_path / "one", [np.ones(2, np.float32)])
    nothing = ShardedMmap.from_maps(tmp_path / "s2", [tmp_path / "one"])
    RaggedMmap(tmp_path / "s2" / "parts" / nothing.part_names[0])
    manifest = tmp_path / "s2" / "manifest.ninja"
    manifest.write_text(manifest.read_text().replace('"length": 1', '"length": 0'))
    plain = ShardedMmap(tmp_path / "s2").compact(tmp_path / "none")
    assert len(plain) == 0 and plain.dtype == np.float32


def test_a_compact_that_fails_leaves_the_map_there_unchanged(tmp_path):
    from conftest import file_bytes

    m = ShardedMmap.from_generator(tmp_path / "s", iter(samples_of("ragged", 12)), part_size=4)
    RaggedMmap.from_lists(tmp_path / "out", [np.arange(2)])
    before = file_bytes(tmp_path / "out")
    data = tmp_path / "s" / "parts" / m.part_names[2] / "data.ninja"
    data.write_bytes(data.read_bytes()[:8])  # the last part lost its data
    with pytest.raises(ValueError, match="holds .* bytes"):
        m.compact(tmp_path / "out")
    assert file_bytes(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s"]


def test_compact_copies_the_data_file_to_file(tmp_path, monkeypatch):
    from mmap_ninja import _storage

    m = ShardedMmap.from_generator(tmp_path / "s", iter([np.arange(1000) + i for i in range(50)]), part_size=10)
    copies = []
    copy_ranges = _storage.commit.copy_ranges
    monkeypatch.setattr(_storage.commit, "copy_ranges", lambda *args: copies.append(args[1]) or copy_ranges(*args))
    assert_compacts_to(m, tmp_path / "one", [np.arange(1000) + i for i in range(50)])
    assert copies == [[(0, 80_000)]] * 5  # one copy of each part's data, nothing sample by sample


def test_empty_parts_anywhere_are_skipped_by_every_read(tmp_path):
    records = [write_part(tmp_path / "s", [], kind="ragged"), write_part(tmp_path / "s", [np.arange(2)]),
               write_part(tmp_path / "s", [], kind="ragged"), write_part(tmp_path / "s", [np.arange(3)]),
               write_part(tmp_path / "s", [], kind="ragged")]
    m = ShardedMmap.commit_parts(tmp_path / "s", records)
    assert np.diff(m.part_bounds).tolist() == [0, 1, 0, 1, 0]
    assert [a.tolist() for a in m] == [[0, 1], [0, 1, 2]]
    assert [a.tolist() for a in m[::-1]] == [[0, 1, 2], [0, 1]] and m[-1].tolist() == [0, 1, 2]
    assert [a.tolist() for a in m.compact(tmp_path / "one")[:]] == [[0, 1], [0, 1, 2]]


def test_strings_parts_compressed_or_not_read_alike(tmp_path):
    plain = [f"plain {i} ж" for i in range(5)]
    packed = [f"packed {i} " * (i + 1) for i in range(4)]
    StringsMmap.from_strings(tmp_path / "a", plain)
    StringsMmap.from_strings(tmp_path / "b", packed, zstd_level=3)
    m = ShardedMmap.from_maps(tmp_path / "s", [tmp_path / "a", tmp_path / "b"])
    texts = plain + packed
    index = [8, 0, 5, 4, 6]
    assert m[index] == [texts[i] for i in index] and [m[i] for i in range(9)] == texts
    assert m.get_bytes(index) == [texts[i].encode() for i in index] and m.get_bytes(7) == texts[7].encode()
    assert ShardedMmap(tmp_path / "s")[[0, 4]] == [plain[0], plain[4]]  # compressed part never opened


def test_a_fortran_ordered_numpy_part_gives_its_rows(tmp_path):
    np_ninja.from_ndarray(tmp_path / "c", np.arange(12, dtype=np.int16).reshape(4, 3))
    np_ninja.from_ndarray(tmp_path / "f", np.asfortranarray(np.arange(12, 18, dtype=np.int16).reshape(2, 3)))
    m = ShardedMmap.from_maps(tmp_path / "s", [tmp_path / "c", tmp_path / "f"])
    whole = np.arange(18, dtype=np.int16).reshape(6, 3)
    assert np.array_equal(m[[5, 1, 4]], whole[[5, 1, 4]]) and np.array_equal(m[-1], whole[-1])
    assert np.array_equal(m[:], whole) and m[[]].shape == (0, 3)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["string", "numpy"]), sizes=st.lists(st.integers(1, 5), min_size=1, max_size=6),
       data=st.data())
def test_strings_and_rows_batches_equal_the_per_sample_reference(tmp_path_factory, kind, sizes, data):
    path = tmp_path_factory.mktemp("h") / "s"
    reference = samples_of(kind, sum(sizes))
    records, start = [], 0
    for size in sizes:
        records.append(write_part(path, reference[start:start + size], kind=kind))
        start += size
    m = ShardedMmap.commit_parts(path, records)
    indices = data.draw(st.lists(st.integers(-len(reference), len(reference) - 1), max_size=20))
    got = m[indices]
    assert len(got) == len(indices) and all(same(a, reference[i]) for a, i in zip(got, indices))
    assert all(same(m[i], reference[i]) for i in indices)


@pytest.mark.parametrize("kind", ["ragged", "string", "numpy"])
def test_wrapper_fn_applies_to_every_sample_read(tmp_path, kind):
    reference = samples_of(kind, 7)
    ShardedMmap.from_generator(tmp_path / "s", iter(reference), part_size=3, kind=kind)
    m = ShardedMmap(tmp_path / "s", wrapper_fn=lambda sample: ("wrapped", sample))
    assert m[4][0] == "wrapped" and same(m[4][1], reference[4])
    batch = m[[6, 0]]
    assert [w for w, _ in batch] == ["wrapped"] * 2 and all(same(s, reference[i]) for (_, s), i in zip(batch, [6, 0]))
    assert pickle.loads(pickle.dumps(ShardedMmap(tmp_path / "s")))[[1]] is not None


# -- refused calls leave every path as it was; nothing read from disk is trusted ----------------

def tree(root) -> dict:
    """Every path under ``root`` (the test's folder) with its bytes (files) or None (folders
    and links), the writers' lock files aside."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*")) if p.name != "writer.lock"}


def keyed_map(path, start, n, keys=None):
    keys = [f"k{i}" for i in range(start, start + n)] if keys is None else keys
    return RaggedMmap.from_lists(path, [np.arange(i % 4 + 1) for i in range(start, start + n)], keys=keys)


@pytest.mark.parametrize("copy", [False, True])
def test_a_refused_from_maps_moves_nothing(tmp_path, copy):
    keyed_map(tmp_path / "a", 0, 3)
    keyed_map(tmp_path / "b", 3, 3, keys=["k3", "k1", "k5"])  # k1 is a's
    keyed_map(tmp_path / "e", 10, 2)
    RaggedMmap.from_lists(tmp_path / "plain", [np.arange(2)])
    StringsMmap.from_strings(tmp_path / "texts", ["x"])
    RaggedMmap.from_lists(tmp_path / "floats", [np.ones(2)], keys=["f"])
    before = tree(tmp_path)
    refusals = [
        (["a", "b"], "'k1'"),                      # a key repeated across the maps
        (["e", "e"], "given twice"),               # one map given twice
        (["a", "plain"], "keys"),                  # keys in one, none in the other
        (["a", "texts"], "several kinds"),
        (["a", "floats"], "several kinds or dtypes"),
        (["a", "nowhere"], "nowhere"),
    ]
    for names, match in refusals:
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            ShardedMmap.from_maps(tmp_path / "out", [tmp_path / name for name in names], copy=copy)
        assert tree(tmp_path) == before, names
        assert not (tmp_path / "out").exists()


def test_a_refused_append_maps_moves_nothing_and_gc_finds_nothing_to_delete(tmp_path):
    m = ShardedMmap.from_maps(tmp_path / "s", [keyed_map(tmp_path / "a", 0, 3).out_dir])
    RaggedMmap.from_lists(tmp_path / "unkeyed", [np.arange(2)])
    keyed_map(tmp_path / "clash", 7, 2, keys=["k8", "k0"])  # k0 is the map's
    (tmp_path / "link").symlink_to(tmp_path / "unkeyed")
    before = tree(tmp_path)
    for names, match in ((["unkeyed"], "keys"), (["clash"], "'k0'"), (["link"], "symbolic link"),
                         ([f"s/parts/{m.part_names[0]}"], "lies in"), (["s"], "not a map of one of the kinds")):
        with pytest.raises(ValueError, match=match):
            m.append_maps([tmp_path / name for name in names])
        assert tree(tmp_path) == before, names
    assert m.gc() == [] and len(ShardedMmap(tmp_path / "s")) == 3
    outer = keyed_map(tmp_path / "outer", 20, 2).out_dir
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="holds"):  # the new map would lie inside the map moved into it
        ShardedMmap.from_maps(outer / "inner", [outer])
    assert tree(tmp_path) == before
    assert (tmp_path / "unkeyed").exists() and RaggedMmap(tmp_path / "unkeyed")[0].tolist() == [0, 1]


def test_a_commit_that_fails_after_the_moves_puts_every_map_back(tmp_path, monkeypatch):
    from mmap_ninja import sharded

    for name, start in (("a", 0), ("b", 3), ("c", 6)):
        keyed_map(tmp_path / name, start, 3)
    before = tree(tmp_path)

    def failing_commit(out_dir, records):
        raise OSError("the disk is full")

    monkeypatch.setattr(sharded, "_commit", failing_commit)
    with pytest.raises(OSError, match="full"):
        ShardedMmap.from_maps(tmp_path / "out", [tmp_path / n for n in "abc"])
    assert tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_merge_move_with_a_repeated_key_exits_2_and_moves_nothing(tmp_path, capsys):
    keyed_map(tmp_path / "f", 0, 3)
    keyed_map(tmp_path / "g", 3, 2, keys=["k3", "k0"])
    before = tree(tmp_path)
    assert cli.main(["merge", str(tmp_path / "out"), str(tmp_path / "f"), str(tmp_path / "g"), "--move"]) == 2
    assert "'k0'" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_compact_and_concatenate_carry_the_keys(tmp_path):
    from mmap_ninja.generic import concatenate

    m = ShardedMmap.from_generator(tmp_path / "s", (np.arange(i % 3 + 1) for i in range(10)), part_size=4,
                                   keys=[f"doc/{i}" for i in range(10)])
    one = m.compact(tmp_path / "one")
    assert one.keys() == [f"doc/{i}" for i in range(10)] and one.index_of("doc/7") == 7
    assert mmap_ninja.verify(tmp_path / "one", deep=True) == []
    assert cli.main(["compact", str(tmp_path / "s"), str(tmp_path / "two"), "--quiet"]) == 0
    assert RaggedMmap(tmp_path / "two").by_key["doc/9"].tolist() == [0]
    StringsMmap.from_strings(tmp_path / "t1", ["a", "b"], keys=["x", "y"])
    StringsMmap.from_strings(tmp_path / "t2", ["c"], keys=["z"])
    both = concatenate(tmp_path / "t", [tmp_path / "t1", tmp_path / "t2"])
    assert both.keys() == ["x", "y", "z"] and both.by_key["z"] == "c"
    StringsMmap.from_strings(tmp_path / "t3", ["d"], keys=["x"])
    StringsMmap.from_strings(tmp_path / "t4", ["e"])
    for second, match in (("t3", "'x'"), ("t4", "keys")):
        with pytest.raises(ValueError, match=match):
            concatenate(tmp_path / "u", [tmp_path / "t1", tmp_path / second])
        assert not (tmp_path / "u").exists()


@pytest.mark.parametrize("name", ["../../other", "/tmp", "..", ".", "", "part-a/../../x", "parts", 7, None])
def test_commit_parts_refuses_a_record_naming_anything_but_one_part_folder(tmp_path, name):
    m = ShardedMmap.commit_parts(tmp_path / "s", [write_part(tmp_path / "s", [np.arange(3)])])
    RaggedMmap.from_lists(tmp_path / "other", [np.arange(2)])
    before = tree(tmp_path)
    with pytest.raises(ValueError):
        ShardedMmap.commit_parts(tmp_path / "s", [{"name": name, "length": 1, "kind": "ragged", "dtype": "int64"}])
    assert tree(tmp_path) == before and len(ShardedMmap(tmp_path / "s")) == len(m) == 1


def test_commit_parts_checks_the_record_against_the_part_on_disk(tmp_path):
    m = ShardedMmap.commit_parts(tmp_path / "s", [write_part(tmp_path / "s", [np.arange(3)])])
    floats = write_part(tmp_path / "s", [np.ones(2)])
    (tmp_path / "s" / "parts" / "part-link").symlink_to(tmp_path / "s" / "parts" / floats["name"])
    before = tree(tmp_path)
    lies = [
        (dict(floats, dtype="int64"), "float64"),         # the record lies about the part's dtype
        (floats, "float64"),                              # the truth: not the map's dtype
        (dict(floats, length=10**30), "length"),
        (dict(floats, length=True), "length"),
        (dict(floats, name="part-link"), "symbolic link"),
        (dict(floats, name="part-missing"), "missing"),
    ]
    for record, match in lies:
        with pytest.raises(ValueError, match=match):
            ShardedMmap.commit_parts(tmp_path / "s", [record])
        assert tree(tmp_path) == before, record
    assert len(ShardedMmap(tmp_path / "s")) == len(m)


def write_manifest(path, manifest):
    import json

    (path / "manifest.ninja").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, match", [
    (lambda e: [dict(e[0], name="..")], "part 0"),
    (lambda e: [dict(e[0], name="../../etc")], "part 0"),
    (lambda e: [dict(e[0], length=10**30)], "part 0"),
    (lambda e: [dict(e[0], length=-1)], "part 0"),
    (lambda e: [e[0], e[0]], "listed twice"),
    (lambda e: [dict(e[0], length=2**62)] * 1 + [dict(e[1], length=2**62)], "more than"),
])
def test_a_damaged_manifest_raises_naming_it_and_verify_reports_it(tmp_path, damage, match):
    m = ShardedMmap.from_generator(tmp_path / "s", (np.arange(3) for _ in range(6)), part_size=3)
    import json

    manifest = json.loads((tmp_path / "s" / "manifest.ninja").read_text())
    manifest["parts"] = damage(manifest["parts"])
    write_manifest(tmp_path / "s", manifest)
    with pytest.raises(ValueError, match=match) as info:
        ShardedMmap(tmp_path / "s")
    assert "manifest.ninja" in str(info.value)
    report = m.verify()
    assert len(report) == 1 and "manifest.ninja" in report[0]
    assert cli.main(["verify", str(tmp_path / "s")]) == 1


def test_verify_checks_the_manifest_against_every_part(tmp_path, capsys):
    import json

    ShardedMmap.from_generator(tmp_path / "s", (np.arange(3) for _ in range(6)), part_size=3)
    manifest = json.loads((tmp_path / "s" / "manifest.ninja").read_text())
    write_manifest(tmp_path / "s", dict(manifest, dtype="float32"))  # the parts hold int64
    report = mmap_ninja.verify(tmp_path / "s")
    assert len(report) == 2 and all("int64" in line and "float32" in line for line in report)
    assert cli.main(["verify", str(tmp_path / "s")]) == 1
    capsys.readouterr()
    write_manifest(tmp_path / "s", dict(manifest, kind="string"))
    report = mmap_ninja.verify(tmp_path / "s")
    assert report and all("ragged map, not string samples" in line for line in report)
    np_ninja.from_ndarray(tmp_path / "rows", np.ones((2, 3)))
    np_ninja.from_ndarray(tmp_path / "wide", np.ones((2, 4)))
    rows = ShardedMmap.from_maps(tmp_path / "n", [tmp_path / "rows"])
    with pytest.raises(ValueError, match="shape"):
        rows.append_maps([tmp_path / "wide"])
    wide = write_part(tmp_path / "n", [np.ones(4)], kind="numpy")
    with pytest.raises(ValueError, match="shape"):
        ShardedMmap.commit_parts(tmp_path / "n", [wide])
    manifest = json.loads((tmp_path / "n" / "manifest.ninja").read_text())
    manifest["parts"].append({"name": wide["name"], "length": 1})
    write_manifest(tmp_path / "n", manifest)
    assert any("shape (4,)" in line for line in mmap_ninja.verify(tmp_path / "n"))


def hold_a_part_open(out_dir, started, release):
    """Write a part whose samples come slowly: its writer holds the part's lock meanwhile."""
    def samples():
        yield np.arange(3)
        started.set()
        release.wait(60)
        yield np.arange(2)

    write_part(out_dir, samples(), batch_size=1)


def test_gc_skips_a_part_whose_writer_is_alive_and_reports_only_what_it_removed(tmp_path, capsys):
    m = ShardedMmap.commit_parts(tmp_path / "s", [write_part(tmp_path / "s", [np.arange(3)])])
    orphan = write_part(tmp_path / "s", [np.arange(4)])
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "s" / "parts" / "part-symlinked").symlink_to(tmp_path / "elsewhere")
    context = multiprocessing.get_context("fork")
    started, release = context.Event(), context.Event()
    writer = context.Process(target=hold_a_part_open, args=(tmp_path / "s", started, release))
    writer.start()
    try:
        assert started.wait(60)
        live = [name for name in m.uncommitted_parts() if name not in (orphan["name"], "part-symlinked")]
        assert live, "the writer's part and build folder are listed as uncommitted"
        removed = m.gc()
        assert removed == [orphan["name"]]
        assert all((tmp_path / "s" / "parts" / name).exists() for name in live)
        assert any("being written" in line for line in removed.skipped)
        assert any("part-symlinked" in line and "symbolic link" in line for line in removed.skipped)
        assert (tmp_path / "elsewhere").is_dir()
    finally:
        release.set()
        writer.join(60)
    assert writer.exitcode == 0  # the writer finished its part
    assert cli.main(["gc", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "symbolic link" in out


# -- versions: a reader keeps the version it opened -------------------------------------------

def test_a_reader_keeps_reading_its_version_after_the_map_is_rebuilt(tmp_path):
    ShardedMmap.from_generator(tmp_path / "s", (np.full(3, i) for i in range(12)), part_size=3,
                               keys=[f"old{i}" for i in range(12)])
    reader = ShardedMmap(tmp_path / "s")
    assert reader[0].tolist() == [0, 0, 0]  # opens the first part only
    ShardedMmap.from_generator(tmp_path / "s", (np.full(2, -i) for i in range(5)), part_size=2,
                               keys=[f"new{i}" for i in range(5)])
    ShardedMmap(tmp_path / "s").gc()  # keeps every version: removes nothing a reader may need
    assert [reader[i].tolist() for i in (11, 4, 7)] == [[11] * 3, [4] * 3, [7] * 3]  # parts not opened before
    assert reader.by_key["old9"].tolist() == [9] * 3 and reader.version == 0 + reader.versions()[0]
    latest = ShardedMmap(tmp_path / "s")
    assert len(latest) == 5 and latest[4].tolist() == [-4, -4] and latest.index_of("new3") == 3
    with pytest.raises(KeyError):
        latest.index_of("old1")
    reader.refresh()
    assert len(reader) == 5 and reader.version == latest.version
    assert mmap_ninja.verify(tmp_path / "s", deep=True) == []


def test_every_commit_is_a_version_that_can_be_read_until_gc_drops_it(tmp_path):
    m = ShardedMmap.commit_parts(tmp_path / "s", [write_part(tmp_path / "s", ["a", "b"])])
    ShardedMmap.commit_parts(tmp_path / "s", [write_part(tmp_path / "s", ["c"])])
    ShardedMmap.from_generator(tmp_path / "s", iter(["x", "y", "z", "w"]), part_size=3)
    assert m.versions() == [0, 1, 2]
    assert [list(ShardedMmap(tmp_path / "s", version=k)) for k in range(3)] == [
        ["a", "b"], ["a", "b", "c"], ["x", "y", "z", "w"]]
    old = ShardedMmap(tmp_path / "s", version=1)
    assert pickle.loads(pickle.dumps(old))[2] == "c"
    removed = m.gc(keep_versions=1)
    assert len(removed) == 2 and m.versions() == [2]  # the parts of versions 0 and 1
    with pytest.raises(FileNotFoundError, match="no version 1"):
        ShardedMmap(tmp_path / "s", version=1)
    assert list(ShardedMmap(tmp_path / "s")) == ["x", "y", "z", "w"]
    with pytest.raises(ValueError, match="keep_versions"):
        m.gc(keep_versions=0)


def test_a_map_of_0_13_opens_as_version_0_and_keeps_it(tmp_path):
    import json

    m = ShardedMmap.from_generator(tmp_path / "s", (np.arange(i + 1) for i in range(4)), part_size=2)
    manifest = json.loads((tmp_path / "s" / "manifest.ninja").read_text())
    old = {"format": 1, "kind": manifest["kind"], "dtype": manifest["dtype"], "parts": manifest["parts"]}
    import shutil

    shutil.rmtree(tmp_path / "s" / "versions")
    write_manifest(tmp_path / "s", old)  # as 0.13.0 wrote it: one manifest, no versions
    m = ShardedMmap(tmp_path / "s")
    assert m.version == 0 and m.versions() == [0] and len(m) == 4
    m.append_maps([RaggedMmap.from_lists(tmp_path / "more", [np.arange(7)]).out_dir])
    assert m.versions() == [0, 1] and len(ShardedMmap(tmp_path / "s", version=0)) == 4 and len(m) == 5


def test_a_rebuild_that_fails_leaves_the_version_and_no_parts(tmp_path):
    m = ShardedMmap.from_generator(tmp_path / "s", (np.arange(3) for _ in range(4)), part_size=2)
    before = tree(tmp_path)

    def failing():
        yield from (np.arange(2) for _ in range(5))
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="broke"):
        ShardedMmap.from_generator(tmp_path / "s", failing(), part_size=2)
    assert tree(tmp_path) == before and m.versions() == [0]


def test_compact_into_its_own_folder_is_refused(tmp_path):
    m = ShardedMmap.from_generator(tmp_path / "s", (np.arange(3) for _ in range(4)), part_size=2)
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="another path"):
        m.compact(tmp_path / "s")
    assert tree(tmp_path) == before


def test_a_manifest_of_a_newer_format_is_refused_not_misread(tmp_path):
    import json

    ShardedMmap.from_generator(tmp_path / "s", (np.arange(3) for _ in range(4)), part_size=2)
    manifest = json.loads((tmp_path / "s" / "manifest.ninja").read_text())
    write_manifest(tmp_path / "s", dict(manifest, format=3))
    with pytest.raises(ValueError, match="format 3.*upgrade"):
        ShardedMmap(tmp_path / "s")
    assert "format 3" in mmap_ninja.verify(tmp_path / "s")[0]


# -- parts that are tables ------------------------------------------------------------------------


def table_row(i):
    return {"image": np.full((i % 3 + 1, 2), i, dtype=np.uint8), "label": i, "caption": f"caption {i} é" * (i % 2 + 1)}


def table_rows(n, start=0):
    return [table_row(i) for i in range(start, start + n)]


def assert_rows_equal(batch, indices):
    """``batch``, a dict of batches, holds the rows ``indices`` of ``table_row``."""
    assert list(batch) == ["image", "label", "caption"]
    assert np.array_equal(batch["label"], indices)
    assert batch["caption"] == [table_row(i)["caption"] for i in indices]
    assert all(np.array_equal(a, table_row(i)["image"]) for a, i in zip(batch["image"], indices))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=5).filter(sum),
       picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=30))
def test_parts_that_are_tables_read_as_one_table(tmp_path_factory, sizes, picks):
    out = tmp_path_factory.mktemp("tables") / "m"
    starts = np.cumsum([0] + sizes)
    records = [write_part(out, table_rows(n, int(start)), kind="table" if not n else None,
                          keys=[f"k{i}" for i in range(start, start + n)])
               for n, start in zip(sizes, starts) if n]
    m = ShardedMmap.commit_parts(out, records)
    n = int(starts[-1])
    assert len(m) == n and m.kind == "table" and m.columns == ["image", "label", "caption"]
    assert m.schema == {"image": "ragged", "label": "numpy", "caption": "string"}
    indices = [p % n for p in picks]
    assert_rows_equal(m[indices], indices)
    assert_rows_equal(m.__getitems__(indices), indices)
    taken = m.take(indices)
    assert isinstance(taken["image"], mmap_ninja.RaggedBatch) and np.array_equal(taken["label"], indices)
    assert all(np.array_equal(a, table_row(i)["image"]) for a, i in zip(taken["image"].arrays(), indices))
    row = m[indices[0]]
    assert row["label"] == indices[0] and row["caption"] == table_row(indices[0])["caption"]
    assert [r["label"] for r in m] == list(range(n))
    assert m.index_of(f"k{indices[-1]}") == indices[-1] and m.by_key[f"k{indices[0]}"]["label"] == indices[0]
    reopened = pickle.loads(pickle.dumps(m))
    assert_rows_equal(reopened[indices], indices)
    assert not mmap_ninja.verify(out, deep=True)


def test_a_column_of_a_map_of_tables_is_a_sharded_map_of_its_kind(tmp_path):
    m = ShardedMmap.from_generator(tmp_path / "m", table_rows(25), part_size=6)
    assert len(m.part_names) == 5
    labels, captions, images = m["label"], m["caption"], m["image"]
    assert labels.kind == "numpy" and np.array_equal(labels[:], np.arange(25))
    assert captions.kind == "string" and captions.get_bytes(7) == table_row(7)["caption"].encode()
    assert images.kind == "ragged"
    padded, lengths = images.padded([3, 11, 24])
    assert lengths.tolist() == [1, 3, 1] and padded.shape == (3, 3, 2) and padded[1, 2, 0] == 11
    assert pickle.loads(pickle.dumps(captions))[5] == table_row(5)["caption"]
    selected = m[["caption", "label"]]
    assert selected.columns == ["caption", "label"] and list(selected[[2, 9]]) == ["caption", "label"]
    assert pickle.loads(pickle.dumps(selected)).columns == ["caption", "label"]
    wrapped = ShardedMmap(tmp_path / "m", wrapper_fn={"label": lambda x: int(x) * 10})
    assert wrapped[[1, 2]]["label"] == [10, 20] and wrapped[3]["label"] == 30
    with pytest.raises(KeyError, match="'nope' is not a column"):
        m["nope"]
    with pytest.raises(KeyError, match="'nope' is not a column"):
        ShardedMmap(tmp_path / "m", columns=["label", "nope"])
    with pytest.raises(TypeError, match="holds tables"):
        m.padded([0])
    with pytest.raises(TypeError, match="not tables"):
        assert ShardedMmap.from_generator(tmp_path / "r", samples_of("ragged", 3), part_size=2).columns
    with pytest.raises(TypeError, match="wrapper_fn is a dict"):
        ShardedMmap(tmp_path / "r", wrapper_fn={"x": abs})
    with pytest.raises(TypeError, match="columns= selects columns of a map of tables"):
        ShardedMmap(tmp_path / "r", columns=["x"])


def test_parts_of_other_columns_are_refused_and_nothing_is_committed(tmp_path):
    m = ShardedMmap.from_generator(tmp_path / "m", table_rows(8), part_size=4)
    before = (tmp_path / "m" / "manifest.ninja").read_bytes()
    renamed = write_part(tmp_path / "m", [{"image": np.zeros((1, 2), np.uint8), "label": 1, "text": "x"}])
    other_dtype = write_part(tmp_path / "m", [{"image": np.zeros((1, 2), np.float32), "label": 1, "caption": "x"}])
    reordered = write_part(tmp_path / "m", [{"label": 1, "image": np.zeros((1, 2), np.uint8), "caption": "x"}])
    plain = write_part(tmp_path / "m", samples_of("ragged", 2))
    for record in (renamed, other_dtype, reordered):
        with pytest.raises(ValueError, match="the parts of a sharded map hold the same columns"):
            ShardedMmap.commit_parts(tmp_path / "m", [record])
    with pytest.raises(ValueError, match="ragged samples"):
        ShardedMmap.commit_parts(tmp_path / "m", [plain])
    forged = dict(write_part(tmp_path / "m", table_rows(2)), columns=renamed["columns"])
    with pytest.raises(ValueError, match="its record"):
        ShardedMmap.commit_parts(tmp_path / "m", [forged])
    assert (tmp_path / "m" / "manifest.ninja").read_bytes() == before and len(ShardedMmap(tmp_path / "m")) == 8
    mmap_ninja.TableMmap.from_generator(tmp_path / "t", [{"image": np.zeros((1, 2), np.uint8), "label": 1.5,
                                                          "caption": "x"}])
    with pytest.raises(ValueError, match="the same columns"):
        m.append_maps([tmp_path / "t"])
    assert (tmp_path / "t" / "table.ninja").exists() and len(m) == 8
    mmap_ninja.TableMmap.from_generator(tmp_path / "u", table_rows(3, 8))
    m.append_maps([tmp_path / "u"])
    assert len(m) == 11 and m[10]["caption"] == table_row(10)["caption"]


def test_tables_become_a_sharded_map_and_compact_into_one_table(tmp_path):
    for k in range(3):
        mmap_ninja.TableMmap.from_generator(tmp_path / f"t{k}", table_rows(4, 4 * k), keys=[f"r{i}" for i in
                                                                                          range(4 * k, 4 * k + 4)],
                                            classes={"label": [f"class {i}" for i in range(12)]})
    m = ShardedMmap.from_maps(tmp_path / "m", [tmp_path / f"t{k}" for k in range(3)])
    assert m.classes == {"label": [f"class {i}" for i in range(12)]}
    assert_rows_equal(m[list(range(12))], list(range(12)))
    table = m.compact(tmp_path / "one")
    assert isinstance(table, mmap_ninja.TableMmap) and len(table) == 12
    assert_rows_equal(table[list(range(12))], list(range(12)))
    assert table.index_of("r9") == 9 and table.classes == m.classes
    assert isinstance(mmap_ninja.open_existing(tmp_path / "m"), ShardedMmap)


def test_verify_finds_a_table_part_out_of_step_with_the_manifest(tmp_path):
    ShardedMmap.from_generator(tmp_path / "m", table_rows(9), part_size=3)
    assert not mmap_ninja.verify(tmp_path / "m", deep=True)
    part = tmp_path / "m" / "parts" / ShardedMmap(tmp_path / "m").part_names[1]
    (part / "columns" / "caption" / "starts" / "shape.ninja").write_bytes(b"(1,)")
    report = mmap_ninja.verify(tmp_path / "m")
    assert report and any("caption" in line for line in report)
    with pytest.raises(ValueError, match="caption"):
        ShardedMmap(tmp_path / "m")[[4]]
