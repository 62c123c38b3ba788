"""Random batches from mmap_ninja, side by side with mmap_ninja 0.9.0, pyarrow, a numpy
per-sample loop and memcpy: the same data, the same random indices, one run.

    python benchmarks/bench_batches.py [--quick] [--repeats N] [--data DIR]

Prints a markdown table of the median time per batch and writes it, with the machine, the
versions and the targets, to benchmarks/RESULTS.md, and a plot to benchmarks/results.png.
Needs the ``bench`` extra (pyarrow, matplotlib). mmap_ninja 0.9.0, which has the same import
name, is installed into benchmarks/.mmap_ninja-0.9.0 on first use and timed in a subprocess.

The baselines:
- pyarrow: the same data in an Arrow IPC file, memory-mapped; ``take`` then conversion to
  numpy arrays (split at the offsets) or to Python objects (``to_pylist``);
- numpy: per-sample slicing of the mapped arrays in a Python loop (for fixed rows, numpy's
  fancy indexing of the ``np.memmap``);
- memcpy: one copy of as many bytes as the batch output holds, from a random place in the
  same mapped file into a preallocated buffer (a bound on any gather of those bytes).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # idle BLAS threads would compete for the cores

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import interleaved_medians, median_per_item  # noqa: E402

import mmap_ninja  # noqa: E402
from mmap_ninja import numpy as np_ninja  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402
from mmap_ninja.string import StringsMmap  # noqa: E402

REFERENCE_SITE = HERE / ".mmap_ninja-0.9.0"
LIBRARIES = ["mmap_ninja", "mmap_ninja 0.9.0", "pyarrow", "numpy", "memcpy"]


# -- data -------------------------------------------------------------------------------------

def sizes(quick: bool) -> dict:
    scale = 10 if quick else 1
    return {"tokens": 100_000 // scale, "strings": 50_000 // scale, "images": 80 if quick else 200,
            "rows": 1_000_000 // scale}


def make_texts(rng, count: int) -> list:
    """Texts of about 500 UTF-8 bytes: half ASCII, half Cyrillic and CJK mixed with ASCII."""
    ascii_words = ["data", "loader", "memory", "map", "batch", "sample", "token", "ninja", "fast"]
    other_words = ["память", "данные", "пакет", "数据", "加载", "内存", "ninja", "batch"]
    texts = []
    for k in range(count):
        words = ascii_words if k % 2 == 0 else other_words
        text = ""
        while len(text.encode()) < 480:
            text += words[rng.integers(len(words))] + " "
        texts.append(text)
    return texts


def write_arrow(path: Path, columns: dict) -> None:
    import pyarrow as pa

    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def list_array(samples: list, value_type):
    import pyarrow as pa

    lengths = np.fromiter((s.size for s in samples), dtype=np.int64, count=len(samples))
    offsets = np.zeros(len(samples) + 1, dtype=np.int32 if lengths.sum() < 2**31 else np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(np.concatenate([s.ravel() for s in samples]), type=value_type)
    array_type = pa.ListArray if offsets.dtype == np.int32 else pa.LargeListArray
    return array_type.from_arrays(pa.array(offsets), values)


def build_data(data: Path, quick: bool) -> None:
    """Write every dataset once, as mmap_ninja maps and as Arrow files."""
    import pyarrow as pa

    marker = data / ("ready-quick" if quick else "ready")
    if marker.exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    n = sizes(quick)
    rng = np.random.default_rng(0)
    print("writing the datasets to", data, flush=True)

    lengths = rng.integers(16, 512, size=n["tokens"])
    tokens = [rng.integers(0, 32_000, size=length, dtype=np.int32) for length in lengths]
    RaggedMmap.from_lists(data / "tokens", tokens, verbose=True)
    write_arrow(data / "tokens.arrow", {"tokens": list_array(tokens, pa.int32())})
    del tokens

    texts = make_texts(rng, n["strings"])
    StringsMmap.from_strings(data / "strings", texts, verbose=True)
    write_arrow(data / "strings.arrow", {"text": pa.array(texts, type=pa.string())})
    del texts

    heights = rng.choice([480, 427, 640, 375, 512, 360, 424, 500], size=n["images"])
    widths = rng.choice([640, 640, 480, 500, 612, 640, 427, 333], size=n["images"])
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in zip(heights, widths)]
    RaggedMmap.from_lists(data / "images", images, verbose=True)
    write_arrow(data / "images.arrow", {"pixels": list_array(images, pa.uint8()),
                                        "height": pa.array(heights), "width": pa.array(widths)})
    del images

    rows = np_ninja._empty(data / "rows", np.float32, (n["rows"], 128), "C")
    for start in range(0, n["rows"], 100_000):
        stop = min(start + 100_000, n["rows"])
        rows[start:stop] = rng.standard_normal((stop - start, 128), dtype=np.float32)
    rows.flush()
    del rows
    marker.write_text("ok")


def draw_indices(data: Path, quick: bool, repeats: int) -> dict:
    n = sizes(quick)
    rng = np.random.default_rng(1)
    indices = {
        "tokens": rng.integers(0, n["tokens"], size=(repeats, 256)),
        "strings": rng.integers(0, n["strings"], size=(repeats, 256)),
        # texts at even positions are ASCII, at odd positions Cyrillic and CJK (see make_texts)
        "strings_ascii": 2 * rng.integers(0, n["strings"] // 2, size=(repeats, 256)),
        "strings_unicode": 2 * rng.integers(0, n["strings"] // 2, size=(repeats, 256)) + 1,
        "images": rng.integers(0, n["images"], size=(repeats, 32)),
        "rows": rng.integers(0, n["rows"], size=(repeats, 1024)),
        "tokens_single": rng.integers(0, n["tokens"], size=(max(repeats // 4, 10), 1000)),
        "strings_single": rng.integers(0, n["strings"], size=(max(repeats // 4, 10), 1000)),
    }
    np.savez(data / "indices.npz", **indices)
    return indices


def warm_page_cache(data: Path) -> None:
    """Read every file once, so that all libraries read from memory."""
    for path in data.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


# -- mmap_ninja 0.9.0 -----------------------------------------------------------------------

def reference_090(data: Path, rounds: int = 3) -> tuple:
    """``(median seconds of mmap_ninja 0.9.0, median ratio 0.9.0 / mmap_ninja)`` for each case
    0.9.0 can do, from subprocesses that alternate the two libraries (0.9.0 is installed on
    first use)."""
    if not (REFERENCE_SITE / "mmap_ninja").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                        str(REFERENCE_SITE), "mmap-ninja==0.9.0"], check=True)

    def run(site: str) -> dict:
        proc = subprocess.run([sys.executable, str(HERE / "_run_worker.py"), site, str(data)],
                              capture_output=True, text=True, check=True)
        return json.loads(proc.stdout)

    pairs = [(run(str(REFERENCE_SITE)), run("-")) for _ in range(rounds)]
    times = {case: statistics.median(old[case] for old, _ in pairs) for case in pairs[0][0]}
    ratios = {case: statistics.median(old[case] / new[case] for old, new in pairs) for case in pairs[0][0]}
    return times, ratios


# -- the cases --------------------------------------------------------------------------------

class Memcpy:
    """One copy of ``nbytes`` from a random place in a mapped file into a preallocated buffer."""

    def __init__(self, source: np.ndarray, seed: int = 2):
        self.source = source.reshape(-1).view(np.uint8)
        self.rng = np.random.default_rng(seed)

    def of(self, nbytes: int):
        buffer = np.empty(nbytes, dtype=np.uint8)
        starts = self.rng.integers(0, self.source.size - nbytes, size=4096)
        position = iter(np.resize(starts, 1 << 20).tolist())

        def copy(_):
            start = next(position)
            np.copyto(buffer, self.source[start:start + nbytes])

        return copy


def arrow_column(path: Path, name: str):
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    return table.column(name).combine_chunks()


def split(taken) -> list:
    """A pyarrow list array as a list of numpy arrays (views of its values)."""
    values = taken.values.to_numpy()
    offsets = taken.offsets.to_numpy()
    return [values[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]


def run_cases(data: Path, indices: dict) -> tuple:
    """``(rows of the table, two-thread figures)``; times in seconds."""
    tokens = RaggedMmap(data / "tokens")
    strings = StringsMmap(data / "strings")
    images = RaggedMmap(data / "images")
    rows = np_ninja.open_existing(data / "rows")
    token_col = arrow_column(data / "tokens.arrow", "tokens")
    text_col = arrow_column(data / "strings.arrow", "text")
    pixel_col = arrow_column(data / "images.arrow", "pixels")
    import pyarrow as pa

    heights = pa.ipc.open_file(pa.memory_map(str(data / "images.arrow"))).read_all().column("height").to_numpy()
    widths = pa.ipc.open_file(pa.memory_map(str(data / "images.arrow"))).read_all().column("width").to_numpy()
    starts, ends, flat = tokens.starts, tokens.ends, tokens.memmap
    s_starts, s_ends = strings.starts, strings.ends
    s_bytes = np.memmap(data / "strings" / "data.ninja", dtype=np.uint8, mode="r")
    i_starts, i_ends, i_flat = images.starts, images.ends, images.memmap
    memcpy_tokens, memcpy_images, memcpy_rows = Memcpy(flat), Memcpy(i_flat), Memcpy(rows)
    memcpy_strings = Memcpy(s_bytes)

    tok = list(indices["tokens"])
    out_bytes = int(np.median([(ends[i] - starts[i]).sum() * 4 for i in tok]))
    padded_bytes = int(np.median([len(i) * (ends[i] - starts[i]).max() * 4 for i in tok]))
    text_bytes = int(np.median([(s_ends[i] - s_starts[i]).sum() for i in indices["strings"]]))
    image_bytes = int(np.median([(i_ends[i] - i_starts[i]).sum() for i in indices["images"]]))
    row_bytes = 1024 * 128 * 4

    def numpy_padded(idx):
        lengths = ends[idx] - starts[idx]
        out = np.zeros((len(idx), lengths.max()), dtype=flat.dtype)
        for k, (s, e) in enumerate(zip(starts[idx], ends[idx])):
            out[k, : e - s] = flat[s:e]
        return out

    def arrow_images(idx):
        taken = pixel_col.take(idx)
        return [a.reshape(heights[i], widths[i], 3) for a, i in zip(split(taken), idx)]

    cases = [
        ("tokens_list", "ragged list: 256 token sequences", {
            "mmap_ninja": lambda idx: tokens[idx],
            "pyarrow": lambda idx: split(token_col.take(idx)),
            "numpy": lambda idx: [flat[s:e] for s, e in zip(starts[idx], ends[idx])],
        }, tok),
        ("tokens_take", "ragged contiguous: 256 token sequences", {
            "mmap_ninja": lambda idx: tokens.take(idx),
            "pyarrow": lambda idx: token_col.take(idx).values.to_numpy(),
            "numpy": lambda idx: np.concatenate([flat[s:e] for s, e in zip(starts[idx], ends[idx])]),
            "memcpy": memcpy_tokens.of(out_bytes),
        }, tok),
        ("tokens_padded", "ragged padded: 256 token sequences", {
            "mmap_ninja": lambda idx: tokens.padded(idx),
            "numpy": numpy_padded,
            "memcpy": memcpy_tokens.of(padded_bytes),
        }, tok),
        ("strings_list", "strings: 256 texts of ~500 bytes", {
            "mmap_ninja": lambda idx: strings[idx],
            "pyarrow": lambda idx: text_col.take(idx).to_pylist(),
            "numpy": lambda idx: [bytes(s_bytes[s:e]).decode() for s, e in zip(s_starts[idx], s_ends[idx])],
            "memcpy": memcpy_strings.of(text_bytes),
        }, list(indices["strings"])),
        ("strings_ascii", "strings, ASCII only: 256 texts", {
            "mmap_ninja": lambda idx: strings[idx],
            "pyarrow": lambda idx: text_col.take(idx).to_pylist(),
            "numpy": lambda idx: [bytes(s_bytes[s:e]).decode() for s, e in zip(s_starts[idx], s_ends[idx])],
        }, list(indices["strings_ascii"])),
        ("strings_unicode", "strings, Cyrillic and CJK: 256 texts", {
            "mmap_ninja": lambda idx: strings[idx],
            "pyarrow": lambda idx: text_col.take(idx).to_pylist(),
            "numpy": lambda idx: [bytes(s_bytes[s:e]).decode() for s, e in zip(s_starts[idx], s_ends[idx])],
        }, list(indices["strings_unicode"])),
        ("strings_bytes", "strings as bytes: 256 texts", {
            "mmap_ninja": lambda idx: strings.get_bytes(idx),
            "pyarrow": lambda idx: [s.as_buffer().to_pybytes() for s in text_col.take(idx)],
            "numpy": lambda idx: [bytes(s_bytes[s:e]) for s, e in zip(s_starts[idx], s_ends[idx])],
            "memcpy": memcpy_strings.of(text_bytes),
        }, list(indices["strings"])),
        ("images_list", "images list: 32 of ~640x480x3", {
            "mmap_ninja": lambda idx: images[idx],
            "pyarrow": arrow_images,
            "numpy": lambda idx: [i_flat[i_starts[i]:i_ends[i]].reshape(heights[i], widths[i], 3) for i in idx],
        }, list(indices["images"])),
        ("images_take", "images contiguous: 32 of ~640x480x3", {
            "mmap_ninja": lambda idx: images.take(idx),
            "pyarrow": lambda idx: pixel_col.take(idx).values.to_numpy(),
            "numpy": lambda idx: np.concatenate([i_flat[i_starts[i]:i_ends[i]] for i in idx]),
            "memcpy": memcpy_images.of(image_bytes),
        }, list(indices["images"])),
        ("rows_take", "fixed rows: 1024 of 128 float32", {
            "mmap_ninja": lambda idx: np_ninja.take(rows, idx),
            "numpy": lambda idx: rows[idx],
            "memcpy": memcpy_rows.of(row_bytes),
        }, list(indices["rows"])),
    ]
    table = []
    for key, title, fns, arguments in cases:
        print("timing", title, flush=True)
        table.append((key, title, interleaved_medians(fns, arguments)))

    singles = [
        ("tokens_single", "single ragged[i]", {
            "mmap_ninja": lambda i: tokens[i],
            "pyarrow": lambda i: token_col[i].values.to_numpy(),
            "numpy": lambda i: flat[starts[i]:ends[i]],
        }, indices["tokens_single"].tolist()),
        ("strings_single", "single strings[i]", {
            "mmap_ninja": lambda i: strings[i],
            "pyarrow": lambda i: text_col[i].as_py(),
            "numpy": lambda i: bytes(s_bytes[s_starts[i]:s_ends[i]]).decode(),
        }, indices["strings_single"].tolist()),
    ]
    for key, title, fns, blocks in singles:
        print("timing", title, flush=True)
        table.append((key, title, {name: median_per_item(fn, blocks) for name, fn in fns.items()}))

    threads = {
        "ragged contiguous (tokens.take)": lambda idx: tokens.take(idx),
        "fixed rows (np_ninja.take)": lambda idx: np_ninja.take(rows, idx),
    }
    two_threads = {}
    for title, fn in threads.items():
        arguments = tok if "tokens" in title else list(indices["rows"])
        two_threads[title] = throughput(fn, arguments)
    return table, two_threads


def throughput(fn, arguments) -> dict:
    """Batches per second with one thread, and with two threads sharing the batches (at least
    2,000 of them, so that the run outlasts starting the threads)."""
    arguments = list(arguments) * max(1, 2000 // len(arguments))
    fn(arguments[0])
    start = time.perf_counter()
    for argument in arguments:
        fn(argument)
    one = len(arguments) / (time.perf_counter() - start)
    def run(part):
        for argument in part:
            fn(argument)  # each batch is dropped at once, as a training loop does

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        list(pool.map(run, [arguments[0::2], arguments[1::2]]))
        two = len(arguments) / (time.perf_counter() - start)
    return {"1 thread": one, "2 threads": two}


# -- report -----------------------------------------------------------------------------------

TARGETS = [
    ("tokens_list", "mmap_ninja 0.9.0", ">=", 20, "ragged list batch >= 20x faster than 0.9.0"),
    ("tokens_list", "pyarrow", ">=", 3, "ragged list batch >= 3x faster than pyarrow take+split"),
    ("tokens_take", "memcpy", "<=", 2, "contiguous batch within 2x of memcpy"),
    ("tokens_padded", "memcpy", "<=", 2, "padded batch within 2x of memcpy"),
    ("strings_list", "mmap_ninja 0.9.0", ">=", 8, "strings batch >= 8x faster than 0.9.0"),
    ("strings_list", "pyarrow", ">=", 1, "strings batch faster than pyarrow take().to_pylist()"),
    ("tokens_single", "mmap_ninja 0.9.0", ">=", 5, "single ragged[i] >= 5x faster than 0.9.0"),
    ("rows_take", "numpy", ">=", 1, "fixed-shape gather no slower than numpy fancy indexing"),
]


def ratio(times: dict, other: str):
    """``other``'s time over mmap_ninja's (> 1: mmap_ninja is faster), or None. For 0.9.0, the
    median of the ratios measured side by side in subprocesses."""
    if other == "mmap_ninja 0.9.0" and "0.9.0 / ours" in times:
        return times["0.9.0 / ours"]
    if other not in times or "mmap_ninja" not in times:
        return None
    return times[other] / times["mmap_ninja"]


def markdown(table, two_threads, machine: str) -> str:
    def cell(seconds):
        return "—" if seconds is None else f"{seconds * 1e6:,.1f}"

    lines = [
        "| case | " + " | ".join(LIBRARIES) + " | 0.9.0 / ours¹ | pyarrow / ours | ours / memcpy |",
        "|:--|" + "--:|" * (len(LIBRARIES) + 3),
    ]
    for _, title, times in table:
        to_090, to_arrow = ratio(times, "mmap_ninja 0.9.0"), ratio(times, "pyarrow")
        to_memcpy = ratio(times, "memcpy")
        lines.append(
            f"| {title} | " + " | ".join(cell(times.get(name)) for name in LIBRARIES)
            + f" | {'—' if to_090 is None else f'{to_090:.1f}x'}"
            + f" | {'—' if to_arrow is None else f'{to_arrow:.1f}x'}"
            + f" | {'—' if to_memcpy is None else f'{1 / to_memcpy:.2f}'} |"
        )
    by_key = {key: times for key, _, times in table}
    checks = ["| target | measured | met |", "|:--|--:|:-:|"]
    for key, other, sense, bound, text in TARGETS:
        value = ratio(by_key[key], other)
        measured = value if sense == ">=" else 1 / value
        met = measured >= bound if sense == ">=" else measured <= bound
        unit = "x faster" if sense == ">=" else "x memcpy's time"
        checks.append(f"| {text} | {measured:.2f}{unit} | {'yes' if met else 'no'} |")
    threads = ["| gather | 1 thread (batches/s) | 2 threads (batches/s) | speed-up |", "|:--|--:|--:|--:|"]
    for title, figures in two_threads.items():
        one, two = figures["1 thread"], figures["2 threads"]
        threads.append(f"| {title} | {one:,.0f} | {two:,.0f} | {two / one:.2f}x |")
    return "\n".join([
        "Median time per batch in microseconds (per sample for the single-sample rows), same data and "
        "same random indices for every library, measured in one run on " + machine + ".",
        "",
        *lines,
        "",
        "¹ mmap_ninja 0.9.0 has the same import name, so both libraries run these cases in subprocesses, "
        "alternately, three times; the ratio is the median of the three side-by-side ratios, and the "
        "0.9.0 column the median of its times.",
        "",
        "Targets, as ratios from this run:",
        "",
        *checks,
        "",
        "Batch gathers release the GIL while they copy; two threads gathering at once:",
        "",
        *threads,
    ])


def plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in LIBRARIES if any(name in times for _, _, times in table)]
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(table) + 1.5))
    height = 0.8 / len(names)
    for k, name in enumerate(names):
        ys = [row - 0.4 + height * (k + 0.5) for row in range(len(table))]
        xs = [times.get(name, np.nan) * 1e6 for _, _, times in table]
        ax.barh(ys, xs, height=height, label=name)
    ax.set_yticks(range(len(table)))
    ax.set_yticklabels([title for _, title, _ in table])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median time per batch (µs, log scale; single-sample rows: per sample)")
    ax.legend(loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="datasets 10x smaller (a smoke test)")
    parser.add_argument("--repeats", type=int, default=200, help="batches timed per case")
    parser.add_argument("--data", type=Path, default=HERE / ".data", help="where the datasets are kept")
    parser.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md and results.png go")
    args = parser.parse_args()
    import pyarrow

    data = args.data / ("quick" if args.quick else "full")
    build_data(data, args.quick)
    indices = draw_indices(data, args.quick, args.repeats)
    warm_page_cache(data)
    print("timing mmap_ninja 0.9.0 and mmap_ninja side by side (subprocesses)", flush=True)
    times_090, ratios_090 = reference_090(data)
    table, two_threads = run_cases(data, indices)
    for key, _, times in table:
        if key in times_090:
            times["mmap_ninja 0.9.0"] = times_090[key]
            times["0.9.0 / ours"] = ratios_090[key]
    machine = describe_machine()
    report = markdown(table, two_threads, machine)
    print()
    print(report)
    versions = (f"mmap_ninja {mmap_ninja.__version__}, mmap_ninja 0.9.0, pyarrow {pyarrow.__version__}, "
                f"numpy {np.__version__}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "RESULTS.md").write_text(
        "# Batch reads: mmap_ninja and the alternatives\n\n"
        f"Measured {datetime.date.today().isoformat()} with `python benchmarks/bench_batches.py"
        f"{' --quick' if args.quick else ''}` ({versions}).\n\n" + report
        + "\n\n![median time per batch](results.png)\n"
    )
    plot(table, args.out / "results.png")
    if not args.quick and args.out == HERE:
        update_performance_page(report)
    print(f"\nwrote {args.out / 'RESULTS.md'} and {args.out / 'results.png'}")


PERFORMANCE_PAGE = HERE.parent / "docs" / "performance.md"
MARKERS = ("<!-- results -->", "<!-- /results -->")


def page_section(report: str) -> str:
    """What the documentation's performance page shows of a report: its tables, without the
    introduction."""
    return report.split("\n", 2)[2]


def update_performance_page(report: str) -> None:
    """Put the tables of ``report`` between the results markers of docs/performance.md."""
    text = PERFORMANCE_PAGE.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    PERFORMANCE_PAGE.write_text(text[:start] + "\n" + page_section(report) + "\n" + text[end:])


if __name__ == "__main__":
    main()
