"""Converting a Megatron indexed dataset (``PREFIX.bin``/``PREFIX.idx``) into a ragged map: by
hard link (``mmap_ninja.megatron.to_ragged``, the default), by hard link reading the file once
for its CRC-32 (``checksum=True``), and by copy (``link=False``), against copying the ``.bin``
alone (``shutil.copyfile``, a floor for any conversion that copies) and against megatron-core's
own way to copy a dataset into a new pair (``IndexedDatasetBuilder.add_index`` then
``finalize``, as Megatron's ``tools/merge_datasets.py`` does).

    python benchmarks/bench_megatron.py [--sequences 500000] [--mean-length 512] [--repeats 5]

The pair is written once under ``benchmarks/.data/megatron`` with numpy, in the format
Megatron's builder writes (``int32`` tokens, random lengths in ``[1, 2 * mean-length)``: by
default about 1 GB), kept for later runs, and checked by reading it with megatron-core's
``IndexedDataset``. Each conversion writes a new output beside it, timed from the call until
the output is complete; removing it is not timed. The conversions take turns, in a rotating
order, so that all see the same machine load.

Three conditions, all fifteen kinds of call taking turns in one round:

- **hot, flushed**: the source is in the page cache (read whole before each call); every
  output is flushed to disk, as mmap_ninja flushes a build before swapping it in (the peers are
  followed by an ``fsync`` of what they wrote);
- **cold, flushed**: before each call (untimed), the source's pages are dropped from the page
  cache (``posix_fadvise(POSIX_FADV_DONTNEED)`` after an ``fsync``), so what reads it reads the
  disk (and whatever cache the host keeps beneath this machine's virtual disk);
- **hot, not flushed**: ``mmap_ninja.durability(False)``, and no ``fsync`` after the peers.

Prints a markdown table and writes it, with the machine and its load, to
benchmarks/MEGATRON.md. Needs ``torch`` and ``megatron-core`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import mmap
import os
import shutil
import struct
import sys
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
from mmap_ninja import megatron  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402

DATA = HERE / ".data" / "megatron"
CONDITIONS = ("hot, flushed", "cold, flushed", "hot, not flushed")


def megatron_core():
    """megatron-core's ``IndexedDataset`` and ``IndexedDatasetBuilder`` (imported here: it warns
    about optional GPU packages on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
    return IndexedDataset, IndexedDatasetBuilder


def write_pair(prefix: Path, sequences: int, mean_length: int, seed: int) -> None:
    """``PREFIX.bin``/``PREFIX.idx`` of random ``int32`` tokens, as Megatron's builder lays them
    out (the sequences back to back, one document per sequence), written by numpy."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 2 * mean_length, size=sequences).astype(np.int32)
    tmp = Path(f"{prefix}.bin.tmp")
    with open(tmp, "wb") as out:
        left = int(lengths.sum(dtype=np.int64))
        while left:
            step = min(left, 1 << 24)
            out.write(rng.integers(0, 50_257, size=step, dtype=np.int32).tobytes())
            left -= step
    pointers = np.zeros(sequences, dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * 4, out=pointers[1:])
    with open(f"{prefix}.idx", "wb") as out:
        out.write(megatron.HEADER + struct.pack("<QB", 1, megatron.DTYPE_CODES[np.dtype(np.int32)]))
        out.write(struct.pack("<QQ", sequences, sequences + 1))
        out.write(lengths.tobytes() + pointers.tobytes() + np.arange(sequences + 1, dtype=np.int64).tobytes())
    os.replace(tmp, f"{prefix}.bin")


def fsync(*paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict(path: Path) -> None:
    """Drop the pages of ``path`` from the page cache (flushed first, so that all are clean)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    """Read all of ``path``, so that it is in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def resident(path: Path) -> float:
    """The fraction of the pages of ``path`` in the page cache (``mincore``)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vector = ctypes.create_string_buffer(pages)
            if _libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(byte & 1 for byte in vector.raw) / pages
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def convert(prefix: Path, out: Path, **options) -> str:
    return megatron._to_ragged(prefix, out, **options)[1]


def copy_bin(prefix: Path, out: Path, flush: bool) -> None:
    shutil.copyfile(f"{prefix}.bin", f"{out}.bin")
    if flush:
        fsync(f"{out}.bin")


def megatron_add_index(prefix: Path, out: Path, flush: bool) -> None:
    builder = megatron_core()[1](f"{out}.bin", dtype=np.int32)
    builder.add_index(str(prefix))
    builder.finalize(f"{out}.idx")
    if flush:
        fsync(f"{out}.bin", f"{out}.idx")


def remove(out: Path) -> None:
    if out.is_dir():
        shutil.rmtree(out)
    for suffix in (".bin", ".idx"):
        Path(f"{out}{suffix}").unlink(missing_ok=True)


def cases(prefix: Path, flush: bool) -> dict:
    """What is timed: each call writes ``out`` from the pair at ``prefix``."""
    def ours(**options):
        def run(out):
            with mmap_ninja.durability(flush):
                return convert(prefix, out, **options)
        return run

    return {
        "`to_ragged` / `convert --from megatron`: hard link": ours(),
        "hard link, `checksum=True` / `--checksum`": ours(checksum=True),
        "copy, `link=False` / `--copy`": ours(link=False),
        "`shutil.copyfile` of the .bin alone": lambda out: copy_bin(prefix, out, flush),
        "megatron-core `IndexedDatasetBuilder.add_index` + `finalize`":
            lambda out: megatron_add_index(prefix, out, flush),
    }


def timed(root: Path, build, sources: tuple, cold: bool):
    """A self-timed call for ``interleaved_medians``: ``build(path)`` into a new path, timed,
    then the output removed (untimed). Before each call (untimed) the files ``sources`` are read
    into the page cache, and with ``cold`` dropped from it again, and everything written so far
    is flushed (``os.sync``), so that no call pays for the writes of the one before."""
    counter = iter(range(1 << 30))

    def run(_):
        out = root / f"out-{next(counter)}"
        for path in sources:
            warm(path)
            if cold:
                evict(path)
        os.sync()
        start = time.perf_counter()
        build(out)
        seconds = time.perf_counter() - start
        remove(out)
        return seconds

    return run


def check(prefix: Path, root: Path, name: str, build, lengths: np.ndarray) -> str:
    """How ``build`` did it, when its output is right (else ``"WRONG"``): each map read back
    against megatron-core's ``IndexedDataset`` on 1,000 sequences, and ``verify()``."""
    IndexedDataset = megatron_core()[0]
    out = root / "check"
    how = build(out)
    try:
        theirs = IndexedDataset(str(prefix))
        picks = np.linspace(0, len(lengths) - 1, 1000).astype(np.int64)
        if out.is_dir():
            m = RaggedMmap(out)
            right = len(m) == len(lengths) and all(np.array_equal(m[i], theirs[i]) for i in picks.tolist()) \
                and m.verify() == []
            linked = (out / "data.ninja").stat().st_ino == Path(f"{prefix}.bin").stat().st_ino
            how = f"{how}{' (same inode)' if linked else ''}"
        elif Path(f"{out}.idx").exists():
            copied = IndexedDataset(str(out))
            right = len(copied) == len(lengths) and all(np.array_equal(copied[i], theirs[i]) for i in picks.tolist())
            del copied
            how = "copied"
        else:
            right = os.path.getsize(f"{out}.bin") == os.path.getsize(f"{prefix}.bin")
            how = "copied"
        del theirs
    finally:
        remove(out)
    return how if right else "WRONG"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=500_000)
    parser.add_argument("--mean-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="conversions of each kind per condition")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    megatron_core()  # imported once, before any timing
    DATA.mkdir(parents=True, exist_ok=True)
    prefix = DATA / f"corpus-{args.sequences}-{args.mean_length}-{args.seed}"
    source = Path(f"{prefix}.bin")
    if not source.exists() or not Path(f"{prefix}.idx").exists():
        write_pair(prefix, args.sequences, args.mean_length, args.seed)
    dtype, lengths, _ = megatron.read_index(prefix)
    nbytes = source.stat().st_size
    index_bytes = Path(f"{prefix}.idx").stat().st_size
    root = DATA / "outputs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    load = os.getloadavg()[0]
    medians = {}
    fastest = {}
    residency = {}
    try:
        hows = {name: check(prefix, root, name, build, lengths) for name, build in cases(prefix, True).items()}
        sources = (source, Path(f"{prefix}.idx"))
        for condition in CONDITIONS:  # what the page cache holds before a call of each condition
            for path in sources:
                warm(path)
                if condition.startswith("cold"):
                    evict(path)
            residency[condition] = resident(source)
        fns = {(condition, name): timed(root, build, sources, condition.startswith("cold"))
               for condition in CONDITIONS for name, build in cases(prefix, condition != "hot, not flushed").items()}
        samples = {key: [] for key in fns}

        def recording(key, fn):
            def run(argument):
                samples[key].append(fn(argument))
                return samples[key][-1]
            return run

        timings = interleaved_medians({key: recording(key, fn) for key, fn in fns.items()},
                                      list(range(args.repeats)), chunk=1, warmup=1, self_timed=True)
        for (condition, name), seconds in timings.items():
            medians.setdefault(condition, {})[name] = seconds
            fastest.setdefault(condition, {})[name] = min(samples[condition, name][1:])  # past the warm-up call
            print(condition, name, [round(t, 3) for t in samples[condition, name]], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    names = list(medians[CONDITIONS[0]])
    linked = names[0]
    header = " | ".join(f"{condition}: s" for condition in CONDITIONS)
    table = [f"| conversion | how (checked) | {header} | hot, flushed: vs link |",
             "|:--|:--|" + "--:|" * len(CONDITIONS) + "--:|"]
    for name in names:
        seconds = [(medians[c][name], fastest[c][name]) for c in CONDITIONS]
        ratio = medians[CONDITIONS[0]][name] / medians[CONDITIONS[0]][linked]
        cells = " | ".join(f"{median:.3f} ({best:.3f})" for median, best in seconds)
        table.append(f"| {name} | {hows[name]} | {cells} | {ratio:,.1f}x |")
    print("\n".join(table), flush=True)

    from importlib.metadata import version

    per_sequence = medians[CONDITIONS[0]][linked] / len(lengths) * 1e9
    copy_rate = nbytes / medians[CONDITIONS[0]]["copy, `link=False` / `--copy`"] / 1e6
    floor = [name for name in names if name.startswith("`shutil")][0]
    floor_rate = nbytes / medians[CONDITIONS[0]][floor] / 1e6
    report = "\n".join([
        "# Converting Megatron's indexed datasets into ragged maps",
        "",
        f"Run on {datetime.date.today()}:",
        "",
        "```",
        "python benchmarks/bench_megatron.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"A pair of {len(lengths):,} `{dtype}` sequences of random lengths in [1, {2 * args.mean_length}): "
        f"`.bin` {nbytes / 1e9:.2f} GB, `.idx` {index_bytes / 1e6:.1f} MB, written once by numpy in the layout of "
        f"Megatron's `IndexedDatasetBuilder` (sequences back to back, one document per sequence) and read by "
        f"megatron-core's `IndexedDataset` to check every output. Medians of {args.repeats} conversions of each "
        f"kind per condition (in brackets the fastest), all taking turns in one round; each writes a new "
        f"output on the same ext4 file system as the pair, timed until it is complete (a map: built, flushed "
        f"unless said otherwise, swapped in and opened), and removing it is not timed.",
        "",
        *table,
        "",
        f"- **hot**: before each call (untimed), the `.bin` and the `.idx` were read whole into the page cache "
        f"({residency['hot, flushed']:.0%} of the `.bin`'s pages resident then, by `mincore`). **cold**: "
        f"then flushed and their pages dropped with "
        f"`posix_fadvise(POSIX_FADV_DONTNEED)` ({residency['cold, flushed']:.0%} of the `.bin` resident after "
        f"that). Before every call, of every condition, `os.sync()` flushed whatever was still to be "
        f"written, so that none paid for the writes of another. This machine is a virtual one, and the host "
        f"may still hold the file in its own cache beneath the virtual disk, so cold reads here may be faster "
        f"than a real disk's.",
        "- **flushed**: mmap_ninja's default durability, which flushes a build (`fsync`) before swapping it "
        "in; the peers were followed by an `fsync` of the files they wrote. **not flushed**: "
        "`mmap_ninja.durability(False)`, and no `fsync` after the peers.",
        f"- **hard link** (this file system has no copy-on-write clones: `FICLONE` fails with `EOPNOTSUPP` on "
        f"ext4, so `to_ragged` links): nothing of the `.bin` is read or written; the time goes to reading the "
        f"index and writing the map's offsets and lengths, {per_sequence:,.0f} ns per sequence hot and flushed, "
        f"whatever the size of the `.bin`. Flushing the linked file costs nothing when it is already on disk; "
        f"a `.bin` just written and still in the page cache would be written to disk by that `fsync`.",
        "- **hard link, `checksum=True`**: the `.bin` read once for its CRC-32 (from the page cache when hot, "
        "from the disk when cold); nothing copied or written.",
        f"- **copy**: the values copied file to file by the kernel (`copy_file_range`) while their CRC-32 is "
        f"computed on a second thread, {copy_rate:,.0f} MB/s hot and flushed: on 2 cores the CRC-32 (what "
        f"`checksum=True` adds to the link) competes with the copy. "
        f"The floor for any copy is `shutil.copyfile` of the `.bin` alone, {floor_rate:,.0f} MB/s, with no "
        f"index and no checksum; megatron-core's `add_index` copies it with `shutil.copyfileobj` and rewrites "
        f"the index.",
        "",
        f"Machine: {describe_machine()}, mmap_ninja {mmap_ninja.__version__}, megatron-core "
        f"{version('megatron-core')}, torch {version('torch')}, numpy {np.__version__}. Load average (1 min) "
        f"just before the run: {load:.2f}; the machine is shared, so times vary from run to run.",
    ])
    print(report)
    (HERE / "MEGATRON.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
