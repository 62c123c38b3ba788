"""What finding samples by key costs, against a Python dict and HF ``datasets`` filtering.

    python benchmarks/bench_keys.py [--keys 10000000] [--batch 256] [--repeats 300]

A strings map of ``--keys`` samples, each keyed by a file path (``shard-00042/img_00042123.jpg``,
27 bytes), is built once under benchmarks/.data. Then, on the same random batches of existing
keys:

- ``m.index_of(batch)`` on an open map (the compiled hash table stored with the map), and
  ``np_ninja.index_of(dir, batch)``, which finds the keys it opened before while the map's files are the same;
- a Python ``dict`` of every key, looked up key by key (after the dict is built: the build is
  timed separately, as every process that wants it pays it);
- time to the first batch from a fresh process start: open the map and look up, against
  reading every key into a dict and looking up;
- HF ``datasets``: ``Dataset.filter`` of the rows whose key is in the batch (batched, one
  process), on a dataset of the same keys, and pyarrow's ``is_in`` on the key column.

Writes benchmarks/KEYS.md.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import interleaved_medians, median_time  # noqa: E402
from bench_batches import describe_machine  # noqa: E402

from mmap_ninja import numpy as np_ninja  # noqa: E402
from mmap_ninja.string import StringsMmap  # noqa: E402

DATA = HERE / ".data" / "keys"


def key_of(i: int) -> str:
    return f"shard-{i // 1000:05d}/img_{i:08d}.jpg"


def build(n: int) -> float:
    """Build the keyed map of ``n`` samples (seconds, keys and samples together)."""
    out = DATA / f"strings-{n}"
    keys = [key_of(i) for i in range(n)]
    start = time.perf_counter()
    StringsMmap.from_strings(out, ["x"] * n, keys=keys)
    seconds = time.perf_counter() - start
    np_ninja.from_ndarray(DATA / f"numpy-{n}", np.zeros(n, np.uint8), keys=keys)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--hf-repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.keys
    DATA.mkdir(parents=True, exist_ok=True)
    built = None
    if not (DATA / f"strings-{n}" / "keys" / "index.ninja").exists():
        built = build(n)
    rng = np.random.default_rng(0)
    batches = [[key_of(int(i)) for i in rng.integers(0, n, args.batch)] for _ in range(args.repeats)]

    m = StringsMmap(DATA / f"strings-{n}")
    numpy_dir = DATA / f"numpy-{n}"
    for batch in batches[:3]:
        assert m.index_of(batch).tolist() == [int(k.split("_")[-1][:8]) for k in batch]

    start = time.perf_counter()
    table = {key_of(i): i for i in range(n)}
    dict_build = time.perf_counter() - start

    def dict_lookup(batch):
        return [table[k] for k in batch]

    # first with the key files in the page cache but not yet mapped into this process (each
    # page a lookup touches for the first time costs a page fault), then with every page mapped
    cold = interleaved_medians({"map": m.index_of, "dict": dict_lookup}, batches[: args.repeats // 2], seed=1)
    index = m._live()[0].keys
    for array in (index.slots, index.stored, index.starts[:n], index.ends[:n]):
        np.asarray(array).view(np.uint8)[::4096].sum()  # touch every page
    times = interleaved_medians({
        "map": m.index_of,
        "numpy dir": lambda batch: np_ninja.index_of(numpy_dir, batch),
        "dict": dict_lookup,
    }, batches)
    single = median_time(lambda k: m.index_of(k), [b[0] for b in batches])
    table = None
    gc.collect()

    # time to the first batch in a process that has nothing yet: open and look up, or read every
    # key into a dict and look up (the keys read from the map itself, the fastest source there is)
    def first_batch_map(batch):
        return StringsMmap(DATA / f"strings-{n}").index_of(batch)

    def first_batch_dict(batch):
        keys = StringsMmap(DATA / f"strings-{n}").keys()
        positions = dict(zip(keys, range(len(keys))))
        return [positions[k] for k in batch]

    cold_map = median_time(first_batch_map, batches[:20])
    cold_dict = median_time(first_batch_dict, batches[:3], warmup=0)

    # HF datasets and pyarrow on the same keys
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    datasets.disable_progress_bars()
    hf_dir = DATA / f"hf-{n}"
    if not hf_dir.exists():
        column = pa.array([key_of(i) for i in range(n)], pa.string())
        datasets.Dataset(pa.table({"key": column})).save_to_disk(str(hf_dir))
    ds = datasets.load_from_disk(str(hf_dir))
    keys_column = ds.data.column("key")

    def hf_filter(batch):
        wanted = set(batch)
        hits = ds.filter(lambda rows: [k in wanted for k in rows["key"]], batched=True, batch_size=100_000,
                         with_indices=False, load_from_cache_file=False, keep_in_memory=True)
        return hits

    def arrow_is_in(batch):
        return np.flatnonzero(pc.is_in(keys_column, value_set=pa.array(batch)).to_numpy(zero_copy_only=False))

    hf = statistics.median([time_once(hf_filter, batch) for batch in batches[:args.hf_repeats]])
    arrow = statistics.median([time_once(arrow_is_in, batch) for batch in batches[:args.hf_repeats]])
    assert sorted(arrow_is_in(batches[0]).tolist()) == sorted(set(m.index_of(batches[0]).tolist()))

    index_bytes = (DATA / f"strings-{n}" / "keys" / "index.ninja").stat().st_size
    key_bytes = sum(f.stat().st_size for f in (DATA / f"strings-{n}" / "keys").rglob("*") if f.is_file())
    us = 1e6
    lines = [
        "# Keys: finding samples by name",
        "",
        f"`python benchmarks/bench_keys.py --keys {n} --batch {args.batch} --repeats {args.repeats}` on "
        f"{describe_machine()}. {n:,} keys like `{key_of(123456)}`; batches of {args.batch} random existing keys; "
        f"medians (the map, the map's folder and the dict took turns on the same batches).",
        "",
        "| lookup of a batch | µs per batch | ns per key |",
        "|:--|--:|--:|",
        f"| `m.index_of(batch)` (open map, compiled hash table), pages mapped | {times['map'] * us:,.1f} | "
        f"{times['map'] * 1e9 / args.batch:,.0f} |",
        f"| `m.index_of(batch)`, pages in the page cache, first touched by the lookups | {cold['map'] * us:,.1f} | "
        f"{cold['map'] * 1e9 / args.batch:,.0f} |",
        f"| `np_ninja.index_of(folder, batch)` (keys kept open between calls, checked by file identity) | "
        f"{times['numpy dir'] * us:,.1f} | "
        f"{times['numpy dir'] * 1e9 / args.batch:,.0f} |",
        f"| Python `dict`, built beforehand | {times['dict'] * us:,.1f} | {times['dict'] * 1e9 / args.batch:,.0f} |",
        f"| Python `dict`, in turns with the first-touch lookups | {cold['dict'] * us:,.1f} | "
        f"{cold['dict'] * 1e9 / args.batch:,.0f} |",
        f"| `m.index_of(key)`, one key | {single * us:,.1f} | |",
        f"| HF `datasets` `Dataset.filter` (batched) | {hf * us:,.0f} | |",
        f"| pyarrow `is_in` over the key column | {arrow * us:,.0f} | |",
        "",
        "Time to the first batch in a process that holds nothing yet:",
        "",
        "| | ms |",
        "|:--|--:|",
        f"| open the map, look the batch up | {cold_map * 1e3:,.2f} |",
        f"| build a `dict` of every key (read from the map), look up | {cold_dict * 1e3:,.0f} |",
        f"| (the `dict` alone, from a list of str already in memory) | {dict_build * 1e3:,.0f} |",
        "",
        f"The key table takes {index_bytes / 2**20:,.0f} MiB on disk ({index_bytes / n:.1f} bytes per key); all key "
        f"files {key_bytes / 2**20:,.0f} MiB, mapped, so only the pages a lookup touches are read.",
    ]
    if built is not None:
        lines.append(f"Building the map with its keys took {built:,.1f} s ({built * 1e9 / n:,.0f} ns per sample).")
    (HERE / "KEYS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(DATA / f"hf-{n}" / "cache", ignore_errors=True)


def time_once(fn, argument) -> float:
    start = time.perf_counter()
    fn(argument)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
