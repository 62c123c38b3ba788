"""The project as a package: lint-clean code, an sdist and a wheel that build, and an sdist that
installs from source into a fresh virtual environment."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import mmap_ninja

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_python_and_cython_code_is_lint_clean():
    ruff = subprocess.run([tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    cython = subprocess.run([tool("cython-lint"), "mmap_ninja/_core.pyx", "mmap_ninja/_core.pxd",
                             "mmap_ninja/_sharded.pyx", "mmap_ninja/_build.pyx", "mmap_ninja/_mapping.pyx"], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    assert cython.returncode == 0, cython.stdout + cython.stderr


def test_version_is_defined_once():
    assert (ROOT / "mmap_ninja" / "_version.py").read_text().strip() == f'__version__ = "{mmap_ninja.__version__}"'
    assert 'version = { attr = "mmap_ninja._version.__version__" }' in (ROOT / "pyproject.toml").read_text()
    assert f"## {mmap_ninja.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_sdist_and_wheel_build_and_the_sdist_installs_from_source(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), str(ROOT)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    sdist = next(dist.glob("*.tar.gz"))
    wheel = next(dist.glob("*.whl"))
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(name.endswith("mmap_ninja/_core.pyx") for name in names)
    assert any(name.endswith("mmap_ninja/_mapping.pyx") for name in names)
    assert any(name.endswith("mmap_ninja/_sharded.pyx") for name in names)
    assert any(name.endswith("mmap_ninja/_build.pyx") for name in names)
    assert any(name.endswith("mmap_ninja/_core.pxd") for name in names)
    assert not any(name.endswith((".so", ".pyd")) for name in names)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(name.startswith("mmap_ninja/_core.") and name.endswith(".so") for name in names)
    assert any(name.startswith("mmap_ninja/_mapping.") and name.endswith(".so") for name in names)
    assert any(name.startswith("mmap_ninja/_build.") and name.endswith(".so") for name in names)
    assert {"mmap_ninja/py.typed", "mmap_ninja/_core.pyi"} <= set(names)
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "mmap_ninja").rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))  # every subpackage and module is shipped

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(sdist)], capture_output=True,
                             text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    smoke = (
        "import numpy as np, tempfile, mmap_ninja\n"
        "from mmap_ninja.ragged import RaggedMmap\n"
        "d = tempfile.mkdtemp()\n"
        "m = RaggedMmap.from_lists(d + '/m', [np.arange(3), np.zeros((2, 2))])\n"
        "assert m.take([1, 0]).shapes == [(2, 2), (3,)] and mmap_ninja.__version__\n"
        "print(mmap_ninja.__file__)\n"
    )
    run = subprocess.run([str(python), "-c", smoke], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert str(venv) in run.stdout  # the installed copy, not the source tree
    cli = subprocess.run([str(venv / "bin" / "mmap-ninja"), "--version"], capture_output=True, text=True)
    assert cli.stdout.strip() == f"mmap_ninja {mmap_ninja.__version__}"
