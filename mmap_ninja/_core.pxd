# cython: language_level=3
"""Declarations shared by the compiled modules of mmap_ninja (``_core`` and ``_sharded``): the C
state of a ragged and of a strings map (``ragged_t``, ``strings_t``), the readers over one map,
and the batch kernels that run over a table of such states (one map, or the parts of a sharded
map)."""

cimport cython
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define MN_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 0)
    #else
    #define MN_PREFETCH(p) ((void)0)
    #endif
    """
    void prefetch "MN_PREFETCH"(const void* p) noexcept nogil

cdef enum:
    # Largest number of axes a stored sample may have (NumPy 1.x allows 32, NumPy 2.x 64).
    MAX_SAMPLE_NDIM = 32
    # How many samples ahead a batch gather asks the CPU to fetch offsets and data.
    PREFETCH_DISTANCE = 8
    # How many bytes of a sample's data are fetched ahead (the rest streams in sequence).
    PREFETCH_BYTES = 1024

cdef enum:
    # Why a sample cannot go into a padded batch.
    PAD_OK = 0
    PAD_CORRUPTED = 1
    PAD_SCALAR = 2
    PAD_OTHER_ROW_SHAPE = 3
    # Why a sample cannot go into a batch copied back to back.
    TAKE_TOO_LARGE = 4

# Converts ``n`` elements at ``src`` to elements of another type at ``dst``.
ctypedef void (*convert_t)(const char* src, char* dst, Py_ssize_t n) noexcept nogil


# The C state of one ragged map, read by the kernels below without the GIL. A batch reads
# from an array of these (``parts``), sample ``k`` from ``parts[part_of[k]]``; ``part_of``
# is NULL when all come from ``parts[0]`` (a plain map). All parts hold the same dtype.
ctypedef struct ragged_t:
    char* base                      # the flattened data
    Py_ssize_t itemsize
    const int64_t* starts           # element offsets of sample i: [starts[i], ends[i])
    const int64_t* ends
    int64_t n                       # samples
    int64_t length                  # elements of data
    bint nested                     # shapes from shape_values, else 1-d sizes
    const int64_t* sizes
    const int64_t* shape_values
    const int64_t* shape_starts
    const int64_t* shape_ends
    int64_t n_shape_values


# The C state of one strings map, read by the kernels below without the GIL (as ``ragged_t``).
ctypedef struct strings_t:
    const char* data
    const int64_t* starts           # byte offsets of string i: [starts[i], ends[i])
    const int64_t* ends
    int64_t n
    int64_t length                  # bytes of data


cdef inline void _prefetch_bytes(const char* ptr, Py_ssize_t nbytes) noexcept nogil:
    """Ask the CPU for the first ``PREFETCH_BYTES`` of ``nbytes`` at ``ptr``."""
    cdef Py_ssize_t done = 0
    while done < nbytes and done < PREFETCH_BYTES:
        prefetch(ptr + done)
        done += 64


cdef inline const int64_t* _first(const int64_t[::1] view) noexcept nogil:
    return &view[0] if view.shape[0] else NULL


cdef inline bint _valid_span(int64_t start, int64_t end, int64_t length) noexcept nogil:
    return 0 <= start and start <= end and end <= length


cdef inline object _empty_int64(Py_ssize_t size):
    cdef cnp.npy_intp dims[1]
    dims[0] = size
    return cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)


cdef Py_ssize_t _scalar_index(object item, Py_ssize_t n) except -1
cdef object _slice_positions(slice item, Py_ssize_t n)
cdef object _take(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                  cnp.dtype descr, bint nested, object source, object indices, object alloc=*)
cdef tuple _padded(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                   cnp.dtype descr, pad_value, Py_ssize_t max_len, out, object source, object indices,
                   object dtype=*, object alloc=*)
cdef list _gather_strings(const strings_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                          bint as_bytes, object source, object indices)
cdef int _raise_batch_error(reason, i, first_i, sample) except -1


cdef class _Offsets:
    cdef const int64_t[::1] starts_view
    cdef const int64_t[::1] ends_view
    cdef const int64_t* starts
    cdef const int64_t* ends
    cdef int64_t length
    cdef readonly Py_ssize_t n
    cdef readonly object source
    cdef str item_name, unit_name

    cdef _init_offsets(self, starts, ends, int64_t length, source, str item_name, str unit_name)
    cdef int _bounds(self, Py_ssize_t i, int64_t* start, int64_t* end) except -1
    cdef int _raise_unreadable(self, int64_t i) except -1


@cython.final
cdef class RaggedReader(_Offsets):
    cdef cnp.ndarray data
    cdef cnp.dtype descr
    cdef ragged_t c
    cdef const int64_t[::1] sizes_view
    cdef const int64_t[::1] shape_values_view
    cdef const int64_t[::1] shape_starts_view
    cdef const int64_t[::1] shape_ends_view
    cdef int flags

    cdef int _raise_invalid(self, Py_ssize_t i) except -1
    cdef int _raise_at(self, int64_t i) except -1
    cdef object _sample(self, Py_ssize_t i)


@cython.final
cdef class RaggedBatch:
    cdef readonly cnp.ndarray values
    cdef readonly cnp.ndarray offsets
    cdef readonly cnp.ndarray shape_values
    cdef readonly cnp.ndarray shape_offsets
    cdef const int64_t* off
    cdef const int64_t* soff
    cdef const int64_t* dims
    cdef char* base
    cdef Py_ssize_t itemsize, batch, n_values, n_dims
    cdef int flags

    cdef _set(self, cnp.ndarray values, cnp.ndarray offsets, cnp.ndarray shape_values, cnp.ndarray shape_offsets)
    cdef int _nd(self, Py_ssize_t k) noexcept
    cdef object _item(self, Py_ssize_t k)


@cython.final
cdef class StringsReader(_Offsets):
    cdef const unsigned char[::1] data_view
    cdef const char* data
    cdef strings_t c

    cdef object _get(self, Py_ssize_t i, bint as_bytes)
