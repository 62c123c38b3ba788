"""How the cost of building, opening, extending and reading a ragged map grows with its size,
what durable commits cost, and whether reading keeps the process's memory flat.

    python benchmarks/bench_scale.py [--sizes 100000 1000000 10000000] [--data DIR]

Prints markdown tables and writes them to benchmarks/SCALE.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_batches import describe_machine  # noqa: E402

import mmap_ninja  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402


def samples(n: int, seed: int = 0):
    """``n`` small int32 samples of 1 to 8 elements."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, size=n).tolist()
    for i, length in enumerate(lengths):
        yield np.full(length, i, dtype=np.int32)


def anonymous_rss() -> int:
    """Resident anonymous memory of this process, in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def median_seconds(fn, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def token_sequences(n: int, seed: int = 0):
    """``n`` int32 token sequences of 16 to 1,024 tokens (about 2 KiB each)."""
    rng = np.random.default_rng(seed)
    for length in rng.integers(16, 1024, size=n):
        yield rng.integers(0, 32_000, size=length, dtype=np.int32)


def measure_checksums(root: Path, repeats: int = 11) -> list:
    """``(operation, seconds with checksums, seconds without)`` for a build of ~220 MB of token
    sequences (durable and not) and a commit of 10 samples; then deep verify's reading rate."""
    from mmap_ninja._storage import Commit

    tokens = list(token_sequences(100_000))
    size_mb = sum(t.nbytes for t in tokens) / 1e6
    cases = []
    for durable in (False, True):
        def build(durable=durable):
            with mmap_ninja.durability(durable):
                RaggedMmap.from_generator(root / "tokens", iter(tokens), batch_size=8192)
        cases.append((f"build {size_mb:,.0f} MB of token sequences{'' if durable else ', not flushed'}", build, 1))
    m = RaggedMmap(root / "commits")
    m.extend(list(samples(10)))
    batch = list(samples(10, seed=4))

    def commit(m=m, batch=batch):
        with mmap_ninja.durability(False):
            m.extend(batch)
    cases.append(("commit of 10 samples, not flushed", commit, 50))
    results = []
    for name, fn, inner in cases:
        times = {True: [], False: []}
        for _ in range(repeats):
            for record in (True, False):
                Commit.record_checksums = record
                try:
                    start = time.perf_counter()
                    for _ in range(inner):
                        fn()
                    times[record].append((time.perf_counter() - start) / inner)
                finally:
                    Commit.record_checksums = True
        ratios = [with_ / without for with_, without in zip(times[True], times[False])]
        results.append((name, statistics.median(times[True]), statistics.median(times[False]),
                        statistics.median(ratios)))
    RaggedMmap.from_generator(root / "tokens", iter(tokens), batch_size=8192)
    start = time.perf_counter()
    report = mmap_ninja.verify(root / "tokens", deep=True)
    seconds = time.perf_counter() - start
    assert report == [], report
    results.append((f"verify(deep=True) of the {size_mb:,.0f} MB map", f"{seconds:.2f} s "
                    f"({size_mb / seconds:,.0f} MB/s, page cache warm)", None, None))
    shutil.rmtree(root / "tokens")
    shutil.rmtree(root / "commits")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--data", type=Path, default=None, help="where the maps go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    root = args.data or Path(tempfile.mkdtemp(prefix="mmap_ninja_scale_"))
    rows = []
    memory = []
    for n in args.sizes:
        path = root / f"map{n}"
        print(f"building {n:,} samples", flush=True)
        start = time.perf_counter()
        RaggedMmap.from_generator(path, samples(n), batch_size=65536)
        build = time.perf_counter() - start
        open_time = median_seconds(lambda path=path: RaggedMmap(path))
        m = RaggedMmap(path)
        extra = list(samples(1000, seed=1))
        extend = median_seconds(lambda m=m, extra=extra: m.extend(extra), repeats=10)
        rng = np.random.default_rng(2)
        batches = [rng.integers(0, len(m), size=256) for _ in range(200)]
        m.take(batches[0])
        take = statistics.median(median_seconds(lambda m=m, b=b: m.take(b), repeats=1) for b in batches)
        rows.append((n, build / n, open_time, extend, take))
        # read every sample once, in random batches, and watch anonymous memory
        order = np.random.default_rng(3).permutation(len(m))
        before = anonymous_rss()
        for begin in range(0, len(order), 4096):
            m.take(order[begin:begin + 4096])
        after = anonymous_rss()
        data_mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
        memory.append((n, data_mb, before / 2**20, after / 2**20))
        del m
        shutil.rmtree(path)

    durability = []
    for durable in (True, False):
        path = root / f"commits{durable}"
        m = RaggedMmap(path)
        m.extend(list(samples(10)))
        batch = list(samples(10, seed=4))
        with mmap_ninja.durability(durable):
            durability.append((durable, median_seconds(lambda m=m, batch=batch: m.extend(batch), repeats=200)))
        shutil.rmtree(path)

    checksums = measure_checksums(root)

    lines = [
        f"Measured {datetime.date.today().isoformat()} with `python benchmarks/bench_scale.py` on "
        f"{describe_machine()} (mmap_ninja {mmap_ninja.__version__}). Samples are int32 arrays of 1 to 8 "
        "elements.",
        "",
        "| samples | build (from_generator), per sample | open | extend by 1,000 samples | take 256 random samples |",
        "|--:|--:|--:|--:|--:|",
    ]
    for n, per_sample, open_time, extend, take in rows:
        lines.append(f"| {n:,} | {per_sample * 1e6:.2f} µs | {open_time * 1e3:.2f} ms | {extend * 1e3:.2f} ms | "
                     f"{take * 1e6:.1f} µs |")
    lines += ["", "Reading every sample once, in random batches of 4,096 (anonymous memory of the process; the "
              "map's pages stay in the page cache, outside it):", "",
              "| samples | files on disk | anonymous RSS before | after |", "|--:|--:|--:|--:|"]
    for n, data_mb, before, after in memory:
        lines.append(f"| {n:,} | {data_mb:,.0f} MiB | {before:,.0f} MiB | {after:,.0f} MiB |")
    lines += ["", "A commit of 10 samples, with and without flushing to disk (`mmap_ninja.durability`):", "",
              "| durable | time per commit |", "|:--|--:|"]
    for durable, seconds in durability:
        lines.append(f"| {'yes (default)' if durable else 'no'} | {seconds * 1e3:.2f} ms |")
    lines += ["", "What the checksums recorded by every commit cost (`checksums.ninja`): runs with and without "
              "them alternate, 11 pairs; medians of the times, and the cost as the median of the pairs' ratios. "
              "Then what `verify(deep=True)` reads per second:", "",
              "| operation | with checksums | without | cost |", "|:--|--:|--:|--:|"]
    for name, with_, without, ratio in checksums:
        if without is None:
            lines.append(f"| {name} | {with_} | — | — |")
        else:
            lines.append(f"| {name} | {with_ * 1e3:.1f} ms | {without * 1e3:.1f} ms | {(ratio - 1) * 100:+.1f}% |")
    report = "\n".join(lines)
    print()
    print(report)
    (args.out / "SCALE.md").write_text("# Scale: build, open, extend, memory\n\n" + report + "\n")
    if args.data is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
