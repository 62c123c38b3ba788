"""The local cache of maps in object storage (FORMAT.md, section 15): one folder shared by every
process of the machine, bounded by ``cache_limit``.

A part is downloaded whole on its first read, into ``parts/.<part>.<hex12>.fetching/``, checked
(size and checksum of every file) and renamed into place, so a process killed mid-download leaves
nothing that is taken for a part. One process downloads a part (it holds ``fetch/<part>``), the
others wait for it. A process reading a part holds a shared lock on ``pins/<part>``; eviction
takes it exclusively, so it never removes a part that a reader of any process has mapped, and
it removes the least recently used first. Space is reserved before a download under
``cache.lock``: the cache never holds more than ``cache_limit`` bytes, and when the parts in use
leave no room, ``CacheFull`` says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .. import _meta
from .._format import sharded as _sharded
from .store import RemoteError, Store, recorded_digest

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["keys_pack", "pack_of", "Cache", "Mirror", "CacheFull", "Reservation", "parse_size", "default_cache_dir",
           "check_files", "files_size"]

MAPS = "maps"


def pack_of(part: str) -> str:
    """The object holding every file of the part ``part`` in object storage."""
    return f"{_sharded.PARTS}/{part}.pack"


def keys_pack(key_files: List[Dict[str, Any]]) -> str:
    """The object holding the key table whose files are ``key_files``: named by their digests,
    so that each version's table has its own and a new version never changes an old one's."""
    digest = hashlib.sha256("".join(recorded_digest(f)[1] for f in key_files).encode()).hexdigest()
    return f"{_sharded.KEYSETS}/{digest[:32]}.pack"


PINS = "pins"
# Seconds past its download that a part counts as last used until a reader pins it: eviction
# takes the parts read already before those downloaded ahead of their reads.
UNREAD_GRACE = 600.0
FETCH = "fetch"
RESERVED = "reserved"
LOCK = "cache.lock"
URL_FILE = "url.ninja"
FETCHING = re.compile(r"\.(.+)\.[0-9a-f]{12}\.fetching")
FILE_PATH = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
         "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class CacheFull(RuntimeError):
    """The cache cannot hold a part within its ``cache_limit``: the parts in use by readers
    (pinned) leave too little room."""


def parse_size(size: Union[int, str, None], what: str = "cache_limit") -> Optional[int]:
    """Bytes from an int or a string such as ``"20GB"``, ``"512 MiB"``, ``"1.5G"``; ``None``
    stays ``None``. ``ValueError`` naming ``what`` for anything else or a size below 1."""
    if size is None:
        return None
    if isinstance(size, bool):
        raise TypeError(f"{what} must be a number of bytes or a string such as '20GB', not {size!r}")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", size)
        if match is None or match.group(2).upper() not in UNITS:
            raise ValueError(f"{what} must be bytes or a size such as '20GB' or '512MiB', got {size!r}")
        value = int(float(match.group(1)) * UNITS[match.group(2).upper()])
    else:
        raise TypeError(f"{what} must be a number of bytes or a string such as '20GB', not {type(size).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1 byte, got {size!r}")
    return value


def default_cache_dir() -> Path:
    """``$MMAP_NINJA_CACHE``, else ``$XDG_CACHE_HOME/mmap_ninja``, else ``~/.cache/mmap_ninja``."""
    if os.environ.get("MMAP_NINJA_CACHE"):
        return Path(os.environ["MMAP_NINJA_CACHE"]).absolute()
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(home).absolute() / "mmap_ninja"


def check_files(files: Any, where: str) -> List[Dict[str, Any]]:
    """The ``files`` list of a part (or of a key table) as recorded in a manifest, checked:
    paths inside the folder, sizes ints in range, one digest each (``crc32``, or ``sha256``);
    ``ValueError`` naming ``where`` otherwise."""
    if not isinstance(files, list):
        raise ValueError(f"{where}: 'files' must be a list of {{'path', 'size', 'crc32'}}, found {str(files)[:80]!r}")
    seen = set()
    for k, entry in enumerate(files):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or \
                not FILE_PATH.fullmatch(entry["path"]) or \
                any(component in (".", "..") for component in entry["path"].split("/")) or \
                not _sharded.is_length(entry.get("size")):
            raise ValueError(f"{where}: file {k} must be {{'path': a relative path inside the folder, 'size': an int "
                             f"of at least 0, 'crc32': 8 hex digits}}, found {str(entry)[:160]}")
        try:
            recorded_digest(entry)
        except ValueError as exc:
            raise ValueError(f"{where}: file {k} ({entry['path']}) must record {exc}") from None
        if entry["path"] in seen:
            raise ValueError(f"{where}: the file {entry['path']!r} is listed twice")
        seen.add(entry["path"])
    return files


def files_size(files: List[Dict[str, Any]]) -> int:
    """The bytes of the files of a manifest's list (a part's, a key table's): its pack's size."""
    return sum(int(f["size"]) for f in files)


def _replace(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` through a temporary file of its own (``<name>.<hex12>.tmp``),
    so that processes writing it at once never share one."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tree_size(folder: Path) -> int:
    total = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                total += _tree_size(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


@contextlib.contextmanager
def _flock(path: Path, exclusive: bool = True) -> Iterator[int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)


def fetch_files(store: Store, files: List[Dict[str, Any]], pack: str, folder: Path) -> None:
    """Download the pack ``pack`` of ``store`` into the files ``files`` (a manifest's list)
    under ``folder``, every one checked (see ``Store.download_pack``)."""
    targets = []
    for f in files:
        target = folder.joinpath(*f["path"].split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        targets.append((target, int(f["size"]), recorded_digest(f)))
    store.download_pack(pack, targets)


class Cache:
    """The cache folder ``cache_dir`` (``None``: see ``default_cache_dir``) holding at most
    ``cache_limit`` bytes (an int or ``"20GB"``; ``None``: ``$MMAP_NINJA_CACHE_LIMIT``, else
    no limit). ``wait``: how long, in seconds, a download waits for readers of other
    processes to release parts when the cache is full, before ``CacheFull``."""

    def __init__(self, cache_dir: Union[str, os.PathLike, None] = None, cache_limit: Union[int, str, None] = None,
                 wait: float = 30.0):
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a str or os.PathLike, not {type(cache_dir).__name__}")
        self.root = Path(os.path.abspath(cache_dir)) if cache_dir is not None else default_cache_dir()
        if cache_limit is None and os.environ.get("MMAP_NINJA_CACHE_LIMIT"):
            cache_limit = os.environ["MMAP_NINJA_CACHE_LIMIT"]
        self.limit = parse_size(cache_limit)
        self.wait = float(wait)
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r}, cache_limit={self.limit})"

    def mirror_dir(self, url: str) -> Path:
        """The folder of the copy of ``url``."""
        return self.root / MAPS / hashlib.sha256(url.encode()).hexdigest()[:24]

    def size(self) -> int:
        """Bytes the cache holds: complete parts and key tables of every map, and the live
        reservations of downloads in progress (counted under the cache's lock)."""
        with _flock(self.root / LOCK):
            return self.used()

    def used(self) -> int:
        """``size()`` for a caller holding the cache's lock: the manifests too."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for mirror in os.scandir(self.root / MAPS):
                with contextlib.suppress(FileNotFoundError):  # its manifest, type and URL
                    total += sum(entry.stat().st_size for entry in os.scandir(mirror.path)
                                 if entry.is_file(follow_symlinks=False))
                total += _tree_size(Path(mirror.path) / _sharded.KEYSETS)
                with contextlib.suppress(FileNotFoundError):  # complete parts (not downloads: reserved)
                    for part in os.scandir(Path(mirror.path) / "parts"):
                        if not part.name.startswith("."):
                            total += _tree_size(Path(part.path))
        return total + sum(size for size, _ in self._reservations())

    def _reservations(self) -> List[Tuple[int, Path]]:
        """``(bytes, file)`` of the reservations whose process still holds them; those of dead
        processes are removed."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root / RESERVED):
                path = Path(entry.path)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BlockingIOError:  # held by a live download
                        with contextlib.suppress(ValueError):
                            out.append((int(os.pread(fd, 32, 0) or b"0"), path))
                        continue
                    path.unlink(missing_ok=True)  # its process died
                finally:
                    os.close(fd)
        return out

    def _evictable(self) -> List[Tuple[float, Path, str]]:
        """``(last use, mirror folder, part)`` of every complete part, least recently used first."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for mirror in os.scandir(self.root / MAPS):
                with contextlib.suppress(FileNotFoundError):
                    for part in os.scandir(Path(mirror.path) / "parts"):
                        if part.name.startswith(".") or not _sharded.is_part_name(part.name):
                            continue
                        pin = Path(mirror.path) / PINS / part.name
                        try:
                            used = pin.stat().st_mtime
                        except FileNotFoundError:
                            used = 0.0
                        found.append((used, Path(mirror.path), part.name))
        found.sort()
        return found

    def _evict(self, mirror: Path, name: str) -> int:
        """Remove the part ``name`` of ``mirror`` if no process pins it: the bytes freed."""
        pin = mirror / PINS / name
        pin.parent.mkdir(exist_ok=True)
        fd = os.open(pin, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            path = mirror / "parts" / name
            size = _tree_size(path)
            trash = mirror / "parts" / f".{name}.{uuid.uuid4().hex[:12]}.fetching"
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                return 0
            shutil.rmtree(trash, ignore_errors=True)
            return size
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def reserve(self, size: int, what: str, wait: Optional[float] = None,
                ahead: bool = False) -> Iterator["Reservation"]:
        """Hold ``size`` bytes of the cache for a download (``what`` names it in errors):
        unpinned parts are evicted, least recently used first, until it fits under the
        limit; ``CacheFull`` after ``wait`` seconds (default: the cache's) when the pinned
        parts leave no room. ``ahead``: a download ahead of its reads, which evicts only parts
        read already (never one downloaded ahead and not read yet), and does not wait."""
        (self.root / RESERVED).mkdir(exist_ok=True)
        path = self.root / RESERVED / uuid.uuid4().hex
        deadline = time.monotonic() + (0.0 if ahead else self.wait if wait is None else wait)
        fd = None
        while fd is None:
            with _flock(self.root / LOCK):
                used = self.used() if self.limit is not None else 0
                if self.limit is not None and used + size > self.limit:
                    now = time.time()
                    for last_use, mirror, name in self._evictable():
                        if ahead and last_use > now:  # downloaded ahead, not read yet: kept for its reads
                            continue
                        used -= self._evict(mirror, name)
                        if used + size <= self.limit:
                            break
                if self.limit is None or used + size <= self.limit:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    os.write(fd, str(size).encode())
            if fd is None:
                if self.limit is not None and size > self.limit:
                    raise CacheFull(f"{what} is {size} bytes, more than the cache_limit of {self.limit} bytes "
                                    f"({self.root}): raise cache_limit")
                if time.monotonic() >= deadline:
                    raise CacheFull(f"{self.root}: the cache_limit of {self.limit} bytes cannot be kept: {what} needs "
                                    f"{size} bytes and {used} are held by parts that readers use (pinned) and by "
                                    f"downloads in progress; raise cache_limit or read fewer parts at once")
                time.sleep(0.05)
        reservation = Reservation(self, path, fd)
        try:
            yield reservation
        finally:
            reservation.release()


class Reservation:
    """Bytes of the cache held for a download; ``fill(tmp, path)`` renames the download into
    place and drops the reservation at once, under the cache's lock, so that its bytes are
    counted once at every moment."""

    def __init__(self, cache: Cache, path: Path, fd: int):
        self.cache, self.path, self.fd = cache, path, fd

    def fill(self, tmp: Path, target: Path) -> None:
        with _flock(self.cache.root / LOCK):
            os.rename(tmp, target)
            self.release()

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def parse_manifest(store: Store, data: bytes, name: str) -> dict:
    """The manifest ``data`` read from the object ``name`` of ``store``, checked as a local
    one is, and every part's ``files`` and the ``key_files`` too; ``ValueError`` naming the
    URL."""
    where = store.url_of(name)
    try:
        manifest = _sharded.check_manifest(json.loads(data.decode()), where)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not a manifest ({exc})") from None
    for k, entry in enumerate(manifest["parts"]):
        if "files" not in entry:
            raise ValueError(f"{where}: part {k} ({entry['name']}) lists no files: written to a URL by "
                             f"mmap_ninja.remote (push, or a Dask or Ray write), every part lists its files")
        check_files(entry["files"], f"{where}: part {k}")
    if manifest.get("keys", ".") is not None and manifest.get("key_files"):
        check_files(manifest["key_files"], f"{where}: key_files")
    return manifest


def fetch_manifest(store: Store, version: Optional[int] = None) -> Tuple[bytes, dict]:
    """``(bytes, manifest)`` of the latest version of the map at ``store``'s URL (or of
    ``version``): ``manifest.ninja``, then ``versions/<v+1>.ninja`` and so on while they
    exist (``manifest.ninja`` is a hint a committer may not have updated yet).
    ``FileNotFoundError`` when there is no map, or no such version."""
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise TypeError(f"version must be an int of at least 0, not {version!r}")
        name = f"{_sharded.VERSIONS}/{version}.ninja"
        data = store.read_if_exists(name)
        if data is None:
            raise FileNotFoundError(f"{store.url} keeps no version {version}")
        manifest = parse_manifest(store, data, name)
        if manifest.get("version", 0) != version:
            raise ValueError(f"{store.url_of(name)}: holds version {manifest.get('version', 0)}, not {version}")
        return data, manifest
    data = store.read_if_exists(_sharded.MANIFEST)
    if data is None:
        raise FileNotFoundError(f"{store.url}: no map there (no {_sharded.MANIFEST})")
    manifest = parse_manifest(store, data, _sharded.MANIFEST)
    while True:
        name = f"{_sharded.VERSIONS}/{manifest.get('version', 0) + 1}.ninja"
        later = store.read_if_exists(name)
        if later is None:
            return data, manifest
        newer = parse_manifest(store, later, name)
        if newer.get("version", 0) != manifest.get("version", 0) + 1:
            raise ValueError(f"{store.url_of(name)}: holds version {newer.get('version', 0)}")
        data, manifest = later, newer


class Mirror:
    """The local copy in ``cache`` of the map at ``store``'s URL: its manifest, the parts read
    so far, its key tables; ``local`` is a sharded map folder that the readers of
    ``ShardedMmap`` read."""

    def __init__(self, store: Store, cache: Cache):
        self.url = store.url
        self.cache = cache
        self.store = store
        self.local = cache.mirror_dir(self.url)
        self._pins: Dict[str, int] = {}
        self._pid = os.getpid()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending: Dict[str, Future] = {}
        self._lock = threading.RLock()
        for folder in ("parts", PINS, FETCH):
            (self.local / folder).mkdir(parents=True, exist_ok=True)
        if not (self.local / URL_FILE).exists():
            _replace(self.local / URL_FILE, self.url.encode())

    def twin(self) -> "Mirror":
        """Another ``Mirror`` of the same map and cache, with pins of its own (the columns of a
        map of tables each pin the parts they read)."""
        return Mirror(self.store, self.cache)

    def forked(self) -> bool:
        """Whether this object came into this process by a fork since its last use; its pins
        and download threads are then forgotten: the pins' locks belong to the parent (closing
        our copies keeps them; unlocking them would not), and the threads did not come along."""
        if self._pid == os.getpid():
            return False
        for fd in self._pins.values():
            os.close(fd)
        self._pins, self._pending, self._pool = {}, {}, None
        self._lock = threading.RLock()
        self._pid = os.getpid()
        return True

    # -- the manifest --------------------------------------------------------------------

    def manifest(self, version: Optional[int] = None) -> dict:
        """The latest version of the map's manifest (or ``version``), read from the store and
        checked (FORMAT.md sections 8 and 15), written into the copy's folder."""
        data, manifest = fetch_manifest(self.store, version)
        _replace(self.local / _sharded.MANIFEST, data)
        if not (self.local / _meta.TYPE).exists():
            _replace(self.local / _meta.TYPE, _sharded.TYPE.encode())
        return manifest

    # -- parts ---------------------------------------------------------------------------

    def pin(self, name: str) -> None:
        """Hold the part ``name`` (a shared lock on its pin) so that no process evicts it."""
        self.forked()
        with self._lock:
            if name in self._pins:
                return
            fd = os.open(self.local / PINS / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)
            self._pins[name] = fd
        with contextlib.suppress(OSError):
            os.utime(fd)

    def unpin(self, name: str) -> None:
        self.forked()
        with self._lock:
            fd = self._pins.pop(name, None)
        if fd is not None:
            os.close(fd)  # the lock goes with the last descriptor of this process

    def pinned(self) -> List[str]:
        self.forked()
        return list(self._pins)

    def ensure(self, entry: Dict[str, Any], wait: Optional[float] = None) -> Path:
        """The folder of the part of ``entry`` (a manifest's), pinned, downloaded first if it
        is not in the cache (or waited for, when another process downloads it); ``wait``: as
        ``Cache.reserve``'s."""
        name = entry["name"]
        self.pin(name)
        try:
            path = self._fetch(entry, wait)
        except BaseException:
            self.unpin(name)
            raise
        with contextlib.suppress(OSError):
            os.utime(self.local / PINS / name)  # used now (a download meanwhile set it ahead)
        return path

    def _fetch(self, entry: Dict[str, Any], wait: Optional[float] = None, ahead: bool = False) -> Path:
        name = entry["name"]
        path = self.local / "parts" / name
        if path.is_dir():
            return path
        with _flock(self.local / FETCH / name):
            if path.is_dir():
                return path
            self._download(entry["files"], path, f"part {name} of {self.url}", pack_of(name), wait, ahead)
            with contextlib.suppress(OSError):  # downloaded ahead of its reads: parts read already go first
                pin = self.local / PINS / name
                pin.touch()
                os.utime(pin, (time.time(), time.time() + UNREAD_GRACE))
        return path

    def _download(self, files: List[Dict[str, Any]], path: Path, what: str, pack: str,
                  wait: Optional[float] = None, ahead: bool = False) -> None:
        """Download ``files`` (a manifest's list) from the pack ``pack`` of the store into the
        new folder ``path``, through a ``.fetching`` folder beside it, within the cache's limit
        (``wait``, ``ahead``: see ``Cache.reserve``)."""
        for entry in os.scandir(path.parent):  # what a download that died left (we hold its lock)
            match = FETCHING.fullmatch(entry.name)
            if match and match.group(1) == path.name:
                shutil.rmtree(entry.path, ignore_errors=True)
        with self.cache.reserve(files_size(files), what, wait, ahead) as reservation:
            tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.fetching"
            try:
                tmp.mkdir()
                fetch_files(self.store, files, pack, tmp)
                reservation.fill(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise

    def ensure_keys(self, manifest: dict) -> Optional[Path]:
        """Download the key table the version ``manifest`` reads, if it has one, into
        ``keysets/v<version>/keys/`` of the copy (a version's table never changes), and return
        the folder holding that ``keys/``; ``None`` when its samples have no keys."""
        home = manifest.get("keys", ".")
        files = manifest.get("key_files") or []
        if home is None or not files:
            return None
        folder = self.local / _sharded.KEYSETS / f"v{manifest.get('version', 0)}" / _meta.KEYS
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            with _flock(self.local / FETCH / "keys"):
                if not folder.is_dir():
                    self._download(files, folder, f"the keys of {self.url}", keys_pack(files))
        return folder.parent

    # -- downloads in the background ----------------------------------------------------

    def prefetch(self, entries: List[Dict[str, Any]]) -> List[Future]:
        """Start downloading the parts of ``entries`` that are not in the cache, two at a
        time in background threads, and return their futures (errors stay in them). A part
        that fits only by evicting parts downloaded ahead and not read yet is not downloaded
        (``CacheFull`` in its future); its read downloads it."""
        self.forked()
        futures = []
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="mmap_ninja-prefetch")
            for entry in entries:
                name = entry["name"]
                if (self.local / "parts" / name).is_dir():
                    continue
                future = self._pending.get(name)
                if future is None or future.done():
                    future = self._pending[name] = self._pool.submit(self._fetch, entry, None, True)
                futures.append(future)
        return futures

    def close(self) -> None:
        for name in list(self._pins):
            self.unpin(name)
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def open_mirror(url: str, cache_dir=None, cache_limit=None, storage_options=None) -> Mirror:
    """The ``Mirror`` of ``url`` in the cache ``cache_dir`` with ``cache_limit``."""
    return Mirror(Store(url, storage_options), Cache(cache_dir, cache_limit))


__all__ += ["open_mirror", "fetch_manifest", "fetch_files", "parse_manifest", "RemoteError"]
