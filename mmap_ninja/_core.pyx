# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled kernels of mmap_ninja.

Everything here works on memoryviews of the memory-mapped files of a map:

- ``normalize_index``: the one place where user indices (integers, slices, sequences, masks)
  become checked, non-negative ``int64`` positions;
- ``RaggedReader``: offset lookup, zero-copy sample views and batch gathers of a ragged map:
  ``take`` copies samples back to back into a ``RaggedBatch``, ``padded`` into a padded array;
- ``StringsReader``: offset lookup and UTF-8 decoding of a strings map;
- ``gather_rows``: rows of a fixed-shape array gathered into a new or given array;
- the batch kernels (``_take``, ``_padded``, ``_gather_strings``) run over a table of the C
  states of maps (``ragged_t``, ``strings_t``, declared in ``_core.pxd``): a plain map is a table
  of one; ``_sharded`` uses them over the parts of a sharded map.

Every offset read from disk is checked against the length of the mapped data before memory is
touched, so a corrupted file raises ``ValueError`` instead of reading outside the mapping.
Batch copies run without the GIL, so several threads can gather at once.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsSsize_t
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_INCREF, PyTypeObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport INT32_MAX, int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

cimport cython
cimport numpy as cnp
import operator

import numpy as np

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    PyTypeObject PyArray_Type
    object PyArray_NewFromDescr(PyTypeObject* subtype, cnp.PyArray_Descr* descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides, void* data,
                                int flags, object obj)
    object PyArray_Empty(int nd, cnp.npy_intp* dims, cnp.PyArray_Descr* descr, int fortran)


cdef extern from *:
    """
    /* Element-wise conversions between the numeric types, one function per pair, chosen at run
       time by (kind, itemsize) of the source and destination: 'b' bool, 'i' signed, 'u'
       unsigned integers, 'f' floats. */
    typedef void (*mn_convert_t)(const char *src, char *dst, Py_ssize_t n);
    #define MN_TYPES_A(X, ...) \
        X(__VA_ARGS__, npy_bool, 'b', 1) X(__VA_ARGS__, npy_int8, 'i', 1) X(__VA_ARGS__, npy_uint8, 'u', 1) \
        X(__VA_ARGS__, npy_int16, 'i', 2) X(__VA_ARGS__, npy_uint16, 'u', 2) X(__VA_ARGS__, npy_int32, 'i', 4) \
        X(__VA_ARGS__, npy_uint32, 'u', 4) X(__VA_ARGS__, npy_int64, 'i', 8) X(__VA_ARGS__, npy_uint64, 'u', 8) \
        X(__VA_ARGS__, npy_float32, 'f', 4) X(__VA_ARGS__, npy_float64, 'f', 8)
    #define MN_TYPES_B(X, ...) \
        X(__VA_ARGS__, npy_bool, 'b', 1) X(__VA_ARGS__, npy_int8, 'i', 1) X(__VA_ARGS__, npy_uint8, 'u', 1) \
        X(__VA_ARGS__, npy_int16, 'i', 2) X(__VA_ARGS__, npy_uint16, 'u', 2) X(__VA_ARGS__, npy_int32, 'i', 4) \
        X(__VA_ARGS__, npy_uint32, 'u', 4) X(__VA_ARGS__, npy_int64, 'i', 8) X(__VA_ARGS__, npy_uint64, 'u', 8) \
        X(__VA_ARGS__, npy_float32, 'f', 4) X(__VA_ARGS__, npy_float64, 'f', 8)
    #define MN_CONVERT(S, D, DK, DS) \
        static void mn_convert_##S##_##D(const char *src, char *dst, Py_ssize_t n) { \
            const S *a = (const S *)src; D *b = (D *)dst; \
            for (Py_ssize_t k = 0; k < n; k++) b[k] = (D)a[k]; }
    #define MN_CONVERT_FROM(_, S, SK, SS) MN_TYPES_B(MN_CONVERT, S)
    MN_TYPES_A(MN_CONVERT_FROM, _)
    #define MN_PICK_TO(S, D, DK, DS) if (dk == DK && ds == DS) return mn_convert_##S##_##D;
    #define MN_PICK_FROM(_, S, SK, SS) if (sk == SK && ss == SS) { MN_TYPES_B(MN_PICK_TO, S) }
    static mn_convert_t mn_converter(char sk, int ss, char dk, int ds) {
        MN_TYPES_A(MN_PICK_FROM, _)
        return NULL;
    }
    """
    convert_t converter "mn_converter"(char sk, int ss, char dk, int ds) noexcept nogil


ctypedef fused index_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t


# --------------------------------------------------------------------------------------------
# Index normalisation
# --------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _wrap_scalar(Py_ssize_t i, Py_ssize_t n) except -1:
    cdef Py_ssize_t j = i + n if i < 0 else i
    if j < 0 or j >= n:
        raise IndexError(f"index {i} is out of bounds for a map of length {n}")
    return j


def _wrap_indices(const index_t[::1] src, int64_t[::1] dst, int64_t n):
    """Copy ``src`` (any integer dtype) to ``dst`` with negative indices wrapped; return the
    position of the first index out of ``[-n, n)``, or -1 when all are valid."""
    cdef Py_ssize_t k, bad = -1
    cdef int64_t i
    with nogil:
        for k in range(src.shape[0]):
            if index_t is uint64_t:
                if src[k] >= <uint64_t>n:
                    bad = k
                    break
                i = <int64_t>src[k]
            else:
                i = <int64_t>src[k]
                if i < 0:
                    i += n
                if i < 0 or i >= n:
                    bad = k
                    break
            dst[k] = i
    return bad


cdef tuple _slice_bounds(slice item, Py_ssize_t n):
    """``(start, step, count)`` of the positions a slice selects in a map of length ``n``
    (any step, even one past the length)."""
    positions = range(n)[item]
    count = len(positions)
    return (positions.start if count else 0), (positions.step if count > 1 else 1), count


cdef object _slice_positions(slice item, Py_ssize_t n):
    cdef Py_ssize_t start, step, count
    start, step, count = _slice_bounds(item, n)
    return np.arange(count, dtype=np.int64) * step + start


cdef Py_ssize_t _scalar_index(object item, Py_ssize_t n) except -1:
    """Checked position in ``[0, n)`` of an integer scalar (Python or NumPy int, 0-d integer
    array, anything with ``__index__``; negative counts from the end)."""
    cdef Py_ssize_t i
    if type(item) is not int:
        if isinstance(item, (bool, np.bool_)):
            raise TypeError("a boolean is not an index; use a mask of the map's length")
        try:
            item = operator.index(item)
        except TypeError:
            raise TypeError(f"an index must be an integer, not {type(item).__name__}") from None
    try:
        i = PyLong_AsSsize_t(item)
    except OverflowError:
        raise IndexError(f"index {item} is out of bounds for a map of length {n}") from None
    return _wrap_scalar(i, n)


def normalize_index(object item, Py_ssize_t n):
    """Turn a user index into checked positions of a map of length ``n``, as numpy would.

    Returns an ``int`` in ``[0, n)`` for an integer scalar (Python or NumPy, a 0-d integer
    array or tensor, anything with ``__index__``; negative counts from the end), or a new 1-d
    ``int64`` array of positions for a slice (any step), a boolean mask of length ``n``, or a
    sequence or array-like of integers of any integer dtype (list, tuple, range, ndarray,
    ``array.array``, a tensor). An empty tuple selects every sample.

    Raises ``IndexError`` for an index out of range (naming it and ``n``) or a mask of the wrong
    length, and ``TypeError`` for anything else (floats, strings, ``None``, boolean scalars).
    """
    if type(item) is int:
        return _scalar_index(item, n)
    if isinstance(item, slice):
        return _slice_positions(item, n)
    if item is None or isinstance(item, (str, bytes, bytearray, float, complex, bool, np.bool_)):
        raise TypeError(
            f"indices must be integers, slices, sequences of integers or boolean masks, "
            f"not {type(item).__name__}")
    if isinstance(item, tuple) and not item:
        return np.arange(n, dtype=np.int64)
    if isinstance(item, cnp.ndarray):
        arr = item
    else:
        try:
            return _scalar_index(operator.index(item), n)
        except TypeError:
            arr = np.asarray(item)
    if arr.ndim == 0:
        if arr.dtype.kind in "iu":
            return _scalar_index(int(arr), n)
        raise TypeError(f"indices must be integers, slices, sequences of integers or boolean "
                        f"masks, not {type(item).__name__} of {arr.dtype}")
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
    if kind not in "iu":
        raise TypeError(f"indices must be integers or booleans, not {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    out = np.empty(arr.shape[0], dtype=np.int64)
    bad = _wrap_indices(arr, out, n)
    if bad >= 0:
        raise IndexError(f"index {arr[bad]} is out of bounds for a map of length {n}")
    return out


def batch_index(object item, Py_ssize_t n):
    """Like ``normalize_index``, for a batch: always a 1-d ``int64`` array of positions
    (``TypeError`` for an integer scalar)."""
    index = normalize_index(item, n)
    if not isinstance(index, np.ndarray):
        raise TypeError(f"a batch needs a sequence, array, mask or slice of indices, not "
                        f"{type(item).__name__}")
    return index


# --------------------------------------------------------------------------------------------
# Array views and copies
# --------------------------------------------------------------------------------------------

cdef inline int _view_flags(cnp.ndarray owner):
    cdef int flags = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    if cnp.PyArray_ISWRITEABLE(owner):
        flags |= cnp.NPY_ARRAY_WRITEABLE
    return flags


cdef object _view(cnp.ndarray owner, char* ptr, int nd, cnp.npy_intp* dims, int flags):
    """A C-contiguous array of ``owner``'s dtype over ``ptr`` (inside ``owner``'s data), which
    keeps ``owner`` alive; a Python scalar when ``nd`` is 0."""
    if nd == 0:
        return cnp.PyArray_GETITEM(owner, ptr)
    descr = cnp.PyArray_DESCR(owner)
    Py_INCREF(<object>descr)  # PyArray_NewFromDescr steals this reference
    view = PyArray_NewFromDescr(&PyArray_Type, descr, nd, dims, NULL, ptr, flags, None)
    cnp.set_array_base(view, owner)
    return view


cdef void _fill(char* dst, Py_ssize_t nbytes, const char* pattern, Py_ssize_t itemsize,
                bint zero) noexcept nogil:
    """Fill ``nbytes`` (a multiple of ``itemsize``) at ``dst`` with copies of one element."""
    cdef Py_ssize_t filled, chunk, k
    cdef uint64_t value8
    cdef uint32_t value4
    cdef uint16_t value2
    if nbytes <= 0:
        return
    if zero or itemsize == 1:
        memset(dst, 0 if zero else (<const unsigned char*>pattern)[0], nbytes)
        return
    if itemsize == 8 and (<size_t>dst) % 8 == 0:  # the usual cases, in loops the compiler vectorises
        memcpy(&value8, pattern, 8)
        for k in range(nbytes // 8):
            (<uint64_t*>dst)[k] = value8
        return
    if itemsize == 4 and (<size_t>dst) % 4 == 0:
        memcpy(&value4, pattern, 4)
        for k in range(nbytes // 4):
            (<uint32_t*>dst)[k] = value4
        return
    if itemsize == 2 and (<size_t>dst) % 2 == 0:
        memcpy(&value2, pattern, 2)
        for k in range(nbytes // 2):
            (<uint16_t*>dst)[k] = value2
        return
    memcpy(dst, pattern, itemsize)
    filled = itemsize
    while filled < nbytes:
        chunk = filled if filled < nbytes - filled else nbytes - filled
        memcpy(dst + filled, dst, chunk)
        filled += chunk


cdef inline object _empty(int nd, cnp.npy_intp* dims, cnp.dtype descr):
    """A new C-contiguous array of ``descr``."""
    Py_INCREF(descr)  # PyArray_Empty steals this reference
    return PyArray_Empty(nd, dims, <cnp.PyArray_Descr*>descr, 0)


cdef bint _rows_span(const void* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t k,
                     const char** ptr, Py_ssize_t* nbytes) noexcept nogil:
    """``_ragged_span`` for rows of fixed-shape ``parts`` (``rows_t``; parts without C-ordered
    rows, and indices out of range, are left out)."""
    cdef const rows_t* r = (<const rows_t*>parts) + (part_of[k] if part_of != NULL else 0)
    if r.base == NULL or idx[k] < 0 or idx[k] >= r.n:
        return False
    ptr[0] = r.base + idx[k] * r.row_bytes
    nbytes[0] = r.row_bytes
    return True


cdef bint _advise_rows(const char* base, Py_ssize_t row_bytes, int64_t n, const int64_t* idx, Py_ssize_t batch,
                       Py_ssize_t probes) noexcept nogil:
    """``_advise_spans`` of the rows at ``idx[0..batch]`` among ``n`` rows of ``row_bytes``
    each at ``base``."""
    cdef rows_t rows
    rows.base = base
    rows.n = n
    rows.row_bytes = row_bytes
    return _advise_spans(_rows_span, &rows, NULL, idx, batch, probes)


cdef int _check_positions(const int64_t[::1] indices, Py_ssize_t n, str what) except -1:
    """``IndexError`` for the first of ``indices`` outside ``[0, n)`` (``what``: of what)."""
    cdef Py_ssize_t k
    for k in range(indices.shape[0]):
        if indices[k] < 0 or indices[k] >= n:
            raise IndexError(f"index {indices[k]} is out of bounds for {what}")
    return 0


def prefetch_rows(src, const int64_t[::1] indices):
    """Start reading the rows ``src[indices]`` into the page cache in the background (tell the
    kernel their byte ranges) and return at once. ``src``: a C-contiguous array (a numpy
    map); ``indices``: ``int64`` positions in ``[0, len(src))`` (``IndexError`` otherwise)."""
    if not isinstance(src, np.ndarray) or src.ndim < 1 or not src.flags.c_contiguous:
        raise ValueError("prefetch_rows needs a C-contiguous array with at least one axis")
    cdef Py_ssize_t n = src.shape[0]
    _check_positions(indices, n, f"{n} rows")
    cdef Py_ssize_t row_bytes = src.dtype.itemsize * int(np.prod(src.shape[1:], dtype=np.int64))
    cdef const char* base = cnp.PyArray_BYTES(<cnp.ndarray>src)
    with nogil:
        _advise_rows(base, row_bytes, n, _first(indices), indices.shape[0], PREFETCH_PROBES)


def gather_rows(src, const int64_t[::1] indices, out):
    """Copy ``src[indices[k]]`` to ``out[k]`` for every ``k``, without the GIL, and return
    ``out``.

    ``src``: C-contiguous array of ``n`` rows (shape ``(n, *row_shape)``, any dtype);
    ``indices``: ``int64`` positions in ``[0, n)``; ``out``: writable C-contiguous array of
    shape ``(len(indices), *row_shape)`` and ``src``'s dtype.
    """
    if not isinstance(src, np.ndarray) or src.ndim < 1 or not src.flags.c_contiguous:
        raise ValueError("gather_rows needs a C-contiguous array with at least one axis")
    if not isinstance(out, np.ndarray) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writable C-contiguous array")
    if out.dtype != src.dtype:
        raise ValueError(f"out has dtype {out.dtype}, the rows have dtype {src.dtype}")
    if src.dtype.hasobject:
        raise TypeError("gather_rows copies bytes, which cannot hold Python objects")
    cdef tuple expected = (indices.shape[0],) + tuple(src.shape)[1:]
    if tuple(out.shape) != expected:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {expected}")
    cdef Py_ssize_t n = src.shape[0], k, bad = -1
    cdef Py_ssize_t row_bytes = src.dtype.itemsize * int(np.prod(src.shape[1:], dtype=np.int64))
    cdef const char* base = cnp.PyArray_BYTES(<cnp.ndarray>src)
    cdef char* dst = cnp.PyArray_BYTES(<cnp.ndarray>out)
    cdef watch_t w
    cdef bint advised
    with nogil:
        advised = _advise_rows(base, row_bytes, n, _first(indices), indices.shape[0], COLD_PROBES)
        _watch_start(&w, not advised)
        for k in range(indices.shape[0]):
            if indices[k] < 0 or indices[k] >= n:
                bad = k
                break
            if _slow(&w, k):
                _watched(&w, _advise_rows(base, row_bytes, n, _first(indices) + k, indices.shape[0] - k, WATCH_PROBES))
            if k + PREFETCH_DISTANCE < indices.shape[0] and 0 <= indices[k + PREFETCH_DISTANCE] < n:
                _prefetch_bytes(base + indices[k + PREFETCH_DISTANCE] * row_bytes, row_bytes)
            memcpy(dst + k * row_bytes, base + indices[k] * row_bytes, row_bytes)
    if bad >= 0:
        raise IndexError(f"index {indices[bad]} is out of bounds for {n} rows")
    return out


# --------------------------------------------------------------------------------------------
# Offsets shared by both readers
# --------------------------------------------------------------------------------------------


cdef class _Offsets:
    """``starts``/``ends`` offsets into data of ``length`` units; the first ``n = len(starts)``
    entries are used. ``source`` names the map in error messages."""

    cdef _init_offsets(self, starts, ends, int64_t length, source, str item_name, str unit_name):
        self.starts_view = starts
        self.ends_view = ends
        self.starts = _first(self.starts_view)
        self.ends = _first(self.ends_view)
        self.n = self.starts_view.shape[0]
        self.length = length
        self.source = source
        self.item_name = item_name
        self.unit_name = unit_name
        if self.ends_view.shape[0] < self.n:
            raise ValueError(f"{source}: ends holds {self.ends_view.shape[0]} offsets, "
                             f"starts holds {self.n}")
        _keep_resident(self.starts, self.n * sizeof(int64_t))
        _keep_resident(self.ends, self.n * sizeof(int64_t))

    def __len__(self):
        return self.n

    cdef int _bounds(self, Py_ssize_t i, int64_t* start, int64_t* end) except -1:
        """Offsets of item ``i``, checked to lie within the data."""
        start[0] = self.starts[i]
        end[0] = self.ends[i]
        if not _valid_span(start[0], end[0], self.length):
            raise ValueError(
                f"{self.source}: corrupted offsets for {self.item_name} {i}: "
                f"[{start[0]}, {end[0]}) is not within the {self.length} stored {self.unit_name}")
        return 0

    cdef int _raise_unreadable(self, int64_t i) except -1:
        """Raise the error that makes position ``i`` of a batch unreadable: out of range, or
        offsets outside the data."""
        cdef int64_t start, end
        if i < 0 or i >= self.n:
            raise IndexError(f"index {i} is out of bounds for a map of length {self.n}")
        return self._bounds(i, &start, &end)

    cdef void _advise_prefetch(self, const int64_t* idx, Py_ssize_t batch) noexcept nogil:
        """Tell the kernel the bytes of the items at ``idx[0..batch]`` (see ``prefetch``)."""
        pass

    def prefetch(self, const int64_t[::1] indices):
        """Start reading the items at ``indices`` (``int64`` positions in ``[0, n)``,
        ``IndexError`` otherwise) into the page cache in the background, and return at once. A
        few of them are looked up first, and when all are in the page cache nothing is asked."""
        _check_positions(indices, self.n, f"a map of length {self.n}")
        with nogil:
            self._advise_prefetch(_first(indices), indices.shape[0])

    def span(self, i):
        """``(start, end)`` offsets of item ``i`` (negative counts from the end), checked
        against the data."""
        cdef int64_t start, end
        self._bounds(_scalar_index(i, self.n), &start, &end)
        return start, end


# --------------------------------------------------------------------------------------------
# Ragged maps
# --------------------------------------------------------------------------------------------

cdef inline int64_t _checked_product(const int64_t* dims, Py_ssize_t nd, int64_t limit) noexcept nogil:
    """Product of ``dims[:nd]``, or -1 when an axis is negative or the product exceeds
    ``limit``."""
    cdef int64_t product = 1
    cdef Py_ssize_t k
    cdef bint zero = False
    for k in range(nd):
        if dims[k] < 0:
            return -1
        if dims[k] == 0:
            zero = True
    if zero:
        return 0
    for k in range(nd):
        if product > limit // dims[k]:
            return -1
        product *= dims[k]
    return product


cdef inline const ragged_t* _part_at(const ragged_t* parts, const int32_t* part_of, Py_ssize_t k) noexcept nogil:
    return parts if part_of == NULL else parts + part_of[k]


cdef int _ragged_shape(const ragged_t* r, int64_t i, int64_t count, int64_t* dims) noexcept nogil:
    """Copy the shape of sample ``i`` of ``r``, which holds ``count`` elements, into ``dims``
    and return its number of axes (0 for a scalar), or -1 when the stored shape is corrupted or
    disagrees with ``count``. Each stored value is read once: every check and every later use
    is of the copy, whatever happens to the file meanwhile."""
    cdef int64_t lo, hi, k
    if not r.nested:
        # the stored size must agree with the offsets (0 with one element is a scalar)
        k = r.sizes[i]
        dims[0] = count
        return 1 if k == count else 0 if k == 0 and count == 1 else -1
    lo = r.shape_starts[i]
    hi = r.shape_ends[i]
    if lo < 0 or hi < lo or hi > r.n_shape_values or hi - lo > MAX_SAMPLE_NDIM:
        return -1
    for k in range(hi - lo):
        dims[k] = r.shape_values[lo + k]
    if _checked_product(dims, hi - lo, r.length) == count:
        return <int>(hi - lo)
    if hi - lo == 1 and dims[0] == 0 and count == 1:
        return 0  # a scalar as mmap_ninja 0.9.0 stores it among samples of other ranks
    return -1


cdef inline void _prefetch_ragged(const ragged_t* parts, const int32_t* part_of, const int64_t* idx,
                                  Py_ssize_t k, Py_ssize_t batch) noexcept nogil:
    """Ask the CPU for the offsets and shape of the sample at batch position ``k``, if any."""
    cdef const ragged_t* r
    cdef int64_t i
    if k >= batch:
        return
    r = _part_at(parts, part_of, k)
    i = idx[k]
    if i < 0 or i >= r.n:
        return
    prefetch(r.starts + i)
    prefetch(r.ends + i)
    prefetch(r.shape_starts + i if r.nested else r.sizes + i)


cdef inline int _check_sample(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t k,
                              Py_ssize_t batch, int64_t* start, int64_t* end, int64_t* dims) noexcept nogil:
    """Check the sample at position ``k`` of a batch: its offsets (into ``start``/``end``) and
    its shape (into ``dims``); return its number of axes, or -1 when it cannot be read. The CPU
    is asked for the offsets of the sample ``PREFETCH_DISTANCE`` positions ahead meanwhile."""
    cdef const ragged_t* r = _part_at(parts, part_of, k)
    cdef int64_t i = idx[k]
    _prefetch_ragged(parts, part_of, idx, k + PREFETCH_DISTANCE, batch)
    if i < 0 or i >= r.n:
        return -1
    start[0] = r.starts[i]
    end[0] = r.ends[i]
    if not _valid_span(start[0], end[0], r.length):
        return -1
    return _ragged_shape(r, i, end[0] - start[0], dims)


cdef bint _ragged_span(const void* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t k,
                       const char** ptr, Py_ssize_t* nbytes) noexcept nogil:
    """The bytes of the sample at batch position ``k`` of ragged ``parts`` (``False`` when its
    index or offsets are not sound)."""
    cdef const ragged_t* r = _part_at(<const ragged_t*>parts, part_of, k)
    cdef int64_t i = idx[k]
    if i < 0 or i >= r.n or not _valid_span(r.starts[i], r.ends[i], r.length):
        return False
    ptr[0] = r.base + r.starts[i] * r.itemsize
    nbytes[0] = (r.ends[i] - r.starts[i]) * r.itemsize
    return True


cdef bint _advise_spans(span_t span, const void* parts, const int32_t* part_of, const int64_t* idx,
                        Py_ssize_t batch, Py_ssize_t probes) noexcept nogil:
    """Tell the kernel the bytes of every sample at batch positions ``0..batch`` (``span``
    finds them; those it finds not sound are left out), coalesced where they touch, when
    ``probes`` is 0 or when one of ``probes`` samples spread over the batch is not in the page
    cache: the kernel then reads them all at once rather than one page fault after another.
    Return whether it was told."""
    cdef advice_t a
    cdef Py_ssize_t k, step, nbytes
    cdef const char* ptr
    _advice_start(&a)
    if probes:
        step = _probe_step(batch, probes)
        k = 0
        while k < batch and not a.cold:
            if span(parts, part_of, idx, k, &ptr, &nbytes):
                _probe(&a, ptr, nbytes)
            k += step
        if not a.cold:
            return False
    for k in range(batch):
        if span(parts, part_of, idx, k, &ptr, &nbytes):
            _advise(&a, ptr, nbytes)
    _advice_flush(&a)
    return True


cdef bint _probed(span_t span, const void* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                  int* unprobed) noexcept nogil:
    """``_advise_spans`` of a batch with COLD_PROBES, unless ``unprobed`` (the reader's count,
    or NULL) says to skip this batch's probe (see UNPROBED)."""
    cdef bint advised
    if unprobed != NULL and unprobed[0] > 0:
        unprobed[0] -= 1
        return False
    advised = _advise_spans(span, parts, part_of, idx, batch, COLD_PROBES)
    if unprobed != NULL:
        unprobed[0] = 0 if advised else UNPROBED
    return advised


cdef bint _advise_ragged(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                         Py_ssize_t probes) noexcept nogil:
    """``_advise_spans`` of samples of ragged ``parts``."""
    return _advise_spans(_ragged_span, parts, part_of, idx, batch, probes)


cdef bint _probed_ragged(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                         int* unprobed) noexcept nogil:
    """``_probed`` of samples of ragged ``parts``."""
    return _probed(_ragged_span, parts, part_of, idx, batch, unprobed)


cdef Py_ssize_t _plan_take(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                           Py_ssize_t itemsize, int64_t* src, int64_t* dims, int64_t* off, int64_t* soff,
                           int* reason) noexcept nogil:
    """Check every sample of a batch and record its data start (``src``), its axes (in
    ``dims``, ``MAX_SAMPLE_NDIM`` per sample, when ``dims`` is not NULL, which it must be when a
    part is nested; else a sample's only axis is its count) and the running totals of values
    (``off``) and axes (``soff``), while the CPU fetches the offsets of the samples that come
    next. Return the position of the first sample that cannot be taken (``reason`` says why),
    or -1."""
    cdef Py_ssize_t k
    cdef int64_t start, end, most = PY_SSIZE_T_MAX // itemsize if itemsize else PY_SSIZE_T_MAX
    cdef int64_t flat_dims[1]
    cdef int nd
    off[0] = 0
    soff[0] = 0
    for k in range(batch):
        reason[0] = PAD_CORRUPTED
        nd = _check_sample(parts, part_of, idx, k, batch, &start, &end,
                           dims + k * MAX_SAMPLE_NDIM if dims != NULL else flat_dims)
        if nd < 0:
            return k
        if end - start > most - off[k]:
            reason[0] = TAKE_TOO_LARGE
            return k
        src[k] = start
        off[k + 1] = off[k] + end - start
        soff[k + 1] = soff[k] + nd
    return -1


cdef void _copy_take(const ragged_t* parts, const int32_t* part_of, Py_ssize_t batch, Py_ssize_t itemsize,
                     const int64_t* src,
                     const int64_t* off, const int64_t* soff, const int64_t* dims, char* out,
                     int64_t* shape_out, const int64_t* idx, bint watch) noexcept nogil:
    """Copy the samples planned by ``_plan_take`` back to back into ``out`` and their shapes
    into ``shape_out``, while the CPU fetches the data of the samples that come next; with
    ``watch``, the kernel is told the ranges of the rest of the batch once copies turn slow
    (``idx``: the samples' indices in their parts)."""
    cdef Py_ssize_t k, ahead
    cdef int nd, a
    cdef watch_t w
    _watch_start(&w, watch)
    for k in range(batch):
        if _slow(&w, k):
            _watched(&w, _advise_ragged(parts, _parts_from(part_of, k), idx + k, batch - k, WATCH_PROBES))
        ahead = k + PREFETCH_DISTANCE
        if ahead < batch:
            _prefetch_bytes(_part_at(parts, part_of, ahead).base + src[ahead] * itemsize,
                            (off[ahead + 1] - off[ahead]) * itemsize)
        memcpy(out + off[k] * itemsize, _part_at(parts, part_of, k).base + src[k] * itemsize,
               (off[k + 1] - off[k]) * itemsize)
        nd = <int>(soff[k + 1] - soff[k])
        if dims == NULL:
            if nd:
                shape_out[soff[k]] = off[k + 1] - off[k]
        else:
            for a in range(nd):
                shape_out[soff[k] + a] = dims[k * MAX_SAMPLE_NDIM + a]


cdef object _allocated(object alloc, tuple shape, cnp.dtype descr):
    """``alloc(shape, descr)``, checked to be a writable C-contiguous array of that shape and
    dtype (the memory a batch is written into, e.g. shared memory)."""
    array = alloc(shape, descr)
    if (not isinstance(array, np.ndarray) or array.dtype != descr or tuple(array.shape) != shape
            or not array.flags.c_contiguous or not array.flags.writeable):
        raise ValueError(f"alloc must return a writable C-contiguous {descr} array of shape {shape}, "
                         f"not {type(array).__name__} {getattr(array, 'dtype', '')} {getattr(array, 'shape', '')}")
    return array


cdef object _take(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                  cnp.dtype descr, bint nested, object source, object indices, int* unprobed, object alloc=None):
    """The samples at batch positions ``0..batch`` (``idx``: their indices in their parts)
    copied back to back into a new ``RaggedBatch`` (its values in ``alloc(shape, dtype)`` when
    given, else a new array); ``nested``: whether any part read is. A sample that cannot be
    taken raises ``source._batch_error(indices, k, reason)``, before anything is copied."""
    cdef Py_ssize_t bad
    cdef int reason = PAD_OK
    cdef bint advised
    offsets = _empty_int64(batch + 1)
    shape_offsets = _empty_int64(batch + 1)
    cdef int64_t* off = <int64_t*>cnp.PyArray_DATA(offsets)
    cdef int64_t* soff = <int64_t*>cnp.PyArray_DATA(shape_offsets)
    cdef Py_ssize_t scratch = batch * (MAX_SAMPLE_NDIM + 1) if nested else batch
    cdef int64_t* src = <int64_t*>malloc((scratch + 1) * sizeof(int64_t))
    if src == NULL:
        raise MemoryError(f"cannot allocate a batch of {batch} samples")
    cdef int64_t* dims = src + batch if nested else NULL
    cdef cnp.npy_intp size[1]
    cdef char* out
    cdef int64_t* shape_out
    try:
        with nogil:
            advised = _probed_ragged(parts, part_of, idx, batch, unprobed)
            bad = _plan_take(parts, part_of, idx, batch, descr.itemsize, src, dims, off, soff, &reason)
        if bad >= 0 and reason == TAKE_TOO_LARGE:
            raise MemoryError(f"a batch of {batch} samples is too large for memory")
        if bad >= 0:
            source._batch_error(indices, bad, reason)
        size[0] = off[batch]
        values = _empty(1, size, descr) if alloc is None else _allocated(alloc, (off[batch],), descr)
        shape_values = _empty_int64(soff[batch])
        out = cnp.PyArray_BYTES(values)
        shape_out = <int64_t*>cnp.PyArray_DATA(shape_values)
        with nogil:
            _copy_take(parts, part_of, batch, descr.itemsize, src, off, soff, dims, out, shape_out, idx, not advised)
    finally:
        free(src)
    return _new_batch(values, offsets, shape_values, shape_offsets)


cdef Py_ssize_t _plan_padded(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                             int64_t* src, int64_t* length, int64_t* first, int* first_nd,
                             int64_t* longest, int* reason, int64_t* dims_all, int64_t* widest) noexcept nogil:
    """Check that every sample of a batch can be padded (at least one axis, the row shape of
    the first, recorded in ``first``/``first_nd``; with ``dims_all`` not NULL, padded along every
    axis, only its number of axes) and record its data start (``src``), its length along the
    first axis (``length``) and the longest; with ``dims_all``, also its axes
    (``MAX_SAMPLE_NDIM`` per sample) and the largest along each axis (``widest``). Return the
    position of the first that cannot be padded (``reason`` says why), or -1."""
    cdef Py_ssize_t k
    cdef int64_t start, end
    cdef int64_t dims[MAX_SAMPLE_NDIM]
    cdef int nd, a
    for k in range(batch):
        nd = _check_sample(parts, part_of, idx, k, batch, &start, &end, dims)
        reason[0] = PAD_CORRUPTED if nd < 0 else PAD_SCALAR if nd == 0 else PAD_OK
        if reason[0] == PAD_OK and first_nd[0] < 0:
            first_nd[0] = nd
            memcpy(first, dims, nd * sizeof(int64_t))
        elif reason[0] == PAD_OK and nd != first_nd[0]:
            reason[0] = PAD_OTHER_ROW_SHAPE if dims_all == NULL else PAD_OTHER_NDIM
        elif reason[0] == PAD_OK and dims_all == NULL:
            for a in range(1, nd):
                if dims[a] != first[a]:
                    reason[0] = PAD_OTHER_ROW_SHAPE
        if reason[0] != PAD_OK:
            return k
        src[k] = start
        length[k] = dims[0]
        if length[k] > longest[0]:
            longest[0] = length[k]
        if dims_all != NULL:
            memcpy(dims_all + k * MAX_SAMPLE_NDIM, dims, nd * sizeof(int64_t))
            for a in range(nd):
                if dims[a] > widest[a]:
                    widest[a] = dims[a]
    return -1


cdef void _fill_padded(const ragged_t* parts, const int32_t* part_of, const int64_t* src, int64_t* length,
                       Py_ssize_t batch, int64_t longest, Py_ssize_t itemsize, int64_t row_elems, char* dst,
                       Py_ssize_t out_itemsize, convert_t convert, const char* pattern,
                       bint zero, const int64_t* idx, bint watch) noexcept nogil:
    """Copy each sample's first ``longest`` rows (``row_elems`` elements each) into row ``k``
    of ``dst``, converted by ``convert`` to elements of ``out_itemsize`` bytes (copied as they
    are when ``convert`` is NULL), and fill the rest with the element at ``pattern`` (all zero
    bytes when ``zero``); ``length`` becomes the number of rows kept. ``idx`` and ``watch``
    as for ``_copy_take``."""
    cdef Py_ssize_t k, row_bytes = row_elems * itemsize, out_row_bytes = row_elems * out_itemsize
    cdef int64_t kept
    cdef const char* sample
    cdef char* row
    cdef watch_t w
    _watch_start(&w, watch)
    for k in range(batch):
        if _slow(&w, k):
            _watched(&w, _advise_ragged(parts, _parts_from(part_of, k), idx + k, batch - k, WATCH_PROBES))
        if k + PREFETCH_DISTANCE < batch:
            _prefetch_bytes(_part_at(parts, part_of, k + PREFETCH_DISTANCE).base
                            + src[k + PREFETCH_DISTANCE] * itemsize, row_bytes)
        kept = length[k] if length[k] < longest else longest
        length[k] = kept
        sample = _part_at(parts, part_of, k).base + src[k] * itemsize
        row = dst + k * longest * out_row_bytes
        if convert == NULL:
            memcpy(row, sample, kept * row_bytes)
        else:
            convert(sample, row, kept * row_elems)
        _fill(row + kept * out_row_bytes, (longest - kept) * out_row_bytes, pattern, out_itemsize, zero)


cdef inline void _copy_run(const char* sample, char* row, int64_t count, Py_ssize_t itemsize,
                           convert_t convert) noexcept nogil:
    """Copy ``count`` elements, converted by ``convert`` (as they are when it is NULL)."""
    if convert == NULL:
        memcpy(row, sample, count * itemsize)
    else:
        convert(sample, row, count)


cdef void _fill_padded_axes(const ragged_t* parts, const int32_t* part_of, const int64_t* src, int64_t* length,
                            int64_t* dims_all, int nd, Py_ssize_t batch, const int64_t* width,
                            Py_ssize_t itemsize, char* dst, Py_ssize_t out_itemsize, convert_t convert,
                            const char* pattern, bint zero, const int64_t* idx, bint watch) noexcept nogil:
    """Copy each sample (its axes in ``dims_all``, ``nd`` of them) into block ``k`` of ``dst``,
    an array ``(batch, *width)``: its first ``width[0]`` rows, each of its innermost runs
    converted as ``_fill_padded`` converts, and every element of the block it does not cover
    filled with the element at ``pattern``. ``length`` and the first axis in ``dims_all``
    become the number of rows kept. ``idx`` and ``watch`` as for ``_copy_take``."""
    cdef Py_ssize_t k, r, runs = 1, block = 1
    cdef int64_t inner = width[nd - 1], kept, offset
    cdef int64_t pos[MAX_SAMPLE_NDIM]
    cdef int64_t stride[MAX_SAMPLE_NDIM]
    cdef int64_t* dims
    cdef int a
    cdef bint inside
    cdef const char* sample
    cdef char* out
    cdef char* row
    cdef watch_t w
    for a in range(nd):
        block *= width[a]
    for a in range(nd - 1):
        runs *= width[a]
    _watch_start(&w, watch)
    for k in range(batch):
        if _slow(&w, k):
            _watched(&w, _advise_ragged(parts, _parts_from(part_of, k), idx + k, batch - k, WATCH_PROBES))
        dims = dims_all + k * MAX_SAMPLE_NDIM
        kept = dims[0] if dims[0] < width[0] else width[0]
        dims[0] = kept
        length[k] = kept
        if block == 0:
            continue
        sample = _part_at(parts, part_of, k).base + src[k] * itemsize
        out = dst + k * block * out_itemsize
        if nd == 1:
            _copy_run(sample, out, kept, itemsize, convert)
            _fill(out + kept * out_itemsize, (inner - kept) * out_itemsize, pattern, out_itemsize, zero)
            continue
        stride[nd - 1] = 1  # elements of the sample per step along each axis
        for a in range(nd - 2, -1, -1):
            stride[a] = stride[a + 1] * dims[a + 1]
        for a in range(nd - 1):
            pos[a] = 0
        for r in range(runs):  # each innermost run of the block, in order
            row = out + r * inner * out_itemsize
            if pos[0] >= kept:  # past the sample's rows: the rest of the block is padding
                _fill(row, (runs - r) * inner * out_itemsize, pattern, out_itemsize, zero)
                break
            inside = True
            offset = 0
            for a in range(1, nd - 1):
                if pos[a] >= dims[a]:
                    inside = False
                    break
            if inside:
                for a in range(nd - 1):
                    offset += pos[a] * stride[a]
                _copy_run(sample + offset * itemsize, row, dims[nd - 1], itemsize, convert)
                _fill(row + dims[nd - 1] * out_itemsize, (inner - dims[nd - 1]) * out_itemsize, pattern,
                      out_itemsize, zero)
            else:
                _fill(row, inner * out_itemsize, pattern, out_itemsize, zero)
            a = nd - 2
            while a >= 0:
                pos[a] += 1
                if pos[a] < width[a]:
                    break
                pos[a] = 0
                a -= 1


cdef tuple _padded(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                   cnp.dtype descr, pad_value, Py_ssize_t max_len, out, object source, object indices,
                   int* unprobed, object dtype=None, object alloc=None, bint every_axis=False):
    """The samples at batch positions ``0..batch`` padded into one array of ``dtype`` (default:
    the map's; into ``out``, else ``alloc(shape, dtype)``, else a new array), and their lengths
    (see ``RaggedReader.padded``); with ``every_axis``, padded along every axis, and their
    shapes too. Errors as in ``_take``."""
    cdef Py_ssize_t bad
    cdef int64_t longest = 0, row_elems = 1
    cdef int64_t first[MAX_SAMPLE_NDIM]
    cdef int64_t widest[MAX_SAMPLE_NDIM]
    cdef int64_t width[MAX_SAMPLE_NDIM]
    cdef int first_nd = -1, reason = PAD_OK, a, nd
    cdef bint advised = False
    cdef cnp.dtype out_descr = descr if dtype is None else np.dtype(dtype)
    cdef convert_t convert = NULL
    if out_descr != descr:
        if not np.can_cast(descr, out_descr, "safe"):
            raise TypeError(f"a padded batch of {out_descr} cannot hold samples of {descr} exactly "
                            f"(only safe casts, as numpy.can_cast(..., 'safe') defines them)")
        if descr.isnative and out_descr.isnative:
            convert = converter(ord(descr.kind), descr.itemsize, ord(out_descr.kind), out_descr.itemsize)
        if convert == NULL:  # no compiled conversion (into complex numbers, say): pad, then cast
            return _padded_cast(parts, part_of, idx, batch, descr, out_descr, pad_value, max_len, out, source,
                                indices, unprobed, alloc, every_axis)
    pad = np.ascontiguousarray(pad_value, dtype=out_descr)
    if pad.size != 1:
        raise ValueError(f"pad_value must be one value, not an array of shape {pad.shape}")
    cdef bint zero = not pad.view(np.uint8).any()
    cdef char* dst
    cdef const char* pattern
    lengths = _empty_int64(batch)
    cdef int64_t* length = <int64_t*>cnp.PyArray_DATA(lengths)
    cdef int64_t* src = <int64_t*>malloc((batch + 1) * sizeof(int64_t))
    cdef int64_t* dims_all = NULL
    cdef int64_t* shape_out
    if src == NULL:
        raise MemoryError(f"cannot allocate a batch of {batch} samples")
    if every_axis:
        dims_all = <int64_t*>malloc((batch + 1) * MAX_SAMPLE_NDIM * sizeof(int64_t))
        if dims_all == NULL:
            free(src)
            raise MemoryError(f"cannot allocate a batch of {batch} samples")
    memset(widest, 0, sizeof(widest))
    try:
        with nogil:
            advised = _probed_ragged(parts, part_of, idx, batch, unprobed)
            bad = _plan_padded(parts, part_of, idx, batch, src, length, first, &first_nd, &longest, &reason,
                               dims_all, widest)
        if bad >= 0:
            source._batch_error(indices, bad, reason)
        if batch == 0:
            # no sample to take the row shape from: the map's first sample stands for all
            row_shape = source._first_row_shape()
        elif every_axis:
            row_shape = tuple(widest[a] for a in range(1, first_nd))
        else:
            row_shape = tuple(first[a] for a in range(1, first_nd))
        if max_len >= 0:
            longest = max_len
        elif out is not None:
            longest = out.shape[1] if out.ndim >= 2 else -1
        if every_axis and out is not None and isinstance(out, np.ndarray) and out.ndim == len(row_shape) + 2:
            for a in range(len(row_shape)):  # a larger out pads every sample to its size
                if out.shape[a + 2] < row_shape[a]:
                    raise ValueError(f"out has {out.shape[a + 2]} entries along axis {a + 2}, a sample of the "
                                     f"batch {row_shape[a]}")
            row_shape = tuple(out.shape[2:])
        for a in range(len(row_shape)):
            row_elems *= row_shape[a]
        expected = (batch, longest) + row_shape
        if out is None and alloc is not None:
            out = _allocated(alloc, expected, out_descr)
        elif out is None:
            out = np.empty(expected, dtype=out_descr)
        elif (not isinstance(out, np.ndarray) or out.dtype != out_descr or tuple(out.shape) != expected
              or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"out must be a writable C-contiguous {out_descr} array of shape {expected}")
        dst = cnp.PyArray_BYTES(<cnp.ndarray>out)
        pattern = cnp.PyArray_BYTES(<cnp.ndarray>pad)
        if not every_axis:
            with nogil:
                _fill_padded(parts, part_of, src, length, batch, longest, descr.itemsize, row_elems, dst,
                             out_descr.itemsize, convert, pattern, zero, idx, not advised)
            return out, lengths
        nd = len(row_shape) + 1
        width[0] = longest
        for a in range(1, nd):
            width[a] = row_shape[a - 1]
        with nogil:
            _fill_padded_axes(parts, part_of, src, length, dims_all, nd, batch, width, descr.itemsize, dst,
                              out_descr.itemsize, convert, pattern, zero, idx, not advised)
        shapes = _empty_int64(batch * nd)
        shape_out = <int64_t*>cnp.PyArray_DATA(shapes)
        for bad in range(batch):
            memcpy(shape_out + bad * nd, dims_all + bad * MAX_SAMPLE_NDIM, nd * sizeof(int64_t))
        return out, lengths, shapes.reshape(batch, nd)
    finally:
        free(src)
        free(dims_all)


cdef tuple _padded_cast(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                        cnp.dtype descr, cnp.dtype out_descr, pad_value, Py_ssize_t max_len, out, object source,
                        object indices, int* unprobed, object alloc, bint every_axis):
    """``_padded`` into a dtype that no compiled conversion makes (complex numbers, say):
    padded in the samples' dtype, then cast, then the padding set."""
    width = max_len if max_len >= 0 else out.shape[1] if out is not None and out.ndim >= 2 else -1
    found = _padded(parts, part_of, idx, batch, descr, 0, width, None, source, indices, unprobed, None, None,
                    every_axis)
    padded, lengths = found[0], found[1]
    shape = padded.shape if out is None or not every_axis else tuple(out.shape)
    if out is None:
        out = _allocated(alloc, shape, out_descr) if alloc is not None else np.empty(shape, out_descr)
    elif (not isinstance(out, np.ndarray) or out.dtype != out_descr or out.shape[:2] != padded.shape[:2]
          or out.ndim != padded.ndim or any(n < m for n, m in zip(out.shape, padded.shape))
          or not out.flags.writeable):
        raise ValueError(f"out must be a writable {out_descr} array of shape {padded.shape}")
    if not every_axis:
        np.copyto(out, padded, casting="safe")
        out[np.arange(out.shape[1]) >= lengths[:, None]] = np.asarray(pad_value, dtype=out_descr)
        return out, lengths
    shapes = found[2]
    out[...] = np.asarray(pad_value, dtype=out_descr)
    for k in range(batch):
        kept = (k,) + tuple(slice(0, n) for n in shapes[k])
        out[kept] = padded[kept]
    return out, lengths, shapes


cdef int _raise_batch_error(reason, i, first_i, sample) except -1:
    """Raise why sample ``i`` cannot join a batch whose first sample is ``first_i``
    (``sample(j)`` reads sample ``j``; a corrupted sample raises when read)."""
    if reason == PAD_CORRUPTED:
        sample(i)
        raise ValueError(f"sample {i} cannot be read")  # not reached: reading it raised
    if reason == PAD_SCALAR:
        raise ValueError(f"sample {i} is a scalar: a padded batch needs samples with at least one axis")
    if reason == PAD_OTHER_NDIM:
        raise ValueError(f"sample {i} has shape {np.shape(sample(i))}, sample {first_i} has shape "
                         f"{np.shape(sample(first_i))}: a batch padded along every axis needs samples of one "
                         f"number of axes")
    raise ValueError(f"sample {i} has shape {np.shape(sample(i))}, sample {first_i} has shape "
                     f"{np.shape(sample(first_i))}: a padded batch needs samples that differ only in "
                     f"their first axis (every_axis=True pads the others too)")


@cython.final
cdef class RaggedReader(_Offsets):
    """Offset lookup, zero-copy sample views and batch gathers over a ragged map.

    ``data`` is the flattened 1-d array of all samples (any dtype, C-contiguous); ``starts``
    and ``ends`` are ``int64`` arrays of element offsets into it, of which the first ``n =
    len(starts)`` entries are used. Shapes come either from ``sizes`` (flat maps: the length of
    each 1-d sample, 0 with one element for a scalar) or from ``shape_values`` sliced by
    ``shape_starts``/``shape_ends`` (maps with samples of other ranks). ``source`` names the
    map in error messages.
    """

    def __cinit__(self, cnp.ndarray data, starts, ends, sizes=None, shape_values=None,
                  shape_starts=None, shape_ends=None, source=""):
        if data.ndim != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(data) or data.dtype.hasobject:
            raise ValueError(f"{source}: the data of a ragged map must be a contiguous 1-d array "
                             f"of numbers, booleans or fixed-width strings")
        self._init_offsets(starts, ends, data.shape[0], source, "sample", "elements")
        self.data = data
        self.descr = data.dtype
        self.flags = _view_flags(data)
        self.c.base = cnp.PyArray_BYTES(data)
        self.c.itemsize = data.dtype.itemsize
        self.c.starts = self.starts
        self.c.ends = self.ends
        self.c.n = self.n
        self.c.length = self.length
        self.c.nested = sizes is None
        if self.c.nested:
            self.shape_values_view = shape_values
            self.shape_starts_view = shape_starts
            self.shape_ends_view = shape_ends
            self.c.shape_values = _first(self.shape_values_view)
            self.c.shape_starts = _first(self.shape_starts_view)
            self.c.shape_ends = _first(self.shape_ends_view)
            self.c.n_shape_values = self.shape_values_view.shape[0]
            if self.shape_starts_view.shape[0] < self.n or self.shape_ends_view.shape[0] < self.n:
                raise ValueError(f"{source}: shapes holds fewer entries than the {self.n} samples")
            _keep_resident(self.c.shape_values, self.c.n_shape_values * sizeof(int64_t))
            _keep_resident(self.c.shape_starts, self.n * sizeof(int64_t))
            _keep_resident(self.c.shape_ends, self.n * sizeof(int64_t))
        else:
            self.sizes_view = sizes
            self.c.sizes = _first(self.sizes_view)
            if self.sizes_view.shape[0] < self.n:
                raise ValueError(f"{source}: shapes holds {self.sizes_view.shape[0]} entries, "
                                 f"fewer than the {self.n} samples")
            _keep_resident(self.c.sizes, self.n * sizeof(int64_t))

    @property
    def dtype(self):
        return self.descr

    # -- one sample ---------------------------------------------------------------------------

    cdef int _raise_invalid(self, Py_ssize_t i) except -1:
        """Raise the error that makes sample ``i`` unreadable."""
        cdef int64_t start, end, lo, hi
        self._bounds(i, &start, &end)
        if not self.c.nested:
            raise ValueError(f"{self.source}: sample {i} has shape ({self.c.sizes[i]},) "
                             f"but {end - start} stored elements")
        lo = self.c.shape_starts[i]
        hi = self.c.shape_ends[i]
        if lo < 0 or hi < lo or hi > self.c.n_shape_values or hi - lo > MAX_SAMPLE_NDIM:
            raise ValueError(f"{self.source}: corrupted shape offsets for sample {i}: [{lo}, {hi})")
        shape = tuple(self.shape_values_view[lo:hi])
        raise ValueError(f"{self.source}: sample {i} has shape {shape} "
                         f"but {end - start} stored elements")

    cdef int _raise_at(self, int64_t i) except -1:
        """Raise the error that makes position ``i`` of a batch unreadable."""
        self._raise_unreadable(i)
        return self._raise_invalid(i)

    cdef object _sample(self, Py_ssize_t i):
        cdef int64_t start, end
        cdef int64_t dims[MAX_SAMPLE_NDIM]
        cdef cnp.npy_intp view_dims[MAX_SAMPLE_NDIM]
        cdef int nd, a
        self._bounds(i, &start, &end)
        nd = _ragged_shape(&self.c, i, end - start, dims)
        if nd < 0:
            self._raise_invalid(i)
        for a in range(nd):
            view_dims[a] = dims[a]
        _advise_large(self.c.base + start * self.c.itemsize, (end - start) * self.c.itemsize)
        return _view(self.data, self.c.base + start * self.c.itemsize, nd, view_dims, self.flags)

    def sample(self, i):
        """Sample ``i`` (an integer; negative counts from the end) as an array view of the
        mapped data, or as a Python scalar for a 0-d sample."""
        return self._sample(_scalar_index(i, self.n))

    def samples(self, const int64_t[::1] indices):
        """The samples at checked, non-negative ``indices`` (as from ``normalize_index``), as a
        list of views."""
        cdef Py_ssize_t k, batch = indices.shape[0]
        cdef list out = []
        with nogil:
            _probed_ragged(&self.c, NULL, _first(indices), batch, &self.unprobed)
        for k in range(batch):
            _prefetch_ragged(&self.c, NULL, _first(indices), k + PREFETCH_DISTANCE, batch)
            out.append(self._sample(_wrap_scalar(indices[k], self.n)))
        return out

    def samples_in(self, slice item):
        """The samples of a slice of the map (any step), as a list of views."""
        return self.samples(_slice_positions(item, self.n))

    cdef void _advise_prefetch(self, const int64_t* idx, Py_ssize_t batch) noexcept nogil:
        _advise_ragged(&self.c, NULL, idx, batch, PREFETCH_PROBES)

    def verify(self, Py_ssize_t limit=20):
        """``(problems, unsound)`` of one pass over every sample: the first ``limit`` problems
        (offsets outside the data, stored shapes that disagree with the offsets), one line
        each, and the number of unsound samples in all. ``([], 0)`` when every sample is
        sound."""
        cdef list problems = []
        cdef Py_ssize_t i, unsound = 0
        cdef int64_t start, end
        cdef int64_t dims[MAX_SAMPLE_NDIM]
        cdef bint sound
        for i in range(self.n):
            start = self.starts[i]
            end = self.ends[i]
            if not _valid_span(start, end, self.length):
                sound = False
            elif self.c.nested:
                sound = _ragged_shape(&self.c, i, end - start, dims) >= 0
            else:
                sound = self.c.sizes[i] == end - start or (self.c.sizes[i] == 0 and end - start == 1)
            if not sound:
                unsound += 1
                if len(problems) < limit:
                    try:
                        self._raise_invalid(i)
                    except ValueError as exc:
                        problems.append(str(exc))
        return problems, unsound

    # -- batches --------------------------------------------------------------------------------

    def _batch_error(self, const int64_t[::1] indices, Py_ssize_t k, int reason):
        """Raise why the sample at position ``k`` of a batch cannot join it."""
        if reason == PAD_CORRUPTED:
            self._raise_at(indices[k])
        _raise_batch_error(reason, indices[k], indices[0], self.sample)

    def _first_row_shape(self):
        """The shape after the first axis of sample 0, standing for every sample."""
        return tuple(np.shape(self._sample(0))[1:]) if self.n else ()

    def take(self, const int64_t[::1] indices, alloc=None):
        """The samples at ``indices`` (``int64``, as from ``normalize_index``) copied back to
        back into one new buffer (``alloc(shape, dtype)`` when given), as a ``RaggedBatch``.

        A first pass checks every sample's offsets and shape and sizes the buffer; a second
        copies, while the CPU fetches the data of the samples that come next. Both run without
        the GIL; nothing is copied when a sample fails its checks.
        """
        return _take(&self.c, NULL, _first(indices), indices.shape[0], self.descr, self.c.nested, self, indices,
                     &self.unprobed, alloc)

    def padded(self, const int64_t[::1] indices, pad_value, Py_ssize_t max_len=-1, out=None, dtype=None,
               alloc=None, bint every_axis=False):
        """The samples at ``indices`` as one array ``(B, L, *row_shape)`` of ``dtype`` (default:
        the map's; any other must hold every value exactly, a safe cast) padded with
        ``pad_value`` (one value of that dtype), and their lengths along the first axis
        (``int64``, at most ``L``).

        Every sample must have at least one axis and the same ``row_shape`` after the first;
        with ``every_axis``, only the same number of axes: each later axis is padded to the
        batch's largest (or to ``out``'s size along it), and the samples' shapes ``(B, ndim)``
        (``int64``, the first axis as kept) are returned third.
        ``L`` is ``max_len`` when given (longer samples are truncated), else ``out.shape[1]``
        when ``out`` is given, else the longest sample's length. ``out``, if given, is a
        writable C-contiguous array of ``dtype`` and of that shape; else ``alloc(shape,
        dtype)``, when given, makes the array. Each sample is converted as it is copied, in one
        pass.
        """
        return _padded(&self.c, NULL, _first(indices), indices.shape[0], self.descr, pad_value, max_len, out,
                       self, indices, &self.unprobed, dtype, alloc, every_axis)


@cython.final
cdef class _Arrays:
    """Arrays in memory as the samples of a batch (for ``pad_arrays``'s errors)."""
    cdef list arrays

    def __init__(self, list arrays):
        self.arrays = arrays

    def sample(self, Py_ssize_t i):
        return self.arrays[i]

    def _batch_error(self, const int64_t[::1] indices, Py_ssize_t k, int reason):
        _raise_batch_error(reason, indices[k], indices[0], self.sample)

    def _first_row_shape(self):
        return ()


def pad_arrays(list arrays, pad_value, Py_ssize_t max_len=-1, dtype=None, alloc=None):
    """Arrays (C-contiguous, of one dtype, each with at least one axis and all with the same
    number of axes) padded along every axis into one array ``(B, L, *largest)`` of ``dtype``
    (default: theirs), as ``RaggedReader.padded(..., every_axis=True)`` pads a map's samples,
    in one pass without the GIL; returns ``(padded, lengths, shapes)``."""
    cdef Py_ssize_t batch = len(arrays), k
    cdef int nd
    cdef int skip = 1 << 30  # memory, not a mapped file: no page-cache probe
    if batch == 0:
        raise ValueError("pad_arrays needs at least one array")
    cdef cnp.dtype descr = (<cnp.ndarray?>arrays[0]).dtype
    cdef ragged_t* parts = <ragged_t*>calloc(batch, sizeof(ragged_t))
    cdef int64_t* meta = <int64_t*>malloc(batch * (4 + MAX_SAMPLE_NDIM) * sizeof(int64_t))
    cdef int32_t* part_of = <int32_t*>malloc(batch * sizeof(int32_t))
    cdef int64_t* idx = <int64_t*>calloc(batch, sizeof(int64_t))
    cdef int64_t* m
    cdef cnp.ndarray arr
    try:
        if parts == NULL or meta == NULL or part_of == NULL or idx == NULL:
            raise MemoryError(f"cannot allocate a batch of {batch} samples")
        for k in range(batch):
            arr = arrays[k]
            if arr.dtype != descr or not arr.flags.c_contiguous or arr.ndim > MAX_SAMPLE_NDIM:
                raise ValueError(f"array {k}: pad_arrays takes C-contiguous arrays of one dtype ({descr}) with at "
                                 f"most {MAX_SAMPLE_NDIM} axes, not {arr.dtype} {np.shape(arr)}")
            nd = arr.ndim
            m = meta + k * (4 + MAX_SAMPLE_NDIM)
            m[0] = 0  # the sample's start and end in its own data, its axes' start and end
            m[1] = arr.size
            m[2] = 0
            m[3] = nd
            for a in range(nd):
                m[4 + a] = arr.shape[a]
            parts[k].base = cnp.PyArray_BYTES(arr)
            parts[k].itemsize = descr.itemsize
            parts[k].starts = m
            parts[k].ends = m + 1
            parts[k].n = 1
            parts[k].length = arr.size
            parts[k].nested = True
            parts[k].shape_values = m + 4
            parts[k].shape_starts = m + 2
            parts[k].shape_ends = m + 3
            parts[k].n_shape_values = nd
            part_of[k] = <int32_t>k
        return _padded(parts, part_of, idx, batch, descr, pad_value, max_len, None, _Arrays(arrays),
                       np.arange(batch, dtype=np.int64), &skip, dtype, alloc, True)
    finally:
        free(parts)
        free(meta)
        free(part_of)
        free(idx)


@cython.final
cdef class RaggedBatch:
    """Samples copied back to back into one buffer, with their offsets and shapes.

    ``values``: 1-d array of every sample's values, in C order, back to back;
    ``offsets``: ``int64`` array ``(B + 1,)``, sample ``k`` is ``values[offsets[k]:offsets[k + 1]]``;
    ``shape_values``, ``shape_offsets``: ``int64``, the shape of sample ``k`` is
    ``shape_values[shape_offsets[k]:shape_offsets[k + 1]]`` (empty for a scalar).

    ``batch[k]`` and ``batch.arrays()`` give the samples as views of ``values`` (a Python scalar
    for a 0-d sample), without copying again. ``values`` is writable; the offsets and shapes are
    read-only, and each sample's are checked again when it is read.
    """

    def __init__(self, values, offsets, shape_values, shape_offsets):
        values = np.asarray(values)
        if values.ndim != 1 or not values.flags.c_contiguous or values.dtype.hasobject:
            raise ValueError("values must be a contiguous 1-d array, not of Python objects")
        offsets = np.array(offsets, dtype=np.int64)
        shape_values = np.array(shape_values, dtype=np.int64)
        shape_offsets = np.array(shape_offsets, dtype=np.int64)
        if offsets.ndim != 1 or offsets.shape[0] < 1 or shape_offsets.shape != offsets.shape \
                or shape_values.ndim != 1:
            raise ValueError("offsets and shape_offsets must both hold len(batch) + 1 entries")
        self._set(values, offsets, shape_values, shape_offsets)
        cdef Py_ssize_t k
        for k in range(self.batch):
            if self._nd(k) < 0:
                raise ValueError(f"the offsets or shape of sample {k} of a RaggedBatch do not fit "
                                 f"its values")

    cdef _set(self, cnp.ndarray values, cnp.ndarray offsets, cnp.ndarray shape_values,
              cnp.ndarray shape_offsets):
        for array in (offsets, shape_values, shape_offsets):
            array.flags.writeable = False
        self.values = values
        self.offsets = offsets
        self.shape_values = shape_values
        self.shape_offsets = shape_offsets
        self.off = <const int64_t*>cnp.PyArray_DATA(offsets)
        self.soff = <const int64_t*>cnp.PyArray_DATA(shape_offsets)
        self.dims = <const int64_t*>cnp.PyArray_DATA(shape_values)
        self.base = cnp.PyArray_BYTES(values)
        self.itemsize = values.dtype.itemsize
        self.batch = offsets.shape[0] - 1
        self.n_values = values.shape[0]
        self.n_dims = shape_values.shape[0]
        self.flags = _view_flags(values)

    cdef int _nd(self, Py_ssize_t k) noexcept:
        """Number of axes of sample ``k`` after checking that its offsets and shape fit the
        arrays, or -1."""
        cdef int64_t lo = self.soff[k], hi = self.soff[k + 1]
        if not (0 <= self.off[k] <= self.off[k + 1] <= self.n_values):
            return -1
        if not (0 <= lo <= hi <= self.n_dims) or hi - lo > MAX_SAMPLE_NDIM:
            return -1
        if _checked_product(self.dims + lo, hi - lo, self.n_values) != self.off[k + 1] - self.off[k]:
            return -1
        return <int>(hi - lo)

    def __len__(self):
        return self.batch

    cdef object _item(self, Py_ssize_t k):
        cdef cnp.npy_intp view_dims[MAX_SAMPLE_NDIM]
        cdef int nd = self._nd(k), a
        if nd < 0:
            raise ValueError(f"the offsets or shape of sample {k} of a RaggedBatch do not fit its values")
        for a in range(nd):
            view_dims[a] = self.dims[self.soff[k] + a]
        return _view(self.values, self.base + self.off[k] * self.itemsize, nd, view_dims, self.flags)

    def __getitem__(self, k):
        return self._item(_scalar_index(k, self.batch))

    def __iter__(self):
        return iter(self.arrays())

    def arrays(self):
        """Every sample, as a list of views of ``values``."""
        cdef Py_ssize_t k
        return [self._item(k) for k in range(self.batch)]

    @property
    def shapes(self):
        """The shape of every sample, as a list of tuples."""
        cdef Py_ssize_t k
        return [tuple(self.shape_values[self.soff[k]:self.soff[k + 1]].tolist()) for k in range(self.batch)]

    @property
    def lengths(self):
        """Number of values of every sample (``int64``)."""
        return np.diff(self.offsets)

    @property
    def nbytes(self):
        """Bytes of all values."""
        return self.values.nbytes if self.values is not None else 0

    def __reduce__(self):
        return RaggedBatch, (self.values, self.offsets, self.shape_values, self.shape_offsets)

    def __repr__(self):
        if self.values is None:
            return "RaggedBatch(empty)"
        return f"RaggedBatch({self.batch} samples, {self.values.shape[0]} values of {self.values.dtype})"


cdef int64_t _pack_positions(const int64_t* off, Py_ssize_t batch, int64_t row_elems, int32_t* cu,
                             int64_t* positions) noexcept nogil:
    """Fill ``cu`` (``batch + 1``) with the first row of each sample and ``positions`` with
    each row's position in its sample, for samples at element offsets ``off`` of rows of
    ``row_elems`` elements; return the longest sample's rows."""
    cdef Py_ssize_t k
    cdef int64_t rows, r, at = 0, longest = 0
    cu[0] = 0
    for k in range(batch):
        rows = (off[k + 1] - off[k]) // row_elems
        for r in range(rows):
            positions[at + r] = r
        at += rows
        cu[k + 1] = <int32_t>at
        if rows > longest:
            longest = rows
    return longest


def packed_layout(const int64_t[::1] offsets, int64_t row_elems=1, alloc=None):
    """The layout of variable-length attention over samples packed back to back, whose values
    start at element offsets ``offsets`` (``int64``, ``B + 1``, from 0, as ``RaggedBatch.offsets``)
    and whose rows hold ``row_elems`` elements each: ``(cu_seqlens, position_ids, max_seqlen)``.

    ``cu_seqlens``: ``int32`` ``(B + 1,)``, the first row of each sample and the total;
    ``position_ids``: ``int64`` ``(rows,)``, each row's position in its sample, in arrays made
    by ``alloc(shape, dtype)`` when given; ``max_seqlen``: the longest sample's rows (``int``).
    """
    cdef Py_ssize_t k, batch = offsets.shape[0] - 1
    if batch < 0 or row_elems < 1:
        raise ValueError("offsets needs at least one entry and rows at least one element")
    if offsets[0] != 0:
        raise ValueError(f"offsets must start at 0, not {offsets[0]}")
    for k in range(batch):
        if offsets[k + 1] < offsets[k] or (offsets[k + 1] - offsets[k]) % row_elems:
            raise ValueError(f"sample {k} does not hold whole rows of {row_elems} elements "
                             f"(offsets {offsets[k]} to {offsets[k + 1]})")
    cdef int64_t rows = offsets[batch] // row_elems
    if rows > INT32_MAX:
        raise OverflowError(f"{rows} rows do not fit the int32 cu_seqlens of variable-length attention")
    cdef cnp.npy_intp dims[1]
    dims[0] = batch + 1
    cu = _empty(1, dims, np.dtype(np.int32)) if alloc is None else _allocated(alloc, (batch + 1,), np.dtype(np.int32))
    positions = _empty_int64(rows) if alloc is None else _allocated(alloc, (rows,), np.dtype(np.int64))
    cdef int64_t longest
    cdef int32_t* cu_out = <int32_t*>cnp.PyArray_DATA(cu)
    cdef int64_t* positions_out = <int64_t*>cnp.PyArray_DATA(positions)
    with nogil:
        longest = _pack_positions(&offsets[0], batch, row_elems, cu_out, positions_out)
    return cu, positions, int(longest)


cdef inline uint64_t _splitmix64(uint64_t* state) noexcept nogil:
    """The next value of a SplitMix64 generator (the same stream on every machine)."""
    state[0] += <uint64_t>0x9E3779B97F4A7C15
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


def shuffle_windows(int64_t[::1] order, int64_t window, uint64_t seed):
    """Shuffle ``order`` in place within each run of ``window`` consecutive positions (the last
    run may be shorter), by Fisher-Yates driven by SplitMix64 from ``seed``: the same result on
    every machine and in every process for the same arguments."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    cdef Py_ssize_t n = order.shape[0], lo, hi, k, j
    cdef uint64_t state = seed
    cdef int64_t swap
    with nogil:
        lo = 0
        while lo < n:
            hi = lo + window if lo + window < n else n
            k = hi - 1
            while k > lo:
                j = lo + <Py_ssize_t>(_splitmix64(&state) % <uint64_t>(k - lo + 1))
                swap = order[k]
                order[k] = order[j]
                order[j] = swap
                k -= 1
            lo = hi


def blend_choices(const double[::1] weights, int64_t size):
    """Which dataset each position of a blend of ``size`` draws from (``int32``) and how many
    draws from that dataset came before it (``int64``), so that every prefix holds each dataset
    within one draw of its weight times the prefix's length. ``weights``: non-negative, summing
    to 1.

    Each position goes to the dataset whose next draw is due first, draw ``k`` of dataset ``d``
    being due at ``(k + 1 - c) / weights[d]`` with ``c = 1 / (2 (D - 1))``, among the datasets
    owed at least ``c`` draws (Tijdeman's rule: every count stays within ``1 - c`` of its share;
    the first dataset on ties). Megatron's
    greedy rule (the dataset furthest behind) can fall a little more than one draw behind."""
    cdef Py_ssize_t n_sets = weights.shape[0], d, best = 0
    if n_sets < 1 or size < 0:
        raise ValueError("a blend needs at least one dataset and a size of at least 0")
    cdef cnp.npy_intp dims[1]
    dims[0] = size
    choices = _empty(1, dims, np.dtype(np.int32))
    nth = _empty_int64(size)
    cdef int32_t* choice = <int32_t*>cnp.PyArray_DATA(choices)
    cdef int64_t* before = <int64_t*>cnp.PyArray_DATA(nth)
    cdef int64_t* drawn = <int64_t*>calloc(n_sets, sizeof(int64_t))
    if drawn == NULL:
        raise MemoryError(f"cannot allocate the counts of {n_sets} datasets")
    cdef int64_t i
    cdef double due, best_due, c = 0.5 / (n_sets - 1) if n_sets > 1 else 0.0
    for d in range(n_sets):
        if not weights[d] >= 0:
            raise ValueError(f"weights must be non-negative, not {weights[d]}")
    try:
        with nogil:
            for i in range(size):
                best = -1
                best_due = 0
                for d in range(n_sets):  # owed at least c draws, and due first
                    if weights[d] > 0 and weights[d] * (i + 1) - drawn[d] >= c - 1e-12:
                        due = (drawn[d] + 1 - c) / weights[d]
                        if best < 0 or due < best_due:
                            best, best_due = d, due
                if best < 0:  # not reached by Tijdeman's argument; the dataset owed most, to be safe
                    for d in range(n_sets):
                        if weights[d] > 0 and (best < 0 or weights[d] * (i + 1) - drawn[d] > best_due):
                            best, best_due = d, weights[d] * (i + 1) - drawn[d]
                if best < 0:
                    break
                choice[i] = <int32_t>best
                before[i] = drawn[best]
                drawn[best] += 1
    finally:
        free(drawn)
    if size and best < 0:
        raise ValueError("a blend needs a weight above 0")
    return choices, nth


cdef RaggedBatch _new_batch(values, offsets, shape_values, shape_offsets):
    """A ``RaggedBatch`` over arrays that ``RaggedReader.take`` made consistent."""
    cdef RaggedBatch batch = RaggedBatch.__new__(RaggedBatch)
    batch._set(values, offsets, shape_values, shape_offsets)
    return batch


# --------------------------------------------------------------------------------------------
# Strings maps
# --------------------------------------------------------------------------------------------


cdef inline const strings_t* _strings_at(const strings_t* parts, const int32_t* part_of, Py_ssize_t k) noexcept nogil:
    return parts if part_of == NULL else parts + part_of[k]


cdef bint _strings_span(const void* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t k,
                        const char** ptr, Py_ssize_t* nbytes) noexcept nogil:
    """``_ragged_span`` for strings."""
    cdef const strings_t* r = _strings_at(<const strings_t*>parts, part_of, k)
    cdef int64_t i = idx[k]
    if i < 0 or i >= r.n or not _valid_span(r.starts[i], r.ends[i], r.length):
        return False
    ptr[0] = r.data + r.starts[i]
    nbytes[0] = r.ends[i] - r.starts[i]
    return True


cdef list _gather_strings(const strings_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                          bint as_bytes, object source, object indices, int* unprobed):
    """The strings (or bytes) at batch positions ``0..batch`` (``idx``: their indices in their
    parts), gathered into one buffer without the GIL and decoded from it. A string that cannot
    be read raises ``source._batch_error(indices, k)`` before anything is copied."""
    cdef Py_ssize_t k, bad = -1, ahead
    cdef int64_t i
    cdef const strings_t* r
    cdef bint advised
    cdef watch_t w
    cdef int64_t* off = <int64_t*>malloc((2 * batch + 1) * sizeof(int64_t))
    if off == NULL:
        raise MemoryError(f"cannot allocate a batch of {batch} strings")
    cdef int64_t* src = off + batch + 1
    cdef char* gathered = NULL
    try:
        with nogil:
            advised = _probed(_strings_span, parts, part_of, idx, batch, unprobed)
            off[0] = 0
            for k in range(batch):
                ahead = k + PREFETCH_DISTANCE
                if ahead < batch:
                    r = _strings_at(parts, part_of, ahead)
                    if 0 <= idx[ahead] < r.n:
                        prefetch(r.starts + idx[ahead])
                        prefetch(r.ends + idx[ahead])
                r = _strings_at(parts, part_of, k)
                i = idx[k]
                if i < 0 or i >= r.n or not _valid_span(r.starts[i], r.ends[i], r.length):
                    bad = k
                    break
                src[k] = r.starts[i]
                if r.ends[i] - src[k] > PY_SSIZE_T_MAX - 1 - off[k]:
                    bad = batch
                    break
                off[k + 1] = off[k] + r.ends[i] - src[k]
        if bad == batch:
            raise MemoryError(f"a batch of {batch} strings is too large for memory")
        if bad >= 0:
            source._batch_error(indices, bad)
        gathered = <char*>malloc(off[batch] + 1)
        if gathered == NULL:
            raise MemoryError(f"cannot allocate {off[batch]} bytes for a batch of strings")
        with nogil:
            _watch_start(&w, not advised)
            for k in range(batch):
                if _slow(&w, k):
                    _watched(&w, _advise_spans(_strings_span, parts, _parts_from(part_of, k), idx + k, batch - k,
                                               WATCH_PROBES))
                ahead = k + PREFETCH_DISTANCE
                if ahead < batch:
                    _prefetch_bytes(_strings_at(parts, part_of, ahead).data + src[ahead], off[ahead + 1] - off[ahead])
                memcpy(gathered + off[k], _strings_at(parts, part_of, k).data + src[k], off[k + 1] - off[k])
        if as_bytes:
            return [PyBytes_FromStringAndSize(gathered + off[k], off[k + 1] - off[k]) for k in range(batch)]
        return [PyUnicode_DecodeUTF8(gathered + off[k], off[k + 1] - off[k], NULL) for k in range(batch)]
    finally:
        free(off)
        free(gathered)


@cython.final
cdef class StringsReader(_Offsets):
    """Offset lookup and UTF-8 decoding over the mapped files of a strings map.

    ``data`` is any buffer of bytes (the mapped ``data.ninja``); ``starts`` and ``ends`` are
    ``int64`` arrays of byte offsets, of which the first ``n = len(starts)`` are used.
    """

    def __cinit__(self, data, starts, ends, source=""):
        self.data_view = data
        self.data = <const char*>&self.data_view[0] if self.data_view.shape[0] else NULL
        self._init_offsets(starts, ends, self.data_view.shape[0], source, "string", "bytes")
        self.c.data = self.data
        self.c.starts = self.starts
        self.c.ends = self.ends
        self.c.n = self.n
        self.c.length = self.length

    cdef object _get(self, Py_ssize_t i, bint as_bytes):
        cdef int64_t start, end
        self._bounds(i, &start, &end)
        if end == start:
            return b"" if as_bytes else ""
        _advise_large(self.data + start, end - start)
        if as_bytes:
            return PyBytes_FromStringAndSize(self.data + start, end - start)
        return PyUnicode_DecodeUTF8(self.data + start, end - start, NULL)

    def get(self, i, bint as_bytes=False):
        """String ``i`` (an integer; negative counts from the end) decoded from UTF-8, or its
        raw bytes."""
        return self._get(_scalar_index(i, self.n), as_bytes)

    def verify(self, Py_ssize_t limit=20, bint utf8=True):
        """``(problems, unsound)`` of one pass over every string: the first ``limit`` problems
        (offsets outside the data, and with ``utf8`` bytes that are not UTF-8), one line each,
        and the number of unsound strings in all. ``([], 0)`` when every string is sound."""
        cdef list problems = []
        cdef Py_ssize_t i, unsound = 0
        cdef int64_t start, end
        for i in range(self.n):
            start = self.starts[i]
            end = self.ends[i]
            if not _valid_span(start, end, self.length):
                unsound += 1
                if len(problems) < limit:
                    problems.append(f"{self.source}: corrupted offsets for string {i}: [{start}, {end}) "
                                    f"is not within the {self.length} stored bytes")
            elif utf8 and end > start:
                try:
                    PyUnicode_DecodeUTF8(self.data + start, end - start, NULL)
                except UnicodeDecodeError as exc:
                    unsound += 1
                    if len(problems) < limit:
                        problems.append(f"{self.source}: string {i} is not valid UTF-8 ({exc.reason} "
                                        f"at byte {exc.start})")
        return problems, unsound

    def get_many(self, const int64_t[::1] indices, bint as_bytes=False):
        """The strings (or raw bytes) at ``indices`` (``int64``, as from ``normalize_index``),
        as a list.

        Without the GIL, a first pass checks every string's offsets (fetching those of the
        strings that come next) and a second gathers their bytes into one buffer (fetching the
        bytes that come next); the strings are then decoded from that buffer, which is in the
        CPU's cache.
        """
        return _gather_strings(&self.c, NULL, _first(indices), indices.shape[0], as_bytes, self, indices,
                               &self.unprobed)

    def _batch_error(self, const int64_t[::1] indices, Py_ssize_t k):
        """Raise why the string at position ``k`` of a batch cannot be read."""
        self._raise_unreadable(indices[k])

    cdef void _advise_prefetch(self, const int64_t* idx, Py_ssize_t batch) noexcept nogil:
        _advise_spans(_strings_span, &self.c, NULL, idx, batch, PREFETCH_PROBES)

    def get_in(self, slice item, bint as_bytes=False):
        """The strings (or raw bytes) of a slice of the map (any step), as a list."""
        cdef const int64_t[::1] positions = _slice_positions(item, self.n)
        cdef Py_ssize_t k
        with nogil:
            _probed(_strings_span, &self.c, NULL, _first(positions), positions.shape[0], &self.unprobed)
        return [self._get(positions[k], as_bytes) for k in range(positions.shape[0])]
