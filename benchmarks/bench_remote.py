"""Reading a dataset from object storage: mmap_ninja.remote against litdata, on a local S3 server.

mmap_ninja's ``mmap_ninja.remote`` (a sharded map at an ``s3://`` URL, read through its local
cache) against litdata (``litdata.optimize`` + ``litdata.StreamingDataset``), both served by
the same S3-compatible server on loopback.

    python benchmarks/bench_remote.py [--quick] [--samples 200000] [--parts 24] [--rounds 3]
                                      [--data DIR] [--out DIR]

The server: moto's S3 (``moto.server``'s WSGI application, run as ``python -m moto.server``
runs it) in a process of its own on 127.0.0.1, so that it shares no GIL with the readers; it
is wrapped in a WSGI middleware that counts the bytes of every response body, so "downloaded"
below is what the server sent (counted between the start and the end of each measurement, when
nothing else talks to it). Every reader gets ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
``testing``, ``AWS_REGION``/``AWS_DEFAULT_REGION`` ``us-east-1``, ``AWS_ENDPOINT_URL`` the
server, ``NO_PROXY`` loopback.

``--quick``: 20,000 samples and one round (3 to 5 minutes on 2 cores, the most of it when
litdata's capped ``num_workers=2`` epoch waits out its 120 s chunk timeout); the defaults are
200,000 samples (about 850 MB) and 3 rounds.

The data: ``--samples`` int32 token sequences of 64 to 2,048 tokens (uniform; about 4.2 kB
each), sample ``i`` drawn by ``numpy.random.default_rng((SEED, i))``, written once into
``--data``:

- mmap_ninja: ``ShardedMmap.from_generator(..., part_size=ceil(samples / parts))`` (``--parts``
  parts, 24 by default: about 35 MB each at full size), uploaded with ``remote.push`` to
  ``s3://bench/ninja``;
- litdata: ``litdata.optimize(fn=sample, inputs=range(samples), chunk_bytes=<the same bytes per
  chunk as a part>, num_workers=1)`` (one worker, so litdata's index ``i`` is sample ``i``) into a
  local folder, uploaded to ``s3://bench/lit`` with boto3 (litdata's obstore client refuses an
  ``http://`` endpoint). Each litdata reader sets ``allow_http`` in
  ``litdata.streaming.downloader._OBSTORE_CLIENT_OPTIONS`` before opening the dataset (without
  it every chunk download fails with obstore's ``HTTP error: builder error``); DataLoader workers
  are forked, so they inherit it.

Every measurement runs in a fresh process on a fresh cache folder (wiped after it); the cases
take turns, ``--rounds`` times, and the tables give medians:

1. A cold epoch of batches of 256 (padded int64 batches), then a warm second epoch read from
   the cache by the same process, no cache limit. mmap_ninja: a ``DistributedSampler(...,
   block_size="parts", block_window=1)`` order (parts permuted, samples shuffled within each part's
   worth of positions, so a batch reads one part or two) through
   ``LookaheadSampler(batches=4)`` and a ``DataLoader`` (``num_workers`` 0 and 2, forked) with
   ``RaggedBatches(dtype=int64)``/``collate``, and through ``Loader(num_threads=2,
   lookahead=4)``; also the map itself as the dataset (``ShardedMmap.__getitems__``, which
   reads a batch part by part when its parts do not fit in the cache) with the padding collate
   litdata gets, ``num_workers=0``, no ``LookaheadSampler`` (the ``DistributedSampler`` asks the
   map for its ``prefetch_span`` ahead by itself). litdata: ``StreamingDataset(shuffle=True)``
   (chunks permuted, samples shuffled within them) through ``StreamingDataLoader``
   (``num_workers`` 0 and 2, forked) with a numpy padding collate. The time to first batch is
   the time from opening the dataset (cold cache) to the first batch of that cold epoch. The
   cache folder's size is sampled every 50 ms by a thread of the reader.
2. The same cold epoch with a cache limit of a quarter of the dataset for both
   (``cache_limit`` / ``max_cache_size``): samples/s, bytes downloaded, the peak size of the
   cache folder, and whether it stayed under the cap.
3. 100 cold random reads ``ds[i]`` (the same indices for both) on a fresh cache: the first
   read, the median read, and the total.

The size of a cache folder is the sum of the sizes of the files under it (downloads in progress
included), for both. Correctness is checked in every run: each epoch must give every sample
once (count, token count and token sum equal to the generated data's), and each random read
must equal the sample generated for its index; a run that fails a check is reported as failed.

MosaicML streaming is not measured: ``mosaicml-streaming`` 0.13.0 requires ``numpy<2.2.0``,
and this project pins numpy 2.4.6 (its ``torch<3,>=1.10`` would accept the pinned torch).

Writes the tables, with the machine and the versions, to ``--out``/REMOTE.md. Needs moto
(server), s3fs, obstore, boto3, litdata and torch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SEED = 20_240_611
VOCAB = 50_000
MIN_LEN, MAX_LEN = 64, 2048
WINDOW = 1  # mmap_ninja's DistributedSampler(block_window=...): a batch reads one part or two
BATCH = 256
LOOKAHEAD = 4
RANDOM_READS = 100
BUCKET = "bench"
NINJA_URL = f"s3://{BUCKET}/ninja"
LIT_URL = f"s3://{BUCKET}/lit"
COUNTER_PATH = "/__bench__/served"
SAMPLE_EVERY = 0.05  # seconds between two samples of the cache folder's size
RUN_TIMEOUT = 3600

# name: (contender, loader, workers)
LOADERS = {
    "mmap_ninja DataLoader(num_workers=0) + LookaheadSampler": ("ninja", "dataloader", 0),
    "mmap_ninja DataLoader(num_workers=2) + LookaheadSampler": ("ninja", "dataloader", 2),
    "mmap_ninja Loader(num_threads=2, lookahead=4)": ("ninja", "loader", 2),
    "mmap_ninja DataLoader(num_workers=0), ShardedMmap.__getitems__, no LookaheadSampler": ("ninja", "getitems", 0),
    "litdata StreamingDataLoader(num_workers=0)": ("lit", "dataloader", 0),
    "litdata StreamingDataLoader(num_workers=2)": ("lit", "dataloader", 2),
}
CONTENDERS = {"ninja": "mmap_ninja", "lit": "litdata"}
# name: (kind, contender, loader name or None)
CASES = {f"epoch: {name}": ("epoch", LOADERS[name][0], name) for name in LOADERS}
CASES.update({f"capped: {name}": ("capped", LOADERS[name][0], name) for name in LOADERS})
CASES.update({f"random: {CONTENDERS[c]} ds[i]": ("random", c, None) for c in CONTENDERS})


# -- the data ---------------------------------------------------------------------------------

def sample(i: int) -> np.ndarray:
    """Sample ``i``: int32 tokens, 64 to 2,048 of them, the same in every process."""
    rng = np.random.default_rng((SEED, int(i)))
    return rng.integers(0, VOCAB, int(rng.integers(MIN_LEN, MAX_LEN + 1)), dtype=np.int32)


def build(data: Path, n: int, parts: int) -> dict:
    """The map and litdata's chunks of ``n`` samples in ``data`` (written once), and their
    statistics (``stats.json``: what an epoch must add up to)."""
    import mmap_ninja
    from mmap_ninja.sharded import ShardedMmap

    stats_file = data / "stats.json"
    if stats_file.exists():
        return json.loads(stats_file.read_text())
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    stats = {"samples": n, "tokens": 0, "token_sum": 0, "parts": parts}

    def samples():
        for i in range(n):
            s = sample(i)
            stats["tokens"] += len(s)
            stats["token_sum"] += int(s.sum(dtype=np.int64))
            yield s

    print(f"  mmap_ninja: {n:,} samples in {parts} parts", flush=True)
    start = time.perf_counter()
    with mmap_ninja.durability(False):
        ShardedMmap.from_generator(data / "ninja", samples(), part_size=-(-n // parts), batch_size=10_000)
    stats["ninja_build_s"] = time.perf_counter() - start
    chunk_bytes = -(-stats["tokens"] * 4 // parts)
    print(f"  litdata: optimize, chunk_bytes={chunk_bytes:,}", flush=True)
    import litdata

    start = time.perf_counter()
    litdata.optimize(fn=sample, inputs=list(range(n)), output_dir=str(data / "lit"), chunk_bytes=chunk_bytes,
                     num_workers=1, verbose=False)
    stats["lit_build_s"] = time.perf_counter() - start
    stats["chunk_bytes"] = chunk_bytes
    local = litdata.StreamingDataset(str(data / "lit"))
    for i in (0, 1, n // 2, n - 1):  # litdata's index i is sample i (one optimize worker)
        assert np.array_equal(local[i], sample(i)), f"litdata's sample {i} is not sample({i})"
    stats_file.write_text(json.dumps(stats))
    return stats


# -- the server -------------------------------------------------------------------------------

def serve(port: int) -> None:
    """Run moto's S3 server (what ``python -m moto.server -H 127.0.0.1 -p PORT`` runs) with
    the bytes of every response counted; ``GET /__bench__/served`` says how many."""
    import signal

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    lock = threading.Lock()
    counts = {"bytes": 0, "requests": 0}

    def counted(environ, start_response):
        if environ.get("PATH_INFO") == COUNTER_PATH:
            with lock:
                body = json.dumps(counts).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        result = app(environ, start_response)

        def body():
            sent = 0
            try:
                for chunk in result:
                    sent += len(chunk)
                    yield chunk
            finally:
                if hasattr(result, "close"):
                    result.close()
                with lock:
                    counts["bytes"] += sent
                    counts["requests"] += 1

        return body()

    run_simple("127.0.0.1", port, counted, threaded=True, request_handler=MotoRequestHandler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(port: int) -> dict:
    """What the server has sent so far: ``{"bytes": ..., "requests": ...}``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(f"http://127.0.0.1:{port}{COUNTER_PATH}", timeout=30) as answer:
        return json.loads(answer.read())


def start_server() -> tuple:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            served(port)
            return server, port
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"the S3 server did not start on port {port}") from None
            time.sleep(0.2)


def server_env(port: int) -> dict:
    env = dict(os.environ)
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    for name in ("MMAP_NINJA_CACHE", "MMAP_NINJA_CACHE_LIMIT", "MAX_CACHE_SIZE", "AWS_ENDPOINT_URL_S3",
                 "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    return env


def upload(data: Path) -> dict:
    """Both datasets into the bucket (this process's environment names the server); the
    seconds each took and the bytes each stores."""
    import boto3

    from mmap_ninja import remote

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    start = time.perf_counter()
    remote.push(data / "ninja", NINJA_URL)
    ninja_s = time.perf_counter() - start
    start = time.perf_counter()
    for path in sorted((data / "lit").rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, "lit/" + path.relative_to(data / "lit").as_posix())
    lit_s = time.perf_counter() - start

    def stored(prefix: str) -> dict:
        objects = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                objects[obj["Key"][len(prefix) + 1:]] = obj["Size"]
        return {"bytes": sum(objects.values()), "files": len(objects), "objects": objects}

    ninja, lit = stored("ninja"), stored("lit")
    in_parts = [key for key in ninja.pop("objects") if key.startswith("parts/")]
    ninja.update(upload_s=ninja_s, manifest_bytes=s3.head_object(Bucket=BUCKET, Key="ninja/manifest.ninja")[
        "ContentLength"], files_per_part=len(in_parts) / max(1, len({key.split("/")[1] for key in in_parts})))
    lit.pop("objects")
    lit.update(upload_s=lit_s)
    return {"ninja": ninja, "lit": lit}


# -- one measurement, in a fresh process ------------------------------------------------------

def tree_size(folder: str) -> int:
    total = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += tree_size(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            pass
    return total


class CacheMonitor:
    """The size of a cache folder, sampled every ``SAMPLE_EVERY`` seconds by a thread: the
    largest seen (``peak``)."""

    def __init__(self, folder: Path):
        self.folder = str(folder)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_size(self.folder))
            self._stop.wait(SAMPLE_EVERY)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_size(self.folder))
        return self.peak


def pad_collate(samples):
    """litdata's batches: the samples padded into one int64 tensor, with their lengths."""
    import torch

    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    out = np.zeros((len(samples), int(lengths.max())), dtype=np.int64)
    for row, s, length in zip(out, samples, lengths.tolist()):
        row[:length] = s
    return {"input": torch.from_numpy(out), "lengths": torch.from_numpy(lengths)}


def litdata_allow_http() -> None:
    """Let litdata's obstore client (its chunk downloads) talk to an http:// endpoint."""
    import litdata.streaming.downloader as downloader

    downloader._OBSTORE_CLIENT_OPTIONS = dict(downloader._OBSTORE_CLIENT_OPTIONS, allow_http="true")


def open_lit(cache: Path, limit, shuffle: bool, seed: int):
    import litdata

    return litdata.StreamingDataset(LIT_URL, cache_dir=str(cache), max_cache_size=limit, shuffle=shuffle,
                                    seed=seed)


def open_ninja(cache: Path, limit):
    from mmap_ninja.sharded import ShardedMmap

    return ShardedMmap(NINJA_URL, cache_dir=cache, cache_limit=limit)


def epoch_run(loader_name: str, stats: dict, round_: int, cache: Path, limit, warm: bool) -> dict:
    """A cold epoch (and a warm one after it, when ``warm``) by the loader ``loader_name``."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader

    torch.set_num_threads(1)
    contender, kind, workers = LOADERS[loader_name]
    context = "fork" if workers else None
    if contender == "ninja":
        import obstore  # noqa: F401  (the clients, imported before the clock as litdata's are by `import litdata`)
        import s3fs  # noqa: F401

        from mmap_ninja.pytorch import DistributedSampler, Loader, LookaheadSampler, RaggedBatches, collate
    else:
        import litdata

        litdata_allow_http()
    monitor = CacheMonitor(cache)
    start = time.perf_counter()
    if contender == "ninja":
        dataset = RaggedBatches(open_ninja(cache, limit), dtype=np.int64)
        sampler = DistributedSampler(dataset.ragged, num_replicas=1, rank=0, seed=round_, block_size="parts",
                                     block_window=WINDOW)
        if kind == "getitems":  # the map itself as the dataset: lists of samples, padded as litdata's are
            dataset = dataset.ragged
            loader = DataLoader(dataset, batch_sampler=BatchSampler(sampler, BATCH, False), collate_fn=pad_collate)
        elif kind == "loader":
            loader = Loader(dataset, batch_size=BATCH, sampler=sampler, num_threads=workers, collate_fn=collate,
                            lookahead=LOOKAHEAD)
        else:
            batches = LookaheadSampler(BatchSampler(sampler, BATCH, False), dataset, batches=LOOKAHEAD)
            loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                                multiprocessing_context=context)
        set_epoch = sampler.set_epoch
    else:
        dataset = open_lit(cache, limit, True, round_)
        loader = litdata.StreamingDataLoader(dataset, batch_size=BATCH, num_workers=workers, collate_fn=pad_collate,
                                             multiprocessing_context=context)
        set_epoch = None  # StreamingDataLoader moves to the next epoch itself

    progress = {"samples": 0, "seconds": 0.0}

    def one_epoch(began: float) -> dict:
        first = None
        count = tokens = token_sum = 0
        progress["samples"] = 0
        for batch in loader:
            if first is None:
                first = time.perf_counter() - began
            count += len(batch["lengths"])
            tokens += int(batch["lengths"].sum())
            token_sum += int(batch["input"].sum())
            progress["samples"], progress["seconds"] = count, time.perf_counter() - began
        seconds = time.perf_counter() - began
        got = (count, tokens, token_sum)
        expected = (stats["samples"], stats["tokens"], stats["token_sum"])
        if got != expected:
            raise AssertionError(f"an epoch of {loader_name} gave (samples, tokens, token sum) {got}, "
                                 f"expected {expected}")
        return {"first": first, "seconds": seconds, "samples_per_s": count / seconds}

    try:
        cold = one_epoch(start)
    except Exception as exc:  # reported, with how far the epoch went and the cache's peak until then
        message = f"{type(exc).__name__}: {exc}".replace(str(cache), "<cache>").splitlines()[0]
        return {"error": message[:240].rstrip(" ;,"), "peak_cache": monitor.stop(),
                "samples_before_error": progress["samples"], "seconds_before_error": progress["seconds"]}
    result = {"first_batch_s": cold["first"], "cold_s": cold["seconds"], "cold_samples_per_s": cold["samples_per_s"],
              "peak_cache": monitor.stop(), "cache_after": tree_size(str(cache))}
    if warm:
        if set_epoch is not None:
            set_epoch(1)
        again = one_epoch(time.perf_counter())
        result.update({"warm_s": again["seconds"], "warm_samples_per_s": again["samples_per_s"]})
    return result


def random_run(contender: str, stats: dict, round_: int, cache: Path) -> dict:
    """``RANDOM_READS`` single reads ``ds[i]`` at random indices from a fresh cache."""
    if contender == "lit":
        litdata_allow_http()
    else:
        import obstore  # noqa: F401  (the clients, imported before the clock as litdata's are)
        import s3fs  # noqa: F401
    indices = np.random.default_rng((SEED, 1, round_)).integers(0, stats["samples"], RANDOM_READS).tolist()
    expected = [sample(i) for i in indices]
    start = time.perf_counter()
    ds = open_ninja(cache, None) if contender == "ninja" else open_lit(cache, None, False, 0)
    opened = time.perf_counter() - start
    times, got = [], []
    for i in indices:
        t = time.perf_counter()
        x = ds[i]
        times.append(time.perf_counter() - t)
        got.append(np.array(x))
    total = time.perf_counter() - start
    for i, x, e in zip(indices, got, expected):
        if x.dtype != e.dtype or not np.array_equal(x, e):
            raise AssertionError(f"{CONTENDERS[contender]} ds[{i}] is not sample {i}")
    return {"open_s": opened, "first_read_s": times[0], "median_read_s": statistics.median(times),
            "total_s": total, "cache_after": tree_size(str(cache))}


def worker_main(args) -> None:
    stats = json.loads((args.data / "stats.json").read_text())
    kind, contender, loader_name = CASES[args.one]
    if kind == "epoch":
        result = epoch_run(loader_name, stats, args.round, args.cache, None, warm=True)
    elif kind == "capped":
        result = epoch_run(loader_name, stats, args.round, args.cache, args.limit, warm=False)
    else:
        result = random_run(contender, stats, args.round, args.cache)
    print(json.dumps(result))


# -- the driver -------------------------------------------------------------------------------

def order_locality(data: Path) -> dict:
    """How many parts the batches of mmap_ninja's block-shuffled order (round 0) touch: the
    first batch, the median batch and the most."""
    from mmap_ninja.pytorch import DistributedSampler
    from mmap_ninja.sharded import ShardedMmap

    m = ShardedMmap(data / "ninja")
    order = np.fromiter(DistributedSampler(m, num_replicas=1, rank=0, seed=0, block_size="parts", block_window=WINDOW),
                        dtype=np.int64)
    parts = np.searchsorted(m.part_bounds, order, side="right") - 1
    touched = [len(np.unique(parts[k:k + BATCH])) for k in range(0, len(order), BATCH)]
    return {"first": touched[0], "median": float(np.median(touched)), "max": max(touched)}


def run(case: str, round_: int, data: Path, work: Path, port: int, env: dict, limit: int) -> dict:
    """``case`` in a fresh process on a fresh cache; what it measured, plus the bytes the
    server sent meanwhile (``downloaded``), or ``{"error": ...}``."""
    cache = work / f"cache-{round_}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    before = served(port)
    try:
        out = subprocess.run([sys.executable, __file__, "--one", case, "--round", str(round_), "--data", str(data),
                              "--cache", str(cache), "--limit", str(limit)],
                             capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT)
        returncode, stdout, stderr = out.returncode, out.stdout, out.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stdout, stderr = -1, "", f"timed out after {RUN_TIMEOUT} s\n{exc.stderr or ''}"
    after = served(port)
    shutil.rmtree(cache, ignore_errors=True)
    if returncode:
        lines = [line for line in (stderr or "").strip().splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if "Error" in line or "error" in line),
                     lines[-1] if lines else f"exit code {returncode}")
        print(f"    {case} failed:\n{(stderr or '')[-3000:]}", flush=True)
        return {"error": error.strip().replace(str(cache), "<cache>")[:240]}
    result = json.loads(stdout.strip().splitlines()[-1])
    if "error" in result:
        print(f"    {case} failed: {result['error']}\n{(stderr or '')[-2000:]}", flush=True)
    result["downloaded"] = after["bytes"] - before["bytes"]
    result["requests"] = after["requests"] - before["requests"]
    return result


def medians(results: list) -> dict:
    """Median of each measure over the runs that did not fail, the first error if any did,
    and every peak cache size seen (for the cap check)."""
    good = [r for r in results if "error" not in r]
    out = {key: statistics.median(r[key] for r in good) for key in (good[0] if good else {})}
    out["runs"], out["failed"] = len(results), len(results) - len(good)
    bad = [r for r in results if "error" in r]
    if bad:
        out["error"] = bad[0]["error"]
        out["how_far"] = [(r.get("samples_before_error"), r.get("seconds_before_error"), r.get("downloaded"))
                          for r in bad]
    out["peaks"] = [r["peak_cache"] for r in results if "peak_cache" in r]  # failed runs' too
    return out


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if abs(n) >= 1e6 else f"{n / 1e3:,.0f} kB"


def ms(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:,.1f} µs"
    return f"{s * 1e3:,.1f} ms" if s < 1 else f"{s:,.2f} s"


def versions() -> str:
    from importlib.metadata import version

    import mmap_ninja

    names = ["litdata", "obstore", "s3fs", "boto3", "moto", "torch", "numpy"]
    return ", ".join([f"mmap_ninja {mmap_ninja.__version__}"] + [f"{name} {version(name)}" for name in names])


def report(args, n: int, rounds: int, stats: dict, stored: dict, limit: int, results: dict, load: float,
           wall: float) -> str:
    from bench_batches import describe_machine

    meds = {case: medians(rs) for case, rs in results.items()}
    token_bytes = stats["tokens"] * 4

    def failed(m: dict) -> str:
        if not m.get("failed"):
            return ""
        text = f"failed in {m['failed']} of {m['runs']} run(s): {m['error']}"
        far = [f"{samples:,} samples in {seconds:.1f} s, {mb(down)} downloaded" for samples, seconds, down
               in m.get("how_far", []) if samples is not None and down is not None]
        return text + (f" (before the error: {'; '.join(far)})" if far else "")

    def under(peak: int) -> str:
        return "yes" if peak <= limit else f"no: {mb(peak - limit)} over"

    lines = [
        "# Reading from object storage: mmap_ninja.remote against litdata",
        "",
        f"Measured {datetime.date.today()} with `python benchmarks/bench_remote.py{' --quick' if args.quick else ''}"
        f"{f' --samples {args.samples}' if args.samples else ''}{f' --rounds {args.rounds}' if args.rounds else ''}"
        f"` in {wall / 60:,.1f} minutes. Machine: {describe_machine()}; {versions()}. Load average (1 min) just "
        f"before the run: {load:.2f}."
        + (" **A `--quick` smoke run (small data, one round): not results to quote.**" if args.quick else ""),
        "",
        f"{n:,} int32 token sequences of {MIN_LEN} to {MAX_LEN:,} tokens ({mb(token_bytes)} of tokens). Stored: "
        f"mmap_ninja {mb(stored['ninja']['bytes'])} in {stored['ninja']['files']} objects ({stats['parts']} parts, "
        f"each one object holding its files back to back; the manifest is "
        f"{stored['ninja']['manifest_bytes'] / 1e3:,.0f} kB), litdata "
        f"{mb(stored['lit']['bytes'])} in {stored['lit']['files']} objects (chunk_bytes {stats['chunk_bytes']:,}). "
        f"Served by moto's S3 server on 127.0.0.1 in its own process. Each measurement in a fresh process on a "
        f"fresh cache folder; medians of {rounds} round(s), the cases taking turns. \"Downloaded\" is the bytes of "
        f"the server's responses during the run, divided by the contender's stored bytes, and \"GETs\" the "
        f"requests it answered; cache sizes are the files under the cache folder (downloads in progress "
        f"included), sampled every {SAMPLE_EVERY * 1e3:.0f} ms.",
        "",
        "## A cold epoch, then a warm one from the cache (no cache limit)",
        "",
        "Batches of 256, padded to int64. First batch: from opening the dataset (cold cache) to the first batch. "
        "The cold epoch is timed from opening the dataset to its last batch; the warm epoch is the same process's "
        "second epoch, every byte in the cache.",
        "",
        "| loader | first batch | cold samples/s | cold vs litdata | warm samples/s | warm vs litdata | "
        "downloaded | GETs | peak cache |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    epoch = {name: meds[f"epoch: {name}"] for name in LOADERS}
    capped = {name: meds[f"capped: {name}"] for name in LOADERS}

    def lit_reference(name: str, table: dict, key: str, best=max):
        """litdata's value with the same number of workers (for mmap_ninja's Loader, litdata's best)."""
        contender, kind, workers = LOADERS[name]
        if kind != "loader":
            m = table[f"litdata StreamingDataLoader(num_workers={workers})"]
            return m.get(key)
        values = [table[n].get(key) for n in LOADERS if LOADERS[n][0] == "lit" and table[n].get(key) is not None]
        return best(values) if values else None

    for name, m in epoch.items():
        contender = LOADERS[name][0]
        if "cold_s" not in m:
            lines.append(f"| {name}: {failed(m)} | | | | | | | | |")
            continue
        cold_ref = lit_reference(name, epoch, "cold_samples_per_s")
        warm_ref = lit_reference(name, epoch, "warm_samples_per_s")
        vs_cold = f"{m['cold_samples_per_s'] / cold_ref:.2f}x" if contender == "ninja" and cold_ref else ""
        vs_warm = f"{m['warm_samples_per_s'] / warm_ref:.2f}x" if contender == "ninja" and warm_ref else ""
        note = f" ({failed(m)})" if m["failed"] else ""
        lines.append(f"| {name}{note} | {ms(m['first_batch_s'])} | {m['cold_samples_per_s']:,.0f} | {vs_cold} | "
                     f"{m['warm_samples_per_s']:,.0f} | {vs_warm} | "
                     f"{m['downloaded'] / stored[contender]['bytes']:.2f}x | {m['requests']:,.0f} | "
                     f"{mb(m['peak_cache'])} |")
    lines += ["", "\"vs litdata\": against litdata with the same number of workers (for `Loader`, litdata's best).",
              "", f"## A cold epoch with the cache capped at a quarter of the dataset ({mb(limit)})", "",
              f"`cache_limit={limit}` for mmap_ninja, `max_cache_size={limit}` for litdata. The peak is the largest "
              f"size of the cache folder seen in any round, failed runs included (until they failed); mmap_ninja's "
              f"`cache_limit` counts its parts, downloads in progress and the map's manifest "
              f"({stored['ninja']['manifest_bytes'] / 1e3:,.0f} kB).", "",
              "| loader | samples/s | vs litdata | downloaded | GETs | peak cache | under the cap |",
              "|:--|--:|--:|--:|--:|--:|:--|"]
    for name, m in capped.items():
        contender = LOADERS[name][0]
        peak = max(m["peaks"]) if m["peaks"] else None
        if "cold_s" not in m:
            lines.append(f"| {name}: {failed(m)} | | | | | {mb(peak) if peak is not None else ''} | "
                         f"{under(peak) if peak is not None else ''} |")
            continue
        ref = lit_reference(name, capped, "cold_samples_per_s")
        vs = f"{m['cold_samples_per_s'] / ref:.2f}x" if contender == "ninja" and ref else ""
        note = f" ({failed(m)})" if m["failed"] else ""
        lines.append(f"| {name}{note} | {m['cold_samples_per_s']:,.0f} | {vs} | "
                     f"{m['downloaded'] / stored[contender]['bytes']:.2f}x | {m['requests']:,.0f} | {mb(peak)} | "
                     f"{under(peak)} |")
    lines += ["", f"## {RANDOM_READS} cold random reads `ds[i]`", "",
              "The same random indices for both, on a fresh cache, one after the other; `open` is opening the "
              "dataset, `all` is the open and every read.", "",
              "| contender | open | first read | median read | all | downloaded | cache after |",
              "|:--|--:|--:|--:|--:|--:|--:|"]
    for contender, label in CONTENDERS.items():
        m = meds[f"random: {label} ds[i]"]
        if "total_s" not in m:
            lines.append(f"| {label} | {failed(m)} | | | | | |")
            continue
        lines.append(f"| {label} | {ms(m['open_s'])} | {ms(m['first_read_s'])} | {ms(m['median_read_s'])} | "
                     f"{ms(m['total_s'])} | {mb(m['downloaded'])} ({m['downloaded'] / stored[contender]['bytes']:.2f}x)"
                     f" | {mb(m['cache_after'])} |")
    lines += targets(epoch, capped, meds, limit)
    lines += [
        "", "## How it was set up", "",
        f"- The server: `moto.server`'s WSGI application with `werkzeug.serving.run_simple` (as `python -m "
        f"moto.server -H 127.0.0.1` runs it), wrapped in a middleware counting the bytes of every response body "
        f"(`{COUNTER_PATH}` reports them).",
        "- mmap_ninja: `ShardedMmap.from_generator(..., part_size=ceil(samples / parts))`, then "
        f"`mmap_ninja.remote.push(local_dir, \"{NINJA_URL}\")`; read with `ShardedMmap(\"{NINJA_URL}\", "
        "cache_dir=..., cache_limit=...)`: the manifest and the parts downloaded through obstore (keys and "
        "endpoint from the `AWS_*` environment; through s3fs in a DataLoader worker forked from a process that "
        "used obstore). A look-ahead (`LookaheadSampler`, `Loader(lookahead=)`) asks for the map's "
        "`prefetch_span` (two parts' worth of samples) ahead of the reads, whatever its `batches` says.",
        "- litdata: `litdata.optimize(fn=sample, inputs=list(range(samples)), output_dir=<local folder>, "
        "chunk_bytes=<bytes per mmap_ninja part>, num_workers=1)`, the folder uploaded to "
        f"`{LIT_URL}/` with boto3 (`upload_file` for each file), because litdata's obstore client refuses an "
        "`http://` endpoint. Readers: `litdata.streaming.downloader._OBSTORE_CLIENT_OPTIONS = "
        "dict(_OBSTORE_CLIENT_OPTIONS, allow_http=\"true\")` before `StreamingDataset(\"s3://bench/lit\", "
        "cache_dir=..., max_cache_size=...)` (without it chunk downloads fail with obstore's `HTTP error: builder "
        "error`; `index.json` and `ds[i]` go through boto3, which reads `AWS_ENDPOINT_URL`); DataLoader workers "
        "are forked, and inherit it. litdata's `ds[i]` fetches only the sample's bytes (a range request, its "
        "`on_demand_bytes` default); its iteration downloads whole chunks.",
        f"- Uploads: mmap_ninja `push` {stored['ninja']['upload_s']:.1f} s, litdata (boto3) "
        f"{stored['lit']['upload_s']:.1f} s; the one-time builds: mmap_ninja {stats['ninja_build_s']:.1f} s, "
        f"`litdata.optimize` {stats['lit_build_s']:.1f} s.",
        f"- mmap_ninja's order: `DistributedSampler(block_size=\"parts\", block_window={WINDOW})` permutes the parts "
        f"and shuffles the samples within runs of {WINDOW} part's worth of positions, so a batch of 256 touches "
        f"{stats['locality']['median']:.0f} parts (median; the first batch {stats['locality']['first']}, at most "
        f"{stats['locality']['max']} where a batch spans two runs), each downloaded whole before it is read; "
        f"a quarter of the dataset holds {stats['parts'] / 4:.0f} parts. litdata's first batch needs one chunk.",
        "- Checked in every run: each epoch gives every sample once (sample count, token count and token sum "
        "equal to the generated data's), and each random read equals the sample generated for its index. "
        + ("Every run passed." if not any(m.get("failed") for m in meds.values())
           else "Runs that failed a check or raised are reported as failed."),
        "- MosaicML streaming was not measured: it is not installed, and it cannot be beside this project's pins: "
        "`mosaicml-streaming` 0.13.0 (its METADATA, `pip download --no-deps mosaicml-streaming==0.13.0`) requires "
        "`numpy<2.2.0,>=1.21.5`, and numpy is pinned to 2.4.6 (its `torch<3,>=1.10` accepts the pinned torch "
        "2.13.0).",
    ]
    return "\n".join(lines) + "\n"


def targets(epoch: dict, capped: dict, meds: dict, limit: int) -> list:
    """The targets, met or missed, with the numbers."""
    def best(table: dict, contender: str, key: str, lower: bool = False):
        values = [(m[key], name) for name, m in table.items() if LOADERS[name][0] == contender and key in m]
        if not values:
            return None, None
        return min(values) if lower else max(values)

    rows = []

    def row(what: str, ours, theirs, met: bool, fmt) -> None:
        def cell(value, name):
            return "every run failed" if value is None else f"{fmt(value)} ({name})"

        verdict = "not measured" if ours[0] is None or theirs[0] is None else "met" if met else "missed"
        rows.append(f"| {what} | {cell(*ours)} | {cell(*theirs)} | {verdict} |")

    speed = lambda v: f"{v:,.0f} samples/s"  # noqa: E731
    ours, theirs = best(epoch, "ninja", "first_batch_s", True), best(epoch, "lit", "first_batch_s", True)
    row("time to first batch at most half of litdata's (best of each)", ours, theirs,
        ours[0] is not None and theirs[0] is not None and ours[0] <= theirs[0] / 2, ms)
    ours, theirs = best(epoch, "ninja", "cold_samples_per_s"), best(epoch, "lit", "cold_samples_per_s")
    row("cold epoch at least 1.5x litdata's samples/s (best of each)", ours, theirs,
        ours[0] is not None and theirs[0] is not None and ours[0] >= 1.5 * theirs[0], speed)
    ours, theirs = best(epoch, "ninja", "warm_samples_per_s"), best(epoch, "lit", "warm_samples_per_s")
    row("warm epoch at least as fast as litdata (best of each)", ours, theirs,
        ours[0] is not None and theirs[0] is not None and ours[0] >= theirs[0], speed)
    ours, theirs = best(capped, "ninja", "cold_samples_per_s"), best(capped, "lit", "cold_samples_per_s")
    row("capped cold epoch at least as fast as litdata (best of each)", ours, theirs,
        ours[0] is not None and theirs[0] is not None and ours[0] >= theirs[0], speed)
    for key, what in (("first_read_s", "first cold random read"), ("median_read_s", "median cold random read"),
                      ("total_s", f"{RANDOM_READS} cold random reads, open included")):
        a, b = meds["random: mmap_ninja ds[i]"], meds["random: litdata ds[i]"]
        row(f"{what} at least as fast as litdata", (a.get(key), "ds[i]"), (b.get(key), "ds[i]"),
            a.get(key) is not None and b.get(key) is not None and a[key] <= b[key], ms)
    for contender, label in CONTENDERS.items():
        peaks = [p for name, m in capped.items() if LOADERS[name][0] == contender for p in m["peaks"]]
        fails = sum(m.get("failed", 0) for name, m in capped.items() if LOADERS[name][0] == contender)
        runs = sum(m.get("runs", 0) for name, m in capped.items() if LOADERS[name][0] == contender)
        if peaks:
            verdict = "met" if max(peaks) <= limit else f"missed by {mb(max(peaks) - limit)}"
            if fails:
                verdict += f" (but {fails} of {runs} capped runs failed)"
            rows.append(f"| {label}'s cache folder never above the cap ({mb(limit)}) | peak {mb(max(peaks))} | | "
                        f"{verdict} |")
        else:
            rows.append(f"| {label}'s cache folder never above the cap ({mb(limit)}) | no capped run measured | | "
                        f"not measured |")
    return ["", "## Targets", "", "| target | mmap_ninja | litdata | |", "|:--|:--|:--|:--|"] + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (20,000 samples, 1 round)")
    parser.add_argument("--samples", type=int, default=None, help="default 200,000 (--quick: 20,000)")
    parser.add_argument("--parts", type=int, default=24, help="parts of the map, and litdata chunks (about)")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--data", type=Path, default=HERE / ".data", help="where the datasets and caches are kept")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        return serve(args.serve)
    if args.one is not None:
        return worker_main(args)
    began = time.perf_counter()
    load = os.getloadavg()[0]
    n = args.samples or (20_000 if args.quick else 200_000)
    rounds = args.rounds or (1 if args.quick else 3)
    data = args.data / f"remote-{n}-{args.parts}"
    print(f"data in {data}", flush=True)
    stats = build(data, n, args.parts)
    stats["locality"] = order_locality(data)

    server, port = start_server()
    try:
        env = server_env(port)
        os.environ.clear()  # this process pushes and uploads with the readers' environment
        os.environ.update(env)
        print(f"S3 server on 127.0.0.1:{port} (pid {server.pid}); uploading", flush=True)
        stored = upload(data)
        limit = min(stored["ninja"]["bytes"], stored["lit"]["bytes"]) // 4
        print(f"  stored: mmap_ninja {mb(stored['ninja']['bytes'])}, litdata {mb(stored['lit']['bytes'])}; "
              f"cap {mb(limit)}", flush=True)
        work = data / "work"
        results = {case: [] for case in CASES}
        names = list(CASES)
        for r in range(rounds):
            for case in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                results[case].append(run(case, r, data, work, port, env, limit))
                print(f"  round {r} {case} ({time.perf_counter() - start:.1f} s): {results[case][-1]}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    text = report(args, n, rounds, stats, stored, limit, results, load, time.perf_counter() - began)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "REMOTE.md").write_text(text)


if __name__ == "__main__":
    main()
