"""Build four small maps and read random batches from them, the way a data loader does.

    python examples/quickstart.py [OUT_DIR]

OUT_DIR (default: a temporary folder, removed at the end) receives the maps.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import mmap_ninja
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap
from mmap_ninja.table import TableMmap

BATCH = 256


def disk_size(path: Path) -> str:
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{size / 2**20:.1f} MiB"


def median_ms(fn, repeats: int = 200) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def timed_open(opener):
    start = time.perf_counter()
    opened = opener()
    return opened, (time.perf_counter() - start) * 1e3


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    print(f"mmap_ninja {mmap_ninja.__version__}: writing maps to {out}\n")

    # Ragged map: token sequences of different lengths, built from a generator in batches.
    n = 20_000
    lengths = rng.integers(16, 512, size=n)
    sequences = (rng.integers(0, 32_000, size=length, dtype=np.int32) for length in lengths)
    print(f"1. RaggedMmap of {n:,} token sequences (16-511 int32 tokens each)")
    RaggedMmap.from_generator(out / "tokens", sequences, batch_size=4096, n=n, verbose=True)
    tokens, open_ms = timed_open(lambda: RaggedMmap(out / "tokens"))
    print(f"   {tokens!r}: {disk_size(out / 'tokens')} on disk, opened in {open_ms:.2f} ms")
    indices = rng.integers(0, n, size=BATCH)
    batch = tokens[indices]
    assert all(len(sample) == lengths[i] for sample, i in zip(batch, indices))
    ms = median_ms(lambda: tokens[rng.integers(0, n, size=BATCH)])
    print(f"   tokens[{BATCH} random indices] -> list of {BATCH} arrays (views, no copy): "
          f"{ms:.3f} ms per batch, {BATCH / ms * 1e3:,.0f} samples/s")
    print(f"   tokens[{indices[0]}] = array of shape {batch[0].shape}, first tokens {batch[0][:5].tolist()}\n")

    # Strings map: sentences with non-ASCII text, appended to after it is built.
    words = ["data", "loader", "память", "ninja", "日本", "fast", "map", "😀"]
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 30))) for _ in range(10_000)]
    more = ["one more sentence", "и ещё одна"]
    print(f"2. StringsMmap of {len(texts):,} sentences, then {len(more)} more appended with extend")
    strings = StringsMmap.from_strings(out / "texts", texts, verbose=True)
    print(f"   built with {len(strings):,} strings")
    strings.extend(more)
    print(f"   extended to {len(strings):,} strings: {strings!r}, {disk_size(out / 'texts')} on disk")
    picked = rng.integers(0, len(strings), size=BATCH)
    assert strings[picked] == [(texts + more)[i] for i in picked]
    ms = median_ms(lambda: strings[rng.integers(0, len(strings), size=BATCH)])
    print(f"   strings[{BATCH} random indices] -> list of str: {ms:.3f} ms per batch")
    print(f"   strings[-1] = {strings[-1]!r}\n")

    # Fixed-shape map: same-shaped rows as an np.memmap, extended in place.
    built, added = 100_000, 10
    print(f"3. numpy map of {built:,} x 64 float32 rows, then {added} rows of zeros appended with extend_dir")
    np_ninja.from_ndarray(out / "rows", rng.standard_normal((built, 64), dtype=np.float32))
    print(f"   built with {len(np_ninja.open_existing(out / 'rows')):,} rows")
    np_ninja.extend_dir(out / "rows", np.zeros((added, 64), np.float32))
    rows, open_ms = timed_open(lambda: np_ninja.open_existing(out / "rows"))
    print(f"   extended to {len(rows):,} rows: np.memmap of shape {rows.shape}, {rows.dtype}, "
          f"{disk_size(out / 'rows')} on disk, opened in {open_ms:.2f} ms")
    ms = median_ms(lambda: rows[np.sort(rng.integers(0, len(rows), size=1024))])
    print(f"   rows[1024 sorted random indices] -> array {(1024, rows.shape[1])}: {ms:.3f} ms per batch")

    # Table: several fields per sample (an image, its label, its caption), every write one commit.
    n = 2_000
    sides = rng.integers(32, 97, size=(n, 2))
    print(f"\n4. TableMmap of {n:,} rows: an image (uint8, 32-96 px a side), its label and its caption")

    def rows():
        for i in range(n):
            yield {"image": rng.integers(0, 256, size=(*sides[i], 3), dtype=np.uint8), "label": i % 10,
                   "caption": f"image {i}, of class {i % 10}"}

    TableMmap.from_generator(out / "images", rows(), batch_size=512, n=n, verbose=True)
    table, open_ms = timed_open(lambda: TableMmap(out / "images"))
    print(f"   {table!r}: {disk_size(out / 'images')} on disk, opened in {open_ms:.2f} ms")
    indices = rng.integers(0, n, size=BATCH)
    batch = table[indices]
    assert batch["label"].tolist() == (indices % 10).tolist()
    assert all(image.shape == (*sides[i], 3) for image, i in zip(batch["image"], indices))
    ms = median_ms(lambda: table[rng.integers(0, n, size=BATCH)])
    print(f"   table[{BATCH} random indices] -> dict of {BATCH} images (views), a label array and "
          f"{BATCH} captions: {ms:.3f} ms per batch")
    print(f"   table[{indices[0]}] = {{image: {batch['image'][0].shape}, label: {batch['label'][0]}, "
          f"caption: {batch['caption'][0]!r}}}")

    print("\nEvery map reopens in O(1) and reads only what is asked for: see README.md and docs/ for the API.")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # keep prints in step with the progress bars
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        tmp = Path(tempfile.mkdtemp(prefix="mmap_ninja_quickstart_"))
        try:
            main(tmp)
        finally:
            shutil.rmtree(tmp)
