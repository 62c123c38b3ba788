"""The README's Python examples run, in order, in one fresh folder."""

from __future__ import annotations

import re
from pathlib import Path

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
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    assert "[[0 1 2]\n [3 4 5]]" in capsys.readouterr().out
