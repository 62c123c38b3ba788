"""Tests of the mmap-ninja command (mmap_ninja.cli)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from mmap_ninja import numpy as np_ninja
from mmap_ninja.benchmark import generate_images, generate_texts
from mmap_ninja.cli import main
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap


def run(capsys, *args):
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_of_every_kind(tmp_path, capsys):
    RaggedMmap.from_lists(tmp_path / "r", [np.arange(3, dtype=np.int16), np.arange(5, dtype=np.int16)])
    RaggedMmap.from_lists(tmp_path / "n", [np.zeros((2, 3)), np.zeros((4, 3)), 1.5])
    StringsMmap.from_strings(tmp_path / "s", ["ab", "Привет"], zstd_level=3)
    np_ninja.from_ndarray(tmp_path / "a", np.asfortranarray(np.zeros((4, 2), np.float32)))
    code, out, _ = run(capsys, "info", tmp_path / "r")
    assert code == 0 and "ragged (1-d samples)" in out and "samples:  2" in out and "int16" in out
    assert "min 3, max 5, mean 4.0 per sample" in out and "on disk:" in out
    _, out, _ = run(capsys, "info", tmp_path / "n")
    assert "samples of several shapes" in out and "1 scalar; 2 of (2-4, 3)" in out
    _, out, _ = run(capsys, "info", tmp_path / "s")
    assert "strings" in out and "zstd level 3" in out
    _, out, _ = run(capsys, "info", tmp_path / "a")
    assert "numpy (Fortran order)" in out and "(4, 2)" in out


def test_verify_exit_codes(tmp_path, capsys):
    RaggedMmap.from_lists(tmp_path / "r", [np.arange(3), np.arange(5)])
    code, out, _ = run(capsys, "verify", tmp_path / "r")
    assert code == 0 and out.strip() == f"{tmp_path / 'r'}: sound (structure and metadata checked)"
    code, out, _ = run(capsys, "verify", "--deep", tmp_path / "r")
    assert code == 0 and out.strip() == f"{tmp_path / 'r'}: sound (every byte checked against its checksum)"
    data = tmp_path / "r" / "data.ninja"
    data.write_bytes(data.read_bytes()[:-1] + b"\x7f")  # a damaged byte: only --deep sees it
    assert run(capsys, "verify", tmp_path / "r")[0] == 0
    code, out, _ = run(capsys, "verify", "--deep", tmp_path / "r")
    assert code == 1 and f"{data}: bytes [0, 64) do not match their checksum" in out
    np.array([0, 99], dtype=np.int64).tofile(tmp_path / "r" / "ends" / "data.ninja")
    code, out, _ = run(capsys, "verify", tmp_path / "r")
    assert code == 1 and len(out.strip().splitlines()) >= 2 and "sample 1" in out
    code, _, err = run(capsys, "verify", tmp_path / "missing")
    assert code == 2 and err.strip() == f"mmap-ninja verify: error: no map at {tmp_path / 'missing'}"


def test_head(tmp_path, capsys):
    StringsMmap.from_strings(tmp_path / "s", [f"line {i}" for i in range(8)])
    code, out, _ = run(capsys, "head", tmp_path / "s", "-n", "2")
    assert code == 0 and out.splitlines() == ["[0] 'line 0'", "[1] 'line 1'", "... 6 more"]
    RaggedMmap.from_lists(tmp_path / "r", [np.arange(4).reshape(2, 2), 7, np.arange(3)])
    _, out, _ = run(capsys, "head", tmp_path / "r")
    assert out.splitlines() == ["[0] int64 (2, 2) min 0 max 3: 0 1 2 3", "[1] 7", "[2] int64 (3,): [0 1 2]"]


def test_head_prints_one_line_per_sample(tmp_path, capsys):
    image = np.zeros((480, 640, 3), np.uint8)
    image[0, 0] = [12, 40, 33]
    image[-1, -1, -1] = 255
    RaggedMmap.from_lists(tmp_path / "images", [image, image[:2, :2]])
    code, out, _ = run(capsys, "head", tmp_path / "images")
    assert code == 0 and out.splitlines() == ["[0] uint8 (480, 640, 3) min 0 max 255: 12 40 33 0 0 0 0 0 ...",
                                              "[1] uint8 (2, 2, 3) min 0 max 40: 12 40 33 0 0 0 0 0 ..."]
    RaggedMmap.from_lists(tmp_path / "floats", [np.arange(1000, dtype=np.float32) / 4, [1.5, -2.0], 3.5, []])
    _, out, _ = run(capsys, "head", tmp_path / "floats")
    assert out.splitlines() == ["[0] float32 (1000,) min 0 max 249.8: 0 0.25 0.5 0.75 1 1.25 1.5 1.75 ...",
                                "[1] float32 (2,): [ 1.5 -2. ]", "[2] 3.5", "[3] float32 (0,): []"]
    RaggedMmap.from_lists(tmp_path / "ints", [np.arange(10), np.arange(11), np.ones((0, 4))])
    _, out, _ = run(capsys, "head", tmp_path / "ints")
    assert out.splitlines() == ["[0] int64 (10,): [0 1 2 3 4 5 6 7 8 9]",
                                "[1] int64 (11,) min 0 max 10: 0 1 2 3 4 5 6 7 ...", "[2] int64 (0, 4): empty"]
    StringsMmap.from_strings(tmp_path / "s", ["abc" * 1707, "line\nbreak"])
    _, out, _ = run(capsys, "head", tmp_path / "s")
    assert out.splitlines() == ["[0] '" + ("abc" * 67)[:200] + "…' (5,121 chars)", r"[1] 'line\nbreak'"]
    rows = np.arange(5 * 64, dtype=np.int32).reshape(5, 64)
    np_ninja.from_ndarray(tmp_path / "wide", rows)
    np_ninja.from_ndarray(tmp_path / "narrow", rows[:, :3].copy())
    _, out, _ = run(capsys, "head", tmp_path / "wide", "-n", "2")
    assert out.splitlines() == ["[0] int32 (64,) min 0 max 63: 0 1 2 3 4 5 6 7 ...",
                                "[1] int32 (64,) min 64 max 127: 64 65 66 67 68 69 70 71 ...", "... 3 more"]
    _, out, _ = run(capsys, "head", tmp_path / "narrow", "-n", "1")
    assert out.splitlines() == ["[0] int32 (3,): [0 1 2]", "... 4 more"]


def test_convert_images_texts_npy_and_jsonl(tmp_path, capsys):
    generate_images(tmp_path / "images", 4)
    generate_texts(tmp_path / "texts", 6)
    (tmp_path / "npy").mkdir()
    for i in range(3):
        np.save(tmp_path / "npy" / f"{i}.npy", np.full((i + 1, 2), i))
    with open(tmp_path / "d.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"text": f"t{i}", "ids": list(range(i))}) + "\n")
    code, out, _ = run(capsys, "convert", tmp_path / "images", tmp_path / "im", "--workers", "2", "--quiet")
    assert code == 0 and "4 n-d samples of uint8" in out
    from PIL import Image

    first = sorted((tmp_path / "images").iterdir())[0]
    np.testing.assert_array_equal(RaggedMmap(tmp_path / "im")[0], np.asarray(Image.open(first)))
    code, _, err = run(capsys, "convert", tmp_path / "texts", tmp_path / "tx", "--zstd", "3")
    assert code == 0 and "Writing tx" in err and "6/6" in err  # a progress bar with a total
    texts = StringsMmap(tmp_path / "tx")
    assert len(texts) == 6 and texts[0] == sorted((tmp_path / "texts").iterdir())[0].read_text()
    run(capsys, "convert", tmp_path / "npy", tmp_path / "np", "--quiet")
    assert [s.tolist() for s in RaggedMmap(tmp_path / "np")] == [[[0, 0]], [[1, 1], [1, 1]], [[2, 2]] * 3]
    run(capsys, "convert", tmp_path / "d.jsonl", tmp_path / "jt", "--field", "text", "--quiet")
    assert StringsMmap(tmp_path / "jt")[:] == [f"t{i}" for i in range(5)]
    run(capsys, "convert", tmp_path / "d.jsonl", tmp_path / "ji", "--field", "ids", "--quiet")
    ids = RaggedMmap(tmp_path / "ji")
    assert ids.dtype == np.int64 and [s.tolist() for s in ids] == [list(range(i)) for i in range(5)]


@pytest.mark.parametrize("args, message", [
    (["convert", "{tmp}/d.jsonl", "{tmp}/x", "--key-field", "id"], "d.jsonl:1: no field 'id' (--key-field)"),
    (["convert", "{tmp}/d.jsonl", "{tmp}/x", "--field", "text", "--key-field", "text"], "leave out --field"),
    (["convert", "{tmp}/d.jsonl", "{tmp}/x", "--field", "nope"], "d.jsonl:1: no field 'nope'"),
    (["convert", "{tmp}/empty", "{tmp}/x"], "holds no image, .txt or .npy files"),
    (["convert", "{tmp}/none", "{tmp}/x"], "no such file or folder"),
    (["info", "{tmp}/empty"], "is not a mmap_ninja map"),
    (["head", "{tmp}/none"], "no map at"),
    (["convert", "{tmp}/empty", "{tmp}/x", "--kind", "jsonl"], "--kind jsonl takes a .jsonl file, not a folder"),
    (["convert", "{tmp}/d.jsonl", "{tmp}/x", "--kind", "texts"], "convert takes a folder, or a .jsonl file"),
])
def test_input_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    code, _, err = run(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_usage_errors_debug_and_module_entry_point(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info"])
    assert exit_info.value.code == 2
    assert main(["--debug", "head", str(tmp_path / "none")]) == 2
    assert "Traceback" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["head", str(tmp_path), "-n", "-1"])
    assert "expected a number of at least 1" in capsys.readouterr().err
    (tmp_path / "npy").mkdir()
    (tmp_path / "npy" / "broken.npy").write_bytes(b"")
    code, _, err = run(capsys, "convert", tmp_path / "npy", tmp_path / "out", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "broken.npy: cannot be read" in err
    proc = subprocess.run([sys.executable, "-m", "mmap_ninja", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("mmap_ninja ")


def test_bench_prints_the_comparison(tmp_path, capsys):
    code, out, _ = run(capsys, "bench", "images", "--count", "5", "--passes", "1", "--quiet", "--workdir", tmp_path)
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["in_memory", "mmap_ninja", "read_from_disk"]
    assert "5 images: one pass over the map is" in out
    generate_texts(tmp_path / "posts", 20)
    code, out, _ = run(capsys, "bench", "texts", "--source", tmp_path / "posts", "--passes", "1", "--quiet")
    assert code == 0 and "20 texts: one pass over the map is" in out
    assert len(list((tmp_path / "posts").iterdir())) == 20  # a given source is left alone


# -- convert: an existing map at OUT, --force and --append ------------------------------------

def snapshot(folder):
    """Every file under ``folder`` and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_texts(folder, names):
    """One .txt file per relative path in ``names``, holding its own path."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"text of {name}")


def test_convert_refuses_to_replace_a_map_unless_forced(tmp_path, capsys):
    write_texts(tmp_path / "src", ["a.txt", "b.txt"])
    StringsMmap.from_strings(tmp_path / "out", ["old", "map", "here"])
    RaggedMmap.from_lists(tmp_path / "ragged", [np.arange(3)])
    before = snapshot(tmp_path)
    for out in ("out", "ragged"):
        code, stdout, err = run(capsys, "convert", tmp_path / "src", tmp_path / out, "--quiet")
        kind = "strings" if out == "out" else "ragged"
        assert code == 2 and stdout == "" and err == (f"mmap-ninja convert: error: {tmp_path / out} already holds "
                                                      f"a {kind} map: --force replaces it, --append extends it\n")
    assert snapshot(tmp_path) == before  # byte for byte
    code, _, _ = run(capsys, "convert", tmp_path / "src", tmp_path / "out", "--quiet", "--force")
    assert code == 0 and StringsMmap(tmp_path / "out")[:] == ["text of a.txt", "text of b.txt"]
    code, _, _ = run(capsys, "convert", tmp_path / "src", tmp_path / "ragged", "--quiet", "--force")
    assert code == 0 and StringsMmap(tmp_path / "ragged")[:] == ["text of a.txt", "text of b.txt"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("not a map")
    for out in ("empty", "other"):  # a folder that holds no map is fine to write into
        code, _, _ = run(capsys, "convert", tmp_path / "src", tmp_path / out, "--quiet")
        assert code == 0 and len(StringsMmap(tmp_path / out)) == 2
    assert (tmp_path / "other" / "notes.md").read_text() == "not a map"


def test_force_and_append_together_are_a_usage_error(tmp_path, capsys):
    write_texts(tmp_path / "src", ["a.txt"])
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(tmp_path / "src"), str(tmp_path / "out"), "--force", "--append"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_append_extends_the_map_and_its_keys(tmp_path, capsys):
    write_texts(tmp_path / "one", ["doc_2.txt", "doc_1.txt"])
    write_texts(tmp_path / "two", ["z/doc_10.txt", "doc_3.txt"])
    run(capsys, "convert", tmp_path / "one", tmp_path / "out", "--quiet")
    code, out, _ = run(capsys, "convert", tmp_path / "two", tmp_path / "out", "--append", "--batch-size", "1",
                       "--quiet")
    assert code == 0 and out.startswith("appended 2 samples: StringsMmap(")
    order = ["doc_1.txt", "doc_2.txt", "doc_3.txt", "z/doc_10.txt"]
    strings = StringsMmap(tmp_path / "out")
    assert strings[:] == [f"text of {name}" for name in order]
    assert strings.keys() == order and strings.by_key["z/doc_10.txt"] == "text of z/doc_10.txt"
    code, _, _ = run(capsys, "convert", tmp_path / "two", tmp_path / "new", "--append", "--quiet")
    assert code == 0 and StringsMmap(tmp_path / "new").keys() == ["doc_3.txt", "z/doc_10.txt"]  # no map yet
    # the same files again: their keys are taken, and nothing is appended
    before = snapshot(tmp_path / "out")
    code, _, err = run(capsys, "convert", tmp_path / "two", tmp_path / "out", "--append", "--quiet")
    assert code == 2 and "the key 'doc_3.txt' of sample 4 is already the key of sample 2" in err
    assert snapshot(tmp_path / "out") == before
    # a .jsonl source has no paths to key its samples by
    (tmp_path / "d.jsonl").write_text('{"text": "from json"}\n')
    code, _, err = run(capsys, "convert", tmp_path / "d.jsonl", tmp_path / "out", "--field", "text", "--append")
    assert code == 2 and err == (f"mmap-ninja convert: error: the samples of {tmp_path / 'out'} have keys (their "
                                 f"files' paths), and jsonl have none to give\n")
    assert snapshot(tmp_path / "out") == before

    # a map built without keys gets new samples without keys, and says so
    RaggedMmap.from_lists(tmp_path / "arrays", [np.arange(2), np.arange(3)])
    (tmp_path / "npy" / "b").mkdir(parents=True)
    for name, value in [("b/2.npy", [7, 7]), ("b/10.npy", [8]), ("a.npy", [])]:
        np.save(tmp_path / "npy" / name, np.array(value, dtype=np.int64))
    code, _, err = run(capsys, "convert", tmp_path / "npy", tmp_path / "arrays", "--append", "--workers", "2",
                       "--quiet")
    assert code == 0 and "have no keys, so the new ones get none" in err
    arrays = RaggedMmap(tmp_path / "arrays")
    assert [a.tolist() for a in arrays] == [[0, 1], [0, 1, 2], [], [7, 7], [8]] and not arrays.keyed
    # keyed, with worker processes
    code, _, _ = run(capsys, "convert", tmp_path / "npy", tmp_path / "keyed", "--workers", "2", "--batch-size", "1",
                     "--quiet")
    keyed = RaggedMmap(tmp_path / "keyed")
    assert code == 0 and keyed.keys() == ["a.npy", "b/2.npy", "b/10.npy"]
    assert keyed.by_key["b/2.npy"].tolist() == [7, 7] and keyed.verify() == []


def test_convert_append_refuses_a_map_of_another_kind(tmp_path, capsys):
    write_texts(tmp_path / "texts", ["a.txt"])
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "a.npy", np.arange(3))
    run(capsys, "convert", tmp_path / "texts", tmp_path / "strings", "--quiet")
    RaggedMmap.from_lists(tmp_path / "ragged", [np.arange(3)])
    np_ninja.from_ndarray(tmp_path / "numpy", np.zeros((2, 3)))
    before = snapshot(tmp_path)
    for source, out, message in [
        ("npy", "strings", "it holds a strings map, and npy make a ragged map"),
        ("texts", "ragged", "it holds a ragged map, and texts make a strings map"),
        ("npy", "numpy", "it holds a numpy map, and npy make a ragged map"),
    ]:
        code, _, err = run(capsys, "convert", tmp_path / source, tmp_path / out, "--append", "--quiet")
        assert code == 2 and err == f"mmap-ninja convert: error: cannot append to {tmp_path / out}: {message}\n"
    code, _, err = run(capsys, "convert", tmp_path / "texts", tmp_path / "strings", "--append", "--zstd", "3")
    assert code == 2 and err == (f"mmap-ninja convert: error: --zstd sets the compression of a new map; "
                                 f"{tmp_path / 'strings'} keeps its own when appended to\n")
    assert snapshot(tmp_path) == before


def test_paths_kept_by_an_earlier_version_are_shown_and_extended(tmp_path, capsys):
    # earlier versions of convert kept the paths in a strings map beside the samples (out/paths)
    StringsMmap.from_strings(tmp_path / "out", ["text of a.txt", "text of b.txt"])
    StringsMmap.from_strings(tmp_path / "out" / "paths", ["a.txt", "b.txt"])
    _, out, _ = run(capsys, "head", tmp_path / "out")
    assert out.splitlines() == ["[0] a.txt: 'text of a.txt'", "[1] b.txt: 'text of b.txt'"]
    write_texts(tmp_path / "src", ["c.txt"])
    code, _, _ = run(capsys, "convert", tmp_path / "src", tmp_path / "out", "--append", "--quiet")
    assert code == 0 and StringsMmap(tmp_path / "out" / "paths")[:] == ["a.txt", "b.txt", "c.txt"]
    StringsMmap(tmp_path / "out").extend(["added without a path"])
    _, out, _ = run(capsys, "info", tmp_path / "out")
    assert "3 of 4 samples have one" in out and "out of step: it holds 3 entries" in out
    _, out, _ = run(capsys, "head", tmp_path / "out", "-n", "1")
    assert out.splitlines() == ["[0] 'text of a.txt'", "... 3 more"]
    before = snapshot(tmp_path / "out")
    code, _, err = run(capsys, "convert", tmp_path / "src", tmp_path / "out", "--append", "--quiet")
    assert code == 2 and err == (f"mmap-ninja convert: error: {tmp_path / 'out' / 'paths'} holds 3 paths for 4 "
                                 f"samples: remove it to append without paths, or rebuild the map with --force\n")
    assert snapshot(tmp_path / "out") == before
    # rebuilt, the samples are keyed by their paths, and the old paths go
    code, _, _ = run(capsys, "convert", tmp_path / "src", tmp_path / "out", "--force", "--quiet")
    assert code == 0 and StringsMmap(tmp_path / "out").keys() == ["c.txt"]
    assert not (tmp_path / "out" / "paths").exists()
    # a folder of the user's named paths is left alone
    (tmp_path / "new" / "paths").mkdir(parents=True)
    (tmp_path / "new" / "paths" / "mine.txt").write_text("keep")
    code, _, _ = run(capsys, "convert", tmp_path / "src", tmp_path / "new", "--quiet")
    assert code == 0 and (tmp_path / "new" / "paths" / "mine.txt").read_text() == "keep"


def test_convert_over_a_map_replaces_its_keys(tmp_path, capsys):
    write_texts(tmp_path / "src", ["a.txt", "b.txt", "c.txt"])
    run(capsys, "convert", tmp_path / "src", tmp_path / "out", "--quiet")
    write_texts(tmp_path / "fewer", ["z.txt"])
    run(capsys, "convert", tmp_path / "fewer", tmp_path / "out", "--quiet", "--force")
    assert StringsMmap(tmp_path / "out").keys() == ["z.txt"]
    (tmp_path / "d.jsonl").write_text('{"t": "x"}\n{"t": "y"}\n')
    run(capsys, "convert", tmp_path / "d.jsonl", tmp_path / "out", "--field", "t", "--quiet", "--force")
    strings = StringsMmap(tmp_path / "out")
    assert strings[:] == ["x", "y"] and not strings.keyed and not (tmp_path / "out" / "keys").exists()
    _, out, _ = run(capsys, "info", tmp_path / "out")
    assert re.search(r"^keys: +none$", out, re.M)
    _, out, _ = run(capsys, "head", tmp_path / "out")
    assert out.splitlines() == ["[0] 'x'", "[1] 'y'"]


# -- convert: folder trees -------------------------------------------------------------------------

def test_natural_key():
    from mmap_ninja.cli import natural_key

    names = ["doc_10", "doc_2", "Doc_3", "doc_1", "b/x", "a/x", "a10/x", "a9/x", "doc_02", "DOC_02", "a/B", "a/a"]
    assert sorted(names, key=natural_key) == ["a/a", "a/B", "a/x", "a9/x", "a10/x", "b/x", "doc_1",
                                              "DOC_02", "doc_02", "doc_2", "Doc_3", "doc_10"]


def test_convert_walks_the_tree_in_natural_order_and_says_what_it_skipped(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "train"
    names = ["n02/img_10.png", "n02/img_2.JPEG", "n01/img_1.png", "n10/deep/er/img_1.png", "img_3.png"]
    for value, name in enumerate(names):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((2, 3, 3), value, np.uint8)).save(src / name, format="PNG")
    (src / "labels.csv").write_text("x")
    (src / "n01" / "meta.json").write_text("{}")
    (src / "README.txt").write_text("a text, not an image")
    (src / ".DS_Store").write_text("x")
    (src / ".cache").mkdir()
    (src / ".cache" / "img_0.png").write_bytes((src / "img_3.png").read_bytes())
    code, out, err = run(capsys, "convert", src, tmp_path / "out", "--quiet")
    assert code == 0 and err == ("mmap-ninja convert: skipped 4 files: 1 of another kind (.txt), 2 with other suffixes "
                                 "(.csv, .json), 1 hidden; 1 hidden folder\n")
    assert out == f"wrote RaggedMmap('{tmp_path / 'out'}', 5 n-d samples of uint8), each sample's key its file's " \
                  f"relative path\n"
    order = ["img_3.png", "n01/img_1.png", "n02/img_2.JPEG", "n02/img_10.png", "n10/deep/er/img_1.png"]
    assert RaggedMmap(tmp_path / "out").keys() == order
    assert [int(sample[0, 0, 0]) for sample in RaggedMmap(tmp_path / "out")] == [names.index(n) for n in order]
    _, out, _ = run(capsys, "head", tmp_path / "out", "-n", "2")
    assert out.splitlines() == ["[0] img_3.png: uint8 (2, 3, 3) min 4 max 4: 4 4 4 4 4 4 4 4 ...",
                                "[1] n01/img_1.png: uint8 (2, 3, 3) min 2 max 2: 2 2 2 2 2 2 2 2 ...", "... 3 more"]
    _, out, _ = run(capsys, "info", tmp_path / "out")
    assert re.search(rf"^keys: +one per sample, unique \(index_of, by_key; "
                     rf"{re.escape(str(tmp_path / 'out' / 'keys'))}\)$", out, re.M)
    code, out, _ = run(capsys, "verify", tmp_path / "out")
    assert code == 0 and out == f"{tmp_path / 'out'}: sound (structure and metadata checked)\n"


def test_convert_guesses_the_kind_from_the_whole_tree(tmp_path, capsys):
    for name, value in [("a/1.npy", 1), ("a/b/2.npy", 2), ("c/3.npy", 3)]:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "src" / name, np.array([value]))
    (tmp_path / "src" / "notes.txt").write_text("the only file at the top")
    code, _, err = run(capsys, "convert", tmp_path / "src", tmp_path / "out", "--quiet")
    assert code == 0 and err == "mmap-ninja convert: skipped 1 file: 1 of another kind (.txt)\n"
    assert [a.tolist() for a in RaggedMmap(tmp_path / "out")] == [[1], [2], [3]]
    assert RaggedMmap(tmp_path / "out").keys() == ["a/1.npy", "a/b/2.npy", "c/3.npy"]
    code, _, err = run(capsys, "convert", tmp_path / "src", tmp_path / "texts", "--kind", "texts", "--quiet")
    assert code == 0 and StringsMmap(tmp_path / "texts")[:] == ["the only file at the top"]
    assert err == "mmap-ninja convert: skipped 3 files: 3 of another kind (.npy)\n"


def test_convert_follows_links_to_folders_once(tmp_path, capsys):
    write_texts(tmp_path / "src", ["a/1.txt", "b/2.txt"])
    write_texts(tmp_path / "elsewhere", ["3.txt"])
    (tmp_path / "src" / "0_link_to_a").symlink_to(tmp_path / "src" / "a")
    (tmp_path / "src" / "c").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "src" / "b" / "loop").symlink_to(tmp_path / "src")
    (tmp_path / "src" / "broken.txt").symlink_to(tmp_path / "missing")
    code, _, err = run(capsys, "convert", tmp_path / "src", tmp_path / "out", "--quiet")
    assert code == 0 and StringsMmap(tmp_path / "out").keys() == ["a/1.txt", "b/2.txt", "c/3.txt"]
    assert err == ("mmap-ninja convert: skipped 1 file: 1 broken link or special file; 2 folders reached again "
                   "through a link\n")


# -- tables --------------------------------------------------------------------------------------


def test_convert_jsonl_makes_a_table_of_every_field_keyed_by_a_field(tmp_path, capsys):
    from mmap_ninja.table import TableMmap

    with open(tmp_path / "posts.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"id": f"p{i}", "text": f"post {i}", "likes": i, "score": 0.5 if i == 4 else i,
                                "tags": list(range(i % 3))}) + "\n")
        f.write("\n")
    code, out, _ = run(capsys, "convert", tmp_path / "posts.jsonl", tmp_path / "t", "--key-field", "id", "--quiet")
    assert code == 0 and "TableMmap" in out
    t = TableMmap(tmp_path / "t")
    assert t.schema == {"text": "string", "likes": "numpy", "score": "numpy", "tags": "ragged"}
    assert t["likes"].dtype == np.int64 and t["score"].dtype == np.float64  # a float anywhere: a float column
    assert t["tags"].dtype == np.int64 and t.by_key["p5"]["tags"].tolist() == [0, 1]
    assert t[4]["score"] == 0.5 and t.keys() == [f"p{i}" for i in range(6)]


def test_convert_jsonl_stops_at_a_bad_record_or_skips_and_lists_it(tmp_path, capsys):
    from mmap_ninja.table import TableMmap

    lines = [json.dumps({"text": "a", "n": 1}), "{broken", json.dumps({"text": 2, "n": 2}),
             json.dumps({"text": "c"}), json.dumps({"text": "d", "n": 4})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, "convert", tmp_path / "d.jsonl", tmp_path / "t", "--quiet")
    assert code == 2 and "d.jsonl:2: not JSON" in err and not (tmp_path / "t").exists()
    code, _, err = run(capsys, "convert", tmp_path / "d.jsonl", tmp_path / "t", "--quiet", "--skip-errors")
    assert code == 0 and "skipped 3 files or records" in err
    assert "d.jsonl:2: not JSON" in err and "d.jsonl:3: field 'text' holds 2" in err
    assert "d.jsonl:4: no field 'n'" in err
    t = TableMmap(tmp_path / "t")
    assert t["text"][:] == ["a", "d"] and t["n"].tolist() == [1, 4]


def test_convert_parquet_makes_a_table_of_every_column(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmap_ninja.table import TableMmap

    pq.write_table(pa.table({"id": ["a", "b", "c"], "tokens": pa.array([[1, 2], [3], []], pa.list_(pa.int32())),
                             "label": [7, 8, 9], "text": ["x", "yy", "zzz"]}), tmp_path / "d.parquet",
                   row_group_size=2)
    code, out, _ = run(capsys, "convert", tmp_path / "d.parquet", tmp_path / "t", "--key-field", "id", "--quiet")
    assert code == 0
    t = TableMmap(tmp_path / "t")
    assert t.columns == ["tokens", "label", "text"] and t.keys() == ["a", "b", "c"]
    assert t.by_key["b"]["tokens"].tolist() == [3] and t["label"].tolist() == [7, 8, 9]
    code, _, _ = run(capsys, "convert", tmp_path / "d.parquet", tmp_path / "one", "--column", "text", "--quiet")
    assert code == 0 and StringsMmap(tmp_path / "one")[:] == ["x", "yy", "zzz"]
    code, _, err = run(capsys, "convert", tmp_path / "d.parquet", tmp_path / "t", "--append", "--quiet")
    assert code == 2 and "makes a table" in err


def test_convert_class_folders_of_images_makes_an_image_and_label_table(tmp_path, capsys):
    from PIL import Image

    from mmap_ninja.table import TableMmap

    for k, name in enumerate(["cat", "dog", "zebra"]):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((3 + i, 4, 3), 10 * k + i, np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    (tmp_path / "images" / "dog" / "broken.png").write_bytes(b"not an image")
    code, _, err = run(capsys, "convert", tmp_path / "images", tmp_path / "t", "--quiet")
    assert code == 2 and "broken.png: cannot be read" in err
    code, out, err = run(capsys, "convert", tmp_path / "images", tmp_path / "t", "--quiet", "--skip-errors",
                         "--workers", "2")
    assert code == 0 and "the classes ['cat', 'dog', 'zebra']" in out and "dog/broken.png" in err
    t = TableMmap(tmp_path / "t")
    assert t.classes == {"label": ["cat", "dog", "zebra"]} and t["label"].tolist() == [0, 0, 1, 1, 2, 2]
    assert t.keys() == [f"{name}/{i}.png" for name in ("cat", "dog", "zebra") for i in range(2)]
    np.testing.assert_array_equal(t.by_key["zebra/1.png"]["image"], np.full((4, 4, 3), 21, np.uint8))
    code, out, _ = run(capsys, "info", tmp_path / "t")
    assert "column label:" in out and "classes: cat, dog, zebra" in out
    # the table as the one part of a sharded map: its columns summed over the parts
    from mmap_ninja.sharded import ShardedMmap

    ShardedMmap.from_maps(tmp_path / "s", [tmp_path / "t"], copy=True)
    code, out, _ = run(capsys, "info", tmp_path / "s")
    lines = {line.split(":", 1)[0]: " ".join(line.split(":", 1)[1].split()) for line in out.splitlines()}
    assert code == 0 and lines["kind"] == "sharded (table parts)" and lines["column image"].startswith("ragged, uint8")
    assert lines["column label"].startswith("numpy, int64; ") and "classes: cat, dog, zebra" in lines["column label"]
    code, out, _ = run(capsys, "head", tmp_path / "s", "-n", "1")
    assert code == 0 and "cat/0.png: {image: uint8 (3, 4, 3)" in out and "label: 0}" in out
    assert run(capsys, "verify", tmp_path / "s")[0] == 0


def test_convert_jsonl_refuses_or_skips_invalid_utf8_mixed_booleans_and_huge_integers(tmp_path, capsys):
    from mmap_ninja.table import TableMmap

    lines = [b'{"ok": true, "n": 1}', b'{"ok": 2, "n": 2}', b'{"ok": false, "n": 99999999999999999999}',
             b'{"ok": true, "n": "caf\xe9"}', b'{"ok": false, "n": 5}']
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, _, err = run(capsys, "convert", tmp_path / "d.jsonl", tmp_path / "t", "--quiet")
    assert code == 2 and "d.jsonl:2: field 'ok' holds 2, the column booleans" in err
    code, _, err = run(capsys, "convert", tmp_path / "d.jsonl", tmp_path / "t", "--quiet", "--skip-errors")
    assert code == 0 and "d.jsonl:3: field 'n' holds 99999999999999999999, past the range of int64" in err
    assert "d.jsonl:4: not UTF-8" in err
    t = TableMmap(tmp_path / "t")
    assert t["ok"].tolist() == [True, False] and t["n"].tolist() == [1, 5]
