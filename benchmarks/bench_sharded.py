"""A sharded map against one map holding the same samples: random batches, single samples and
opening, side by side in one run; then opening a map of many parts, and reading a sample from
every one of them in a process limited to 1,024 file descriptors.

    python benchmarks/bench_sharded.py [--parts 64] [--per-part 2000] [--repeats 300] [--many-parts 10000]

Prints a markdown table and writes it to benchmarks/SHARDED.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import interleaved_medians  # noqa: E402
from bench_batches import describe_machine  # noqa: E402

from mmap_ninja import durability  # noqa: E402
from mmap_ninja import numpy as np_ninja  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402
from mmap_ninja.sharded import ShardedMmap, write_part  # noqa: E402
from mmap_ninja.string import StringsMmap  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=64)
    parser.add_argument("--per-part", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--many-parts", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mmap_ninja_sharded_"))
    rng = np.random.default_rng(0)
    n = args.parts * args.per_part
    lengths = rng.integers(16, 1024, size=n)
    samples = [rng.integers(0, 32_000, size=k, dtype=np.int32) for k in lengths]
    records = [write_part(root / "sharded", samples[k * args.per_part:(k + 1) * args.per_part])
               for k in range(args.parts)]
    ShardedMmap.commit_parts(root / "sharded", records)
    RaggedMmap.from_lists(root / "one", samples)
    sharded, one = ShardedMmap(root / "sharded"), RaggedMmap(root / "one")
    texts = [" ".join(map(str, sample[:k % 24 + 1])) for k, sample in enumerate(samples)]
    rows = np.stack([sample[:16] for sample in samples]).astype(np.float32)
    with durability(False):
        ShardedMmap.from_generator(root / "texts", iter(texts), part_size=args.per_part)
        StringsMmap.from_strings(root / "one_texts", texts)
        ShardedMmap.from_generator(root / "rows", iter(rows), part_size=args.per_part, kind="numpy")
        np_ninja.from_ndarray(root / "one_rows", rows)
    sharded_texts, one_texts = ShardedMmap(root / "texts"), StringsMmap(root / "one_texts")
    sharded_rows, one_rows = ShardedMmap(root / "rows"), np_ninja.open_existing(root / "one_rows")
    batches = [rng.integers(0, n, size=256) for _ in range(args.repeats)]
    singles = rng.integers(0, n, size=args.repeats).tolist()
    for k in range(args.parts):  # every part opened once, as a training loop would have
        sharded[k * args.per_part], sharded_texts[k * args.per_part], sharded_rows[k * args.per_part]
    cases = {  # name: (sharded, one map, arguments)
        "batch of 256 (list of views)": (lambda b: sharded[b], lambda b: one[b], batches),
        "batch of 256 (take: one contiguous copy)": (sharded.take, one.take, batches),
        "batch of 256 (padded int32 array + lengths)": (sharded.padded, one.padded, batches),
        "single m[i]": (lambda i: sharded[i], lambda i: one[i], singles),
        "strings: batch of 256": (lambda b: sharded_texts[b], lambda b: one_texts[b], batches),
        "strings: single m[i]": (lambda i: sharded_texts[i], lambda i: one_texts[i], singles),
        "numpy rows (16 float32): batch of 256": (lambda b: sharded_rows[b], lambda b: np_ninja.take(one_rows, b),
                                                  batches),
        "open": (lambda _: ShardedMmap(root / "sharded"), lambda _: RaggedMmap(root / "one"), [None] * 100),
    }
    table = []
    for name, (fn_sharded, fn_one, arguments) in cases.items():
        medians = interleaved_medians({"sharded": fn_sharded, "one": fn_one}, arguments)
        table.append((name, medians["sharded"] * 1e6, medians["one"] * 1e6))
    lines = [f"{n:,} token sequences (16-1,023 int32 each) in {args.parts} parts, against one map of the same "
             f"samples (and the same number of strings of 1-24 numbers, and of rows of 16 float32); "
             f"median µs, the two taking turns over the same arguments ({args.repeats} per case); "
             f"{describe_machine()}.", "",
             "| operation | sharded | one map | sharded / one map |", "|:--|--:|--:|--:|"]
    lines += [f"| {name} | {a:,.1f} | {b:,.1f} | {a / b:.2f}x |" for name, a, b in table]
    lines += ["", many_parts(root / "many", args.many_parts)]
    report = "\n".join(lines)
    print(report)
    (HERE / "SHARDED.md").write_text("# Sharded maps against one map\n\n" + report + "\n")


READ_EVERY_PART = """
import os, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from mmap_ninja.sharded import ShardedMmap
start = time.perf_counter()
m = ShardedMmap(sys.argv[1])
firsts = m.part_bounds[:-1]
ok = all(int(m[int(i)][0]) == k for k, i in enumerate(firsts))
print(ok, len(firsts), time.perf_counter() - start, len(os.listdir("/proc/self/fd")))
"""


def many_parts(path: Path, count: int) -> str:
    """Open a sharded map of ``count`` one-sample parts (median of 20 opens), and read a sample
    from every part in a new process limited to 1,024 file descriptors."""
    with durability(False):
        started = time.perf_counter()
        ShardedMmap.commit_parts(path, [write_part(path, [np.full(3, k, dtype=np.int32)]) for k in range(count)])
        built = time.perf_counter() - started
    opens = []
    for _ in range(20):
        started = time.perf_counter()
        ShardedMmap(path)
        opens.append(time.perf_counter() - started)
    result = subprocess.run([sys.executable, "-c", READ_EVERY_PART, str(path)], capture_output=True, text=True,
                            check=True)
    ok, parts, seconds, descriptors = result.stdout.split()
    return (f"A sharded map of {count:,} parts (written in {built:.1f} s without flushing): opening it reads "
            f"its manifest in {np.median(opens) * 1e3:.1f} ms (median of 20). A process limited to 1,024 "
            f"file descriptors (`ulimit -n 1024`) opened it and read the first sample of each of its "
            f"{int(parts):,} parts in {float(seconds):.2f} s, every sample {'right' if ok == 'True' else 'WRONG'}, "
            f"holding {descriptors} descriptors at the end.")


if __name__ == "__main__":
    main()
