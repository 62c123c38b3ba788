"""Building a ragged map of at least 1 GB from a costly source (about 1 ms of CPU per sample,
like decoding a JPEG): serially, with ``from_indexable(n_jobs=2)``, on a Dask cluster of 2
worker processes and on Ray with 2 CPUs, in samples per second.

    python benchmarks/bench_build.py [--samples 8000] [--kib 128] [--item-ms 1] [--repeats 3]
                                     [--engines serial,n_jobs,dask,ray]

Sample ``i`` is ``uint8`` of 64 to 192 KiB (mean ``--kib``), drawn from a generator seeded with
``i`` after about ``--item-ms`` of numpy work. Every build writes a new map with flushed
commits (the default) and is checked against the serial one; the builds take turns, ``R``
times each, and the medians are printed as a markdown table and written, with the machine and
its load, to benchmarks/BUILD.md. The clusters are started once, before the timed builds
(their start-up is reported apart), and the samples are made on the workers: only indices
travel to them.
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
# Ray on loopback: its node takes 127.0.0.1, and the cloud metadata requests its helper process
# makes go to a closed loopback port (a proxy), never off the machine.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_batches import describe_machine  # noqa: E402

import mmap_ninja  # noqa: E402
from mmap_ninja.generic import open_existing  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402


class DecodedImages:
    """``length`` samples; sample ``i`` costs ``rounds`` numpy passes over 1,000 floats, then is
    ``uint8`` of 64 to 192 KiB (mean ``kib``) from a generator seeded with ``i``."""

    def __init__(self, length: int, kib: int, rounds: int):
        self.length, self.kib, self.rounds = length, kib, rounds

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng(i)
        pixels = np.linspace(0.0, 1.0, 1000) + i
        for _ in range(self.rounds):
            pixels = np.sin(pixels * 1.5 + 0.1)
        size = int(self.kib * 1024 * rng.uniform(0.5, 1.5))
        return rng.integers(0, 256, size=size, dtype=np.uint8)


def calibrate(kib: int, item_ms: float) -> int:
    """The number of rounds that makes a sample cost about ``item_ms`` milliseconds here."""
    rounds = 50
    for _ in range(3):
        dataset = DecodedImages(200, kib, rounds)
        start = time.perf_counter()
        for i in range(200):
            dataset[i]
        per_item = (time.perf_counter() - start) / 200
        rounds = max(1, round(rounds * item_ms / 1e3 / per_item))
    return rounds


def build_serial(dataset, out: Path) -> None:
    RaggedMmap.from_indexable(out, dataset, batch_size=256)


def build_n_jobs(dataset, out: Path) -> None:
    RaggedMmap.from_indexable(out, dataset, batch_size=256, n_jobs=2)


def partitions(n: int, count: int):
    bounds = np.linspace(0, n, count + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def start_dask():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    return Client(cluster), cluster


def build_dask(dataset, out: Path, parts: int) -> None:
    import dask.bag as db

    from mmap_ninja.dask import to_mmap

    bag = db.from_sequence(range(len(dataset)), npartitions=parts).map(dataset.__getitem__)
    to_mmap(bag, out)


def build_ray(dataset, out: Path, parts: int) -> None:
    import ray.data

    from mmap_ninja.ray import MmapNinjaDatasink

    rows = ray.data.range(len(dataset), override_num_blocks=parts)
    rows.map(lambda row: {"item": dataset[row["id"]]}).write_datasink(MmapNinjaDatasink(out, column="item"))


def same_samples(path: Path, reference: Path) -> bool:
    built, expected = open_existing(path), RaggedMmap(reference)
    if len(built) != len(expected):
        return False
    for start in range(0, len(expected), 512):
        index = np.arange(start, min(start + 512, len(expected)))
        if not np.array_equal(built.take(index).values, expected.take(index).values):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--kib", type=int, default=128)
    parser.add_argument("--item-ms", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", type=int, default=32, help="partitions / blocks of the Dask and Ray builds")
    parser.add_argument("--engines", default="serial,n_jobs,dask,ray")
    parser.add_argument("--ray-reservation-off", action="store_true",
                        help="DataContext.op_resource_reservation_enabled = False for the Ray build")
    args = parser.parse_args()
    engines = args.engines.split(",")
    rounds = calibrate(args.kib, args.item_ms)
    dataset = DecodedImages(args.samples, args.kib, rounds)
    root = Path(tempfile.mkdtemp(prefix="mmap_ninja_build_"))
    started = {}
    builders = {"serial": build_serial, "n_jobs": build_n_jobs}
    if "dask" in engines:
        start = time.perf_counter()
        client, cluster = start_dask()
        started["dask"] = time.perf_counter() - start
        builders["dask"] = lambda d, out: build_dask(d, out, args.parts)
    if "ray" in engines:
        import ray

        start = time.perf_counter()
        saved = dict(os.environ)
        os.environ.update(RAY_ENV)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        os.environ.clear()
        os.environ.update(saved)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        # Ray Data reserves part of the cluster for each operator; with 2 CPUs that left one
        # write task running at a time (measured: a map with a null sink ran 2 tasks at once for
        # 5% of its time). Without the reservation both CPUs work.
        context.op_resource_reservation_enabled = not args.ray_reservation_off
        started["ray"] = time.perf_counter() - start
        builders["ray"] = lambda d, out: build_ray(d, out, args.parts)
    builders = {name: fn for name, fn in builders.items() if name in engines}
    load = os.getloadavg()[0]
    reference = root / "reference"
    build_serial(dataset, reference)
    nbytes = RaggedMmap(reference).memmap.nbytes
    times = {name: [] for name in builders}
    checked = {}
    try:
        for repeat in range(args.repeats):
            order = list(builders) if repeat % 2 == 0 else list(builders)[::-1]
            for name in order:
                out = root / f"{name}-{repeat}"
                start = time.perf_counter()
                builders[name](dataset, out)
                times[name].append(time.perf_counter() - start)
                checked[name] = checked.get(name, True) and same_samples(out, reference)
                shutil.rmtree(out)
                print(f"{name}: {times[name][-1]:.2f} s", flush=True)
    finally:
        if "dask" in builders:
            client.close()
            cluster.close()
        if "ray" in builders:
            ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    serial = statistics.median(times["serial"]) if "serial" in times else None
    names = {"serial": "serial `from_indexable`", "n_jobs": "`from_indexable(n_jobs=2)`",
             "dask": "Dask, `LocalCluster` of 2 worker processes, `dask.to_mmap`",
             "ray": "Ray, 2 CPUs, `write_datasink(MmapNinjaDatasink)`"
             + (", operator reservation off" if args.ray_reservation_off else "")}
    table = ["| build | seconds | samples/s | MB/s | vs serial | same samples |", "|:--|--:|--:|--:|--:|:--|"]
    for name, values in times.items():
        seconds = statistics.median(values)
        ratio = f"{serial / seconds:.2f}x" if serial else ""
        table.append(f"| {names[name]} | {seconds:.2f} | {args.samples / seconds:,.0f} | "
                     f"{nbytes / seconds / 1e6:,.0f} | {ratio} | {'yes' if checked[name] else 'NO'} |")
    report = "\n".join([
        f"# Building a {nbytes / 1e9:.2f} GB ragged map from a costly source",
        "",
        f"Run on {datetime.date.today()}:",
        "",
        "```",
        "python benchmarks/bench_build.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"{args.samples:,} samples of `uint8`, 64-192 KiB each ({nbytes / 1e9:.2f} GB), each made with "
        f"{args.item_ms:g} ms of numpy work first; medians of {args.repeats} builds each, taking turns, "
        f"commits flushed. Dask and Ray write {args.parts} parts (partitions, blocks) on their workers and "
        f"commit them from the client; starting the clusters (not timed above): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in started.items()) + ".",
        "",
        *table,
        "",
        f"Machine: {describe_machine()}, mmap_ninja {mmap_ninja.__version__}. Load average (1 min) just "
        f"before the run: {load:.2f}; the machine is shared, so times vary from run to run.",
    ])
    print(report)
    (HERE / "BUILD.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
