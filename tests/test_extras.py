"""The packages of the integrations: a module whose extra is missing or broken says which
packages, at which versions, and how to install the extra."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mmap_ninja._extras import installed_version, require


def import_in_subprocess(code: str, path_first=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path_first is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path_first)] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_broken_distributed_names_both_packages_their_versions_and_the_extra(tmp_path):
    """What pip installs when it pairs a new dask with an old distributed: distributed fails to
    import (as 2021.4.1 does under dask 2026). A package of that name, installed first on the
    path, stands for it."""
    package = tmp_path / "distributed"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ImportError(\"cannot import name 'collections_to_dsk' from 'dask.base'\")\n")
    info = tmp_path / "distributed-2021.4.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: distributed\nVersion: 2021.4.1\n")
    proc = import_in_subprocess("import mmap_ninja.dask", path_first=tmp_path)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError: mmap_ninja.dask needs dask and distributed")
    assert f"dask {metadata.version('dask')}" in message and "distributed 2021.4.1" in message
    assert "collections_to_dsk" in message and 'pip install ".[dask]"' in message


@pytest.mark.parametrize("module, blocked, extra", [
    ("mmap_ninja.dask", "distributed", "dask"),
    ("mmap_ninja.pytorch", "torch", "torch"),
    ("mmap_ninja.arrow", "pyarrow", "arrow"),
    ("mmap_ninja.ray", "ray.data", "ray"),
])
def test_a_missing_package_names_the_extra(module, blocked, extra):
    proc = import_in_subprocess(f"""
        import sys
        sys.modules[{blocked!r}] = None  # importing it now fails, as when it is not installed
        try:
            import {module}
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("imported")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{module} needs ") and f'pip install ".[{extra}]"' in proc.stdout
    assert f"importing {blocked} " in proc.stdout


def test_a_package_not_installed_is_said_to_be():
    with pytest.raises(ImportError, match=r"Installed: numpy [\d.]+, no-such-dist not installed\.") as info:
        require("mmap_ninja.example", "example", {"numpy": "numpy", "no_such_module_1f3a": "no-such-dist"})
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert installed_version("no-such-dist") == "not installed"


def test_the_integrations_import_when_their_extras_are_installed():
    proc = import_in_subprocess("import mmap_ninja.dask, mmap_ninja.pytorch, mmap_ninja.arrow, mmap_ninja.ray")
    assert proc.returncode == 0, proc.stderr


def test_every_extra_asks_for_at_least_a_tested_version():
    """Each requirement of each extra has a lower bound, and the version constraints.txt pins
    (the one the suite passed with) meets it."""
    root = Path(__file__).parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = {canonicalize_name(name): version for name, version in
              re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (root / "constraints.txt").read_text(), flags=re.M)}
    for extra, requirements in extras.items():
        for text in requirements:
            requirement = Requirement(text)
            assert any(spec.operator in (">=", "==") for spec in requirement.specifier), f"{extra}: {text}"
            assert requirement.specifier.contains(pinned[canonicalize_name(requirement.name)]), f"{extra}: {text}"


def test_the_dask_extra_ties_distributed_to_the_release_of_dask():
    """dask[distributed] asks for distributed of dask's own release, so pip cannot pair a new
    dask with an old distributed (as it did: dask 2026.11.0 with distributed 2021.4.1)."""
    ours = [Requirement(text) for text in metadata.requires("mmap_ninja") if 'extra == "dask"' in text]
    assert [(r.name, sorted(r.extras)) for r in ours] == [("dask", ["bag", "distributed"])]
    dask_version = metadata.version("dask")
    pins = [Requirement(text) for text in metadata.requires("dask")
            if text.startswith("distributed") and 'extra == "distributed"' in text]
    assert pins and all(pin.specifier.contains(dask_version) for pin in pins)
    assert not any(pin.specifier.contains("2021.4.1") for pin in pins)
    assert metadata.version("distributed") == dask_version
