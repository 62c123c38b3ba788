"""The README's Python examples run, in order, in one fresh folder."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ray_on_loopback

README = Path(__file__).parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples_for_every_kind_of_map():
    code = "\n".join(python_blocks())
    for name in ("RaggedMmap", "StringsMmap", "np_ninja", "Wrapped", "open_existing", "from_indexable"):
        assert name in code


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    with ray_on_loopback():  # the section "Past one machine" starts a local Ray
        for block in python_blocks():
            exec(compile(block, str(README), "exec"), namespace)
    assert "[[0 1 2]\n [3 4 5]]" in capsys.readouterr().out


def test_readme_shows_the_latest_benchmark_tables():
    import sys

    sys.path.insert(0, str(README.parent / "benchmarks"))
    from bench_batches import MARKERS, readme_section

    results = (README.parent / "benchmarks" / "RESULTS.md").read_text()
    report = results.split("\n\n", 2)[2].split("\n\n![median", 1)[0]
    text = README.read_text()
    shown = text[text.index(MARKERS[0]) + len(MARKERS[0]):text.index(MARKERS[1])].strip()
    assert shown == readme_section(report).strip()
