"""Refresh constraints.txt, the exact versions the tests install.

    python tools/refresh_lock.py [--keep]

Resolves the newest versions that pyproject.toml admits, for every extra and for the build's own
requirements, with uv (``uv pip compile``) into a scratch folder; installs them into a fresh
virtual environment of a copy of this tree, as ``bash tools/install test`` does; and runs the whole
test suite there. Only if every test passes is constraints.txt replaced, and the versions that
changed are listed. Otherwise constraints.txt stays as it was, and the scratch folder (the
candidate constraints, the copy and its environment) is kept for a look.

Needs the package index, about 2 GB of disk and the suite's time (about 10 minutes on 2 cores).
``--keep`` keeps the scratch folder after a success too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
# What a copy of the tree leaves out: environments, builds, caches and compiled modules.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "site", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", "*.so", ".data", ".mmap_ninja-0.9.0")


def run(command, **kwargs) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run(command, check=True, **kwargs)


def pins(text: str) -> dict:
    """``{name: version}`` of the ``name==version`` lines of a constraints file."""
    return dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, flags=re.M))


def resolve(scratch: Path) -> Path:
    """The newest versions pyproject.toml admits, as a constraints file in ``scratch``."""
    tools = scratch / "uv-venv"
    run([sys.executable, "-m", "venv", tools])
    run([tools / "bin" / "python", "-m", "pip", "install", "--quiet", "uv"])
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    candidate = scratch / "constraints.txt"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    run([tools / "bin" / "uv", "pip", "compile", "pyproject.toml", "-", "--all-extras", "--python-version", python,
         "--custom-compile-command", "python tools/refresh_lock.py", "--output-file", candidate],
        cwd=ROOT, input="\n".join(build) + "\n", text=True)
    return candidate


def passes(candidate: Path, scratch: Path) -> bool:
    """Whether the whole suite passes in a copy of the tree installed from ``candidate``, as
    the README's test command installs and runs it."""
    copy = scratch / "tree"
    shutil.copytree(ROOT, copy, ignore=NOT_COPIED)
    shutil.copy(candidate, copy / "constraints.txt")
    env = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "PYTHONPATH")}
    try:
        run(["bash", "tools/install", "test"], cwd=copy, env=env)
        run([".venv/bin/python", "-m", "pytest", "-q"], cwd=copy, env=env)
    except subprocess.CalledProcessError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder after a success too")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="mmap_ninja-lock-"))
    candidate = resolve(scratch)
    if not passes(candidate, scratch):
        print(f"the suite failed with the newest versions: {LOCK.name} is unchanged; see {scratch}", file=sys.stderr)
        return 1
    old, new = pins(LOCK.read_text()) if LOCK.exists() else {}, pins(candidate.read_text())
    shutil.copy(candidate, LOCK)
    for name in sorted(old.keys() | new.keys()):
        if old.get(name) != new.get(name):
            print(f"{name}: {old.get(name, '-')} -> {new.get(name, '-')}")
    print(f"{LOCK.name} written: the suite passed with it")
    if not args.keep:
        shutil.rmtree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
