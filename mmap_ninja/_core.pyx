# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled kernels of mmap_ninja.

Everything here works on memoryviews of the memory-mapped files of a map:

- ``normalize_index``: one place where user indices (ints, slices, sequences, masks) become
  checked, non-negative ``int64`` positions;
- ``RaggedReader``: offset lookup and zero-copy sample views of a ragged map;
- ``StringsReader``: offset lookup and UTF-8 decoding of a strings map.

Every offset read from disk is checked against the length of the mapped data before any memory
is touched, so a corrupted file raises ``ValueError`` instead of reading outside the mapping.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsSsize_t
from cpython.ref cimport Py_INCREF, PyTypeObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    PyTypeObject PyArray_Type
    object PyArray_NewFromDescr(PyTypeObject* subtype, cnp.PyArray_Descr* descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides, void* data,
                                int flags, object obj)

cdef enum:
    # Largest number of axes a stored sample may have (NumPy 1.x allows 32, NumPy 2.x 64).
    MAX_SAMPLE_NDIM = 32


# --------------------------------------------------------------------------------------------
# Index normalisation
# --------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _wrap_scalar(Py_ssize_t i, Py_ssize_t n) except -1:
    cdef Py_ssize_t j = i + n if i < 0 else i
    if j < 0 or j >= n:
        raise IndexError(f"index {i} is out of bounds for a map of length {n}")
    return j


cdef Py_ssize_t _wrap_indices(const int64_t[::1] src, int64_t[::1] dst, int64_t n) noexcept nogil:
    """Copy ``src`` to ``dst`` with negative indices wrapped; return the position of the first
    index out of ``[-n, n)``, or -1 when all are valid."""
    cdef Py_ssize_t k
    cdef int64_t i
    for k in range(src.shape[0]):
        i = src[k]
        if i < 0:
            i += n
        if i < 0 or i >= n:
            return k
        dst[k] = i
    return -1


cdef Py_ssize_t _slice_length(Py_ssize_t start, Py_ssize_t stop, Py_ssize_t step) noexcept nogil:
    """Number of positions in ``range(start, stop, step)`` (``step`` != 0)."""
    if step > 0 and start < stop:
        return (stop - start - 1) // step + 1
    if step < 0 and start > stop:
        return (start - stop - 1) // (-step) + 1
    return 0


cdef bint _is_integer_scalar(object item):
    return (isinstance(item, int) or isinstance(item, np.integer)) and not (
        isinstance(item, bool) or isinstance(item, np.bool_))


cdef Py_ssize_t _scalar_index(object item, Py_ssize_t n) except -1:
    """Checked position in ``[0, n)`` of an integer scalar (Python or NumPy, negative
    allowed)."""
    cdef Py_ssize_t i
    if type(item) is not int:
        if not _is_integer_scalar(item):
            raise TypeError(f"an index must be an integer, not {type(item).__name__}")
        item = int(item)
    try:
        i = PyLong_AsSsize_t(item)
    except OverflowError:
        raise IndexError(f"index {item} is out of bounds for a map of length {n}") from None
    return _wrap_scalar(i, n)


def normalize_index(object item, Py_ssize_t n):
    """Turn a user index into checked positions of a map of length ``n``.

    Returns an ``int`` in ``[0, n)`` for an integer scalar (Python or NumPy, negative allowed),
    or a new 1-d ``int64`` array of positions for a slice (any step), a list, tuple, range or
    1-d array of integers of any integer dtype, or a boolean mask of length ``n``.

    Raises ``IndexError`` for an index out of range (naming it and ``n``) or a mask of the wrong
    length, and ``TypeError`` for anything else (floats, strings, ``None``, boolean scalars).
    """
    if type(item) is int or _is_integer_scalar(item):
        return _scalar_index(item, n)
    if isinstance(item, slice):
        start, stop, step = item.indices(n)
        return np.arange(start, stop, step, dtype=np.int64)
    if isinstance(item, cnp.ndarray):
        arr = item
    elif isinstance(item, (list, tuple, range)):
        arr = np.asarray(item)
    else:
        raise TypeError(
            f"indices must be integers, slices, sequences of integers or boolean masks, "
            f"not {type(item).__name__}")
    if arr.ndim != 1:
        raise IndexError(f"index arrays must be 1-d, got an array of shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "b":
        if arr.shape[0] != n:
            raise IndexError(
                f"boolean mask of length {arr.shape[0]} does not match a map of length {n}")
        return np.flatnonzero(arr).astype(np.int64, copy=False)
    if arr.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    if kind == "u":
        if int(arr.max()) >= n:
            bad = int(arr[np.argmax(arr >= n)])
            raise IndexError(f"index {bad} is out of bounds for a map of length {n}")
    elif kind != "i":
        raise TypeError(f"indices must be integers or booleans, not {arr.dtype}")
    cdef const int64_t[::1] src = np.ascontiguousarray(arr, dtype=np.int64)
    out = np.empty(src.shape[0], dtype=np.int64)
    cdef int64_t[::1] dst = out
    cdef Py_ssize_t bad_pos
    with nogil:
        bad_pos = _wrap_indices(src, dst, n)
    if bad_pos >= 0:
        raise IndexError(f"index {src[bad_pos]} is out of bounds for a map of length {n}")
    return out


# --------------------------------------------------------------------------------------------
# Offsets shared by both readers
# --------------------------------------------------------------------------------------------

cdef class _Offsets:
    """``starts``/``ends`` offsets into data of ``length`` units; the first ``n = len(starts)``
    entries are used. ``source`` names the map in error messages."""

    cdef const int64_t[::1] starts
    cdef const int64_t[::1] ends
    cdef int64_t length
    cdef readonly Py_ssize_t n
    cdef readonly object source
    cdef str item_name, unit_name

    cdef _init_offsets(self, starts, ends, int64_t length, source, str item_name, str unit_name):
        self.starts = starts
        self.ends = ends
        self.n = self.starts.shape[0]
        self.length = length
        self.source = source
        self.item_name = item_name
        self.unit_name = unit_name
        if self.ends.shape[0] < self.n:
            raise ValueError(f"{source}: ends holds {self.ends.shape[0]} offsets, "
                             f"starts holds {self.n}")

    def __len__(self):
        return self.n

    cdef int _bounds(self, Py_ssize_t i, int64_t* start, int64_t* end) except -1:
        """Offsets of item ``i``, checked to lie within the data."""
        start[0] = self.starts[i]
        end[0] = self.ends[i]
        if start[0] < 0 or end[0] < start[0] or end[0] > self.length:
            raise ValueError(
                f"{self.source}: corrupted offsets for {self.item_name} {i}: "
                f"[{start[0]}, {end[0]}) is not within the {self.length} stored {self.unit_name}")
        return 0

    def span(self, i):
        """``(start, end)`` offsets of item ``i`` (negative counts from the end), checked
        against the data."""
        cdef int64_t start, end
        self._bounds(_scalar_index(i, self.n), &start, &end)
        return start, end


# --------------------------------------------------------------------------------------------
# Ragged maps
# --------------------------------------------------------------------------------------------

cdef inline int64_t _checked_product(const int64_t[::1] dims, Py_ssize_t lo, Py_ssize_t hi,
                                     int64_t limit) noexcept nogil:
    """Product of ``dims[lo:hi]``, or -1 when an axis is negative or the product exceeds
    ``limit``."""
    cdef int64_t product = 1
    cdef Py_ssize_t k
    cdef bint zero = False
    for k in range(lo, hi):
        if dims[k] < 0:
            return -1
        if dims[k] == 0:
            zero = True
    if zero:
        return 0
    for k in range(lo, hi):
        if product > limit // dims[k]:
            return -1
        product *= dims[k]
    return product


cdef class RaggedReader(_Offsets):
    """Offset lookup and zero-copy sample views over the mapped files of a ragged map.

    ``data`` is the flattened 1-d array of all samples (any dtype, C-contiguous); ``starts``
    and ``ends`` are ``int64`` arrays of element offsets into it, of which the first ``n =
    len(starts)`` entries are used. Shapes come either from ``sizes`` (flat maps: the length of
    each 1-d sample, 0 with one element for a scalar) or from ``shape_values`` sliced by
    ``shape_starts``/``shape_ends`` (maps with samples of other ranks). ``source`` names the
    map in error messages.
    """

    cdef cnp.ndarray data
    cdef char* base
    cdef Py_ssize_t itemsize
    cdef const int64_t[::1] sizes
    cdef const int64_t[::1] shape_values
    cdef const int64_t[::1] shape_starts
    cdef const int64_t[::1] shape_ends
    cdef bint nested
    cdef int flags

    def __cinit__(self, cnp.ndarray data, starts, ends, sizes=None, shape_values=None,
                  shape_starts=None, shape_ends=None, source=""):
        if data.ndim != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(data):
            raise ValueError(f"{source}: the data of a ragged map must be a contiguous 1-d array")
        self._init_offsets(starts, ends, data.shape[0], source, "sample", "elements")
        self.data = data
        self.base = cnp.PyArray_BYTES(data)
        self.itemsize = data.dtype.itemsize
        self.flags = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
        if cnp.PyArray_ISWRITEABLE(data):
            self.flags |= cnp.NPY_ARRAY_WRITEABLE
        self.nested = sizes is None
        if self.nested:
            self.shape_values = shape_values
            self.shape_starts = shape_starts
            self.shape_ends = shape_ends
            if self.shape_starts.shape[0] < self.n or self.shape_ends.shape[0] < self.n:
                raise ValueError(f"{source}: shapes holds fewer entries than the {self.n} samples")
        else:
            self.sizes = sizes
            if self.sizes.shape[0] < self.n:
                raise ValueError(f"{source}: shapes holds {self.sizes.shape[0]} entries, "
                                 f"fewer than the {self.n} samples")

    cdef int _shape(self, Py_ssize_t i, int64_t count, cnp.npy_intp* dims) except -2:
        """Fill ``dims`` with the shape of sample ``i`` holding ``count`` elements; return its
        number of axes, or -1 for a scalar."""
        cdef int64_t lo, hi, product
        cdef Py_ssize_t k
        if not self.nested:
            if self.sizes[i] == count:
                dims[0] = count
                return 1
            if self.sizes[i] == 0 and count == 1:
                return -1
            raise ValueError(f"{self.source}: sample {i} has shape ({self.sizes[i]},) "
                             f"but {count} stored elements")
        lo = self.shape_starts[i]
        hi = self.shape_ends[i]
        if lo < 0 or hi < lo or hi > self.shape_values.shape[0] or hi - lo > MAX_SAMPLE_NDIM:
            raise ValueError(f"{self.source}: corrupted shape offsets for sample {i}: "
                             f"[{lo}, {hi})")
        product = _checked_product(self.shape_values, lo, hi, self.length)
        if product == count:
            if hi == lo:
                return -1
            for k in range(hi - lo):
                dims[k] = self.shape_values[lo + k]
            return <int>(hi - lo)
        if hi - lo == 1 and self.shape_values[lo] == 0 and count == 1:
            return -1
        shape = tuple(self.shape_values[lo:hi])
        raise ValueError(f"{self.source}: sample {i} has shape {shape} "
                         f"but {count} stored elements")

    cdef object _sample(self, Py_ssize_t i):
        cdef int64_t start, end
        cdef cnp.npy_intp dims[MAX_SAMPLE_NDIM]
        cdef int nd
        self._bounds(i, &start, &end)
        nd = self._shape(i, end - start, dims)
        if nd < 0:
            return cnp.PyArray_GETITEM(self.data, self.base + start * self.itemsize)
        descr = cnp.PyArray_DESCR(self.data)
        Py_INCREF(<object>descr)  # PyArray_NewFromDescr steals this reference
        view = PyArray_NewFromDescr(&PyArray_Type, descr, nd, dims, NULL,
                                    self.base + start * self.itemsize, self.flags, None)
        cnp.set_array_base(view, self.data)
        return view

    def sample(self, i):
        """Sample ``i`` (an integer; negative counts from the end) as an array view of the
        mapped data, or as a Python scalar for a 0-d sample."""
        return self._sample(_scalar_index(i, self.n))

    def samples(self, const int64_t[::1] indices):
        """The samples at checked, non-negative ``indices`` (as from ``normalize_index``), as a
        list of views."""
        cdef Py_ssize_t k
        cdef list out = []
        for k in range(indices.shape[0]):
            out.append(self._sample(_wrap_scalar(indices[k], self.n)))
        return out

    def samples_in(self, slice item):
        """The samples of a slice of the map (any step), as a list of views."""
        cdef Py_ssize_t start, stop, step, k
        start, stop, step = item.indices(self.n)
        cdef list out = []
        for k in range(_slice_length(start, stop, step)):
            out.append(self._sample(start + k * step))
        return out


# --------------------------------------------------------------------------------------------
# Strings maps
# --------------------------------------------------------------------------------------------

cdef class StringsReader(_Offsets):
    """Offset lookup and UTF-8 decoding over the mapped files of a strings map.

    ``data`` is any buffer of bytes (the mapped ``data.ninja``); ``starts`` and ``ends`` are
    ``int64`` arrays of byte offsets, of which the first ``n = len(starts)`` are used.
    """

    cdef const unsigned char[::1] data

    def __cinit__(self, data, starts, ends, source=""):
        self.data = data
        self._init_offsets(starts, ends, self.data.shape[0], source, "string", "bytes")

    cdef object _get(self, Py_ssize_t i, bint as_bytes):
        cdef int64_t start, end
        self._bounds(i, &start, &end)
        if end == start:
            return b"" if as_bytes else ""
        cdef const char* ptr = <const char*>&self.data[start]
        if as_bytes:
            return PyBytes_FromStringAndSize(ptr, end - start)
        return PyUnicode_DecodeUTF8(ptr, end - start, NULL)

    def get(self, i, bint as_bytes=False):
        """String ``i`` (an integer; negative counts from the end) decoded from UTF-8, or its
        raw bytes."""
        return self._get(_scalar_index(i, self.n), as_bytes)

    def get_many(self, const int64_t[::1] indices, bint as_bytes=False):
        """The strings (or raw bytes) at checked, non-negative ``indices``, as a list."""
        cdef Py_ssize_t k
        cdef list out = []
        for k in range(indices.shape[0]):
            out.append(self._get(_wrap_scalar(indices[k], self.n), as_bytes))
        return out

    def get_in(self, slice item, bint as_bytes=False):
        """The strings (or raw bytes) of a slice of the map (any step), as a list."""
        cdef Py_ssize_t start, stop, step, k
        start, stop, step = item.indices(self.n)
        cdef list out = []
        for k in range(_slice_length(start, stop, step)):
            out.append(self._get(start + k * step, as_bytes))
        return out
