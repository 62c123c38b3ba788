"""Crash safety: writers killed with SIGKILL at random moments leave every map at a committed
state (a prefix of what was written, every sample intact) that takes further writes and that
mmap_ninja 0.9.0 reads after the next commit. 29 kills here; tools/crash_test.py runs hundreds."""

from __future__ import annotations

import pytest
from crashing import DIGEST_090, OLD_SAMPLES, build_old_map, check_prefix, digest, extend_once, kill_writer

from mmap_ninja import verify


@pytest.mark.parametrize("kind, kills", [("ragged", 10), ("strings", 7), ("numpy_c", 4), ("numpy_f", 3)])
def test_killed_writer_leaves_a_committed_prefix(tmp_path, ref090, kind, kills):
    path = tmp_path / kind
    length = 0
    for kill in range(kills):
        kill_writer(kind, path, seed=kill)
        length = check_prefix(kind, path, length)
        assert all("interrupted write" in problem for problem in verify(path)), verify(path)
    length = extend_once(kind, path)
    assert check_prefix(kind, path, length) == length
    assert verify(path) == []
    assert ref090.run(DIGEST_090.format(path=str(path)), tmp_path) == digest(kind, path)


def test_killed_build_from_generator_leaves_the_old_map_whole(tmp_path, ref090):
    # a from_* builds aside: killed at any moment, it leaves the map it was replacing as it was,
    # and its unfinished build beside it, which the next rebuild of that map removes
    for kill in range(5):
        path = tmp_path / f"build{kill}"
        build_old_map(path)
        kill_writer("ragged_from_generator", path, seed=100 + kill)
        assert check_prefix("ragged_from_generator", path, OLD_SAMPLES) == OLD_SAMPLES
        assert verify(path) == []
        assert extend_once("ragged_from_generator", path) == OLD_SAMPLES + 2
    assert ref090.run(DIGEST_090.format(path=str(path)), tmp_path) == digest("ragged_from_generator", path)
    assert any(p.name.endswith(".building") for p in tmp_path.iterdir())
    build_old_map(path)
    assert not any(p.name.startswith(f".{path.name}.") for p in tmp_path.iterdir())
