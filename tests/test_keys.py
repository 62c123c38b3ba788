"""Keys: one unique str per sample, for every kind of map, found in O(1) through the compiled
hash table stored with the map (mmap_ninja._keys, mmap_ninja._keyindex)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
from conftest import file_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmap_ninja import _keyindex, _keys
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.sharded import ShardedMmap, write_part
from mmap_ninja.string import StringsMmap

KEY_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)


def build(kind: str, out_dir, count: int, keys, **kwargs):
    """A map of ``count`` samples of ``kind`` (sample i holds i) with ``keys``."""
    if kind == "ragged":
        return RaggedMmap.from_lists(out_dir, [np.full(i % 5, i) for i in range(count)], keys=keys, **kwargs)
    if kind == "string":
        return StringsMmap.from_strings(out_dir, [str(i) for i in range(count)], keys=keys, **kwargs)
    return np_ninja.from_ndarray(out_dir, np.arange(count * 2).reshape(count, 2), keys=keys)


def sample_of(kind: str, i: int):
    return {"ragged": lambda: np.full(i % 5, i), "string": lambda: str(i),
            "numpy": lambda: np.array([2 * i, 2 * i + 1])}[kind]()


class Keyed:
    """The calls of one kind of map, for tests that run over all of them."""

    def __init__(self, kind: str, out_dir):
        self.kind, self.out_dir = kind, out_dir

    def open(self):
        if self.kind == "numpy":
            return np_ninja.open_existing(self.out_dir)
        return (RaggedMmap if self.kind == "ragged" else StringsMmap)(self.out_dir)

    def extend(self, first: int, count: int, keys):
        samples = [sample_of(self.kind, first + k) for k in range(count)]
        if self.kind == "numpy":
            np_ninja.extend_dir(self.out_dir, np.stack(samples) if samples else np.zeros((0, 2), int), keys=keys)
        else:
            self.open().extend(samples, keys=keys)

    def index_of(self, key_or_keys):
        m = self.open()
        return np_ninja.index_of(m, key_or_keys) if self.kind == "numpy" else m.index_of(key_or_keys)

    def keys(self):
        return np_ninja.keys(self.out_dir) if self.kind == "numpy" else self.open().keys()

    def length(self):
        return len(self.open())


KINDS = ["ragged", "string", "numpy"]


# -- properties --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(KEY_TEXT, min_size=1, max_size=40, unique=True), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_lookups_equal_a_dict_through_builds_extends_and_reopens(kind, keys, cuts, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("keys") / kind
    cuts = sorted({0, len(keys), *[min(c, len(keys)) for c in cuts]})
    first = max(cuts[1], 1)
    build(kind, out_dir, first, keys[:first])
    m = Keyed(kind, out_dir)
    for begin, end in zip([first] + cuts[1:], cuts[1:]):
        if end > begin:
            m.extend(begin, end - begin, keys[begin:end])
    reference = {key: i for i, key in enumerate(keys)}
    assert m.keys() == keys and m.length() == len(keys)
    assert m.index_of(keys).tolist() == [reference[key] for key in keys]
    for key in keys[:5]:
        assert m.index_of(key) == reference[key]
    missing = next(k for k in ("absent", "", "x" * 13) if k not in reference)
    with pytest.raises(KeyError, match=repr(missing)):
        m.index_of([keys[0], missing])
    if kind != "numpy":
        opened = m.open()
        got = opened.by_key[keys[-1]]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(sample_of(kind, len(keys) - 1)))
        assert [np.asarray(x).tolist() for x in opened.by_key[keys[::-1]]] == \
               [np.asarray(sample_of(kind, reference[k])).tolist() for k in keys[::-1]]
        assert keys[0] in opened.by_key and missing not in opened.by_key
        assert pickle.loads(pickle.dumps(opened)).index_of(keys[-1]) == len(keys) - 1
    assert _keys.problems(out_dir, len(keys), deep=True)[0] == []


@settings(max_examples=10, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=30))
def test_hash_is_the_same_from_any_buffer_and_lookups_find_every_stored_key(blobs):
    blobs = list(dict.fromkeys(blobs))
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
    starts = ends - np.array([len(b) for b in blobs], dtype=np.int64)
    hashes = _keyindex.hash_keys(data, starts, ends)
    for blob, h in zip(blobs, hashes.tolist()):  # a key's hash does not depend on where it sits
        one = np.frombuffer(b"pad" + blob, dtype=np.uint8)
        assert _keyindex.hash_keys(one, np.array([3]), np.array([3 + len(blob)])).tolist() == [h]
    slots = np.zeros(1024, dtype=np.uint64)
    _keyindex.insert(slots, hashes, 0)
    assert _keyindex.misplaced(slots, data, ends, len(blobs)) == -1
    offsets = np.concatenate(([0], ends))
    assert _keyindex.find(slots, data, ends, len(blobs), data, offsets).tolist() == list(range(len(blobs)))
    texts = [blob.decode("utf-8", "replace") for blob in blobs]
    texts = list(dict.fromkeys(texts))
    stored = np.frombuffer("".join(texts).encode(), dtype=np.uint8)
    sizes = np.array([len(t.encode()) for t in texts], dtype=np.int64)
    text_ends = np.cumsum(sizes, dtype=np.int64)
    text_slots = np.zeros(1024, dtype=np.uint64)
    _keyindex.insert(text_slots, _keyindex.hash_keys(stored, text_ends - sizes, text_ends), 0)
    found = _keyindex.find_strings(text_slots, stored, text_ends, len(texts), texts + ["absent ✗"])
    assert found.tolist() == list(range(len(texts))) + [-1]
    if texts:  # a reader that knows fewer keys does not find the later ones
        assert _keyindex.find_strings(text_slots, stored, text_ends, len(texts) - 1, texts[-1:]).tolist() == [-1]


def test_lookups_take_str_only_and_check_what_they_read(tmp_path):
    stored = np.frombuffer(b"abcd", dtype=np.uint8)
    ends = np.array([2, 4], dtype=np.int64)
    slots = np.zeros(16, dtype=np.uint64)
    _keyindex.insert(slots, _keyindex.hash_keys(stored, np.array([0, 2]), ends), 0)
    assert _keyindex.find_strings(slots, stored, ends, 2, ["cd", "ab", "x"]).tolist() == [1, 0, -1]
    with pytest.raises(TypeError, match="key 1 is a bytes"):
        _keyindex.find_strings(slots, stored, ends, 2, ["ab", b"cd"])
    # text that is not valid UTF-8 (a lone surrogate) is no stored key
    assert _keyindex.find_strings(slots, stored, ends, 2, ["\ud800", "ab"]).tolist() == [-1, 0]
    m = StringsMmap.from_strings(tmp_path / "m", ["x"], keys=["ab"])
    with pytest.raises(KeyError, match="ud800"):
        m.index_of("\ud800")
    assert "\ud800" not in m.by_key and "ab" in m.by_key
    with pytest.raises(ValueError, match="3 keys asked of 2"):
        _keyindex.find_strings(slots, stored, ends, 3, ["ab"])
    damaged = np.array([2, 99], dtype=np.int64)  # key 1 ends past the bytes: raises, reads nothing there
    with pytest.raises(ValueError, match="the offsets of key 1 fall outside its bytes: damaged"):
        _keyindex.find_strings(slots, stored, damaged, 2, ["cd"])
    with pytest.raises(ValueError, match="the offsets of key 1 fall outside"):
        _keyindex.misplaced(slots, stored, damaged, 2)


def test_hash_known_answers():
    """The hash is part of the file format: it must never change."""
    def h(raw: bytes) -> int:
        return int(_keyindex.hash_keys(np.frombuffer(raw, np.uint8), np.array([0]), np.array([len(raw)]))[0])

    assert h(b"") == 16294208416658607535
    assert h(b"abc") == 10566936011820837120
    assert [h(b"images/0001.jpg"), h("ключ".encode())] == [h(b"images/0001.jpg"), h("ключ".encode())]
    assert len({h(f"k{i}".encode()) for i in range(10000)}) == 10000


# -- uniqueness and errors leave the map as it was ---------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_duplicates_and_bad_keys_raise_and_change_nothing(kind, tmp_path):
    out_dir = tmp_path / kind
    build(kind, out_dir, 3, ["a", "b", "c"])
    m = Keyed(kind, out_dir)
    before = file_bytes(out_dir)
    cases = [
        (["d", "b"], ValueError, r"the key 'b' of sample 4 is already the key of sample 1"),
        (["d", "d"], ValueError, r"the key 'd' is given twice: for samples 3 and 4"),
        (["d", 5], TypeError, r"the key of sample 4 is a int, not a str"),
        (["d"], ValueError, r"1 keys for 2 samples"),
        (None, ValueError, r"have keys: give one for each new sample"),
    ]
    for keys, error, message in cases:
        with pytest.raises(error, match=message):
            m.extend(3, 2, keys)
        assert file_bytes(out_dir) == before
    assert m.keys() == ["a", "b", "c"] and m.length() == 3
    # a build with a repeated key leaves the map that was there
    with pytest.raises(ValueError, match="the key 'x' is given twice: for samples 0 and 2"):
        build(kind, out_dir, 3, ["x", "y", "x"])
    with pytest.raises(ValueError, match="keys ran out at sample 2"):
        build(kind, out_dir, 3, ["x", "y"])
    with pytest.raises(ValueError, match="more keys than samples: the key 'z' has no sample"):
        build(kind, out_dir, 2, ["x", "y", "z"])
    assert file_bytes(out_dir) == before


def test_maps_without_keys_refuse_lookups_and_new_keys(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "r", [np.arange(2)])
    assert not m.keyed
    with pytest.raises(ValueError, match="has no keys: build it with keys="):
        m.index_of("a")
    with pytest.raises(ValueError, match="holds keys for 0 of its 1 samples"):
        m.extend([np.arange(1)], keys=["a"])
    np_ninja.from_ndarray(tmp_path / "n", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="has no keys"):
        np_ninja.index_of(tmp_path / "n", "a")
    with pytest.raises(TypeError, match="not one str"):
        RaggedMmap.from_lists(tmp_path / "s", [np.arange(2)], keys="a")
    # an empty map takes keys with its first samples
    empty = StringsMmap(tmp_path / "empty")
    empty.extend(["x", "y"], keys=["kx", "ky"])
    assert empty.keyed and empty.by_key["ky"] == "y"
    empty.append("z", key="kz")
    assert empty.keys() == ["kx", "ky", "kz"]


# -- lifecycle: replace, rebuild, pickle, 0.9.0 ------------------------------------------------

def test_keys_survive_replaced_samples_and_go_with_a_rebuild(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(3), np.arange(2)], keys=["a", "b"], mode="r+")
    m[0] = np.array([7, 7, 7])
    assert m.keys() == ["a", "b"] and m.by_key["a"].tolist() == [7, 7, 7]
    m.extend([np.array([[1, 2]])], keys=["nd"])  # the first n-d sample: a new version of the map
    assert m.keys() == ["a", "b", "nd"] and m.by_key["nd"].shape == (1, 2)
    rebuilt = RaggedMmap.from_lists(tmp_path / "m", [np.arange(1)])
    assert not rebuilt.keyed and not (tmp_path / "m" / "keys").exists()
    f = np_ninja.from_ndarray(tmp_path / "f", np.asfortranarray(np.arange(6).reshape(3, 2)), keys=["p", "q", "r"])
    np_ninja.append(f, [9, 9], key="s")  # Fortran order: written anew, aside
    assert np_ninja.keys(tmp_path / "f") == ["p", "q", "r", "s"]
    assert np_ninja.open_existing(tmp_path / "f")[np_ninja.index_of(tmp_path / "f", "s")].tolist() == [9, 9]
    assert np_ninja.verify(tmp_path / "f") == []


def test_a_failed_extend_leaves_no_key_behind(tmp_path, monkeypatch):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(2)], keys=["a"])

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(RaggedMmap, "_append", fail)  # the keys are committed, the samples are not
    with pytest.raises(OSError, match="disk full"):
        m.extend([np.arange(1), np.arange(2)], keys=["b", "c"])
    monkeypatch.undo()
    m.refresh()
    assert len(m) == 1 and m.keys() == ["a"]
    with pytest.raises(KeyError):
        m.index_of("b")
    # the keys written past the samples are written over by the next extend
    m.extend([np.arange(3)], keys=["c"])
    assert m.keys() == ["a", "c"] and m.index_of("c") == 1
    with pytest.raises(KeyError):
        m.index_of("b")
    m.extend([np.arange(4)], keys=["b"])
    assert m.index_of(["b", "c", "a"]).tolist() == [2, 1, 0] and m.verify(deep=True) == []
    # the slots of the keys written over went with a table built anew: one slot per key
    slots = np.fromfile(tmp_path / "m" / "keys" / "index.ninja", dtype=np.uint64, offset=64)
    assert np.count_nonzero(slots) == 3
    # written over in place: the keys stay back to back
    assert np_ninja.open_existing(tmp_path / "m" / "keys" / "starts").tolist() == [0, 1, 2]
    assert np_ninja.open_existing(tmp_path / "m" / "keys" / "ends").tolist() == [1, 2, 3]


def test_the_table_grows_and_stays_sound(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "s", ["0"], keys=["k0"])
    sizes = []
    for first in range(1, 1500, 100):
        m.extend([str(i) for i in range(first, first + 100)], keys=[f"k{i}" for i in range(first, first + 100)])
        sizes.append((tmp_path / "s" / "keys" / "index.ninja").stat().st_size)
    assert sizes[-1] > sizes[0]  # built anew, larger, as it filled
    assert m.index_of([f"k{i}" for i in range(0, 1501, 7)]).tolist() == list(range(0, 1501, 7))
    assert m.verify(deep=True) == []


def test_keyed_maps_open_in_090_and_their_keys_are_a_strings_map(tmp_path, ref090):
    from test_compat_090 import _read_with_090

    RaggedMmap.from_lists(tmp_path / "r", [np.arange(3), np.arange(1)], keys=["a", "b"]).extend(
        [np.arange(2)], keys=["c"])
    StringsMmap.from_strings(tmp_path / "s", ["x", "y"], keys=["kx", "ky"])
    np_ninja.from_ndarray(tmp_path / "n", np.arange(4).reshape(2, 2), keys=["n0", "n1"])
    reads = _read_with_090(ref090, [(tmp_path / "r", "ragged"), (tmp_path / "s", "string"),
                                    (tmp_path / "n", "numpy"), (tmp_path / "r" / "keys", "string")], tmp_path)
    assert [sample["values"] for sample in reads[str(tmp_path / "r")]["generic"]] == [[0, 1, 2], [0], [0, 1]]
    assert reads[str(tmp_path / "s")]["generic"] == ["x", "y"]
    assert reads[str(tmp_path / "n")]["generic"]["values"] == [0, 1, 2, 3]
    assert reads[str(tmp_path / "n")]["generic"]["shape"] == [2, 2]
    assert reads[str(tmp_path / "r" / "keys")]["specific"] == ["a", "b", "c"]


# -- damage is reported or raised, never a crash -----------------------------------------------

def test_damage_to_the_keys_is_reported_by_verify(tmp_path):
    keys = [f"item-{i}" for i in range(50)]
    out = tmp_path / "m"
    RaggedMmap.from_lists(out, [np.arange(i % 3) for i in range(50)], keys=keys)
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine)

    table = out / "keys" / "index.ninja"
    raw = bytearray(table.read_bytes())
    raw[64:] = bytes(len(raw) - 64)  # every slot emptied
    table.write_bytes(bytes(raw))
    report = RaggedMmap(out).verify()
    assert len(report) == 1 and "the key 'item-0' of sample 0 is not indexed at its place" in report[0]
    with pytest.raises(KeyError):
        RaggedMmap(out).index_of("item-3")

    for name, damage, expected in [
        ("index.ninja", lambda p: p.write_bytes(b"garbage"), "too short for the header"),
        ("index.ninja", lambda p: p.write_bytes(struct.pack("<8sIIQ", b"MNKEYIDX", 1, 40, 1 << 40).ljust(64, b"\0")),
         "cannot hold"),
        ("index.ninja", lambda p: p.unlink(), "is missing"),
        ("data.ninja", lambda p: p.write_bytes(p.read_bytes()[:-1] + b"!"), "do not match their checksum"),
        ("data.ninja", lambda p: p.write_bytes(p.read_bytes()[:10]), "the offsets of key 1 ([6, 12)) fall outside"),
    ]:
        shutil.rmtree(out)
        shutil.copytree(pristine, out)
        damage(out / "keys" / name)
        report = RaggedMmap(out).verify(deep=True)
        assert report and expected in " ".join(report), (name, report)
        m = RaggedMmap(out)  # the map still opens and reads; lookups raise
        assert len(m) == 50 and m[4].tolist() == [0]
        if name == "index.ninja":
            with pytest.raises(ValueError, match="index.ninja"):
                m.index_of("item-1")


def test_keys_whose_offsets_are_damaged_raise_on_lookup(tmp_path):
    out = tmp_path / "m"
    StringsMmap.from_strings(out, ["a", "b", "c"], keys=["ka", "kb", "kc"])
    ends = np_ninja.open_existing(out / "keys" / "ends", "r+")
    ends[1] = 1 << 40  # past the key bytes
    ends.flush()
    del ends
    with pytest.raises(ValueError, match="offsets of key 1 fall outside its bytes"):
        StringsMmap(out).index_of(["kb"])
    assert "the offsets of key 1 ([2, 1099511627776)) fall outside the 6 bytes" in " ".join(StringsMmap(out).verify())


def test_an_extend_never_writes_over_committed_keys_of_damaged_offsets(tmp_path):
    out = tmp_path / "m"
    StringsMmap.from_strings(out, ["a", "b", "c"], keys=["aa", "bbb", "c"])
    ends = np_ninja.open_existing(out / "keys" / "ends", "r+")
    ends[2] = 3  # key 2 would end before key 1 does: new keys would go over "bbb"
    ends.flush()
    del ends
    before = file_bytes(out)
    with pytest.raises(ValueError, match="key 2 ends at byte 3, before it starts"):
        StringsMmap(out).extend(["d"], keys=["XYZ"])
    assert file_bytes(out) == before


def test_keys_that_are_not_back_to_back_are_reported(tmp_path):
    # lookups read where key j starts from where key j - 1 ends; the starts 0.9.0 reads must agree
    out = tmp_path / "m"
    StringsMmap.from_strings(out, ["a", "b", "c"], keys=["ka", "kb", "kc"])
    starts = np_ninja.open_existing(out / "keys" / "starts", "r+")
    assert starts.tolist() == [0, 2, 4]
    starts[2] = 0
    starts.flush()
    del starts
    report = " ".join(StringsMmap(out).verify())
    assert "key 2 starts at byte 0, not where key 1 ends (4): keys are stored back to back; damaged" in report


# -- sharded maps --------------------------------------------------------------------------------

def test_sharded_maps_have_one_table_for_all_their_parts(tmp_path):
    keys = [f"doc{i}" for i in range(23)]
    m = ShardedMmap.from_generator(tmp_path / "s", (np.full(2, i) for i in range(23)), 5, keys=iter(keys))
    assert m.keyed and m.keys() == keys and len(m.part_names) == 5
    assert m.index_of(["doc22", "doc0", "doc7"]).tolist() == [22, 0, 7]
    assert m.by_key["doc13"].tolist() == [13, 13] and m.verify() == []
    before = file_bytes(tmp_path / "s")
    clash = write_part(tmp_path / "s", [np.arange(1), np.arange(2)], keys=["new", "doc3"])
    with pytest.raises(ValueError, match="the key 'doc3' of sample 24 is already the key of sample 3"):
        ShardedMmap.commit_parts(tmp_path / "s", [clash])
    plain = write_part(tmp_path / "s", [np.arange(1)])
    with pytest.raises(ValueError, match="the parts of a map all have keys or none has"):
        ShardedMmap.commit_parts(tmp_path / "s", [plain])
    assert ShardedMmap(tmp_path / "s").keys() == keys
    assert {k: v for k, v in file_bytes(tmp_path / "s").items() if "/part-" not in k or k in before} == before
    records = [write_part(tmp_path / "s", [np.arange(3)], keys=["p1"]), write_part(tmp_path / "s", [], keys=[])]
    m = ShardedMmap.commit_parts(tmp_path / "s", records)
    assert m.index_of("p1") == 23 and len(m) == 24
    # keyed maps moved in as parts keep their keys
    a = RaggedMmap.from_lists(tmp_path / "a", [np.arange(1)], keys=["a0"]).out_dir
    b = RaggedMmap.from_lists(tmp_path / "b", [np.arange(2), np.arange(3)], keys=["b0", "b1"]).out_dir
    merged = ShardedMmap.from_maps(tmp_path / "merged", [a, b])
    assert merged.keys() == ["a0", "b0", "b1"] and merged.by_key["b1"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="more keys than samples"):
        ShardedMmap.from_generator(tmp_path / "t", (np.arange(1) for _ in range(4)), 2, keys=["a", "b", "c", "d", "e"])


# -- concurrency: readers look keys up while a writer adds them -----------------------------------

def _look_up_while_written(out_dir: str, rounds: int, queue) -> None:
    seen_max, bad = 0, []
    for _ in range(rounds):
        m = StringsMmap(out_dir)
        n = len(m)
        probe = [f"key-{i}" for i in range(0, n, max(1, n // 50))] + [f"key-{n - 1}"]
        found = m.index_of(probe).tolist()
        expected = [int(key[4:]) for key in probe]
        if found != expected:
            bad.append((n, found[:5], expected[:5]))
        seen_max = max(seen_max, n)
        try:
            m.index_of(f"key-{n + 5000}")
            bad.append(("found a key that is not committed", n))
        except KeyError:
            pass
    queue.put((seen_max, bad))


def test_readers_in_other_processes_find_every_committed_key_while_the_table_grows(tmp_path):
    out = tmp_path / "s"
    StringsMmap.from_strings(out, ["0"], keys=["key-0"])
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    readers = [ctx.Process(target=_look_up_while_written, args=(str(out), 150, queue)) for _ in range(2)]
    for reader in readers:
        reader.start()
    m = StringsMmap(out)
    for first in range(1, 6001, 200):  # the table is built anew several times on the way
        m.extend([str(i) for i in range(first, first + 200)], keys=[f"key-{i}" for i in range(first, first + 200)])
    results = [queue.get(timeout=120) for _ in readers]
    for reader in readers:
        reader.join(timeout=60)
        assert reader.exitcode == 0
    for seen_max, bad in results:
        assert bad == [] and seen_max >= 1
    assert m.verify() == [] and m.index_of("key-6000") == 6000


def test_threads_look_up_while_another_extends(tmp_path):
    import threading

    m = RaggedMmap.from_lists(tmp_path / "r", [np.arange(1)], keys=["k0"])
    reader = RaggedMmap(tmp_path / "r")
    errors = []
    done = threading.Event()

    def look_up():
        while not done.is_set():
            reader.refresh()
            n = len(reader)
            try:
                assert reader.index_of([f"k{i}" for i in range(n)]).tolist() == list(range(n))
            except Exception as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=look_up) for _ in range(2)]
    for thread in threads:
        thread.start()
    for i in range(1, 400, 20):
        m.extend([np.arange(2)] * 20, keys=[f"k{j}" for j in range(i, i + 20)])
    done.set()
    for thread in threads:
        thread.join()
    assert errors == [] and len(m) == 401


def test_a_table_is_read_whole_from_one_file_while_tables_of_other_sizes_replace_it(tmp_path):
    # a table built anew is renamed over the old one: a reader must never take the header (the
    # number of slots) of one table and the slots of the other
    import threading

    m = StringsMmap.from_strings(tmp_path / "s", [str(i) for i in range(3000)],
                                 keys=[f"k{i}" for i in range(3000)])
    keys_dir = m.out_dir / _keys.KEYS_DIR
    stored = np.frombuffer((keys_dir / "data.ninja").read_bytes(), np.uint8)
    ends = np.asarray(StringsMmap(keys_dir).ends)
    probe = [f"k{i}" for i in range(0, 600, 7)]
    errors, done = [], threading.Event()

    def replace_tables():
        while not done.is_set():
            for count in (600, 3000):  # 2048 and 8192 slots, both indexing keys 0 to 599
                _keys._write_table(keys_dir / _keys.INDEX, stored, ends[:count], durable=False)

    def look_up():
        for _ in range(3000):
            try:
                slots = _keys._map_table(keys_dir / _keys.INDEX, 600)
                found = _keyindex.find_strings(slots, stored, ends, 600, probe, "t").tolist()
            except Exception as exc:  # reported below
                errors.append(exc)
                return
            if found != [int(key[1:]) for key in probe]:
                errors.append((len(slots), found[:3]))

    writer = threading.Thread(target=replace_tables)
    readers = [threading.Thread(target=look_up) for _ in range(2)]
    writer.start()
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    done.set()
    writer.join()
    assert errors == []


def test_a_key_table_linked_by_hand_is_not_written_through(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(3)] * 4, keys=["a", "b", "c", "d"])
    table = tmp_path / "m" / "keys" / "index.ninja"
    os.link(table, tmp_path / "twin.ninja")
    before = (tmp_path / "twin.ninja").read_bytes()
    m.append(np.arange(2), key="e")
    assert (tmp_path / "twin.ninja").read_bytes() == before
    assert RaggedMmap(tmp_path / "m").index_of(["e", "a"]).tolist() == [4, 0]


def test_a_keyed_numpy_map_whose_data_was_shortened_refuses_writes_writing_nothing(tmp_path):
    np_ninja.from_ndarray(tmp_path / "f", np.arange(12).reshape(6, 2), keys=list("abcdef"))
    os.link(tmp_path / "f" / "data.ninja", tmp_path / "other_name")
    with open(tmp_path / "other_name", "r+b") as other:  # shortened through its other name
        other.truncate(16)
    before = file_bytes(tmp_path / "f")
    with pytest.raises(ValueError, match="data.ninja: holds 16 bytes"):
        np_ninja.extend_dir(tmp_path / "f", np.zeros((1, 2), dtype=np.int64), keys=["g"])
    assert file_bytes(tmp_path / "f") == before
