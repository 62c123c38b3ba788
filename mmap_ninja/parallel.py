"""Reading samples out of an indexable object batch by batch, optionally in parallel (joblib).

An indexable is anything with ``__getitem__`` (a list, a dataset, a dict keyed by ``0..n-1``) or
a function of one integer. Samples ``0, 1, 2, ...`` are read until ``len(indexable)`` when it has
one, and in any case until the first ``IndexError`` or ``KeyError``.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple

from .base import known_length, progress


def _fetch(indexable: Any, i: int) -> Tuple[bool, Any]:
    """``(True, sample i)``, or ``(False, None)`` past the end of ``indexable``."""
    try:
        if hasattr(indexable, "__getitem__"):
            return True, indexable[i]
        return True, indexable(i)
    except (IndexError, KeyError):
        return False, None


def indexable_batches(
    indexable: Any,
    batch_size: int,
    n_jobs: Optional[int] = None,
    verbose: bool = False,
) -> Iterator[List[Any]]:
    """Lists of up to ``batch_size`` consecutive samples of ``indexable``, in order.

    ``n_jobs`` other than ``None`` or 1 reads each batch with that many joblib workers (the
    ``parallel`` extra); ``verbose`` shows a progress bar, with a total when the length is
    known.
    """
    if not (hasattr(indexable, "__getitem__") or callable(indexable)):
        raise TypeError("indexable must implement __getitem__ or be a function of one integer, "
                        f"not {type(indexable).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    length = known_length(indexable) if hasattr(indexable, "__getitem__") else None
    parallel = None
    if n_jobs not in (None, 1):
        try:
            from joblib import Parallel, delayed
        except ImportError:
            raise ImportError("n_jobs needs joblib: pip install 'mmap_ninja[parallel]'") from None
        parallel = Parallel(n_jobs=n_jobs)
        fetch = delayed(_fetch)
    with progress(length, verbose) as bar:
        start = 0
        while length is None or start < length:
            stop = start + batch_size if length is None else min(start + batch_size, length)
            if parallel is None:
                results = []
                for i in range(start, stop):
                    results.append(_fetch(indexable, i))
                    if not results[-1][0]:
                        break
            else:
                results = parallel(fetch(indexable, i) for i in range(start, stop))
            batch = []
            for found, sample in results:
                if not found:
                    break
                batch.append(sample)
            if batch:
                bar.update(len(batch))
                yield batch
            if len(batch) < stop - start:
                return
            start = stop
