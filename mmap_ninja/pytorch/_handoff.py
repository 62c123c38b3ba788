"""Batches handed from DataLoader worker processes to the main process through shared memory
that is used again, batch after batch (imported by ``mmap_ninja.pytorch``; Linux only).

A worker writes each batch into a *segment*: an anonymous shared file (``memfd``) it maps once
and keeps. The tensors it makes over a segment are ``LentTensor``s; pickled to the main
process they travel as a few numbers (the segment's key, the batch's place in it), plus the
segment's file descriptor the first time only. The main process maps each segment once and
rebuilds plain tensors over it. When the last of them is gone it clears the segment's *lent*
flag, and the worker writes a later batch there: no new pages are allocated, faulted in, copied
or unmapped per batch, and no descriptor crosses per batch.

A segment is written again only when both sides are done with it: the worker holds no array of
it and the main process has cleared its flag (set when the worker hands it over). A batch lost
on its way (a DataLoader shut down with batches queued) keeps its segment's flag set, so that
segment is never written again; the memory goes when the worker exits. The main process unmaps
the segments of workers that have exited when it maps a new one.
"""

from __future__ import annotations

import functools
import itertools
import math
import mmap
import multiprocessing.reduction
import os
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

HEADER = 64  # bytes at the start of a segment: the lent flag (int64), then free
ALIGN = 64

AVAILABLE = hasattr(os, "memfd_create")


class LentTensor(torch.Tensor):
    """A tensor over a worker's segment: pickled for another process as the segment's key and
    the tensor's place in it (its offset, sizes and strides as they are then, whatever was done
    to it in place), not its bytes; a tensor whose elements no longer all lie in the segment (its
    storage replaced by ``set_``, say) is copied as torch copies tensors. Operations on it give
    plain tensors."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __reduce_ex__(self, protocol):  # pickled other than between processes: a plain tensor
        return self.as_subclass(torch.Tensor).__reduce_ex__(protocol)


class Lease(np.ndarray):
    """Bytes lent to the arrays made over them (views of the lease): when the last of them is
    gone, ``release()`` runs (the memory goes back to whoever lent it)."""

    def __del__(self):
        release = getattr(self, "_release", None)
        if release is not None:
            release()


def lease(buffer: np.ndarray, release: Callable[[], None], **attributes: Any) -> Lease:
    """``buffer`` (1-d ``uint8``) as a ``Lease`` that calls ``release`` once no array made
    over it is left; ``attributes`` are set on it."""
    lent = buffer.view(Lease)
    lent._release = release
    lent.__dict__.update(attributes)
    return lent


def lengths_room(batch: Optional[int]) -> int:
    """Bytes kept before a batch for the ``int64`` lengths of its ``batch`` samples (none when
    ``batch`` is ``None``), a multiple of ``ALIGN`` so that what follows stays aligned."""
    return -(-batch * 8 // ALIGN) * ALIGN if batch is not None else 0


class _Segment:
    """One shared file of a worker, mapped once."""

    ids = itertools.count()

    def __init__(self, capacity: int, owner: "_WorkerSegments"):
        self.capacity = capacity
        self.id = next(self.ids)
        self.owner = owner
        self.fd = os.memfd_create(f"mmap_ninja-batch-{self.id}", getattr(os, "MFD_CLOEXEC", 0))
        os.ftruncate(self.fd, capacity)
        self.map = mmap.mmap(self.fd, capacity)
        self.bytes = np.frombuffer(self.map, np.uint8)
        self.address = self.bytes.ctypes.data
        self.flag = self.bytes[:8].view(np.int64)  # 1 while lent to the main process
        self.flag[0] = 0
        self.in_worker = False
        self.announced = False  # whether its descriptor was sent

    def free(self) -> bool:
        return not self.in_worker and self.flag[0] == 0

    def lease(self) -> Lease:
        """The segment's bytes, lent to the worker until no array over them is left."""
        self.in_worker = True
        return lease(self.bytes, self._back_in_worker, _segment=self)

    def _back_in_worker(self) -> None:
        self.in_worker = False

    def __reduce__(self):
        self.flag[0] = 1
        fd = None
        if not self.announced:
            fd = multiprocessing.reduction.DupFd(self.fd)
            self.announced = True
        return _main_segment, (self.owner.key, self.id, fd, self.capacity)


class _WorkerSegments:
    """The segments of this worker process."""

    def __init__(self):
        self.key = (os.getpid(), uuid.uuid4().hex)
        self.segments: List[_Segment] = []
        self.lock = threading.Lock()

    def lease(self, nbytes: int) -> Lease:
        """Bytes ``[0, HEADER + nbytes)`` of a free segment (a new one when none fits)."""
        with self.lock:
            fitting = [s for s in self.segments if s.capacity >= HEADER + nbytes and s.free()]
            if fitting:
                return min(fitting, key=lambda s: s.capacity).lease()
            capacity = -(-(HEADER + nbytes + nbytes // 4) // mmap.PAGESIZE) * mmap.PAGESIZE
            segment = _Segment(capacity, self)
            self.segments.append(segment)
            return segment.lease()


_worker: Optional[_WorkerSegments] = None
_worker_lock = threading.Lock()


def _segments() -> _WorkerSegments:
    global _worker
    with _worker_lock:
        if _worker is None or _worker.key[0] != os.getpid():  # a fork has its own
            _worker = _WorkerSegments()
        return _worker


@functools.lru_cache(maxsize=None)
def torch_dtype(dtype: np.dtype) -> Optional[torch.dtype]:
    """The torch dtype of a numpy dtype, or ``None`` when torch has none."""
    try:
        return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    except TypeError:
        return None


def _carve(lease: np.ndarray, offset: int, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = math.prod(shape) * dtype.itemsize
    return lease[offset:offset + nbytes].view(np.ndarray).view(dtype).reshape(shape)


class BatchMemory:
    """An ``alloc`` for DataLoader workers: each array it makes lies in a segment (with room
    before it for ``batch`` lengths, ``int64``, when ``batch`` is given), so that ``tensor``
    hands it to the main process by reference."""

    def __init__(self, batch: Optional[int] = None):
        self.batch = batch
        self.lengths: Optional[np.ndarray] = None

    def __call__(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        if torch_dtype(dtype) is None:
            return np.empty(shape, dtype)
        before = lengths_room(self.batch)
        lease = _segments().lease(before + math.prod(shape) * dtype.itemsize)
        if self.batch is not None:
            self.lengths = _carve(lease, HEADER, (self.batch,), np.dtype(np.int64))
        return _carve(lease, HEADER + before, shape, dtype)


def lent_tensor(array: np.ndarray) -> Optional[torch.Tensor]:
    """A ``LentTensor`` over ``array`` when it lies in a worker's segment (made by
    ``BatchMemory``), else ``None``."""
    lease = array.base
    while isinstance(lease, np.ndarray) and getattr(lease, "_segment", None) is None:
        lease = lease.base
    if getattr(lease, "_segment", None) is None or not array.flags.c_contiguous:
        return None
    tensor = torch.from_numpy(array)
    lent = torch.Tensor._make_subclass(LentTensor, tensor)
    lent._handoff = lease._segment
    return lent


@functools.lru_cache(maxsize=None)
def _numpy_dtype(dtype: torch.dtype) -> str:
    return torch.empty(0, dtype=dtype).numpy().dtype.str


def _place(tensor: torch.Tensor, segment: _Segment) -> Optional[int]:
    """The byte offset in ``segment`` of ``tensor``'s first element when every element it
    views lies in the segment (after its header), as it is now; else ``None``."""
    if tensor.requires_grad or tensor.device.type != "cpu" or tensor.layout != torch.strided:
        return None
    itemsize = tensor.element_size()
    start = tensor.data_ptr() - segment.address
    if any(n < 0 or s < 0 for n, s in zip(tensor.shape, tensor.stride())):
        return None
    span = 0 if tensor.numel() == 0 else (sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride())) + 1)
    if start % itemsize or not HEADER <= start <= start + span * itemsize <= segment.capacity:
        return None
    return start


def _reduce_lent(tensor: LentTensor):
    segment = tensor._handoff
    start = _place(tensor, segment)
    if start is None:  # no longer within the segment: copied, as torch hands over any tensor
        from torch.multiprocessing.reductions import reduce_tensor
        return reduce_tensor(tensor.as_subclass(torch.Tensor))
    dtype = _numpy_dtype(tensor.dtype)
    return _main_tensor, (segment, start, tuple(tensor.shape), dtype, tuple(tensor.stride()))


multiprocessing.reduction.ForkingPickler.register(LentTensor, _reduce_lent)


# -- the main process -------------------------------------------------------------------------


_mapped: Dict[Tuple[Tuple[int, str], int], np.ndarray] = {}
_mapped_lock = threading.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _main_segment(owner: Tuple[int, str], segment_id: int, fd, capacity: int) -> np.ndarray:
    """The bytes of a worker's segment, mapped once per process, lent to the tensors of one
    batch: when none is left, the segment's flag is cleared."""
    key = (tuple(owner), segment_id)
    with _mapped_lock:
        if fd is not None:
            descriptor = fd.detach()
            try:
                mapped = np.frombuffer(mmap.mmap(descriptor, capacity), np.uint8)
            finally:
                os.close(descriptor)
            owners = {k[0] for k in _mapped}
            for gone in [o for o in owners if o != key[0] and (o[0] == owner[0] or not _alive(o[0]))]:
                for k in [k for k in _mapped if k[0] == gone]:
                    del _mapped[k]  # unmapped once the last tensor over it is gone
            _mapped[key] = mapped
        mapped = _mapped.get(key)
    if mapped is None:
        raise RuntimeError(f"a batch arrived in segment {segment_id} of worker process {owner[0]}, "
                           f"which this process never received")
    flag = mapped[:8].view(np.int64)

    def release() -> None:  # the worker may write the segment again
        flag[0] = 0

    return lease(mapped, release)


def _c_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The strides (in elements) torch gives a contiguous tensor of ``shape``."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _main_tensor(lease: np.ndarray, offset: int, shape: Tuple[int, ...], dtype: str,
                 strides: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
    """The tensor of ``shape`` (and ``strides``, in elements; C order when ``None``) whose first
    element is at byte ``offset`` of ``lease``."""
    dtype = np.dtype(dtype)
    shape = tuple(shape)
    if strides is None or tuple(strides) == _c_strides(shape):
        return torch.from_numpy(_carve(lease, offset, shape, dtype))
    span = 0 if 0 in shape else sum((n - 1) * s for n, s in zip(shape, strides)) + 1
    flat = _carve(lease, offset, (span,), dtype)
    viewed = np.lib.stride_tricks.as_strided(flat, shape, tuple(s * dtype.itemsize for s in strides))
    return torch.from_numpy(viewed)
