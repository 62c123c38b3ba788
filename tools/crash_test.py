"""Kill writers at random moments, many times, and check every map after each kill.

    python tools/crash_test.py [--kills 500] [--dir DIR]

Each round starts a writer that grows a map in a loop (ragged maps that change rank, strings,
numpy maps in C and Fortran order, ragged maps built by from_generator), kills it with SIGKILL
after a random delay, and checks that the map holds exactly a prefix of what was written with
every sample intact, that verify() finds nothing wrong beyond an interrupted write, and that it
takes a further commit. Prints how many kills each kind took and how many left uncommitted
bytes behind (kills that landed inside a commit).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from crashing import KINDS, OLD_SAMPLES, build_old_map, check_prefix, extend_once, interrupted, kill_writer  # noqa: E402

from mmap_ninja import verify  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None, help="where the maps go (default: a temporary folder)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="mmap_ninja_crash_"))
    lengths = collections.Counter()
    kills = collections.Counter()
    torn = collections.Counter()
    started = time.perf_counter()
    for kill in range(args.kills):
        kind = KINDS[kill % len(KINDS)]
        path = root / (f"{kind}{kill}" if kind == "ragged_from_generator" else kind)
        if kind == "ragged_from_generator":
            build_old_map(path)  # the build it replaces must stay whole
        kill_writer(kind, path, seed=kill)
        torn[kind] += interrupted(path)
        previous = OLD_SAMPLES if kind == "ragged_from_generator" else lengths[kind]
        lengths[kind] = check_prefix(kind, path, previous)
        if kind == "ragged_from_generator":
            assert lengths[kind] == OLD_SAMPLES, f"a killed build changed the map it was replacing: {lengths[kind]}"
        problems = [p for p in verify(path) if "interrupted write" not in p]
        assert not problems, problems
        if kill % 10 == 9:
            lengths[kind] = extend_once(kind, path)
            check_prefix(kind, path, lengths[kind])
        kills[kind] += 1
        if kind == "ragged_from_generator":
            shutil.rmtree(path)
        print(f"\r{kill + 1}/{args.kills} kills", end="", flush=True)
    elapsed = time.perf_counter() - started
    print(f"\n{sum(kills.values())} kills in {elapsed:.0f} s, every map a committed prefix after each:")
    for kind in KINDS:
        print(f"  {kind}: {kills[kind]} kills, {torn[kind]} of them inside a commit, "
              f"{lengths[kind]} samples at the end")
    if args.dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
