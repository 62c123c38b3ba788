"""Sharded maps on disk: a folder of parts (plain maps of one kind, or tables, under ``parts/``) and the
manifest that lists the committed ones, in numbered versions. ``manifest.ninja`` (JSON) is the
latest version (``format``, ``version``, ``kind``, ``dtype``, ``keys``, ``parts``: each a
``name`` and a ``length``); ``versions/<N>.ninja`` keeps every version until ``gc`` drops it;
the keys of a version that replaced the map's samples are under ``keysets/v<N>/``. Nothing read
from a manifest is trusted: names, lengths, the version and the keys' folder are checked before
use."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from .. import _meta
from .._storage import Commit, locking
from ..base import map_type
from . import table as table_format
from .kinds import KINDS

# What ``type.ninja`` holds for a sharded map.
TYPE = "sharded"
MANIFEST = _meta.MANIFEST
PARTS = "parts"
# The manifest's format: 2, numbered versions (versions/, keysets/); 1 (0.13.0), one manifest.
FORMAT = 2
# A part's name: one path component of safe characters (``write_part`` names parts
# ``part-<uuid hex>``), never ``.``, ``..``, a separator or an absolute path.
PART_NAME = re.compile(r"part-[A-Za-z0-9_-]{1,64}")
# The most samples one part, and a whole map, may hold: their sums and offsets stay int64.
MAX_SAMPLES = 2**62
# Numbered copies of every version's manifest, and the key tables of versions that replaced the
# map's samples (``keysets/v<version>/keys``).
VERSIONS = "versions"
KEYSETS = "keysets"
KEYS_HOME = re.compile(r"\.|keysets/v[0-9]{1,19}")
locking.COMPONENTS[TYPE] = (PARTS, VERSIONS, KEYSETS)
# What parts may be: a plain map of any kind of the registry, or a table (section 16).
TABLE = table_format.TYPE
PART_KINDS = (*KINDS, TABLE)


def describe_part(folder: Path, kind: str) -> dict:
    """What the part at ``folder`` holds, as the manifest and a part's record say it:
    ``length``, ``kind``, ``dtype`` (the dtype name of the samples; ``None`` for strings,
    tables and parts with no sample), ``shape`` (the row shape of a numpy part, else
    ``None``) and ``columns`` (a table's, see ``table_columns``; ``None`` for other kinds).
    ``ValueError`` when the folder holds another kind of map, or none."""
    found = map_type(folder)
    if found != kind:
        raise ValueError(f"{folder}: holds {'no map' if found is None else f'a {found} map'}, not {kind} samples")
    if kind == TABLE:
        schema = table_format.read_schema(folder)
        return {"length": schema.length, "kind": kind, "dtype": None, "shape": None,
                "columns": table_columns(folder, schema) if schema.length else None}
    registered = KINDS[kind]
    opened = registered.open(folder, None, None)
    dtype = getattr(opened, "dtype", None)
    length = len(opened)
    return {"length": length, "kind": kind, "dtype": None if dtype is None else _meta.dtype_name(dtype),
            "shape": list(opened.shape[1:]) if registered.rows and length else None, "columns": None}


def table_columns(folder: Path, schema: "table_format.Schema") -> List[dict]:
    """The columns of the table at ``folder`` (which holds rows) as a manifest lists them:
    ``{"name", "kind", "dtype", "shape"}`` each (``dtype`` ``None`` for strings, ``shape`` the
    row shape of a numpy column, else ``None``), with ``"classes"`` where the schema has them."""
    columns = []
    names = schema.class_names
    for name, kind in schema.columns:
        registered = KINDS[kind]
        opened = registered.open(table_format.column_dir(folder, name), None, None)
        dtype = getattr(opened, "dtype", None)
        entry = {"name": name, "kind": kind, "dtype": None if dtype is None else _meta.dtype_name(dtype),
                 "shape": list(opened.shape[1:]) if registered.rows else None}
        if name in names:
            entry["classes"] = list(names[name])
        columns.append(entry)
    return columns


def columns_text(columns: Optional[List[dict]]) -> str:
    """``columns`` (as ``table_columns`` gives them) for messages."""
    if not columns:
        return "no columns"
    return "{" + ", ".join(f"{c['name']}: {c['kind']}" + (f" {c['dtype']}" if c.get("dtype") else "")
                           + (f" rows {tuple(c['shape'])}" if c.get("shape") is not None else "")
                           + (" with classes" if "classes" in c else "") for c in columns) + "}"


def _check_columns(columns: Any, path: Any) -> None:
    """``ValueError`` naming ``path`` unless ``columns`` is ``None`` or a list of columns as
    ``table_columns`` makes them, each name listed once."""
    if columns is None:
        return
    if not isinstance(columns, list) or not columns:
        raise ValueError(f"{path}: columns must be a non-empty list or null, found {str(columns)[:80]!r}")
    seen = set()
    for entry in columns:
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS or \
                not isinstance(entry.get("dtype"), (str, type(None))) or \
                not (entry.get("shape") is None or isinstance(entry["shape"], list) and all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry["shape"])) or \
                not isinstance(entry.get("classes", []), list):
            raise ValueError(f"{path}: each column must be {{'name', 'kind' (one of {sorted(KINDS)}), 'dtype', "
                             f"'shape'}}, found {str(entry)[:120]!r}")
        try:
            name = table_format.check_column_name(entry.get("name"))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        if name.lower() in seen:
            raise ValueError(f"{path}: the column {name!r} is listed twice")
        seen.add(name.lower())


def is_part_name(name: Any) -> bool:
    return isinstance(name, str) and PART_NAME.fullmatch(name) is not None


def is_length(length: Any) -> bool:
    return isinstance(length, int) and not isinstance(length, bool) and 0 <= length <= MAX_SAMPLES


def read_manifest(out_dir: Path, version: Optional[int] = None) -> dict:
    """The manifest of the sharded map at ``out_dir`` (its latest version, or ``version``),
    checked: every name one path component naming a part (listed once), every length an int
    within ``[0, MAX_SAMPLES]``, and their sum too, the version and the folder of its keys;
    ``ValueError`` naming the file otherwise (``FileNotFoundError`` for a version not kept)."""
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
            raise TypeError(f"version must be an int of at least 0, not {version!r}")
        latest = read_manifest(out_dir)
        if latest.get("version", 0) == version:
            return latest
        path = out_dir / VERSIONS / f"{int(version)}.ninja"
        if not path.exists():
            raise FileNotFoundError(f"{out_dir} keeps no version {version} (it keeps {versions_of(out_dir)})")
        manifest = parse_manifest(path)
        if manifest.get("version", 0) != version:
            raise ValueError(f"{path}: holds version {manifest.get('version', 0)}, not {version}")
        return manifest
    return parse_manifest(out_dir / MANIFEST)


def parse_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(_meta.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a manifest ({exc})") from None
    return check_manifest(manifest, path)


def check_manifest(manifest: Any, path: Any) -> dict:
    """``manifest`` (JSON read from ``path``, a file or a URL) checked as ``read_manifest``
    describes; ``ValueError`` naming ``path``."""
    if not isinstance(manifest, dict) or manifest.get("kind") not in PART_KINDS or \
            not isinstance(manifest.get("parts"), list) or not isinstance(manifest.get("dtype"), (str, type(None))):
        raise ValueError(f"{path}: expected {{'kind', 'dtype', 'parts'}}, found {str(manifest)[:80]!r}")
    names = set()
    total = 0
    for k, part in enumerate(manifest["parts"]):
        if not isinstance(part, dict) or not is_part_name(part.get("name")) or not is_length(part.get("length")):
            raise ValueError(f"{path}: part {k} must be {{'name': 'part-...' (one path component), 'length': an int "
                             f"from 0 to {MAX_SAMPLES}}}, found {str(part)[:120]}")
        if part["name"] in names:
            raise ValueError(f"{path}: the part {part['name']!r} is listed twice")
        names.add(part["name"])
        total += part["length"]
    if total > MAX_SAMPLES:
        raise ValueError(f"{path}: its parts hold {total} samples in all, more than {MAX_SAMPLES}")
    if not isinstance(manifest.get("format", 1), int) or manifest.get("format", 1) > FORMAT:
        raise ValueError(f"{path}: written in format {manifest.get('format')!r}; this version of mmap_ninja reads "
                         f"formats up to {FORMAT}: upgrade mmap_ninja to read it")
    version = manifest.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**62:
        raise ValueError(f"{path}: the version must be an int of at least 0, found {version!r}")
    if manifest["kind"] == TABLE:
        _check_columns(manifest.get("columns"), path)
    if "keys" in manifest and manifest["keys"] is not None and \
            not (isinstance(manifest["keys"], str) and KEYS_HOME.fullmatch(manifest["keys"])):
        raise ValueError(f"{path}: keys must be '.', 'keysets/v<version>' or null, found {manifest['keys']!r}")
    return manifest


def keys_home(out_dir: Path, manifest: Optional[dict]) -> Optional[Path]:
    """The folder whose ``keys/`` holds the key table of a version (``manifest``), or ``None``
    when its samples have no keys: the map's own folder for manifests that do not say."""
    if manifest is None:
        return None
    home = manifest.get("keys", ".")
    if home is None:
        return None
    folder = out_dir if home == "." else out_dir / home
    return folder if (folder / _meta.KEYS / _meta.TYPE).exists() else None


def versions_of(out_dir: Path) -> List[int]:
    """The versions of the sharded map at ``out_dir`` that can be read, oldest first."""
    kept = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(out_dir / VERSIONS):
            match = re.fullmatch(r"([0-9]{1,19})\.ninja", entry.name)
            if match:
                kept.add(int(match.group(1)))
    with contextlib.suppress(OSError, ValueError):
        kept.add(read_manifest(out_dir).get("version", 0))
    return sorted(kept)


def write_manifest(out_dir: Path, manifest: dict, new: bool, previous: Optional[dict] = None) -> None:
    """Commit ``manifest`` as the latest version, in one ``Commit``: the latest version before it
    (``previous``) kept as ``versions/<N>.ninja`` if it is not yet (a map written before
    versions were numbered), the numbered copy of ``manifest`` under ``versions/`` (kept until
    ``gc`` drops it), then ``manifest.ninja``, which readers open, and for a ``new`` map its
    ``type.ninja`` last."""
    commit = Commit()
    (out_dir / VERSIONS).mkdir(exist_ok=True)
    if previous is not None:
        kept = out_dir / VERSIONS / f"{previous.get('version', 0)}.ninja"
        if not kept.exists():
            commit.replace(kept, (out_dir / MANIFEST).read_bytes())
    encoded = json.dumps(manifest, indent=1).encode()
    commit.replace(out_dir / VERSIONS / f"{manifest['version']}.ninja", encoded)
    commit.replace(out_dir / MANIFEST, encoded)
    if new:
        commit.replace(out_dir / _meta.TYPE, TYPE.encode())
    commit.finish()


def part_dir(out_dir: Path, name: Any) -> Path:
    """The folder of the part ``name`` of ``out_dir``: ``ValueError`` unless ``name`` is one
    path component naming a part and the folder is a directory there (not a link)."""
    if not is_part_name(name):
        raise ValueError(f"{name!r} is not the name of a part of {out_dir} (one path component: 'part-...')")
    path = out_dir / PARTS / name
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"{path}: no part folder there ({'a symbolic link' if path.is_symlink() else 'missing'})")
    return path
