"""RaggedMmap.from_indexable serially and with worker processes (``n_jobs``), over a dataset
object like an image dataset class: it holds a list of file names and its ``__getitem__``
spends about a millisecond of CPU (numpy work, not a sleep, which would make parallelism look
free) and returns an array. Three cases:

- small: each sample is 16 floats (the cost is all in reading);
- heavy: each sample is an image of about ``K`` KB of ``uint8`` (default 100, 3000 of them:
  300 MB), where the data itself has to travel: pickled from the workers to the process that
  writes them (before parts), or written by the workers and copied file to file (since);
- large: the same with images of about ``L`` KB (default 1000, 500 of them: 500 MB).

    python benchmarks/bench_parallel.py [--names N] [--items M] [--heavy-items H] [--sample-kb K]
                                        [--large-items I] [--large-kb L] [--repeats R]
                                        [--item-ms T] [--n-jobs J] [--start-methods default,forkserver]
                                        [--cases small,heavy,large] [--baseline DIR] [--baseline-label main]

The dataset holds ``N`` names (default 1,000,000: 40 MB pickled, like the file list of a
large image dataset) and its length is ``M`` (default 3000), so that the maps are built over
its first ``M`` items while the whole list goes to the workers.

Every build runs in a server process of its library, which times the build alone: this tree,
and with ``--baseline`` another source tree with its compiled extension (a checkout of main,
say), to compare the two side by side. The variants take turns, one build at a time
(``_timing.interleaved_medians``), ``R`` builds each (default 5), so that all see the same
machine load; their medians are printed as markdown tables and written, with the machine, the
versions and its load, to benchmarks/PARALLEL.md. The parallel builds of the first turn are
checked to be the same maps as the serial one.

tqdm's monitor thread is turned off in the servers: a process that runs other threads is not
forked (see mmap_ninja.parallel), and tqdm starts that thread with its first progress bar, shown
or not, so that without this, every build but a server's first would use ``forkserver``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # idle BLAS threads would compete for the cores

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import interleaved_medians  # noqa: E402


class ImageFiles:
    """``len`` samples out of a list of file names; reading one costs ``rounds`` numpy passes
    over 1000 floats derived from its name and returns 16 of them, or, with ``sample_bytes``,
    an image of about that many ``uint8`` (200 x H x 3; H varies a little from sample to
    sample)."""

    def __init__(self, names, rounds: int, length: int, sample_bytes: int = 0):
        self.names, self.rounds, self.length, self.sample_bytes = names, rounds, length, sample_bytes

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(i)
        name = self.names[i]
        pixels = np.linspace(0.0, 1.0, 1000) + (zlib.crc32(name.encode()) % 1000) / 1000
        for _ in range(self.rounds):
            pixels = np.sin(pixels * 1.5 + 0.1)
        if not self.sample_bytes:
            return pixels[:16].astype(np.float32)
        height = max(1, self.sample_bytes // 600 - 4 + i % 8)
        return np.resize((pixels * 255).astype(np.uint8), (height, 200, 3))


def seconds_per_item(dataset: ImageFiles, count: int = 300) -> float:
    start = time.perf_counter()
    for i in range(min(count, dataset.length)):
        dataset[i]
    return (time.perf_counter() - start) / min(count, dataset.length)


def calibrate(names, item_ms: float, sample_bytes: int) -> int:
    """The number of rounds that makes a sample cost about ``item_ms`` milliseconds here."""
    rounds = 50
    for _ in range(3):  # the cost is affine in the rounds: converge in a few steps
        dataset = ImageFiles(names, rounds, 300, sample_bytes)
        per_item = statistics.median(seconds_per_item(dataset) for _ in range(3))
        rounds = max(1, round(rounds * item_ms / 1e3 / per_item))
    return rounds


# -- a server: builds maps with the mmap_ninja it imports, on request --------------------------

def serve(args) -> None:
    """Read build requests (JSON lines) on stdin, answer with the seconds each took."""
    import tqdm.std

    tqdm.std.tqdm.monitor_interval = 0  # no monitor thread: see the module docstring

    import mmap_ninja
    from mmap_ninja.ragged import RaggedMmap

    names = [f"/data/coco/train2017/{i:012d}.jpg" for i in range(args.names)]
    datasets = {case: ImageFiles(names, rounds, length, sample_bytes)
                for case, (rounds, length, sample_bytes) in json.loads(args.datasets).items()}
    default_method = multiprocessing.get_start_method()
    print(json.dumps({"version": mmap_ninja.__version__, "file": mmap_ninja.__file__,
                      "default_method": default_method}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        multiprocessing.set_start_method(request["method"] or default_method, force=True)
        dataset = datasets[request["case"]]
        if request.get("warmup"):
            dataset = ImageFiles(names, 1, 20, dataset.sample_bytes)
        folder = Path(request["folder"])
        cpu = time.process_time()
        start = time.perf_counter()
        RaggedMmap.from_indexable(folder, dataset, batch_size=300, n_jobs=request["n_jobs"])
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if not request.get("keep"):
            shutil.rmtree(folder)
        print(json.dumps({"seconds": seconds, "cpu": cpu}), flush=True)


class Server:
    """A server process of the mmap_ninja in ``site`` (``None``: the one installed here)."""

    def __init__(self, site, args, datasets):
        env = dict(os.environ)
        if site is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", "--names", str(args.names),
                   "--datasets", json.dumps(datasets)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=env, cwd=tempfile.gettempdir())
        self.info = json.loads(self.process.stdout.readline())

    def build(self, cpu_log=None, **request) -> float:
        """The seconds the build took (and the CPU seconds of the building process appended to
        ``cpu_log``)."""
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the server of {self.info['file']} died")
        answer = json.loads(line)
        if cpu_log is not None:
            cpu_log.append(answer["cpu"])
        return answer["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def same_maps(a: Path, b: Path) -> bool:
    from mmap_ninja.ragged import RaggedMmap

    x, y = RaggedMmap(a), RaggedMmap(b)
    return len(x) == len(y) and x.dtype == y.dtype and all(np.array_equal(x[i], y[i]) for i in range(len(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1_000_000, help="file names the dataset holds")
    parser.add_argument("--items", type=int, default=3000, help="samples written in the small case")
    parser.add_argument("--heavy-items", type=int, default=3000, help="samples written in the heavy case")
    parser.add_argument("--sample-kb", type=int, default=100, help="KB per sample in the heavy case")
    parser.add_argument("--large-items", type=int, default=500, help="samples written in the large case")
    parser.add_argument("--large-kb", type=int, default=1000, help="KB per sample in the large case")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--item-ms", type=float, default=1.0, help="CPU milliseconds per sample")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--start-methods", default="default,forkserver",
                        help="comma-separated multiprocessing start methods to time; default: the platform's")
    parser.add_argument("--cases", default="small,heavy,large")
    parser.add_argument("--baseline", type=Path, help="a source tree of mmap_ninja (built in place) to compare with")
    parser.add_argument("--baseline-label", default="main")
    parser.add_argument("--output", type=Path, default=HERE / "PARALLEL.md")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--datasets", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return

    names = [f"/data/coco/train2017/{i:012d}.jpg" for i in range(args.names)]
    cases = args.cases.split(",")
    sizes = {"small": (min(args.items, args.names), 0),
             "heavy": (min(args.heavy_items, args.names), args.sample_kb * 1000),
             "large": (min(args.large_items, args.names), args.large_kb * 1000)}
    datasets, per_item = {}, {}
    for case in cases:
        length, sample_bytes = sizes[case]
        rounds = calibrate(names, args.item_ms, sample_bytes)
        datasets[case] = (rounds, length, sample_bytes)
        per_item[case] = statistics.median(seconds_per_item(ImageFiles(names, rounds, 300, sample_bytes))
                                           for _ in range(3))
    small = ImageFiles(names, 1, 1)
    start = time.perf_counter()
    pickled = len(pickle.dumps(small))
    pickle_seconds = time.perf_counter() - start
    total_bytes = {case: sum(ImageFiles(names, 1, sizes[case][0], sizes[case][1])[i].nbytes
                             for i in range(sizes[case][0])) for case in cases}

    libraries = {} if args.baseline is None else {args.baseline_label: args.baseline.resolve()}
    libraries["this tree"] = None
    servers = {label: Server(site, args, datasets) for label, site in libraries.items()}
    default_method = servers["this tree"].info["default_method"]
    methods = [None if m == "default" else m for m in args.start_methods.split(",")]
    methods = [m for m in methods if m is None or m in multiprocessing.get_all_start_methods()]
    method_names = {m: m or f"{default_method} (default)" for m in methods}
    load_before = os.getloadavg()
    print(f"{args.names:,} names; cases {cases}; n_jobs={args.n_jobs}, {args.repeats} builds each; "
          f"load average {load_before[0]:.2f}", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="mmap_ninja_parallel_"))
    results = {}
    started = time.perf_counter()
    try:
        for server in servers.values():  # imports, forkserver, first pools: not timed
            for method in methods:
                server.build(case=cases[0], n_jobs=args.n_jobs, method=method, folder=str(tmp / "warmup"),
                             warmup=True)
        for case in cases:
            fns, cpu = {}, {}  # by (library, "serial" or a start method)
            for label, server in servers.items():
                for variant in ["serial"] + methods:
                    key = (label, variant)
                    cpu[key] = []
                    fns[key] = (lambda k, label=label, server=server, case=case, variant=variant, log=cpu[key]:
                                server.build(log, case=case, n_jobs=None if variant == "serial" else args.n_jobs,
                                             method=None if variant == "serial" else variant, keep=k == 0,
                                             folder=str(tmp / f"{case}-{label}-{variant or 'default'}-{k}")))
            medians = interleaved_medians(fns, list(range(args.repeats)), chunk=1, warmup=0, self_timed=True)
            medians = {key: (seconds, statistics.median(cpu[key])) for key, seconds in medians.items()}
            reference = tmp / f"{case}-this tree-serial-0"
            for folder in sorted(tmp.glob(f"{case}-*-0")):
                if folder != reference and not same_maps(reference, folder):
                    raise SystemExit(f"{folder.name} differs from the serial build of this tree")
                shutil.rmtree(folder)
            results[case] = medians
            for key, (seconds, cpu_seconds) in medians.items():
                print(f"  {case} {key}: {seconds:.2f} s, {cpu_seconds:.2f} s of CPU", file=sys.stderr)
    finally:
        for server in servers.values():
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()

    labels = list(servers)
    tables = []
    for case in cases:
        medians = results[case]
        header = "| build | " + " | ".join(f"{label}: seconds | {label}: speed-up | {label}: CPU s of the building "
                                            f"process" for label in labels) + " |"
        rows = [header, "|---|" + "---:|" * (3 * len(labels))]
        for variant in ["serial"] + methods:
            cells = []
            for label in labels:
                seconds, cpu_seconds = medians[(label, variant)]
                speed_up = medians[(label, "serial")][0] / seconds
                cells += [f"{seconds:.2f}", f"{speed_up:.2f}x", f"{cpu_seconds:.2f}"]
            name = "serial" if variant == "serial" else f"n_jobs={args.n_jobs}, {method_names[variant]}"
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        tables.append((case, "\n".join(rows)))
    for case, table in tables:
        print(f"\n{case}\n{table}")

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    command = " ".join(["python benchmarks/bench_parallel.py", f"--names {args.names}", f"--items {args.items}",
                        f"--heavy-items {args.heavy_items}", f"--sample-kb {args.sample_kb}",
                        f"--large-items {args.large_items}", f"--large-kb {args.large_kb}",
                        f"--repeats {args.repeats}", f"--item-ms {args.item_ms:g}", f"--n-jobs {args.n_jobs}",
                        f"--start-methods {args.start_methods}", f"--cases {args.cases}"]
                       + ([f"--baseline {args.baseline} --baseline-label {args.baseline_label}"]
                          if args.baseline is not None else []))
    versions = ", ".join(f"{label}: mmap_ninja {server.info['version']} ({server.info['file']})"
                         for label, server in servers.items())
    paragraphs = [
        f"Run on {datetime.date.today().isoformat()}, in {elapsed / 60:.1f} minutes:\n\n```\n{command}\n```",
        f"A dataset object holding {args.names:,} file names ({len(names[0])} characters each; "
        f"{pickled / 1e6:.0f} MB pickled, in {pickle_seconds:.2f} s) whose `__getitem__` costs about "
        f"{args.item_ms:g} ms of CPU (numpy work), written with "
        f"`RaggedMmap.from_indexable(out_dir, dataset, batch_size=300)` serially and with "
        f"`n_jobs={args.n_jobs}`: median of {args.repeats} builds each, every variant taking its turn, one build "
        f"at a time, in a server process of its library, which times the build alone. The CPU seconds are "
        f"those of the process that builds (not of its workers): where shipping the samples to it costs.",
    ]
    for case, table in tables:
        length, sample_bytes = sizes[case]
        what = ("16 floats per sample" if not sample_bytes else
                f"an image of about {sample_bytes / 1000:.0f} KB of uint8 per sample, {total_bytes[case] / 1e6:.0f} "
                f"MB in all")
        paragraphs.append(f"**{case}**: {length:,} samples, {what}; {per_item[case] * 1e3:.2f} ms per sample "
                          f"read here.")
        paragraphs.append(table)
    paragraphs += [
        "With `fork` (the default start method on Linux up to Python 3.13) the workers inherit the dataset. "
        "With `forkserver` (the default of Python 3.14 on Linux) and `spawn` (macOS, Windows) it is "
        "pickled once here and unpickled once in each worker, which start as new interpreters: a fixed "
        "cost paid before the first sample, which only longer builds amortise. tqdm's monitor thread is "
        "turned off in the server processes: a process that runs other threads is not forked, and tqdm "
        "starts that thread with its first progress bar, shown or not, so that a process that has built "
        "a map before uses `forkserver` even where `fork` is the default.",
        f"Machine: {platform.machine()}, {cpus} CPUs available, Linux {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}; {versions}. "
        f"Load average (1, 5, 15 min) just before the run: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"just after: {', '.join(f'{x:.2f}' for x in load_after)}. The machine is shared with other "
        "work, so the times vary from run to run (the parallel builds most, as they need both cores).",
    ]
    text = "# RaggedMmap.from_indexable with worker processes\n\n" + "\n\n".join(
        p if p.startswith("|") or "```" in p else textwrap.fill(p, 100, break_on_hyphens=False,
                                                                 break_long_words=False)
        for p in paragraphs) + "\n"
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
