"""Fault injection: a writer process grows a map in a loop and is killed (SIGKILL) at a random
moment; then the map must hold exactly a prefix of what was written, every sample intact.

Used by tests/test_crash.py (a few dozen kills) and tools/crash_test.py (hundreds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

KINDS = ("ragged", "ragged_from_generator", "strings", "numpy_c", "numpy_f")


def expected_sample(kind: str, i: int):
    """Sample ``i`` of a map of ``kind`` written by the crash writer."""
    if kind.startswith("ragged"):
        if i % 13 == 5:
            return np.int32(i)  # a scalar
        if i % 40 == 39:
            return np.full((i % 3 + 1, 2), i, dtype=np.int32)  # another rank: shapes become nested
        return np.full(i % 7, i, dtype=np.int32)
    if kind == "strings":
        return f"{i}:" + "ж" * (i % 4)
    return np.array([i, i + 1, i + 2], dtype=np.int64)


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from crashing import expected_sample
    from mmap_ninja import numpy as np_ninja
    from mmap_ninja.ragged import RaggedMmap
    from mmap_ninja.string import StringsMmap

    kind, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(seed)

    def batch(start):
        return [expected_sample(kind, i) for i in range(start, start + int(rng.integers(1, 6)))]

    def ready():
        print("ready", flush=True)

    if kind == "ragged_from_generator":
        def samples():
            i = 0
            while True:
                yield expected_sample(kind, i)
                i += 1
                if i == 3:
                    ready()
        RaggedMmap.from_generator(path, samples(), batch_size=3)
    elif kind == "ragged" or kind == "strings":
        m = RaggedMmap(path) if kind == "ragged" else StringsMmap(path)
        while True:
            m.extend(batch(len(m)))
            ready()
    else:
        order = "F" if kind == "numpy_f" else "C"
        try:
            n = len(np_ninja.open_existing(path))
        except FileNotFoundError:
            np_ninja.from_ndarray(path, np.asarray(np.stack(batch(0)), order=order))
            n = len(np_ninja.open_existing(path))
        while True:
            np_ninja.extend_dir(path, np.stack(batch(n)))
            n = len(np_ninja.open_existing(path))
            ready()
    """
)


# The map a killed ``ragged_from_generator`` writer was replacing: its first samples.
OLD_SAMPLES = 4


def build_old_map(path: Path) -> None:
    """The map that a ``ragged_from_generator`` writer replaces (and, killed, must leave whole)."""
    from mmap_ninja.ragged import RaggedMmap

    RaggedMmap.from_lists(path, [expected_sample("ragged_from_generator", i) for i in range(OLD_SAMPLES)],
                          dtype=np.int32)


def start_writer(kind: str, path: Path, seed: int) -> subprocess.Popen:
    code = WRITER.format(tests=str(Path(__file__).resolve().parent))
    return subprocess.Popen([sys.executable, "-c", code, kind, str(path), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_writer(kind: str, path: Path, seed: int, max_delay: float = 0.15) -> None:
    """Start a writer, let it commit at least once, and kill it after a random delay."""
    writer = start_writer(kind, path, seed)
    line = writer.stdout.readline()
    if line.strip() != "ready":
        writer.kill()
        raise AssertionError(f"the writer did not start: {writer.stderr.read()}")
    time.sleep(np.random.default_rng(seed).uniform(0, max_delay))
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    writer.stderr.close()


def read_back(kind: str, path: Path) -> list:
    """Every sample of the map, read with this library."""
    from mmap_ninja import numpy as np_ninja
    from mmap_ninja.ragged import RaggedMmap
    from mmap_ninja.string import StringsMmap

    if kind.startswith("ragged"):
        m = RaggedMmap(path)
        return [m[i] for i in range(len(m))]
    if kind == "strings":
        return StringsMmap(path, mode="rb")[:]
    return list(np_ninja.open_existing(path))


def check_prefix(kind: str, path: Path, previous: int) -> int:
    """Assert that the map holds samples ``0..n-1`` exactly, with ``n >= previous``; return n."""
    samples = read_back(kind, path)
    assert len(samples) >= previous, f"{kind}: {len(samples)} samples after a kill, {previous} before"
    for i, sample in enumerate(samples):
        expected = expected_sample(kind, i)
        if kind == "strings":
            assert sample == expected, (i, sample, expected)
        else:
            assert np.shape(sample) == np.shape(expected), (i, np.shape(sample), np.shape(expected))
            np.testing.assert_array_equal(sample, expected)
    return len(samples)


def extend_once(kind: str, path: Path) -> int:
    """One clean commit after a kill (the map must still take writes); return the new length."""
    from mmap_ninja import numpy as np_ninja
    from mmap_ninja.ragged import RaggedMmap
    from mmap_ninja.string import StringsMmap

    if kind.startswith("ragged") or kind == "strings":
        m = RaggedMmap(path) if kind.startswith("ragged") else StringsMmap(path)
        m.extend([expected_sample(kind, i) for i in range(len(m), len(m) + 2)])
        return len(m)
    n = len(np_ninja.open_existing(path))
    np_ninja.extend_dir(path, np.stack([expected_sample(kind, i) for i in range(n, n + 2)]))
    return n + 2


# Code for mmap_ninja 0.9.0 (see conftest.Reference090): a digest of every sample of a map.
DIGEST_090 = """
import numpy as np
from mmap_ninja import generic
m = generic.open_existing({path!r})
items = [m[i] for i in range(len(m))]
result = [x if isinstance(x, str) else [list(np.shape(x)), int(np.asarray(x).sum())] for x in items]
"""


def digest(kind: str, path: Path) -> list:
    """What DIGEST_090 computes, from this library's reading."""
    return [x if isinstance(x, str) else [list(np.shape(x)), int(np.asarray(x).sum())]
            for x in read_back(kind, path)]


def interrupted(path: Path) -> bool:
    """Whether the map holds traces of a commit that was cut short: a temporary metadata file,
    a pending rename, or data past what its metadata commit."""
    from mmap_ninja._meta import ArrayMeta

    if any(path.rglob("*.tmp")) or any(path.rglob("pending.ninja")):
        return True
    for shape_file in path.rglob("shape.ninja"):
        folder = shape_file.parent
        committed = ArrayMeta.read(folder).nbytes
        if (folder / "data.ninja").stat().st_size > max(committed, 1):
            return True
    return False
