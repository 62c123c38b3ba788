"""Reading samples in batches, with a progress bar: what every build of every kind of map uses
(``progress``, ``in_batches``, ``build_in_batches``) and the checks of its counts."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator, List, Optional, TypeVar

import numpy as np

M = TypeVar("M")


def known_length(obj: Any) -> Optional[int]:
    """``len(obj)`` when ``obj`` has one, else ``None`` (generators, iterators)."""
    try:
        return len(obj)
    except TypeError:
        return None


class _HiddenBar:
    """What ``progress`` gives when nothing is shown: a bar that ignores its updates (a hidden
    tqdm bar would still start tqdm's monitor thread, and a process with other threads is not
    forked for parallel builds)."""

    total: Optional[int] = None

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_HiddenBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress(total: Optional[int], verbose: bool, desc: Optional[str] = None):
    """A tqdm progress bar, shown only when ``verbose``; update it with ``.update(k)``."""
    if not verbose:
        return _HiddenBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=" samples")


def check_positive(**values: Any) -> None:
    """Refuse a count (``batch_size=...``, ``part_size=...``) that is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def in_batches(samples: Iterable[Any], batch_size: int) -> Iterator[List[Any]]:
    """Lists of up to ``batch_size`` consecutive items of ``samples``."""
    check_positive(batch_size=batch_size)
    iterator = iter(samples)
    while True:
        batch = list(itertools.islice(iterator, int(batch_size)))
        if not batch:
            return
        yield batch


def build_in_batches(
    batches: Iterable[List[Any]],
    create: Callable[[List[Any]], M],
    extend: Callable[[M, List[Any]], None],
) -> M:
    """Create a map from the first batch (possibly empty) and extend it with each next one;
    every batch is committed before the next is read."""
    memmap = None
    for batch in batches:
        if memmap is None:
            memmap = create(batch)
        else:
            extend(memmap, batch)
    if memmap is None:
        memmap = create([])
    return memmap
