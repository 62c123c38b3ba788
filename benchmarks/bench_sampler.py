"""What distributed sampling and blending cost, and how much of the files a rank touches.

    python benchmarks/bench_sampler.py [--samples 10000000] [--repeats 5]

- the order of an epoch (``DistributedSampler.order``), a rank's share of it (``_indices``) and
  torch's own ``DistributedSampler`` on the same dataset size, in ns per sample;
- ``Blend`` of three datasets: building its index, in ns per sample of the blend;
- pages of the data file touched per 1,000 samples a rank reads, with and without
  ``block_size``, computed from the offsets of token sequences of mean length 595 (int32).

Writes benchmarks/SAMPLER.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import median_time  # noqa: E402
from bench_batches import describe_machine  # noqa: E402

from mmap_ninja.blend import Blend  # noqa: E402
from mmap_ninja.pytorch import DistributedSampler  # noqa: E402

PAGE = 4096


class Sized:
    """A dataset of ``n`` samples that is never read (the samplers need only its length)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one untimed call."""
    return median_time(lambda _: fn(), [None] * repeats, warmup=1)


def regions_per_thousand(order: np.ndarray, starts: np.ndarray, ends: np.ndarray, size: int) -> float:
    """Median over runs of 1,000 consecutive samples of ``order`` of the distinct regions of
    ``size`` bytes of the data file they touch."""
    counts = []
    for run in range(0, len(order) - 999, 1000):
        chosen = order[run:run + 1000]
        first, last = starts[chosen] // size, (ends[chosen] - 1) // size
        touched = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(first.tolist(), last.tolist())]))
        counts.append(len(touched))
    return float(np.median(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n, world = args.samples, 8
    rows = []

    for label, block_size in (("shuffle", None), ("block_size=1000", 1000)):
        sampler = DistributedSampler(Sized(n), world, 3, seed=1, block_size=block_size)
        order = median_seconds(sampler.order, args.repeats)
        share = median_seconds(sampler._indices, args.repeats)
        rows.append((f"mmap_ninja order of an epoch, {label}", order / n * 1e9))
        rows.append((f"mmap_ninja a rank's share (1 of {world}), {label}", share / n * 1e9))
    torchs = torch.utils.data.DistributedSampler(Sized(n), world, 3, seed=1)
    rows.append((f"torch DistributedSampler, list(iter) (1 of {world})",
                 median_seconds(lambda: list(iter(torchs)), args.repeats) / n * 1e9))
    ours = DistributedSampler(Sized(n), world, 3, seed=1)
    rows.append((f"mmap_ninja DistributedSampler, list(iter) (1 of {world})",
                 median_seconds(lambda: list(iter(ours)), args.repeats) / n * 1e9))
    datasets = [Sized(n // 2), Sized(n // 4), Sized(n // 100)]
    rows.append(("Blend of 3 datasets (0.5, 0.3, 0.2), index built",
                 median_seconds(lambda: Blend(datasets, [0.5, 0.3, 0.2], size=n), args.repeats) / n * 1e9))

    # pages touched: token sequences of mean length 595 int32, a rank's reads in order
    locality_n = min(n, 1_000_000)
    lengths = np.random.default_rng(0).integers(1, 1190, size=locality_n) * 4
    ends = np.cumsum(lengths)
    starts = ends - lengths
    locality = []
    for label, block_size in (("shuffle", None), ("block_size=1000", 1000), ("block_size=10000", 10000),
                              ("no shuffle", "sequential")):
        if block_size == "sequential":
            sampler = DistributedSampler(Sized(locality_n), world, 3, shuffle=False)
        else:
            sampler = DistributedSampler(Sized(locality_n), world, 3, seed=1, block_size=block_size)
        share = sampler._indices()[:100_000]
        locality.append((label, regions_per_thousand(share, starts, ends, PAGE),
                         regions_per_thousand(share, starts, ends, 2**20)))

    lines = ["# Distributed sampling and blending", "",
             f"Run on {time.strftime('%Y-%m-%d')}: `python benchmarks/bench_sampler.py --samples {n:,} "
             f"--repeats {args.repeats}` (medians).", "",
             f"Costs for a dataset of {n:,} samples, {world} ranks:", "",
             "| what | ns per sample of the dataset |", "|:--|--:|"]
    lines += [f"| {label} | {value:.1f} |" for label, value in rows]
    data_mb = ends[-1] / 2**20
    lines += ["", f"Regions of the data file touched per 1,000 samples a rank (1 of {world}) reads: "
              f"{locality_n:,} token sequences of 1-1,189 int32 tokens ({data_mb:,.0f} MiB), the rank's first "
              "100,000 reads, computed from the samples' offsets; medians over runs of 1,000:", "",
              "| order | 4 KiB pages | 1 MiB regions |", "|:--|--:|--:|"]
    lines += [f"| {label} | {pages:,.0f} | {regions:,.0f} |" for label, pages, regions in locality]
    lines += ["", "A sample of 2.4 KB on average touches one or two pages of its own, so at the page level "
              "every order touches about as many pages; what `block_size` bounds is the region: a rank's "
              "1,000 consecutive reads fall in a few blocks of consecutive samples (a few MiB of the file) "
              "instead of all over it, which is what keeps a dataset larger than memory readable at the speed "
              "of its readahead rather than of random reads.", "", describe_machine()]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "SAMPLER.md").write_text(text)


if __name__ == "__main__":
    main()
