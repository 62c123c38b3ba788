"""One URL prefix in object storage, read and written through fsspec (s3fs for ``s3://``; gcsfs,
adlfs, huggingface_hub for ``gs://``, ``az://``, ``hf://`` when installed; ``file://`` built in),
and for ``s3://`` downloaded through obstore where it can be (see ``Store.obstore``).

Every call is retried with exponential backoff on what a flaky network does (5xx answers, resets,
timeouts, bodies cut short); a download is written to a temporary file and kept only when its
size and digest (CRC-32, or SHA-256 in earlier manifests) are those recorded. After the
retries, ``RemoteError`` names the URL. Nothing here is shared across a fork: the child makes
its own filesystem object on first use (fsspec's objects refuse to run in a forked child), and a
child of a process that made requests through obstore downloads through fsspec (obstore's
runtime does not survive a fork: such a child hangs on its first request).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from .._extras import require
from ..base import is_url

__all__ = ["Store", "RemoteError", "is_url", "split_url", "CHUNK", "DIGESTS", "new_digest", "recorded_digest",
           "file_digest"]

T = TypeVar("T")
# Packs are read in ranges of this many bytes, ``PARALLEL`` at once.
CHUNK = 16 << 20
PARALLEL = 8
# The process whose requests went through obstore (its forked children download through fsspec).
_OBSTORE_PID: Optional[int] = None
# s3fs's options and obstore's S3 configuration keys for them.
_OBSTORE_KEYS = {"key": "access_key_id", "secret": "secret_access_key", "token": "session_token",
                 "endpoint_url": "endpoint"}


class _Crc32:
    """``zlib.crc32`` with hashlib's ``update``/``hexdigest`` (8 lowercase hex digits)."""

    def __init__(self):
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


# The digests a manifest's file entry may record (FORMAT.md section 15): name, the form of its
# value, and how to compute it. Writers record the first.
DIGESTS: Dict[str, Tuple["re.Pattern[str]", Callable[[], Any]]] = {
    "crc32": (re.compile(r"[0-9a-f]{8}"), _Crc32),
    "sha256": (re.compile(r"[0-9a-f]{64}"), hashlib.sha256),
}


def new_digest(name: str) -> Any:
    """A new digest of the kind ``name`` (see ``DIGESTS``): ``update(bytes)``, ``hexdigest()``."""
    return DIGESTS[name][1]()


def recorded_digest(entry: Dict[str, Any]) -> Tuple[str, str]:
    """``(name, value)`` of the one digest a manifest's file entry records; ``ValueError``
    when it records none, two, or one of the wrong form."""
    found = [(name, entry[name]) for name in DIGESTS if name in entry]
    if len(found) != 1 or not isinstance(found[0][1], str) or not DIGESTS[found[0][0]][0].fullmatch(found[0][1]):
        raise ValueError(f"one digest ({' or '.join(DIGESTS)}: 8 or 64 lowercase hex digits), found "
                         f"{', '.join(name for name, _ in found) or 'none'}")
    return found[0]


def file_digest(path: Any, name: str = "crc32") -> str:
    """The digest ``name`` of the file at ``path``, read in blocks of 8 MiB."""
    digest = new_digest(name)
    with open(path, "rb") as f:
        while True:
            block = f.read(8 << 20)
            if not block:
                return digest.hexdigest()
            digest.update(block)


class RemoteError(OSError):
    """A request to object storage failed after every retry, or what it returned was damaged."""


class Damaged(OSError):
    """A download whose size or checksum is not the one recorded (retried, never kept)."""


def split_url(url: str) -> Tuple[str, str]:
    """``(protocol, path)`` of ``url``, its path without a trailing ``/``; ``ValueError`` for
    a URL with no path."""
    if not is_url(url) or not url.split("://", 1)[1].strip("/"):
        raise ValueError(f"{url!r} is not a URL of a map (expected scheme://bucket/prefix, e.g. s3://bucket/corpus)")
    protocol, path = url.split("://", 1)
    return protocol, path.rstrip("/")


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


def _obstore_options(options: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """obstore's ``S3Store`` arguments for the s3fs ``options`` completed from the environment
    (see ``_s3_options``), or ``None`` where obstore cannot stand in for s3fs: when
    ``$MMAP_NINJA_OBSTORE`` is ``0``, for an option it has no equivalent of, or when the
    credentials are not keys (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``key``/``secret``)
    or ``anon``: a profile or an instance role, which botocore's chain finds."""
    if os.environ.get("MMAP_NINJA_OBSTORE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    options = _s3_options(options)
    config: Dict[str, Any] = {}
    for name, value in options.items():
        if name in _OBSTORE_KEYS:
            config[_OBSTORE_KEYS[name]] = value
        elif name == "anon":
            config["skip_signature"] = bool(value)
        elif name not in ("client_kwargs", "config_kwargs", "max_concurrency"):
            return None
    for name, value in options["client_kwargs"].items():
        if name not in ("region_name", "endpoint_url"):
            return None
        config["region" if name == "region_name" else "endpoint"] = value
    timeouts = options["config_kwargs"]
    if set(timeouts) - {"connect_timeout", "read_timeout", "retries"}:
        return None
    if "access_key_id" not in config and not config.get("skip_signature"):
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            return None
        config.update(access_key_id=key, secret_access_key=secret)
        if os.environ.get("AWS_SESSION_TOKEN"):
            config["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    config.setdefault("region", "us-east-1")
    client = {"connect_timeout": f"{float(timeouts['connect_timeout'])}s",
              "read_timeout": f"{float(timeouts['read_timeout'])}s",
              "timeout": "600s",  # a whole request (a range is at most CHUNK bytes)
              "allow_http": str(config.get("endpoint", "")).startswith("http://")}
    return {"config": config, "client_options": client, "retry_config": {"max_retries": 0}}


def _as_os_error(exc: BaseException) -> BaseException:
    """obstore's exception ``exc`` as the ``OSError`` fsspec raises for the same failure
    (a missing object, refused credentials, a bad path), else ``exc`` itself."""
    name = type(exc).__name__
    if name == "NotFoundError":
        return FileNotFoundError(str(exc))
    if name in ("PermissionDeniedError", "UnauthenticatedError"):
        return PermissionError(str(exc))
    if name in ("InvalidPathError", "UnknownConfigurationKeyError"):
        return ValueError(str(exc))
    return exc


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
        self._obstore: Any = None
        self._obstore_pid = -1

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

    @property
    def obstore(self) -> Any:
        """obstore's ``S3Store`` of this URL for this process, or ``None`` when downloads go
        through fsspec: a URL other than ``s3://``, obstore not installed, options it cannot take
        (see ``_obstore_options``), or a process forked from one that used obstore. Its Rust
        client downloads a part in about two thirds of s3fs's time on loopback, with a third of
        the server's work; requests, retries and checks are the same."""
        global _OBSTORE_PID
        if self.protocol != "s3" or _OBSTORE_PID not in (None, os.getpid()):
            return None
        if self._obstore_pid != os.getpid():
            self._obstore, self._obstore_pid = None, os.getpid()
            arguments = _obstore_options(self.storage_options)
            if arguments is None:
                return None
            try:
                from obstore.store import S3Store
            except ImportError:
                return None
            bucket, _, prefix = self.root.partition("/")
            self._obstore = S3Store(bucket, prefix=prefix or None, **arguments)
        if self._obstore is not None:
            _OBSTORE_PID = os.getpid()
        return self._obstore

    def _get(self, name: str, start: Optional[int] = None, end: Optional[int] = None) -> Any:
        """The bytes of ``name`` (a buffer), or of ``[start, end)``: one GET."""
        store = self.obstore
        if store is None:
            if start is None:
                return self.fs.cat_file(self.path(name))
            return self.fs.cat_file(self.path(name), start=start, end=end)
        import obstore

        try:
            if start is None:
                return obstore.get(store, name).bytes()
            return obstore.get_range(store, name, start=start, end=end)
        except Exception as exc:
            raise _as_os_error(exc) from exc

    def _get_ranges(self, name: str, starts: List[int], ends: List[int]) -> List[Any]:
        """The bytes of the ranges ``[starts[k], ends[k])`` of ``name`` (buffers), asked at once."""
        store = self.obstore
        if store is None:
            return self.fs.cat_ranges([self.path(name)] * len(starts), starts, ends, on_error="raise")
        import obstore

        try:
            return obstore.get_ranges(store, name, starts=starts, ends=ends)
        except Exception as exc:
            raise _as_os_error(exc) from exc

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
            return self._call("GET", name, lambda: bytes(self._get(name)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url_of(name)}: no such object") from None

    def read_if_exists(self, name: str) -> Optional[bytes]:
        try:
            return self.read(name)
        except FileNotFoundError:
            return None

    def download_pack(self, name: str, files: List[Tuple[Path, int, str]]) -> None:
        """Write the pack ``name`` (files back to back) into the files of ``files``, each a
        ``(target, size, (digest name, value))`` in the pack's order: read in ranges of at most
        ``CHUNK`` bytes, ``PARALLEL`` of them at once, each file checked (size and digest) as
        it is completed. A body cut short, a wrong length or a wrong digest: the pack is read
        again, and after the retries ``RemoteError`` names its URL."""
        total = sum(size for _, size, _ in files)
        starts = list(range(0, total, CHUNK))

        def get():
            k, digest, out, left = -1, None, None, 0

            def next_file():
                nonlocal k, digest, out, left
                if out is not None:
                    out.close()
                    kind, value = files[k][2]
                    if digest.hexdigest() != value:
                        raise Damaged(f"{files[k][0].name}: {kind} checksum {digest.hexdigest()}, {value} recorded")
                k += 1
                if k < len(files):
                    digest, out, left = new_digest(files[k][2][0]), open(files[k][0], "wb"), files[k][1]
                else:
                    out = None

            try:
                next_file()
                while out is not None and left == 0:
                    next_file()
                for first in range(0, len(starts), PARALLEL):
                    group = starts[first:first + PARALLEL]
                    ends = [min(total, start + CHUNK) for start in group]
                    chunks = self._get_ranges(name, group, ends) if len(group) > 1 else \
                        [self._get(name, group[0], ends[0])]
                    for start, end, chunk in zip(group, ends, chunks):
                        if isinstance(chunk, BaseException):
                            raise chunk
                        view = memoryview(chunk)
                        if len(view) != end - start:
                            raise Damaged(f"{len(view)} bytes at {start}, {end - start} asked")
                        while len(view):
                            take = min(left, len(view))
                            digest.update(view[:take])
                            out.write(view[:take])
                            view, left = view[take:], left - take
                            while out is not None and left == 0:
                                next_file()
            finally:
                if out is not None:
                    out.close()

        try:
            self._call("download", name, get)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url_of(name)}: no such object (the map lists it)") from None

    def upload_pack(self, sources: List[Path], name: str) -> None:
        """Upload the files ``sources``, back to back, as the one object ``name`` (streamed:
        a multipart upload where the store has them), retried whole."""
        def put():
            with self.fs.open(self.path(name), "wb", block_size=CHUNK) as out:
                for source in sources:
                    with open(source, "rb") as f:
                        shutil.copyfileobj(f, out, CHUNK)
        self._call("PUT", name, put)

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
