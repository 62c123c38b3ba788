"""PyTorch data loading (the ``torch`` extra; ``import mmap_ninja`` alone never imports torch).

Every map already works as a map-style dataset: it has ``len``, ``__getitem__`` and
``__getitems__``, which ``torch.utils.data.DataLoader`` calls to fetch a whole batch at once.
This module adds batches that reach the model without a copy after the one from the map:

- ``RaggedBatches(ragged, padded=True, pad_value=0, max_len=None, dtype=None)``: a dataset whose
  batches are one padded array (``RaggedMmap.padded``), or with ``padded=False`` one contiguous
  buffer (``RaggedMmap.take``); inside DataLoader worker processes these are written straight
  into shared memory, so handing them to the main process copies nothing more;
- ``collate(batch, attention_mask=False)``: tensors of such batches (``torch.from_numpy``, no
  copy) with the lengths, and an attention mask when asked;
- ``collate_packed(batch)``: a contiguous batch as the packed layout of variable-length
  attention (``input_ids``, ``cu_seqlens``, ``position_ids``, ``max_seqlen``), for training
  without padding;
- ``TokenizedCollate(tokenizer, pad_value=0, max_len=None)``: a collate for ``StringsMmap``
  batches, tokenizing each string with your function and padding the token ids;
- ``Loader``: the batches a ``DataLoader`` gives, made by threads instead of processes (the
  gathers from the map run without the GIL), with nothing pickled; ``lookahead=k`` also starts
  reading the samples of the ``k`` batches after those in flight from disk;
- ``LookaheadSampler(sampler, dataset, batches=k)``: the same for a ``DataLoader`` with worker
  processes: the main process, which draws the indices, starts reading them from disk ``k``
  batches ahead (the page cache is shared, so the workers find them in memory).

    loader = Loader(RaggedBatches(tokens, max_len=512, dtype=np.int64), batch_size=32,
                    shuffle=True, collate_fn=collate)
    for batch in loader:
        model(batch["input"], lengths=batch["lengths"])
"""

from __future__ import annotations

import collections
import collections.abc
import concurrent.futures
import functools
import math
import threading
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import _core
from .. import numpy as np_ninja
from .._extras import require
from ..ragged import RaggedBatch, RaggedMmap

require(__name__, "torch", {"torch": "torch"})

import torch  # noqa: E402  (checked above)
import torch.utils.data as torch_data  # noqa: E402

from . import _handoff  # noqa: E402  (imports torch)

__all__ = [
    "RaggedBatches",
    "PaddedBatch",
    "collate",
    "collate_packed",
    "TokenizedCollate",
    "Loader",
    "shared_array",
    "BufferPool",
    "DistributedSampler",
    "LookaheadSampler",
]

class PaddedBatch(tuple):
    """``(padded, lengths)``: a padded array ``(B, L, *row_shape)`` and the valid length of
    each row (``int64``), as ``RaggedMmap.padded`` returns them; ``shapes`` ``(B, ndim)``, the
    size of each sample along every axis, when samples were padded along later axes too."""

    shapes: Optional[np.ndarray] = None

    def __new__(cls, padded: np.ndarray, lengths: np.ndarray, shapes: Optional[np.ndarray] = None):
        batch = super().__new__(cls, (padded, lengths))
        if shapes is not None:
            batch.shapes = shapes
        return batch

    def __getnewargs__(self):
        return self[0], self[1], self.shapes


# -- shared memory --------------------------------------------------------------------------


def _shared_tensor(nbytes: int) -> torch.Tensor:
    """``nbytes`` of shared memory, as a ``uint8`` tensor that torch hands to other processes
    without copying."""
    storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,))


def _view(segment: torch.Tensor, offset: int, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array ``shape`` of ``dtype`` at byte ``offset`` of ``segment`` (a shared ``uint8``
    tensor), whose ``.base`` is a tensor of that dtype on the same shared storage."""
    tensor = torch.empty(0, dtype=_handoff.torch_dtype(dtype)).set_(
        segment.untyped_storage(), offset // dtype.itemsize, shape)
    return tensor.numpy()


def shared_array(shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array in shared memory (numpy's ``empty``): a tensor made
    from it by this module (``collate``) travels from a DataLoader worker to the main process
    without being copied. Dtypes torch has no tensor for get ordinary memory."""
    return _SharedBatch()(tuple(int(n) for n in shape), dtype)


class _SharedBatch:
    """An ``alloc`` of torch's shared memory, a new segment per array, with room before it for
    ``batch`` lengths (``int64``) when ``batch`` is given, so both reach the main process through
    one handle (where worker segments, ``_handoff``, are not available)."""

    def __init__(self, batch: Optional[int] = None):
        self.batch = batch
        self.lengths: Optional[np.ndarray] = None

    def __call__(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        if _handoff.torch_dtype(dtype) is None:
            return np.empty(shape, dtype)
        header = _handoff.lengths_room(self.batch)
        segment = _shared_tensor(header + math.prod(shape) * dtype.itemsize)
        if self.batch is not None:
            self.lengths = _view(segment, 0, (self.batch,), np.dtype(np.int64))
        return _view(segment, header, shape, dtype)


class BufferPool:
    """Memory for batches that is used again once every batch made in it is gone (no array or
    tensor views it any more), so that a loop of batches does not allocate and fault in fresh
    pages for each. ``pool(shape, dtype)`` is an ``alloc`` for ``RaggedMmap.take``/``padded``.
    Safe across threads; at most ``keep`` free buffers are kept."""

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._free: List[np.ndarray] = []
        self._lock = threading.Lock()

    def __call__(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        buffer = None
        with self._lock:
            fitting = [k for k, free in enumerate(self._free) if free.nbytes >= nbytes]
            if fitting:
                buffer = self._free.pop(min(fitting, key=lambda k: self._free[k].nbytes))
        if buffer is None:  # room to grow: batches of a little more fit the next time
            buffer = np.empty(max(nbytes + nbytes // 4, 4096), np.uint8)
        lease = _handoff.lease(buffer, functools.partial(self._give_back, buffer))
        return lease[:nbytes].view(np.ndarray).view(dtype).reshape(shape) if nbytes else np.empty(shape, dtype)

    def _give_back(self, buffer: np.ndarray) -> None:
        with self._lock:
            self._free.append(buffer)
            if len(self._free) > self.keep:  # drop the smallest
                del self._free[min(range(len(self._free)), key=lambda k: self._free[k].nbytes)]


def _in_worker() -> bool:
    return torch_data.get_worker_info() is not None


def _worker_memory(batch: Optional[int] = None) -> Union["_handoff.BatchMemory", _SharedBatch]:
    """An ``alloc`` for DataLoader workers: segments used again batch after batch where the
    system has them (Linux), else a new segment of torch's shared memory per array."""
    return _handoff.BatchMemory(batch) if _handoff.AVAILABLE else _SharedBatch(batch)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor sharing its memory: a ``LentTensor`` over a worker's segment, the
    shared tensor it is a view of (made by ``shared_array``), else ``torch.from_numpy``."""
    if _handoff.AVAILABLE:
        lent = _handoff.lent_tensor(array)
        if lent is not None:
            return lent
    base = array.base
    if (isinstance(base, torch.Tensor) and base.data_ptr() == array.ctypes.data
            and tuple(base.shape) == array.shape and base.is_contiguous()):
        return base
    return torch.from_numpy(array)


# -- datasets and collates ------------------------------------------------------------------


class RaggedBatches(torch_data.Dataset):
    """A ``RaggedMmap`` (or a ``ShardedMmap`` of ragged parts) as a dataset whose batches come
    out of the map in one copy.

    ``dataset[i]`` is sample ``i`` as a tensor; ``dataset.__getitems__(indices)`` (what the
    DataLoader calls) is a ``PaddedBatch`` (``padded=True``: rows padded with ``pad_value`` to
    the longest sample, or cut to ``max_len``) or a ``RaggedBatch`` (``padded=False``), of
    ``dtype`` (default: the map's; a padded batch is converted as it is copied, and only safe
    casts are allowed). In a DataLoader worker process the batch is written into shared memory;
    elsewhere into a ``BufferPool``, memory of batches already gone.
    Use ``collate`` or ``collate_packed`` as the DataLoader's ``collate_fn``.
    """

    def __init__(self, ragged: RaggedMmap, padded: bool = True, pad_value: Any = 0, max_len: Optional[int] = None,
                 dtype: Any = None):
        self.ragged = ragged
        self.padded = padded
        self.pad_value = pad_value
        self.max_len = max_len
        self.dtype = None if dtype is None else np.dtype(dtype)
        self._pool = BufferPool()
        if self.dtype is not None and ragged.dtype is not None and not np.can_cast(ragged.dtype, self.dtype, "safe"):
            raise TypeError(f"batches of {self.dtype} cannot hold samples of {ragged.dtype} exactly "
                            f"(only safe casts, as numpy.can_cast(..., 'safe') defines them)")
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer))
                                    or max_len < 0):
            raise ValueError(f"max_len must be a non-negative integer, not {max_len!r}")

    def __len__(self) -> int:
        return len(self.ragged)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.as_tensor(np.array(self.ragged[i], dtype=self.dtype))

    def __getitems__(self, indices: Sequence[int]) -> Union[PaddedBatch, RaggedBatch]:
        if self.padded:
            alloc = _worker_memory(len(indices)) if _in_worker() else self._pool
            padded, lengths, shapes = self.ragged.padded(indices, pad_value=self.pad_value, max_len=self.max_len,
                                                         dtype=self.dtype, alloc=alloc, every_axis=True)
            if alloc is not self._pool and alloc.lengths is not None:
                alloc.lengths[:] = lengths
                lengths = alloc.lengths
            return PaddedBatch(padded, lengths, shapes if _uneven(padded, shapes) else None)
        alloc = _worker_memory() if _in_worker() else self._pool
        batch = self.ragged.take(indices, alloc=alloc)
        if self.dtype is None or batch.values.dtype == self.dtype:
            return batch
        values = alloc(batch.values.shape, self.dtype)
        np.copyto(values, batch.values, casting="safe")
        return RaggedBatch(values, batch.offsets, batch.shape_values, batch.shape_offsets)

    def prefetch(self, indices: Sequence[int]) -> None:
        """Start reading the samples at ``indices`` from disk in the background (see
        ``RaggedMmap.prefetch``)."""
        self.ragged.prefetch(indices)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_pool"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool = BufferPool()

    def __repr__(self) -> str:
        return (f"RaggedBatches({self.ragged!r}, padded={self.padded}, pad_value={self.pad_value!r}, "
                f"max_len={self.max_len}, dtype={self.dtype})")


def collate(batch: Union[PaddedBatch, RaggedBatch, List[Any], Dict[str, Any]], attention_mask: bool = False, *,
            dtype: Any = None, packed: Sequence[str] = ()) -> Dict[str, Any]:
    """Tensors of a batch, sharing its memory:

    - a ``PaddedBatch``: ``input`` ``(B, L, ...)`` and ``lengths`` ``(B,)``, and with
      ``attention_mask=True`` an ``attention_mask`` ``(B, L)``, ``True`` where a row holds a
      sample's values (use ``functools.partial(collate, attention_mask=True)`` as a
      ``collate_fn``);
    - a ``RaggedBatch``: ``values`` (1-d), ``offsets`` ``(B + 1,)``, ``lengths`` ``(B,)`` and
      ``shapes`` (a list of tuples), sample ``k`` being ``values[offsets[k]:offsets[k + 1]]``;
    - a list of samples (what maps return without ``RaggedBatches``): padded first, with a
      copy, as one ``input`` ``(B, *longest)``: every axis padded to the batch's longest
      (images of different heights and widths, say), with ``lengths`` ``(B,)`` (the first
      axis) and, when samples differ in a later axis too, ``shapes`` ``(B, ndim)``;
    - a dict of batches, one per column (what a ``TableMmap`` gives): each column by itself,
      keyed by its name: an array of rows as one tensor; a list of ``str`` as it is; a list of
      arrays padded as above into ``name``, with ``name_lengths`` (and ``name_shapes`` when
      later axes differ), or, for the columns named in ``packed``, packed as
      ``collate_packed`` packs them (``name``, ``name_cu_seqlens``, ``name_position_ids``,
      ``name_max_seqlen``). ``dtype``: ``{column: dtype}`` (numpy's names), to which that
      column's values are converted (safe casts only).

    ``dtype`` for a batch that is not a dict: the dtype of its values.
    """
    if isinstance(batch, collections.abc.Mapping):
        return _collate_columns(batch, attention_mask, dtype or {}, packed)
    if isinstance(batch, list):
        batch = _pad(batch, dtype=dtype)
    if isinstance(batch, PaddedBatch):
        padded, lengths = batch
        lengths = _tensor(lengths)
        tensors = {"input": _tensor(_cast_batch(padded, dtype)), "lengths": lengths}
        if batch.shapes is not None:
            tensors["shapes"] = _tensor(batch.shapes)
        if attention_mask:
            width = padded.shape[1] if padded.ndim > 1 else 0
            mask = _tensor(_worker_memory()((len(lengths), width), np.bool_)) if _in_worker() else None
            tensors["attention_mask"] = torch.lt(torch.arange(width)[None, :], lengths[:, None], out=mask)
        return tensors
    if isinstance(batch, RaggedBatch):
        return {"values": _tensor(_cast_batch(batch.values, dtype)), "offsets": torch.from_numpy(batch.offsets.copy()),
                "lengths": torch.from_numpy(batch.lengths), "shapes": batch.shapes}
    raise TypeError(f"collate takes a PaddedBatch, a RaggedBatch, a list of samples or a dict of columns, not "
                    f"{type(batch).__name__}")


def _cast_batch(values: np.ndarray, dtype: Any) -> np.ndarray:
    """``values`` as ``dtype`` (``None``: as they are), refusing casts that are not safe."""
    if dtype is None or values.dtype == np.dtype(dtype):
        return values
    dtype = np.dtype(dtype)
    if not np.can_cast(values.dtype, dtype, "safe"):
        raise TypeError(f"a batch of {dtype} cannot hold values of {values.dtype} exactly (only safe casts, as "
                        f"numpy.can_cast(..., 'safe') defines them)")
    out = (_worker_memory() if _in_worker() else np.empty)(values.shape, dtype)
    np.copyto(out, values, casting="safe")
    return out


def _collate_columns(batch: Dict[str, Any], attention_mask: bool, dtypes: Dict[str, Any],
                     packed: Sequence[str]) -> Dict[str, Any]:
    """``collate`` of a dict of column batches (see there)."""
    unknown = sorted((set(dtypes) | set(packed)) - set(batch))
    if unknown:
        raise KeyError(f"collate: {unknown[0]!r} is not a column of the batch (its columns: {list(batch)})")
    tensors: Dict[str, Any] = {}
    for name, values in batch.items():
        dtype = dtypes.get(name)
        if isinstance(values, np.ndarray):
            tensors[name] = _tensor(_cast_batch(values, dtype))
        elif isinstance(values, list) and values and all(isinstance(value, str) for value in values):
            tensors[name] = values
        elif isinstance(values, list) and values and all(np.ndim(value) == 0 for value in values):
            tensors[name] = _tensor(_cast_batch(np.asarray(values), dtype))  # scalars (through a wrapper_fn)
        elif name in packed:
            layout = collate_packed(values)
            tensors[name] = layout["input_ids"] if dtype is None else \
                _tensor(_cast_batch(layout["input_ids"].numpy(), dtype))
            for key in ("cu_seqlens", "position_ids", "max_seqlen"):
                tensors[f"{name}_{key}"] = layout[key]
        else:
            column = collate(values if isinstance(values, (list, RaggedBatch)) else list(values),
                             attention_mask, dtype=dtype)
            if "values" in column:  # a RaggedBatch (TableMmap.take): padded as a list of its samples
                column = collate(values.arrays(), attention_mask, dtype=dtype)
            tensors[name] = column.pop("input")
            for key, tensor in column.items():
                tensors[f"{name}_{key}"] = tensor
    return tensors


def collate_packed(batch: Union[RaggedBatch, List[Any]]) -> Dict[str, Any]:
    """A batch packed for variable-length attention (FlashAttention's varlen kernels, HF's
    ``DataCollatorWithFlattening``), without padding:

    - ``input_ids``: every sample back to back, ``(rows, *row_shape)`` (1-d for token
      sequences), the ``RaggedBatch``'s buffer itself (no copy);
    - ``cu_seqlens``: ``int32`` ``(B + 1,)``, where each sample starts, then the total;
    - ``position_ids``: ``int64`` ``(rows,)``, each row's position in its sample;
    - ``max_seqlen``: the longest sample's length (``int``).

    Takes a ``RaggedBatch`` (``RaggedBatches(m, padded=False)``, ``RaggedMmap.take``) or a list
    of samples (copied into one buffer first). Samples need at least one axis and the same shape
    after it.
    """
    if isinstance(batch, list):
        batch = _concatenate(batch)
    if not isinstance(batch, RaggedBatch):
        raise TypeError(f"collate_packed takes a RaggedBatch or a list of samples, not {type(batch).__name__}")
    row_shape = _row_shape(batch)
    row_elems = math.prod(row_shape)
    if row_elems == 0:
        raise ValueError(f"samples with rows of shape {row_shape} hold no values to pack")
    alloc = _worker_memory() if _in_worker() else None
    cu_seqlens, position_ids, max_seqlen = _core.packed_layout(batch.offsets, row_elems, alloc)
    input_ids = _tensor(batch.values.reshape(len(position_ids), *row_shape))
    return {"input_ids": input_ids, "cu_seqlens": _tensor(cu_seqlens), "position_ids": _tensor(position_ids),
            "max_seqlen": max_seqlen}


def _row_shape(batch: RaggedBatch) -> Tuple[int, ...]:
    """The shape after the first axis shared by every sample of ``batch``."""
    shape_offsets = batch.shape_offsets
    if len(batch) == 0:
        return ()
    if shape_offsets[-1] == len(batch) and np.array_equal(np.diff(shape_offsets), np.ones(len(batch), np.int64)):
        return ()  # every sample 1-d
    shapes = batch.shapes
    for k, shape in enumerate(shapes):
        if not shape:
            raise ValueError(f"sample {k} of the batch is a scalar: packing needs samples with at least one axis")
        if shape[1:] != shapes[0][1:]:
            raise ValueError(f"sample {k} has shape {shape}, sample 0 has shape {shapes[0]}: packing needs "
                             f"samples that differ only in their first axis")
    return tuple(shapes[0][1:])


def _concatenate(samples: List[Any]) -> RaggedBatch:
    """Samples (arrays with a first axis, or sequences) copied back to back into a ``RaggedBatch``."""
    arrays = [np.asarray(sample) for sample in samples]
    if not arrays:
        return RaggedBatch(np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64), np.zeros(1, np.int64))
    dtype = np.result_type(*arrays)
    sizes = np.array([arr.size for arr in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    values = (_worker_memory() if _in_worker() else np.empty)((int(offsets[-1]),), dtype)
    for arr, start, size in zip(arrays, offsets[:-1], sizes):
        values[start:start + size] = arr.reshape(-1)
    ranks = np.array([arr.ndim for arr in arrays], dtype=np.int64)
    shape_values = np.array([n for arr in arrays for n in arr.shape], dtype=np.int64)
    return RaggedBatch(values, offsets, shape_values, np.concatenate([[0], np.cumsum(ranks)]))


def _pad(samples: List[Any], pad_value: Any = 0, max_len: Optional[int] = None, dtype: Any = None) -> PaddedBatch:
    """Samples (arrays with a first axis, or sequences of ids) padded into one array: along the
    first axis to the longest (or ``max_len``), and along every later axis in which they
    differ to the batch's largest, with ``shapes`` ``(B, ndim)`` then."""
    arrays = [np.asarray(sample) for sample in samples]
    if not arrays:
        return PaddedBatch(np.zeros((0, max_len or 0), dtype or np.int64), np.zeros(0, np.int64))
    if any(arr.ndim == 0 for arr in arrays):
        raise ValueError("a padded batch needs samples with at least one axis")
    ranks = {arr.ndim for arr in arrays}
    if len(ranks) > 1:
        raise ValueError(f"samples of {sorted(ranks)} axes cannot be padded into one array: a batch needs samples "
                         f"of one number of axes")
    common = np.result_type(*arrays) if any(arr.size for arr in arrays) else np.dtype(dtype or np.int64)
    if dtype is None:
        dtype = common
    elif not np.can_cast(common, dtype, "safe"):
        raise TypeError(f"a padded batch of {np.dtype(dtype)} cannot hold samples of {common} exactly (only safe "
                        f"casts)")
    arrays = [np.ascontiguousarray(arr, dtype=common) for arr in arrays]  # copies only samples that need it
    padded, lengths, shapes = _core.pad_arrays(arrays, pad_value, -1 if max_len is None else int(max_len), dtype,
                                               _worker_memory() if _in_worker() else None)
    return PaddedBatch(padded, lengths, shapes if _uneven(padded, shapes) else None)


def _uneven(padded: np.ndarray, shapes: np.ndarray) -> bool:
    """Whether samples padded into ``padded`` (their shapes ``shapes``) differ after the first axis."""
    return bool(shapes.shape[1] > 1 and (shapes[:, 1:] != np.asarray(padded.shape[2:], np.int64)).any())


class TokenizedCollate:
    """A ``collate_fn`` for batches of a ``StringsMmap``: ``tokenizer(text)`` gives the token
    ids of each string (any sequence of ints), which are padded with ``pad_value`` (and cut to
    ``max_len``) into ``input_ids`` ``(B, L)``, with ``lengths`` and ``attention_mask``.

    Define the tokenizer at module level (not a lambda) to use DataLoader workers started by
    spawn, which pickle it.
    """

    def __init__(self, tokenizer: Callable[[str], Sequence[int]], pad_value: int = 0, max_len: Optional[int] = None):
        self.tokenizer = tokenizer
        self.pad_value = pad_value
        self.max_len = max_len

    def __call__(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        ids = [np.asarray(self.tokenizer(text), dtype=np.int64).reshape(-1) for text in texts]
        batch = collate(_pad(ids, self.pad_value, self.max_len), attention_mask=True)
        return {"input_ids": batch["input"], "lengths": batch["lengths"], "attention_mask": batch["attention_mask"]}


# -- the threaded loader --------------------------------------------------------------------


# Batches LookaheadSampler reads ahead by default. Loader reads none ahead by default: its
# threads keep num_threads * prefetch batches in flight, each asking the kernel for all of its
# ranges at once, and reading further ahead made its cold epochs no faster (the cold epochs of
# benchmarks/bench_cold.py, benchmarks/COLD.md) while it costs a little on warm data.
LOOKAHEAD = 4


def prefetcher(dataset: Any) -> Optional[Callable[[Any], None]]:
    """How to start reading samples of ``dataset`` from disk: its ``prefetch(indices)``
    (every map, ``RaggedBatches``), ``numpy.prefetch`` for a numpy map, through the indices of
    a ``torch.utils.data.Subset``; ``None`` for a dataset that cannot say."""
    if isinstance(dataset, torch_data.Subset):
        inner = prefetcher(dataset.dataset)
        if inner is None:
            return None
        positions = np.asarray(dataset.indices, dtype=np.int64)
        return lambda indices: inner(positions[np.asarray(indices, dtype=np.int64)])
    if isinstance(dataset, np.ndarray):
        return functools.partial(np_ninja.prefetch, dataset)
    method = getattr(dataset, "prefetch", None)
    return method if callable(method) else None


def prefetch_span(dataset: Any) -> int:
    """How many samples ahead of its reads ``dataset`` wants to be asked for, at least: its
    ``prefetch_span`` (a map at a URL: a few parts' worth), through ``RaggedBatches`` and a
    ``Subset``; 0 for the rest."""
    while True:
        if isinstance(dataset, torch_data.Subset):
            dataset = dataset.dataset
        elif isinstance(dataset, RaggedBatches):
            dataset = dataset.ragged
        else:
            span = getattr(dataset, "prefetch_span", 0)
            return span if isinstance(span, int) and span > 0 else 0


def _looked_ahead_by_caller(sampler: Any) -> None:
    """``sampler`` (or the sampler of a batch sampler), when a ``DistributedSampler``, leaves
    asking ahead to the ``LookaheadSampler`` or ``Loader`` it is given to: asked twice, the
    parts downloaded ahead would be twice as many."""
    for candidate in (sampler, getattr(sampler, "sampler", None)):
        if isinstance(candidate, DistributedSampler):
            candidate.prefetch_ahead = False


def _looking_ahead(items: Iterator[Any], prefetch: Callable[[Any], None], ahead: int,
                   batch_size: int, span: int = 0) -> Iterator[Any]:
    """``items`` (batches of indices, or single indices gathered ``batch_size`` at a time),
    each yielded once the kernel was asked for the samples of the ``ahead`` batches after it,
    and of at least ``span`` samples after it. Asking is advisory: an index that cannot be read
    raises when its batch is read, not here."""
    window: collections.deque = collections.deque()
    group: List[int] = []
    size = max(ahead * batch_size, span + batch_size - 1 if span else 0)  # single indices: asked a batch at a time
    held = 0  # samples in the window

    def count(item: Any) -> int:
        return 1 if isinstance(item, (int, np.integer)) else len(item)

    def ask(indices: Any) -> None:
        try:
            prefetch(indices)
        except (IndexError, ValueError, TypeError):
            pass

    for item in items:
        window.append(item)
        held += count(item)
        if isinstance(item, (int, np.integer)):
            group.append(int(item))
            if len(group) >= batch_size:
                ask(group)
                group = []
            ready = len(window) > size
        else:
            ask(item)
            ready = len(window) > ahead and held - count(window[0]) >= span
        if ready:
            held -= count(window[0])
            yield window.popleft()
    if group:
        ask(group)
    while window:
        yield window.popleft()


class LookaheadSampler(torch_data.Sampler):
    """``sampler`` (a sampler or batch sampler: ``DistributedSampler``, ``BatchSampler``, any
    iterable of indices or of lists of them), whose indices are asked of the kernel ``batches``
    batches before they are yielded, so that reading them from disk overlaps the batches in
    between (``dataset``: what the indices are read from, with a ``prefetch(indices)``
    method: a map, ``RaggedBatches``, a numpy map, a ``Subset``). For a ``DataLoader`` with
    worker processes it runs in the main process, which draws the indices; the page cache is
    shared, so the workers find the samples in memory. ``batch_size``: how many single
    indices make a batch (for a sampler of single indices; default the DataLoader's 1). A
    dataset with a ``prefetch_span`` (a map at a URL: two parts' worth of samples, so that the
    next parts download while one is read) is asked at least that many samples ahead.
    ``set_epoch``, ``state_dict`` and ``load_state_dict`` go to ``sampler``.

        loader = DataLoader(dataset, batch_size=32, num_workers=4,
                            sampler=LookaheadSampler(DistributedSampler(dataset), dataset,
                                                     batches=4, batch_size=32))
    """

    def __init__(self, sampler: Iterable[Any], dataset: Any, batches: int = LOOKAHEAD,
                 batch_size: Optional[int] = None):
        for name, value, least in (("batches", batches, 0), ("batch_size", 1 if batch_size is None else batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, not {value!r}")
        self.sampler = sampler
        self.dataset = dataset
        self.batches = int(batches)
        if self.batches:
            _looked_ahead_by_caller(sampler)
        self.batch_size = 1 if batch_size is None else int(batch_size)

    def __iter__(self) -> Iterator[Any]:
        prefetch = prefetcher(self.dataset)
        if prefetch is None or not self.batches:
            return iter(self.sampler)
        return _looking_ahead(iter(self.sampler), prefetch, self.batches, self.batch_size, prefetch_span(self.dataset))

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    def state_dict(self) -> Dict[str, Any]:
        return self.sampler.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"LookaheadSampler({self.sampler!r}, batches={self.batches}, batch_size={self.batch_size})"


class Loader:
    """The batches ``torch.utils.data.DataLoader`` gives for the same arguments, made by
    ``num_threads`` threads of this process: no worker processes, nothing pickled, and the
    gathers from a map run in parallel without the GIL.

    ``batch_size``, ``shuffle``, ``sampler``, ``batch_sampler``, ``drop_last`` and
    ``collate_fn`` mean what they mean for a DataLoader (``batch_size=None``: no batching,
    each index fetched and converted alone); with ``shuffle=True`` and ``seed``, an epoch's
    order is the one of ``DataLoader(..., generator=torch.Generator().manual_seed(seed))``,
    each ``iter`` drawing the next. ``prefetch``: batches in flight per thread.
    ``lookahead``: how many batches past those in flight the kernel is asked to read from disk
    meanwhile (datasets with a ``prefetch(indices)`` method: every map, ``RaggedBatches``, a
    numpy map, a ``Subset`` of one; default ``0``: the batches in flight already ask for all of
    their ranges at once). A dataset with a ``prefetch_span`` (a map at a URL) is asked at least
    that many samples ahead, whatever ``lookahead`` says. ``num_threads=0`` makes every batch in the
    iterating thread. An error raised making a batch
    is raised where the loop iterates; leaving the loop early stops the threads.
    """

    def __init__(self, dataset: Any, batch_size: Optional[int] = 1, shuffle: Optional[bool] = False,
                 sampler: Union[torch_data.Sampler, Iterable, None] = None,
                 batch_sampler: Union[torch_data.Sampler, Iterable, None] = None, drop_last: bool = False,
                 collate_fn: Optional[Callable[[Any], Any]] = None, num_threads: int = 2, prefetch: int = 2,
                 pin_memory: bool = False, seed: Optional[int] = None, lookahead: int = 0):
        if isinstance(dataset, torch_data.IterableDataset):
            raise TypeError("Loader reads map-style datasets (len and indexing); iterate an IterableDataset directly")
        for name, value, least in (("num_threads", num_threads, 0), ("prefetch", prefetch, 1),
                                   ("lookahead", lookahead, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, not {value!r}")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, "
                                 "and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ValueError("batch_size=None option disables auto-batching and is mutually exclusive with drop_last")
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_threads = int(num_threads)
        self.prefetch = int(prefetch)
        self.lookahead = int(lookahead)
        self.seed = seed
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        if sampler is None:
            sampler = (torch_data.RandomSampler(dataset, generator=self.generator) if shuffle
                       else torch_data.SequentialSampler(dataset))
        self.sampler = sampler
        if batch_size is not None and batch_sampler is None:
            batch_sampler = torch_data.BatchSampler(sampler, batch_size, drop_last)
        self.batch_sampler = batch_sampler
        _looked_ahead_by_caller(batch_sampler if batch_sampler is not None else sampler)
        if collate_fn is None:
            collate_fn = (torch_data.default_collate if self.batch_sampler is not None
                          else torch_data.default_convert)
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory and _pin_memory_available()

    def __len__(self) -> int:
        return len(self.batch_sampler if self.batch_sampler is not None else self.sampler)

    def _make(self, index: Any) -> Any:
        """The batch of ``index`` (a list of indices, or one index without batching)."""
        if self.batch_sampler is None:
            batch = self.collate_fn(self.dataset[index])
        else:
            getitems = getattr(self.dataset, "__getitems__", None)
            samples = getitems(index) if getitems else [self.dataset[i] for i in index]
            batch = self.collate_fn(samples)
        if self.pin_memory:
            from torch.utils.data._utils.pin_memory import pin_memory
            batch = pin_memory(batch)
        return batch

    def __iter__(self) -> Iterator[Any]:
        # DataLoader draws its workers' base seed first, then the sampler its order
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        indices = iter(self.batch_sampler if self.batch_sampler is not None else self.sampler)
        prefetch = prefetcher(self.dataset)
        span = prefetch_span(self.dataset) if prefetch is not None else 0
        if prefetch is not None and (self.lookahead or span):
            ahead = self.lookahead + (self.num_threads * self.prefetch if self.num_threads else 0)
            indices = _looking_ahead(indices, prefetch, ahead, 1, span)
        if self.num_threads == 0:
            return (self._make(index) for index in indices)
        return self._threaded(indices)

    def _threaded(self, indices: Iterator[Any]) -> Iterator[Any]:
        pool = concurrent.futures.ThreadPoolExecutor(self.num_threads, thread_name_prefix="mmap_ninja-loader")
        pending: collections.deque = collections.deque()

        def next_batch():
            future, index = pending.popleft()
            # a batch no thread has started yet is made here rather than waited for
            return self._make(index) if future.cancel() else future.result()

        try:
            for index in indices:
                pending.append((pool.submit(self._make, index), index))
                if len(pending) >= self.num_threads * self.prefetch:
                    yield next_batch()
            while pending:
                yield next_batch()
        finally:
            for future, _ in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return (f"Loader({self.dataset!r}, batch_size={self.batch_size}, num_threads={self.num_threads}, "
                f"prefetch={self.prefetch}, lookahead={self.lookahead})")


def _pin_memory_available() -> bool:
    """Whether pinned memory can be had (an accelerator is present); warns as DataLoader does
    when not."""
    accelerator = getattr(torch, "accelerator", None)
    available = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    if not available:
        warnings.warn("pin_memory=True but no accelerator is found: batches are not pinned", stacklevel=3)
    return available


# -- distributed sampling ---------------------------------------------------------------------

BLOCK_WINDOW = 4  # with block_size, samples are shuffled within runs of this many blocks


class DistributedSampler(torch_data.Sampler):
    """``torch.utils.data.DistributedSampler`` (same arguments, same indices for the same seed
    and epoch, padding as torch pads), that resumes in the middle of an epoch, on any number of
    ranks.

    The order of an epoch is defined once for the whole dataset (from ``seed`` and the epoch);
    rank ``r`` of ``W`` takes its positions ``r, r + W, r + 2W, ...``. ``state_dict()`` records
    how far the epoch went (every rank having taken as many indices as this one), so
    ``load_state_dict`` on a run of another size goes on with the rest of the same order, each
    remaining sample read once (plus torch's padding, or less with ``drop_last``).

    An epoch's order is drawn over the dataset's length when its first ``iter`` begins (or the
    length a loaded state was drawn over): samples appended to a map meanwhile are read from the
    next epoch on, and a resumed epoch ends over the length it began with.

    ``block_size``: shuffle for locality: blocks of ``block_size`` consecutive samples (or, with
    ``"parts"`` and a sharded map, its parts) are permuted, then samples are shuffled within runs
    of ``block_window`` blocks' worth of positions (``BLOCK_WINDOW``, 4, by default), so a rank
    reads a bounded region of the files at a time; ``block_window=1`` keeps each batch within a
    part or two (for a map at a URL whose cache holds few parts). Over a dataset with a
    ``prefetch_span`` (a map at a URL), the sampler asks its ``prefetch`` for that many samples
    ahead of those it has given, so that the next parts download while these are read, unless
    it was given to a ``LookaheadSampler`` or ``Loader``, which ask instead
    (``prefetch_ahead``).
    """

    def __init__(self, dataset: Any, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 block_size: Union[int, str, None] = None, block_window: int = BLOCK_WINDOW):
        if num_replicas is None or rank is None:
            import torch.distributed as dist
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError("DistributedSampler needs num_replicas and rank, or an initialized process group")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, not {num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]")
        self.dataset = dataset
        self.block_size = block_size
        self._block_bounds(len(dataset))  # checks block_size
        if isinstance(block_window, bool) or not isinstance(block_window, (int, np.integer)) or block_window < 1:
            raise ValueError(f"block_window must be a positive integer, not {block_window!r}")
        self.block_window = int(block_window)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0  # positions of the epoch's order consumed before this run
        self.epoch_len: Optional[int] = None  # the length the epoch's order is drawn over, once drawn
        self._loaded = False  # epoch_len comes from a loaded state: kept for the rest of the epoch
        self._yielded = 0
        self.prefetch_ahead = True  # False once a LookaheadSampler or Loader asks ahead for it

    def _block_bounds(self, n: int) -> Optional[np.ndarray]:
        """Where the blocks of the first ``n`` samples start, then ``n``."""
        block_size = self.block_size
        if block_size is None:
            return None
        if isinstance(block_size, str) and block_size == "parts":
            bounds = getattr(self.dataset, "part_bounds", None)
            if bounds is None:
                raise ValueError("block_size='parts' needs a sharded map (mmap_ninja.sharded.ShardedMmap)")
            bounds = np.asarray(bounds, dtype=np.int64)
            return np.append(bounds[bounds < n], np.int64(n))  # parts appended since: not in the epoch
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer or 'parts', not {block_size!r}")
        return np.append(np.arange(0, n, int(block_size), dtype=np.int64), np.int64(n))

    def _length(self) -> int:
        """The length of the running epoch's order (the dataset's, until it is drawn)."""
        return len(self.dataset) if self.epoch_len is None else self.epoch_len

    def order(self, epoch: Optional[int] = None, length: Optional[int] = None) -> np.ndarray:
        """The order of an epoch over the first ``length`` samples (``int64``, every index
        once); by default the running epoch's length, or the dataset's for another epoch."""
        if length is None:
            length = self._length() if epoch is None or epoch == self.epoch else len(self.dataset)
        epoch = self.epoch if epoch is None else epoch
        n = int(length)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        bounds = self._block_bounds(n)
        if bounds is None:
            return torch.randperm(n, generator=generator).numpy()
        starts, lengths = bounds[:-1], np.diff(bounds)
        permuted = torch.randperm(len(lengths), generator=generator).numpy()
        lengths = lengths[permuted]
        firsts = np.cumsum(lengths) - lengths
        order = np.arange(n, dtype=np.int64) + np.repeat(starts[permuted] - firsts, lengths)
        window = self.block_window * max(1, -(-n // max(1, len(lengths))))
        _core.shuffle_windows(order, window, (self.seed * 1_000_003 + epoch) % 2**64)
        return order

    def _indices(self) -> np.ndarray:
        """This rank's indices for the rest of the epoch."""
        remaining = self.order()[self.start:]
        if self.drop_last:
            total = len(remaining) // self.num_replicas * self.num_replicas
            remaining = remaining[:total]
        else:
            total = -(-len(remaining) // self.num_replicas) * self.num_replicas
            if total > len(remaining) and len(remaining):
                remaining = np.resize(remaining, total)  # padded by repeating from the start, as torch pads
        return remaining[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        self._yielded = 0
        if not self._loaded:  # the epoch's order is drawn over the dataset as it is now
            self.epoch_len = len(self.dataset)
        indices: Iterator[int] = iter(self._indices().tolist())
        prefetch = prefetcher(self.dataset)
        span = prefetch_span(self.dataset) if prefetch is not None else 0
        if span and self.prefetch_ahead:  # a map at a URL: the next parts download while these are read
            indices = _looking_ahead(indices, prefetch, 0, min(span, 1024), span)
        for index in indices:
            self._yielded += 1
            yield index

    def __len__(self) -> int:
        remaining = max(0, self._length() - self.start)
        return remaining // self.num_replicas if self.drop_last else -(-remaining // self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (from its beginning, unless a loaded state is of that epoch)."""
        if epoch != self.epoch:
            self.start = 0
            self.epoch_len = None
            self._loaded = False
        self.epoch = epoch
        self._yielded = 0

    def state_dict(self) -> Dict[str, Any]:
        """How far the epoch went: ``consumed`` positions of its order, all ranks together, the
        order being drawn over ``epoch_len`` samples (``dataset_len``: the dataset's length now)."""
        length = self._length()
        consumed = min(self.start + self._yielded * self.num_replicas, length)
        return {"epoch": self.epoch, "consumed": consumed, "seed": self.seed, "shuffle": self.shuffle,
                "block_size": self.block_size, "block_window": self.block_window, "dataset_len": len(self.dataset),
                "epoch_len": length}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Go on from ``state`` (saved on any number of ranks): the next ``iter`` gives this
        rank's share of the rest of that epoch, over the length its order was drawn over (a
        state without ``epoch_len``: over ``dataset_len``)."""
        if not isinstance(state, collections.abc.Mapping):
            raise TypeError(f"a sampler state is a dict, not a {type(state).__name__}")
        for key in ("seed", "shuffle", "block_size", "block_window"):
            saved = state.get(key, BLOCK_WINDOW if key == "block_window" else None)  # states from before block_window
            if saved != getattr(self, key):
                raise ValueError(f"the state was saved with {key}={saved!r}, this sampler has "
                                 f"{getattr(self, key)!r}")
        n = len(self.dataset)
        dataset_len = _state_field(state, "dataset_len", 0, None)
        if dataset_len > n:
            raise ValueError(f"the state was saved over {dataset_len} samples (dataset_len), this dataset "
                             f"has {n}")
        epoch_len = _state_field(state, "epoch_len", 0, dataset_len, default=dataset_len)
        consumed = _state_field(state, "consumed", 0, epoch_len)
        epoch = _state_field(state, "epoch", 0, None)
        self.epoch = epoch
        self.start = consumed
        self.epoch_len = epoch_len
        self._loaded = True
        self._yielded = 0


def _state_field(state: Any, name: str, least: int, most: Optional[int], default: Any = None) -> int:
    """The integer ``state[name]``, checked to lie in ``[least, most]`` (``most=None``: no
    bound); ``default`` when it is absent, if given."""
    if name not in state:
        if default is not None:
            return default
        raise ValueError(f"the state has no {name}")
    value = state[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < least or (most is not None and value > most):
        bounds = f"[{least}, {most}]" if most is not None else f"at least {least}"
        raise ValueError(f"{name} must be an integer {'in ' if most is not None else 'of '}{bounds}, not {value!r}")
    return int(value)
