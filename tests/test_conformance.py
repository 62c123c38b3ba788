"""What every kind of map does alike, run for each kind in the registry (``mmap_ninja._format.kinds``)
and for sharded maps and tables through one adapter per kind: build and reopen, extend and refresh, keys,
pickling, verify, and readers running while a writer extends the map. A kind added to the
registry without an adapter here fails ``test_every_kind_has_an_adapter``."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmap_ninja
from mmap_ninja import numpy as np_ninja
from mmap_ninja._format import kinds as _kinds
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.sharded import ShardedMmap, write_part
from mmap_ninja.string import StringsMmap
from mmap_ninja.table import TableMmap


class Adapter:
    """How a test builds, opens, extends and compares the samples of one kind of map."""

    name: str

    def sample(self, i: int):
        raise NotImplementedError

    def build(self, path: Path, samples, keys=None):
        raise NotImplementedError

    def open(self, path: Path):
        return mmap_ninja.open_existing(path)

    def extend(self, path: Path, samples, keys=None) -> None:
        raise NotImplementedError

    def index_of(self, path: Path, key: str) -> int:
        return self.open(path).index_of(key)

    def refresh(self, m):
        m.refresh()
        return m

    def same(self, a, b) -> bool:
        return np.shape(a) == np.shape(b) and np.array_equal(a, b)

    def batch(self, m, indices) -> list:
        """The samples ``m[indices]``, one per index."""
        return m[indices]


class Numpy(Adapter):
    name = "numpy"

    def sample(self, i):
        return np.full(3, i, dtype=np.int64)

    def build(self, path, samples, keys=None):
        return np_ninja.from_ndarray(path, np.stack(samples), keys=keys)

    def extend(self, path, samples, keys=None):
        np_ninja.extend_dir(path, np.stack(samples), keys=keys)

    def index_of(self, path, key):
        return np_ninja.index_of(path, key)

    def refresh(self, m):  # a np.memmap is the version it mapped: open it again
        return np_ninja.open_existing(m.filename.rsplit("/", 1)[0])


class Ragged(Adapter):
    name = "ragged"

    def sample(self, i):
        return np.arange(i % 5 + 1, dtype=np.int32).reshape((1, -1) if i % 3 == 0 else (-1,)) + i

    def build(self, path, samples, keys=None):
        return RaggedMmap.from_lists(path, samples, keys=keys)

    def extend(self, path, samples, keys=None):
        RaggedMmap(path).extend(samples, keys=keys)


class Strings(Adapter):
    name = "string"

    def sample(self, i):
        return f"text {i} ж" * (i % 3 + 1)

    def build(self, path, samples, keys=None):
        return StringsMmap.from_strings(path, samples, keys=keys)

    def extend(self, path, samples, keys=None):
        StringsMmap(path).extend(samples, keys=keys)

    def same(self, a, b):
        return a == b


class Sharded(Ragged):
    name = "sharded"

    def build(self, path, samples, keys=None):
        return ShardedMmap.from_generator(path, iter(samples), part_size=3, keys=keys)

    def extend(self, path, samples, keys=None):
        ShardedMmap.commit_parts(path, [write_part(path, samples, "ragged", keys=keys)])


class Table(Adapter):
    name = "table"

    def sample(self, i):
        return {"tokens": Ragged().sample(i), "label": i * 7, "text": Strings().sample(i)}

    def build(self, path, samples, keys=None):
        return TableMmap.from_generator(path, iter(samples), batch_size=2, keys=keys)

    def extend(self, path, samples, keys=None):
        TableMmap(path).extend(samples, keys=keys)

    def same(self, a, b):
        return list(a) == list(b) and all(
            a[name] == b[name] if isinstance(b[name], str) else Adapter.same(self, a[name], b[name]) for name in b)

    def batch(self, m, indices):  # a dict of one batch per column, as rows
        columns = m[indices]
        return [{name: columns[name][k] for name in columns} for k in range(len(indices))]


ADAPTERS = {adapter.name: adapter for adapter in (Numpy(), Ragged(), Strings(), Sharded(), Table())}
KINDS = sorted(ADAPTERS)


def test_every_kind_has_an_adapter():
    assert set(_kinds.KINDS) | {"sharded", "table"} == set(ADAPTERS)


def samples_of(adapter, start, count):
    return [adapter.sample(i) for i in range(start, start + count)]


def assert_holds(adapter, m, expected):
    assert len(m) == len(expected)
    for i, sample in enumerate(expected):
        assert adapter.same(m[i], sample), i


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counts=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data())
def test_built_then_extended_reopens_identical_and_batches_equal_samples(tmp_path_factory, kind, counts, data):
    adapter = ADAPTERS[kind]
    path = tmp_path_factory.mktemp(kind) / "m"
    expected = samples_of(adapter, 0, counts[0])
    adapter.build(path, expected)
    for count in counts[1:]:
        more = samples_of(adapter, len(expected), count)
        adapter.extend(path, more)
        expected += more
    m = adapter.open(path)
    assert_holds(adapter, m, expected)
    indices = data.draw(st.lists(st.integers(0, len(expected) - 1), max_size=10))
    batch = adapter.batch(m, indices) if indices else []
    assert all(adapter.same(got, expected[i]) for got, i in zip(batch, indices))
    assert mmap_ninja.verify(path, deep=True) == []


@pytest.mark.parametrize("kind", KINDS)
def test_an_open_map_keeps_its_version_until_refresh(tmp_path, kind):
    adapter = ADAPTERS[kind]
    adapter.build(tmp_path / "m", samples_of(adapter, 0, 4))
    m = adapter.open(tmp_path / "m")
    adapter.extend(tmp_path / "m", samples_of(adapter, 4, 3))
    assert len(m) == 4
    assert_holds(adapter, adapter.refresh(m), samples_of(adapter, 0, 7))


@pytest.mark.parametrize("kind", KINDS)
def test_keys_find_their_samples_and_a_repeated_key_changes_nothing(tmp_path, kind):
    from conftest import file_bytes

    adapter = ADAPTERS[kind]
    adapter.build(tmp_path / "m", samples_of(adapter, 0, 4), keys=[f"k{i}" for i in range(4)])
    adapter.extend(tmp_path / "m", samples_of(adapter, 4, 2), keys=["k4", "k5"])
    assert [adapter.index_of(tmp_path / "m", f"k{i}") for i in (5, 0, 3)] == [5, 0, 3]
    def committed():  # a part a worker wrote and no commit took is not the map's (gc removes it)
        stray = ShardedMmap(tmp_path / "m").uncommitted_parts() if kind == "sharded" else []
        return {name: data for name, data in file_bytes(tmp_path / "m").items()
                if not any(name.startswith(f"parts/{part}/") for part in stray)}

    before = committed()
    with pytest.raises(ValueError, match="'k2'"):
        adapter.extend(tmp_path / "m", samples_of(adapter, 6, 2), keys=["k6", "k2"])
    assert committed() == before


@pytest.mark.parametrize("kind", KINDS)
def test_a_map_pickles_as_its_path_and_reads_the_same(tmp_path, kind):
    adapter = ADAPTERS[kind]
    expected = samples_of(adapter, 0, 5)
    adapter.build(tmp_path / "m", expected)
    m = adapter.open(tmp_path / "m")
    assert_holds(adapter, pickle.loads(pickle.dumps(m)), expected)
    assert len(pickle.dumps(m)) < 4096 or kind == "numpy"  # a path and options (a np.memmap pickles its rows)


@pytest.mark.parametrize("kind", KINDS)
def test_verify_finds_a_shortened_data_file_and_names_it(tmp_path, kind):
    adapter = ADAPTERS[kind]
    adapter.build(tmp_path / "m", samples_of(adapter, 0, 6))
    data = sorted((tmp_path / "m").rglob("data.ninja"), key=lambda p: -p.stat().st_size)[0]
    data.write_bytes(data.read_bytes()[:8])
    report = mmap_ninja.verify(tmp_path / "m")
    assert report and any(str(data.parent) in line for line in report)


@pytest.mark.parametrize("kind", KINDS)
def test_readers_running_while_the_map_is_extended_see_whole_samples(tmp_path, kind):
    adapter = ADAPTERS[kind]
    adapter.build(tmp_path / "m", samples_of(adapter, 0, 3))
    stop, seen, errors = threading.Event(), [], []

    def read():
        while not stop.is_set():
            try:
                m = adapter.open(tmp_path / "m")
                n = len(m)
                i = n - 1
                if not adapter.same(m[i], adapter.sample(i)):
                    errors.append(f"sample {i} of {n} differs")
                seen.append(n)
            except Exception as exc:  # a reader must never fail while the map grows
                errors.append(repr(exc))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        for start in range(3, 30, 3):
            adapter.extend(tmp_path / "m", samples_of(adapter, start, 3))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert errors == [] and seen and max(seen) <= 30
    assert_holds(adapter, adapter.open(tmp_path / "m"), samples_of(adapter, 0, 30))
