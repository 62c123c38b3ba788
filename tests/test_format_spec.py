"""FORMAT.md is the specification of the files; these tests hold the code to it.

1. Names: every kind of map is written with every kind of write, and every file and folder
   those writes create (recorded as they are created, through an audit hook, so that temporary
   files and build folders count too) and every one they leave must be described by the index
   of names of FORMAT.md, a grammar parsed here.
2. Byte layouts: the files written are parsed as FORMAT.md lays them out (metadata files,
   array data, checksum entries, key tables with the hash function given there, manifests) and
   must agree with what the library reads from them.
3. Golden files: the maps written by mmap_ninja 0.9.0 are the ones FORMAT.md lists, are
   described by the index of names, and open here (``test_compat_090.py`` reads every value).
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
import struct
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import pytest

import mmap_ninja
from mmap_ninja import _keyindex, _meta, _storage, generic, megatron
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.sharded import ShardedMmap, write_part
from mmap_ninja.string import StringsMmap
from mmap_ninja.table import TableMmap

ROOT = Path(__file__).parent.parent
SPEC = ROOT / "FORMAT.md"
FIXTURES = Path(__file__).parent / "fixtures" / "mmap_ninja-0.9.0"
# A file of the user's, put into maps by these tests: writers keep it and move it along, and
# FORMAT.md does not (and need not) describe it.
USER_FILE = "user-notes.txt"


# -- FORMAT.md ------------------------------------------------------------------------------


def _section(title: str) -> str:
    """The text of the section of FORMAT.md whose heading is ``title`` (numbered or not)."""
    text = SPEC.read_text()
    match = re.search(rf"^## (?:\d+\. )?{re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"FORMAT.md has no section {title!r}"
    return match.group(1)


def _block(section: str, language: str, containing: str = "") -> str:
    """The first fenced block of ``language`` in ``section`` that contains ``containing``."""
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", section, flags=re.S | re.M):
        if containing in match.group(1):
            return match.group(1)
    raise AssertionError(f"no ```{language} block containing {containing!r}")


# What the placeholders of the index of names stand for (see its syntax in FORMAT.md).
PLACEHOLDERS = {"<N>": "[0-9]{1,19}", "<hex12>": "[0-9a-f]{12}", "<hex24>": "[0-9a-f]{24}", "<hex32>": "[0-9a-f]{32}",
                "<part>": "part-[A-Za-z0-9_-]{1,64}", "<column>": "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}"}


class Grammar:
    """The index of names of FORMAT.md: for each layout, its lines, each a list of path
    components (the last may be ``@LAYOUT``)."""

    def __init__(self, text: str, kinds: str = ""):
        self.layouts: Dict[str, List[List[str]]] = {}
        # the kind (type.ninja) of the layouts of maps
        self.kinds: Dict[str, str] = dict(line.split() for line in kinds.splitlines()
                                          if line.strip() and not line.startswith("#"))
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            assert len(fields) == 2 and re.fullmatch(r"[A-Z][A-Z_]*", fields[0]), \
                f"index of names, line {number}: expected 'LAYOUT PATH', found {raw!r}"
            self.layouts.setdefault(fields[0], []).append(fields[1].split("/"))
        self._compiled: Dict[Tuple[str, str], re.Pattern] = {}

    @classmethod
    def from_spec(cls) -> "Grammar":
        section = _section("Index of names")
        return cls(_block(section, "text", "PARENT "), _block(section, "text", "# layout     type.ninja"))

    def without(self, layout: str, path: str) -> "Grammar":
        """This grammar with the line ``layout path`` left out."""
        lines = [f"{name} {'/'.join(components)}" for name, paths in self.layouts.items() for components in paths
                 if (name, "/".join(components)) != (layout, path)]
        assert len(lines) == sum(map(len, self.layouts.values())) - 1, f"no line {layout} {path}"
        grammar = Grammar("\n".join(lines))
        grammar.kinds = self.kinds
        return grammar

    def references(self) -> Iterator[Tuple[str, str, bool]]:
        """``(layout, referenced layout, whether the reference is in the same folder)``."""
        for name, paths in self.layouts.items():
            for components in paths:
                if components[-1].startswith("@"):
                    yield name, components[-1][1:], len(components) == 1

    def literal_names(self) -> Set[str]:
        """Every file or folder name the grammar spells out (alternatives expanded)."""
        names = set()
        for paths in self.layouts.values():
            for components in paths:
                for component in components:
                    if component.startswith("@") or "<" in component:
                        continue
                    names |= set(_expand(component))
        return names

    def _regex(self, component: str, names: str) -> re.Pattern:
        key = (component, names)
        if key not in self._compiled:
            out = []
            for token in re.split(r"(<\w+>|\{[^}]*\})", component):
                if token.startswith("<"):
                    out.append(names if token == "<NAME>" else PLACEHOLDERS[token])
                elif token.startswith("{"):
                    out.append("(?:" + "|".join(re.escape(choice) for choice in token[1:-1].split(",")) + ")")
                else:
                    out.append(re.escape(token))
            self._compiled[key] = re.compile("".join(out))
        return self._compiled[key]

    def describes(self, layout: str, parts: Sequence[str], is_dir: bool, names: str, folder: Path) -> bool:
        """Whether the path ``parts`` (components, relative to ``folder``, which holds
        ``layout``) is described: a file by a line, a folder by a line reaching below it.
        ``names``: the regular expression of ``<NAME>``. The layout of a kind describes
        nothing in a folder whose ``type.ninja`` names another kind (a folder gone since it
        was recorded has none)."""
        kind = self.kinds.get(layout)
        if kind is not None and (folder / "type.ninja").is_file() and (folder / "type.ninja").read_text() != kind:
            return False
        for components in self.layouts[layout]:
            head, ref = (components[:-1], components[-1][1:]) if components[-1].startswith("@") else (components, None)
            common = min(len(head), len(parts))
            if not all(self._regex(head[k], names).fullmatch(parts[k]) for k in range(common)):
                continue
            if len(parts) < len(head):
                if is_dir:
                    return True  # a folder on the way
                continue
            if ref is None:
                if len(parts) == len(head) and not is_dir:
                    return True
                continue
            if len(parts) == len(head):
                if is_dir:
                    return True  # the folder holding the layout
                continue
            if self.describes(ref, parts[len(head):], is_dir, names, folder.joinpath(*parts[:len(head)])):
                return True
        return False

    def undescribed(self, root: Path, entries: Sequence[Tuple[str, bool]], names: Sequence[str]) -> List[str]:
        """The entries (paths under ``root``, folder or not) that the grammar does not
        describe as names beside or in the maps ``names`` of ``root``."""
        name_regex = "(?:" + "|".join(re.escape(name) for name in names) + ")"
        found = []
        for path, is_dir in entries:
            parts = Path(path).relative_to(root).parts
            if not parts or USER_FILE in parts:
                continue
            if not self.describes("PARENT", parts, is_dir, name_regex, root):
                found.append(f"{'/'.join(parts)}{'/' if is_dir else ''}")
        return sorted(set(found))


def _expand(component: str) -> List[str]:
    """A component with ``{a,b}`` alternatives, as the names it stands for."""
    match = re.search(r"\{([^}]*)\}", component)
    if not match:
        return [component]
    return [name for choice in match.group(1).split(",")
            for name in _expand(component[:match.start()] + choice + component[match.end():])]


def _tree(root: Path) -> List[Tuple[str, bool]]:
    """Every file and folder under ``root``, folders marked."""
    entries = []
    for folder, dirs, files in os.walk(root):
        entries += [(os.path.join(folder, name), True) for name in dirs]
        entries += [(os.path.join(folder, name), False) for name in files]
    return entries


# -- recording what writers create -------------------------------------------------------------

# (file descriptor of the log, prefix of the paths recorded) while recording; None otherwise.
# Forked worker processes inherit both, and write to the same log.
_RECORDING: Optional[Tuple[int, str]] = None
_HOOKED = False
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args: tuple) -> None:
    """Log every path created or opened for writing under the recorded folder: files opened
    to write, folders made, rename and link targets. Never raises (an audit hook that raises
    would fail the operation)."""
    recording = _RECORDING
    if recording is None:
        return
    try:
        if event == "open":
            path, mode, flags = args
            if not (flags & _WRITE_FLAGS or (mode and any(c in mode for c in "wax+"))):
                return
            entries = [(path, "f")]
        elif event == "os.mkdir":
            entries = [(args[0], "d")]
        elif event == "os.rename":
            entries = [(args[1], "d" if os.path.isdir(args[0]) else "f")]
        elif event == "os.link":
            entries = [(args[1], "f")]
        elif event == "os.truncate":
            entries = [(args[0], "f")]
        else:
            return
        fd, prefix = recording
        for path, kind in entries:
            if isinstance(path, int):
                continue
            path = os.path.abspath(os.fsdecode(os.fspath(path)))
            if path.startswith(prefix):
                os.write(fd, f"{kind} {path}\n".encode())
    except Exception:  # see the docstring
        pass


class Recorder:
    """``with Recorder(folder) as rec:`` logs what is created under ``folder``; then
    ``rec.entries()`` are ``(path, is_folder)`` (a path renamed onto counts as a file unless it
    is a folder now)."""

    def __init__(self, folder: Path, log: Path):
        self.folder, self.log = folder, log

    def __enter__(self) -> "Recorder":
        global _RECORDING, _HOOKED
        if not _HOOKED:
            sys.addaudithook(_audit)
            _HOOKED = True
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _RECORDING = (fd, str(self.folder) + os.sep)
        return self

    def __exit__(self, *exc_info) -> None:
        global _RECORDING
        fd = _RECORDING[0]
        _RECORDING = None
        os.close(fd)

    def entries(self) -> List[Tuple[str, bool]]:
        out = []
        for line in self.log.read_text().splitlines():
            kind, path = line.split(" ", 1)
            out.append((path, kind == "d" or os.path.isdir(path)))
        return out


# -- writing every kind of map with every kind of write --------------------------------------


def _words(count: int, seed: int) -> List[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "дельта", "ζήτα", "イオタ", "kappa", "🦙", "lambda", "mu", "nu", "omicron"]
    return [" ".join(rng.choice(words, size=rng.integers(1, 9))) + f" #{i}" for i in range(count)]


def _keys(prefix: str, count: int) -> List[str]:
    return [f"{prefix}/{i}" for i in range(count)]


# The table whose columns held rows of a write cut short, dropped by the next write: their bytes
# stay in the data files, past what is committed (FORMAT.md section 10).
CUT_SHORT = "table_cut_short"


def _fail_exchange(build, out_dir):
    raise OSError(errno.ENOSYS, "no atomic exchange here")


@dataclass
class Written:
    """The maps written under ``root`` (their folder names), what was recorded while they were
    written, and where the Megatron pair is."""

    root: Path
    names: List[str]
    recorded: List[Tuple[str, bool]]
    megatron_prefix: Path
    forked: bool  # whether the workers of the parallel build were forked (and so recorded)


def _write_every_kind(root: Path, elsewhere: Path) -> Tuple[List[str], bool]:
    """Write maps of every kind under ``root`` with every kind of write; return their names,
    and whether the worker processes of the parallel build were forked (which
    ``parallel._start_context`` does when no other thread runs)."""
    # numpy: C order with keys (from_ndarray, extend_dir, append), Fortran order (rewritten aside),
    # from_generator reserving n rows, an empty array, a 0-d array
    c = np_ninja.from_ndarray(root / "numpy_c", np.arange(12, dtype=np.float32).reshape(4, 3),
                              keys=_keys("c", 4))
    (root / "numpy_c" / USER_FILE).write_text("mine")
    np_ninja.extend_dir(root / "numpy_c", np.ones((2, 3), np.float32), keys=["e", "f"])
    np_ninja.append(c, np.zeros(3, np.float32), key="g")
    np_ninja.from_ndarray(root / "numpy_f", np.asfortranarray(np.arange(12, dtype=np.int16).reshape(4, 3)))
    (root / "numpy_f" / USER_FILE).write_text("mine")
    np_ninja.extend(np_ninja.open_existing(root / "numpy_f"), np.full((2, 3), 7, np.int16))
    assert (root / "numpy_f" / USER_FILE).read_text() == "mine"  # moved into the new version
    np_ninja.from_generator(root / "numpy_gen", (np.full(2, i, np.int64) for i in range(7)), batch_size=3, n=10)
    np_ninja.from_ndarray(root / "numpy_empty", np.empty((0, 3), np.int32))
    np_ninja.from_ndarray(root / "numpy_0d", np.array(2.5))

    # ragged: flat with keys, scalars and empty samples; extend, append, m[i] = v, then a 2-d
    # sample (shapes turn nested); n-d from a generator; a parallel build; an empty map
    flat = RaggedMmap.from_lists(root / "ragged", [np.arange(3), np.arange(0), np.int64(4), np.arange(2)],
                                 keys=_keys("r", 4))
    flat.extend([np.arange(5)], keys=["r/4"])
    flat.append(np.arange(1), key="r/5")
    flat[0] = [7, 7, 7]
    flat.close()
    RaggedMmap(root / "ragged").extend([np.ones((2, 2), np.int64), np.int64(9)], keys=["r/6", "r/7"])
    RaggedMmap(root / "ragged", mode="r+")[6] = [[1, 2], [3, 4]]
    samples = [np.arange(6, dtype=np.uint8).reshape(2, 3), np.uint8(4), np.zeros((0, 2), np.uint8),
               np.ones((1, 2, 2), np.uint8), np.arange(3, dtype=np.uint8)]
    RaggedMmap.from_generator(root / "ragged_nd", iter(samples), batch_size=2, n=len(samples))
    RaggedMmap(root / "ragged_nd").extend([np.full((3, 1), 2, np.uint8)])
    forked = threading.active_count() == 1 and multiprocessing.get_context().get_start_method() == "fork"
    RaggedMmap.from_indexable(root / "ragged_parallel", [np.arange(i % 4, dtype=np.int32) for i in range(12)],
                              batch_size=2, n_jobs=2, keys=_keys("p", 12))
    RaggedMmap.from_lists(root / "ragged_empty", [], dtype=np.float32)

    # strings: plain with keys (extend, append, m[i] = v), zstd with a dictionary, zstd from a
    # generator, only empty strings, none at all
    strings = StringsMmap.from_strings(root / "strings", ["α", "", "beta", "день"], keys=_keys("s", 4))
    strings.extend(["gamma"], keys=["s/4"])
    strings.append("ω", key="s/5")
    strings[0] = "β"
    strings.close()
    StringsMmap.from_strings(root / "strings_zstd_dict", _words(300, 1), zstd_level=3,
                             zstd_train_dictionary_size=1024)
    StringsMmap(root / "strings_zstd_dict").extend(_words(5, 2))
    StringsMmap.from_generator(root / "strings_zstd", iter(_words(40, 3)), batch_size=15, zstd_level=1)
    StringsMmap.from_strings(root / "strings_only_empty", ["", ""])
    StringsMmap.from_strings(root / "strings_empty", [])

    # sharded: built with keys (version 0), parts appended (1), rebuilt with keys of its own (2),
    # appended to again (3), a part never committed, gc keeping 2 versions, compacted; parts of
    # numpy and strings; maps adopted as parts, copied and moved
    sharded = root / "sharded"
    counter = iter(range(1000))

    def ragged_samples(count: int) -> List[np.ndarray]:
        return [np.arange(next(counter) % 5, dtype=np.int64) for _ in range(count)]

    ShardedMmap.from_generator(sharded, ragged_samples(5), part_size=2, keys=_keys("v0", 5))
    ShardedMmap.commit_parts(sharded, [write_part(sharded, ragged_samples(3), keys=_keys("v1", 3))])
    ShardedMmap.from_generator(sharded, ragged_samples(4), part_size=3, keys=_keys("v2", 4))
    ShardedMmap.commit_parts(sharded, [write_part(sharded, ragged_samples(2), keys=_keys("v3", 2))])
    write_part(sharded, ragged_samples(2), keys=_keys("never", 2))
    ShardedMmap(sharded).gc(keep_versions=2)
    ShardedMmap(sharded).compact(root / "compacted")
    ShardedMmap.from_generator(root / "sharded_numpy", (np.full(3, i, np.float64) for i in range(5)), part_size=2,
                               kind="numpy")
    ShardedMmap.from_generator(root / "sharded_strings", iter(["a", "bc", "", "déf"]), part_size=3)
    StringsMmap.from_strings(root / "adopt_a", ["one", "two"])
    StringsMmap.from_strings(root / "adopt_b", ["three"])
    adopted = ShardedMmap.from_maps(root / "sharded_adopted", [root / "adopt_a"], copy=True)
    adopted.append_maps([root / "adopt_b"])  # moved in

    # tables: built with keys, extended, a row assigned, a column added and one dropped; rows a
    # write cut short left past the table's length (and a folder it left) dropped by the next write
    table = TableMmap.from_generator(root / "table", ({"image": np.full((2, i + 1), i, np.uint8), "label": i,
                                                       "caption": f"#{i}"} for i in range(5)), batch_size=2,
                                     keys=_keys("t", 5))
    table.extend([{"image": np.zeros((1, 1), np.uint8), "label": 5, "caption": "five"}], keys=["t/5"])
    table.append({"image": np.ones((3, 1), np.uint8), "label": 6, "caption": "six"}, key="t/6")
    TableMmap(root / "table", mode="r+")[1] = {"image": np.full((2, 2), 9, np.uint8), "label": -1, "caption": "#9"}
    table.add_column("weight", np.linspace(0, 1, 7))
    table.drop_column("caption")
    cut = TableMmap.from_columns(root / CUT_SHORT, {"image": [np.arange(4, dtype=np.uint8)], "label": [1]})
    RaggedMmap(cut.out_dir / "columns" / "image").extend([np.zeros((4, 4), np.uint8)])  # as a write cut short
    np_ninja.from_ndarray(cut.out_dir / "columns" / "stray", np.arange(3))  # as an add_column cut short
    cut.extend([{"image": np.ones((1, 2), np.uint8), "label": 7}])
    TableMmap.from_columns(root / "table_empty", {"x": [], "s": []}, columns={"x": "numpy", "s": "strings"})
    # a sharded map of tables: built with keys, a part appended, a table adopted, compacted into one table
    rows = [{"image": np.full((i % 3 + 1, 2), i, np.uint8), "label": i, "caption": f"#{i}"} for i in range(7)]
    tables = ShardedMmap.from_generator(root / "sharded_tables", rows[:5], part_size=2, keys=_keys("st", 5))
    ShardedMmap.commit_parts(tables.out_dir, [write_part(tables.out_dir, rows[5:6], keys=["st/5"])])
    TableMmap.from_generator(root / "adopt_table", rows[6:], keys=["st/6"])
    ShardedMmap(tables.out_dir).append_maps([root / "adopt_table"])
    ShardedMmap(tables.out_dir).compact(root / "tables_compacted")

    # Megatron: linked (and its first write makes the data private), read once for checksums,
    # copied
    tokens = RaggedMmap.from_lists(elsewhere / "tokens", [np.arange(k, dtype=np.int32) for k in (5, 1, 3, 7)])
    prefix = elsewhere / "corpus_text_document"
    megatron.export(tokens, prefix)
    megatron.to_ragged(prefix, root / "megatron_linked")
    megatron.to_ragged(prefix, root / "megatron_written")
    RaggedMmap(root / "megatron_written").extend([np.arange(4, dtype=np.int32)])
    megatron.to_ragged(prefix, root / "megatron_checksum", checksum=True)
    megatron.to_ragged(prefix, root / "megatron_copied", link=False)

    # whole-map writes over a map of another kind; a swap without atomic exchange; a swap after
    # which a file of the user's cannot be moved (the old version is kept)
    RaggedMmap.from_lists(root / "replaced", [np.arange(2)])
    StringsMmap.from_strings(root / "replaced", ["now strings"], keys=["only"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_storage.locking, "exchange", _fail_exchange)
        RaggedMmap.from_lists(root / "swapped", [np.arange(2)])
        RaggedMmap.from_lists(root / "swapped", [np.arange(3), np.arange(1)])
    StringsMmap.from_strings(root / "kept", ["a", "b"])
    (root / "kept" / USER_FILE).write_text("mine")
    rename = os.rename

    def refuse_user_file(source, target, *args, **kwargs):
        if os.path.basename(os.fspath(source)) == USER_FILE:
            raise PermissionError(errno.EACCES, "refused", os.fspath(source))
        return rename(source, target, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.setattr(os, "rename", refuse_user_file)
        StringsMmap.from_strings(root / "kept", ["c"])
    kept = [entry for entry in os.listdir(root) if entry.startswith(".kept.") and entry.endswith(".kept")]
    assert len(kept) == 1 and (root / kept[0] / USER_FILE).exists(), os.listdir(root)
    left = [entry for entry in os.listdir(root) if not entry.startswith(".")]
    return sorted(left + ["adopt_b", "adopt_table"]), forked  # moved into sharded_adopted, sharded_tables


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Written:
    base = tmp_path_factory.mktemp("format_spec")
    root, elsewhere = base / "maps", base / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    with Recorder(root, base / "created.log") as recorder:
        names, forked = _write_every_kind(root, elsewhere)
    return Written(root, names, recorder.entries(), elsewhere / "corpus_text_document", forked)


# -- 1. names --------------------------------------------------------------------------------


def test_index_of_names_is_a_closed_grammar():
    """Every layout referenced is defined, every layout is reachable from PARENT (or CACHE, the
    folder of the cache of maps in object storage), and no
    layout includes itself (in the same folder), so that matching ends."""
    grammar = Grammar.from_spec()
    references = list(grammar.references())
    assert {ref for _, ref, _ in references} <= set(grammar.layouts)
    reachable, todo = {"PARENT", "CACHE"}, ["PARENT", "CACHE"]  # a map's folder's parent; a cache folder
    while todo:
        layout = todo.pop()
        for name, ref, _ in references:
            if name == layout and ref not in reachable:
                reachable.add(ref)
                todo.append(ref)
    assert reachable == set(grammar.layouts)


    def has_type(layout: str) -> bool:  # type.ninja in its folder, itself or by an inline include
        return any(path == ["type.ninja{,.tmp}"] or len(path) == 1 and path[0].startswith("@") and has_type(path[0][1:])
                   for path in grammar.layouts[layout])

    assert {layout for layout, paths in grammar.layouts.items() if ["type.ninja{,.tmp}"] in paths} <= set(grammar.kinds)
    assert all(has_type(layout) for layout in grammar.kinds)
    assert set(grammar.kinds.values()) == {"numpy", "ragged", "string", "sharded", "table"}
    same_folder = {}
    for name, ref, inline in references:
        if inline:
            same_folder.setdefault(name, set()).add(ref)

    def includes(layout: str, seen: Tuple[str, ...]) -> None:
        assert layout not in seen, f"{' -> '.join(seen + (layout,))}: a layout includes itself"
        for ref in same_folder.get(layout, ()):
            includes(ref, seen + (layout,))

    for layout in grammar.layouts:
        includes(layout, ())


def test_index_of_names_names_every_file_of_the_code():
    """The names the code knows for a map's files are in the index (and so in the prose)."""
    names = Grammar.from_spec().literal_names()
    expected = set(_meta.MAP_FILES) | {_storage.LOCK_FILE, _storage.BUILD_PARTS, _meta.KEYS, "parts", "versions",
                                       "keysets", "starts", "ends", "flattened_shapes", "shapes"}
    assert expected <= names, expected - names
    prose = SPEC.read_text()
    for name in sorted(names):
        name = name[:-len(".tmp")] if name.endswith(".tmp") else name  # NAME.tmp: explained once
        assert f"`{name}" in prose or f"{name}`" in prose or f"/{name}" in prose, f"{name}: not in the prose"


def test_every_name_written_is_described(written):
    """What every kind of write created (recorded) and left (walked) under the maps' folder:
    every file and folder is described by the index of names."""
    grammar = Grammar.from_spec()
    created = {path for path, _ in written.recorded}
    # the recording saw the temporary names too: the check covers them
    temporary = [r"/\.[a-z_]+\.[0-9a-f]{12}\.building$", r"\.ninja\.tmp$", r"/keys/index\.ninja\.new$",
                 r"/\.swapped\.[0-9a-f]{12}\.building\.old$", r"/data\.ninja\.tmp$", r"/versions/3\.ninja$",
                 r"/keysets/v2$", r"/parts/\.part-[0-9a-f]{32}\.[0-9a-f]{12}\.building$"]
    if written.forked:  # else the workers' files were not recorded
        temporary.append(r"/\.parts\.building/parts/part-[0-9a-f]{32}$")
    for pattern in temporary:
        assert any(re.search(pattern, path) for path in created), f"nothing recorded matches {pattern}"
    undescribed = grammar.undescribed(written.root, written.recorded, written.names)
    assert not undescribed, f"created, and not described by FORMAT.md: {undescribed}"
    left = _tree(written.root)
    assert len(left) > 500
    undescribed = grammar.undescribed(written.root, left, written.names)
    assert not undescribed, f"left on disk, and not described by FORMAT.md: {undescribed}"


def test_a_name_the_index_leaves_out_fails_the_check(written):
    """The check is not vacuous: without the line of the key tables' hash table, the tables
    written are reported, and so is a name no line describes."""
    grammar = Grammar.from_spec()
    entries = _tree(written.root)
    assert not grammar.undescribed(written.root, entries, written.names)
    reported = grammar.without("KEYS", "index.ninja{,.new,.tmp}").undescribed(written.root, entries, written.names)
    assert reported and all(name.endswith("keys/index.ninja") for name in reported)
    assert "numpy_c/keys/index.ninja" in reported
    assert "sharded/keysets/v2/keys/index.ninja" in reported
    strays = [(str(written.root / "numpy_c" / "data.ninja.bak"), False),
              (str(written.root / "ragged" / "starts" / "keys"), True),
              (str(written.root / ".numpy_c.0123456789ab.building" / "shape.ninja.old"), False)]
    assert grammar.undescribed(written.root, strays, written.names) == [
        ".numpy_c.0123456789ab.building/shape.ninja.old", "numpy_c/data.ninja.bak", "ragged/starts/keys/"]


def test_a_map_replacing_a_sharded_map_keeps_none_of_its_files(tmp_path):
    ShardedMmap.from_generator(tmp_path / "m", [np.arange(2), np.arange(3)], part_size=1, keys=["a", "b"])
    ShardedMmap.from_generator(tmp_path / "m", [np.arange(4)], part_size=1, keys=["c"])
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(5)])
    assert not Grammar.from_spec().undescribed(tmp_path, _tree(tmp_path), ["m"])


# -- 2. byte layouts -------------------------------------------------------------------------


def _text(path: Path) -> str:
    raw = path.read_bytes()
    assert not raw.endswith(b"\n"), f"{path}: a trailing newline"
    return raw.decode("utf-8")


@dataclass
class Array:
    """An array folder as FORMAT.md lays it out, parsed without the library."""

    path: Path
    dtype: np.dtype
    shape: Tuple[int, ...]
    order: str

    @classmethod
    def parse(cls, path: Path) -> "Array":
        raw = (path / "shape.ninja").read_bytes()
        assert len(raw) % 8 == 0, f"{path}/shape.ninja: {len(raw)} bytes"
        shape = struct.unpack(f"<{len(raw) // 8}Q", raw)
        order = _text(path / "order.ninja")
        assert order in ("C", "F"), f"{path}/order.ninja: {order!r}"
        name = _text(path / "dtype.ninja")
        assert re.fullmatch(r"[a-z]+[0-9]*(\[[0-9]*[a-zA-Z]+\])?", name), name
        dtype = np.dtype(name)
        assert dtype.name == name
        return cls(path, dtype, shape, order)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def values(self) -> np.ndarray:
        raw = (self.path / "data.ninja").read_bytes()
        assert len(raw) >= self.nbytes, f"{self.path}: {len(raw)} bytes for {self.nbytes}"
        return np.frombuffer(raw[:self.nbytes], dtype=self.dtype).reshape(self.shape, order=self.order)

    def metadata(self) -> bytes:
        return f"{self.dtype.name}|{self.order}|".encode() + (self.path / "shape.ninja").read_bytes()


def _entries(folder: Path) -> List[Tuple[int, int, int, int]]:
    raw = (folder / "checksums.ninja").read_bytes()
    assert len(raw) % 24 == 0, f"{folder}/checksums.ninja: {len(raw)} bytes"
    return list(struct.iter_unpack("<QQII", raw))


def _check_entries(folder: Path, data: bytes, end: int, metadata: bytes, start: int = 0) -> None:
    """``checksums.ninja`` of ``folder``: entries back to back from ``start`` to ``end``,
    each with the CRC-32 of its bytes of ``data``, the last with that of ``metadata``."""
    entries = _entries(folder)
    assert entries, folder
    at = start
    for offset, length, crc, _ in entries:
        assert offset == at, f"{folder}: an entry at {offset}, expected {at}: {entries}"
        assert crc == zlib.crc32(data[offset:offset + length]), f"{folder}: bytes [{offset}, {offset + length})"
        at += length
    assert at == end, f"{folder}: entries end at {at}, the data at {end}"
    assert entries[-1][3] == zlib.crc32(metadata), f"{folder}: the metadata's CRC-32"


def _array_folders(root: Path) -> Iterator[Path]:
    for folder, _, files in os.walk(root):
        if "dtype.ninja" in files and "shape.ninja" in files:
            yield Path(folder)


def test_array_folders_hold_what_their_metadata_say(written):
    """shape.ninja is a uint64 per axis, dtype.ninja numpy's name, order.ninja C or F, and
    data.ninja the array's bytes in that order, with at most the one padding byte after them;
    every commit's bytes and the metadata after it are in checksums.ninja (<QQII)."""
    checked = 0
    for path in _array_folders(written.root):
        array = Array.parse(path)
        size = (path / "data.ninja").stat().st_size
        padding = size if CUT_SHORT in path.parts else max(array.nbytes, 1)
        assert array.nbytes <= size <= padding, f"{path}: {size} bytes for {array.nbytes}"
        data = (path / "data.ninja").read_bytes()
        if path.name.startswith("megatron_") and path.name != "megatron_copied":
            continue  # see test_megatron_linked_map_records_metadata_alone
        _check_entries(path, data, array.nbytes, array.metadata())
        checked += 1
    assert checked > 100
    memmap = np_ninja.open_existing(written.root / "numpy_f")
    parsed = Array.parse(written.root / "numpy_f")
    assert parsed.order == "F" and parsed.shape == (6, 3) and (parsed.values() == memmap).all()
    assert np.isfortran(memmap)
    empty = Array.parse(written.root / "numpy_empty")
    assert empty.shape == (0, 3) and (written.root / "numpy_empty" / "data.ninja").read_bytes() == b"\0"
    scalar = Array.parse(written.root / "numpy_0d")
    assert scalar.shape == () and (written.root / "numpy_0d" / "shape.ninja").read_bytes() == b""
    assert scalar.values() == np.float64(2.5)
    assert Array.parse(written.root / "numpy_gen").shape == (7, 2)  # the 10 rows reserved are gone
    assert _text(written.root / "numpy_c" / "type.ninja") == "numpy"


def _ragged_samples(path: Path) -> List[np.ndarray]:
    """The samples of the ragged map at ``path``, read as FORMAT.md says."""
    assert _text(path / "type.ninja") == "ragged"
    data = Array.parse(path).values().reshape(-1)
    starts, ends, sizes = (Array.parse(path / name).values().reshape(-1)
                           for name in ("starts", "ends", "flattened_shapes"))
    n = len(starts)
    flag = struct.unpack("<i", (path / "shapes_are_flat.ninja").read_bytes())[0]
    nested = _text(path / "shapes" / "type.ninja") == "ragged"
    assert flag == (0 if nested else 1)
    assert (sizes[:n] == ends[:n] - starts[:n]).all()
    if nested:
        shapes = [tuple(int(axis) for axis in shape) for shape in _ragged_samples(path / "shapes")]
    else:
        lengths = Array.parse(path / "shapes")
        assert lengths.shape[1:] == (1,) and lengths.dtype == np.int64
        shapes = [() if length == 0 and end - start == 1 else (int(length),)
                  for length, start, end in zip(lengths.values()[:, 0], starts, ends)]
    for array in ("starts", "ends", "flattened_shapes"):
        assert Array.parse(path / array).dtype == np.int64
    return [data[start:end].reshape(shape) for start, end, shape in zip(starts[:n], ends[:n], shapes)]


@pytest.mark.parametrize("name", ["ragged", "ragged_nd", "ragged_parallel", "megatron_written", "compacted"])
def test_ragged_maps_are_their_offsets_and_shapes(written, name):
    path = written.root / name
    samples = _ragged_samples(path)
    m = RaggedMmap(path)
    assert len(samples) == len(m)
    for i, sample in enumerate(samples):
        assert np.shape(m[i]) == sample.shape and (np.asarray(m[i]) == sample).all(), f"{name}: sample {i}"
    if name == "ragged":
        assert samples[2].shape == () and samples[1].shape == (0,)  # a scalar, an empty sample
        assert samples[6].shape == (2, 2)  # the shapes turned nested
        starts = Array.parse(path / "starts").values()
        assert starts[0] > starts[1]  # sample 0 was replaced: its new bytes come after the others


def _strings(path: Path) -> List[str]:
    """The strings of the strings map at ``path``, read as FORMAT.md says."""
    assert _text(path / "type.ninja") == "string"
    if not (path / "starts" / "type.ninja").exists():
        return []
    data = (path / "data.ninja").read_bytes()
    starts, ends = Array.parse(path / "starts").values(), Array.parse(path / "ends").values()
    raws = [data[start:end] for start, end in zip(starts, ends)]
    if (path / "zstd_level.ninja").exists():
        import zstandard

        int(_text(path / "zstd_level.ninja"))
        dictionary = None
        if (path / "zstd_dict.ninja").exists():
            dictionary = zstandard.ZstdCompressionDict((path / "zstd_dict.ninja").read_bytes())
        decompressor = zstandard.ZstdDecompressor(dict_data=dictionary)
        raws = [decompressor.decompress(raw) for raw in raws]
    return [raw.decode("utf-8") for raw in raws]


@pytest.mark.parametrize("name", ["strings", "strings_zstd_dict", "strings_zstd", "strings_only_empty",
                                  "strings_empty", "sharded_strings/parts"])
def test_strings_maps_are_their_bytes_and_offsets(written, name):
    paths = sorted((written.root / name).iterdir()) if name.endswith("parts") else [written.root / name]
    for path in paths:
        assert _strings(path) == list(StringsMmap(path, mode="rb")), path
        if not (path / "data.ninja").exists():
            assert sorted(os.listdir(path)) in (["type.ninja"], ["type.ninja", "writer.lock"])
            continue
        data = (path / "data.ninja").read_bytes()
        level = _text(path / "zstd_level.ninja") if (path / "zstd_level.ninja").exists() else "None"
        dictionary = (path / "zstd_dict.ninja").read_bytes() if (path / "zstd_dict.ninja").exists() else b""
        end = 0 if data == b"\0" else len(data)
        _check_entries(path, data, end, f"{level}|".encode() + dictionary)
    if name == "strings":
        assert _strings(written.root / name) == ["β", "", "beta", "день", "gamma", "ω"]
    if name == "strings_only_empty":
        assert (written.root / name / "data.ninja").read_bytes() == b"\0"


def _spec_hash():
    namespace: dict = {}
    exec(_block(_section("Key tables"), "python", "def key_hash"), namespace)
    return namespace["key_hash"]


def _key_folders(root: Path) -> Iterator[Path]:
    for folder, dirs, _ in os.walk(root):
        if "keys" in dirs and (Path(folder) / "keys" / "index.ninja").exists():
            yield Path(folder) / "keys"


def test_hash_function_of_format_md_is_the_one_of_the_code():
    key_hash = _spec_hash()
    keys = ["", "a", "abcdefg", "abcdefgh", "abcdefghi", "дельта/🦙", "x" * 1000] + _keys("k", 50)
    encoded = [key.encode() for key in keys]
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    ends = np.cumsum([len(raw) for raw in encoded]).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    compiled = _keyindex.hash_keys(data, starts, ends)
    assert [key_hash(raw) for raw in encoded] == compiled.tolist()


def test_key_tables_are_laid_out_as_format_md_says(written):
    """keys/: a strings map of keys back to back, checksums with no metadata, and index.ninja:
    the <8sIIQ header, then slots where linear probing from hash & (capacity - 1) finds each
    key's (tag | position + 1)."""
    key_hash = _spec_hash()
    checked = 0
    for path in _key_folders(written.root):
        keys = _strings(path)
        data = (path / "data.ninja").read_bytes()
        starts, ends = Array.parse(path / "starts").values(), Array.parse(path / "ends").values()
        assert (starts[1:] == ends[:-1]).all() and (not len(starts) or starts[0] == 0), path
        _check_entries(path, data, int(ends[-1]) if len(ends) else 0, b"")
        assert _entries(path)[-1][3] == 0
        raw = (path / "index.ninja").read_bytes()
        magic, version, bits, capacity = struct.unpack_from("<8sIIQ", raw)
        assert (magic, version, bits) == (b"MNKEYIDX", 1, 40), path
        assert raw[24:64] == bytes(40)
        assert capacity >= 1024 and capacity & (capacity - 1) == 0 and capacity >= 2 * len(keys)
        assert len(raw) == 64 + 8 * capacity
        slots = np.frombuffer(raw, dtype="<u8", offset=64)
        assert np.count_nonzero(slots) == len(keys), path
        for position, key in enumerate(keys):
            h = key_hash(key.encode())
            want = (h & ~((1 << 40) - 1)) | (position + 1)
            at = h & (capacity - 1)
            while int(slots[at]) != want:
                assert slots[at] != 0, f"{path}: {key!r} is not found by probing"
                at = (at + 1) & (capacity - 1)
        checked += 1
    assert checked >= 10
    assert _strings(written.root / "numpy_c" / "keys") == _keys("c", 4) + ["e", "f", "g"]
    assert np_ninja.index_of(written.root / "numpy_c", "f") == 5


def test_sharded_manifests_and_versions(written):
    """manifest.ninja is the latest versions/<N>.ninja, byte for byte: JSON with format 2,
    version, kind, dtype, keys and the parts in order; every part it lists is a map of its
    kind holding at least its length."""
    path = written.root / "sharded"
    assert _text(path / "type.ninja") == "sharded"
    manifest = json.loads(_text(path / "manifest.ninja"))
    assert set(manifest) == {"format", "version", "kind", "dtype", "keys", "parts"}
    assert (manifest["format"], manifest["version"], manifest["kind"], manifest["dtype"]) == (2, 3, "ragged", "int64")
    assert manifest["keys"] == "keysets/v2"
    assert sorted(os.listdir(path / "versions")) == ["2.ninja", "3.ninja"]  # gc kept 2 versions
    assert (path / "versions" / "3.ninja").read_bytes() == (path / "manifest.ninja").read_bytes()
    assert (path / "manifest.ninja").read_bytes() == json.dumps(manifest, indent=1).encode()
    version2 = json.loads(_text(path / "versions" / "2.ninja"))
    assert version2["version"] == 2 and version2["parts"] == manifest["parts"][:len(version2["parts"])]
    assert os.listdir(path / "keysets") == ["v2"]  # v... of dropped versions: none; "." stays
    listed = {part["name"] for part in manifest["parts"]}
    assert set(os.listdir(path / "parts")) == listed  # gc removed the rest
    for part in manifest["parts"]:
        assert re.fullmatch(r"part-[0-9a-f]{32}", part["name"])
        assert _text(path / "parts" / part["name"] / "type.ninja") == manifest["kind"]
        assert len(_ragged_samples(path / "parts" / part["name"])) >= part["length"]
    keys = _strings(path / "keysets" / "v2" / "keys")
    assert keys == _keys("v2", 4) + _keys("v3", 2)
    assert ShardedMmap(path).keys() == keys and ShardedMmap(path, version=2).keys() == _keys("v2", 4)
    numpy = json.loads(_text(written.root / "sharded_numpy" / "manifest.ninja"))
    assert (numpy["kind"], numpy["dtype"], numpy["keys"], numpy["version"]) == ("numpy", "float64", None, 0)
    strings = json.loads(_text(written.root / "sharded_strings" / "manifest.ninja"))
    assert (strings["kind"], strings["dtype"]) == ("string", None)
    adopted = json.loads(_text(written.root / "sharded_adopted" / "manifest.ninja"))
    assert adopted["version"] == 1 and [part["length"] for part in adopted["parts"]] == [2, 1]


def test_megatron_linked_map_records_metadata_alone(written):
    """A map whose data file is Megatron's .bin (hard link or clone) records one entry of no
    bytes where the data end, with the metadata's CRC-32; with checksum=True, the CRC-32 of the
    bytes too."""
    bin_path = Path(str(written.megatron_prefix) + ".bin")
    linked = written.root / "megatron_linked"
    array = Array.parse(linked)
    assert (linked / "data.ninja").read_bytes() == bin_path.read_bytes()
    assert array.nbytes == bin_path.stat().st_size and array.dtype == np.int32
    assert _entries(linked) == [(array.nbytes, 0, 0, zlib.crc32(array.metadata()))]
    checksum = written.root / "megatron_checksum"
    _check_entries(checksum, (checksum / "data.ninja").read_bytes(), array.nbytes, Array.parse(checksum).metadata())
    written_map = written.root / "megatron_written"
    assert not os.path.samefile(written_map / "data.ninja", bin_path)  # made private by its first write
    entries = _entries(written_map)
    assert entries[0] == (array.nbytes, 0, 0, zlib.crc32(array.metadata()))
    _check_entries(written_map, (written_map / "data.ninja").read_bytes(), Array.parse(written_map).nbytes,
                   Array.parse(written_map).metadata(), start=array.nbytes)
    report = mmap_ninja.verify(linked, deep=True)
    assert report == [] and any("carry no checksum" in note for note in report.notes)


def test_pending_renames_are_taken_by_readers_and_completed_by_writers(tmp_path):
    """pending.ninja ('SOURCE TARGET' lines): a reader takes data.ninja.new and shape.ninja.new
    in place of the files they replace; the next writer renames them and removes the list."""
    path = tmp_path / "m"
    np_ninja.from_ndarray(path, np.arange(6, dtype=np.int64).reshape(3, 2))
    new = np.arange(10, dtype=np.int64).reshape(5, 2) * 10
    (path / "data.ninja.new").write_bytes(new.tobytes())
    (path / "shape.ninja.new").write_bytes(struct.pack("<2Q", 5, 2))
    (path / "pending.ninja").write_bytes(b"data.ninja.new data.ninja\nshape.ninja.new shape.ninja\n")
    assert (np_ninja.open_existing(path) == new).all()
    np_ninja.extend_dir(path, np.full((1, 2), -1, np.int64))
    assert sorted(os.listdir(path)) == ["checksums.ninja", "data.ninja", "dtype.ninja", "order.ninja",
                                        "shape.ninja", "type.ninja", "writer.lock"]
    assert (Array.parse(path).values() == np.concatenate([new, [[-1, -1]]])).all()


# -- 3. golden files -------------------------------------------------------------------------


def _golden() -> Dict[str, Tuple[str, int]]:
    listed = {}
    for line in _block(_section("Golden files"), "text", "numpy_c").splitlines():
        if line.strip():
            folder, kind, length = line.split()[:3]
            listed[folder] = (kind, int(length))
    return listed


def test_golden_files_are_the_fixtures_format_md_lists():
    expected = json.loads((FIXTURES / "expected.json").read_text())
    listed = _golden()
    assert sorted(listed) == sorted(expected)
    folders = {entry.name for entry in FIXTURES.iterdir() if entry.is_dir()}
    assert folders == set(listed) - {"strings_empty"}  # git keeps no empty folder
    for name, (kind, length) in listed.items():
        entry = expected[name]
        assert entry["type"] == kind
        count = entry["array"]["shape"][0] if kind == "numpy" else len(entry.get("samples", entry.get("strings")))
        assert count == length, name
    assert "tests/fixtures/mmap_ninja-0.9.0" in _section("Golden files")


def test_golden_files_are_described_and_open_here(tmp_path):
    grammar = Grammar.from_spec()
    listed = _golden()
    undescribed = grammar.undescribed(FIXTURES, _tree(FIXTURES), sorted(listed))
    assert undescribed == ["README.md", "expected.json"]  # the fixtures' own notes, not maps
    for name, (kind, length) in listed.items():
        path = tmp_path / name
        if (FIXTURES / name).exists():
            shutil.copytree(FIXTURES / name, path)
        else:
            path.mkdir()
        assert not {"checksums.ninja", "keys", "writer.lock"} & {name for _, dirs, files in os.walk(path)
                                                                 for name in dirs + files}
        m = generic.open_existing(path) if (path / "type.ninja").exists() else StringsMmap(path, mode="rb")
        assert len(m) == length, name
        if kind == "ragged":
            assert len(_ragged_samples(path)) == length
        elif kind == "string" and (path / "type.ninja").exists():
            assert _strings(path) == list(m)
        for folder in _array_folders(path):
            array = Array.parse(folder)
            assert (folder / "data.ninja").stat().st_size >= array.nbytes


def test_the_cache_of_maps_in_object_storage_holds_only_what_section_15_names(s3, tmp_path):
    """Every file and folder a cache holds after maps with keys were read from a URL, by several
    maps, is described by the CACHE layout of the index of names."""
    from mmap_ninja import remote

    ShardedMmap.from_generator(tmp_path / "local", [np.arange(k % 9) for k in range(300)], part_size=100,
                               keys=[f"k{k}" for k in range(300)])
    remote.push(tmp_path / "local", f"{s3}/a")
    remote.push(tmp_path / "local", f"{s3}/b")
    cache = tmp_path / "cache"
    for name in ("a", "b"):
        m = ShardedMmap(f"{s3}/{name}", cache_dir=cache, cache_limit=10**6)
        assert [len(x) for x in m[[0, 150, 299]]] == [0, 6, 2] and m.index_of("k7") == 7
        m.prefetch([250])
    grammar = Grammar.from_spec()
    entries = [(path, is_dir) for path, is_dir in _tree(cache)]
    assert len(entries) > 20
    undescribed = [path for path, is_dir in entries
                   if not grammar.describes("CACHE", Path(path).relative_to(cache).parts, is_dir, "(?!)", cache)]
    assert undescribed == []
