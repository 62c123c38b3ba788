"""Fixtures shared by the tests: the datasets written by mmap_ninja 0.9.0, a way to run code
under the published 0.9.0, and helpers to compare samples."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "mmap_ninja-0.9.0"

# Ray on loopback only. Read when Ray is imported: without it Ray takes the address of the
# machine's network interface as its node's, even when given 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# Set while Ray starts its processes, which keep them. Ray starts a dashboard process even
# without the dashboard, for its usage statistics, and it asks the cloud metadata addresses
# (169.254.169.254, metadata.google.internal) which cloud it runs on whether or not statistics
# are enabled: through this proxy, a closed loopback port, those requests never leave the machine.
RAY_LOOPBACK_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": None,
            "no_proxy": None}


@contextlib.contextmanager
def ray_on_loopback():
    """Within this block, a Ray started (``ray.init``) talks to nothing but this machine."""
    saved = {name: os.environ.get(name) for name in RAY_LOOPBACK_ENV}
    try:
        for name, value in RAY_LOOPBACK_ENV.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Folder of datasets written by mmap_ninja 0.9.0 (read-only: copy before writing)."""
    return FIXTURES


@pytest.fixture(scope="session")
def expected() -> dict:
    """What each fixture folder must read back as (see fixtures/.../README.md)."""
    return json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture
def fixture_copy(tmp_path):
    """Copy a fixture folder to a writable place: ``fixture_copy("ragged_flat")``."""

    def copy(name: str) -> Path:
        dest = tmp_path / name
        if (FIXTURES / name).exists():
            shutil.copytree(FIXTURES / name, dest)
        else:
            dest.mkdir()  # git keeps no empty folder: strings_empty is one
        return dest

    return copy


def file_bytes(path: Path) -> dict:
    """Every file under the map folder ``path`` and its bytes, but the writer's lock file
    (``writer.lock``, which writers create and readers ignore): to check that files did not
    change."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "writer.lock"}


def assert_sample_equal(actual, expected_array) -> None:
    """``actual`` (an array or a scalar read from a map) equals ``expected_array`` in dtype,
    shape and values."""
    expected_array = np.asarray(expected_array)
    if expected_array.ndim == 0:
        assert np.isscalar(actual) or np.ndim(actual) == 0, f"expected a scalar, got {actual!r}"
    actual = np.asarray(actual)
    assert actual.shape == expected_array.shape
    if expected_array.ndim:
        assert actual.dtype == expected_array.dtype
    np.testing.assert_array_equal(actual, expected_array)


class Reference090:
    """Runs Python code in a subprocess that imports the published mmap_ninja 0.9.0."""

    def __init__(self, site: Path):
        self.site = site

    def run(self, code: str, cwd: Path):
        """Run ``code`` under 0.9.0; it sets ``result`` (JSON-serialisable), which is
        returned."""
        script = textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(self.site)!r})
            import mmap_ninja
            assert mmap_ninja.__version__ == "0.9.0", mmap_ninja.__file__
            """
        ) + textwrap.dedent(code) + "\nprint(json.dumps(result))\n"
        proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"mmap_ninja 0.9.0 failed:\n{proc.stderr}"
        return json.loads(proc.stdout.strip().splitlines()[-1])


_REGISTRY_UNREACHABLE = ("No matching distribution", "Could not fetch", "connection", "Connection",
                         "Temporary failure", "Network is unreachable", "Max retries")


@pytest.fixture(scope="session")
def ref090(tmp_path_factory) -> Reference090:
    """mmap_ninja 0.9.0 from the package registry, in a folder of its own."""
    site = tmp_path_factory.mktemp("mmap_ninja_090")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), "mmap-ninja==0.9.0"],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        if any(word in output for word in _REGISTRY_UNREACHABLE):
            pytest.skip(f"mmap-ninja 0.9.0 could not be fetched from the package registry: {output[-500:]}")
        raise AssertionError(f"installing mmap-ninja 0.9.0 failed:\n{output}")
    return Reference090(site)


def errors_of_threads(read, count: int) -> list:
    """Run ``read(k)`` in ``count`` threads at once (``k`` = 0 .. count - 1) and return the
    exceptions they raised."""
    import threading

    errors = []

    def run(k):
        try:
            read(k)
        except BaseException as exc:  # noqa: B902 - reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


# -- object storage: a real S3-compatible server on loopback (tests/object_store.py) --------------

@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, for the whole session."""
    from object_store import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch) -> str:
    """``s3://<a new bucket>`` on the server, with the standard AWS environment pointing at it
    (inherited by the processes a test starts)."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MMAP_NINJA_CACHE_LIMIT", raising=False)
    return f"s3://{s3_server.new_bucket()}"


@pytest.fixture
def fault_proxy(s3, s3_server, monkeypatch):
    """A counting, fault-injecting proxy in front of the server; ``AWS_ENDPOINT_URL`` points at
    it (see ``object_store.FaultProxy``)."""
    from object_store import FaultProxy

    proxy = FaultProxy(("127.0.0.1", s3_server.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield proxy
    proxy.stop()
