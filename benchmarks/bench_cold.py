"""Cold reads: random batches whose pages are on disk rather than in the page cache, from
mmap_ninja, Megatron-Core's IndexedDataset, pyarrow and Hugging Face datasets, on the same data
and the same random indices; and what asking the kernel for every range first costs when the
pages are in memory (warm), against an earlier build of mmap_ninja.

    python benchmarks/bench_cold.py [--quick] [--samples 600000] [--rounds 5] [--epoch-batches 40]
                                    [--baseline DIR] [--data DIR] [--out DIR]

The data: ``--samples`` int32 token sequences of 1 to 1,189 tokens (mean about 595), written
once in every contender's format (as ``bench_loaders.py`` writes them), plus a strings map of
200,000 texts and a sharded map of 64 parts holding the same sequences.

Every measurement runs in a fresh process: it opens the contender, drops the data files' pages
from the page cache (``mmap_ninja.pagecache.evict``, checked with ``mincore``: the share still
resident is reported), then times the read and counts the bytes the process read from disk
(``read_bytes`` of ``/proc/self/io``; for DataLoader workers, the device's sectors read in
``/proc/diskstats``). The contenders take turns, ``--rounds`` times; the tables give medians.

1. One cold batch of 256 random sequences: mmap_ninja ``take``, ``padded(dtype=int64)``,
   ``m[indices]`` copied, ``__getitems__``, a strings batch, a sharded map's ``take``; Megatron
   ``np.array(ds[i])`` for each; pyarrow ``take`` on the memory-mapped Arrow IPC file; HF
   ``datasets`` ``ds[indices]`` (numpy format); and the physical reference: the same byte ranges
   read with ``os.pread`` by 32 threads.
2. A cold epoch: ``--epoch-batches`` batches of 256 random indices (the same for every loader,
   each sample read once), through a DataLoader (``num_workers`` 0 and 2, padded int64
   batches), with and without ``LookaheadSampler``, and through ``Loader`` with lookahead 0, 2,
   4 and 8. Each runs in a memory cgroup of its own (where one can be made) whose limit leaves
   the page cache a tenth of the data (beside the processes' own memory), so that the map is
   read as one ten times larger than memory would be: what the kernel reads around a sample and
   nobody uses is soon dropped again.
3. Warm (``--baseline DIR``: a built source tree of an earlier mmap_ninja), measured first:
   batch reads of the page-cached map by this build and the earlier one in alternating
   subprocesses, median of 2,000 batches each; the ratio is the median of the rounds' ratios.

Writes the tables, with the machine, the device's ``read_ahead_kb`` and the versions, to
``--out``/COLD.md. Needs the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BATCH = 256
STRINGS = 200_000

BATCH_CASES = {
    "mmap_ninja take": "ninja_take",
    "mmap_ninja padded(indices, dtype=np.int64)": "ninja_padded",
    "mmap_ninja m[indices], each copied": "ninja_list",
    "mmap_ninja __getitems__": "ninja_getitems",
    "mmap_ninja sharded map of 64 parts, take": "sharded_take",
    "mmap_ninja strings s[indices] (texts of ~3 kB)": "strings",
    "Megatron np.array(ds[i]) for each": "megatron",
    "pyarrow take, memory-mapped IPC file": "arrow",
    "HF datasets ds[indices], numpy format": "hf",
    "os.pread of the same ranges, 32 threads": "pread",
}
EPOCH_CASES = {
    "DataLoader num_workers=0, Megatron + numpy padding": ("megatron", 0, 0),
    "DataLoader num_workers=0, mmap_ninja RaggedBatches": ("ninja", 0, 0),
    "DataLoader num_workers=0, mmap_ninja RaggedBatches + LookaheadSampler(4)": ("ninja", 0, 4),
    "DataLoader num_workers=2, Megatron + numpy padding": ("megatron", 2, 0),
    "DataLoader num_workers=2, mmap_ninja RaggedBatches": ("ninja", 2, 0),
    "DataLoader num_workers=2, mmap_ninja RaggedBatches + LookaheadSampler(4)": ("ninja", 2, 4),
    "Loader num_threads=2, lookahead=0": ("loader", 2, 0),
    "Loader num_threads=2, lookahead=2": ("loader", 2, 2),
    "Loader num_threads=2, lookahead=4": ("loader", 2, 4),
    "Loader num_threads=2, lookahead=8": ("loader", 2, 8),
}
WARM_CASES = ["ninja_take", "ninja_padded", "ninja_list", "ninja_getitems", "sharded_take", "strings"]


# -- data -------------------------------------------------------------------------------------

def build(data: Path, n: int) -> None:
    from bench_loaders import build_data

    import mmap_ninja
    from mmap_ninja import RaggedMmap, StringsMmap
    from mmap_ninja.sharded import ShardedMmap

    build_data(data, n)
    tokens = RaggedMmap(data / "mmap_ninja")
    if not (data / "strings").exists():
        print("  strings map", flush=True)
        count = min(STRINGS, len(tokens))
        with mmap_ninja.durability(False):
            StringsMmap.from_generator(data / "strings", (base64.b64encode(tokens[i].tobytes()).decode()
                                                          for i in range(count)), batch_size=10_000)
    if not (data / "sharded").exists():
        print("  sharded map of 64 parts", flush=True)
        with mmap_ninja.durability(False):
            ShardedMmap.from_generator(data / "sharded", (tokens[i] for i in range(len(tokens))),
                                       part_size=-(-len(tokens) // 64), batch_size=10_000)


def draw_indices(data: Path, n: int, rounds: int, epoch_batches: int) -> None:
    rng = np.random.default_rng(1)
    batches = np.stack([rng.choice(n, BATCH, replace=False) for _ in range(rounds)])
    strings = np.stack([rng.choice(min(STRINGS, n), BATCH, replace=False) for _ in range(rounds)])
    epoch = rng.choice(n, epoch_batches * BATCH, replace=False)
    warm = np.stack([rng.choice(n, BATCH, replace=False) for _ in range(2000)])
    np.savez(data / "cold_indices.npz", batches=batches, strings=strings, epoch=epoch, warm=warm)


def read_ahead_kb(path: Path) -> str:
    device = os.stat(path).st_dev
    base = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    for queue in (base / "queue", base.resolve().parent / "queue"):
        if (queue / "read_ahead_kb").exists():
            return (queue / "read_ahead_kb").read_text().strip()
    return "unknown"


def device_sectors_read(path: Path) -> int:
    """Sectors read so far by the device holding ``path`` (its whole disk when a partition)."""
    device = os.stat(path).st_dev
    name = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}").resolve().name
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == name:
            return int(fields[5])
    return 0


# -- one measurement, in a fresh process ------------------------------------------------------

def process_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes"):
            return int(line.split()[1])
    return 0


def megatron_dataset(data: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset(str(data / "megatron"))


def evict_and_check(paths) -> float:
    """Drop the pages of ``paths`` and return the share of their bytes still in the page cache."""
    from mmap_ninja import pagecache

    resident = total = 0
    for path in paths:
        pagecache.evict(path)
        r, t = pagecache.residency(path)
        resident, total = resident + r, total + t
    return resident / total if total else 0.0


def one_batch(case: str, data: Path, index: np.ndarray) -> dict:
    """Open a contender, evict its data, time one batch."""
    from mmap_ninja import RaggedMmap, StringsMmap
    from mmap_ninja.sharded import ShardedMmap

    tokens = RaggedMmap(data / "mmap_ninja")
    used = int((tokens.ends[index] - tokens.starts[index]).sum()) * 4
    files = [data / "mmap_ninja" / "data.ninja"]
    if case.startswith("ninja"):
        m = tokens
        read = {"ninja_take": lambda: m.take(index), "ninja_padded": lambda: m.padded(index, dtype=np.int64),
                "ninja_list": lambda: [np.array(x) for x in m[index]],
                "ninja_getitems": lambda: m.__getitems__(index)}[case]
    elif case == "sharded_take":
        m = ShardedMmap(data / "sharded")
        bounds = m.part_bounds
        m.take(bounds[:-1][np.diff(bounds) > 0])  # every part opened first (a sample of each read)
        files = list((data / "sharded" / "parts").glob("*/data.ninja"))  # the samples' bytes
        read = lambda: m.take(index)  # noqa: E731
    elif case == "strings":
        m = StringsMmap(data / "strings")
        used = int((m.ends[index] - m.starts[index]).sum())
        files = [data / "strings" / "data.ninja"]
        read = lambda: m[index]  # noqa: E731
    elif case == "megatron":
        ds = megatron_dataset(data)
        files = [data / "megatron.bin"]
        read = lambda: [np.array(ds[int(i)]) for i in index]  # noqa: E731
    elif case == "arrow":
        import pyarrow as pa

        column = pa.ipc.open_file(pa.memory_map(str(data / "tokens.arrow"), "r")).read_all().column("tokens")
        files = [data / "tokens.arrow"]
        picks = pa.array(index)
        read = lambda: column.take(picks)  # noqa: E731
    elif case == "hf":
        import datasets

        datasets.disable_progress_bars()
        ds = datasets.load_from_disk(str(data / "hf")).with_format("numpy")
        files = list((data / "hf").glob("*.arrow"))
        picks = index.tolist()
        read = lambda: ds[picks]["tokens"]  # noqa: E731
    elif case == "pread":
        from concurrent.futures import ThreadPoolExecutor

        starts, ends = tokens.starts[index] * 4, tokens.ends[index] * 4
        fd = os.open(data / "mmap_ninja" / "data.ninja", os.O_RDONLY)
        pool = ThreadPoolExecutor(32)
        list(pool.map(lambda k: None, range(64)))  # the threads started
        read = lambda: list(pool.map(lambda k: os.pread(fd, int(ends[k] - starts[k]), int(starts[k])),  # noqa: E731
                                     range(len(index))))
    else:
        raise ValueError(case)
    resident = evict_and_check(files)
    before = process_read_bytes()
    start = time.perf_counter()
    read()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "read": process_read_bytes() - before, "used": used, "resident": resident}


class MemoryLimit:
    """A memory cgroup of this process's own (cgroup v1 or v2; its DataLoader workers inherit
    it), whose limit ``limit(page_cache)`` sets to what the processes use now plus
    ``page_cache``: the page cache they can fill is about that, as for a map that many times
    larger than memory. ``group`` is ``None`` where no cgroup can be made (then nothing is
    limited)."""

    def __init__(self):
        self.group = self.parent = None
        try:
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                if "memory" in controllers.split(","):
                    self.parent, self.v1 = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), True
                    break
            else:
                path = [line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")]
                self.parent, self.v1 = Path("/sys/fs/cgroup") / path[0][3:].lstrip("/"), False
            group = self.parent / f"mmap_ninja_bench_cold_{os.getpid()}"
            group.mkdir()
            (group / "cgroup.procs").write_text(str(os.getpid()))
            self.group = group
        except (OSError, IndexError):
            self.group = None

    def usage(self) -> int:
        return int((self.group / ("memory.usage_in_bytes" if self.v1 else "memory.current")).read_text())

    def limit(self, page_cache: int) -> int:
        if self.group is None:
            return 0
        limit = self.usage() + page_cache
        (self.group / ("memory.limit_in_bytes" if self.v1 else "memory.max")).write_text(str(limit))
        return limit

    def close(self) -> None:
        if self.group is not None:
            try:
                (self.parent / "cgroup.procs").write_text(str(os.getpid()))
                self.group.rmdir()
            except OSError:
                pass


def _megatron_item(ds, i):
    return np.array(ds[i])


class MegatronTokens:
    """Megatron's IndexedDataset as a DataLoader dataset (a sample: a copy of its tokens)."""

    def __init__(self, data: Path):
        self.data = data
        self.ds = megatron_dataset(data)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return np.array(self.ds[int(i)])

    def __getstate__(self):
        return {"data": self.data}

    def __setstate__(self, state):
        self.__init__(state["data"])


def pad_collate(samples):
    import torch

    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    out = np.zeros((len(samples), lengths.max()), dtype=np.int64)
    for row, sample, length in zip(out, samples, lengths.tolist()):
        row[:length] = sample
    return {"input": torch.from_numpy(out), "lengths": torch.from_numpy(lengths)}


def one_epoch(case: str, data: Path, order: np.ndarray) -> dict:
    """One epoch over ``order`` by ``case``'s loader from a cold page cache, in a memory cgroup
    that leaves the page cache a tenth of the data."""
    kind, workers, ahead = EPOCH_CASES[case]
    memory = MemoryLimit()
    try:
        return _epoch(kind, workers, ahead, data, order, memory)
    finally:
        memory.close()


def _epoch(kind: str, workers: int, ahead: int, data: Path, order: np.ndarray, memory: MemoryLimit) -> dict:
    from torch.utils.data import BatchSampler, DataLoader

    from mmap_ninja import RaggedMmap
    from mmap_ninja.pytorch import Loader, LookaheadSampler, RaggedBatches, collate

    order_list = order.tolist()
    files = [data / "mmap_ninja" / "data.ninja"]
    if kind == "megatron":
        dataset = MegatronTokens(data)
        files = [data / "megatron.bin"]
        loader = DataLoader(dataset, batch_size=BATCH, sampler=order_list, num_workers=workers,
                            collate_fn=pad_collate, multiprocessing_context="fork" if workers else None)
    elif kind == "ninja":
        dataset = RaggedBatches(RaggedMmap(data / "mmap_ninja"), dtype=np.int64)
        batches = BatchSampler(order_list, BATCH, False)
        sampler = LookaheadSampler(batches, dataset, batches=ahead) if ahead else batches
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                            multiprocessing_context="fork" if workers else None)
    else:
        dataset = RaggedBatches(RaggedMmap(data / "mmap_ninja"), dtype=np.int64)
        loader = Loader(dataset, batch_size=BATCH, sampler=order_list, num_threads=workers, collate_fn=collate,
                        lookahead=ahead)
    resident = evict_and_check(files)
    # the page cache it may fill: a tenth of the data, plus room for each worker's own memory
    limit = memory.limit(files[0].stat().st_size // 10 + (64 << 20) + workers * (256 << 20))
    sectors = device_sectors_read(data)
    start = time.perf_counter()
    samples = 0
    for batch in loader:
        samples += len(batch["lengths"])
    seconds = time.perf_counter() - start
    assert samples == len(order)
    del loader, batch
    tokens = RaggedMmap(data / "mmap_ninja")
    used = int((tokens.ends[order] - tokens.starts[order]).sum()) * 4
    return {"seconds": seconds, "read": (device_sectors_read(data) - sectors) * 512, "used": used,
            "resident": resident, "samples_per_s": samples / seconds, "limit": limit}


def warm_times(case: str, data: Path, batches: np.ndarray) -> float:
    """Median seconds per batch of ``case`` over ``batches``, the map's pages in memory."""
    from _timing import median_time

    from mmap_ninja import RaggedMmap, StringsMmap
    from mmap_ninja.sharded import ShardedMmap

    if case == "strings":
        m = StringsMmap(data / "strings")
        batches = batches % len(m)
        read = lambda idx: m[idx]  # noqa: E731
    elif case == "sharded_take":
        m = ShardedMmap(data / "sharded")
        read = m.take
    else:
        m = RaggedMmap(data / "mmap_ninja")
        read = {"ninja_take": m.take, "ninja_padded": lambda idx: m.padded(idx, dtype=np.int64),
                "ninja_list": lambda idx: m[idx], "ninja_getitems": m.__getitems__}[case]
    for idx in batches:  # every page this process reads mapped once, as in a long run
        read(idx)
    return median_time(read, list(batches))


def worker_main(args) -> None:
    data = args.data
    indices = np.load(data / "cold_indices.npz")
    if args.one in BATCH_CASES.values():
        key = "strings" if args.one == "strings" else "batches"
        result = one_batch(args.one, data, indices[key][args.round])
    elif args.one in EPOCH_CASES:
        result = one_epoch(args.one, data, indices["epoch"])
    elif args.one.startswith("warm:"):
        result = {"seconds": warm_times(args.one[5:], data, indices["warm"])}
    else:
        raise SystemExit(f"unknown case {args.one!r}")
    print(json.dumps(result))


# -- the driver -------------------------------------------------------------------------------

def run(case: str, data: Path, round_: int, source: Path = None) -> dict:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    out = subprocess.run([sys.executable, __file__, "--one", case, "--data", str(data), "--round", str(round_)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def medians(results: list) -> dict:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (60,000 sequences, 2 rounds)")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--epoch-batches", type=int, default=40)
    parser.add_argument("--baseline", type=Path, default=None, help="a built source tree of an earlier mmap_ninja")
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        return worker_main(args)
    n = args.samples or (60_000 if args.quick else 600_000)
    rounds = args.rounds or (2 if args.quick else 5)
    data = args.data / f"cold-{n}"
    build(data, n)
    draw_indices(data, n, rounds, args.epoch_batches)
    import mmap_ninja

    ahead_kb = read_ahead_kb(data)
    print(f"data in {data}, read_ahead_kb {ahead_kb}", flush=True)

    warm_results = {}
    if args.baseline is not None:  # first, while nothing has been evicted or limited yet
        for r in range(rounds):
            for case in WARM_CASES:
                for who, source in (("this build", None), ("baseline", args.baseline)):
                    warm_results.setdefault((case, who), []).append(run("warm:" + case, data, r, source)["seconds"])
                print(f"  warm round {r} {case}: {warm_results[(case, 'this build')][-1] * 1e6:.1f} µs, baseline "
                      f"{warm_results[(case, 'baseline')][-1] * 1e6:.1f} µs", flush=True)
    batch_results = {name: [] for name in BATCH_CASES}
    names = list(BATCH_CASES)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            batch_results[name].append(run(BATCH_CASES[name], data, r))
            print(f"  round {r} {name}: {batch_results[name][-1]}", flush=True)
    epoch_results = {name: [] for name in EPOCH_CASES}
    names = list(EPOCH_CASES)
    for r in range(max(2, rounds - 2)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            epoch_results[name].append(run(name, data, r))
            print(f"  round {r} {name}: {epoch_results[name][-1]}", flush=True)

    lines = [
        "# Cold reads: batches from disk, not from the page cache",
        "",
        f"Measured {datetime.date.today()} with `python benchmarks/bench_cold.py"
        f"{' --quick' if args.quick else ''}` (mmap_ninja {mmap_ninja.__version__}).",
        "",
        f"{n:,} int32 token sequences (mean 595 tokens, {(data / 'mmap_ninja' / 'data.ninja').stat().st_size / 1e9:.2f}"
        f" GB), the same in every contender's format; device `read_ahead_kb` = {ahead_kb}. Each measurement in a "
        f"fresh process, its data files evicted from the page cache first (`resident`: the share still there, by "
        f"`mincore`); medians of {rounds} rounds, the contenders taking turns.",
        "",
        "## One cold batch of 256 random sequences",
        "",
        "| contender | time | read from disk | read / used | resident before | vs Megatron |",
        "|:--|--:|--:|--:|--:|--:|",
    ]
    meds = {name: medians(results) for name, results in batch_results.items()}
    megatron = meds["Megatron np.array(ds[i]) for each"]["seconds"]
    for name, m in meds.items():
        lines.append(f"| {name} | {m['seconds'] * 1e3:,.1f} ms | {m['read'] / 1e6:,.2f} MB | "
                     f"{m['read'] / m['used']:,.1f} | {m['resident']:.1%} | {megatron / m['seconds']:,.1f}x |")
    limits = sorted({r.get("limit", 0) for results in epoch_results.values() for r in results})
    memory = ("each in a memory cgroup leaving the page cache a tenth of the data (limits "
              f"{limits[0] / 1e6:,.0f} to {limits[-1] / 1e6:,.0f} MB with the processes' own memory)"
              if limits and limits[0] else "memory not limited (no cgroup could be made)")
    lines += ["", f"## A cold epoch: {args.epoch_batches} batches of 256 random sequences, each read once", "",
              f"From a cold page cache, {memory}.", "",
              "| loader | samples/s | time | read from disk | read / used | vs Megatron, same workers |",
              "|:--|--:|--:|--:|--:|--:|"]
    emeds = {name: medians(results) for name, results in epoch_results.items()}
    for name, m in emeds.items():
        workers = EPOCH_CASES[name][1]
        reference = emeds[f"DataLoader num_workers={workers}, Megatron + numpy padding"]["seconds"]
        lines.append(f"| {name} | {m['samples_per_s']:,.0f} | {m['seconds']:,.2f} s | {m['read'] / 1e6:,.1f} MB | "
                     f"{m['read'] / m['used']:,.1f} | {reference / m['seconds']:,.1f}x |")
    lines += ["", "Bytes read in an epoch are the device's (`/proc/diskstats`), which counts the DataLoader's "
              "workers, and any other process reading the disk meanwhile."]
    if warm_results:
        lines += ["", f"## Warm batches: this build against `{args.baseline}`", "",
                  "Median time per batch of 256 over 2,000 batches, every page in the page cache and mapped; "
                  f"the two builds alternate, {rounds} times, before any of the cold cases. The ratio is the median "
                  "of the ratios of each round (the two builds measured one after the other).", "",
                  "| case | this build | baseline | this / baseline |", "|:--|--:|--:|--:|"]
        for case in WARM_CASES:
            ours = statistics.median(warm_results[(case, "this build")])
            theirs = statistics.median(warm_results[(case, "baseline")])
            ratio = statistics.median(a / b for a, b in zip(warm_results[(case, "this build")],
                                                            warm_results[(case, "baseline")]))
            lines.append(f"| {case} | {ours * 1e6:,.1f} µs | {theirs * 1e6:,.1f} µs | {ratio:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "COLD.md").write_text(text)


if __name__ == "__main__":
    main()
