# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled kernels that build ragged maps.

- ``pack`` checks a batch of samples in one pass over the list and lays them out for writing
  (``PackedSamples``): each sample's number of elements and shape, and where its bytes are.
  Numpy arrays of the map's dtype (C-contiguous) are not copied; lists and tuples of Python
  numbers are converted into one buffer as they are read; any other sample is converted by the
  function given (the general path, which also names the samples that cannot be stored).
- ``PackedSamples.write_to`` streams the bytes of all samples, back to back, into a data file
  through a few reused buffers (a large sample is written straight from its own buffer), and
  computes their CRC-32 on the way, on a thread of its own for large writes.

Nothing is written until every sample of a batch is checked, so a sample that cannot be stored
leaves the map as it was.
"""

from cpython.bool cimport PyBool_Check
from cpython.buffer cimport PyBUF_READ
from cpython.exc cimport PyErr_SetFromErrno
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_CheckExact, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_Fast_GET_SIZE, PySequence_Fast_ITEMS
from cpython.tuple cimport PyTuple_CheckExact
from libc.errno cimport EINTR, errno
from libc.math cimport isinf
from libc.stdint cimport (INT8_MAX, INT8_MIN, INT16_MAX, INT16_MIN, INT32_MAX, INT32_MIN, int8_t, int16_t,
                          int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t)
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy
from posix.unistd cimport pwrite

cimport numpy as cnp
import queue
import threading
import zlib

import numpy as np

cnp.import_array()

cdef enum:
    # Largest number of axes a stored sample may have (as ragged._MAX_NDIM).
    MAX_SAMPLE_NDIM = 32
    # Bytes of each buffer through which samples are written, and how many such buffers
    # take turns (one is filled while the CRC-32 of the others is computed).
    STAGE_BYTES = 1 << 20
    STAGES = 3
    # From this many bytes on, the CRC-32 is computed on a thread of its own.
    THREADED_CRC_BYTES = 1 << 20
    # Samples of at least this many bytes are written from their own buffer, not copied.
    DIRECT_BYTES = 1 << 18
    # Samples packed between two updates of the progress bar.
    BAR_STEP = 1 << 14
    # pwrite writes at most this many bytes per call on Linux.
    WRITE_CHUNK = 1 << 30

cdef enum:
    # The element types that lists and tuples of Python numbers are converted into.
    T_NONE = 0
    T_BOOL
    T_I8
    T_I16
    T_I32
    T_I64
    T_U8
    T_U16
    T_U32
    T_U64
    T_F32
    T_F64

# Integers up to these magnitudes convert to float32 / float64 exactly.
cdef int64_t F32_EXACT = 1 << 24
cdef int64_t F64_EXACT = 1LL << 53


cdef int _target_of(object descr):
    """The element type into which Python numbers are converted for ``descr``, or ``T_NONE``
    where they always take the general path."""
    cdef str kind = descr.kind
    cdef Py_ssize_t size = descr.itemsize
    if not descr.isnative or descr.hasobject:
        return T_NONE
    if kind == "b" and size == 1:
        return T_BOOL
    if kind == "i":
        return {1: T_I8, 2: T_I16, 4: T_I32, 8: T_I64}.get(size, T_NONE)
    if kind == "u":
        return {1: T_U8, 2: T_U16, 4: T_U32, 8: T_U64}.get(size, T_NONE)
    if kind == "f":
        return {4: T_F32, 8: T_F64}.get(size, T_NONE)
    return T_NONE


cdef inline bint _store_int(int64_t v, int target, char* dst) noexcept:
    """Store the integer ``v`` as ``target`` at ``dst``; false when it does not fit exactly."""
    if target == T_I64:
        (<int64_t*>dst)[0] = v
    elif target == T_I32:
        if v < INT32_MIN or v > INT32_MAX:
            return False
        (<int32_t*>dst)[0] = <int32_t>v
    elif target == T_I16:
        if v < INT16_MIN or v > INT16_MAX:
            return False
        (<int16_t*>dst)[0] = <int16_t>v
    elif target == T_I8:
        if v < INT8_MIN or v > INT8_MAX:
            return False
        (<int8_t*>dst)[0] = <int8_t>v
    elif target == T_U64:
        if v < 0:
            return False
        (<uint64_t*>dst)[0] = <uint64_t>v
    elif target == T_U32:
        if v < 0 or v > 0xFFFFFFFF:
            return False
        (<uint32_t*>dst)[0] = <uint32_t>v
    elif target == T_U16:
        if v < 0 or v > 0xFFFF:
            return False
        (<uint16_t*>dst)[0] = <uint16_t>v
    elif target == T_U8:
        if v < 0 or v > 0xFF:
            return False
        (<uint8_t*>dst)[0] = <uint8_t>v
    elif target == T_BOOL:
        if v != 0 and v != 1:
            return False
        (<uint8_t*>dst)[0] = <uint8_t>v
    elif target == T_F64:
        if v < -F64_EXACT or v > F64_EXACT:
            return False
        (<double*>dst)[0] = <double>v
    elif target == T_F32:
        if v < -F32_EXACT or v > F32_EXACT:
            return False
        (<float*>dst)[0] = <float>v
    else:
        return False
    return True


cdef bint _convert_numbers(PyObject** items, Py_ssize_t length, int target, char* dst, Py_ssize_t itemsize):
    """Convert ``length`` Python numbers at ``items`` into ``target`` elements at ``dst``, as
    ``np.asarray`` and the general path would store them; false, with ``dst`` in any state,
    for values whose conversion is not exact (the general path decides about those)."""
    cdef Py_ssize_t k
    cdef PyObject* item
    cdef int overflow
    cdef long long v
    cdef double d
    cdef float f
    for k in range(length):
        item = items[k]
        if PyLong_CheckExact(<object>item):
            v = PyLong_AsLongLongAndOverflow(<object>item, &overflow)
            if overflow or not _store_int(v, target, dst):
                return False
        elif PyBool_Check(<object>item):
            _store_int(1 if <object>item is True else 0, target, dst)
        elif PyFloat_CheckExact(<object>item) and (target == T_F64 or target == T_F32):
            d = PyFloat_AS_DOUBLE(<object>item)
            if target == T_F64:
                (<double*>dst)[0] = d
            else:
                f = <float>d
                if isinf(f) and not isinf(d):
                    return False  # overflows float32: the general path refuses it
                (<float*>dst)[0] = f
        else:
            return False
        dst += itemsize
    return True


cdef inline bint _as_is(object sample, cnp.dtype descr):
    """Whether ``sample`` is stored from its own buffer: a C-contiguous numpy array of
    ``descr`` of at most ``MAX_SAMPLE_NDIM`` axes."""
    if not cnp.PyArray_Check(sample):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>sample
    return (cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_NDIM(arr) <= MAX_SAMPLE_NDIM
            and (<object>cnp.PyArray_DESCR(arr) is descr
                 or cnp.PyArray_EquivTypes(<cnp.dtype>cnp.PyArray_DESCR(arr), descr)))


cdef class PackedSamples:
    """A batch of samples checked for a ragged map of ``dtype`` and laid out for writing.

    ``counts``: elements of each sample (``int64``); ``ndims`` and ``dims``: the number of axes
    of each sample and all their sizes back to back (``int64``); ``flat``: whether every sample
    is 1-d or a scalar, and then ``lengths``, the length of each (0 for a scalar); ``size`` and
    ``nbytes``: elements and bytes of all samples."""

    cdef readonly object dtype
    cdef readonly cnp.ndarray counts
    cdef readonly cnp.ndarray ndims
    cdef readonly cnp.ndarray dims
    cdef readonly bint flat
    cdef readonly int64_t size
    cdef readonly int64_t nbytes
    cdef Py_ssize_t n
    cdef Py_ssize_t itemsize
    cdef char** ptrs
    cdef list owners          # the samples, and arrays converted from them
    cdef char* side           # values converted from lists and tuples
    cdef Py_ssize_t side_used, side_capacity

    def __cinit__(self):
        self.ptrs = NULL
        self.side = NULL

    def __init__(self, *args, **kwargs):
        raise TypeError("PackedSamples are made by pack()")

    def __dealloc__(self):
        free(self.ptrs)
        free(self.side)

    def __len__(self):
        return self.n

    @property
    def lengths(self):
        """The length of each sample, 0 for a scalar (of a flat batch)."""
        if not self.flat:
            raise ValueError("the samples are not all 1-d or scalars")
        cdef cnp.ndarray out = np.zeros(self.n, dtype=np.int64)
        cdef int64_t* dst = <int64_t*>cnp.PyArray_DATA(out)
        cdef const int64_t* nd = <const int64_t*>cnp.PyArray_DATA(self.ndims)
        cdef const int64_t* dims = <const int64_t*>cnp.PyArray_DATA(self.dims)
        cdef Py_ssize_t i, at = 0
        for i in range(self.n):
            if nd[i]:
                dst[i] = dims[at]
                at += 1
        return out

    def values(self):
        """All the samples' values back to back, as a new 1-d array."""
        cdef cnp.ndarray out = np.empty(self.size, dtype=self.dtype)
        cdef char* dst = <char*>cnp.PyArray_DATA(out)
        cdef Py_ssize_t i, nbytes
        cdef const int64_t* counts = <const int64_t*>cnp.PyArray_DATA(self.counts)
        with nogil:
            for i in range(self.n):
                nbytes = counts[i] * self.itemsize
                if nbytes:
                    memcpy(dst, self.ptrs[i], nbytes)
                    dst += nbytes
        return out

    cdef int _grow_side(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t capacity = self.side_capacity
        cdef char* grown
        if self.side_used + extra <= capacity:
            return 0
        capacity = max(capacity * 2, self.side_used + extra, 4096)
        grown = <char*>realloc(self.side, capacity)
        if grown == NULL:
            raise MemoryError()
        self.side, self.side_capacity = grown, capacity
        return 0

    def write_to(self, int fd, int64_t offset, bint checksum=True):
        """Write the values of all samples, back to back, into the file ``fd`` from byte
        ``offset``, and return their CRC-32 (``None`` without ``checksum``). Small samples are
        gathered into buffers written ``STAGE_BYTES`` at a time; large ones are written from
        their own buffers. From ``THREADED_CRC_BYTES`` on, the CRC-32 is computed on a thread
        of its own while the bytes are written, so that the write costs the slower of the two.
        ``OSError`` when a write fails."""
        cdef char* stages[STAGES]
        cdef int64_t last_chunk[STAGES]
        cdef Py_ssize_t i = 0, fill = 0, nbytes, k
        cdef int b = 0
        cdef int64_t chunk = 0
        cdef const int64_t* counts = <const int64_t*>cnp.PyArray_DATA(self.counts)
        cdef object crc = 0 if checksum else None
        cdef object stream = None
        cdef object view
        cdef int64_t position = offset
        if self.nbytes == 0:
            return crc
        for k in range(STAGES):
            stages[k] = NULL
            last_chunk[k] = -1
        try:
            for k in range(STAGES):
                stages[k] = <char*>malloc(STAGE_BYTES)
                if stages[k] == NULL:
                    raise MemoryError()
            if checksum and self.nbytes >= THREADED_CRC_BYTES:
                stream = _CrcStream()
            while i < self.n or fill:
                with nogil:
                    while i < self.n:
                        nbytes = counts[i] * self.itemsize
                        if nbytes >= DIRECT_BYTES or fill + nbytes > STAGE_BYTES:
                            break
                        if nbytes:
                            memcpy(stages[b] + fill, self.ptrs[i], nbytes)
                            fill += nbytes
                        i += 1
                if fill:
                    view = PyMemoryView_FromMemory(stages[b], fill, PyBUF_READ)
                    if stream is not None:
                        stream.add(view)
                        last_chunk[b] = chunk
                        chunk += 1
                    elif checksum:
                        crc = zlib.crc32(view, crc)
                    _write_all(fd, stages[b], fill, position)
                    position += fill
                    fill = 0
                    b = (b + 1) % STAGES
                    if stream is not None:
                        stream.wait(last_chunk[b] + 1)  # its CRC-32 is done: the buffer may be filled
                if i < self.n and counts[i] * self.itemsize >= DIRECT_BYTES:
                    nbytes = counts[i] * self.itemsize
                    view = PyMemoryView_FromMemory(self.ptrs[i], nbytes, PyBUF_READ)
                    if stream is not None:
                        stream.add(view)
                        chunk += 1
                    elif checksum:
                        crc = zlib.crc32(view, crc)
                    _write_all(fd, self.ptrs[i], nbytes, position)
                    position += nbytes
                    i += 1
            if stream is not None:
                crc = stream.close()
                stream = None
        finally:
            if stream is not None:
                stream.close()  # the thread lets go of the buffers before they are freed
            for k in range(STAGES):
                free(stages[k])
        return crc


class _CrcStream:
    """The CRC-32 of buffers given in order (``add``), computed on a thread of its own while
    the caller writes them (zlib releases the GIL): ``wait(k)`` returns once the first ``k``
    are done, ``close()`` once all are, with the CRC-32 of them all."""

    def __init__(self):
        self._pending = queue.SimpleQueue()
        self._finished = queue.SimpleQueue()
        self._done = 0
        self._crc = 0
        self._error = None
        self._thread = threading.Thread(target=self._run, name="mmap_ninja-crc32", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            buffer = self._pending.get()
            if buffer is None:
                return
            if self._error is None:
                try:
                    self._crc = zlib.crc32(buffer, self._crc)
                except BaseException as exc:  # raised by close(); wait() must not block meanwhile
                    self._error = exc
            self._finished.put(None)

    def add(self, buffer):
        self._pending.put(buffer)

    def wait(self, count):
        while self._done < count:
            self._finished.get()
            self._done += 1

    def close(self):
        self._pending.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._crc


cdef int _write_all(int fd, const char* data, Py_ssize_t nbytes, int64_t position) except -1:
    """``nbytes`` at ``data`` written into ``fd`` at byte ``position`` (``OSError`` on failure)."""
    cdef Py_ssize_t done = 0, step
    cdef ssize_t written
    while done < nbytes:
        step = min(nbytes - done, <Py_ssize_t>WRITE_CHUNK)
        with nogil:
            written = pwrite(fd, data + done, step, position + done)
        if written < 0:
            if errno == EINTR:
                continue
            PyErr_SetFromErrno(OSError)
            return -1
        if written == 0:
            raise OSError("a write into the data file wrote nothing")
        done += written
    return 0


def pack(list samples not None, dtype, Py_ssize_t first_index=0, convert=None, bar=None):
    """``samples`` checked for a ragged map of ``dtype`` (a native dtype) and laid out for
    writing, as ``PackedSamples``.

    A numpy array of ``dtype``, C-contiguous, of at most 32 axes, is taken as it is (its buffer
    is written later: it must not change meanwhile); a list or tuple of Python ``int``,
    ``bool`` (and ``float``, for a float ``dtype``) whose values all convert exactly is
    converted here, as ``np.asarray`` and the general path would convert it. Any other sample
    ``s`` (the ``k``-th) becomes ``convert(s, dtype, first_index + k)``, which must return a
    C-contiguous array of ``dtype``, or raise for a sample that cannot be stored. ``bar``:
    its ``update(k)`` is called as samples are packed.
    """
    cdef PackedSamples packed = PackedSamples.__new__(PackedSamples)
    cdef cnp.dtype descr = np.dtype(dtype)
    cdef Py_ssize_t n = PyList_GET_SIZE(samples), i, k, nd, length, done = 0
    cdef Py_ssize_t itemsize = (<object>descr).itemsize
    cdef int target = _target_of(descr)
    cdef int64_t* counts
    cdef int64_t* ndims
    cdef int64_t* dims = NULL
    cdef int64_t* grown
    cdef Py_ssize_t dims_used = 0, dims_capacity = 0
    cdef int64_t size = 0
    cdef Py_ssize_t* side_at = NULL  # per sample: offset into the side buffer, or -1
    cdef cnp.ndarray arr
    cdef cnp.npy_intp* shape
    cdef PyObject** items
    cdef bint flat = True
    cdef object sample
    if (<object>descr).hasobject:
        raise TypeError(f"{descr} holds Python objects, which cannot be stored")
    packed.dtype = descr
    packed.itemsize = itemsize
    packed.n = n
    packed.owners = list(samples)  # the samples stay alive, whatever the caller does to its list
    packed.counts = np.empty(n, dtype=np.int64)
    packed.ndims = np.empty(n, dtype=np.int64)
    counts = <int64_t*>cnp.PyArray_DATA(packed.counts)
    ndims = <int64_t*>cnp.PyArray_DATA(packed.ndims)
    packed.ptrs = <char**>malloc(max(n, 1) * sizeof(char*))
    side_at = <Py_ssize_t*>malloc(max(n, 1) * sizeof(Py_ssize_t))
    dims_capacity = max(n, 16)
    dims = <int64_t*>malloc(dims_capacity * sizeof(int64_t))
    if packed.ptrs == NULL or side_at == NULL or dims == NULL:
        free(side_at)
        free(dims)
        raise MemoryError()
    try:
        for i in range(n):
            sample = <object>PyList_GET_ITEM(packed.owners, i)
            side_at[i] = -1
            if dims_used + MAX_SAMPLE_NDIM > dims_capacity:
                dims_capacity = dims_capacity * 2 + MAX_SAMPLE_NDIM
                grown = <int64_t*>realloc(dims, dims_capacity * sizeof(int64_t))
                if grown == NULL:
                    raise MemoryError()
                dims = grown
            if target != T_NONE and (PyList_CheckExact(sample) or PyTuple_CheckExact(sample)):
                length = PySequence_Fast_GET_SIZE(sample)
                items = PySequence_Fast_ITEMS(sample)
                packed._grow_side(length * itemsize)
                if _convert_numbers(items, length, target, packed.side + packed.side_used, itemsize):
                    side_at[i] = packed.side_used
                    packed.side_used += length * itemsize
                    counts[i] = length
                    ndims[i] = 1
                    dims[dims_used] = length
                    dims_used += 1
                    size += length
                    if bar is not None and i + 1 - done >= BAR_STEP:
                        bar.update(i + 1 - done)
                        done = i + 1
                    continue
            if not _as_is(sample, descr):
                if convert is None:
                    raise TypeError(f"sample {first_index + i}: expected a C-contiguous array of {descr}")
                sample = convert(sample, descr, first_index + i)
                if not _as_is(sample, descr):
                    raise TypeError(f"sample {first_index + i}: the conversion gave no C-contiguous array of "
                                    f"{descr}")
                packed.owners.append(sample)
            arr = <cnp.ndarray>sample
            nd = cnp.PyArray_NDIM(arr)
            shape = cnp.PyArray_DIMS(arr)
            for k in range(nd):
                dims[dims_used + k] = shape[k]
            dims_used += nd
            ndims[i] = nd
            counts[i] = cnp.PyArray_SIZE(arr)
            size += counts[i]
            packed.ptrs[i] = <char*>cnp.PyArray_DATA(arr)
            if nd > 1:
                flat = False
            if bar is not None and i + 1 - done >= BAR_STEP:
                bar.update(i + 1 - done)
                done = i + 1
        for i in range(n):  # the side buffer is whole: where its samples are
            if side_at[i] >= 0:
                packed.ptrs[i] = packed.side + side_at[i]
        packed.dims = np.empty(dims_used, dtype=np.int64)
        if dims_used:
            memcpy(cnp.PyArray_DATA(packed.dims), dims, dims_used * sizeof(int64_t))
    finally:
        free(side_at)
        free(dims)
    packed.flat = flat
    packed.size = size
    packed.nbytes = size * itemsize
    if bar is not None and n > done:
        bar.update(n - done)
    return packed
