"""One URL prefix in object storage, read and written through fsspec (s3fs for ``s3://``; gcsfs,
adlfs, huggingface_hub for ``gs://``, ``az://``, ``hf://`` when installed; ``file://`` built in).

Every call is retried with exponential backoff on what a flaky network does (5xx answers, resets,
timeouts, bodies cut short); a download is written to a temporary file and kept only when its
size and SHA-256 are those recorded. After the retries, ``RemoteError`` names the URL. Nothing
here is shared across a fork: the child makes its own filesystem object on first use (fsspec's
objects refuse to run in a forked child; obstore's runtime hangs there).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from .._extras import require
from ..base import is_url

__all__ = ["Store", "RemoteError", "is_url", "split_url", "CHUNK"]

T = TypeVar("T")
URL = re.compile(r"([a-z][a-z0-9+.-]*)://(.+)")
# Downloads of larger files are read in ranges of this many bytes, ``PARALLEL`` at once.
CHUNK = 16 << 20
PARALLEL = 4


class RemoteError(OSError):
    """A request to object storage failed after every retry, or what it returned was damaged."""


class Damaged(OSError):
    """A download whose size or checksum is not the one recorded (retried, never kept)."""


def split_url(url: str) -> Tuple[str, str]:
    """``(protocol, path)`` of ``url``, its path without a trailing ``/``; ``ValueError`` for
    a URL with no path."""
    match = URL.fullmatch(url) if isinstance(url, str) else None
    if match is None or not match.group(2).strip("/"):
        raise ValueError(f"{url!r} is not a URL of a map (expected scheme://bucket/prefix, e.g. s3://bucket/corpus)")
    return match.group(1), match.group(2).rstrip("/")


def _s3_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """s3fs options completed from the standard AWS environment: ``AWS_ENDPOINT_URL`` (an
    ``http://`` endpoint is allowed), ``AWS_REGION``; the keys (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``) are read by botocore itself. Retries are ours (``Store``), so
    botocore makes two attempts per call; connections time out after 10 s, reads after 30 s,
    unless ``config_kwargs`` says otherwise."""
    options = dict(options)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in options:
        options["endpoint_url"] = endpoint
    client = dict(options.get("client_kwargs") or {})
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and "region_name" not in client:
        client["region_name"] = region
    options["client_kwargs"] = client
    config = {"connect_timeout": 10, "read_timeout": 30, "retries": {"max_attempts": 2, "mode": "standard"}}
    config.update(options.get("config_kwargs") or {})
    options["config_kwargs"] = config
    options.setdefault("max_concurrency", 1)  # a GET is one request (large files are read in ranges here)
    return options


def _retryable(exc: BaseException) -> bool:
    """Whether a failed request may succeed if tried again: not a missing object, a refused
    credential, a conflict or bad arguments."""
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
                        ValueError, TypeError, KeyboardInterrupt)):
        return False
    return isinstance(exc, Exception)


class Store:
    """The objects under one URL prefix (``s3://bucket/corpus``), named by their path under
    it (``manifest.ninja``, ``parts/part-.../data.ninja``).

    ``storage_options``: passed to the fsspec filesystem (for S3, s3fs's: ``key``, ``secret``,
    ``endpoint_url``, ``client_kwargs``, ``config_kwargs``, ...). ``retries``: attempts after
    the first; ``backoff``: the first wait in seconds, doubled after each attempt (with
    jitter), at most 8 s."""

    def __init__(self, url: str, storage_options: Optional[Dict[str, Any]] = None, retries: int = 6,
                 backoff: float = 0.1):
        self.protocol, self.root = split_url(url)
        self.url = f"{self.protocol}://{self.root}"
        if storage_options is not None and not isinstance(storage_options, dict):
            raise TypeError(f"storage_options must be a dict, not {type(storage_options).__name__}")
        self.storage_options = dict(storage_options or {})
        self.retries = int(retries)
        self.backoff = float(backoff)
        self._fs: Any = None
        self._pid = -1

    def __reduce__(self):
        return type(self), (self.url, self.storage_options, self.retries, self.backoff)

    @property
    def fs(self):
        """The fsspec filesystem of this process (a new one after a fork)."""
        if self._fs is None or self._pid != os.getpid():
            modules = {"fsspec": "fsspec", "s3fs": "s3fs"} if self.protocol == "s3" else {"fsspec": "fsspec"}
            require("mmap_ninja.remote", "remote", modules)
            import fsspec

            options = dict(self.storage_options)
            if self.protocol == "s3":
                options = _s3_options(options)
            elif self.protocol == "file":
                options.setdefault("auto_mkdir", True)  # folders, which object stores do not have
            self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **options)
            self._pid = os.getpid()
        return self._fs

    def path(self, name: str) -> str:
        """The store's path of the object ``name`` (relative to the prefix)."""
        return f"{self.root}/{name}" if name else self.root

    def url_of(self, name: str) -> str:
        return f"{self.protocol}://{self.path(name)}"

    def _call(self, what: str, name: str, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff on transient failures; ``RemoteError`` naming the
        URL once the retries are spent."""
        for attempt in range(self.retries + 1):
            try:
                return call()
            except BaseException as exc:
                if not _retryable(exc):
                    raise
                if attempt == self.retries:
                    raise RemoteError(f"{self.url_of(name)}: {what} failed {self.retries + 1} times; "
                                      f"last: {type(exc).__name__}: {exc}") from exc
                self._fs = None if isinstance(exc, RuntimeError) else self._fs  # a broken loop: a new one
                time.sleep(min(8.0, self.backoff * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- reading -------------------------------------------------------------------------

    def read(self, name: str) -> bytes:
        """The bytes of the object ``name``; ``FileNotFoundError`` naming its URL when absent."""
        try:
            return self._call("GET", name, lambda: bytes(self.fs.cat_file(self.path(name))))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url_of(name)}: no such object") from None

    def read_if_exists(self, name: str) -> Optional[bytes]:
        try:
            return self.read(name)
        except FileNotFoundError:
            return None

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of the object ``name``, exactly that many or ``RemoteError``."""
        def get():
            data = bytes(self.fs.cat_file(self.path(name), start=start, end=end))
            if len(data) != end - start:
                raise Damaged(f"{len(data)} bytes of {end - start}")
            return data
        return self._call(f"GET of bytes {start}:{end}", name, get)

    def download(self, name: str, target: Path, size: int, sha256: str) -> None:
        """Write the object ``name`` to ``target`` (a new file), checked to be ``size`` bytes
        whose SHA-256 is ``sha256``: a body cut short, a wrong length or a wrong digest is
        fetched again, and after the retries ``RemoteError`` names the URL. Files above
        ``CHUNK`` bytes are read in ranges, several at once."""
        def get():
            digest = hashlib.sha256()
            with open(target, "wb") as out:
                if size <= CHUNK:
                    data = bytes(self.fs.cat_file(self.path(name), start=0, end=size)) if size else b""
                    if len(data) != size:
                        raise Damaged(f"{len(data)} bytes, {size} recorded")
                    digest.update(data)
                    out.write(data)
                else:
                    starts = list(range(0, size, CHUNK))
                    for first in range(0, len(starts), PARALLEL):
                        group = starts[first:first + PARALLEL]
                        ends = [min(size, start + CHUNK) for start in group]
                        chunks = self.fs.cat_ranges([self.path(name)] * len(group), group, ends, on_error="raise")
                        for start, end, chunk in zip(group, ends, chunks):
                            if isinstance(chunk, BaseException):
                                raise chunk
                            if len(chunk) != end - start:
                                raise Damaged(f"{len(chunk)} bytes at {start}, {end - start} expected")
                            digest.update(chunk)
                            out.write(chunk)
            if digest.hexdigest() != sha256:
                raise Damaged(f"SHA-256 {digest.hexdigest()}, {sha256} recorded")
        try:
            self._call("download", name, get)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url_of(name)}: no such object (the map lists it)") from None

    def download_all(self, files: List[Tuple[str, Path, int, str]]) -> None:
        """``download`` of every ``(name, target, size, sha256)`` of ``files``: the small ones
        (at most ``CHUNK`` bytes) requested all at once (fsspec runs the GETs concurrently),
        those that failed or came back damaged asked again, with backoff, up to the retries."""
        pending = [f for f in files if f[2] <= CHUNK]
        for name, target, size, sha256 in files:
            if size > CHUNK:
                self.download(name, target, size, sha256)
        last = ""
        for attempt in range(self.retries + 1):
            empty = [f for f in pending if f[2] == 0]
            asked = [f for f in pending if f[2]]
            try:
                found = self.fs.cat_ranges([self.path(f[0]) for f in asked], [0] * len(asked), [f[2] for f in asked],
                                           on_error="return") if asked else []
            except Exception as exc:  # the whole call failed: every file is asked again
                if not _retryable(exc):
                    raise
                found = [exc] * len(asked)
            failed = []
            for (name, target, size, sha256), data in zip(empty + asked, [b""] * len(empty) + list(found)):
                if isinstance(data, FileNotFoundError):
                    raise FileNotFoundError(f"{self.url_of(name)}: no such object (the map lists it)")
                if isinstance(data, BaseException):
                    if not _retryable(data):
                        raise data
                    last = f"{self.url_of(name)}: {type(data).__name__}: {data}"
                elif len(data) != size:
                    last = f"{self.url_of(name)}: {len(data)} bytes, {size} recorded"
                elif hashlib.sha256(data).hexdigest() != sha256:
                    last = f"{self.url_of(name)}: SHA-256 {hashlib.sha256(data).hexdigest()}, {sha256} recorded"
                else:
                    target.write_bytes(data)
                    continue
                failed.append((name, target, size, sha256))
            pending = failed
            if not pending:
                return
            if attempt < self.retries:
                time.sleep(min(8.0, self.backoff * 2 ** attempt) * (0.5 + random.random()))
        raise RemoteError(f"{last} (download failed {self.retries + 1} times; {len(pending)} files of "
                          f"{self.url} not downloaded)")

    def upload_all(self, files: List[Tuple[Path, str]]) -> None:
        """``upload`` of every ``(source, name)`` of ``files``, concurrently, retried."""
        if files:
            sources = [os.fspath(source) for source, _ in files]
            paths = [self.path(name) for _, name in files]
            self._call("PUT", files[0][1], lambda: self.fs.put(sources, paths))

    def list(self, prefix: str) -> List[Dict[str, Any]]:
        """Every object under ``prefix`` (recursively): dicts of ``name`` (relative to the
        store's prefix), ``size`` and ``mtime`` (seconds since the epoch, or ``None``)."""
        def find():
            return self.fs.find(self.path(prefix), detail=True)
        found = self._call("LIST", prefix, find)
        out = []
        base = self.root + "/"
        for path, info in found.items():
            path = path.split("://", 1)[-1]
            if not path.startswith(base) or info.get("type") == "directory":
                continue
            modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
            out.append({"name": path[len(base):], "size": info.get("size"),
                        "mtime": modified.timestamp() if hasattr(modified, "timestamp") else modified})
        return out

    # -- writing -------------------------------------------------------------------------

    def upload(self, source: Path, name: str) -> None:
        self._call("PUT", name, lambda: self.fs.put_file(os.fspath(source), self.path(name)))

    def write(self, name: str, data: bytes, create: bool = False) -> bool:
        """Put ``data`` as the object ``name``; with ``create``, only if there is none yet
        (a conditional put): ``False`` when there was one."""
        def put():
            if create:
                self.fs.pipe_file(self.path(name), data, mode="create")
            else:
                self.fs.pipe_file(self.path(name), data)
        try:
            self._call("PUT", name, put)
        except FileExistsError:
            if create:
                return False
            raise
        return True

    def delete(self, names: List[str]) -> None:
        if names:
            paths = [self.path(name) for name in names]
            self._call("DELETE", names[0], lambda: self.fs.rm(paths))
