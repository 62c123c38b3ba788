"""A sharded map against one map holding the same samples: random batches, single samples and
opening, side by side in one run.

    python benchmarks/bench_sharded.py [--parts 64] [--per-part 2000] [--repeats 300]

Prints a markdown table and writes it to benchmarks/SHARDED.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import interleaved_medians  # noqa: E402
from bench_batches import describe_machine  # noqa: E402

from mmap_ninja.ragged import RaggedMmap  # noqa: E402
from mmap_ninja.sharded import ShardedMmap, write_part  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=64)
    parser.add_argument("--per-part", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=300)
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
    batches = [rng.integers(0, n, size=256) for _ in range(args.repeats)]
    singles = rng.integers(0, n, size=args.repeats).tolist()
    sharded[batches[0]], one[batches[0]]  # every part opened once, as a training loop would have
    for k in range(args.parts):
        sharded[k * args.per_part]
    cases = {  # name: (sharded, one map, arguments)
        "batch of 256 (list of views)": (lambda b: sharded[b], lambda b: one[b], batches),
        "batch of 256 (take: one contiguous copy)": (sharded.take, one.take, batches),
        "single m[i]": (lambda i: sharded[i], lambda i: one[i], singles),
        "open": (lambda _: ShardedMmap(root / "sharded"), lambda _: RaggedMmap(root / "one"), [None] * 100),
    }
    rows = []
    for name, (fn_sharded, fn_one, arguments) in cases.items():
        medians = interleaved_medians({"sharded": fn_sharded, "one": fn_one}, arguments)
        rows.append((name, medians["sharded"] * 1e6, medians["one"] * 1e6))
    lines = [f"{n:,} token sequences (16-1,023 int32 each) in {args.parts} parts, against one map of the same "
             f"samples; median µs, the two taking turns over the same arguments ({args.repeats} per case); "
             f"{describe_machine()}.", "",
             "| operation | sharded | one map | sharded / one map |", "|:--|--:|--:|--:|"]
    lines += [f"| {name} | {a:,.1f} | {b:,.1f} | {a / b:.2f}x |" for name, a, b in rows]
    report = "\n".join(lines)
    print(report)
    (HERE / "SHARDED.md").write_text("# Sharded maps against one map\n\n" + report + "\n")


if __name__ == "__main__":
    main()
