"""The scripts in examples/ run and say what they do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

EXAMPLES = Path(__file__).parent.parent / "examples"


def count(pattern: str, text: str) -> int:
    """The number (written with thousands separators) that ``pattern`` captures in ``text``."""
    match = re.search(pattern, text, flags=re.M)
    assert match, f"no line matches {pattern!r} in:\n{text}"
    return int(match.group(1).replace(",", ""))


def test_quickstart_reports_the_counts_it_builds(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout

    tokens = RaggedMmap(tmp_path / "tokens")
    assert count(r"^1\. RaggedMmap of ([\d,]+) token sequences", out) == len(tokens)

    strings = StringsMmap(tmp_path / "texts")
    built = count(r"^2\. StringsMmap of ([\d,]+) sentences", out)
    more = count(r"^2\. StringsMmap of [\d,]+ sentences, then (\d+) more appended with extend$", out)
    assert count(r"^   built with ([\d,]+) strings$", out) == built
    assert count(r"^   extended to ([\d,]+) strings:", out) == built + more == len(strings)
    assert f"{len(strings)} strings)" in out  # the map's repr agrees

    rows = np_ninja.open_existing(tmp_path / "rows")
    built = count(r"^3\. numpy map of ([\d,]+) x 64 float32 rows", out)
    more = count(r"^3\. numpy map of [\d,]+ x 64 float32 rows, then (\d+) rows of zeros appended", out)
    assert count(r"^   built with ([\d,]+) rows$", out) == built
    assert count(r"^   extended to ([\d,]+) rows:", out) == built + more == len(rows)
    assert f"shape {rows.shape}" in out and not rows[built:].any()
