"""Tables (mmap_ninja.table): built from columns, rows and indexables; read as rows, batches and
columns; extended, assigned, given and rid of columns, every write one commit of every column;
refusals that write nothing; writers killed mid-write; readers running while every kind of write
happens."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import file_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmap_ninja
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap
from mmap_ninja.table import TableMmap


def image(i: int) -> np.ndarray:
    """Row ``i``'s image: uint8, (h, w, 3), its size depending on ``i``."""
    h, w = 2 + i % 5, 3 + (i * 7) % 4
    return (np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3) + i).astype(np.uint8)


def row(i: int) -> dict:
    return {"image": image(i), "label": i * 3, "caption": f"caption {i} ж" * (i % 3 + 1)}


def assert_row(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        if isinstance(value, str):
            assert actual[name] == value
        else:
            np.testing.assert_array_equal(actual[name], value)
            assert np.shape(actual[name]) == np.shape(value)


def assert_table(t: TableMmap, expected: list) -> None:
    assert len(t) == len(expected)
    for i, want in enumerate(expected):
        assert_row(t[i], want)


@pytest.fixture
def table(tmp_path) -> TableMmap:
    return TableMmap.from_generator(tmp_path / "t", (row(i) for i in range(10)), batch_size=4)


# -- building and reading ---------------------------------------------------------------------------


def test_from_generator_infers_the_schema_and_reads_rows_batches_and_columns(table, tmp_path):
    assert table.columns == ["image", "label", "caption"]
    assert table.schema == {"image": "ragged", "label": "numpy", "caption": "string"}
    assert_table(table, [row(i) for i in range(10)])
    batch = table[[7, 2, 7]]
    assert [len(batch[name]) for name in table.columns] == [3, 3, 3]
    assert batch["label"].dtype == np.int64 and batch["label"].tolist() == [21, 6, 21]
    assert batch["caption"] == [row(7)["caption"], row(2)["caption"], row(7)["caption"]]
    np.testing.assert_array_equal(batch["image"][1], image(2))
    assert table.__getitems__([1, 0])["label"].tolist() == [3, 0]
    assert table[2:5]["label"].tolist() == [6, 9, 12]
    mask = np.zeros(10, bool)
    mask[[1, 8]] = True
    assert table[mask]["caption"] == [row(1)["caption"], row(8)["caption"]]
    assert isinstance(table["image"], RaggedMmap) and isinstance(table["caption"], StringsMmap)
    assert isinstance(table["label"], np.memmap) and table["label"].shape == (10,)
    # every column is a map of its own: mmap_ninja opens it alone
    assert mmap_ninja.open_existing(tmp_path / "t" / "columns" / "caption")[4] == row(4)["caption"]


def test_take_gives_each_columns_compiled_gather(table):
    taken = table.take([3, 1])
    assert taken["label"].tolist() == [9, 3]
    np.testing.assert_array_equal(taken["image"][0], image(3))
    assert taken["image"].values.dtype == np.uint8  # one buffer
    assert taken["caption"] == [row(3)["caption"], row(1)["caption"]]


def test_indices_out_of_range_raise_index_error(table):
    with pytest.raises(IndexError):
        table[10]
    with pytest.raises(IndexError):
        table[[0, 10]]
    assert table[-1]["label"] == 27


def test_from_columns_with_kinds_given_and_an_empty_table(tmp_path):
    t = TableMmap.from_columns(tmp_path / "t", {"tokens": [[1, 2], [3]], "score": np.array([0.5, 1.5], np.float32),
                                                "id": ["a", "b"]}, columns={"tokens": "ragged", "id": "strings"})
    assert t.schema == {"tokens": "ragged", "score": "numpy", "id": "string"}
    assert t[1]["tokens"].tolist() == [3] and t["score"].dtype == np.float32
    empty = TableMmap.from_columns(tmp_path / "e", {"x": [], "s": []}, columns={"x": "numpy", "s": "strings"})
    assert len(empty) == 0 and empty[[]] == {"x": [], "s": []}
    empty.extend([{"x": 4, "s": "four"}])
    assert empty[0] == {"x": 4, "s": "four"} and len(empty) == 1
    with pytest.raises(ValueError, match="no value to infer"):
        TableMmap.from_columns(tmp_path / "f", {"x": []})


def test_numpy_columns_keep_rows_of_a_fixed_shape(tmp_path):
    t = TableMmap.from_columns(tmp_path / "t", {"embedding": np.arange(12, dtype=np.float32).reshape(4, 3),
                                                "label": [1, 2, 3, 4]})
    assert t.schema["embedding"] == "numpy" and t[[2, 0]]["embedding"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"row 4, column 'embedding': expected shape \(3,\)"):
        t.extend([{"embedding": np.zeros(2, np.float32), "label": 5}])


def test_from_indexable_with_worker_processes_equals_the_serial_build(tmp_path):
    rows = [row(i) for i in range(23)]
    serial = TableMmap.from_indexable(tmp_path / "s", rows, batch_size=5)
    parallel = TableMmap.from_indexable(tmp_path / "p", rows, batch_size=5, n_jobs=2)
    assert_table(serial, rows)
    assert_table(parallel, rows)


def plus_1000(value) -> int:
    return int(value) + 1000


def test_keys_pickling_select_and_wrapper_fn(tmp_path):
    t = TableMmap.from_generator(tmp_path / "t", (row(i) for i in range(6)), keys=[f"k{i}" for i in range(6)],
                                 wrapper_fn={"label": plus_1000})
    assert t.index_of("k4") == 4 and t.keys() == [f"k{i}" for i in range(6)]
    assert t.by_key["k2"]["label"] == 1006 and "k9" not in t.by_key
    assert t[[1, 2]]["label"] == [1003, 1006]
    again = pickle.loads(pickle.dumps(t))
    assert again[5]["label"] == 1015 and again.out_dir == t.out_dir
    only = t.select(["caption", "label"])
    assert only.columns == ["caption", "label"] and list(only[0]) == ["caption", "label"]
    assert pickle.loads(pickle.dumps(only)).columns == ["caption", "label"]
    assert t[["label"]].columns == ["label"]
    with pytest.raises(KeyError, match="'nope' is not a column"):
        t.select(["nope"])
    with pytest.raises(TypeError, match="dict"):
        TableMmap(tmp_path / "t", wrapper_fn=lambda v: v)


def test_open_existing_verify_and_the_command_line_know_tables(table, tmp_path):
    opened = mmap_ninja.open_existing(tmp_path / "t", wrapper_fn={"caption": str.upper})
    assert isinstance(opened, TableMmap) and opened[1]["caption"] == row(1)["caption"].upper()
    assert mmap_ninja.verify(tmp_path / "t") == [] and mmap_ninja.verify(tmp_path / "t", deep=True) == []
    cli = [sys.executable, "-m", "mmap_ninja"]
    info = subprocess.run(cli + ["info", str(tmp_path / "t")], capture_output=True, text=True, check=True).stdout
    assert "table (3 columns)" in info and "column image:   ragged, uint8" in info and "numpy, int64" in info
    head = subprocess.run(cli + ["head", "-n", "2", str(tmp_path / "t")], capture_output=True, text=True,
                          check=True).stdout
    assert "label: 3" in head and "... 8 more" in head


# -- writing ----------------------------------------------------------------------------------------


def test_extend_append_and_extend_columns_commit_every_column(table):
    table.extend([row(10), row(11)])
    table.append(row(12))
    table.extend_columns({"image": [image(13)], "label": np.array([39]), "caption": [row(13)["caption"]]})
    assert_table(table, [row(i) for i in range(14)])
    assert_table(TableMmap(table.out_dir), [row(i) for i in range(14)])
    assert table.verify(deep=True) == []


@pytest.mark.parametrize("bad, message", [
    ({"image": image(0), "label": 1}, r"row 10: no field 'caption'"),
    ({**row(0), "extra": 1}, r"row 10: a field 'extra' that the table has no column for"),
    ({**row(0), "label": "one"}, r"row 10, column 'label': expected a number or an array, got str"),
    ({**row(0), "label": 1.5}, r"row 10, column 'label'"),
    ({**row(0), "caption": 7}, r"row 10, column 'caption': expected str, got int"),
    ({**row(0), "image": np.full((2, 2), 300)}, r"row 10, column 'image'"),
])
def test_a_refused_row_writes_nothing(table, bad, message):
    before = file_bytes(table.out_dir)
    with pytest.raises((TypeError, ValueError), match=message):
        table.extend([bad])
    assert file_bytes(table.out_dir) == before
    assert len(TableMmap(table.out_dir)) == 10


def test_a_refused_row_after_good_ones_names_its_position(table):
    before = file_bytes(table.out_dir)
    with pytest.raises(TypeError, match=r"row 12, column 'caption'"):
        table.extend([row(10), row(11), {**row(12), "caption": None}])
    assert file_bytes(table.out_dir) == before


def test_keys_are_needed_once_rows_have_them_and_a_repeated_key_writes_nothing(tmp_path):
    t = TableMmap.from_generator(tmp_path / "t", (row(i) for i in range(3)), keys=["a", "b", "c"])
    with pytest.raises(ValueError, match="keys"):
        t.extend([row(3)])
    before = file_bytes(t.out_dir)
    with pytest.raises(ValueError, match="'b'"):
        t.extend([row(3)], keys=["b"])
    assert file_bytes(t.out_dir) == before
    t.append(row(3), key="d")
    assert t.index_of("d") == 3 and t.by_key["d"]["label"] == 9


def test_assigning_rows_in_r_plus_replaces_every_column_at_once(table):
    with pytest.raises(io.UnsupportedOperation, match="read-only"):
        table[0] = row(0)
    t = TableMmap(table.out_dir, mode="r+")
    old = t[3]
    reader = TableMmap(table.out_dir)
    new = {"image": image(3)[::-1].copy(), "label": -1, "caption": row(3)["caption"].upper()}
    t[3] = new
    assert_row(t[3], new)
    assert_row(reader[3], old)  # an open table keeps its version until refresh
    reader.refresh()
    assert_row(reader[3], new)
    t[[0, 9]] = [{**row(0), "label": 100}, {**row(9), "label": 900}]
    assert t["label"][[0, 9]].tolist() == [100, 900]
    before = file_bytes(table.out_dir)
    with pytest.raises(TypeError, match="row 5, column 'caption'"):
        t[5] = {**row(5), "caption": b"bytes"}
    assert file_bytes(table.out_dir) == before
    assert t.verify(deep=True) == []


def test_add_and_drop_columns(table):
    t = TableMmap(table.out_dir)
    t.add_column("weight", np.linspace(0, 1, 10, dtype=np.float32))
    t.add_column("tags", [[i, i + 1] for i in range(10)])
    assert t.schema == {"image": "ragged", "label": "numpy", "caption": "string", "weight": "numpy",
                        "tags": "ragged"}
    assert t[4]["tags"].tolist() == [4, 5] and t["weight"].dtype == np.float32
    with pytest.raises(ValueError, match="9 values for the table's 10 rows"):
        t.add_column("short", list(range(9)))
    with pytest.raises(ValueError, match="already"):
        t.add_column("label", list(range(10)))
    t.drop_column("image")
    assert t.columns == ["label", "caption", "weight", "tags"]
    assert not (t.out_dir / "columns" / "image").exists()
    t.extend([{"label": 30, "caption": "x", "weight": 2.0, "tags": [1]}])
    assert len(TableMmap(t.out_dir)) == 11 and t.verify() == []
    with pytest.raises(KeyError):
        t.drop_column("image")
    with pytest.raises(ValueError, match="not a column name"):
        t.add_column("../escape", list(range(11)))


# -- damage and interrupted writes ---------------------------------------------------------------------


def test_a_column_behind_the_table_is_damage_named_by_verify_and_open(table):
    # the label column cut back to 8 rows behind the table's back
    np_ninja.from_ndarray(table.out_dir / "columns" / "label", np.arange(8))
    report = mmap_ninja.verify(table.out_dir)
    assert any("column 'label' holds 8 rows" in line for line in report)
    with pytest.raises(ValueError, match="column 'label' holds 8 rows"):
        TableMmap(table.out_dir)


def test_a_damaged_schema_is_refused_naming_the_file(table):
    schema = table.out_dir / "table.ninja"
    body = json.loads(schema.read_text())
    for damage in ({**body, "length": -1}, {**body, "columns": [{"name": "../x", "kind": "numpy"}]},
                   {**body, "columns": [{"name": "a", "kind": "pickle"}]}, [1, 2]):
        schema.write_text(json.dumps(damage))
        with pytest.raises(ValueError, match="table.ninja"):
            TableMmap(table.out_dir)
        assert any("table.ninja" in line for line in mmap_ninja.verify(table.out_dir))


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_table import row
    from mmap_ninja._format import kinds
    from mmap_ninja.table import TableMmap

    path, die_in = sys.argv[1], sys.argv[2]
    registered = kinds.KINDS[die_in]
    extend = registered.extender

    def extend_then_die(out_dir, samples):
        extend(out_dir, samples)
        os._exit(9)  # killed after this column took the rows, before the table's commit

    registered.extender = extend_then_die
    t = TableMmap(path)
    t.extend([row(len(t) + k) for k in range(3)])
""")


@pytest.mark.parametrize("die_in", ["ragged", "numpy", "string"])
def test_a_writer_killed_between_columns_leaves_the_table_at_its_committed_length(table, die_in):
    code = KILLED_WRITER.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", code, str(table.out_dir), die_in], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    t = TableMmap(table.out_dir)
    assert_table(t, [row(i) for i in range(10)])
    report = mmap_ninja.verify(table.out_dir)
    assert report == [] and any("rows past the table's 10" in note for note in report.notes)
    t.extend([row(10)])  # drops what the killed writer left, then appends
    assert_table(TableMmap(table.out_dir), [row(i) for i in range(11)])
    assert mmap_ninja.verify(table.out_dir, deep=True) == []
    for name in t.columns:  # and each column on its own holds exactly the table's rows
        assert len(mmap_ninja.open_existing(table.out_dir / "columns" / name)) == 11


WRITER_LOOP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_table import row
    from mmap_ninja.table import TableMmap

    t = TableMmap(sys.argv[1])
    while True:
        n = len(t)
        t.extend([row(n + k) for k in range(1 + n % 3)])
        print("ready", flush=True)
""")


def test_writers_killed_at_random_moments_leave_a_committed_prefix(table):
    code = WRITER_LOOP.format(tests=str(Path(__file__).parent))
    rng = np.random.default_rng(5)
    length = 10
    for _ in range(6):
        writer = subprocess.Popen([sys.executable, "-c", code, str(table.out_dir)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        time.sleep(rng.uniform(0, 0.1))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        writer.stderr.close()
        t = TableMmap(table.out_dir)
        assert len(t) > length
        length = len(t)
        assert_table(t, [row(i) for i in range(length)])
        assert mmap_ninja.verify(table.out_dir) == []
    t.extend([row(length)])
    assert mmap_ninja.verify(table.out_dir, deep=True) == []


# -- readers while every kind of write happens ----------------------------------------------------------


READER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from test_table import row
    from mmap_ninja.table import TableMmap

    seen = 0
    while True:
        t = TableMmap(sys.argv[1])
        n = len(t)
        batch = t[np.arange(n)]
        for i in (0, n - 1):
            if batch["caption"][i] != row(i)["caption"].upper() and batch["caption"][i] != row(i)["caption"]:
                raise SystemExit(f"row {{i}} of {{n}}: caption {{batch['caption'][i]!r}}")
            if batch["image"][i].shape != row(i)["image"].shape:
                raise SystemExit(f"row {{i}} of {{n}}: image of shape {{batch['image'][i].shape}}")
        if len(batch["label"]) != n or len(batch["image"]) != n:
            raise SystemExit(f"columns out of step at {{n}}")
        seen += 1
        if n >= 40:
            print(seen, flush=True)
            break
""")


def test_readers_in_threads_and_processes_see_whole_rows_while_every_write_happens(table):
    errors, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                t = TableMmap(table.out_dir)
                n = len(t)
                batch = t[np.arange(n)]
                assert {len(values) for values in batch.values()} == {n}
                assert batch["label"][n - 1] in ((n - 1) * 3, -(n - 1))
                assert batch["caption"][n - 1] in (row(n - 1)["caption"], row(n - 1)["caption"].upper())
            except Exception as exc:  # a reader must never fail while the table changes
                errors.append(repr(exc))

    code = READER.format(tests=str(Path(__file__).parent))
    process = subprocess.Popen([sys.executable, "-c", code, str(table.out_dir)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        t = TableMmap(table.out_dir, mode="r+")
        for start in range(10, 40, 3):
            t.extend([row(i) for i in range(start, start + 3)])
            t[start] = {**row(start), "label": -start, "caption": row(start)["caption"].upper()}
            t.add_column(f"extra{start}", list(range(len(t))))
            t.drop_column(f"extra{start}")
        t.extend([row(40), row(41)])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert errors == []
    assert len(TableMmap(table.out_dir)) == 42 and table.verify() == []


# -- properties ----------------------------------------------------------------------------------------


@st.composite
def tables(draw):
    """A schema of 1 to 4 columns of random kinds and a list of rows for it."""
    kinds = draw(st.lists(st.sampled_from(["numpy", "ragged", "string"]), min_size=1, max_size=4))
    names = [f"c{k}" for k in range(len(kinds))]
    count = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)

    def value(kind, i):
        if kind == "numpy":
            return int(rng.integers(-1000, 1000))
        if kind == "string":
            return "".join(rng.choice(list("abж漢 "), size=int(rng.integers(0, 6))))
        return rng.integers(0, 100, size=tuple(rng.integers(0, 4, size=int(rng.integers(1, 3))))).astype(np.int16)

    rows = [{name: value(kind, i) for name, kind in zip(names, kinds)} for i in range(count)]
    return dict(zip(names, kinds)), rows


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=tables(), splits=st.lists(st.integers(1, 5), min_size=1, max_size=3), picks=st.data())
def test_written_in_any_batches_reopens_identical_and_batches_equal_rows(tmp_path_factory, data, splits, picks):
    kinds, rows = data
    path = tmp_path_factory.mktemp("table") / "t"
    first = splits[0]
    t = TableMmap.from_generator(path, iter(rows[:first]), batch_size=2, columns=kinds)
    at = first
    for size in splits[1:]:
        t.extend(rows[at:at + size])
        at += size
    t.extend(rows[at:])
    reopened = TableMmap(path)
    assert_table(reopened, rows)
    indices = picks.draw(st.lists(st.integers(0, len(rows) - 1), max_size=20))
    batch = reopened[indices]
    for name, kind in kinds.items():
        values = batch[name]
        assert len(values) == len(indices)
        for k, i in enumerate(indices):
            if kind == "string":
                assert values[k] == rows[i][name]
            else:
                np.testing.assert_array_equal(values[k], rows[i][name])
    assert reopened.verify() == []


def test_concatenate_tables_column_by_column_with_their_keys(tmp_path):
    first = TableMmap.from_generator(tmp_path / "a", (row(i) for i in range(4)), keys=[f"k{i}" for i in range(4)])
    TableMmap.from_generator(tmp_path / "b", (row(i) for i in range(4, 9)), keys=[f"k{i}" for i in range(4, 9)])
    both = mmap_ninja.generic.concatenate(tmp_path / "ab", [tmp_path / "a", tmp_path / "b"], counts=[None, 3])
    assert isinstance(both, TableMmap)
    assert_table(both, [row(i) for i in range(7)])
    assert both.keys() == [f"k{i}" for i in range(7)] and both.verify(deep=True) == []
    TableMmap.from_generator(tmp_path / "c", (row(i) for i in range(2)), keys=["k0", "x"])
    with pytest.raises(ValueError, match="'k0'"):
        TableMmap.concatenate(tmp_path / "ac", [first.out_dir, tmp_path / "c"])
    TableMmap.from_columns(tmp_path / "d", {"label": [1]})
    with pytest.raises(ValueError, match="same columns"):
        TableMmap.concatenate(tmp_path / "ad", [first.out_dir, tmp_path / "d"])
    assert not (tmp_path / "ac").exists() and not (tmp_path / "ad").exists()


def test_what_an_add_column_cut_short_left_is_removed_by_the_next_write(table):
    columns = table.out_dir / "columns"
    np_ninja.from_ndarray(columns / "half_added", np.arange(10))  # written, never listed
    (columns / ".half_added.0123456789ab.building").mkdir()          # its build, cut short
    (columns / ".label.0123456789ab.building").mkdir()               # a listed column's build, cut short
    assert any("not a column of the table" in note for note in mmap_ninja.verify(table.out_dir).notes)
    table.extend([row(10)])
    assert sorted(os.listdir(columns)) == ["caption", "image", "label"]
    assert_table(TableMmap(table.out_dir), [row(i) for i in range(11)])


def test_take_writes_into_the_buffers_alloc_gives(table):
    made = []

    def alloc(shape, dtype):
        made.append((shape, np.dtype(dtype)))
        return np.empty(shape, dtype)

    taken = table.take([4, 2], alloc=alloc)
    assert sorted(made, key=str) == sorted([((2,), np.dtype(np.int64)),
                                            ((image(4).size + image(2).size,), np.dtype(np.uint8))], key=str)
    np.testing.assert_array_equal(taken["image"][0], image(4))
    assert taken["label"].tolist() == [12, 6] and taken["caption"] == [row(4)["caption"], row(2)["caption"]]


def test_names_that_differ_only_in_case_an_unknown_format_and_fortran_columns(tmp_path):
    with pytest.raises(ValueError, match="differ only in case"):
        TableMmap.from_columns(tmp_path / "t", {"Label": [1], "label": [2]})
    assert not (tmp_path / "t").exists()
    fortran = np.asfortranarray(np.arange(12.0).reshape(4, 3))
    t = TableMmap.from_columns(tmp_path / "f", {"x": fortran, "s": list("abcd")})
    t.extend([{"x": np.ones(3), "s": "e"}])  # appended in place: the column is kept in C order
    assert t["x"].flags.c_contiguous and t[4]["x"].tolist() == [1, 1, 1] and t[2]["x"].tolist() == [6, 7, 8]
    schema = t.out_dir / "table.ninja"
    schema.write_text(schema.read_text().replace('"format": 1', '"format": 2'))
    with pytest.raises(ValueError, match="format 2"):
        TableMmap(t.out_dir)
