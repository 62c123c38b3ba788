"""Reading samples out of an indexable object batch by batch, optionally in worker processes.

An indexable is anything with ``__getitem__`` (a list, a dataset, a dict keyed by ``0..n-1``) or
a function of one integer. Samples ``0, 1, 2, ...`` are read until ``len(indexable)`` when it has
one, and in any case until the first ``IndexError`` or ``KeyError``.

How the parallel reading works (``n_jobs`` other than ``None`` or 1)
--------------------------------------------------------------------
A ``concurrent.futures.ProcessPoolExecutor`` whose initializer gives each worker process the
indexable once, in a module global. The tasks are then only ranges of indices ("chunks"), and
their results the samples of a range, taken in order: a chunk that stops at an ``IndexError``/
``KeyError`` ends the reading, and the chunks after it (read ahead when the length is unknown)
are discarded. At most ``2 * workers`` chunks of at most ``batch_size`` samples are in flight:
a chunk is submitted only when the consumer takes one, so a slow writer holds the readers back
instead of letting samples pile up. Chunks hold one sample until the first comes back, then as
many as take about ``CHUNK_SECONDS`` of a worker's time at the time per sample measured so far,
which makes the cost of a task small next to its work without reading far ahead.

How the workers get the indexable depends on multiprocessing's start method, which is the
program's (``multiprocessing.set_start_method``), else the platform's default. With ``fork``
(Linux up to Python 3.13) the workers inherit it: nothing is pickled and they start in
milliseconds. With ``forkserver`` (Linux from Python 3.14) or ``spawn`` (macOS, Windows), it is
pickled once here with cloudpickle (which comes with joblib, the ``parallel`` extra, so that
local functions, lambdas and classes of a notebook work) and unpickled once by each worker;
the workers start as new interpreters, and, as with any multiprocessing code, a script must
then run its work under ``if __name__ == "__main__":``. A fork copies the locks of the threads
of this process in whatever state they are, so a process that runs other threads (a Dask or
Ray client, a DataLoader's pin-memory thread) is not forked: ``forkserver`` is used instead,
at the cost measured below, unless ``start_method`` says otherwise.

Why not ``joblib.Parallel``, which this module used: a joblib task carries its arguments, so
the dataset object went with every task (joblib caches the pickles of some functions, not of
arguments). Measured on the 2 cores of a shared machine with a dataset holding a million file
names (40 MB pickled, 0.3 to 0.5 s to pickle and 0.2 s to unpickle), 3000 samples of 0.7 ms of
CPU, medians of 5 runs: serially 2.0 s; one joblib task per sample (the old code) 324 s for
the first 600 samples alone, the dataset pickled 600 times; ``Parallel(return_as="generator")``
over chunks of 100 indices, the dataset going with each of the 30 chunks, 12.9 s; this module
1.24 s with ``fork``, 1.89 s with ``forkserver``. Besides, joblib's generator dispatches a new
task whenever one finishes, not when the consumer takes a result: 551 tasks of 10 ms ran while
a consumer held on to its first result for 3 s. With the executor, the exception of a sample
is raised here again with its type and message (the worker's traceback is its ``__cause__``;
an exception that cannot be pickled arrives as a ``RuntimeError`` with its text), and a worker
that dies raises ``BrokenProcessPool``.

When the reading ends, fails, or the consumer closes the generator early, the chunks not yet
started are cancelled, the workers still reading are terminated, and all are joined before the
generator returns. Unlike joblib's, the workers do not cap the thread pools of BLAS or torch: a
``__getitem__`` that uses them on several cores should limit them itself.

Writing in the workers (``indexable_parts``)
--------------------------------------------
Shipping the samples back costs the consumer a pickle per sample and a copy of all the data
through a pipe, which on a data-heavy dataset makes the one consuming process the bottleneck.
``indexable_parts`` runs the same machinery (same workers, order, stopping, errors, cleanup and
progress bar), but each worker hands the samples of its chunk to a ``write`` function of its
own, which stores them (``RaggedMmap.from_indexable`` writes them as a part, a complete map
under the map being built) and returns something small (the part's record) to the consumer
instead. The arguments of ``write`` are taken when the chunk is handed to a worker, so they may
depend on what the consumer did with the chunks before (the dtype that the first sample set).
Each chunk becomes a part, so chunks grow to about ``PART_SECONDS`` of a worker's time, which
keeps the cost of a part small next to its work; they still hold at most ``batch_size``
samples, and at most ``2 * workers`` are in flight, so the parts waiting on disk are bounded.
"""

from __future__ import annotations

import collections
import enum
import multiprocessing
import numbers
import pickle
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

from ._iteration import check_positive, known_length, progress

# A chunk grows until it takes about this many seconds of a worker's time.
CHUNK_SECONDS = 0.05
# The same for a chunk that a worker writes as a part (which costs a few milliseconds).
PART_SECONDS = 0.25
# Chunks in flight per worker: one being read, one waiting for it.
CHUNKS_PER_WORKER = 2


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
    *,
    chunk_size: Optional[int] = None,
    start_method: Optional[str] = None,
) -> Iterator[List[Any]]:
    """Lists of up to ``batch_size`` consecutive samples of ``indexable``, in order.

    ``n_jobs`` other than ``None`` or 1 reads the samples in that many worker processes
    (``-1``: one per core, ``-2``: all cores but one, ...; needs the ``parallel`` extra), which
    each receive ``indexable`` once and then read ranges of ``chunk_size`` indices (by default
    a size that adapts to the time per sample; at most ``batch_size``). ``start_method`` is
    multiprocessing's (``"fork"``, ``"forkserver"``, ``"spawn"``), by default its current one.
    ``verbose`` shows a progress bar, with a total when the length is known.
    """
    length, workers = _plan(indexable, batch_size, n_jobs, chunk_size)
    with progress(length, verbose) as bar:
        if workers <= 1:
            batches = _serial_batches(indexable, batch_size, length)
        else:
            context = _start_context(start_method)
            chunks = _parallel_chunks(indexable, length, workers, context,
                                      _ChunkSizes(min(chunk_size or batch_size, batch_size), chunk_size is None))
            batches = _regroup(chunks, batch_size)
        try:
            for batch in batches:
                bar.update(len(batch))
                yield batch
        finally:
            batches.close()


def worker_count(indexable: Any, batch_size: int, n_jobs: Optional[int] = None,
                 chunk_size: Optional[int] = None) -> int:
    """How many worker processes ``indexable_batches`` and ``indexable_parts`` start for these
    arguments (1: none, the samples are read here), after checking them."""
    return _plan(indexable, batch_size, n_jobs, chunk_size)[1]


def indexable_parts(
    indexable: Any,
    batch_size: int,
    n_jobs: int,
    write: Callable[..., Any],
    write_args: Callable[[], tuple],
    verbose: bool = False,
    *,
    chunk_size: Optional[int] = None,
    start_method: Optional[str] = None,
) -> Iterator[Tuple[int, Any]]:
    """``(first index, write(samples, first index, *write_args()))`` for consecutive chunks of
    up to ``batch_size`` samples of ``indexable``, in order, each computed in a worker process
    (``n_jobs`` as in ``indexable_batches``; it must give at least 2 workers: see
    ``worker_count``).

    ``write`` is a function the workers can import (a module-level one), which stores the
    samples it is given and returns something small; ``write_args()`` is called here when a
    chunk is handed to a worker. Chunks are as in ``indexable_batches`` (the same order,
    stopping, errors and cleanup), but grow to about ``PART_SECONDS`` of a worker's time; a
    chunk with no samples (past the end) is not written. ``verbose`` shows a progress bar.
    """
    length, workers = _plan(indexable, batch_size, n_jobs, chunk_size)
    if workers <= 1:
        raise ValueError(f"indexable_parts needs at least 2 worker processes; n_jobs={n_jobs!r} gives {workers}")
    context = _start_context(start_method)
    sizes = _ChunkSizes(min(chunk_size or batch_size, batch_size), chunk_size is None, PART_SECONDS)
    with progress(length, verbose) as bar:
        chunks = _parallel_chunks(indexable, length, workers, context, sizes, write, write_args)
        try:
            for start, result, count in chunks:
                bar.update(count)
                yield start, result
        finally:
            chunks.close()


def _plan(indexable: Any, batch_size: int, n_jobs: Optional[int], chunk_size: Optional[int]
          ) -> Tuple[Optional[int], int]:
    """The length of ``indexable`` (``None`` when unknown) and the number of workers to read it,
    after checking the arguments."""
    if not (hasattr(indexable, "__getitem__") or callable(indexable)):
        raise TypeError("indexable must implement __getitem__ or be a function of one integer, "
                        f"not {type(indexable).__name__}")
    check_positive(batch_size=batch_size)
    if chunk_size is not None:
        check_positive(chunk_size=chunk_size)
    length = known_length(indexable) if hasattr(indexable, "__getitem__") else None
    workers = _worker_count(n_jobs)
    if length is not None:
        workers = min(workers, length)
    return length, workers


def _worker_count(n_jobs: Optional[int]) -> int:
    """The number of processes ``n_jobs`` asks for (joblib's convention for negative values);
    imports what the workers need."""
    if n_jobs is None or n_jobs == 1:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs == 0:
        raise ValueError(f"n_jobs must be None, a positive integer or a negative one (-1: all cores), got {n_jobs!r}")
    n_jobs = int(n_jobs)
    try:
        from joblib import cpu_count
    except ImportError:
        raise ImportError("n_jobs needs joblib: pip install 'mmap_ninja[parallel]'") from None
    _cloudpickle()
    if n_jobs < 0:
        return max(1, cpu_count() + 1 + n_jobs)
    return n_jobs


def _cloudpickle():
    """cloudpickle: a dependency of joblib >= 1.5, bundled within earlier ones."""
    try:
        import cloudpickle
    except ImportError:
        try:
            from joblib.externals import cloudpickle
        except ImportError:
            raise ImportError("n_jobs needs joblib: pip install 'mmap_ninja[parallel]'") from None
    return cloudpickle


def _serial_batches(indexable: Any, batch_size: int, length: Optional[int]) -> Iterator[List[Any]]:
    start = 0
    while length is None or start < length:
        stop = start + batch_size if length is None else min(start + batch_size, length)
        batch = []
        for i in range(start, stop):
            found, sample = _fetch(indexable, i)
            if not found:
                break
            batch.append(sample)
        if batch:
            yield batch
        if len(batch) < stop - start:
            return
        start = stop


def _regroup(chunks: Iterator[Tuple[int, List[Any], int]], batch_size: int) -> Iterator[List[Any]]:
    """The samples of ``chunks`` (as ``_parallel_chunks`` gives them) again, in lists of
    ``batch_size`` (the last one shorter)."""
    try:
        batch: List[Any] = []
        for _, chunk, _ in chunks:
            batch.extend(chunk)
            while len(batch) >= batch_size:
                yield batch[:batch_size]
                batch = batch[batch_size:]
        if batch:
            yield batch
    finally:
        chunks.close()


# -- worker processes ---------------------------------------------------------------------------

_indexable: Any = None
_load_error: Optional[BaseException] = None


def _load_indexable(indexable: Any, pickled: bool) -> None:
    """Initializer of a worker: keep the indexable (unpickled once when it comes as bytes). A
    failure is kept and raised by each chunk, so that it reaches the consumer with its type and
    message (an initializer that raises would only break the pool)."""
    global _indexable, _load_error
    try:
        _indexable = pickle.loads(indexable) if pickled else indexable
    except BaseException as error:  # noqa: B036 (kept and raised again)
        _load_error = error


def _run_chunk(start: int, stop: int, write: Optional[Callable[..., Any]], args: tuple
               ) -> Tuple[Any, int, bool, float]:
    """``(result, count, ended, seconds)`` of samples ``start..stop-1``, or of the ``count``
    samples before the first IndexError/KeyError (then ``ended``): the samples themselves, or
    ``write(samples, start, *args)`` (nothing is written for no samples)."""
    began = time.perf_counter()
    samples: List[Any] = []
    ended = False
    try:
        if _load_error is not None:
            raise _load_error
        for i in range(start, stop):
            found, sample = _fetch(_indexable, i)
            if not found:
                ended = True
                break
            samples.append(sample)
        count = len(samples)
        result = write(samples, start, *args) if write is not None and samples else samples
    except Exception as error:
        if _unpicklable(error):  # it would break the pool on its way back: send its text
            raise RuntimeError(f"{type(error).__module__}.{type(error).__qualname__}: {error}") from error
        raise
    return result, count, ended, time.perf_counter() - began


def _unpicklable(error: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return True
    return False


# -- the consumer's side ------------------------------------------------------------------------

class _ChunkSizes:
    """Sizes of the next chunks: ``limit`` unless ``adapt``; else one sample until a chunk came
    back, then as many as take about ``target`` seconds (``CHUNK_SECONDS``) at the time per
    sample measured so far (by the workers), at most ``limit``."""

    def __init__(self, limit: int, adapt: bool, target: float = CHUNK_SECONDS):
        self.limit, self.adapt, self.target = limit, adapt, target
        self.samples, self.seconds = 0, 0.0

    def record(self, samples: int, seconds: float) -> None:
        self.samples += samples
        self.seconds += seconds

    def next(self) -> int:
        if not self.adapt:
            return self.limit
        if not self.samples:
            return 1
        if self.seconds <= 0:
            return self.limit
        return max(1, min(self.limit, int(self.target * self.samples / self.seconds)))


def _start_context(method: Optional[str]):
    """The multiprocessing context of ``method``; by default multiprocessing's current one,
    except that a process running other threads is not forked (its children would inherit
    those threads' locks in whatever state they are, and may hang or die): ``forkserver``
    then, where there is one."""
    if method is not None and method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"start_method must be one of {multiprocessing.get_all_start_methods()}, got {method!r}")
    context = multiprocessing.get_context(method)
    if method is None and context.get_start_method() == "fork" and threading.active_count() > 1 \
            and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return context


def _parallel_chunks(indexable: Any, length: Optional[int], workers: int, context, sizes: _ChunkSizes,
                     write: Optional[Callable[..., Any]] = None,
                     write_args: Optional[Callable[[], tuple]] = None) -> Iterator[Tuple[int, Any, int]]:
    """The samples of ``indexable``, read by ``workers`` processes of ``context`` in chunks, as
    ``(first index, samples or what write returned for them, count)`` per chunk in order,
    until ``length`` or the first IndexError/KeyError (see ``_run_chunk``)."""
    from concurrent.futures import ProcessPoolExecutor

    if context.get_start_method() == "fork":  # the workers inherit it
        initargs = (indexable, False)
    else:
        initargs = (_cloudpickle().dumps(indexable), True)
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_load_indexable, initargs=initargs)
    del initargs
    pending: collections.deque = collections.deque()
    start = 0
    try:
        while True:
            while len(pending) < CHUNKS_PER_WORKER * workers and (length is None or start < length):
                stop = start + sizes.next()
                if length is not None:
                    stop = min(stop, length)
                args = write_args() if write_args is not None else ()
                pending.append((start, executor.submit(_run_chunk, start, stop, write, args)))
                start = stop
            if not pending:
                return
            first, future = pending.popleft()
            result, count, ended, seconds = future.result()
            sizes.record(count + ended, seconds)
            if count:
                yield first, result, count
            if ended:
                return
    finally:
        _stop(executor, unfinished=any(not future.done() for _, future in pending))


def _stop(executor, unfinished: bool) -> None:
    """Shut ``executor`` down and join its processes; with ``unfinished`` chunks, cancel those
    not started and terminate the workers first (as ``terminate_workers`` of Python 3.14 does)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    if unfinished and processes:
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            try:
                if process.is_alive():
                    process.terminate()
            except (ValueError, ProcessLookupError):  # closed or gone already
                pass
        for process in processes:
            process.join()
    executor.shutdown(wait=True, cancel_futures=True)


# -- names of mmap_ninja 0.9.0, kept for code written against it -------------------------------

class _Exhausted(enum.Enum):
    exhausted = "EXHAUSTED"


# Kept from mmap_ninja 0.9.0: what ``ParallelBatchCollector.exhausted(results)`` looks for in
# ``results``, standing for an index past the end.
EXHAUSTED = _Exhausted.exhausted


class _FunctionIndexable:
    """``make_indexable(func)``: ``self[i]`` is ``func(i)``."""

    def __init__(self, func: Callable[[int], Any]):
        self._func = func

    def __getitem__(self, item: Any) -> Any:
        return self._func(item)

    @property
    def wrapped(self) -> Callable[[int], Any]:
        return self._func


class _SizedFunctionIndexable(_FunctionIndexable):
    """``make_indexable(func, length)``: ``self[i]`` is ``func(i)`` and ``len(self)`` is
    ``length``."""

    def __init__(self, func: Callable[[int], Any], length: int):
        super().__init__(func)
        self.length = length

    def __len__(self) -> int:
        return self.length


def make_indexable(func: Callable[[int], Any], length: Optional[int] = None) -> Any:
    """Kept from mmap_ninja 0.9.0: an object whose ``[i]`` is ``func(i)`` (``.wrapped`` is
    ``func``), of length ``length`` when given, to read with ``from_indexable``. The reading
    stops at ``length``, or else at the first ``IndexError``/``KeyError`` of ``func``."""
    if length is not None:
        return _SizedFunctionIndexable(func, length)
    return _FunctionIndexable(func)


class ParallelBatchCollector:
    """Kept from mmap_ninja 0.9.0: the batches of ``batch_size`` samples of ``indexable``
    (``batches()``, or one by one with ``collect_batch()``), as ``indexable_batches`` reads
    them, in ``n_jobs`` worker processes when ``n_jobs`` is not ``None`` or 1.

    ``kwargs`` were the options of the ``joblib.Parallel`` that read the samples; the reading
    is this module's, which takes ``chunk_size`` and ``start_method`` and leaves out the
    options of ``joblib.Parallel``. No empty batch is given, and the reading stops at
    ``len(indexable)`` even when indexing past it would not raise.
    """

    def __init__(self, indexable: Any, batch_size: int, n_jobs: Optional[int] = None, verbose: bool = False,
                 **kwargs: Any):
        self.indexable, self._obj_length, self._num_batches = self.verify(indexable, batch_size)
        self.batch_size = batch_size
        options = _reader_options(kwargs)
        self.begin(n_jobs)
        self._source = indexable_batches(self.indexable, batch_size, n_jobs, verbose, **options)
        self._batch_num = 0
        self._exhausted = False

    @staticmethod
    def verify(indexable: Any, batch_size: int) -> Tuple[Any, Optional[int], Optional[int]]:
        """``(indexable, its length, number of batches)``: a function becomes
        ``make_indexable(function)``; the lengths are ``None`` when ``indexable`` has none."""
        if not hasattr(indexable, "__getitem__"):
            if not callable(indexable):
                raise TypeError("indexable must implement __getitem__ or be callable and take one integer argument.")
            indexable = make_indexable(indexable)
        check_positive(batch_size=batch_size)
        length = known_length(indexable)
        num_batches = None if length is None else -(-length // batch_size)
        return indexable, length, num_batches

    @staticmethod
    def begin(n_jobs: Optional[int], **kwargs: Any) -> Optional[int]:
        """Check ``n_jobs``: ``None`` when the samples are read here, else the number of worker
        processes (``ImportError`` without joblib, as before)."""
        _reader_options(kwargs)
        workers = _worker_count(n_jobs)
        return None if workers == 1 else workers

    def batches(self) -> Iterator[List[Any]]:
        while not self.exhausted():
            batch = self.collect_batch()
            if batch:
                yield batch

    def collect_batch(self) -> List[Any]:
        """The next batch, ``[]`` past the end."""
        batch = next(self._source, [])
        self._batch_num += 1
        if len(batch) < self.batch_size:  # the reading has ended
            self.close()
            self._exhausted = True
        return batch

    def exhausted(self, results: Any = ()) -> bool:
        self._exhausted = (self._exhausted or any(r is EXHAUSTED for r in results)
                           or self.completed_batches())
        if self._exhausted:
            self.close()
        return self._exhausted

    def completed_batches(self) -> bool:
        return self._num_batches is not None and self._batch_num == self._num_batches

    def close(self) -> None:
        """Stop the worker processes, if any are still reading."""
        self._source.close()


def _reader_options(kwargs: dict) -> dict:
    """The options of ``indexable_batches`` among ``kwargs``, after checking that the others are
    options of ``joblib.Parallel``."""
    own = {name: kwargs[name] for name in ("chunk_size", "start_method") if name in kwargs}
    others = set(kwargs) - set(own)
    if others:
        try:
            import inspect

            from joblib import Parallel
            known = set(inspect.signature(Parallel).parameters)
        except ImportError:
            known = set()
        unknown = others - known
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    return own
