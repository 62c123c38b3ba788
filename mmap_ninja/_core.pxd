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

cdef extern from "<sys/mman.h>" nogil:
    int mn_madvise "madvise"(void* addr, size_t length, int advice)
    int mn_mincore "mincore"(void* addr, size_t length, unsigned char* vec)
    enum: MADV_WILLNEED
    enum: MADV_RANDOM

cdef extern from "<unistd.h>" nogil:
    long mn_sysconf "sysconf"(int name)
    enum: _SC_PAGESIZE

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clock, timespec* ts)
    enum: CLOCK_MONOTONIC

cdef enum:
    # How many samples of a batch are looked up in the page cache (``mincore``, about a
    # microsecond each) to decide whether the batch is cold: then the kernel is told every
    # range of the batch before the copy starts, so that it reads them all at once rather than
    # one page fault at a time.
    COLD_PROBES = 1
    # ``prefetch`` probes more samples (it runs ahead of the reads, off their path) and asks
    # nothing of the kernel when all are in the page cache, so it costs little on warm data.
    PREFETCH_PROBES = 4
    # While a batch is copied, every WATCH_EVERY samples the time taken is looked at (about
    # 20 ns): more than FAULT_NS means pages came from disk, and the kernel is told the ranges
    # of the rest of the batch (a batch only partly in the page cache).
    WATCH_EVERY = 16
    FAULT_NS = 250000
    WATCH_PROBES = 2
    # A probe costs a few per cent of a batch in memory (a whole batch of views, which copies
    # nothing, more): after a probe finds a reader's batch in memory, its next UNPROBED
    # batches are not probed, the time taken by their copies standing guard (a probe that
    # finds a batch on disk probes every batch again).
    UNPROBED = 3
    # Bytes asked of the kernel per ``madvise`` call (see ``_advice_flush``): no more than the
    # smallest read-ahead a device is set up with (128 KiB by default).
    ADVICE_CHUNK = 131072
    # Samples read alone that are larger than this are asked for whole when cold (see
    # ``_advise_large``); smaller ones are a few page faults.
    LARGE_SAMPLE = 32768

cdef enum:
    # Why a sample cannot go into a padded batch.
    PAD_OK = 0
    PAD_CORRUPTED = 1
    PAD_SCALAR = 2
    PAD_OTHER_ROW_SHAPE = 3
    # Why a sample cannot go into a batch copied back to back.
    TAKE_TOO_LARGE = 4
    # Why a sample cannot go into a batch padded along every axis.
    PAD_OTHER_NDIM = 5

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


# The rows of one fixed-shape map (C-ordered; ``base`` NULL when they are not), read without
# the GIL (as ``ragged_t``).
ctypedef struct rows_t:
    const char* base
    int64_t n
    Py_ssize_t row_bytes


# Where the bytes of the sample at batch position ``k`` lie, for a table of parts of one kind
# (``ragged_t``, ``strings_t`` or ``rows_t``): ``False`` when its index or offsets are not sound.
ctypedef bint (*span_t)(const void* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t k,
                        const char** ptr, Py_ssize_t* nbytes) noexcept nogil


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


# Page-aligned address ranges told to the kernel (``madvise(MADV_WILLNEED)``) as one call where
# the ranges added one after another touch or overlap.
ctypedef struct advice_t:
    size_t page
    size_t lo
    size_t hi
    bint cold                       # whether a probe found a page that is not resident


cdef inline void _advice_start(advice_t* a) noexcept nogil:
    cdef long page = mn_sysconf(_SC_PAGESIZE)
    a.page = <size_t>page if page > 0 else 4096
    a.lo = 0
    a.hi = 0
    a.cold = False


cdef inline void _advice_flush(advice_t* a) noexcept nogil:
    """Tell the kernel the pending range, ADVICE_CHUNK bytes per call: Linux reads at most
    the device's read-ahead (or optimal I/O) size per call and drops the rest."""
    cdef size_t at = a.lo, size
    while at < a.hi:
        size = a.hi - at if a.hi - at < ADVICE_CHUNK else ADVICE_CHUNK
        mn_madvise(<void*>at, size, MADV_WILLNEED)  # advisory: a failure changes nothing
        at += size
    a.lo = 0
    a.hi = 0


cdef inline void _advise(advice_t* a, const char* ptr, Py_ssize_t nbytes) noexcept nogil:
    """Add the bytes ``[ptr, ptr + nbytes)`` to the ranges told to the kernel."""
    cdef size_t lo, hi
    if ptr == NULL or nbytes <= 0:
        return
    lo = (<size_t>ptr) & ~(a.page - 1)
    hi = ((<size_t>ptr) + <size_t>nbytes + a.page - 1) & ~(a.page - 1)
    if a.hi > a.lo and lo <= a.hi and hi >= a.lo:
        if lo < a.lo:
            a.lo = lo
        if hi > a.hi:
            a.hi = hi
        return
    _advice_flush(a)
    a.lo = lo
    a.hi = hi


cdef inline void _probe(advice_t* a, const char* ptr, Py_ssize_t nbytes) noexcept nogil:
    """Note whether the first page of ``[ptr, ptr + nbytes)`` is not in the page cache."""
    cdef unsigned char vec = 1
    if a.cold or ptr == NULL or nbytes <= 0:
        return
    if mn_mincore(<void*>((<size_t>ptr) & ~(a.page - 1)), 1, &vec) == 0 and not (vec & 1):
        a.cold = True


# The time a batch copy takes, looked at every WATCH_EVERY samples (see FAULT_NS).
ctypedef struct watch_t:
    int64_t last
    bint on


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void _watch_start(watch_t* w, bint on) noexcept nogil:
    w.on = on
    w.last = _now_ns() if on else 0


cdef inline bint _slow(watch_t* w, Py_ssize_t k) noexcept nogil:
    """At every WATCH_EVERY-th position ``k`` of a copy being watched: whether the samples
    since the last look took longer than a read from disk. Slow copies have other causes too
    (fresh pages of the output, another process on the core), so the caller then looks up
    WATCH_PROBES of the samples left (``_watched``) before it asks the kernel for them."""
    cdef int64_t now
    if not w.on or k == 0 or k % WATCH_EVERY != 0:
        return False
    now = _now_ns()
    cdef bint slow = now - w.last > FAULT_NS
    w.last = now
    return slow


cdef inline void _watched(watch_t* w, bint advised) noexcept nogil:
    """After a slow stretch: the watch ends once the rest of the batch was asked for."""
    if advised:
        w.on = False


cdef inline const int32_t* _parts_from(const int32_t* part_of, Py_ssize_t k) noexcept nogil:
    """The parts of a batch's samples from position ``k`` on (NULL: all of one map)."""
    return part_of + k if part_of != NULL else NULL


cdef inline void _keep_resident(const void* ptr, Py_ssize_t nbytes) noexcept nogil:
    """Start reading all of ``[ptr, ptr + nbytes)`` (offsets and shapes, which every read
    consults) into the page cache in the background."""
    cdef advice_t a
    _advice_start(&a)
    _advise(&a, <const char*>ptr, nbytes)
    _advice_flush(&a)


cdef inline void _advise_large(const char* ptr, Py_ssize_t nbytes) noexcept nogil:
    """A sample of more than LARGE_SAMPLE bytes read alone: when its first page is not in the
    page cache, tell the kernel all of it (the data is mapped for random access, so its pages
    would otherwise come one page fault at a time)."""
    cdef advice_t a
    if nbytes <= LARGE_SAMPLE:
        return
    _advice_start(&a)
    _probe(&a, ptr, nbytes)
    if a.cold:
        _advise(&a, ptr, nbytes)
        _advice_flush(&a)


cdef inline Py_ssize_t _probe_step(Py_ssize_t batch, Py_ssize_t probes) noexcept nogil:
    """Every how many positions of a batch of ``batch`` a probe is made (``probes`` in all)."""
    return batch // probes if batch > probes else 1


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
                  cnp.dtype descr, bint nested, object source, object indices, int* unprobed, object alloc=*)
cdef tuple _padded(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                   cnp.dtype descr, pad_value, Py_ssize_t max_len, out, object source, object indices,
                   int* unprobed, object dtype=*, object alloc=*, bint every_axis=*)
cdef list _gather_strings(const strings_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                          bint as_bytes, object source, object indices, int* unprobed)
cdef bint _probed_ragged(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                         int* unprobed) noexcept nogil
cdef int _raise_batch_error(reason, i, first_i, sample) except -1
cdef bint _advise_ragged(const ragged_t* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t batch,
                         Py_ssize_t probes) noexcept nogil
cdef bint _strings_span(const void* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t k,
                        const char** ptr, Py_ssize_t* nbytes) noexcept nogil
cdef bint _advise_rows(const char* base, Py_ssize_t row_bytes, int64_t n, const int64_t* idx, Py_ssize_t batch,
                       Py_ssize_t probes) noexcept nogil
cdef bint _advise_spans(span_t span, const void* parts, const int32_t* part_of, const int64_t* idx,
                        Py_ssize_t batch, Py_ssize_t probes) noexcept nogil
cdef bint _rows_span(const void* parts, const int32_t* part_of, const int64_t* idx, Py_ssize_t k,
                     const char** ptr, Py_ssize_t* nbytes) noexcept nogil


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
    cdef void _advise_prefetch(self, const int64_t* idx, Py_ssize_t batch) noexcept nogil


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
    cdef int unprobed                 # batches left before the next probe (see UNPROBED)

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
    cdef int unprobed                 # as RaggedReader's

    cdef object _get(self, Py_ssize_t i, bint as_bytes)
