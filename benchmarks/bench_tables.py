"""Tables of several fields per sample (an image, its label and its caption): random batches and
the build, against Hugging Face ``datasets``, litdata and Lance.

    python benchmarks/bench_tables.py [--rows 20000] [--batch 256] [--batches 40] [--rounds 3]

Row ``i`` is an image (``uint8``, ``(h, w, 3)``, ``h`` and ``w`` from 64 to 256), an ``int64``
label and a caption of 20 to 200 characters, the same in every process. Each contender builds its
dataset from the same rows, timed (the best of its ways for data like this):

- mmap_ninja: ``TableMmap.from_generator`` (flushed to disk, the default);
- Hugging Face ``datasets``: ``Dataset.from_generator`` + ``save_to_disk``, then
  ``load_from_disk``; the image as its bytes and its shape (``binary`` and three ``int32``, the
  layout that reads fastest: nested lists of ``uint8`` read one value at a time), read with
  ``with_format("numpy")`` but for the bytes (numpy's bytes dtype drops trailing zero bytes);
- litdata: ``optimize`` (one worker per core) of dict samples, its numpy serializer for the image;
- Lance: ``lance.write_dataset`` of Arrow record batches, the image as bytes and shape as for
  ``datasets``.

Each contender builds ``--build-rounds`` times, from nothing, taking turns; the median is
reported. Then each reads, in a process of its own (so that no contender's threads run beside another's
reads), the same random batches of ``--batch`` rows, from the page cache, into a dict of
numpy arrays and lists (images as ``uint8`` arrays of their shape, labels as one ``int64`` array,
captions as ``str``): ``t[indices]`` (the images as read-only views of the mapped files, copied
when used: a collate pads them into the batch tensor), and ``t.take(indices)`` (copied into one
buffer, as the peers copy them); ``ds.with_format("numpy")[indices]`` then each image
rebuilt from its bytes; ``StreamingDataset`` read sample by sample (litdata has no batch read);
``dataset.take(indices)`` then the same rebuilding. A batch is checked against the rows. The
contenders take turns, each round in another order, over ``--rounds`` rounds; the median of the
per-round medians.

Prints markdown tables and writes them, with the machine and its load, to benchmarks/TABLES.md.
Needs the ``bench`` extra (``datasets``, ``litdata``, ``pylance``); a peer that does not install
is reported as such.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timing import time_calls  # noqa: E402

SEED = 20261207
COPIED = "mmap_ninja, images copied (`take`)"
WORDS = ["a", "cat", "on", "the", "mat", "dog", "runs", "in", "green", "field", "under", "blue", "sky", "with"]


def row(i: int) -> Dict[str, Any]:
    """Row ``i``: ``image`` ``uint8`` ``(h, w, 3)``, ``label`` ``int``, ``caption`` ``str``."""
    rng = np.random.default_rng((SEED, int(i)))
    h, w = (int(x) for x in rng.integers(64, 257, size=2))
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    words, caption = rng.choice(WORDS, size=60), ""
    length = int(rng.integers(20, 201))
    for word in words:
        caption += word + " "
        if len(caption) >= length:
            break
    return {"image": image, "label": int(rng.integers(0, 1000)), "caption": caption[:length]}


def _packed(r: Dict[str, Any]) -> Dict[str, Any]:
    """A row as the peers with Arrow columns store it: the image's bytes and shape."""
    return {"image": r["image"].tobytes(), "shape": list(r["image"].shape), "label": r["label"],
            "caption": r["caption"]}


def _unpacked(images: List[bytes], shapes: Any) -> List[np.ndarray]:
    return [np.frombuffer(raw, dtype=np.uint8).reshape(tuple(shape)) for raw, shape in zip(images, shapes)]


# -- the contenders: each builds (timed) and opens its dataset, which reads a batch -------------------

Reader = Callable[[np.ndarray], Dict[str, Any]]


def build_ninja(root: Path, rows: int) -> None:
    from mmap_ninja.table import TableMmap

    TableMmap.from_generator(root / "ninja", (row(i) for i in range(rows)), batch_size=512)


def open_ninja(root: Path, rows: int) -> Reader:
    from mmap_ninja.table import TableMmap

    table = TableMmap(root / "ninja")
    return lambda indices: table[indices]


def open_ninja_copied(root: Path, rows: int) -> Reader:
    """The table built by ``build_ninja``, its images copied into one buffer (``take``)."""
    from mmap_ninja.table import TableMmap

    table = TableMmap(root / "ninja")

    def read(indices):
        batch = table.take(indices)
        batch["image"] = batch["image"].arrays()
        return batch

    return read


def _hf_rows(rows: int):
    for i in range(rows):
        yield _packed(row(i))


def build_hf(root: Path, rows: int) -> None:
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Value("binary"), "shape": datasets.Sequence(datasets.Value("int32"),
                                                                                                 length=3),
                                  "label": datasets.Value("int64"), "caption": datasets.Value("string")})
    built = datasets.Dataset.from_generator(_hf_rows, gen_kwargs={"rows": rows}, features=features,
                                            cache_dir=str(root / "hf_cache"))
    built.save_to_disk(str(root / "hf"))


def open_hf(root: Path, rows: int) -> Reader:
    import datasets

    # numpy for every column but the image's bytes (numpy's bytes dtype drops trailing zero bytes)
    ds = datasets.load_from_disk(str(root / "hf")).with_format("numpy", columns=["shape", "label", "caption"],
                                                               output_all_columns=True)

    def read(indices):
        batch = ds[indices]
        return {"image": _unpacked(batch["image"], batch["shape"]), "label": batch["label"],
                "caption": list(batch["caption"])}

    return read


def _lit_row(i: int) -> Dict[str, Any]:
    return row(i)


def build_litdata(root: Path, rows: int) -> None:
    import litdata

    litdata.optimize(fn=_lit_row, inputs=list(range(rows)), output_dir=str(root / "lit"), chunk_bytes="64MB",
                     num_workers=os.cpu_count() or 1, verbose=False)
    ds = litdata.StreamingDataset(str(root / "lit"))
    where = {}  # litdata's order of samples is its workers': find each row by its label and caption
    for k in range(len(ds)):
        sample = ds[k]
        where[(int(sample["label"]), sample["caption"])] = k
    keys = [(r["label"], r["caption"]) for r in (row(i) for i in range(rows))]
    np.save(root / "lit_order.npy", np.array([where[key] for key in keys], dtype=np.int64))


def open_litdata(root: Path, rows: int) -> Reader:
    import litdata

    ds = litdata.StreamingDataset(str(root / "lit"))
    order = np.load(root / "lit_order.npy")

    def read(indices):
        samples = [ds[int(k)] for k in order[indices]]
        return {"image": [s["image"] for s in samples], "label": np.array([s["label"] for s in samples], np.int64),
                "caption": [s["caption"] for s in samples]}

    return read


def build_lance(root: Path, rows: int) -> None:
    import lance
    import pyarrow as pa

    schema = pa.schema([("image", pa.large_binary()), ("shape", pa.list_(pa.int32(), 3)), ("label", pa.int64()),
                        ("caption", pa.string())])

    def batches():
        for start in range(0, rows, 512):
            packed = [_packed(row(i)) for i in range(start, min(rows, start + 512))]
            yield pa.RecordBatch.from_pylist(packed, schema=schema)

    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), str(root / "lance"))


def open_lance(root: Path, rows: int) -> Reader:
    import lance

    ds = lance.dataset(str(root / "lance"))

    def read(indices):
        batch = ds.take(indices)
        shapes = batch.column("shape").combine_chunks().flatten().to_numpy().reshape(-1, 3)
        return {"image": _unpacked(batch.column("image").to_pylist(), shapes),
                "label": batch.column("label").to_numpy(), "caption": batch.column("caption").to_pylist()}

    return read


# What each build writes under the benchmark's folder (removed before each build).
OUTPUTS = {"mmap_ninja": ["ninja"], "datasets": ["hf", "hf_cache"], "litdata": ["lit", "lit_order.npy"],
           "lance": ["lance"]}
# name: (build, open); a build of None reads what the contender before it built
CONTENDERS = {"mmap_ninja": (build_ninja, open_ninja), COPIED: (None, open_ninja_copied),
              "datasets": (build_hf, open_hf), "litdata": (build_litdata, open_litdata),
              "lance": (build_lance, open_lance)}


def check(read: Reader, indices: np.ndarray) -> bool:
    batch = read(indices)
    for k, i in enumerate(indices[:16].tolist()):
        want = row(i)
        if not (np.array_equal(batch["image"][k], want["image"]) and int(batch["label"][k]) == want["label"]
                and batch["caption"][k] == want["caption"]):
            return False
    return len(batch["image"]) == len(indices) and len(batch["label"]) == len(indices)


def batches_of(rows: int, batch: int, count: int, seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, rows, size=batch) for _ in range(count)]


def in_process(what: str, name: str, root: Path, rows: int, batch: int, count: int, seed: int) -> dict:
    """``build`` or ``read`` of contender ``name`` in a fresh process: what it measured."""
    code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import bench_tables as b; "
            f"print(json.dumps(b.run_one({what!r}, {name!r}, {str(root)!r}, {rows}, {batch}, {count}, {seed})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return {"error": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_one(what: str, name: str, root: str, rows: int, batch: int, count: int, seed: int) -> dict:
    build, opener = CONTENDERS[name]
    try:
        if what == "build":
            start = time.perf_counter()
            build(Path(root), rows)
            return {"seconds": time.perf_counter() - start}
        read = opener(Path(root), rows)
    except ImportError as exc:
        return {"missing": f"not installed ({exc.name})"}
    batches = batches_of(rows, batch, count, seed)
    right = check(read, batches[0])
    seconds = statistics.median(time_calls(read, batches[2:]) if len(batches) > 2 else time_calls(read, batches))
    return {"seconds": seconds, "right": right}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40, help="random batches read by each contender per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--build-rounds", type=int, default=3, help="builds of each contender, taking turns")
    parser.add_argument("--data", type=Path, default=HERE / ".data")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench_tables_", dir=args.data))
    load = os.getloadavg()[0]
    builds: Dict[str, float] = {}
    missing: Dict[str, str] = {}
    rounds: Dict[str, List[float]] = {}
    right: Dict[str, bool] = {}
    try:
        building = [name for name, (build, _) in CONTENDERS.items() if build is not None]
        times: Dict[str, List[float]] = {name: [] for name in building}
        for r in range(args.build_rounds):
            for name in building[r % len(building):] + building[:r % len(building)]:
                if name in missing:
                    continue
                for output in OUTPUTS[name]:  # each build from nothing
                    shutil.rmtree(root / output, ignore_errors=True)
                    if (root / output).is_file():
                        (root / output).unlink()
                print(f"building: {name} (round {r})", flush=True)
                done = in_process("build", name, root, args.rows, args.batch, 0, 0)
                if "seconds" in done:
                    times[name].append(done["seconds"])
                else:
                    missing[name] = done.get("missing") or f"failed: {done['error']}"
        builds = {name: statistics.median(values) for name, values in times.items() if values and name not in missing}
        names = [name for name in CONTENDERS if name not in missing and not (
            CONTENDERS[name][0] is None and list(CONTENDERS)[list(CONTENDERS).index(name) - 1] in missing)]
        rounds = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # each in turn, the first rotating
                done = in_process("read", name, root, args.rows, args.batch, args.batches + 2, r)
                if "seconds" not in done:
                    missing[name] = done.get("missing") or f"failed: {done['error']}"
                    continue
                rounds[name].append(done["seconds"])
                right[name] = right.get(name, True) and done["right"]
            print(f"round {r}: " + ", ".join(f"{name} {values[-1] * 1e3:.2f} ms" for name, values in rounds.items()
                                             if values), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rounds = {name: values for name, values in rounds.items() if values}

    per_batch = {name: statistics.median(values) for name, values in rounds.items()}
    peers = {name: s for name, s in per_batch.items() if not name.startswith("mmap_ninja")}
    best_peer = min(peers, key=peers.get) if peers else None
    ninja = per_batch["mmap_ninja"]
    table = ["| contender | build (s) | build vs `datasets` | random batch of "
             f"{args.batch} (ms) | rows/s | mmap_ninja faster by | right rows |", "|:--|--:|--:|--:|--:|--:|:--|"]
    for name in CONTENDERS:
        if name in missing or name not in per_batch:
            table.append(f"| {name} | {missing.get(name, 'not measured')} | | | | | |")
            continue
        hf = builds.get("datasets")
        if name == COPIED:
            table.append("| " + name + " | (the same table) | | ")
        else:
            table.append(f"| {name} | {builds[name]:.1f} | {builds[name] / hf:.2f}x | " if hf else
                         f"| {name} | {builds[name]:.1f} | - | ")
        table[-1] += (f"{per_batch[name] * 1e3:.2f} | {args.batch / per_batch[name]:,.0f} | "
                      f"{per_batch[name] / ninja:.1f}x | {'yes' if right[name] else 'NO'} |")
    print("\n".join(table), flush=True)
    targets = []
    if best_peer is not None:
        ratio = per_batch[best_peer] / ninja
        copied = per_batch[best_peer] / per_batch[COPIED]
        targets.append(f"- Per batch, at least 10 times faster than the best peer ({best_peer}): "
                       f"{'met' if ratio >= 10 else 'MISSED'}, {ratio:.1f}x (the images as views of the mapped "
                       f"files); {copied:.1f}x with the images copied into one buffer, as the peers copy them.")
    if "datasets" in builds:
        ratio = builds["mmap_ninja"] / builds["datasets"]
        targets.append(f"- Build no slower than `datasets`' `from_generator` + `save_to_disk`: "
                       f"{'met' if ratio <= 1 else 'MISSED'} ({builds['mmap_ninja']:.1f} s against "
                       f"{builds['datasets']:.1f} s).")
    image_bytes = sum(int(np.prod(row(i)["image"].shape)) for i in range(0, args.rows, max(1, args.rows // 200)))
    image_bytes = image_bytes / len(range(0, args.rows, max(1, args.rows // 200)))
    report = "\n".join([
        "# Tables: an image, its label and its caption per row",
        "",
        f"Run on {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, load {load:.2f} at the "
        f"start:",
        "",
        "```",
        "python benchmarks/bench_tables.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"{args.rows:,} rows: a `uint8` image of 64 to 256 pixels a side and 3 channels (about "
        f"{image_bytes / 1e3:,.0f} kB on average), an `int64` label and a caption of 20 to 200 characters. Random "
        f"batches of {args.batch} rows from the page cache, into a dict of numpy arrays and lists (images as "
        f"arrays of their shape: views of the mapped files for `t[indices]`, copies for `take` and the peers); the "
        f"medians of {args.rounds} rounds of {args.batches} batches per contender, "
        f"each contender in a process of its own, taking turns; builds: the median of {args.build_rounds} from "
        f"nothing, taking turns. `datasets` and Lance store the image as its "
        f"bytes and shape (their fastest layout for it); "
        f"litdata reads sample by sample (it has no batch read). Builds flush to disk as each library does by "
        f"default.",
        "",
        *table,
        "",
        *targets,
        "",
    ])
    (HERE / "TABLES.md").write_text(report)
    print("\n".join(targets))


if __name__ == "__main__":
    main()
