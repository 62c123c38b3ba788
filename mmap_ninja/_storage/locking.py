"""The writer lock, shared and private files, and replacements of a whole map by swapping folders.

One writer at a time: writes take an exclusive lock on ``writer.lock`` in the map directory (a
file that mmap_ninja 0.9.0 ignores); readers take none.

A file that another path shares (a hard link: another map, Megatron's ``.bin`` linked by
``megatron.to_ragged``, a link made by hand) is told from one the map shares only with a new
version of itself (``shared``), and given a file of its own, with the same bytes, before a
commit writes into it (``make_private``).

A write that changes what is already committed (a map built anew by ``from_*``, a Fortran-order
array rewritten, shapes converted, samples replaced) builds the new version of the whole map in
a sibling folder, sharing unchanged data files by hard links (``link_map``), and swaps it in with
one atomic exchange of the two folders (``Replacement``). Readers open a map with
``arrays.open_consistent``, which checks that the folder they read is still the map's folder
when they are done, so they see the old or the new version, never a mix. Folders left by writers
that died are dealt with by the next writer (``recover_abandoned_builds``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from .. import _meta
from .._mapping import exchange
from .._meta import CHECKSUMS
from . import files
from .files import _fd_inode, _file_size, _fsync_path, _inode, clone_file, copy_ranges

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

LOCK_FILE = "writer.lock"
PENDING = _meta.PENDING


def flush_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk (when durability is on): a map built aside
    by commits that were not flushed one by one, before ``Replacement`` swaps it in (which
    flushes its folders)."""
    if not files._durable:
        return
    files.wait_writeback()  # what the build's commits started flushing meanwhile
    for root, _, names in os.walk(folder):
        for name in names:
            _fsync_path(Path(root) / name)


# A folder in which a new version of the map NAME is built (see ``Replacement``).
_BUILD_FOLDER = re.compile(r"\.(.+)\.[0-9a-f]{12}\.building")


def _live_twin(path: Path) -> Optional[Path]:
    """The same file of the map itself when ``path`` lies in a folder where a new version of
    it is built (``link_map`` fills it with hard links to the map's files)."""
    parts = path.parts
    for k in range(len(parts) - 2, -1, -1):
        match = _BUILD_FOLDER.fullmatch(parts[k])
        if match:
            return Path(*parts[:k], match.group(1), *parts[k + 1:])
    return None


def shared(path: Path) -> bool:
    """Whether a path other than the map's own names the file ``path``: a hard link from
    another map, from Megatron's ``.bin`` (``megatron.to_ragged``) or made by hand. A new
    version being built shares the map's files by its own links, which do not count."""
    status = os.stat(path)
    if status.st_nlink <= 1:
        return False
    twin = _live_twin(path)
    own = 2 if twin is not None and _inode(twin) == (status.st_dev, status.st_ino) else 1
    return status.st_nlink > own


def make_private(path: Path, durable: bool) -> None:
    """Give ``path`` a file of its own with the same bytes: a copy (a copy-on-write clone
    where the file system makes one) written beside it as ``NAME.tmp``, flushed when
    ``durable``, then renamed over it. The file's other names keep the old file, untouched; a
    process killed meanwhile leaves ``path`` naming the old file or its whole copy."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # left by a copy cut short
    try:
        if not clone_file(path, tmp):
            copy_ranges(path, [(0, _file_size(path))], tmp, 0, truncate=True)
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_path(path.parent, directory=True)


def check_holds(path: Path, committed: int, size: Optional[int] = None) -> None:
    """``ValueError`` naming the data file ``path`` when it holds fewer than the ``committed``
    bytes of the map (``size``: its size, when known)."""
    size = _file_size(path) if size is None else size
    if size < committed:
        raise ValueError(f"{path}: holds {size} bytes, but the map has committed {committed}: the file was "
                         f"shortened, through another of its names (a hard link, such as the Megatron .bin that "
                         f"megatron.to_ragged links) or otherwise. Nothing was written; verify() reports the damage. "
                         f"Rebuild the map, with a data file of its own: megatron.to_ragged(prefix, out_dir, "
                         f"link=False) copies the .bin")


class WriterLock:
    """Exclusive lock of a map directory for one writer (``with WriterLock(out_dir): ...``),
    which fails at once with ``BlockingIOError`` when another process or object holds it.

    The lock is ``writer.lock`` in the map's folder. A ``Replacement`` swaps the folder for a
    new one whose ``writer.lock`` it has locked already, and hands that lock over to this one.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def __enter__(self) -> "WriterLock":
        missing = not self.out_dir.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise BlockingIOError(
                        errno.EWOULDBLOCK,
                        f"{self.path.parent} is being written by another writer (it holds {LOCK_FILE}); "
                        f"a map takes one writer at a time", str(self.path)) from None
            # the folder may have been swapped for a new version since the file was opened
            if _inode(self.path) == _fd_inode(fd):
                self._fd = fd
                if missing:  # a writer may have died between the renames of a swap
                    recover_abandoned_builds(self.out_dir)
                return self
            os.close(fd)

    def take_over(self, other: "WriterLock") -> None:
        """Hold ``other``'s lock in place of this one (after ``other``'s folder became this
        one's)."""
        self.__exit__()
        self._fd, other._fd = other._fd, None

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None


# The component folders each kind of map holds, by its ``type.ninja`` (filled in by the format
# layer's registry of kinds, ``_format.kinds``, and by ``_format.sharded``); everything else in a
# map's folder that is not one of its files (``_meta.MAP_FILES``, with their temporary
# ``.tmp``/``.new`` versions, and ``writer.lock``) is the user's, and moves along when the folder
# is replaced. ``UNWRITTEN``: what a folder whose map is not written yet may hold (the
# components of any plain kind).
COMPONENTS: Dict[str, Tuple[str, ...]] = {}
UNWRITTEN: Set[str] = set()


# The folder, within the build folder of a map, where worker processes write the parts that are
# concatenated into it (see ragged.RaggedMmap.from_indexable); never part of a finished map.
BUILD_PARTS = ".parts.building"


def _own_entries(folder: Path) -> frozenset:
    """The names of the entries of ``folder`` that belong to the map in it."""
    files = set(_meta.MAP_FILES) | {LOCK_FILE, BUILD_PARTS, _meta.KEYS}
    files |= {name + suffix for name in _meta.MAP_FILES for suffix in (".tmp", ".new")}
    try:
        kind = _meta.read_type(folder)
    except (OSError, ValueError):
        kind = None
    # a folder whose map is not written yet may hold the components of any kind
    components = COMPONENTS.get(kind, ()) if kind is not None else UNWRITTEN
    return frozenset(files | set(components))


def _user_entries(folder: Path) -> List[str]:
    own = _own_entries(folder)
    return [entry.name for entry in os.scandir(folder) if entry.name not in own]


def link_map(source: Path, target: Path) -> None:
    """Lay out at ``target`` the map at ``source``, sharing its files by hard links: nothing
    is copied but the checksum logs (appended in place). Commits only add bytes past what is
    committed, and replace metadata files by renaming, so the two versions never see each
    other's changes (these links are the map's own: see ``shared``)."""
    target.mkdir(exist_ok=True)
    own = _own_entries(source)
    for entry in os.scandir(source):
        name = entry.name
        if name not in own or name in (LOCK_FILE, PENDING, BUILD_PARTS) or name.endswith((".tmp", ".new")):
            continue
        if entry.is_dir(follow_symlinks=False):
            link_map(Path(entry.path), target / name)
        elif name == CHECKSUMS:
            shutil.copy2(entry.path, target / name)
        else:
            os.link(entry.path, target / name)


class Replacement:
    """A new version of the map at ``out_dir`` built in a sibling folder, swapped in whole.

    ``with Replacement(lock) as build: ...`` writes the new version into ``build`` (a new
    folder beside ``out_dir``, locked for writing); when the block ends without an error, the
    two folders are exchanged in one atomic step, the user's own files move from the old
    version into the new one, and the old version is removed. On any error ``build`` is
    removed and ``out_dir`` stays as it was. ``lock`` is the writer lock of ``out_dir``, which
    ends up holding the lock of the new folder. Folders left by writers that died are dealt
    with first (``recover_abandoned_builds``).
    """

    def __init__(self, lock: WriterLock):
        self.lock = lock
        self.out_dir = Path(os.path.realpath(lock.out_dir))  # a link to a map's folder stays a link
        self.build = self.out_dir.parent / f".{self.out_dir.name}.{uuid.uuid4().hex[:12]}.building"
        self._build_lock = WriterLock(self.build)

    def __enter__(self) -> Path:
        recover_abandoned_builds(self.out_dir)
        self.build.mkdir()
        with contextlib.suppress(OSError):  # the new version keeps the folder's permissions
            os.chmod(self.build, stat.S_IMODE(self.out_dir.stat().st_mode))
        self._build_lock.__enter__()
        return self.build

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._build_lock.__exit__()
            shutil.rmtree(self.build, ignore_errors=True)
            return
        try:
            if files._durable:
                for folder, _, _ in os.walk(self.build):
                    _fsync_path(Path(folder), directory=True)
            _swap(self.build, self.out_dir)
        except BaseException:
            self._build_lock.__exit__()
            shutil.rmtree(self.build, ignore_errors=True)
            raise
        self.lock.take_over(self._build_lock)
        _adopt_user_entries(self.build, self.out_dir)  # the old version is at the build path now
        if files._durable:
            _fsync_path(self.out_dir.parent, directory=True)


def _adopt_user_entries(old: Path, out_dir: Path) -> None:
    """Move the user's entries of the old version ``old`` into the map's folder ``out_dir``
    and remove ``old``; if one cannot be moved, ``old`` stays, renamed to end in
    ``.kept``, and a warning says where."""
    try:
        for name in _user_entries(old):
            if not os.path.lexists(out_dir / name):
                os.rename(old / name, out_dir / name)
    except OSError as exc:
        kept = old.with_name(old.name.replace(".building", ".kept"))
        os.rename(old, kept)
        import warnings

        warnings.warn(f"the map at {out_dir} was replaced, but files of yours could not be moved into it "
                      f"({exc}); they are in {kept}", stacklevel=3)
        return
    shutil.rmtree(old, ignore_errors=True)


def _swap(build: Path, out_dir: Path) -> None:
    """Put ``build`` at ``out_dir`` and the old ``out_dir`` at ``build``."""
    try:
        exchange(build, out_dir)
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.ENOTSUP):
            raise
        # no atomic exchange on this file system: three renames, between which readers wait
        # (see open_consistent) and after which a dead writer's work is finished by the next
        old = build.with_name(build.name + ".old")
        os.rename(out_dir, old)
        os.rename(build, out_dir)
        os.rename(old, build)


def _builds_of(out_dir: Path) -> List[Path]:
    """The build folders of ``out_dir`` (``.NAME.<12 hex>.building`` and the ``.old`` of a
    swap without atomic exchange)."""
    own = re.compile(re.escape(f".{out_dir.name}.") + r"[0-9a-f]{12}\.building(\.old)?")
    try:
        return [Path(entry.path) for entry in os.scandir(out_dir.parent) if own.fullmatch(entry.name)]
    except FileNotFoundError:
        return []


def recover_abandoned_builds(out_dir: Path) -> None:
    """Deal with the build folders of ``out_dir`` left by writers that died, under
    ``out_dir``'s writer lock (which every builder of ``out_dir`` holds, so none is alive): an
    old version from a swap without atomic exchange goes back in place if the map is missing;
    the user's files of an old version move into the map (they moved only after a swap); then
    the folders are removed."""
    for folder in _builds_of(out_dir):
        if folder.name.endswith(".old") and not (out_dir / _meta.TYPE).exists() \
                and (folder / _meta.TYPE).exists():
            # the map's folder was renamed away and the new version not yet put in its place:
            # the old version is the committed one, and comes back
            for entry in os.scandir(folder):
                if entry.name != LOCK_FILE:
                    os.rename(entry.path, out_dir / entry.name)
        _adopt_user_entries(folder, out_dir)
