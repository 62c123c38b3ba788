"""What ``verify`` reports, for every kind: ``Report``, the list of problems (with the notes and
the count of problems not listed), and the checks every kind's ``verify_dir`` shares (offsets
that overlap, the checksums of component arrays)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, List, Tuple

import numpy as np

from .. import _keys, _meta
from .._storage import ArrayDir, open_consistent

# Problems ``verify`` lists by default (the command line's ``--limit`` too); the rest are counted.
VERIFY_LIMIT = 20


class Report(list):
    """What ``verify`` found: a list of problems, one line each naming the file (empty when
    the map is sound), at most the ``limit`` asked for; ``omitted``: how many more problems
    were found and not listed; and ``notes``: what could not be checked, and why."""

    def __init__(self, problems: Iterable[str] = (), notes: Iterable[str] = (), omitted: int = 0):
        super().__init__(problems)
        self.notes = list(notes)
        self.omitted = omitted

    @classmethod
    def cut(cls, problems: List[str], notes: Iterable[str], limit: int, omitted: int = 0) -> "Report":
        """The first ``limit`` of ``problems``; those past it are added to ``omitted`` (problems
        found and not even listed in ``problems``)."""
        return cls(problems[:limit], notes, omitted + max(0, len(problems) - limit))


def check_limit(limit: int) -> int:
    """``limit`` of a ``verify`` call: at least one problem must be listable (``ValueError``),
    so that a damaged map never reports as sound."""
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1 (the problems listed), not {limit}")
    return int(limit)


# What a kind's check of a map directory finds: its problems (the first ``limit`` of each
# pass over the samples), notes, and how many unsound items it counted past those listed.
Found = Tuple[List[str], List[str], int]


def verify_map(out_dir: Path, check: Callable[[Path, int, bool], Found], limit: int, deep: bool) -> Report:
    """Run a kind's ``check(out_dir, limit, deep)`` and report what it found; damage that
    makes it raise is a problem too, never an exception."""
    limit = check_limit(limit)

    def check_with_keys() -> Found:
        problems, notes, omitted = check(out_dir, limit, deep)
        if not problems:
            found, noted = _keys.problems(out_dir, committed_length(out_dir), deep)
            problems, notes = problems + found, notes + noted
        return problems, notes, omitted

    try:  # read from one version, again if the map was swapped for a new one meanwhile
        problems, notes, omitted = open_consistent(out_dir, check_with_keys)
    except Exception as exc:  # whatever damage makes reading fail is reported, not raised
        problems, notes, omitted = [f"{out_dir}: {exc}" if str(out_dir) not in str(exc) else str(exc)], [], 0
    if any("no checksums recorded" in note for note in notes):
        notes = [note for note in notes if "no checksums recorded" not in note]
        notes.insert(0, f"{out_dir}: no checksums recorded for some or all of its files (written by mmap_ninja "
                        f"0.9.0, or by hand): damage to their bytes or metadata cannot be detected")
    return Report.cut(problems, notes, limit, omitted)


def committed_length(out_dir: Path) -> int:
    """The number of samples committed in the map at ``out_dir`` (a plain map, of any kind)."""
    if (out_dir / "starts" / _meta.TYPE).exists():  # ragged and strings maps: starts is committed last
        return ArrayDir.open(out_dir / "starts").rows
    if _meta.read_type(out_dir) == "numpy":
        shape = ArrayDir.open(out_dir).meta.shape
        return shape[0] if shape else 0
    return 0


# Items checked at a time by ``overlap_problems``, to bound its memory.
_ORDER_CHUNK = 1 << 20


def overlap_problems(starts: np.ndarray, ends: np.ndarray, source: Path, item: str) -> List[str]:
    """A problem when two non-empty items share stored units. Items stored in order (each
    from where the one before ends) cannot overlap: that is checked in chunks, in bounded
    memory. Only a map whose items are out of order (a replaced sample moves past the others)
    is sorted, which takes memory in proportion to its length."""
    in_order = True
    for begin in range(1, len(starts), _ORDER_CHUNK):
        stop = min(begin + _ORDER_CHUNK, len(starts))
        if np.any(starts[begin:stop] < ends[begin - 1:stop - 1]):
            in_order = False
            break
    if in_order:
        return []
    nonempty = np.flatnonzero(ends > starts)
    order = nonempty[np.argsort(starts[nonempty], kind="stable")]
    bad = np.flatnonzero(starts[order[1:]] < ends[order[:-1]])
    if not bad.size:
        return []
    first, second = int(order[bad[0]]), int(order[bad[0] + 1])
    return [f"{source}: {item}s {first} and {second} overlap: [{int(starts[first])}, {int(ends[first])}) and "
            f"[{int(starts[second])}, {int(ends[second])})"]


def checksum_problems(arrays: Iterable[ArrayDir], deep: bool) -> Tuple[List[str], List[str]]:
    """Problems and notes of the checksums of ``arrays``."""
    problems: List[str] = []
    notes: List[str] = []
    for array in arrays:
        found, noted = array.verify_checksums(deep)
        problems += found
        notes += noted
    return problems, notes
