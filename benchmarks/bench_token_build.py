"""Building a ragged map of token sequences with ``RaggedMmap.from_lists`` and
``from_generator``, against Megatron-core's ``IndexedDatasetBuilder`` on the same data, in one run.

    python benchmarks/bench_token_build.py [--sequences 200000] [--mean-length 595] [--repeats 5]
                                           [--batch-size 16384] [--tiny 1000000] [--tiny-repeats 3]

The sequences are ``int32`` numpy arrays of random lengths in ``[1, 2 * mean-length)`` (by
default 200,000 of mean length 595, about 476 MB). Each build writes a new map (or ``.bin`` and
``.idx``) under a fresh path, timed from the call to the opened map (Megatron: to ``finalize``);
removing it afterwards is not timed. The builds take turns, in a rotating order, so that all see
the same machine load, and the medians are compared with Megatron's in the same run.

Megatron's builder writes each sample with one ``write`` and never flushes its files to disk;
mmap_ninja flushes a build (``fsync``) before swapping it in, unless durability is off
(``mmap_ninja.durability(False)``). Both are timed, and so is Megatron's builder followed by an
``fsync`` of its two files, for reference.

Then samples of 1 to 8 tokens (``--tiny`` of them): microseconds per sample of ``from_lists``
given numpy arrays and given Python lists of ints (flushed), against Megatron's builder.

Prints markdown tables and writes them, with the machine and its load, to
benchmarks/TOKEN_BUILD.md. Needs ``torch`` and ``megatron-core`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import interleaved_medians  # noqa: E402
from bench_batches import describe_machine  # noqa: E402

import mmap_ninja  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402


def megatron_builder():
    """Megatron-core's ``IndexedDatasetBuilder`` (imported here: it warns about optional GPU
    packages on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    return IndexedDatasetBuilder


def token_sequences(count: int, mean_length: int, seed: int, max_length: int = 0) -> list:
    """``count`` int32 arrays of random token ids, of lengths in ``[1, 2 * mean_length)`` (or
    ``[1, max_length]``)."""
    rng = np.random.default_rng(seed)
    high = max_length + 1 if max_length else 2 * mean_length
    lengths = rng.integers(1, high, size=count)
    tokens = rng.integers(0, 50_257, size=int(lengths.sum()), dtype=np.int32)
    return [chunk.copy() for chunk in np.split(tokens, np.cumsum(lengths)[:-1])]


def build_megatron(samples: list, prefix: str, fsync: bool = False) -> None:
    import torch

    builder = megatron_builder()(prefix + ".bin", dtype=np.int32)
    for arr in samples:
        builder.add_item(torch.from_numpy(arr))
    builder.finalize(prefix + ".idx")
    if fsync:
        for suffix in (".bin", ".idx"):
            fd = os.open(prefix + suffix, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def build_from_lists(samples: list, out: str, durable: bool, dtype=None) -> None:
    with mmap_ninja.durability(durable):
        RaggedMmap.from_lists(out, samples, dtype=dtype)


def build_from_generator(samples: list, out: str, durable: bool, batch_size: int) -> None:
    with mmap_ninja.durability(durable):
        RaggedMmap.from_generator(out, (sample for sample in samples), batch_size=batch_size)


def timed(root: Path, build) -> "callable":
    """A self-timed call for ``interleaved_medians``: ``build(path)`` into a new path, timed,
    then the output removed (untimed)."""
    counter = iter(range(1 << 30))

    def run(_):
        out = str(root / f"out-{next(counter)}")
        start = time.perf_counter()
        build(out)
        seconds = time.perf_counter() - start
        for path in (out, out + ".bin", out + ".idx"):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        return seconds

    return run


def check_map(samples: list, build, root: Path) -> bool:
    """Whether the map ``build`` writes holds exactly ``samples``."""
    out = str(root / "check")
    build(out)
    try:
        m = RaggedMmap(out)
        if len(m) != len(samples):
            return False
        values = np.concatenate([np.asarray(s).reshape(-1) for s in samples])
        ends = np.cumsum([np.size(s) for s in samples])
        return bool(np.array_equal(m.memmap, values) and np.array_equal(m.ends, ends)
                    and all(np.array_equal(m[i], samples[i]) for i in range(0, len(samples), 997)))
    finally:
        shutil.rmtree(out)


def check_megatron(samples: list, root: Path) -> bool:
    prefix = str(root / "check-megatron")
    build_megatron(samples, prefix)
    try:
        return os.path.getsize(prefix + ".bin") == sum(s.nbytes for s in samples)
    finally:
        os.unlink(prefix + ".bin")
        os.unlink(prefix + ".idx")


def measure(cases: dict, samples: list, root: Path, repeats: int) -> tuple:
    """Median seconds of each build of ``cases`` over ``repeats`` builds taking turns, and
    whether each wrote the samples right."""
    checked = {name: check_megatron(samples, root) if "Megatron" in name else check_map(samples, build, root)
               for name, build in cases.items()}
    medians = interleaved_medians({name: timed(root, build) for name, build in cases.items()},
                                  list(range(repeats)), chunk=1, warmup=1, self_timed=True)
    return medians, checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=200_000)
    parser.add_argument("--mean-length", type=int, default=595)
    parser.add_argument("--repeats", type=int, default=5, help="builds of each kind of the sequences")
    parser.add_argument("--batch-size", type=int, default=16_384, help="from_generator's batch_size")
    parser.add_argument("--tiny", type=int, default=1_000_000, help="samples of 1 to 8 tokens")
    parser.add_argument("--tiny-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where to write (default: a new temporary folder)")
    args = parser.parse_args()
    megatron_builder()  # imported once, before any timing
    root = Path(tempfile.mkdtemp(prefix="mmap_ninja_token_build_", dir=args.dir))
    load = os.getloadavg()[0]
    try:
        samples = token_sequences(args.sequences, args.mean_length, args.seed)
        nbytes = sum(s.nbytes for s in samples)
        batch = args.batch_size
        cases = {
            "Megatron `IndexedDatasetBuilder` (no fsync)": lambda out: build_megatron(samples, out),
            "Megatron `IndexedDatasetBuilder`, then fsync of .bin and .idx": lambda out: build_megatron(
                samples, out, fsync=True),
            "`from_lists`, not flushed": lambda out: build_from_lists(samples, out, False),
            "`from_lists`, flushed (default)": lambda out: build_from_lists(samples, out, True),
            f"`from_generator(batch_size={batch:,})`, not flushed": lambda out: build_from_generator(
                samples, out, False, batch),
            f"`from_generator(batch_size={batch:,})`, flushed (default)": lambda out: build_from_generator(
                samples, out, True, batch),
        }
        medians, checked = measure(cases, samples, root, args.repeats)
        megatron = medians["Megatron `IndexedDatasetBuilder` (no fsync)"]
        big = ["| build | seconds | MB/s | vs Megatron | right output |", "|:--|--:|--:|--:|:--|"]
        for name, seconds in medians.items():
            big.append(f"| {name} | {seconds:.3f} | {nbytes / seconds / 1e6:,.0f} | {seconds / megatron:.2f}x | "
                       f"{'yes' if checked[name] else 'NO'} |")
        print("\n".join(big), flush=True)

        tiny = token_sequences(args.tiny, 0, args.seed + 1, max_length=8)
        tiny_lists = [s.tolist() for s in tiny]
        tiny_cases = {
            "Megatron `IndexedDatasetBuilder`, numpy arrays (no fsync)": lambda out: build_megatron(tiny, out),
            "`from_lists`, numpy arrays": lambda out: build_from_lists(tiny, out, True),
            "`from_lists`, Python lists, `dtype=np.int32`": lambda out: build_from_lists(
                tiny_lists, out, True, np.int32),
            "`from_lists`, Python lists (an `int64` map)": lambda out: build_from_lists(tiny_lists, out, True),
        }
        tiny_medians, tiny_checked = measure(tiny_cases, tiny, root, args.tiny_repeats)
        tiny_megatron = tiny_medians["Megatron `IndexedDatasetBuilder`, numpy arrays (no fsync)"]
        small = ["| build | µs per sample | vs Megatron | right output |", "|:--|--:|--:|:--|"]
        for name, seconds in tiny_medians.items():
            small.append(f"| {name} | {seconds / args.tiny * 1e6:.3f} | {seconds / tiny_megatron:.2f}x | "
                         f"{'yes' if tiny_checked[name] else 'NO'} |")
        print("\n".join(small), flush=True)
        targets = ["| target | measured | met |", "|:--|--:|:-:|"]
        for kind in ("`from_lists`", f"`from_generator(batch_size={batch:,})`"):
            for flushed, bound in (("not flushed", 1.0), ("flushed (default)", 1.5)):
                ratio = medians[f"{kind}, {flushed}"] / megatron
                targets.append(f"| {kind}, {flushed.split(' (')[0]}: at most {bound:g}x Megatron's builder | "
                               f"{ratio:.2f}x | {'yes' if ratio <= bound else 'no'} |")
        for name in list(tiny_cases)[1:]:
            micros = tiny_medians[name] / args.tiny * 1e6
            targets.append(f"| {name}, 1-8 tokens: at most 1 µs per sample | {micros:.3f} µs | "
                           f"{'yes' if micros <= 1.0 else 'no'} |")
        print("\n".join(targets), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    import megatron.core
    import torch

    report = "\n".join([
        "# Building ragged maps of token sequences, against Megatron's `IndexedDatasetBuilder`",
        "",
        f"Run on {datetime.date.today()}:",
        "",
        "```",
        "python benchmarks/bench_token_build.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"{args.sequences:,} `int32` sequences of random lengths in [1, {2 * args.mean_length}) "
        f"({nbytes / 1e6:,.0f} MB), a list of numpy arrays; medians of {args.repeats} builds each, taking "
        f"turns. A build writes a new map and opens it (Megatron: `add_item(torch.from_numpy(a))` for each "
        f"sample, then `finalize`); removing it afterwards is not timed. Megatron's builder never flushes its "
        f"files to disk; mmap_ninja flushes a build (`fsync`) before swapping it in unless "
        f"`mmap_ninja.durability(False)`. \"vs Megatron\" divides by the time of Megatron's builder without "
        f"fsync in this run.",
        "",
        *big,
        "",
        f"{args.tiny:,} samples of 1 to 8 `int32` tokens; medians of {args.tiny_repeats} builds each, taking "
        f"turns; mmap_ninja flushes (the default). The Python lists hold Python ints: without `dtype=` the map "
        f"takes the dtype numpy gives them, `int64`.",
        "",
        *small,
        "",
        "Targets, from this run:",
        "",
        *targets,
        "",
        f"Machine: {describe_machine()}, mmap_ninja {mmap_ninja.__version__}, megatron-core "
        f"{megatron.core.__version__}, torch {torch.__version__}, numpy {np.__version__}. Load average (1 min) "
        f"just before the run: {load:.2f}; the machine is shared, so times vary from run to run.",
    ])
    print(report)
    (HERE / "TOKEN_BUILD.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
