"""Token sequences on their way to a model: padded and packed batches, and DataLoader epochs, from
mmap_ninja, Megatron-Core's IndexedDataset, pyarrow and Hugging Face datasets, on the same data
and the same random indices in one run.

    python benchmarks/bench_loaders.py [--quick] [--samples 200000] [--repeats 1000]
                                       [--epoch-samples N] [--rounds 7] [--data DIR] [--out DIR]

The data: ``--samples`` int32 token sequences of 1 to 1,189 tokens (mean about 595), written once
into ``--data`` as a ``RaggedMmap``, a Megatron ``IndexedDataset`` (.bin/.idx), an Arrow IPC file
of one ``large_list<int32>`` column (read memory-mapped) and a Hugging Face dataset saved to disk
(loaded memory-mapped with ``load_from_disk``).

The cases:
1. a padded ``int64`` batch of 256 and its lengths; also filling an output array of that size
   once (``np.full``), a bound on any padded batch;
2. a packed batch for variable-length attention: ``input_ids`` (the sequences back to back),
   ``cu_seqlens`` (``int32``, B + 1), ``position_ids`` and ``max_seqlen``, as tensors;
3. ``torch.utils.data.DataLoader`` epochs, ``batch_size=256``, shuffled, a collate giving
   ``int64`` ``input`` and ``lengths`` tensors, with ``num_workers=0`` and ``num_workers=2``;
4. ``mmap_ninja.pytorch.Loader`` (threads) on the same map.

In cases 1 and 2 the contenders take turns over the same batches (``--repeats`` of them) and
the medians are compared; in cases 3 and 4 each loader runs ``--rounds`` epochs, taking turns,
after one untimed epoch, and the median samples/s are compared. Ratios are against the best
peer of the same run. Prints a markdown table and writes it, with the machine and versions, to
``--out``/LOADERS.md, and a plot of the ratios to ``--out``/loaders.png. Needs the ``bench`` extra.
Parts of ``mmap_ninja.pytorch`` that this version does not have are skipped with a message.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # idle BLAS threads would compete for the cores

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import interleaved_medians  # noqa: E402
from bench_batches import describe_machine, warm_page_cache  # noqa: E402

import mmap_ninja  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402

BATCH = 256
MAX_LENGTH = 1190  # lengths are drawn from [1, MAX_LENGTH): mean about 595
VOCAB = 50_000


# -- the optional parts of mmap_ninja.pytorch -------------------------------------------------

def torch_api():
    """What this version of ``mmap_ninja.pytorch`` offers of the loaders timed here (``None``
    for what it lacks), and a line for each missing part."""
    import mmap_ninja.pytorch as mp

    api, missing = {}, []
    batches = getattr(mp, "RaggedBatches", None)
    api["RaggedBatches"] = batches if batches is not None and "dtype" in inspect.signature(batches).parameters else None
    if api["RaggedBatches"] is None:
        missing.append("mmap_ninja.pytorch.RaggedBatches(..., dtype=...)")
    for name in ("collate", "collate_packed", "Loader"):
        api[name] = getattr(mp, name, None)
        if api[name] is None:
            missing.append(f"mmap_ninja.pytorch.{name}")
    return api, missing


# -- data -------------------------------------------------------------------------------------

def build_data(data: Path, n: int) -> None:
    """Write the same ``n`` sequences once in every contender's format."""
    marker = data / "ready.json"
    settings = {"samples": n, "seed": 0, "max_length": MAX_LENGTH, "vocab": VOCAB}
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return
    import pyarrow as pa
    import torch

    with warnings.catch_warnings():  # Megatron warns that it found no Transformer Engine
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    import datasets

    data.mkdir(parents=True, exist_ok=True)
    print("writing the datasets to", data, flush=True)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, MAX_LENGTH, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = rng.integers(0, VOCAB, size=int(offsets[-1]), dtype=np.int32)
    sequences = np.split(values, offsets[1:-1])

    start = time.perf_counter()
    with mmap_ninja.durability(False):
        RaggedMmap.from_lists(data / "mmap_ninja", sequences)
    print(f"  mmap_ninja RaggedMmap.from_lists: {time.perf_counter() - start:.1f} s", flush=True)

    start = time.perf_counter()
    builder = IndexedDatasetBuilder(str(data / "megatron.bin"), dtype=np.int32)
    for sequence in sequences:
        builder.add_item(torch.from_numpy(sequence))
    builder.end_document()
    builder.finalize(str(data / "megatron.idx"))
    print(f"  Megatron IndexedDatasetBuilder: {time.perf_counter() - start:.1f} s", flush=True)

    start = time.perf_counter()
    table = pa.table({"tokens": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))})
    with pa.OSFile(str(data / "tokens.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    print(f"  Arrow IPC file: {time.perf_counter() - start:.1f} s", flush=True)

    start = time.perf_counter()
    datasets.disable_progress_bars()
    datasets.Dataset(table).save_to_disk(str(data / "hf"))
    print(f"  Hugging Face Dataset.save_to_disk: {time.perf_counter() - start:.1f} s", flush=True)
    marker.write_text(json.dumps(settings))


class Contenders:
    """Every contender's copy of the data, opened as a training job would."""

    def __init__(self, data: Path):
        import datasets
        import pyarrow as pa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.ninja = RaggedMmap(data / "mmap_ninja")
        self.megatron = IndexedDataset(str(data / "megatron"))
        self.megatron_lengths = self.megatron.sequence_lengths
        table = pa.ipc.open_file(pa.memory_map(str(data / "tokens.arrow"), "r")).read_all()
        self.arrow = table.column("tokens").combine_chunks()
        datasets.disable_progress_bars()
        self.hf = datasets.load_from_disk(str(data / "hf")).with_format("numpy")
        for dataset in (self.ninja, self.megatron, self.arrow, self.hf):
            prefault(dataset)


def prefault(dataset) -> None:
    """Read every byte a contender maps (its samples and its offsets), so that what is timed
    reads pages this process has mapped already, as a long training run does, and not the page
    faults of a first touch (the files are in the page cache either way)."""
    import pyarrow as pa

    from mmap_ninja.ragged import RaggedMmap

    if isinstance(dataset, RaggedMmap):
        for start in range(0, len(dataset), 16_384):
            dataset.take(slice(start, start + 16_384))
    elif isinstance(dataset, pa.Array):
        dataset.offsets.to_numpy().sum()
        dataset.flatten().to_numpy().sum()
    elif hasattr(dataset, "bin_reader"):  # Megatron's IndexedDataset
        index = dataset.index
        for array in (index.sequence_lengths, index.sequence_pointers, index.document_indices):
            array.sum()
        dataset.bin_reader.read(dtype=index.dtype, count=int(index.sequence_lengths.sum(dtype=np.int64)),
                                offset=0).sum()
    elif hasattr(dataset, "data") and hasattr(dataset.data, "table"):  # a Hugging Face Dataset
        for chunk in dataset.data.table.column("tokens").chunks:
            prefault(chunk)
    elif hasattr(dataset, "ragged"):  # RaggedBatches
        prefault(dataset.ragged)
    else:
        raise TypeError(f"no way to prefault a {type(dataset).__name__}")


def prefault_worker(_) -> None:
    """``worker_init_fn``: DataLoader workers map the files anew, so they read them once too."""
    from torch.utils.data import get_worker_info

    prefault(get_worker_info().dataset)


# -- padding and packing as a user of the peers would write them ------------------------------

def pad_rows_zeros(views, lengths: np.ndarray) -> tuple:
    """Rows copied into ``np.zeros`` (the fastest numpy padding measured here, see PAD_VARIANTS)."""
    out = np.zeros((len(views), lengths.max()), dtype=np.int64)
    for row, view, length in zip(out, views, lengths.tolist()):
        row[:length] = view
    return out, lengths


def pad_rows_full(views, lengths: np.ndarray) -> tuple:
    out = np.full((len(views), lengths.max()), 0, dtype=np.int64)
    for row, view, length in zip(out, views, lengths.tolist()):
        row[:length] = view
    return out, lengths


def pad_mask(flat: np.ndarray, lengths: np.ndarray) -> tuple:
    """Values back to back, put in place by one boolean mask."""
    width = lengths.max()
    out = np.zeros((len(lengths), width), dtype=np.int64)
    out[np.arange(width) < lengths[:, None]] = flat
    return out, lengths


def lengths_of(views) -> np.ndarray:
    return np.fromiter(map(len, views), dtype=np.int64, count=len(views))


def pack(flat: np.ndarray, lengths: np.ndarray, dtype) -> dict:
    """A packed batch from its values back to back and its lengths."""
    import torch

    cu_seqlens = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu_seqlens[1:])
    total = int(cu_seqlens[-1])
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu_seqlens[:-1].astype(np.int64), lengths)
    return {"input_ids": torch.from_numpy(flat.astype(dtype, copy=False)), "cu_seqlens": torch.from_numpy(cu_seqlens),
            "position_ids": torch.from_numpy(positions), "max_seqlen": int(lengths.max()) if total else 0}


def pack_views(views, lengths: np.ndarray, dtype) -> dict:
    return pack(np.concatenate(views, dtype=dtype) if len(views) else np.empty(0, dtype), lengths, dtype)


def pad_collate(samples) -> dict:
    """A plain padding collate: a list of 1-d arrays to ``int64`` ``input`` (B, L) and ``lengths``."""
    import torch

    lengths = lengths_of(samples)
    padded, lengths = pad_rows_zeros(samples, lengths)
    return {"input": torch.from_numpy(padded), "lengths": torch.from_numpy(lengths)}


# -- cases 1 and 2: batches -------------------------------------------------------------------

def batch_cases(c: Contenders, api: dict, batches: np.ndarray, calibrate: int) -> tuple:
    """``(rows, notes)``: rows ``(case key, contender, library, median seconds)``."""
    lists = [b.tolist() for b in batches]
    widths = [int((c.ninja.ends[b] - c.ninja.starts[b]).max()) for b in batches]
    ks = list(range(len(batches)))
    # one contiguous copy of as many bytes as a batch's samples hold, from a random place of the map
    flat = c.ninja.memmap
    counts = [int((c.ninja.ends[b] - c.ninja.starts[b]).sum()) for b in batches]
    copy_from = np.random.default_rng(2).integers(0, flat.size - max(counts), size=len(batches)).tolist()
    buffer = np.empty(max(counts), dtype=flat.dtype)

    def copy_tokens(k):
        np.copyto(buffer[:counts[k]], flat[copy_from[k]:copy_from[k] + counts[k]])
    ninja, megatron, meg_len, arrow, hf = c.ninja, c.megatron, c.megatron_lengths, c.arrow, c.hf

    def megatron_views(k):
        return [megatron[i] for i in lists[k]], meg_len[batches[k]].astype(np.int64)

    def arrow_flat(k):
        taken = arrow.take(batches[k])
        offsets = taken.offsets.to_numpy()
        return taken.flatten().to_numpy(), np.diff(offsets)

    def arrow_views(k):
        flat, lengths = arrow_flat(k)
        ends = np.cumsum(lengths).tolist()
        return [flat[e - n:e] for e, n in zip(ends, lengths.tolist())], lengths

    def hf_numpy(k):
        views = hf[lists[k]]["tokens"]
        return views, lengths_of(views)

    def hf_getitems(k):
        views = [row["tokens"] for row in hf.__getitems__(lists[k])]
        return views, lengths_of(views)

    def ninja_views(k):
        views = ninja[batches[k]]
        return views, lengths_of(views)

    # each peer's fastest numpy padding, measured on the first batches
    sources = {"Megatron": megatron_views, "pyarrow": arrow_views, "HF numpy format": hf_numpy,
               "HF __getitems__": hf_getitems}
    pads = {"zeros + row copies": pad_rows_zeros, "np.full + row copies": pad_rows_full,
            "concatenate + boolean mask": lambda views, lengths: pad_mask(np.concatenate(views), lengths)}
    chosen, notes = {}, []
    for library, source in sources.items():
        fns = {name: (lambda k, s=source, p=pad: p(*s(k))) for name, pad in pads.items()}
        if library == "pyarrow":
            fns["flatten + boolean mask"] = lambda k: pad_mask(*arrow_flat(k))
        medians = interleaved_medians(fns, ks[:calibrate])
        best = min(medians, key=medians.get)
        chosen[library] = fns[best]
        notes.append(f"{library}: " + ", ".join(f"{name} {t * 1e6:,.0f}" for name, t in medians.items())
                     + f" µs; kept {best}")

    packed_dtype = np.int64
    if api["collate_packed"] is not None:
        packed_dtype = api["collate_packed"](ninja.take(batches[0]))["input_ids"].numpy().dtype
    list_case = {
        ("mmap_ninja", "m[indices]"): lambda k: ninja[batches[k]],
        ("Megatron", "[ds[i] for i in indices]"): lambda k: [megatron[i] for i in lists[k]],
        ("pyarrow", "take, views at the offsets"): arrow_views,
        ("HF", "numpy format ds[indices]"): lambda k: hf[lists[k]]["tokens"],
        ("HF", "numpy format __getitems__"): lambda k: [row["tokens"] for row in hf.__getitems__(lists[k])],
    }
    padded_case = {
        ("mmap_ninja", "padded(indices, dtype=np.int64)"): lambda k: ninja.padded(batches[k], pad_value=0,
                                                                                  dtype=np.int64),
        ("mmap_ninja", "m[indices] + numpy padding"): lambda k: pad_rows_zeros(*ninja_views(k)),
        ("Megatron", "views + numpy padding"): chosen["Megatron"],
        ("pyarrow", "take + numpy padding"): chosen["pyarrow"],
        ("HF", "numpy format + numpy padding"): chosen["HF numpy format"],
        ("HF", "__getitems__ + numpy padding"): chosen["HF __getitems__"],
        ("baseline", FILL): lambda k: np.full((BATCH, widths[k]), 0, np.int64),
        ("baseline", MEMCPY): copy_tokens,
        ("baseline", TAKE): lambda k: ninja.take(batches[k]),
    }
    packed_case = {
        ("Megatron", "views + numpy packing"): lambda k: pack_views(*megatron_views(k), packed_dtype),
        ("pyarrow", "take + flatten + numpy packing"): lambda k: pack(*arrow_flat(k), packed_dtype),
        ("HF", "numpy format + numpy packing"): lambda k: pack_views(*hf_numpy(k), packed_dtype),
        ("HF", "__getitems__ + numpy packing"): lambda k: pack_views(*hf_getitems(k), packed_dtype),
    }
    if api["collate_packed"] is not None:
        collate_packed = api["collate_packed"]
        packed_case = {("mmap_ninja", "collate_packed(take(indices))"):
                       lambda k: collate_packed(ninja.take(batches[k])), **packed_case}
    packed_case[("mmap_ninja", "take + numpy packing")] = lambda k: pack_take(ninja.take(batches[k]), packed_dtype)

    rows = []
    for key, fns in (("list", list_case), ("padded", padded_case), ("packed", packed_case)):
        print("timing", key, "batches", flush=True)
        medians = interleaved_medians(fns, ks)
        rows += [(key, name, library, medians[(library, name)]) for library, name in fns]
    notes.append(f"packed `input_ids` dtype: {np.dtype(packed_dtype).name}")
    return rows, notes


def pack_take(batch, dtype) -> dict:
    return pack(batch.values, np.diff(batch.offsets), dtype)


# -- cases 3 and 4: loaders -------------------------------------------------------------------

def loaders(c: Contenders, api: dict, epoch_samples: int) -> dict:
    """``(case key, contender, library): a function that makes a fresh iterable of batches``."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    n = len(c.ninja)

    def sampling(dataset, seed):
        """``shuffle=True``, or for a shorter epoch the same random sampler drawing fewer samples."""
        if epoch_samples >= n:
            return {"shuffle": True, "generator": torch.Generator().manual_seed(seed)}
        return {"sampler": RandomSampler(dataset, num_samples=epoch_samples,
                                         generator=torch.Generator().manual_seed(seed))}

    def data_loader(dataset, workers, collate_fn, seed):
        extra = {"persistent_workers": True, "multiprocessing_context": "fork",
                 "worker_init_fn": prefault_worker} if workers else {}
        return DataLoader(dataset, batch_size=BATCH, num_workers=workers, collate_fn=collate_fn,
                          **sampling(dataset, seed), **extra)

    made = {}
    for workers in (0, 2):
        key = f"loader{workers}"
        made[(key, "IndexedDataset + numpy padding collate", "Megatron")] = data_loader(
            c.megatron, workers, pad_collate, 1)
        made[(key, "map + numpy padding collate", "mmap_ninja")] = data_loader(c.ninja, workers, pad_collate, 1)
        if api["RaggedBatches"] is not None and api["collate"] is not None:
            made[(key, "RaggedBatches(dtype=np.int64) + collate", "mmap_ninja")] = data_loader(
                api["RaggedBatches"](c.ninja, dtype=np.int64), workers, api["collate"], 1)
    if api["Loader"] is not None and api["RaggedBatches"] is not None and api["collate"] is not None:
        dataset = api["RaggedBatches"](c.ninja, dtype=np.int64)
        order = {"shuffle": True, "seed": 1} if epoch_samples >= n else {"sampler": sampling(dataset, 1)["sampler"]}
        made[("threads", "Loader(RaggedBatches(dtype=np.int64), collate, num_threads=2)", "mmap_ninja")] = \
            api["Loader"](dataset, batch_size=BATCH, collate_fn=api["collate"], num_threads=2, **order)
    return made


def cpu_seconds() -> tuple:
    """CPU seconds (user + system) used so far by this process (all its threads) and by its
    live child processes (the DataLoader workers), from /proc; ``(nan, nan)`` without it."""
    tick = os.sysconf("SC_CLK_TCK")

    def used(pid) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    try:
        children = []
        for task in Path("/proc/self/task").iterdir():
            children += (task / "children").read_text().split()
        return used("self"), sum(used(pid) for pid in children)
    except OSError:
        return float("nan"), float("nan")


def run_epoch(loader) -> tuple:
    """``(samples, batches, seconds, CPU seconds of this process, of its workers)`` of one pass
    over ``loader``, the batches dropped as they come."""
    samples = batches = 0
    main, workers = cpu_seconds()
    start = time.perf_counter()
    for batch in loader:
        samples += len(batch["lengths"])
        batches += 1
    seconds = time.perf_counter() - start
    main_after, workers_after = cpu_seconds()
    return samples, batches, seconds, main_after - main, workers_after - workers


HEADROOM: list = []  # two_thread_speedup() before each round of epochs
CPU: dict = {}  # (case key, contender, library): median CPU µs per batch (this process, workers)


def loader_cases(made: dict, rounds: int) -> list:
    """Rows ``(case key, contender, library, median samples/s)``; the loaders take turns."""
    names = list(made)
    for name in names:  # one untimed epoch: workers started, pages touched
        print("warming up", name[1], f"({name[0]})", flush=True)
        run_epoch(made[name])
    rates = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for turn in range(rounds):
        HEADROOM.append(two_thread_speedup(0.25))
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            samples, batches, seconds, main, workers = run_epoch(made[name])
            rates[name].append(samples / seconds)
            cpu[name].append((main / batches, workers / batches))
        print(f"round {turn + 1}/{rounds}: " + ", ".join(f"{n[1]} ({n[0]}) {rates[n][-1]:,.0f}/s" for n in names),
              flush=True)
    for name in names:
        CPU[name] = tuple(statistics.median(c[k] for c in cpu[name]) * 1e6 for k in (0, 1))
    return [(key, contender, library, statistics.median(rates[(key, contender, library)]))
            for key, contender, library in names]


# -- report -----------------------------------------------------------------------------------

CASES = {
    "list": ("batch of 256 as a list of arrays", "µs"),
    "padded": ("1. padded int64 batch of 256 + lengths", "µs"),
    "packed": ("2. packed batch of 256 (input_ids, cu_seqlens, position_ids, max_seqlen)", "µs"),
    "loader0": ("3a. DataLoader epoch, num_workers=0", "samples/s"),
    "loader2": ("3b. DataLoader epoch, num_workers=2 (fork)", "samples/s"),
    "threads": ("4. mmap_ninja.pytorch.Loader epoch, num_threads=2", "samples/s"),
}
OURS = {"list": "m[indices]", "padded": "padded(indices, dtype=np.int64)", "packed": "collate_packed(take(indices))",
        "loader0": "RaggedBatches(dtype=np.int64) + collate", "loader2": "RaggedBatches(dtype=np.int64) + collate",
        "threads": "Loader(RaggedBatches(dtype=np.int64), collate, num_threads=2)"}


FILL = "np.full((B, L), 0, np.int64) alone"
MEMCPY = "memcpy of the batch's int32 tokens (one contiguous copy)"
TAKE = "mmap_ninja take(indices): the gather alone, unpadded"


def speedup(unit: str, ours: float, other: float) -> float:
    """How many times faster ``ours`` is than ``other`` (times in µs, or rates)."""
    return other / ours if unit == "µs" else ours / other


def targets(rows: list) -> list:
    """One dict per target: ``label`` (short), ``text``, ``ours`` and ``theirs`` (values),
    ``against`` (what ours is compared with), ``ratio``, ``bound``, ``kind`` ("faster": ours at
    least ``bound`` times faster; "cost": ours at most ``bound`` times the other's time) and
    ``met``; the figures are ``None`` when a contender is missing from this version."""
    def value(key, contender=None, library=None):
        for k, name, lib, v in rows:
            if k == key and (contender is None or name == contender) and (library is None or lib == library):
                return v
        return None

    def best(candidates, unit):
        return (min if unit == "µs" else max)(candidates) if candidates else (None, None)

    def best_peer(key):
        return best([(v, f"{lib} {name}") for k, name, lib, v in rows
                     if k == key and lib not in ("mmap_ninja", "baseline")], CASES[key][1])

    def plain(key):  # the plain DataLoader paths: a list of arrays padded by the numpy collate
        return best([(v, f"{lib} {name}") for k, name, lib, v in rows
                     if k == key and name.endswith("numpy padding collate")], CASES[key][1])

    out = []

    def add(label, text, key, ours, theirs, bound, kind="faster"):
        target = {"label": label, "text": text, "ours": ours, "theirs": theirs[0], "against": theirs[1],
                  "bound": bound, "kind": kind, "unit": CASES[key][1], "ratio": None, "met": None}
        if ours is not None and theirs[0] is not None:
            target["ratio"] = speedup(target["unit"], ours, theirs[0]) if kind == "faster" else ours / theirs[0]
            target["met"] = target["ratio"] >= bound if kind == "faster" else target["ratio"] <= bound
        out.append(target)

    padded = value("padded", OURS["padded"])
    add("1. padded vs best peer", "1. padded int64 batch: at least 1.6x faster than the best peer", "padded", padded,
        best_peer("padded"), 1.6)
    add("1. np.full alone / padded (time)", "1. padded int64 batch: at most 1.3x the time of filling the output once "
        "(`np.full`)", "padded", padded, (value("padded", FILL), "np.full((B, L), 0, np.int64) alone"), 1.3, "cost")
    add("2. packed vs best peer", "2. packed batch: faster than the best peer (no number set)", "packed",
        value("packed", OURS["packed"]), best_peer("packed"), 1.0)
    add("3a. workers=0 vs plain map", "3a. DataLoader, num_workers=0: RaggedBatches + collate no slower than the "
        "map's list of views + numpy padding", "loader0", value("loader0", OURS["loader0"]),
        (value("loader0", "map + numpy padding collate"), "mmap_ninja map + numpy padding collate"), 1.0)
    add("3b. workers=2 vs best plain", "3b. DataLoader, num_workers=2: RaggedBatches + collate at least 1.5x the "
        "best plain path", "loader2", value("loader2", OURS["loader2"]), plain("loader2"), 1.5)
    add("3b. workers=2 vs plain map", "3b. DataLoader, num_workers=2: RaggedBatches + collate no slower than the "
        "map's list of views + numpy padding", "loader2", value("loader2", OURS["loader2"]),
        (value("loader2", "map + numpy padding collate"), "mmap_ninja map + numpy padding collate"), 1.0)
    threads = value("threads", OURS["threads"])
    add("4. Loader vs DataLoader workers=2", "4. Loader(num_threads=2): at least 1.5x DataLoader(num_workers=2) on "
        "the same RaggedBatches", "threads", threads,
        (value("loader2", OURS["loader2"]), "DataLoader(RaggedBatches, num_workers=2)"), 1.5)
    add("4. Loader vs DataLoader workers=0", "4. Loader(num_threads=2): no slower than DataLoader(num_workers=0) on "
        "the same RaggedBatches", "threads", threads,
        (value("loader0", OURS["loader0"]), "DataLoader(RaggedBatches, num_workers=0)"), 1.0)
    return out


def misses(checks: list, rows: list, data_bytes: int) -> list:
    """A line for each missed target, with the measurements that bear on it."""
    value = {(k, lib, name): v for k, name, lib, v in rows}
    lines = []
    for t in checks:
        if t["met"] is not False:
            continue
        line = (f"- Missed: {t['text']}: {cell(t['unit'], t['ours'])} against {cell(t['unit'], t['theirs'])} "
                f"({ratio_text(t)}).")
        if t["kind"] == "cost":
            take = value.get(("padded", "baseline", TAKE))
            copy = value.get(("padded", "baseline", MEMCPY))
            gb = data_bytes / 1e9
            line += (" The same 256 samples gathered by `take` alone, unpadded and unconverted, cost "
                     f"{take * 1e6:,.1f} µs ({take / t['theirs']:.2f}x the fill), and one contiguous copy of as "
                     f"many tokens {copy * 1e6:,.1f} µs: the samples lie at random places of a {gb:.2f} GB map, so "
                     "fetching them from memory costs more than the fill, and a padded batch pays for the fetch "
                     "and for writing the padded output.")
        elif t["label"].startswith("4."):
            if HEADROOM:
                headroom = statistics.median(HEADROOM)
                line += (f" Two threads hashing did {headroom:.2f}x the work of one between the rounds of epochs "
                         "(median; 2x with two idle cores)"
                         + (": threads had little of a second core." if headroom < 1.5 else "."))
        lines.append(line)
    return lines


def ratio_text(t: dict) -> str:
    """A target's ratio with two decimals, or three where two would show the bound itself."""
    shown = f"{t['ratio']:.2f}"
    return f"{t['ratio']:.3f}x" if float(shown) == t["bound"] and t["ratio"] != t["bound"] else f"{shown}x"


def cell(unit: str, v: float) -> str:
    return f"{v * 1e6:,.1f} µs" if unit == "µs" else f"{v:,.0f}/s"


def markdown(rows: list, checks: list) -> tuple:
    """The table of every contender, and the table of the targets."""
    lines = ["| case | contender | median | vs best peer | CPU µs per batch: main process + workers |",
             "|:--|:--|--:|--:|--:|"]
    for key, (title, unit) in CASES.items():
        case_rows = [r for r in rows if r[0] == key]
        peers = [v for k, name, lib, v in case_rows if lib not in ("mmap_ninja", "baseline")]
        if key == "threads":  # no peer has threads: compare with every DataLoader of the run
            peers = [v for k, name, lib, v in rows if k in ("loader0", "loader2")]
        best = (min if unit == "µs" else max)(peers) if peers else None
        for position, (_, name, library, v) in enumerate(case_rows):
            ratio = "—" if best is None or library == "baseline" else f"{speedup(unit, v, best):.2f}x"
            label = f"**{library} {name}**" if library == "mmap_ninja" and name == OURS[key] else f"{library} {name}"
            used = CPU.get((key, name, library))
            shown = "" if used is None else f"{used[0]:,.0f}" + (f" + {used[1]:,.0f}" if key == "loader2" else "")
            lines.append(f"| {'' if position else title} | {label} | {cell(unit, v)} | {ratio} | {shown} |")
    table = ["| target | mmap_ninja | against | measured | met | margin |", "|:--|--:|:--|--:|:-:|--:|"]
    for t in checks:
        if t["ratio"] is None:
            table.append(f"| {t['text']} | not available | {t['against'] or '—'} | — | — | — |")
            continue
        shown = f"{ratio_text(t)} as fast" if t["kind"] == "faster" else f"{ratio_text(t)} its time"
        # how far past the bound (positive) or short of it (negative), in per cent of the bound
        margin = (t["ratio"] / t["bound"] - 1) * (1 if t["kind"] == "faster" else -1) * 100
        table.append(f"| {t['text']} | {cell(t['unit'], t['ours'])} | {t['against']}: {cell(t['unit'], t['theirs'])} "
                     f"| {shown} | {'yes' if t['met'] else '**no**'} | {margin:+.0f}% |")
    return "\n".join(lines), "\n".join(table)


def plot(checks: list, path: Path) -> None:
    """Each target's measured ratio as a speed-up (a time bound shown inverted), with the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [t for t in checks if t["ratio"] is not None]
    values = [t["ratio"] if t["kind"] == "faster" else 1 / t["ratio"] for t in shown]
    bounds = [t["bound"] if t["kind"] == "faster" else 1 / t["bound"] for t in shown]
    ys = list(range(len(shown)))
    fig, ax = plt.subplots(figsize=(9, 0.5 * max(len(shown), 1) + 1.4))
    ax.barh(ys, values, color=["tab:green" if t["met"] else "tab:red" for t in shown], height=0.6)
    ax.scatter(bounds, ys, marker="|", s=300, linewidths=2, color="black", label="target", zorder=3)
    for y, v, bound in zip(ys, values, bounds):
        ax.text(max(v, bound) + 0.03, y, f" {v:.2f}x", va="center", fontsize=9)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([t["label"] for t in shown])
    ax.invert_yaxis()
    ax.set_xlim(0, max(values + bounds + [1.0]) * 1.15)
    ax.set_xlabel("speed of mmap_ninja / speed of the other (green: target met, red: missed)")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def two_thread_speedup(seconds: float = 0.5) -> float:
    """How many times the work of one thread two threads do on a task that needs no GIL
    (SHA-256 of 1 MiB): about 2 on two idle cores, less when other processes hold them."""
    import concurrent.futures
    import hashlib

    block = os.urandom(1 << 20)

    def work(stop: float) -> int:
        count = 0
        while time.perf_counter() < stop:
            hashlib.sha256(block).digest()
            count += 1
        return count

    one = work(time.perf_counter() + seconds)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        stop = time.perf_counter() + seconds
        two = sum(pool.map(work, [stop, stop]))
    return two / one


def versions() -> str:
    from importlib.metadata import version

    names = ["torch", "megatron-core", "datasets", "pyarrow", "numpy"]
    return ", ".join([f"mmap_ninja {mmap_ninja.__version__}"] + [f"{name} {version(name)}" for name in names])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute (20,000 sequences)")
    parser.add_argument("--samples", type=int, default=None, help="token sequences (default 200,000)")
    parser.add_argument("--repeats", type=int, default=None, help="batches timed per case 1-2 contender")
    parser.add_argument("--epoch-samples", type=int, default=None,
                        help="samples drawn per loader epoch (default: the whole map)")
    parser.add_argument("--rounds", type=int, default=None, help="timed epochs per loader")
    parser.add_argument("--data", type=Path, default=HERE / ".data", help="where the datasets are kept")
    parser.add_argument("--out", type=Path, default=HERE, help="where LOADERS.md and loaders.png go")
    args = parser.parse_args()
    quick = args.quick
    n = args.samples or (20_000 if quick else 200_000)
    repeats = args.repeats or (60 if quick else 1000)
    epoch_samples = args.epoch_samples or (5_000 if quick else n)
    rounds = args.rounds or (2 if quick else 7)

    api, missing = torch_api()
    for name in missing:
        print(f"{name}: not available in this version, its cases are skipped", flush=True)
    data = args.data / "loaders" / f"n{n}"
    build_data(data, n)
    warm_page_cache(data)
    load_before, headroom_before = os.getloadavg(), two_thread_speedup()
    started = time.perf_counter()
    c = Contenders(data)
    batches = np.random.default_rng(1).integers(0, n, size=(repeats, BATCH))
    rows, notes = batch_cases(c, api, batches, calibrate=min(60, repeats))
    rows += loader_cases(loaders(c, api, epoch_samples), rounds)
    seconds = time.perf_counter() - started
    load_after, headroom_after = os.getloadavg(), two_thread_speedup()

    checks = targets(rows)
    table, target_table = markdown(rows, checks)
    missed = misses(checks, rows, c.ninja.memmap.nbytes)
    mean_length = float(np.mean(c.ninja.ends - c.ninja.starts))
    report = "\n".join([
        f"{n:,} int32 token sequences of 1-{MAX_LENGTH - 1:,} tokens (mean {mean_length:.0f}), the same in "
        "every contender's format; batches of 256 random indices, the same for every contender. Batches: "
        f"median of {repeats} batches, the contenders taking turns; epochs: median of {rounds} epochs of "
        f"{min(epoch_samples, n):,} shuffled samples, the loaders taking turns. The ratio is how many times "
        "faster than the best peer of the row's case (the best other library; for the threaded Loader, the "
        "best DataLoader of the run).",
        "",
        table,
        "",
        "Targets (margin: how far past the bound, or short of it, in per cent of the bound; a few per cent "
        "is within the run-to-run noise of this machine):",
        "",
        target_table,
        *(["", *missed] if missed else []),
        "",
        "Notes:",
        "",
        "- Peers' padding: the fastest of several numpy paddings, timed on the first batches of this run (µs "
        "per batch): " + "; ".join(notes[:-1]) + ".",
        f"- The packed batch's `input_ids` are {notes[-1].split(': ')[1]} for every contender (the dtype "
        "`collate_packed` gives: the map's, without a conversion; int64 where it is missing); `cu_seqlens` "
        "int32, `position_ids` int64, all as torch tensors.",
        "- Every contender's files are in the page cache, and every process reads all it maps once before "
        "the timing (the DataLoader workers in their `worker_init_fn`), so that no first-touch page fault "
        "is timed, as in a long run. The batches are random, so their samples come from memory, not from the "
        "CPU caches: the baselines of case 1 are filling the padded output once (`np.full`, which reads "
        "nothing), one contiguous copy of as many int32 tokens as the batch holds (what reading them costs "
        "at best) and mmap_ninja's `take` of the batch (the same gather, unpadded).",
        "- DataLoaders: `batch_size=256`, shuffled (`shuffle=True`, or for epochs shorter than the map "
        "the same `RandomSampler` with `num_samples`), workers started by fork with `persistent_workers=True` "
        "in an untimed first epoch; the numpy padding collate pads a list of arrays into "
        "`np.zeros` row by row. Megatron's `IndexedDataset` has no `__getitems__`, so its DataLoader fetches "
        "sample by sample; a `RaggedMmap`'s `__getitems__` gives a list of views of one copied buffer. With "
        "workers, the plain collate's tensors reach the main process as torch shares any tensor (moved into "
        "new shared memory by the worker); `RaggedBatches` writes its batches into shared memory in the "
        "worker.",
        "- CPU per batch: user + system time over an epoch, from /proc (in clock ticks of "
        f"{1e3 / os.sysconf('SC_CLK_TCK'):.0f} ms), divided by its batches; the main process counts all its "
        "threads (the sampler, the Loader's threads), the workers their two processes; median over the rounds.",
        *(["- 5. Building: the same kind of data (200,000 int32 sequences) built as a map and by Megatron's "
           "`IndexedDatasetBuilder` is measured by `benchmarks/bench_token_build.py` "
           "([TOKEN_BUILD.md](TOKEN_BUILD.md))."]
          if (HERE / "bench_token_build.py").exists() else []),
        *([f"- Not available in this version (skipped): {', '.join(missing)}."] if missing else []),
        "",
        f"Machine: {describe_machine()}; {versions()}. Load average (1, 5, 15 min) before the run: "
        f"{', '.join(f'{x:.2f}' for x in load_before)}; after: {', '.join(f'{x:.2f}' for x in load_after)}. "
        f"Two threads hashing (SHA-256, no GIL) did {headroom_before:.2f}x the work of one just before the run "
        f"and {headroom_after:.2f}x just after, {statistics.median(HEADROOM):.2f}x (median; "
        f"{min(HEADROOM):.2f}-{max(HEADROOM):.2f}) before the rounds of epochs (2x on two idle cores): what "
        "the second core gave to the threaded and multi-process loaders. The machine is shared and noisy, so "
        "times vary from run to run. "
        f"Timed part: {seconds:.0f} s.",
    ])
    print()
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_loaders.py" + ("".join(" " + a for a in sys.argv[1:]))
    (args.out / "LOADERS.md").write_text(
        "# Token batches and data loaders: mmap_ninja, Megatron-Core, pyarrow, Hugging Face datasets\n\n"
        f"Measured {datetime.date.today().isoformat()} with `{command}`.\n\n" + report
        + "\n\n![speed ratios per case](loaders.png)\n")
    plot(checks, args.out / "loaders.png")
    print(f"\nwrote {args.out / 'LOADERS.md'} and {args.out / 'loaders.png'}")


if __name__ == "__main__":
    main()
