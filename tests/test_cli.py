"""Tests of the mmap-ninja command (mmap_ninja.cli)."""

from __future__ import annotations

import json
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
    assert code == 0 and out.strip() == f"{tmp_path / 'r'}: sound"
    np.array([0, 99], dtype=np.int64).tofile(tmp_path / "r" / "ends" / "data.ninja")
    code, out, _ = run(capsys, "verify", tmp_path / "r")
    assert code == 1 and len(out.strip().splitlines()) >= 2 and "sample 1" in out
    code, _, err = run(capsys, "verify", tmp_path / "missing")
    assert code == 2 and err.strip() == f"mmap-ninja verify: error: no map at {tmp_path / 'missing'}"


def test_head(tmp_path, capsys):
    StringsMmap.from_strings(tmp_path / "s", [f"line {i}" for i in range(8)])
    code, out, _ = run(capsys, "head", tmp_path / "s", "-n", "2")
    assert code == 0 and out.splitlines() == ["[0] 'line 0'", "[1] 'line 1'", "... 6 more"]
    RaggedMmap.from_lists(tmp_path / "r", [np.arange(4).reshape(2, 2), 7])
    _, out, _ = run(capsys, "head", tmp_path / "r")
    assert "[0] int64 (2, 2): [[0 1]" in out and "[1] 7" in out


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
    (["convert", "{tmp}/d.jsonl", "{tmp}/x"], "needs --field"),
    (["convert", "{tmp}/d.jsonl", "{tmp}/x", "--field", "nope"], "d.jsonl:1: no field 'nope'"),
    (["convert", "{tmp}/empty", "{tmp}/x"], "holds no image, .txt or .npy files"),
    (["convert", "{tmp}/none", "{tmp}/x"], "no such file or folder"),
    (["info", "{tmp}/empty"], "is not a mmap_ninja map"),
    (["head", "{tmp}/none"], "no map at"),
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
