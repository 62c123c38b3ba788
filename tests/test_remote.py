"""Maps in object storage (mmap_ninja.remote), against a real S3-compatible server on loopback
(moto's ThreadedMotoServer) and a fault-injecting proxy in front of it (tests/object_store.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import errors_of_threads

import mmap_ninja
from mmap_ninja import RaggedMmap, StringsMmap, remote
from mmap_ninja import numpy as np_ninja
from mmap_ninja.cli import main
from mmap_ninja.remote import CacheFull, RemoteError, Store
from mmap_ninja.remote.cache import files_size
from mmap_ninja.sharded import RemoteShardedMmap, ShardedMmap, write_part

TESTS = Path(__file__).parent


def ragged_samples(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50_000, rng.integers(0, 400)).astype(np.int32) for _ in range(count)]


def sharded_map(path: Path, count: int = 2000, part_size: int = 250, keys: bool = False, seed: int = 0):
    samples = ragged_samples(count, seed)
    ShardedMmap.from_generator(path, samples, part_size=part_size,
                               keys=[f"doc-{i}" for i in range(count)] if keys else None)
    return samples


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "writer.lock"}


def as_list(batch):
    """A DataLoader's collate_fn that keeps a batch as the list of its samples."""
    return batch


@pytest.fixture(params=["obstore", "fsspec"])
def client(request, monkeypatch) -> str:
    """The client that downloads: obstore (the default for s3:// with keys) or fsspec (s3fs)."""
    monkeypatch.setenv("MMAP_NINJA_OBSTORE", "1" if request.param == "obstore" else "0")
    return request.param


def cache_size(cache: Path) -> int:
    """Bytes of the complete parts and key tables in a cache folder, and its live reservations."""
    return remote.Cache(cache).size()


# -- push and pull ---------------------------------------------------------------------------------


def test_push_and_pull_keep_every_kind_with_its_keys_and_checksums(s3, tmp_path):
    ragged = ragged_samples(300)
    RaggedMmap.from_generator(tmp_path / "ragged", ragged, batch_size=64, keys=[f"r{i}" for i in range(300)])
    texts = [f"text {i} " + "é" * (i % 7) for i in range(200)]
    StringsMmap.from_strings(tmp_path / "strings", texts)
    rows = np.arange(600, dtype=np.float32).reshape(200, 3)
    np_ninja.from_ndarray(tmp_path / "numpy", rows)
    sharded = sharded_map(tmp_path / "sharded", 1000, 200, keys=True)

    for name in ("ragged", "strings", "numpy", "sharded"):
        url = f"{s3}/{name}"
        manifest = remote.push(tmp_path / name, url)
        assert manifest["version"] == 0
        assert not remote.verify(url, deep=True), name
        remote.pull(url, tmp_path / "pulled" / name)
    # plain maps come back as plain maps, byte for byte; the sharded one as a sharded map
    for name in ("ragged", "strings", "numpy"):
        assert files_of(tmp_path / "pulled" / name) == files_of(tmp_path / name), name
    assert RaggedMmap(tmp_path / "pulled" / "ragged").by_key["r17"].tolist() == ragged[17].tolist()
    assert StringsMmap(tmp_path / "pulled" / "strings")[:] == texts
    assert np.array_equal(np_ninja.open_existing(tmp_path / "pulled" / "numpy"), rows)
    pulled = ShardedMmap(tmp_path / "pulled" / "sharded")
    assert pulled.kind == "ragged" and len(pulled) == 1000
    assert all(np.array_equal(pulled[i], sharded[i]) for i in range(0, 1000, 7))
    assert pulled.by_key["doc-999"].tolist() == sharded[999].tolist()
    assert not mmap_ninja.verify(tmp_path / "pulled" / "sharded", deep=True)
    for part in ShardedMmap(tmp_path / "sharded").part_names:
        assert files_of(tmp_path / "pulled" / "sharded" / "parts" / part) == \
            files_of(tmp_path / "sharded" / "parts" / part)


def test_every_kind_opens_at_its_url_and_reads_as_the_local_map(s3, tmp_path):
    rng = np.random.default_rng(1)
    ragged = sharded_map(tmp_path / "sharded", 1500, 300, keys=True)
    texts = [f"line {i}" for i in range(500)]
    StringsMmap.from_strings(tmp_path / "strings", texts)
    rows = rng.standard_normal((400, 5)).astype(np.float64)
    np_ninja.from_ndarray(tmp_path / "numpy", rows)
    for name in ("sharded", "strings", "numpy"):
        remote.push(tmp_path / name, f"{s3}/{name}")
    cache = tmp_path / "cache"

    m = mmap_ninja.open_existing(f"{s3}/sharded", cache_dir=cache)
    assert isinstance(m, RemoteShardedMmap) and m.url == f"{s3}/sharded" and len(m) == 1500
    for _ in range(5):
        index = rng.integers(0, 1500, 64)
        assert all(np.array_equal(a, ragged[i]) for a, i in zip(m[index.tolist()], index))
        batch = m.take(index)
        assert all(np.array_equal(batch[k], ragged[i]) for k, i in enumerate(index))
        padded, lengths = m.padded(index)
        assert lengths.tolist() == [len(ragged[i]) for i in index]
    assert m.index_of("doc-1234") == 1234
    assert [x.tolist() for x in m] == [x.tolist() for x in ragged]

    s = ShardedMmap(f"{s3}/strings", cache_dir=cache)
    assert s[[3, 1, 499]] == ["line 3", "line 1", "line 499"] and s.get_bytes(2) == b"line 2"
    n = ShardedMmap(f"{s3}/numpy", cache_dir=cache)
    assert np.array_equal(n[[5, 0, 399]], rows[[5, 0, 399]])
    assert np.array_equal(n.__getitems__([7, 8]), rows[[7, 8]]) or \
        all(np.array_equal(a, b) for a, b in zip(n.__getitems__([7, 8]), rows[[7, 8]]))


def test_the_manifest_is_one_small_get_and_parts_are_downloaded_on_first_read(s3, fault_proxy, tmp_path, client):
    sharded_map(tmp_path / "local", 1000, 250)
    remote.push(tmp_path / "local", f"{s3}/m")
    fault_proxy.reset()
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache")
    gets = fault_proxy.gets("/")
    assert gets[f"/{s3[5:]}/m/manifest.ninja"] == 1 and not fault_proxy.gets("/parts/")
    m[10]
    first = fault_proxy.gets("/parts/")
    assert first and all(m.part_names[0] in path for path in first)  # only the part read
    m[11], m[200]
    assert fault_proxy.gets("/parts/") == first  # read from the cache since


def test_pull_refuses_a_folder_that_is_not_empty_and_leaves_nothing_when_it_fails(s3, tmp_path):
    sharded_map(tmp_path / "local", 400, 200)
    remote.push(tmp_path / "local", f"{s3}/m")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="busy"):
        remote.pull(f"{s3}/m", tmp_path / "busy")
    assert os.listdir(tmp_path / "busy") == ["mine.txt"]
    with pytest.raises(FileNotFoundError, match="no map there"):
        remote.pull(f"{s3}/nothing", tmp_path / "new")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.*"))


# -- the cache -------------------------------------------------------------------------------------


def test_an_epoch_through_a_cache_of_a_quarter_of_the_map_stays_under_the_cap(s3, tmp_path):
    samples = sharded_map(tmp_path / "local", 2000, 125)  # 16 parts
    remote.push(tmp_path / "local", f"{s3}/m")
    total = sum(f["size"] for part in remote.latest_manifest(Store(f"{s3}/m"))["parts"] for f in part["files"])
    limit = total // 4
    cache = tmp_path / "cache"
    m = ShardedMmap(f"{s3}/m", cache_dir=cache, cache_limit=limit)
    sizes, done = [], threading.Event()

    def sample_size():
        while not done.is_set():
            sizes.append(cache_size(cache))
            time.sleep(0.02)

    watcher = threading.Thread(target=sample_size)
    watcher.start()
    try:
        for i, sample in enumerate(m):
            assert np.array_equal(sample, samples[i])
        rng = np.random.default_rng(0)
        for start in range(0, 2000, 125):  # a shuffled epoch, part by part
            index = start + rng.permutation(125)
            assert all(np.array_equal(a, samples[i]) for a, i in zip(m[index], index))
        index = rng.permutation(2000)[:512]  # a batch over every part: read part by part
        assert all(np.array_equal(a, samples[i]) for a, i in zip(m[index], index))
        assert all(np.array_equal(a, samples[i]) for a, i in zip(m.__getitems__(index), index))
        batch = m.take(index)
        assert all(np.array_equal(batch[k], samples[i]) for k, i in enumerate(index))
        local = ShardedMmap(tmp_path / "local")
        for options in ({}, {"pad_value": -1, "max_len": 100, "dtype": np.int64}):
            padded, lengths = m.padded(index, **options)
            expected, expected_lengths = local.padded(index, **options)
            assert np.array_equal(padded, expected) and np.array_equal(lengths, expected_lengths)
    finally:
        done.set()
        watcher.join()
    assert len(sizes) > 10 and max(sizes) <= limit
    assert cache_size(cache) <= limit


def test_threads_reading_one_map_under_a_capped_cache_get_every_sample(tmp_path):
    from mmap_ninja.pytorch import DistributedSampler, Loader, RaggedBatches, collate

    samples = sharded_map(tmp_path / "local", 3000, 150)  # 20 parts
    url = (tmp_path / "store").as_uri()
    remote.push(tmp_path / "local", url)
    total = sum(f["size"] for part in remote.latest_manifest(Store(url))["parts"] for f in part["files"])
    m = ShardedMmap(url, cache_dir=tmp_path / "cache", cache_limit=total // 4)
    sampler = DistributedSampler(m, 1, 0, seed=5, block_size="parts", block_window=1)
    seen = []
    for batch in Loader(RaggedBatches(m, dtype=np.int64), batch_size=64, sampler=sampler, num_threads=2,
                        collate_fn=collate, lookahead=2):
        seen += [int(length) for length in batch["lengths"]]
        assert cache_size(tmp_path / "cache") <= total // 4
    assert sorted(seen) == sorted(len(x) for x in samples)

    def read_randomly(seed):  # batches over every part at once, from four threads
        rng = np.random.default_rng(seed)
        for _ in range(5):
            index = rng.integers(0, 3000, 200)
            assert all(np.array_equal(a, samples[i]) for a, i in zip(m[index], index))

    errors = errors_of_threads(read_randomly, 4)
    assert not errors and cache_size(tmp_path / "cache") <= total // 4


def test_a_lookahead_downloads_the_next_parts_before_they_are_read(s3, tmp_path):
    import torch

    from mmap_ninja.pytorch import LookaheadSampler

    sharded_map(tmp_path / "local", 1000, 100)  # 10 parts
    remote.push(tmp_path / "local", f"{s3}/m")
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache")
    assert m.prefetch_span == 200  # two parts' worth
    names = [entry["name"] for entry in m._state[0]["parts"]]
    batches = torch.utils.data.BatchSampler(range(1000), 50, False)
    it = iter(LookaheadSampler(batches, m, batches=1))
    assert next(it) == list(range(50))  # yielded once samples 0-249 were asked for: parts 0, 1 and 2
    for future in list(m._mirror._pending.values()):
        future.result(timeout=120)
    assert sorted(os.listdir(m._mirror.local / "parts")) == sorted(names[:3])
    part = sum(files_size(entry["files"]) for entry in m._state[0]["parts"]) / len(names)
    capped = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "small", cache_limit=int(3.5 * part))
    assert capped.prefetch_span == 100  # one part ahead, two beside it under the limit
    assert ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "tiny", cache_limit=int(2.5 * part)).prefetch_span == 0


def test_parts_downloaded_ahead_are_evicted_after_the_parts_read_already(s3, tmp_path):
    samples = sharded_map(tmp_path / "local", 1000, 250)  # 4 parts
    remote.push(tmp_path / "local", f"{s3}/m")
    manifest = remote.latest_manifest(Store(f"{s3}/m"))
    sizes = [files_size(part["files"]) for part in manifest["parts"]]
    names = [part["name"] for part in manifest["parts"]]
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache", cache_limit=sum(sizes[1:]) + (64 << 10))
    assert sizes[0] > 64 << 10  # four parts do not fit
    m.prefetch([250, 500])  # parts 1 and 2, downloaded ahead of their reads
    for future in list(m._mirror._pending.values()):
        future.result(timeout=60)
    assert np.array_equal(m[0], samples[0])  # part 0, downloaded and read after them
    m.close()
    assert np.array_equal(m[999], samples[999])  # part 3: one part must go, and it is part 0
    assert sorted(os.listdir(m._mirror.local / "parts")) == sorted(names[1:])
    assert all(np.array_equal(m[i], samples[i]) for i in (250, 500))
    # a download ahead never evicts parts downloaded ahead and not read yet: it is not made
    ahead = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "ahead", cache_limit=sizes[1] + sizes[2] + (64 << 10))
    for part in (1, 2):
        ahead._mirror.prefetch([manifest["parts"][part]])[0].result(timeout=60)
    with pytest.raises(CacheFull):
        ahead._mirror.prefetch([manifest["parts"][3]])[0].result(timeout=60)
    assert sorted(os.listdir(ahead._mirror.local / "parts")) == sorted(names[1:3])
    assert np.array_equal(ahead[999], samples[999])  # a read may evict them
    assert cache_size(tmp_path / "ahead") <= sizes[1] + sizes[2] + (64 << 10)


def test_a_part_larger_than_the_cache_is_refused_naming_the_limit(s3, tmp_path):
    sharded_map(tmp_path / "local", 400, 400)
    remote.push(tmp_path / "local", f"{s3}/m")
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache", cache_limit=1000)
    with pytest.raises(CacheFull, match="cache_limit of 1000 bytes"):
        m[0]
    assert not list((tmp_path / "cache").glob("maps/*/parts/*")) and not list((tmp_path / "cache").glob("reserved/*"))
    manifest_bytes = sum(p.stat().st_size for p in (tmp_path / "cache").glob("maps/*/*") if p.is_file())
    assert cache_size(tmp_path / "cache") == manifest_bytes  # the manifest alone


@pytest.mark.parametrize("size, expected", [(123, 123), ("20GB", 20 * 10**9), ("512MiB", 512 * 2**20),
                                            ("1.5 G", int(1.5 * 2**30))])
def test_cache_limits_take_bytes_or_sizes(size, expected, tmp_path):
    assert remote.Cache(tmp_path, size).limit == expected


@pytest.mark.parametrize("size", ["lots", "-1GB", 0, "12 parsecs", 1.5, True])
def test_bad_cache_limits_are_refused(size, tmp_path):
    with pytest.raises((ValueError, TypeError), match="cache_limit"):
        remote.Cache(tmp_path, size)


def test_the_cache_limit_and_folder_come_from_the_environment(s3, tmp_path, monkeypatch):
    sharded_map(tmp_path / "local", 200, 100)
    remote.push(tmp_path / "local", f"{s3}/m")
    monkeypatch.setenv("MMAP_NINJA_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setenv("MMAP_NINJA_CACHE_LIMIT", "10MB")
    m = ShardedMmap(f"{s3}/m")
    m[0]
    assert m._mirror.cache.limit == 10**7 and m._mirror.cache.root == tmp_path / "env-cache"
    assert list((tmp_path / "env-cache" / "maps").iterdir())


_SHARED_READER = textwrap.dedent("""
    import sys, numpy as np
    from mmap_ninja.sharded import ShardedMmap
    m = ShardedMmap(sys.argv[1], cache_dir=sys.argv[2])
    total = 0
    for start in range(0, len(m), 100):
        total += sum(int(x.sum()) for x in m[list(range(start, min(len(m), start + 100)))])
    print(total)
""")


def test_processes_sharing_a_cache_download_each_part_once(s3, fault_proxy, tmp_path):
    samples = sharded_map(tmp_path / "local", 2000, 250)
    remote.push(tmp_path / "local", f"{s3}/m")
    fault_proxy.reset()
    readers = [subprocess.Popen([sys.executable, "-c", _SHARED_READER, f"{s3}/m", str(tmp_path / "cache")],
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [reader.communicate(timeout=300)[0] for reader in readers]
    assert all(reader.returncode == 0 for reader in readers)
    assert {int(out) for out in outputs} == {sum(int(x.sum()) for x in samples)}
    gets = fault_proxy.gets("/parts/")
    manifest = remote.latest_manifest(Store(f"{s3}/m"))
    packs = {f"/{s3[5:]}/m/parts/{part['name']}.pack" for part in manifest["parts"]}
    assert set(gets) == packs and all(gets[path] == 1 for path in packs), gets  # each part once, by one of them


_PINNED_READER = textwrap.dedent("""
    import sys, time, numpy as np
    from mmap_ninja.sharded import ShardedMmap
    m = ShardedMmap(sys.argv[1], cache_dir=sys.argv[2], cache_limit=int(sys.argv[3]))
    first = [x.copy() for x in m[list(range(0, 50))]]
    print("ready", flush=True)
    checks = 0
    deadline = time.time() + float(sys.argv[4])
    while time.time() < deadline:
        again = m[list(range(0, 50))]
        assert all(np.array_equal(a, b) for a, b in zip(again, first))
        checks += 1
    print(checks, flush=True)
""")


def test_a_reader_keeps_reading_while_another_process_evicts(s3, tmp_path):
    samples = sharded_map(tmp_path / "local", 2000, 250)
    remote.push(tmp_path / "local", f"{s3}/m")
    manifest = remote.latest_manifest(Store(f"{s3}/m"))
    part_bytes = max(sum(f["size"] for f in part["files"]) for part in manifest["parts"])
    limit, cache = 3 * part_bytes, tmp_path / "cache"
    # the reader keeps up to a quarter of its limit open between reads: its part stays mapped and pinned
    reader = subprocess.Popen([sys.executable, "-c", _PINNED_READER, f"{s3}/m", str(cache), str(8 * part_bytes), "6"],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "ready"
    first_part = cache / "maps" / os.listdir(cache / "maps")[0] / "parts" / manifest["parts"][0]["name"]
    m = ShardedMmap(f"{s3}/m", cache_dir=cache, cache_limit=limit)
    for start in range(250, 2000, 250):  # every other part, through a cache of three parts
        index = list(range(start, start + 250))
        assert all(np.array_equal(a, samples[i]) for a, i in zip(m[index], index))
        assert first_part.is_dir()  # pinned by the other process: never evicted
        assert cache_size(cache) <= limit
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and int(out) > 0


def test_a_download_killed_midway_leaves_nothing_taken_for_a_part(s3, fault_proxy, tmp_path, client):
    samples = sharded_map(tmp_path / "local", 600, 300)
    remote.push(tmp_path / "local", f"{s3}/m")
    fault_proxy.stall_seconds = 30
    fault_proxy.reset(["stall"])
    script = textwrap.dedent("""
        import sys
        from mmap_ninja.sharded import ShardedMmap
        ShardedMmap(sys.argv[1], cache_dir=sys.argv[2])[0]
    """)
    child = subprocess.Popen([sys.executable, "-c", script, f"{s3}/m", str(tmp_path / "cache")])
    deadline = time.time() + 60
    while not fault_proxy.injected["stall"] and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    child.kill()
    child.wait()
    parts = next((tmp_path / "cache" / "maps").iterdir()) / "parts"
    assert not [p for p in os.listdir(parts) if not p.startswith(".")]  # only a .fetching folder, if any
    fault_proxy.reset()
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache")
    assert np.array_equal(m[5], samples[5])
    assert [p for p in os.listdir(parts) if not p.startswith(".")] == [m.part_names[0]]
    assert not [p for p in os.listdir(parts) if p.startswith(".")]  # what the dead download left is gone


# -- faults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("faults", [["503"] * 3, ["reset", "reset"], ["truncate", "truncate"], ["corrupt"] * 2,
                                    ["503", "reset", "truncate", "corrupt"]])
def test_faults_give_the_right_bytes_after_retries(s3, fault_proxy, tmp_path, client, faults):
    samples = sharded_map(tmp_path / "local", 500, 250)
    remote.push(tmp_path / "local", f"{s3}/m")
    fault_proxy.reset(faults)
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache")
    assert all(np.array_equal(a, samples[i]) for a, i in zip(m[list(range(500))], range(500)))
    assert sum(fault_proxy.injected.values()) == len(faults)
    pulled = remote.pull(f"{s3}/m", tmp_path / "pulled")
    assert not mmap_ninja.verify(pulled, deep=True)


def test_a_stalled_answer_times_out_and_is_retried(s3, fault_proxy, tmp_path, client):
    samples = sharded_map(tmp_path / "local", 300, 300)
    remote.push(tmp_path / "local", f"{s3}/m")
    fault_proxy.stall_seconds = 10
    fault_proxy.reset(["stall"])
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache", storage_options={"config_kwargs": {"read_timeout": 1}})
    assert np.array_equal(m[7], samples[7])
    # the stalled GET was given up and asked again (waited out, it would have been the only one)
    assert fault_proxy.injected["stall"] == 1 and sum(fault_proxy.gets("/parts/").values()) == 2


def test_faults_that_persist_raise_an_error_naming_the_url_and_keep_nothing(s3, fault_proxy, tmp_path, client):
    sharded_map(tmp_path / "local", 300, 300)
    remote.push(tmp_path / "local", f"{s3}/m")
    fault_proxy.reset(["corrupt"] * 10_000)
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache")
    m._mirror.store.backoff = 0.001
    with pytest.raises(RemoteError, match=rf"{s3}/m/parts/part-.*\.pack: download failed 7 times.*(SHA-256|checksum)"):
        m[0]
    parts = next((tmp_path / "cache" / "maps").iterdir()) / "parts"
    assert os.listdir(parts) == [] and not list((tmp_path / "cache").glob("reserved/*"))


def test_damaged_manifests_are_refused_naming_the_url(s3, tmp_path):
    sharded_map(tmp_path / "local", 200, 100)
    manifest = remote.push(tmp_path / "local", f"{s3}/m")
    store = Store(f"{s3}/m")
    for bad in ({"path": "../../etc/passwd", "size": 5, "crc32": "0" * 8},
                {"path": "data.ninja", "size": -1, "crc32": "0" * 8},
                {"path": "data.ninja", "size": 5, "crc32": "xyz"},
                {"path": "data.ninja", "size": 5, "sha256": "0" * 8},
                {"path": "data.ninja", "size": 5, "crc32": "0" * 8, "sha256": "0" * 64},
                {"path": "data.ninja", "size": 5}):
        damaged = json.loads(json.dumps(manifest))
        damaged["parts"][0]["files"][0] = bad
        store.write("manifest.ninja", json.dumps(damaged).encode())
        store.delete([f"versions/{manifest['version']}.ninja"])
        with pytest.raises(ValueError, match=rf"{s3}/m/manifest.ninja: part 0: file 0"):
            ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache")
    store.write("manifest.ninja", b"{not json")
    with pytest.raises(ValueError, match="not a manifest"):
        ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("maps/*/parts/*"))


def test_manifests_recording_sha256_digests_are_read_and_checked(s3, tmp_path):
    import hashlib

    samples = sharded_map(tmp_path / "local", 300, 100, keys=True)
    manifest = remote.push(tmp_path / "local", f"{s3}/m")
    assert all(set(f) == {"path", "size", "crc32"} for part in manifest["parts"] for f in part["files"])
    # the same map as earlier writers recorded it: SHA-256 digests, the key table named by them
    store = Store(f"{s3}/m")
    local = ShardedMmap(tmp_path / "local")
    old = json.loads(json.dumps(manifest))
    for part, folder in zip(old["parts"], local.part_names):
        for f in part["files"]:
            del f["crc32"]
            f["sha256"] = hashlib.sha256((tmp_path / "local" / "parts" / folder / f["path"]).read_bytes()).hexdigest()
    key_folder = tmp_path / "local" / "keysets"
    for f in old["key_files"]:
        del f["crc32"]
        source = next(key_folder.glob(f"*/keys/{f['path']}"), None) or tmp_path / "local" / "keys" / f["path"]
        f["sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
    store.write(remote.cache.keys_pack(old["key_files"]), store.read(remote.cache.keys_pack(manifest["key_files"])))
    old["version"] = manifest["version"] + 1
    store.write(f"versions/{old['version']}.ninja", json.dumps(old).encode(), create=True)
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache")
    assert m.version == old["version"]
    assert all(np.array_equal(m[i], samples[i]) for i in range(300)) and m.index_of("doc-123") == 123
    # a recorded SHA-256 that the bytes do not have: never kept
    old["parts"][0]["files"][-1]["sha256"] = "0" * 64
    old["version"] += 1
    store.write(f"versions/{old['version']}.ninja", json.dumps(old).encode(), create=True)
    fresh = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "fresh")
    fresh._mirror.store.backoff = 0.001
    with pytest.raises(RemoteError, match="sha256 checksum"):
        fresh[0]


# -- writing from many machines --------------------------------------------------------------------


def test_two_committers_at_once_both_land_one_after_the_other(s3, tmp_path):
    url = f"{s3}/m"
    first = write_part(url, ragged_samples(100, 1))
    ShardedMmap.commit_parts(url, [first])
    records = [write_part(url, ragged_samples(50, seed)) for seed in (2, 3, 4, 5)]
    barrier = threading.Barrier(4)
    errors = []

    def commit(record):
        barrier.wait()
        try:
            remote.commit(Store(url), [record])
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(record,)) for record in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    m = ShardedMmap(url, cache_dir=tmp_path / "cache")
    assert m.version == 4 and len(m) == 300
    assert sorted(m.part_names[1:]) == sorted(r["name"] for r in records) and m.part_names[0] == first["name"]
    versions = [json.loads(Store(url).read(f"versions/{v}.ninja")) for v in range(5)]
    assert [len(v["parts"]) for v in versions] == [1, 2, 3, 4, 5]  # each version extends the one before


def test_a_reader_keeps_its_version_while_a_new_one_is_committed(s3, tmp_path):
    url = f"{s3}/m"
    ShardedMmap.commit_parts(url, [write_part(url, ragged_samples(100, 1))])
    m = ShardedMmap(url, cache_dir=tmp_path / "cache")
    ShardedMmap.commit_parts(url, [write_part(url, ragged_samples(100, 2))])
    assert len(m) == 100 and m.version == 0
    m.refresh()
    assert len(m) == 200 and m.version == 1
    assert len(ShardedMmap(url, cache_dir=tmp_path / "cache", version=0)) == 100


def test_a_new_version_pushed_with_other_keys_is_read_with_its_own_keys(s3, tmp_path):
    url, cache = f"{s3}/m", tmp_path / "cache"
    RaggedMmap.from_lists(tmp_path / "one", [np.arange(3)] * 4, keys=["a", "b", "c", "d"])
    remote.push(tmp_path / "one", url)
    old = ShardedMmap(url, cache_dir=cache)
    assert old.index_of("c") == 2
    RaggedMmap.from_lists(tmp_path / "two", [np.arange(5)] * 3, keys=["c", "x", "y"])
    remote.push(tmp_path / "two", url)
    new = ShardedMmap(url, cache_dir=cache)
    assert new.version == 1 and new.index_of("c") == 0 and new.by_key["y"].tolist() == list(range(5))
    assert old.index_of("c") == 2 and new.versions() == [0, 1]


def test_commits_check_kinds_and_dtypes_and_keys_are_refused(s3):
    url = f"{s3}/m"
    ShardedMmap.commit_parts(url, [write_part(url, ragged_samples(10))])
    strings = write_part(url, ["a", "b"])
    with pytest.raises(ValueError, match="holds string samples"):
        ShardedMmap.commit_parts(url, [strings])
    floats = write_part(url, [np.zeros(3, np.float64)])
    with pytest.raises(ValueError, match="float64"):
        ShardedMmap.commit_parts(url, [floats])
    with pytest.raises(ValueError, match="keys"):
        write_part(url, ragged_samples(2), keys=["a", "b"])
    assert remote.latest_manifest(Store(url))["version"] == 0


def test_gc_removes_abandoned_uploads_only(s3):
    url = f"{s3}/m"
    kept = write_part(url, ragged_samples(20))
    ShardedMmap.commit_parts(url, [kept])
    abandoned = write_part(url, ragged_samples(20, 1))
    assert remote.gc(url) == []  # too recent: a build may be uploading it now
    assert remote.gc(url, older_than=0) == [abandoned["name"]]
    assert [entry["name"] for entry in Store(url).list("parts")] == [f"parts/{kept['name']}.pack"]
    assert len(ShardedMmap(url)) == 20


def test_gc_removes_key_tables_no_version_reads(s3, tmp_path):
    url = f"{s3}/m"
    RaggedMmap.from_lists(tmp_path / "keyed", [np.arange(3)] * 4, keys=["a", "b", "c", "d"])
    manifest = remote.push(tmp_path / "keyed", url)
    stray = "keysets/" + "0" * 32 + ".pack"  # what a push that failed before its commit leaves
    Store(url).write(stray, b"keys")
    assert remote.gc(url) == []
    assert remote.gc(url, older_than=0) == [stray]
    left = [entry["name"] for entry in Store(url).list("keysets")]
    assert len(left) == 1 and left[0] != stray and len(manifest["key_files"]) >= 1
    assert ShardedMmap(url, cache_dir=tmp_path / "cache").index_of("c") == 2


def test_file_urls_go_through_the_same_code(tmp_path):
    samples = sharded_map(tmp_path / "local", 600, 200, keys=True)
    url = (tmp_path / "store" / "m").as_uri()
    remote.push(tmp_path / "local", url)
    m = ShardedMmap(url, cache_dir=tmp_path / "cache", cache_limit="100MB")
    assert all(np.array_equal(m[i], samples[i]) for i in (0, 299, 599)) and m.by_key["doc-5"].tolist() == \
        samples[5].tolist()
    assert not remote.verify(url, deep=True)
    with pytest.raises(ValueError, match="has keys: appending parts to it is not supported"):
        ShardedMmap.commit_parts(url, [write_part(url, ragged_samples(10, 7))])
    other = (tmp_path / "store" / "other").as_uri()
    ShardedMmap.commit_parts(other, [write_part(other, ragged_samples(10, 7))])
    ShardedMmap.commit_parts(other, [write_part(other, ragged_samples(5, 8))])
    assert len(ShardedMmap(other, cache_dir=tmp_path / "cache")) == 15 and len(m) == 600


def test_local_writers_refuse_urls(s3, tmp_path):
    with pytest.raises(ValueError, match="is a URL"):
        RaggedMmap.from_generator(f"{s3}/x", ragged_samples(3), batch_size=2)
    with pytest.raises(TypeError, match="for maps at a URL"):
        ShardedMmap(tmp_path, cache_limit="1GB")


# -- DataLoader workers, Dask, Ray --------------------------------------------------------------------


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataloader_workers_read_a_map_at_a_url(s3, tmp_path, start_method):
    import torch

    samples = sharded_map(tmp_path / "local", 1000, 125)
    remote.push(tmp_path / "local", f"{s3}/m")
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache", cache_limit="100MB")
    m[0]  # the parent has used the store before the fork
    loader = torch.utils.data.DataLoader(m, batch_size=50, shuffle=True, num_workers=2,
                                         multiprocessing_context=start_method, collate_fn=as_list,
                                         generator=torch.Generator().manual_seed(0))
    seen = 0
    for batch in loader:
        seen += len(batch)
        assert all(any(np.array_equal(x, samples[i]) for i in range(len(samples)) if len(samples[i]) == len(x))
                   for x in batch[:3])
    assert seen == 1000


def test_dask_writes_a_map_to_a_url_and_a_worker_killed_mid_upload_loses_nothing(s3, fault_proxy, tmp_path):
    import dask.bag as db
    from distributed import Client, LocalCluster

    from mmap_ninja.dask import to_mmap

    url = f"{s3}/dask"
    bag = db.from_sequence([np.full(i % 13, i, np.int64) for i in range(400)], npartitions=8)
    fault_proxy.stall_seconds = 60
    fault_proxy.match = lambda method, path: method == "PUT" and "/parts/" in path
    fault_proxy.reset(["stall"])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)

        def kill_stalled_worker():
            deadline = time.time() + 120
            while not fault_proxy.injected["stall"] and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            for pid in pids.values():  # the one stalled mid-upload among them (the nannies start new ones)
                os.kill(pid, 9)

        killer = threading.Thread(target=kill_stalled_worker)
        killer.start()
        m = to_mmap(bag, url)
        killer.join()
    assert fault_proxy.injected["stall"] == 1
    assert len(m) == 400
    assert [int(x[0]) if len(x) else None for x in m] == [i if i % 13 else None for i in range(400)]
    assert all(len(m[i]) == i % 13 for i in range(400))
    assert not remote.verify(url)


def test_ray_writes_a_map_to_a_url(s3, tmp_path):
    import ray
    from conftest import ray_on_loopback

    from mmap_ninja.ray import MmapNinjaDatasink

    url = f"{s3}/ray"
    with ray_on_loopback():
        os.environ["NO_PROXY"] = "127.0.0.1,localhost"
        ray.init(num_cpus=2, include_dashboard=False)
        try:
            ds = ray.data.from_items([{"item": np.arange(i % 17, dtype=np.int32)} for i in range(300)],
                                     override_num_blocks=4)
            sink = MmapNinjaDatasink(url)
            ds.write_datasink(sink)
        finally:
            ray.shutdown()
    m = ShardedMmap(url, cache_dir=tmp_path / "cache")
    assert len(m) == 300 and len(m.part_names) == len(sink.committed) >= 1
    assert sorted(len(m[i]) for i in range(300)) == sorted(i % 17 for i in range(300))


def test_ray_writes_a_map_to_a_url_and_a_worker_killed_mid_upload_loses_nothing(s3, fault_proxy, tmp_path):
    import psutil
    import ray
    from conftest import ray_on_loopback

    from mmap_ninja.ray import MmapNinjaDatasink

    url = f"{s3}/ray-killed"
    fault_proxy.stall_seconds = 60
    fault_proxy.match = lambda method, path: method == "PUT" and "/parts/" in path
    fault_proxy.reset(["stall"])
    killed = []

    def kill_stalled_worker():
        deadline = time.time() + 180
        while not fault_proxy.injected["stall"] and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        for child in psutil.Process().children(recursive=True):  # the workers running a write (one is stalled)
            try:
                title = " ".join(child.cmdline()).split(" ", 1)[0]
            except psutil.Error:
                continue
            if title.startswith("ray::") and "Write" in title:
                child.kill()
                killed.append(title)

    with ray_on_loopback():
        os.environ["NO_PROXY"] = "127.0.0.1,localhost"
        ray.init(num_cpus=2, include_dashboard=False)
        try:
            ds = ray.data.from_items([{"item": np.full(i % 17, i, dtype=np.int32)} for i in range(300)],
                                     override_num_blocks=4)
            killer = threading.Thread(target=kill_stalled_worker)
            killer.start()
            ds.write_datasink(MmapNinjaDatasink(url))
            killer.join()
        finally:
            ray.shutdown()
    assert fault_proxy.injected["stall"] == 1 and killed
    m = ShardedMmap(url, cache_dir=tmp_path / "cache")
    assert len(m) == 300  # every sample once: the killed task's part was written again, its upload never committed
    assert sorted((len(x), int(x[0]) if len(x) else -1) for x in m) == \
        sorted((i % 17, i if i % 17 else -1) for i in range(300))
    assert not remote.verify(url)


# -- the command line ------------------------------------------------------------------------------


def test_the_command_line_pushes_pulls_and_inspects_urls(s3, tmp_path, capsys):
    sharded_map(tmp_path / "local", 300, 100)
    url = f"{s3}/cli"
    assert main(["push", str(tmp_path / "local"), url, "--quiet"]) == 0
    assert "version 0, 300 ragged samples in 3 parts" in capsys.readouterr().out
    assert main(["info", url]) == 0
    out = capsys.readouterr().out
    assert "samples: 300" in out.replace("  ", " ") and "parts:" in out
    assert main(["verify", url, "--deep"]) == 0
    assert "sound" in capsys.readouterr().out
    assert main(["head", url, "-n", "2"]) == 0
    assert capsys.readouterr().out.startswith("[0] ")
    assert main(["pull", url, str(tmp_path / "back"), "--quiet"]) == 0
    assert len(ShardedMmap(tmp_path / "back")) == 300
    assert main(["gc", url, "--older-than", "0"]) == 0
    assert "0 abandoned uploads removed" in capsys.readouterr().out
    Store(url).delete([f"parts/{ShardedMmap(tmp_path / 'back').part_names[0]}.pack"])
    assert main(["verify", url]) == 1
    assert "missing" in capsys.readouterr().out


def test_downloads_go_through_obstore_with_keys_and_through_fsspec_otherwise(s3, tmp_path, monkeypatch):
    assert Store(f"{s3}/m").obstore is not None  # keys in the environment
    assert Store(f"{s3}/m", {"key": "testing", "secret": "testing"}).obstore is not None
    assert Store(f"{s3}/m", {"profile": "default"}).obstore is None  # botocore's chain finds a profile
    assert Store(f"{s3}/m", {"config_kwargs": {"max_pool_connections": 4}}).obstore is None
    assert Store(f"file://{tmp_path}/m").obstore is None
    monkeypatch.setenv("MMAP_NINJA_OBSTORE", "0")
    assert Store(f"{s3}/m").obstore is None
    monkeypatch.setenv("MMAP_NINJA_OBSTORE", "1")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    assert Store(f"{s3}/m").obstore is None  # an instance role or a profile: through botocore


def _read_in_child(m, index, out):
    out.put((m._mirror.store.obstore is None, [np.asarray(x).tolist() for x in m[index]]))


def test_a_child_forked_after_obstore_was_used_downloads_through_fsspec(s3, tmp_path):
    samples = sharded_map(tmp_path / "local", 400, 100)
    remote.push(tmp_path / "local", f"{s3}/m")
    m = ShardedMmap(f"{s3}/m", cache_dir=tmp_path / "cache")
    assert np.array_equal(m[0], samples[0]) and m._mirror.store.obstore is not None  # part 0 through obstore
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_read_in_child, args=(m, [150, 399], out))  # parts 1 and 3, not cached
    child.start()
    fell_back, got = out.get(timeout=120)
    child.join(60)
    assert child.exitcode == 0 and fell_back
    assert all(np.array_equal(x, samples[i]) for x, i in zip(got, [150, 399]))
    assert m._mirror.store.obstore is not None  # the parent keeps its client


def test_importing_the_package_imports_no_object_store_client():
    code = "import mmap_ninja, mmap_ninja.sharded, sys; print(any(m in sys.modules for m in ('fsspec', 's3fs', " \
           "'obstore', 'botocore', 'aiobotocore')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_pickled_map_at_a_url_reads_the_same_version_elsewhere(s3, tmp_path):
    import pickle

    url = f"{s3}/m"
    ShardedMmap.commit_parts(url, [write_part(url, ragged_samples(50, 1))])
    m = ShardedMmap(url, cache_dir=tmp_path / "cache", cache_limit="1GB")
    ShardedMmap.commit_parts(url, [write_part(url, ragged_samples(50, 2))])
    copy = pickle.loads(pickle.dumps(m))
    assert copy.version == 0 and len(copy) == 50 and copy._mirror.cache.limit == 10**9
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(len, (m,)) == 50


def test_maps_of_tables_push_pull_and_read_at_their_url_as_locally(s3, tmp_path):
    rng = np.random.default_rng(5)
    rows = [{"image": rng.integers(0, 255, (int(rng.integers(1, 6)), 3), dtype=np.uint8), "label": i,
             "caption": f"caption {i}"} for i in range(120)]
    local = ShardedMmap.from_generator(tmp_path / "tables", rows, part_size=25, keys=[f"r{i}" for i in range(120)])
    mmap_ninja.TableMmap.from_generator(tmp_path / "table", rows[:30])
    remote.push(tmp_path / "tables", f"{s3}/tables")
    remote.push(tmp_path / "table", f"{s3}/table")
    assert not remote.verify(f"{s3}/tables", deep=True)
    store = Store(f"{s3}/tables")
    manifest = remote.latest_manifest(store)
    parts = [files_size(part["files"]) for part in manifest["parts"]]
    # room for the manifest, the keys and three of the five parts
    limit = len(store.read("manifest.ninja")) + files_size(manifest["key_files"]) + 3 * max(parts)
    assert limit < sum(parts) + len(store.read("manifest.ninja")) + files_size(manifest["key_files"])
    m = ShardedMmap(f"{s3}/tables", cache_dir=tmp_path / "cache", cache_limit=limit)
    assert m.columns == ["image", "label", "caption"] and len(m) == 120
    for _ in range(6):  # batches over every part, through a cache that holds three of the five
        index = rng.integers(0, 120, 40).tolist()
        batch = m[index]
        assert batch["label"].tolist() == index and batch["caption"] == [f"caption {i}" for i in index]
        assert all(np.array_equal(a, rows[i]["image"]) for a, i in zip(batch["image"], index))
        assert m.take(index)["label"].tolist() == index
    m.prefetch([119])
    assert m.index_of("r77") == 77 and pickle_round_trip(m)[[5]]["caption"] == ["caption 5"]
    assert [row["label"] for row in m] == list(range(120))
    remote.pull(f"{s3}/tables", tmp_path / "pulled")
    assert files_of(tmp_path / "pulled" / "parts") == files_of(tmp_path / "tables" / "parts")
    assert ShardedMmap(tmp_path / "pulled")[[3, 99]]["caption"] == ["caption 3", "caption 99"]
    remote.pull(f"{s3}/table", tmp_path / "pulled-table")
    assert files_of(tmp_path / "pulled-table") == files_of(tmp_path / "table")
    assert local[[7]]["label"].tolist() == [7]


def pickle_round_trip(obj):
    import pickle

    return pickle.loads(pickle.dumps(obj))
