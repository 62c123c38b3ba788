"""Maps moved to and from object storage: ``push`` a local map to a URL, ``pull`` one back,
``upload_part`` + ``commit`` for builds that write parts on many machines (Dask, Ray), ``gc`` of
abandoned uploads and ``verify`` of a URL (FORMAT.md, section 15)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .. import _meta
from .._format import sharded as _sharded
from .._format.verify import VERIFY_LIMIT, Report, check_limit
from .cache import check_files, fetch_files, fetch_manifest, files_size, keys_pack, pack_of
from .store import RemoteError, Store, file_digest

__all__ = ["push", "pull", "upload_part", "commit", "gc", "verify", "folder_files", "latest_manifest"]

# Files a writer leaves beside a map that are not the map's.
NOT_UPLOADED = ("writer.lock",)
COMMIT_ATTEMPTS = 20


def folder_files(folder: Path) -> List[Dict[str, Any]]:
    """Every file of the map folder ``folder`` as a manifest lists it (``path``, ``size``,
    ``crc32``), in sorted order: temporary, hidden and lock files left out; ``ValueError``
    for a symbolic link (a map's files are its own)."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:  # os.walk lists links to folders among the folders, and follows none
            if (Path(root) / name).is_symlink():
                raise ValueError(f"{Path(root) / name}: a symbolic link; a map pushed to object storage holds its "
                                 f"own files")
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(".tmp") or name in NOT_UPLOADED:
                continue
            path = Path(root) / name
            found.append({"path": path.relative_to(folder).as_posix(), "size": path.stat().st_size,
                          "crc32": file_digest(path)})
    return check_files(found, str(folder))


def _upload(store: Store, folder: Path, files: List[Dict[str, Any]], pack: str) -> None:
    store.upload_pack([folder.joinpath(*f["path"].split("/")) for f in files], pack)


def upload_part(store: Store, folder: Path, name: Optional[str] = None) -> Dict[str, Any]:
    """Upload the plain map or table at ``folder`` as a part (``name``, else a new one) of the
    map at ``store``'s URL, not yet committed (see ``commit``), and return its record: ``name``,
    ``length``, ``kind``, ``dtype``, ``shape``, ``columns`` and ``files``."""
    folder = Path(folder)
    kind = _meta.read_type(folder)
    if kind not in _sharded.PART_KINDS:
        raise ValueError(f"{folder}: holds {'no map' if kind is None else f'a {kind} map'}, not a part "
                         f"({', '.join(_sharded.PART_KINDS)})")
    name = name or f"part-{uuid.uuid4().hex}"
    if not _sharded.is_part_name(name):
        raise ValueError(f"{name!r} is not the name of a part (one path component: 'part-...')")
    record = {"name": name, **_sharded.describe_part(folder, kind), "files": folder_files(folder)}
    _upload(store, folder, record["files"], pack_of(name))
    return record


def latest_manifest(store: Store) -> Optional[dict]:
    """The latest version of the map at ``store``'s URL, checked, or ``None`` when there is none."""
    try:
        return fetch_manifest(store)[1]
    except FileNotFoundError:
        return None


def commit(store: Store, records: Sequence[Dict[str, Any]], replace: bool = False,
           key_files: Optional[List[Dict[str, Any]]] = None, plain: bool = False) -> dict:
    """Commit the uploaded parts of ``records`` as the next version of the map at ``store``'s
    URL: after the latest version's parts, or with ``replace`` in their place. The version is
    created with a conditional put, so of two committers at once one wins and the other commits
    after it; every record is checked against the map (kind, dtype, row shape) first.
    ``key_files``: the key table uploaded under ``keys/`` (only with ``replace`` or for a new
    map). Returns the manifest committed."""
    records = list(records)
    for k, record in enumerate(records):
        if not isinstance(record, dict) or not _sharded.is_part_name(record.get("name")) or \
                not _sharded.is_length(record.get("length")) or record.get("kind") not in _sharded.PART_KINDS:
            raise ValueError(f"record {k} must be a dict from upload_part ('name', 'length', 'kind', 'files'), "
                             f"found {str(record)[:120]}")
        check_files(record.get("files"), f"record {k} ({record['name']})")
    for attempt in range(COMMIT_ATTEMPTS):
        latest = latest_manifest(store)
        if latest is None and not records:
            raise ValueError(f"no parts to commit to {store.url}, which holds no map yet")
        base = None if latest is None or replace else latest
        kind = base["kind"] if base is not None else records[0]["kind"]
        dtype = base.get("dtype") if base is not None else None
        shape = base.get("shape") if base is not None else None
        columns = base.get("columns") if base is not None else None
        names = {part["name"] for part in base["parts"]} if base is not None else set()
        for record in records:
            if record["kind"] != kind:
                raise ValueError(f"{record['name']} holds {record['kind']} samples, but {store.url} holds {kind} "
                                 f"samples")
            if record["name"] in names:
                raise ValueError(f"part {record['name']!r} is committed to {store.url} already")
            names.add(record["name"])
            if record["length"]:
                if dtype is not None and record.get("dtype") != dtype:
                    raise ValueError(f"{record['name']} holds samples of {record.get('dtype')}, but {store.url} holds "
                                     f"samples of {dtype}")
                if shape is not None and record.get("shape") is not None and record["shape"] != shape:
                    raise ValueError(f"{record['name']} holds rows of shape {tuple(record['shape'])}, but {store.url} "
                                     f"holds rows of shape {tuple(shape)}")
                if columns is not None and record.get("columns") != columns:
                    raise ValueError(f"{record['name']} holds the columns "
                                     f"{_sharded.columns_text(record.get('columns'))}, but {store.url} holds "
                                     f"{_sharded.columns_text(columns)}")
                dtype = record.get("dtype") if dtype is None else dtype
                shape = record.get("shape") if shape is None else shape
                columns = record.get("columns") if columns is None else columns
        if base is not None and base.get("keys") is not None and base.get("key_files"):
            raise ValueError(f"{store.url} has keys: appending parts to it is not supported; push the whole map")
        version = 0 if latest is None else latest.get("version", 0) + 1
        parts = (base["parts"] if base is not None else []) + \
            [{"name": r["name"], "length": r["length"], "files": r["files"]} for r in records]
        manifest = {"format": _sharded.FORMAT, "version": version, "kind": kind, "dtype": dtype, "shape": shape,
                    "keys": "." if key_files else None, "parts": parts}
        if kind == _sharded.TABLE:
            manifest["columns"] = columns
        if key_files:
            manifest["key_files"] = key_files
        if plain:
            manifest["plain"] = True
        data = json.dumps(manifest, indent=1).encode()
        name = f"{_sharded.VERSIONS}/{version}.ninja"
        if latest is None:
            store.write(_meta.TYPE, _sharded.TYPE.encode())
        if store.write(name, data, create=True) or store.read(name) == data:  # ours, even if the answer was lost
            store.write(_sharded.MANIFEST, data)
            return manifest
        time.sleep(0.01 * (attempt + 1))  # another committer won this version: commit after it
    raise RemoteError(f"{store.url}: could not commit: other committers took {COMMIT_ATTEMPTS} versions in a row")


def push(local_map: Any, url: str, storage_options: Optional[Dict[str, Any]] = None, verbose: bool = False) -> dict:
    """Upload the map at ``local_map`` (any kind; a sharded map's latest version) to ``url``
    and commit it there as a new version in place of any map's samples there (readers of
    earlier versions keep reading theirs). A plain map becomes a map of one part, which
    ``pull`` writes back as a plain map. Keys and checksums come along. Returns the manifest."""
    store = Store(url, storage_options)
    folder = Path(os.path.abspath(os.fspath(local_map)))
    kind = _meta.read_type(folder)
    if kind is None:
        raise FileNotFoundError(f"{folder}: no map there (no {_meta.TYPE})")
    records: List[Dict[str, Any]] = []
    key_files = None
    if kind == _sharded.TYPE:
        manifest = _sharded.read_manifest(folder)
        entries = manifest["parts"]
        for entry in _progress(entries, verbose, f"push {folder.name}"):
            part = _sharded.part_dir(folder, entry["name"])
            record = upload_part(store, part, entry["name"])
            record["length"] = entry["length"]
            records.append(record)
        home = _sharded.keys_home(folder, manifest)
        if home is not None:
            key_files = folder_files(home / _meta.KEYS)
            _upload(store, home / _meta.KEYS, key_files, keys_pack(key_files))
        return commit(store, records, replace=True, key_files=key_files)
    if kind not in _sharded.PART_KINDS:
        raise ValueError(f"{folder}: holds a map of unknown kind {kind!r}")
    record = upload_part(store, folder)
    if (folder / _meta.KEYS / _meta.TYPE).exists():
        key_files = folder_files(folder / _meta.KEYS)
        _upload(store, folder / _meta.KEYS, key_files, keys_pack(key_files))
    return commit(store, [record], replace=True, key_files=key_files, plain=True)


def _progress(items: Sequence[Any], verbose: bool, what: str) -> Iterable[Any]:
    if not verbose:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="part")


def pull(url: str, local_dir: Any, storage_options: Optional[Dict[str, Any]] = None, version: Optional[int] = None,
         verbose: bool = False) -> Path:
    """Download the map at ``url`` (its latest version, or ``version``) to ``local_dir``, which
    must not exist or be an empty folder: a plain map when one was pushed, else a sharded map.
    Every file is checked (size and checksum) before it is kept, and the map is written aside
    and renamed into place, so a failed pull leaves nothing at ``local_dir``."""
    store = Store(url, storage_options)
    target = Path(os.path.abspath(os.fspath(local_dir)))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target}: exists and is not an empty folder; pull writes a new map")
    manifest = fetch_manifest(store, version)[1]
    target.parent.mkdir(parents=True, exist_ok=True)
    build = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.pulling"
    try:
        build.mkdir()
        if manifest.get("plain") and len(manifest["parts"]) == 1:
            fetch_files(store, manifest["parts"][0]["files"], pack_of(manifest['parts'][0]['name']),
                         build)
        else:
            for entry in _progress(manifest["parts"], verbose, f"pull {target.name}"):
                fetch_files(store, entry["files"], pack_of(entry["name"]),
                             build / _sharded.PARTS / entry["name"])
            if manifest.get("keys") is not None and manifest.get("key_files"):
                fetch_files(store, manifest["key_files"], keys_pack(manifest["key_files"]), build / _meta.KEYS)
                manifest = dict(manifest, keys=".")
            _sharded.write_manifest(build, manifest, new=True)
        if target.exists():
            target.rmdir()
        os.rename(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return target


def _referenced(store: Store) -> tuple:
    """``(parts, key packs)``: the names of the parts and the objects of the key tables that
    some kept version lists."""
    manifests = []
    for entry in store.list(_sharded.VERSIONS):
        data = store.read_if_exists(entry["name"])
        if data is not None:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                manifests.append(json.loads(data.decode()))
    latest = latest_manifest(store)
    if latest is not None:
        manifests.append(latest)
    parts, keys = set(), set()
    for manifest in manifests:
        if not isinstance(manifest, dict):
            continue
        parts |= {part.get("name") for part in manifest.get("parts", []) if isinstance(part, dict)}
        with contextlib.suppress(ValueError, TypeError, KeyError):
            if manifest.get("key_files"):
                keys.add(keys_pack(check_files(manifest["key_files"], store.url)))
    return parts, keys


def gc(url: str, storage_options: Optional[Dict[str, Any]] = None, older_than: float = 3600.0) -> List[str]:
    """Remove the parts under ``url`` that no kept version lists (uploads of tasks that failed
    or were retried), and the key tables no kept version reads, whose objects are all older
    than ``older_than`` seconds (so that a build uploading now keeps its own), and return their
    names (a part's name; a key table's object, ``keysets/<hex32>.pack``)."""
    store = Store(url, storage_options)
    parts, keys = _referenced(store)
    now = time.time()
    found: Dict[str, List[Dict[str, Any]]] = {}
    for entry in store.list(_sharded.PARTS):  # parts/<part>.pack (and what else a writer left there)
        name = entry["name"].split("/")[1].split(".", 1)[0] if entry["name"].count("/") >= 1 else None
        if name is not None and name not in parts:
            found.setdefault(name, []).append(entry)
    for entry in store.list(_sharded.KEYSETS):
        if entry["name"] not in keys:
            found.setdefault(entry["name"], []).append(entry)
    removed = []
    for name, objects in sorted(found.items()):
        if all(o["mtime"] is not None and now - o["mtime"] >= older_than for o in objects):
            store.delete([o["name"] for o in objects])
            removed.append(name)
    return removed


def verify(url: str, storage_options: Optional[Dict[str, Any]] = None, limit: int = VERIFY_LIMIT,
           deep: bool = False) -> Report:
    """Check the map at ``url``: its manifest, and that the pack of every part (and of its key
    table) is there with the size of its files; ``deep`` also downloads each and checks every
    file's checksum. Damage is reported, never raised."""
    limit = check_limit(limit)
    problems: List[str] = []
    try:
        store = Store(url, storage_options)
        manifest = fetch_manifest(store)[1]
        present = {o["name"]: o["size"] for o in store.list("")}
        listed = [(pack_of(part["name"]), part["files"]) for part in manifest["parts"]]
        if manifest.get("keys") is not None and manifest.get("key_files"):
            listed.append((keys_pack(manifest["key_files"]), manifest["key_files"]))
        for name, files in listed:
            size = files_size(files)
            if name not in present:
                problems.append(f"{store.url_of(name)}: missing")
            elif present[name] != size:
                problems.append(f"{store.url_of(name)}: {present[name]} bytes, its files in the manifest {size}")
            elif deep:
                with tempfile.TemporaryDirectory(prefix="mmap_ninja-verify-") as scratch:
                    try:
                        fetch_files(store, files, name, Path(scratch))
                    except RemoteError as exc:
                        problems.append(str(exc))
    except (OSError, ValueError) as exc:
        problems.append(str(exc))
    report = Report(problems[:limit])
    report.omitted = max(0, len(problems) - limit)
    return report
