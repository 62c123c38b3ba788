"""The scripts in examples/ run and say what they do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap
from mmap_ninja.table import TableMmap

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

    table = TableMmap(tmp_path / "images")
    assert count(r"^4\. TableMmap of ([\d,]+) rows", out) == len(table)
    assert table.schema == {"image": "ragged", "label": "numpy", "caption": "string"}


def test_ddp_training_stops_and_resumes_mid_epoch_on_another_number_of_ranks(tmp_path):
    import os
    import shutil

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}

    def run(ranks, *extra):
        proc = subprocess.run([torchrun, "--standalone", f"--nproc_per_node={ranks}", str(EXAMPLES / "train_ddp.py"),
                               "--workdir", str(tmp_path), *extra], capture_output=True, text=True, timeout=600,
                              env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    out = run(2, "--stop-after", "20")
    assert "stopped at step 20" in out and (tmp_path / "checkpoint" / "model.pt").exists()
    out = run(1)  # one rank goes on with the rest of the same epoch
    resumed = count(r"^resumed at step 18, epoch 0, ([\d,]+) samples of it already read$", out)
    assert resumed == 18 * 32 * 2
    for epoch in (0, 1):
        assert 3000 <= count(rf"^epoch {epoch}: ([\d,]+) samples read by 1 ranks", out) < 3004
