"""``mmap-ninja bench``: the comparison in mmap_ninja's documentation, rerun on this machine.

A folder of files read one by one (images decoded with Pillow, or ``.txt`` files) against the
same samples loaded into memory and in a map: the time to load, the time of one pass over every
sample (each one read in full), the memory the process holds, and the space on disk. Without
``--source`` it writes a folder of files like COCO's images (``images``) or the 20 newsgroups
posts (``texts``) first.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, List

import numpy as np

from ..ragged import RaggedMmap
from ..string import StringsMmap
from ._common import IMAGE_SUFFIXES, UsageError, positive, read_image

# (height, width) of images, as common in COCO.
IMAGE_SIZES = [(480, 640), (427, 640), (640, 480), (375, 500), (640, 427), (424, 640), (612, 612), (333, 500)]
WORDS = ("the of and to in is that for it with as was on be at by this have from or an are not but "
         "space graphics hockey encryption windows motorcycle christian medicine electronics baseball "
         "university computer program system file problem question government people anyone").split()


def anonymous_rss() -> int:
    """Resident anonymous memory of this process in bytes (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def generate_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEG photos-like images (gradients, shapes, noise) of COCO-like sizes."""

    try:
        from PIL import Image
    except ImportError:
        raise UsageError("generating images needs Pillow: pip install 'mmap_ninja[images]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        height, width = IMAGE_SIZES[k % len(IMAGE_SIZES)]
        y, x = np.mgrid[0:height, 0:width]
        image = np.empty((height, width, 3), np.float32)
        for channel in range(3):
            fx, fy, phase = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
            image[..., channel] = 127 + 100 * np.sin(fx * x + fy * y + phase)
        for _ in range(6):
            cy, cx, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(10, 120)
            mask = (y - cy) ** 2 + (x - cx) ** 2 < radius ** 2
            image[mask] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 8, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{k:012d}.jpg", quality=90)


def generate_texts(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` posts of about 1-3 KB, like the 20 newsgroups dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        body = " ".join(rng.choice(WORDS, size=int(rng.integers(150, 500))).tolist())
        text = f"From: user{k}@example.org\nSubject: Re: {WORDS[k % len(WORDS)]}\n\n{body}\n"
        (folder / f"{k:06d}.txt").write_text(text, encoding="utf-8")


def _read_all(sample):
    """Read every byte of a sample (the largest value of an array, the length of a str)."""
    return len(sample) if isinstance(sample, str) else np.max(sample, initial=0)


def _pass_time(samples: Callable[[], object], passes: int) -> float:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        for sample in samples():
            _read_all(sample)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _in_memory(files: List[Path], reader: Callable, passes: int) -> tuple:
    """``(load time, pass time, memory)`` of every file read into a list, freed after."""
    before = anonymous_rss()
    start = time.perf_counter()
    samples = [reader(f) for f in files]
    load = time.perf_counter() - start
    return load, _pass_time(lambda: samples, passes), anonymous_rss() - before


def measure(files: List[Path], reader: Callable, map_dir: Path, build: Callable, passes: int) -> dict:
    """The three ways of reading ``files``: rows of the table, and the one-off conversion time."""
    rows = {}
    source_bytes = sum(f.stat().st_blocks * 512 for f in files)  # the space the files take on disk

    rows["in_memory"] = _in_memory(files, reader, passes) + (source_bytes,)

    start = time.perf_counter()
    build(map_dir, files)
    conversion = time.perf_counter() - start
    before = anonymous_rss()
    start = time.perf_counter()
    opened = RaggedMmap(map_dir) if reader is not _read_text else StringsMmap(map_dir, mode="rb")
    load = time.perf_counter() - start
    map_bytes = sum(p.stat().st_blocks * 512 for p in map_dir.rglob("*") if p.is_file())
    pass_time = _pass_time(lambda: (opened[i] for i in range(len(opened))), passes)
    rows["mmap_ninja"] = (load, pass_time, anonymous_rss() - before, map_bytes)

    before = anonymous_rss()
    rows["read_from_disk"] = (0.0, _pass_time(lambda: map(reader, files), passes), anonymous_rss() - before,
                              source_bytes)
    return {"rows": rows, "conversion": conversion}


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def format_table(result: dict, what: str, count: int) -> str:
    rows = result["rows"]
    lines = ["| method | initial load (s) | time per pass (s) | memory | disk |", "|:--|--:|--:|--:|--:|"]
    for name, (load, pass_time, memory, disk) in rows.items():
        lines.append(f"| {name} | {load:.4f} | {pass_time:.4f} | {memory / 2**20:,.1f} MiB | {disk / 2**20:,.1f} MiB |")
    speedup = rows["read_from_disk"][1] / rows["mmap_ninja"][1]
    disk_ratio = rows["mmap_ninja"][3] / rows["read_from_disk"][3]
    lines += ["", f"{count:,} {what}: one pass over the map is {speedup:,.0f} times faster than reading the files "
              f"one by one; the map takes {disk_ratio:.1f} times their disk space, and was written once in "
              f"{result['conversion']:.1f} s."]
    return "\n".join(lines)


def command_bench(args) -> int:

    images = args.kind == "images"
    count = args.count or (500 if images else 11_314)
    workdir = Path(tempfile.mkdtemp(prefix="mmap_ninja_bench_", dir=args.workdir))
    try:
        if args.source is None:
            source = workdir / args.kind
            print(f"writing {count:,} {'JPEG images' if images else '.txt files'} to {source}", flush=True)
            (generate_images if images else generate_texts)(source, count)
        else:
            source = args.source
        suffixes = IMAGE_SUFFIXES if images else (".txt",)
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in suffixes)[:count]
        if not files:
            raise UsageError(f"{source} holds no {'image' if images else '.txt'} files")
        if images:
            def build(out, paths):
                RaggedMmap.from_generator(out, map(read_image, paths), batch_size=256, verbose=not args.quiet)
            result = measure(files, read_image, workdir / "map", build, args.passes)
        else:
            def build(out, paths):
                StringsMmap.from_generator(out, map(_read_text, paths), batch_size=1024, verbose=not args.quiet)
            result = measure(files, _read_text, workdir / "map", build, args.passes)
        print(format_table(result, args.kind, len(files)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def add_bench_command(commands) -> None:
    bench = commands.add_parser("bench", help="files read one by one against a map (images or texts)",
                                formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    bench.add_argument("kind", choices=["images", "texts"])
    bench.add_argument("--source", type=Path, help="a folder of image files or .txt files (default: written "
                       "for the run, and removed after)")

    bench.add_argument("--count", type=positive, help="how many files (default: 500 images, 11,314 texts)")
    bench.add_argument("--passes", type=positive, default=3, help="passes over the data (the median is shown)")
    bench.add_argument("--workdir", type=Path, help="where the map (and generated files) go")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=command_bench)
