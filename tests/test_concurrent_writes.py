"""Readers never see wrong data while a writer works.

For every way of writing a map, one writer process writes in a loop while two reader processes
read every sample of the map again and again, and check an invariant that shows any mixing of
versions (rows of two versions, a sample torn between two values, a map that shrinks or lies
empty). A reader may only get ``ChangedWhileOpening`` (which says to open the map again), and
only while a whole map is being replaced (a ``from_*`` over an existing map); any other
exception, a wrong value or a reader that dies fails the test. Every reader must also succeed a
minimum number of times while the writer writes, so that the test proves something.

Each reader reads for a short while (``READ_SECONDS``, and at least ``MIN_ATTEMPTS`` and at most
``MAX_ATTEMPTS`` times); the writer writes until the readers are done (or ``cap`` writes).
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import time
import traceback

import numpy as np
import pytest

import mmap_ninja
from mmap_ninja import durability
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

try:
    from mmap_ninja import ChangedWhileOpening
except ImportError:  # not exported at the top level yet
    from mmap_ninja._storage import ChangedWhileOpening

CTX = multiprocessing.get_context("fork")
READ_SECONDS = 1.5  # each reader reads for this long...
MIN_ATTEMPTS = 20  # ...but at least this many times...
MAX_ATTEMPTS = 5_000  # ...and at most this many
MIN_READS = 5  # successful reads per reader, made while the writer was writing
MAX_ERRORS = 3  # a reader stops after this many failed reads (their tracebacks are reported)
TIMEOUT = 120  # seconds a test waits for its processes before it gives up on them


# -- running a writer and readers at once ------------------------------------------------------

def _writer_main(setup, cap, stop, started, writer_done, results):
    """Call ``setup()`` for a ``write(i)`` function and call it for i = 0, 1, ... until ``stop``
    (or ``cap`` writes), without flushing commits to disk (they stay atomic, and come faster)."""
    report = {"iterations": 0, "error": None}
    try:
        with durability(False):
            write = setup()
            while not stop.is_set() and report["iterations"] < cap:
                write(report["iterations"])
                report["iterations"] += 1
                started.set()
    except BaseException:
        report["error"] = traceback.format_exc()
    finally:
        writer_done.set()
        started.set()
        results.put(("writer", report))


def _reader_main(name, setup, allow_changed, started, writer_done, results):
    """Call ``setup()`` for a ``read()`` function (which reads the whole map and checks it) and
    call it again and again, counting what happens."""
    report = {"ok": 0, "ok_while_writing": 0, "changed": 0, "errors": []}
    try:
        started.wait(TIMEOUT)
        read = setup()
        deadline = time.monotonic() + READ_SECONDS
        for attempt in range(MAX_ATTEMPTS):
            if attempt >= MIN_ATTEMPTS and time.monotonic() > deadline:
                break
            writing = not writer_done.is_set()
            try:
                read()
            except ChangedWhileOpening:
                if allow_changed:
                    report["changed"] += 1
                else:
                    report["errors"].append(traceback.format_exc())
            except BaseException:
                report["errors"].append(traceback.format_exc())
            else:
                report["ok"] += 1
                if writing and not writer_done.is_set():
                    report["ok_while_writing"] += 1
            if len(report["errors"]) >= MAX_ERRORS:
                break
    except BaseException:
        report["errors"].append(traceback.format_exc())
    results.put((name, report))


def run_concurrently(writer, readers, allow_changed=False, cap=100_000):
    """Run ``writer`` (a function returning ``write(i)``) in one process and each of ``readers``
    (``{name: function returning read()}``) in another, and check what they report."""
    results = CTX.Queue()
    stop, started, writer_done = CTX.Event(), CTX.Event(), CTX.Event()
    writer_process = CTX.Process(target=_writer_main, args=(writer, cap, stop, started, writer_done, results))
    reader_processes = {
        name: CTX.Process(target=_reader_main,
                          args=(name, setup, allow_changed, started, writer_done, results))
        for name, setup in readers.items()
    }
    processes = [writer_process, *reader_processes.values()]
    for process in processes:
        process.start()
    reports = {}
    try:
        for _ in range(TIMEOUT * 10):
            if all(name in reports for name in reader_processes):
                break
            try:
                name, report = results.get(timeout=0.1)
                reports[name] = report
            except queue_module.Empty:
                for name, process in reader_processes.items():
                    if name not in reports and process.exitcode is not None:
                        try:  # the report may still be in the pipe
                            name_, report = results.get(timeout=5)
                            reports[name_] = report
                        except queue_module.Empty:
                            raise AssertionError(f"reader {name} died (exit code {process.exitcode})") from None
        stop.set()
        while "writer" not in reports:
            name, report = results.get(timeout=TIMEOUT)
            reports[name] = report
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join()
    assert reports["writer"]["error"] is None, f"the writer failed:\n{reports['writer']['error']}"
    assert reports["writer"]["iterations"] > 0
    for name in reader_processes:
        assert name in reports, f"reader {name} did not report"
        report = reports[name]
        assert not report["errors"], (
            f"reader {name} ({report['ok']} good reads, {report['changed']} ChangedWhileOpening) failed "
            f"{len(report['errors'])} times; first failure:\n{report['errors'][0]}")
        assert report["ok_while_writing"] >= MIN_READS, (
            f"reader {name}: only {report['ok_while_writing']} good reads while the writer wrote "
            f"({report['ok']} in all, {report['changed']} ChangedWhileOpening, writer made "
            f"{reports['writer']['iterations']} writes)")
    return reports


def first_difference(got, expected) -> str:
    for i, (a, b) in enumerate(zip(got, expected)):
        if not np.array_equal(np.asarray(a), np.asarray(b)) or np.shape(a) != np.shape(b):
            return f"sample {i} is {np.asarray(a).tolist()!r}, expected {np.asarray(b).tolist()!r}"
    return f"{len(got)} samples, expected {len(expected)}"


# -- what each map holds -----------------------------------------------------------------------

def rows(start: int, stop: int) -> np.ndarray:
    """Rows ``start..stop-1`` of a growing numpy map: row i holds [i, i, i, i]."""
    return np.repeat(np.arange(start, stop, dtype=np.int64)[:, None], 4, axis=1)


def ragged_sample(i: int) -> np.ndarray:
    return np.full(i % 7 + 1, i, dtype=np.int64)


def string_sample(i: int) -> str:
    return f"s{i}-" + "ж" * (i % 3) + "x" * (i % 5)


def check_rows(arr, state) -> None:
    arr = np.array(arr)  # a copy: what the map held at one moment
    n = len(arr)
    assert arr.shape == (n, 4), arr.shape
    assert n >= state.get("n", 1), f"the map shrank from {state.get('n', 1)} to {n} rows"
    state["n"] = n
    expected = rows(0, n)
    if not np.array_equal(arr, expected):
        bad = int(np.flatnonzero((arr != expected).any(axis=1))[0])
        raise AssertionError(f"row {bad} of {n} is {arr[bad].tolist()}, expected {expected[bad].tolist()}")


def check_growing_ragged(m, state) -> None:
    n = len(m)
    assert n >= state.get("n", 1), f"the map shrank from {state.get('n', 1)} to {n} samples"
    state["n"] = n
    lengths = np.arange(n) % 7 + 1
    values = np.repeat(np.arange(n, dtype=np.int64), lengths)
    views = m[:]
    assert len(views) == n
    shapes = [np.shape(v) for v in views]
    if shapes != [(int(k),) for k in lengths] or not np.array_equal(np.concatenate(views), values):
        raise AssertionError(first_difference(views, [ragged_sample(i) for i in range(n)]))
    batch = m.take(np.arange(n))
    assert np.array_equal(batch.values, values), first_difference(batch.arrays(), views)
    assert np.array_equal(batch.offsets, np.concatenate([[0], np.cumsum(lengths)]))


def check_growing_strings(m, state) -> None:
    got = m[:]
    n = len(got)
    assert n >= state.get("n", 1), f"the map shrank from {state.get('n', 1)} to {n} strings"
    state["n"] = n
    expected = [string_sample(i) for i in range(n)]
    if got != expected:
        bad = next(i for i in range(n) if got[i] != expected[i])
        raise AssertionError(f"string {bad} of {n} is {got[bad]!r}, expected {expected[bad]!r}")
    raw = m.get_bytes(np.arange(n))
    assert raw == [s.encode() for s in expected]


def fresh(open_map, check):
    """A reader that opens the map anew for every read."""

    def setup():
        state = {}
        return lambda: check(open_map(), state)

    return setup


# -- 1, 2: numpy maps, extend_dir --------------------------------------------------------------

@pytest.mark.parametrize("order", ["C", "F"])
def test_numpy_extend_dir(tmp_path, order):
    # Catches: a reader opening a numpy map while extend_dir appends to it gets rows from two
    # versions or an error. In Fortran order each extend rewrites the data file; readers got rows
    # mixed from two versions ([0, 5547, 5539, 5531]) and exceptions.
    path = tmp_path / "rows"
    np_ninja.from_ndarray(path, np.asarray(rows(0, 2), order=order))
    assert (path / "order.ninja").read_text() == order

    def writer():
        n = [2]

        def write(i):
            k = i % 3 + 1
            np_ninja.extend_dir(path, rows(n[0], n[0] + k))
            n[0] += k

        return write

    run_concurrently(writer, {
        "np_ninja.open_existing": fresh(lambda: np_ninja.open_existing(path), check_rows),
        "mmap_ninja.open_existing": fresh(lambda: mmap_ninja.open_existing(path), check_rows),
    }, cap=20_000 if order == "C" else 4_000)


# -- 3: ragged maps, extend and append ---------------------------------------------------------

def test_ragged_extend_and_append(tmp_path):
    # Catches: a reader opening a ragged map while extend/append commits sees samples of the
    # wrong length or values (offsets of one version over data of another), a map that shrinks,
    # or an error.
    path = tmp_path / "ragged"
    RaggedMmap.from_lists(path, [ragged_sample(0)])

    def writer():
        m = RaggedMmap(path)

        def write(i):
            n = len(m)
            if i % 2:
                m.append(ragged_sample(n))
            else:
                m.extend([ragged_sample(j) for j in range(n, n + i % 5 + 1)])

        return write

    run_concurrently(writer, {
        "RaggedMmap": fresh(lambda: RaggedMmap(path), check_growing_ragged),
        "mmap_ninja.open_existing": fresh(lambda: mmap_ninja.open_existing(path), check_growing_ragged),
    }, cap=3_000)


# -- 4: a ragged map of 1-d samples receives its first 2-d sample ------------------------------

FLAT = 400  # 1-d samples of each map before the 2-d one


def flat_sample(i: int) -> np.ndarray:
    return np.full(i % 5 + 1, i, dtype=np.int64)


def nested_sample() -> np.ndarray:
    return np.full((2, 3), FLAT, dtype=np.int64)


def check_converting(m, state) -> None:
    n = len(m)
    assert n in (FLAT, FLAT + 1), f"{n} samples, expected {FLAT} or {FLAT + 1}"
    expected = [flat_sample(i) for i in range(FLAT)] + [nested_sample()][: n - FLAT]
    views = m[:]
    shapes = [np.shape(v) for v in views]
    if shapes != [e.shape for e in expected] or not all(np.array_equal(v, e) for v, e in zip(views, expected)):
        raise AssertionError(first_difference(views, expected))
    batch = m.take(np.arange(n))
    assert [tuple(s) for s in batch.shapes] == [e.shape for e in expected], first_difference(batch.arrays(), expected)
    assert np.array_equal(batch.values, np.concatenate([e.ravel() for e in expected]))


@pytest.mark.parametrize("where", ["a new map each time", "the same map rebuilt"])
def test_ragged_first_sample_of_another_rank(tmp_path, where):
    # Catches: while extend converts a ragged map of 1-d samples to n-d shapes (shapes/ is
    # rewritten in proportion to the map), a reader sees samples with wrong shapes or values, or
    # an error. "a new map each time" builds each map at a fresh path (no replacement, so no
    # ChangedWhileOpening is allowed); "the same map rebuilt" rebuilds one path with from_lists
    # every time, which also replaces the whole map.
    samples = [flat_sample(i) for i in range(FLAT)]
    current = CTX.Value("i", -1)
    same = where == "the same map rebuilt"

    def path_of(k: int):
        return tmp_path / "map" if same else tmp_path / f"map{k}"

    RaggedMmap.from_lists(path_of(0), samples)

    def writer():
        def write(i):
            path = path_of(i)
            if i:
                RaggedMmap.from_lists(path, samples)
            current.value = i
            RaggedMmap(path).extend([nested_sample()])

        return write

    def opening(opener):
        return lambda: opener(path_of(current.value))

    run_concurrently(writer, {
        "RaggedMmap": fresh(opening(RaggedMmap), check_converting),
        "mmap_ninja.open_existing": fresh(opening(mmap_ninja.open_existing), check_converting),
    }, allow_changed=same, cap=2_000 if same else 300)


# -- 5: strings maps, extend and append --------------------------------------------------------

def test_strings_extend_and_append(tmp_path):
    # Catches: a reader opening a strings map while extend/append commits sees wrong or cut
    # strings, a map that shrinks, or an error.
    path = tmp_path / "strings"
    StringsMmap.from_strings(path, [string_sample(0)])

    def writer():
        m = StringsMmap(path)

        def write(i):
            n = len(m)
            if i % 2:
                m.append(string_sample(n))
            else:
                m.extend([string_sample(j) for j in range(n, n + i % 5 + 1)])

        return write

    run_concurrently(writer, {
        "StringsMmap rb": fresh(lambda: StringsMmap(path, mode="rb"), check_growing_strings),
        "mmap_ninja.open_existing": fresh(lambda: mmap_ninja.open_existing(path), check_growing_strings),
    }, cap=3_000)


# -- 6: from_* over an existing map ------------------------------------------------------------

LENGTHS = {1: 300, 2: 200}  # samples of version 1 and of version 2
TAG = 100_000  # every value of version v is v * TAG + the sample's index


def version_samples(kind: str, v: int) -> list:
    n = LENGTHS[v]
    if kind == "strings":
        return [f"v{v}-{i}-" + "q" * (v * (i % 3)) for i in range(n)]
    if kind == "numpy":
        return [np.full(3 + v, v * TAG + i, dtype=np.int64) for i in range(n)]
    return [np.full(i % 4 + v, v * TAG + i, dtype=np.int64) for i in range(n)]


def check_one_version(kind: str):
    expected = {v: version_samples(kind, v) for v in LENGTHS}

    def check(m, state) -> None:
        got = m[:] if kind != "numpy" else np.array(m)
        assert len(got), "the map is empty"
        v = int(got[0].split("-")[0][1:]) if kind == "strings" else int(np.asarray(got[0]).ravel()[0]) // TAG
        assert v in expected, f"sample 0 is {got[0]!r}: of no version"
        want = expected[v]
        if kind == "strings":
            if got != want:
                bad = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), None)
                raise AssertionError(f"version {v}: {len(got)} strings (expected {len(want)}); "
                                     f"first wrong: {bad} = {got[bad] if bad is not None else None!r}")
        elif len(got) != len(want) or not all(np.array_equal(a, b) and np.shape(a) == b.shape
                                             for a, b in zip(got, want)):
            raise AssertionError(f"version {v}: " + first_difference(got, want))

    return check


BUILDERS = {
    "RaggedMmap.from_lists": ("ragged", lambda p, s: RaggedMmap.from_lists(p, s)),
    "RaggedMmap.from_generator": ("ragged", lambda p, s: RaggedMmap.from_generator(p, iter(s), batch_size=32)),
    "StringsMmap.from_strings": ("strings", lambda p, s: StringsMmap.from_strings(p, s)),
    "np_ninja.from_ndarray": ("numpy", lambda p, s: np_ninja.from_ndarray(p, np.stack(s))),
}

OPENERS = {
    "ragged": lambda p: RaggedMmap(p),
    "strings": lambda p: StringsMmap(p, mode="rb"),
    "numpy": lambda p: np_ninja.open_existing(p),
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_from_star_replacing_a_map(tmp_path, builder):
    # Catches: a from_* over an existing map removes the old map first and then writes the new
    # one, so a reader opening meanwhile sees an empty map, a missing map, a part of the new
    # version or a mix of both versions. A reader must see all of version 1 or all of version 2
    # (or get ChangedWhileOpening).
    kind, build = BUILDERS[builder]
    path = tmp_path / "map"
    build(path, version_samples(kind, 1))

    def writer():
        def write(i):
            build(path, version_samples(kind, 2 if i % 2 == 0 else 1))

        return write

    check = check_one_version(kind)
    run_concurrently(writer, {
        "kind's opener": fresh(lambda: OPENERS[kind](path), check),
        "mmap_ninja.open_existing": fresh(lambda: mmap_ninja.open_existing(path), check),
    }, allow_changed=True, cap=5_000)


# -- 7: replacing samples in place -------------------------------------------------------------

BIG = 8192  # int64 values (64 KiB) per ragged sample
BIG_STRING = 1 << 16  # characters (64 KiB) per string
N_BIG = 16


def check_uniform_ragged(samples) -> None:
    """``samples``: the 64 KiB samples read at one moment (copied at once, then checked)."""
    values = np.stack(samples)
    assert values.shape == (N_BIG, BIG), values.shape
    torn = np.flatnonzero((values != values[:, :1]).any(axis=1))
    assert not torn.size, f"sample {torn[0]} holds the values {np.unique(values[torn[0]]).tolist()}"
    assert np.isin(values[:, 0], (1, 2)).all(), f"samples start with {values[:, 0].tolist()}"


STRING_VALUES = ("a" * BIG_STRING, "b" * BIG_STRING)


def check_uniform_strings(strings) -> None:
    assert len(strings) == N_BIG
    for i, s in enumerate(strings):
        if isinstance(s, bytes):
            s = s.decode()
        assert s in STRING_VALUES, f"string {i} holds {sorted(set(s))} ({len(s)} characters)"


def ragged_setitem_writer(path):
    def setup():
        m = RaggedMmap(path, mode="r+")
        ones, twos = [np.full(BIG, 1, np.int64)] * N_BIG, [np.full(BIG, 2, np.int64)] * N_BIG

        def write(i):
            m[:] = twos if i % 2 == 0 else ones

        return write

    return setup


def strings_setitem_writer(path):
    def setup():
        m = StringsMmap(path)
        a, b = ["a" * BIG_STRING] * N_BIG, ["b" * BIG_STRING] * N_BIG

        def write(i):
            m[:] = b if i % 2 == 0 else a

        return write

    return setup


def kept_open(open_map, read):
    """A reader that opens the map once and reads it again and again."""

    def setup():
        m = open_map()
        return lambda: read(m)

    return setup


def test_ragged_setitem_reopening_readers(tmp_path):
    # Catches: m[:] = values on a RaggedMmap (mode "r+") overwrites samples in place while
    # readers map them, so a reader opening the map meanwhile copies a sample that is half 1s
    # and half 2s.
    path = tmp_path / "ragged"
    RaggedMmap.from_lists(path, [np.full(BIG, 1, np.int64)] * N_BIG)
    run_concurrently(ragged_setitem_writer(path), {
        "RaggedMmap": fresh(lambda: RaggedMmap(path),
                            lambda m, state: check_uniform_ragged([np.array(v) for v in m[:]])),
        "mmap_ninja.open_existing": fresh(lambda: mmap_ninja.open_existing(path),
                                          lambda m, state: check_uniform_ragged(m.take(np.arange(N_BIG)).arrays())),
    }, cap=5_000)


def test_ragged_setitem_readers_that_keep_the_map_open(tmp_path):
    # Catches: m[:] = values on a RaggedMmap (mode "r+") overwrites samples in place, so a
    # reader that opened the map before reads samples that are half 1s and half 2s.
    path = tmp_path / "ragged"
    RaggedMmap.from_lists(path, [np.full(BIG, 1, np.int64)] * N_BIG)
    run_concurrently(ragged_setitem_writer(path), {
        "views": kept_open(lambda: RaggedMmap(path), lambda m: check_uniform_ragged([np.array(v) for v in m[:]])),
        "take": kept_open(lambda: mmap_ninja.open_existing(path),
                          lambda m: check_uniform_ragged(m.take(np.arange(N_BIG)).arrays())),
    }, cap=5_000)


def test_strings_setitem_reopening_readers(tmp_path):
    # Catches: m[:] = strings on a StringsMmap overwrites the bytes in place while readers map
    # them, so a reader opening the map meanwhile decodes a string of a's and b's.
    path = tmp_path / "strings"
    StringsMmap.from_strings(path, ["a" * BIG_STRING] * N_BIG)
    run_concurrently(strings_setitem_writer(path), {
        "StringsMmap rb": fresh(lambda: StringsMmap(path, mode="rb"), lambda m, state: check_uniform_strings(m[:])),
        "mmap_ninja.open_existing": fresh(
            lambda: mmap_ninja.open_existing(path),
            lambda m, state: check_uniform_strings(m.get_bytes(np.arange(N_BIG)))),
    }, cap=5_000)


def test_strings_setitem_readers_that_keep_the_map_open(tmp_path):
    # Catches: m[:] = strings on a StringsMmap overwrites the bytes in place, so a reader that
    # opened the map before decodes strings of a's and b's.
    path = tmp_path / "strings"
    StringsMmap.from_strings(path, ["a" * BIG_STRING] * N_BIG)
    run_concurrently(strings_setitem_writer(path), {
        "strings": kept_open(lambda: StringsMmap(path, mode="rb"), lambda m: check_uniform_strings(m[:])),
        "bytes": kept_open(lambda: mmap_ninja.open_existing(path),
                           lambda m: check_uniform_strings(m.get_bytes(np.arange(N_BIG)))),
    }, cap=5_000)
