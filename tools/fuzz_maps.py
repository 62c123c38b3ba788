"""Damage copies of valid maps at random, many times, and check that every way of opening,
reading and verifying them works or raises a clear exception (the test in
tests/test_corruption.py, with more cases).

    python tools/fuzz_maps.py [--cases 5000]
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

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_corruption import build_maps, damage, exercise  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mmap_ninja_fuzz_"))
    files = build_maps(root / "valid")
    damages = collections.Counter()
    started = time.perf_counter()

    @settings(max_examples=args.cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        name = data.draw(st.sampled_from(sorted(files)))
        case = Path(tempfile.mkdtemp(dir=root))
        try:
            shutil.copytree(root / "valid" / name, case / name)
            damages[name + ": " + damage(case / name, files[name], data).split()[0]] += 1
            exercise(case / name, name)
        finally:
            shutil.rmtree(case)
        if sum(damages.values()) % 100 == 0:
            print(f"\r{sum(damages.values())} cases", end="", flush=True)

    run()
    print(f"\n{sum(damages.values())} damaged maps in {time.perf_counter() - started:.0f} s: no crash, no hang, "
          f"only clear exceptions")
    for key, count in sorted(damages.items()):
        print(f"  {key}: {count}")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
