"""Tests of the package as installed: its exports, and the error when the core is not built."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import mmap_ninja


def test_exports():
    for name in mmap_ninja.__all__:
        assert hasattr(mmap_ninja, name), name
    assert mmap_ninja.__version__.count(".") == 2


def test_importing_without_the_compiled_core_says_how_to_build_it(tmp_path):
    source = Path(mmap_ninja.__file__).parent
    shutil.copytree(source, tmp_path / "mmap_ninja", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    # -S: no site hooks, so that an editable install cannot supply the core from elsewhere
    numpy_site = str(Path(np.__file__).parent.parent)
    code = f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {numpy_site!r}]; import mmap_ninja"
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "mmap_ninja._core is not built" in proc.stderr and "pip install ." in proc.stderr


def test_importing_the_package_does_not_import_torch():
    code = "import sys, mmap_ninja, mmap_ninja.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False"
