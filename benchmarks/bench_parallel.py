"""RaggedMmap.from_indexable serially and with worker processes (``n_jobs``), over a dataset
object like an image dataset class: it holds a list of file names and its ``__getitem__``
spends about a millisecond of CPU (numpy work, not a sleep, which would make parallelism look
free) and returns a small array.

    python benchmarks/bench_parallel.py [--names N] [--items M] [--repeats R] [--item-ms T]
                                        [--n-jobs J] [--start-methods default,forkserver]

The dataset holds ``N`` names (default 1,000,000: 40 MB pickled, like the file list of a
large image dataset) and its length is ``M`` (default 3000), so that the maps are built over
its first ``M`` items while the whole list goes to the workers. Serial and parallel builds
alternate, ``R`` times each (default 3); the median times are printed as a markdown table and
written, with the machine, the versions and its load, to benchmarks/PARALLEL.md.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import pickle
import platform
import statistics
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # idle BLAS threads would compete for the cores

import numpy as np  # noqa: E402

import mmap_ninja  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402

HERE = Path(__file__).resolve().parent


class ImageFiles:
    """``len`` samples out of a list of file names; reading one costs ``rounds`` numpy passes
    over 1000 floats derived from its name and returns 16 of them."""

    def __init__(self, names, rounds: int, length: int):
        self.names, self.rounds, self.length = names, rounds, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(i)
        name = self.names[i]
        pixels = np.linspace(0.0, 1.0, 1000) + (zlib.crc32(name.encode()) % 1000) / 1000
        for _ in range(self.rounds):
            pixels = np.sin(pixels * 1.5 + 0.1)
        return pixels[:16].astype(np.float32)


def seconds_per_item(rounds: int, names, count: int = 300) -> float:
    dataset = ImageFiles(names, rounds, count)
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return (time.perf_counter() - start) / count


def calibrate(names, item_ms: float) -> int:
    """The number of rounds that makes a sample cost about ``item_ms`` milliseconds here."""
    rounds = 50
    for _ in range(3):  # the cost is affine in the rounds: converge in a few steps
        per_item = statistics.median(seconds_per_item(rounds, names) for _ in range(3))
        rounds = max(1, round(rounds * item_ms / 1e3 / per_item))
    return rounds


def build(dataset, n_jobs, start_method, folder: Path) -> float:
    if start_method is not None:
        multiprocessing.set_start_method(start_method, force=True)
    start = time.perf_counter()
    RaggedMmap.from_indexable(folder, dataset, batch_size=300, n_jobs=n_jobs)
    return time.perf_counter() - start


def same_maps(a: Path, b: Path) -> bool:
    x, y = RaggedMmap(a), RaggedMmap(b)
    return len(x) == len(y) and all(np.array_equal(x[i], y[i]) for i in range(len(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1_000_000, help="file names the dataset holds")
    parser.add_argument("--items", type=int, default=3000, help="samples written (the dataset's length)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--item-ms", type=float, default=1.0, help="CPU milliseconds per sample")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--start-methods", default="default,forkserver",
                        help="comma-separated multiprocessing start methods to time; default: the platform's")
    parser.add_argument("--output", type=Path, default=HERE / "PARALLEL.md")
    args = parser.parse_args()

    default_method = multiprocessing.get_start_method()
    methods = [None if m == "default" else m for m in args.start_methods.split(",")]
    methods = [m for m in methods if m is None or m in multiprocessing.get_all_start_methods()]
    names = [f"/data/coco/train2017/{i:012d}.jpg" for i in range(args.names)]
    rounds = calibrate(names, args.item_ms)
    per_item = statistics.median(seconds_per_item(rounds, names) for _ in range(3))
    dataset = ImageFiles(names, rounds, min(args.items, args.names))
    start = time.perf_counter()
    pickled = len(pickle.dumps(dataset))
    pickle_seconds = time.perf_counter() - start
    load_before = os.getloadavg()[0]
    print(f"{args.names:,} names, {dataset.length:,} items of {per_item * 1e3:.2f} ms, n_jobs={args.n_jobs}, "
          f"{args.repeats} repetitions; load average {load_before:.2f}", file=sys.stderr)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for method in methods:
            serial, parallel = [], []
            for k in range(args.repeats):  # alternate, so that both see the same machine load
                order = [("serial", None), ("parallel", args.n_jobs)]
                for kind, n_jobs in (order if k % 2 == 0 else order[::-1]):
                    folder = tmp / f"{method}-{kind}-{k}"
                    seconds = build(dataset, n_jobs, method or default_method, folder)
                    (serial if n_jobs is None else parallel).append(seconds)
                    print(f"  {method or default_method} {kind}: {seconds:.2f} s", file=sys.stderr)
            if not same_maps(tmp / f"{method}-serial-0", tmp / f"{method}-parallel-0"):
                raise SystemExit("the parallel build differs from the serial one")
            s, p = statistics.median(serial), statistics.median(parallel)
            rows.append((method or f"{default_method} (default)", s, p, s / p))

    table = [f"| start method | serial (s) | n_jobs={args.n_jobs} (s) | speed-up |", "|---|---:|---:|---:|"]
    table += [f"| {m} | {s:.2f} | {p:.2f} | {x:.2f}x |" for m, s, p, x in rows]
    table = "\n".join(table)
    print(table)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    command = " ".join(["python benchmarks/bench_parallel.py", f"--names {args.names}", f"--items {args.items}",
                        f"--repeats {args.repeats}", f"--item-ms {args.item_ms:g}", f"--n-jobs {args.n_jobs}",
                        f"--start-methods {args.start_methods}"])
    paragraphs = [
        f"Run on {datetime.date.today().isoformat()}:\n\n```\n{command}\n```",
        f"A dataset object holding {args.names:,} file names ({len(names[0])} characters each; "
        f"{pickled / 1e6:.0f} MB pickled, in {pickle_seconds:.2f} s) whose `__getitem__` costs "
        f"{per_item * 1e3:.2f} ms of CPU (numpy work) and returns 16 floats, written with "
        f"`RaggedMmap.from_indexable(out_dir, dataset, batch_size=300)` over its first {dataset.length:,} "
        f"items, serially and with `n_jobs={args.n_jobs}`: median of {args.repeats} builds each, alternating.",
        table,
        "With `fork` (the default start method on Linux up to Python 3.13) the workers inherit the dataset. "
        "With `forkserver` (the default of Python 3.14 on Linux) and `spawn` (macOS, Windows) it is "
        "pickled once here and unpickled once in each worker, which start as new interpreters: a fixed "
        "cost paid before the first sample, which only longer builds amortise.",
        f"Machine: {platform.machine()}, {cpus} CPUs available, Linux {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, mmap_ninja {mmap_ninja.__version__}. "
        f"Load average (1 min) just before the run: {load_before:.2f}. The machine is shared with other "
        "work, so the times vary from run to run (the parallel builds most, as they need both cores).",
    ]
    text = "# RaggedMmap.from_indexable with worker processes\n\n" + "\n\n".join(
        p if p is table or "```" in p else textwrap.fill(p, 100, break_on_hyphens=False, break_long_words=False)
        for p in paragraphs) + "\n"
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
