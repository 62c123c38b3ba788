"""Converting a Parquet file of token sequences into a map (``mmap_ninja.arrow.from_arrow``),
against reading it with pyarrow and with Hugging Face ``datasets``, and what ``to_arrow`` costs.

    python benchmarks/bench_arrow.py [--sequences 200000] [--mean-length 595] [--row-group 20000]
                                     [--repeats 5]

The file (kept under benchmarks/.data/arrow/, written once) holds one column, ``tokens``, of
``int32`` token ids in sequences of random lengths in ``[16, 2 * mean-length - 16]``, in row
groups of ``--row-group`` rows, snappy-compressed (pyarrow's default). Every case reads the
whole column from the file, once the file is in the page cache:

- ``from_arrow(out, pq.ParquetFile(path), column="tokens")``: the row groups decoded one at a
  time and written into a new map from Arrow's buffers (flushed to disk, the default, and with
  ``mmap_ninja.durability(False)``);
- the same through ``mmap-ninja convert data.parquet OUT`` (a process of its own, so its start
  is counted too);
- what one writes without ``mmap_ninja.arrow``: ``RaggedMmap.from_generator`` over the numpy
  arrays that ``to_numpy(zero_copy_only=False)`` gives of each row group, one per sample;
- ``ParquetFile.read_row_group`` of each row group in turn, each dropped once read: the decoding
  that ``from_arrow`` does, alone;
- ``pq.read_table(path)``: the column decoded into memory, nothing written;
- ``datasets.Dataset.from_parquet(path)``: Hugging Face's conversion into the Arrow file of its
  cache (a new cache folder each time, so that it is never reused; its progress bars off).

The cases take turns, in a rotating order (``_timing.interleaved_medians``), and their medians
are compared with ``pq.read_table``'s. Each case's output (a map, a table, a dataset) is checked
against the column. Then the same column from a table already in memory, into a map by
``from_arrow`` and by ``from_generator`` over one numpy array per sample: the cost of writing
alone, before and after ``mmap_ninja.arrow``. Then the peak memory of each case in a process of
its own (the high-water mark of its resident memory, ``VmHWM``, minus the same after its
imports), and the time ``to_arrow`` takes: over the files as they are (no copy), and after
``m[0] = v`` moved the first sample past the others (one copy).

Prints markdown tables and writes them, with the machine and its load, to benchmarks/ARROW.md.
Needs pyarrow and datasets (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import interleaved_medians, time_calls  # noqa: E402
from bench_batches import describe_machine  # noqa: E402

import mmap_ninja  # noqa: E402
from mmap_ninja import arrow  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402

COLUMN = "tokens"


def write_parquet(path: Path, sequences: int, mean_length: int, row_group: int, seed: int) -> None:
    """The benchmark's Parquet file, written once (to a temporary name, then renamed)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(16, 2 * mean_length - 15, size=sequences)
    offsets = np.zeros(sequences + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.integers(0, 50_257, size=int(offsets[-1]), dtype=np.int32)
    column = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(tokens)).cast(pa.list_(pa.int32()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table({COLUMN: column}), tmp, row_group_size=row_group)
    os.replace(tmp, path)


def from_arrow(path: Path, out: str, durable: bool) -> None:
    with mmap_ninja.durability(durable):
        arrow.from_arrow(out, pq.ParquetFile(path), column=COLUMN)


def per_sample(path: Path, out: str) -> None:
    """A map of the column without ``mmap_ninja.arrow``: a numpy array per sample."""

    def samples():
        parquet = pq.ParquetFile(path)
        for k in range(parquet.num_row_groups):  # read as from_arrow reads it
            for chunk in parquet.read_row_group(k, columns=[COLUMN]).column(0).chunks:
                yield from chunk.to_numpy(zero_copy_only=False)

    RaggedMmap.from_generator(out, samples(), batch_size=65536)


def decode_row_groups(path: Path, out: str) -> int:
    """The column decoded a row group at a time, as ``from_arrow`` reads it, nothing written:
    the number of rows."""
    parquet = pq.ParquetFile(path)
    return sum(parquet.read_row_group(k, columns=[COLUMN]).num_rows for k in range(parquet.num_row_groups))


def command_line(path: Path, out: str) -> None:
    subprocess.run([sys.executable, "-m", "mmap_ninja", "convert", str(path), out, "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)


def hf_from_parquet(path: Path, cache: str):
    import datasets

    return datasets.Dataset.from_parquet(str(path), cache_dir=cache)


def timed(root: Path, run) -> "callable":
    """A self-timed call for ``interleaved_medians``: ``run(path, out)`` into a new path, timed,
    then the output removed (untimed)."""
    counter = iter(range(1 << 30))

    def call(path):
        out = str(root / f"out-{next(counter)}")
        start = time.perf_counter()
        result = run(path, out)
        seconds = time.perf_counter() - start
        del result
        shutil.rmtree(out, ignore_errors=True)
        return seconds

    return call


def check(path: Path, root: Path, cases: dict, expected: pa.Array) -> dict:
    """Whether each case's output holds the column, in order."""
    values = expected.values.to_numpy()
    ends = np.cumsum(np.diff(expected.offsets.to_numpy()))
    right = {}
    for name, run in cases.items():
        out = str(root / "check")
        result = run(path, out)
        if isinstance(result, int):  # rows decoded
            right[name] = result == len(expected)
        elif isinstance(result, pa.Table):
            right[name] = result.column(COLUMN).combine_chunks().equals(expected)
        elif result is not None:  # a Dataset
            right[name] = result.data.column(COLUMN).combine_chunks().equals(expected)
        else:
            m = RaggedMmap(out)
            right[name] = bool(len(m) == len(expected) and np.array_equal(m.memmap, values)
                               and np.array_equal(m.ends, ends))
        del result
        shutil.rmtree(out, ignore_errors=True)
    return right


PEAK = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {here!r})
    import bench_arrow
    import datasets

    def high_water():  # KiB; of this process's memory only (ru_maxrss keeps the parent's across exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    case, path, out = sys.argv[1:]
    run = bench_arrow.CASES[case]
    base = high_water()
    result = run(bench_arrow.Path(path), out)
    print(json.dumps([base, high_water()]))
""")


def peak_memory(case: str, path: Path, root: Path) -> float:
    """MiB that ``case`` adds to the peak resident memory of a process of its own."""
    out = str(root / "peak")
    proc = subprocess.run([sys.executable, "-c", PEAK.format(here=str(HERE)), case, str(path), out],
                          capture_output=True, text=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    base, peak = json.loads(proc.stdout.strip().splitlines()[-1])
    return (peak - base) / 1024


READ_TABLE = "`pq.read_table(path)` (into memory, nothing written)"
FLUSHED = "`from_arrow(pq.ParquetFile(path))`, flushed (default)"
NOT_FLUSHED = "`from_arrow(pq.ParquetFile(path))`, not flushed"
DECODE = "`read_row_group` of each row group in turn (decoding alone, as `from_arrow` reads; nothing kept)"
HF = "`datasets.Dataset.from_parquet(path)` (writes its Arrow cache)"
CASES = {
    FLUSHED: lambda path, out: from_arrow(path, out, True),
    NOT_FLUSHED: lambda path, out: from_arrow(path, out, False),
    "`mmap-ninja convert data.parquet OUT` (a new process)": command_line,
    "`from_generator` over one numpy array per sample (without `mmap_ninja.arrow`)": per_sample,
    DECODE: decode_row_groups,
    READ_TABLE: lambda path, out: pq.read_table(path),
    HF: hf_from_parquet,
}


def in_memory_cases(table: pa.Table) -> dict:
    """Writing the column of a table already in memory: what ``mmap_ninja.arrow`` adds to reading."""

    def numpy_per_sample(durable: bool):
        def run(path, out):
            samples = (array for chunk in table.column(COLUMN).chunks
                       for array in chunk.to_numpy(zero_copy_only=False))
            with mmap_ninja.durability(durable):
                RaggedMmap.from_generator(out, samples, batch_size=65536)

        return run

    def with_arrow(durable: bool):
        def run(path, out):
            with mmap_ninja.durability(durable):
                arrow.from_arrow(out, table, column=COLUMN)

        return run

    return {
        "`from_arrow(table)`, flushed (default)": with_arrow(True),
        "`from_arrow(table)`, not flushed": with_arrow(False),
        "`from_generator` over one numpy array per sample, flushed (default)": numpy_per_sample(True),
        "`from_generator` over one numpy array per sample, not flushed": numpy_per_sample(False),
    }


def to_arrow_costs(path: Path, root: Path, repeats: int) -> tuple:
    """Median seconds of ``to_arrow`` over a map as built, and after ``m[0] = v``; whether the
    first shares the map's buffer and the second does not."""
    out = root / "to_arrow"
    with mmap_ninja.durability(False):
        m = arrow.from_arrow(out, pq.ParquetFile(path), column=COLUMN)
        zero = statistics.median(time_calls(lambda _: arrow.to_arrow(m), range(repeats * 4)))
        shared = arrow.to_arrow(m).values.buffers()[1].address == m.memmap.ctypes.data
        m[0] = np.asarray(m[0])[::-1]  # the same length: moved past the others
        copy = statistics.median(time_calls(lambda _: arrow.to_arrow(m), range(repeats)))
        copied = arrow.to_arrow(m).values.buffers()[1].address != m.memmap.ctypes.data
    shutil.rmtree(out)
    return zero, shared, copy, copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=200_000)
    parser.add_argument("--mean-length", type=int, default=595)
    parser.add_argument("--row-group", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5, help="conversions of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=HERE / ".data" / "arrow", help="where the file is kept")
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()
    path = args.data / f"tokens-{args.sequences}-{args.mean_length}-{args.row_group}-{args.seed}.parquet"
    if not path.exists():
        print(f"writing {path}", flush=True)
        write_parquet(path, args.sequences, args.mean_length, args.row_group, args.seed)
    root = Path(tempfile.mkdtemp(prefix="bench_arrow_", dir=args.data))
    load = os.getloadavg()[0]
    try:
        expected = pq.read_table(path).column(COLUMN).combine_chunks()
        rows, nbytes = len(expected), expected.values.nbytes
        groups = pq.ParquetFile(path).num_row_groups
        right = check(path, root, CASES, expected)
        medians = interleaved_medians({name: timed(root, run) for name, run in CASES.items()},
                                      [path] * args.repeats, chunk=1, warmup=1, self_timed=True)
        base = medians[READ_TABLE]
        table = ["| case | seconds | rows/s | MB/s | vs `pq.read_table` | right output |",
                 "|:--|--:|--:|--:|--:|:--|"]
        for name, seconds in medians.items():
            table.append(f"| {name} | {seconds:.3f} | {rows / seconds:,.0f} | {nbytes / seconds / 1e6:,.0f} | "
                         f"{seconds / base:.2f}x | {'yes' if right[name] else 'NO'} |")
        print("\n".join(table), flush=True)
        table_cases = in_memory_cases(pq.read_table(path))
        table_right = check(path, root, table_cases, expected)
        table_medians = interleaved_medians({name: timed(root, run) for name, run in table_cases.items()},
                                            [path] * args.repeats, chunk=1, warmup=1, self_timed=True)
        per_sample = table_medians["`from_generator` over one numpy array per sample, flushed (default)"]
        per_sample_unflushed = table_medians["`from_generator` over one numpy array per sample, not flushed"]
        writing = table_medians["`from_arrow(table)`, not flushed"]
        in_memory = ["| case | seconds | MB/s | vs per-sample arrays, flushed | right output |",
                     "|:--|--:|--:|--:|:--|"]
        for name, seconds in table_medians.items():
            in_memory.append(f"| {name} | {seconds:.3f} | {nbytes / seconds / 1e6:,.0f} | "
                             f"{seconds / per_sample:.2f}x | "
                             f"{'yes' if table_right[name] else 'NO'} |")
        print("\n".join(in_memory), flush=True)
        memory = ["| case | peak memory added (MiB) |", "|:--|--:|"]
        peaks = {name: peak_memory(name, path, root) for name in CASES if "new process" not in name}
        for name, mib in peaks.items():
            memory.append(f"| {name} | {mib:,.0f} |")
        print("\n".join(memory), flush=True)
        zero, shared, copy, copied = to_arrow_costs(path, root, args.repeats)
        costs = ["| `to_arrow` of the map | seconds | values |", "|:--|--:|:--|",
                 f"| as built (samples back to back) | {zero:.6f} | "
                 f"{'the mapped file, not copied' if shared else 'COPIED'} |",
                 f"| after `m[0] = v` (sample 0 moved past the others) | {copy:.3f} | "
                 f"{'copied once' if copied else 'NOT COPIED'} |"]
        print("\n".join(costs), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report = "\n".join([
        "# Parquet into a map, against pyarrow and Hugging Face datasets; `to_arrow`",
        "",
        f"Run on {datetime.date.today()}:",
        "",
        "```",
        "python benchmarks/bench_arrow.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"A Parquet file of {rows:,} `int32` token sequences of random lengths in [16, {2 * args.mean_length - 16}] "
        f"({nbytes / 1e6:,.0f} MB of tokens; {path.stat().st_size / 1e6:,.0f} MB on disk, snappy) in {groups} "
        f"row groups of {args.row_group:,} rows, read from the page cache. Medians of {args.repeats} runs of "
        f"each case, taking turns; MB/s counts the tokens' bytes. `from_arrow` and `mmap-ninja convert` decode "
        f"one row group at a time and write it into a new map from Arrow's buffers; `pq.read_table` only "
        f"decodes the file into memory, with threads; `Dataset.from_parquet` decodes it and writes the Arrow "
        f"file of its cache (not flushed to disk), into a new cache folder each time. mmap_ninja flushes a build "
        f"(`fsync`) before swapping it in unless `mmap_ninja.durability(False)`.",
        "",
        *table,
        "",
        f"The same column from a `pa.Table` already in memory (`pq.read_table`, untimed): the cost of writing "
        f"it, {args.repeats} runs of each, taking turns. The per-sample path is what a map of the column took "
        f"before `mmap_ninja.arrow`: a numpy array per sample (`chunk.to_numpy(zero_copy_only=False)`), each "
        f"checked and written by `RaggedMmap.from_generator`.",
        "",
        *in_memory,
        "",
        "Peak resident memory that each case adds to a process of its own (the high-water mark `VmHWM` after "
        "the case minus before it, imports done); the pages of the file and of the map written are the page "
        "cache's, not counted here:",
        "",
        *memory,
        "",
        f"In short: decoding the row groups is {medians[DECODE] / medians[NOT_FLUSHED]:.0%} of the time of "
        f"`from_arrow` not flushed ({medians[NOT_FLUSHED]:.2f} s; {medians[FLUSHED]:.2f} s flushed), against "
        f"{medians[HF]:.2f} s for `Dataset.from_parquet`, which does not flush. Writing from Arrow's buffers "
        f"costs {writing:.2f} s for the whole column, "
        + (f"{per_sample_unflushed / writing:.2f}x faster" if per_sample_unflushed >= writing else
           f"{writing / per_sample_unflushed:.2f}x slower")
        + f" than through a numpy array per sample (not flushed either). `from_arrow` holds a row group at a time: "
        f"{peaks[FLUSHED]:,.0f} MiB at its peak, of which pyarrow's decoding of a row group alone takes "
        f"{peaks[DECODE]:,.0f}, against {peaks[READ_TABLE]:,.0f} MiB for `pq.read_table` and "
        f"{peaks[HF]:,.0f} MiB for `Dataset.from_parquet`.",
        "",
        f"`arrow.to_arrow(m)` of that map ({nbytes / 1e6:,.0f} MB, {rows:,} samples), medians of "
        f"{args.repeats * 4} and {args.repeats} calls; the offsets (`int64`, {rows + 1:,}) are built each time:",
        "",
        *costs,
        "",
        f"Machine: {describe_machine()}, mmap_ninja {mmap_ninja.__version__}, pyarrow {pa.__version__}, "
        f"datasets {datasets.__version__}, numpy {np.__version__}. Load average (1 min) just before the run: "
        f"{load:.2f}; the machine is shared, so times vary from run to run.",
    ])
    print(report)
    (HERE / "ARROW.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
