# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled readers of sharded maps: many parts read as one.

``ShardedRaggedReader``, ``ShardedStringsReader`` and ``ShardedRowsReader`` hold the C state of
every part they have opened (a part is opened on its first read), find the part of each index
of a batch by binary search and gather the batch from all parts in one pass without the GIL,
with the kernels of ``_core`` (declared in ``_core.pxd``), results in the caller's order.
"""

from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

cimport cython
cimport numpy as cnp

import numpy as np

from mmap_ninja._core cimport (
    COLD_PROBES,
    PAD_CORRUPTED,
    PREFETCH_DISTANCE,
    PREFETCH_PROBES,
    WATCH_PROBES,
    RaggedReader,
    StringsReader,
    _advise_ragged,
    _advise_spans,
    _empty_int64,
    _first,
    _gather_strings,
    _padded,
    _prefetch_bytes,
    _probed_ragged,
    _raise_batch_error,
    _rows_span,
    _scalar_index,
    _slice_positions,
    _slow,
    _strings_span,
    _take,
    _watch_start,
    _watched,
    ragged_t,
    rows_t,
    strings_t,
    watch_t,
)

cnp.import_array()


cdef class _Parts:
    """The parts of a sharded map: part ``p`` holds its samples ``bounds[p]:bounds[p + 1]``
    (``bounds``: ``int64``, ``parts + 1`` non-decreasing entries from 0). A part is opened on
    its first read by ``opener(p)``, which returns its reader. ``source`` names the map in
    error messages."""

    cdef const int64_t[::1] bounds_view
    cdef const int64_t* bounds
    cdef readonly Py_ssize_t n_parts
    cdef readonly int64_t n
    cdef list readers
    cdef unsigned char* ready
    cdef void* table                # the C state of every part: an array of a subclass's struct
    cdef object opener
    cdef readonly object source
    cdef size_t entry_size

    cdef _init_parts(self, bounds, opener, source, size_t entry_size):
        array = np.ascontiguousarray(bounds, dtype=np.int64)
        if array.ndim != 1 or array.shape[0] < 1 or array[0] != 0 or (np.diff(array) < 0).any():
            raise ValueError(f"{source}: part bounds must be non-decreasing from 0, got {array[:8]}")
        if array.shape[0] - 1 > 2 ** 31 - 1:
            raise ValueError(f"{source}: too many parts ({array.shape[0] - 1})")
        self.bounds_view = array
        self.bounds = &self.bounds_view[0]
        self.n_parts = array.shape[0] - 1
        self.n = self.bounds[self.n_parts]
        self.readers = [None] * self.n_parts
        self.ready = <unsigned char*>calloc(self.n_parts + 1, 1)
        self.table = calloc(self.n_parts + 1, entry_size)
        if self.ready == NULL or self.table == NULL:
            raise MemoryError(f"cannot allocate the table of {self.n_parts} parts")
        self.opener = opener
        self.source = source
        self.entry_size = entry_size

    def __dealloc__(self):
        free(self.ready)
        free(self.table)

    def __len__(self):
        return self.n

    cdef inline Py_ssize_t _find(self, int64_t i) noexcept nogil:
        """The part that holds sample ``i`` (``0 <= i < n``): the last with ``bounds[p] <= i``."""
        cdef Py_ssize_t lo = 0, hi = self.n_parts - 1, mid
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if self.bounds[mid] <= i:
                lo = mid
            else:
                hi = mid - 1
        return lo

    cdef int _open(self, Py_ssize_t p) except -1:
        reader = self.opener(p)
        if not self.ready[p]:  # another thread may have opened it while the opener ran
            self._adopt(p, reader)
            self.readers[p] = reader
            self.ready[p] = 1
        return 0

    cdef int _adopt(self, Py_ssize_t p, object reader) except -1:
        """Check ``reader`` of part ``p`` and record its C state."""
        return 0

    def release(self, Py_ssize_t p):
        """Forget part ``p``'s reader (its files are unmapped once nothing else holds them);
        the part is opened again by its next read. Only while no read of this reader runs."""
        if p < 0 or p >= self.n_parts:
            raise IndexError(f"part {p} is out of range for {self.n_parts} parts")
        self.ready[p] = 0
        memset(<char*>self.table + p * self.entry_size, 0, self.entry_size)
        self.readers[p] = None

    def opened(self):
        """The parts whose readers are open, in order."""
        return [p for p in range(self.n_parts) if self.ready[p]]

    cdef int _locate(self, const int64_t* idx, Py_ssize_t batch, int32_t* part_of, int64_t* local,
                     bint open_parts=True) except -1:
        """The part of every index of a batch and the index in it; every part read is opened
        unless ``open_parts`` is false."""
        cdef Py_ssize_t k, bad = -1
        cdef int64_t i
        cdef int32_t p
        with nogil:
            for k in range(batch):
                i = idx[k]
                if i < 0 or i >= self.n:
                    bad = k
                    break
                p = <int32_t>self._find(i)
                part_of[k] = p
                local[k] = i - self.bounds[p]
        if bad >= 0:
            raise IndexError(f"index {idx[bad]} is out of bounds for a map of length {self.n}")
        for k in range(batch):
            if open_parts and not self.ready[part_of[k]]:
                self._open(part_of[k])
        return 0

    cdef int _locate_batch(self, const int64_t[::1] indices, int32_t** part_of, int64_t** local) except -1:
        """Allocate ``part_of`` and ``local`` (the caller frees them) and locate ``indices``."""
        cdef Py_ssize_t batch = indices.shape[0]
        part_of[0] = <int32_t*>malloc((batch + 1) * sizeof(int32_t))
        local[0] = <int64_t*>malloc((batch + 1) * sizeof(int64_t))
        if part_of[0] == NULL or local[0] == NULL:
            raise MemoryError(f"cannot allocate a batch of {batch} samples")
        return self._locate(_first(indices), batch, part_of[0], local[0])

    cdef void _advise_located(self, const int32_t* part_of, const int64_t* local,
                              Py_ssize_t batch) noexcept nogil:
        """Tell the kernel the bytes of a located batch (see ``prefetch``): each kind of part
        its own."""
        pass

    def prefetch(self, const int64_t[::1] indices):
        """Start reading the samples at ``indices`` (``int64``) into the page cache in the
        background, and return at once (``IndexError`` for an index out of range); the parts
        they lie in are opened. A few of them are looked up first, and when all are in the page
        cache nothing is asked."""
        cdef int32_t* part_of = NULL
        cdef int64_t* local = NULL
        try:
            self._locate_batch(indices, &part_of, &local)
            with nogil:
                self._advise_located(part_of, local, indices.shape[0])
        finally:
            free(part_of)
            free(local)

    def locate(self, const int64_t[::1] indices, bint open_parts=True):
        """``(parts, local)``: the part (``int32``) of each of ``indices`` (``int64`` positions
        in the map) and the position in it (``int64``); opens the parts read unless
        ``open_parts`` is false."""
        cdef Py_ssize_t batch = indices.shape[0]
        parts = np.empty(batch, dtype=np.int32)
        local = _empty_int64(batch)
        self._locate(_first(indices), batch, <int32_t*>cnp.PyArray_DATA(parts), <int64_t*>cnp.PyArray_DATA(local),
                     open_parts)
        return parts, local

    def part(self, i):
        """``(p, j)``: sample ``i`` (negative counts from the end) is sample ``j`` of part ``p``."""
        cdef Py_ssize_t j = _scalar_index(i, self.n)
        cdef Py_ssize_t p = self._find(j)
        return p, j - self.bounds[p]


@cython.final
cdef class ShardedRaggedReader(_Parts):
    """Samples of the ragged parts of a sharded map (each read by a ``RaggedReader`` of
    ``dtype``), by their index in the whole map: views, and batches gathered from every part in
    one pass without the GIL, in the caller's order."""

    cdef ragged_t* parts
    cdef cnp.dtype descr
    cdef int unprobed  # as RaggedReader's

    def __cinit__(self, bounds, opener, dtype, source=""):
        self._init_parts(bounds, opener, source, sizeof(ragged_t))
        self.descr = np.dtype(dtype)
        self.parts = <ragged_t*>self.table

    @property
    def dtype(self):
        return self.descr

    cdef int _adopt(self, Py_ssize_t p, object reader) except -1:
        cdef RaggedReader part
        cdef int64_t length = self.bounds[p + 1] - self.bounds[p]
        if not isinstance(reader, RaggedReader):
            raise TypeError(f"{self.source}: part {p} was opened as {type(reader).__name__}, not a ragged map")
        part = <RaggedReader>reader
        if part.descr != self.descr:
            raise ValueError(f"{part.source}: holds samples of {part.descr}, the map's are of {self.descr}")
        if part.n < length:
            raise ValueError(f"{part.source}: holds {part.n} samples, the manifest says {length}")
        self.parts[p] = part.c
        self.parts[p].n = length
        return 0

    cdef object _sample(self, Py_ssize_t i):
        cdef Py_ssize_t p = self._find(i)
        if not self.ready[p]:
            self._open(p)
        return (<RaggedReader>self.readers[p])._sample(i - self.bounds[p])

    def sample(self, i):
        """Sample ``i`` (negative counts from the end), a view of its part's data."""
        return self._sample(_scalar_index(i, self.n))

    def samples(self, const int64_t[::1] indices):
        """The samples at ``indices`` (``int64``, as from ``normalize_index``), as a list of
        views."""
        cdef Py_ssize_t k, batch = indices.shape[0]
        cdef list out = []
        parts, local = self.locate(indices)
        cdef const int32_t[::1] part_of = parts
        cdef const int64_t[::1] at = local
        if batch:
            with nogil:
                _probed_ragged(self.parts, &part_of[0], &at[0], batch, &self.unprobed)
        for k in range(batch):
            out.append((<RaggedReader>self.readers[part_of[k]])._sample(at[k]))
        return out

    def samples_in(self, slice item):
        """The samples of a slice of the map (any step), as a list of views."""
        return self.samples(_slice_positions(item, self.n))

    cdef bint _nested(self, const int32_t* part_of, Py_ssize_t batch) noexcept nogil:
        cdef Py_ssize_t k
        for k in range(batch):
            if self.parts[part_of[k]].nested:
                return True
        return False

    def _batch_error(self, const int64_t[::1] indices, Py_ssize_t k, int reason):
        """Raise why the sample at position ``k`` of a batch cannot join it."""
        if reason == PAD_CORRUPTED:
            p, j = self.part(indices[k])
            (<RaggedReader>self.readers[p])._raise_at(j)
        _raise_batch_error(reason, indices[k], indices[0], self.sample)

    def _first_row_shape(self):
        return tuple(np.shape(self._sample(0))[1:]) if self.n else ()

    cdef object _gather(self, const int64_t[::1] indices, bint padded, pad_value, Py_ssize_t max_len, out,
                        dtype=None, alloc=None, bint every_axis=False):
        """``_take`` or ``_padded`` of the samples at ``indices``, each read from its part."""
        cdef Py_ssize_t batch = indices.shape[0]
        cdef int32_t* part_of = NULL
        cdef int64_t* local = NULL
        try:
            self._locate_batch(indices, &part_of, &local)
            if padded:
                return _padded(self.parts, part_of, local, batch, self.descr, pad_value, max_len, out, self, indices,
                               &self.unprobed, dtype, alloc, every_axis)
            return _take(self.parts, part_of, local, batch, self.descr, self._nested(part_of, batch), self, indices,
                         &self.unprobed, alloc)
        finally:
            free(part_of)
            free(local)

    cdef void _advise_located(self, const int32_t* part_of, const int64_t* local,
                              Py_ssize_t batch) noexcept nogil:
        _advise_ragged(self.parts, part_of, local, batch, PREFETCH_PROBES)

    def take(self, const int64_t[::1] indices, alloc=None):
        """The samples at ``indices`` (``int64``) copied back to back into one new buffer, as
        a ``RaggedBatch`` (see ``RaggedReader.take``)."""
        return self._gather(indices, False, None, -1, None, None, alloc)

    def padded(self, const int64_t[::1] indices, pad_value, Py_ssize_t max_len=-1, out=None, dtype=None,
               alloc=None, bint every_axis=False):
        """The samples at ``indices`` padded into one array ``(B, L, *row_shape)``, and their
        lengths (and with ``every_axis`` their shapes; see ``RaggedReader.padded``)."""
        return self._gather(indices, True, pad_value, max_len, out, dtype, alloc, every_axis)


@cython.final
cdef class ShardedStringsReader(_Parts):
    """Strings of the parts of a sharded map (each read by a ``StringsReader``), by their index
    in the whole map, a batch gathered from every part in one pass without the GIL."""

    cdef strings_t* parts
    cdef int unprobed  # as RaggedReader's

    def __cinit__(self, bounds, opener, source=""):
        self._init_parts(bounds, opener, source, sizeof(strings_t))
        self.parts = <strings_t*>self.table

    cdef int _adopt(self, Py_ssize_t p, object reader) except -1:
        cdef StringsReader part
        cdef int64_t length = self.bounds[p + 1] - self.bounds[p]
        if not isinstance(reader, StringsReader):
            raise TypeError(f"{self.source}: part {p} was opened as {type(reader).__name__}, not a strings map")
        part = <StringsReader>reader
        if part.n < length:
            raise ValueError(f"{part.source}: holds {part.n} strings, the manifest says {length}")
        self.parts[p] = part.c
        self.parts[p].n = length
        return 0

    def get(self, i, bint as_bytes=False):
        """String ``i`` (negative counts from the end), or its raw bytes."""
        cdef Py_ssize_t j = _scalar_index(i, self.n)
        cdef Py_ssize_t p = self._find(j)
        if not self.ready[p]:
            self._open(p)
        return (<StringsReader>self.readers[p])._get(j - self.bounds[p], as_bytes)

    def _batch_error(self, const int64_t[::1] indices, Py_ssize_t k):
        p, j = self.part(indices[k])
        (<StringsReader>self.readers[p])._raise_unreadable(j)

    cdef void _advise_located(self, const int32_t* part_of, const int64_t* local,
                              Py_ssize_t batch) noexcept nogil:
        _advise_spans(_strings_span, self.parts, part_of, local, batch, PREFETCH_PROBES)

    def get_many(self, const int64_t[::1] indices, bint as_bytes=False):
        """The strings (or raw bytes) at ``indices`` (``int64``), as a list (see
        ``StringsReader.get_many``)."""
        cdef Py_ssize_t batch = indices.shape[0]
        cdef int32_t* part_of = NULL
        cdef int64_t* local = NULL
        try:
            self._locate_batch(indices, &part_of, &local)
            return _gather_strings(self.parts, part_of, local, batch, as_bytes, self, indices, &self.unprobed)
        finally:
            free(part_of)
            free(local)


@cython.final
cdef class ShardedRowsReader(_Parts):
    """Rows of the fixed-shape parts of a sharded map (each a C-contiguous array of rows of one
    shape and dtype), by their index in the whole map, gathered from every part in one pass
    without the GIL."""

    cdef rows_t* parts
    cdef readonly object row_shape
    cdef cnp.dtype descr
    cdef Py_ssize_t row_bytes

    def __cinit__(self, bounds, opener, source=""):
        self._init_parts(bounds, opener, source, sizeof(rows_t))
        self.parts = <rows_t*>self.table
        self.row_shape = None

    @property
    def dtype(self):
        return self.descr

    cdef int _adopt(self, Py_ssize_t p, object rows) except -1:
        cdef int64_t length = self.bounds[p + 1] - self.bounds[p]
        if not isinstance(rows, np.ndarray) or rows.ndim < 1 or rows.dtype.hasobject:
            raise TypeError(f"{self.source}: part {p} is not an array of rows")
        if self.row_shape is None:
            self.row_shape = tuple(rows.shape[1:])
            self.descr = rows.dtype
            self.row_bytes = rows.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        elif tuple(rows.shape[1:]) != self.row_shape or rows.dtype != self.descr:
            raise ValueError(f"{self.source}: part {p} holds rows {tuple(rows.shape[1:])} of {rows.dtype}, "
                             f"the map's are {self.row_shape} of {self.descr}")
        if rows.shape[0] < length:
            raise ValueError(f"{self.source}: part {p} holds {rows.shape[0]} rows, the manifest says {length}")
        # rows of another layout (a Fortran-ordered map) are copied by numpy, one by one
        self.parts[p].base = cnp.PyArray_BYTES(<cnp.ndarray>rows) if rows.flags.c_contiguous else NULL
        self.parts[p].n = length
        self.parts[p].row_bytes = self.row_bytes
        return 0

    def row(self, i):
        """Row ``i`` (negative counts from the end), a view of its part."""
        cdef Py_ssize_t j = _scalar_index(i, self.n)
        cdef Py_ssize_t p = self._find(j)
        if not self.ready[p]:
            self._open(p)
        return self.readers[p][j - self.bounds[p]]

    cdef void _advise_located(self, const int32_t* part_of, const int64_t* local,
                              Py_ssize_t batch) noexcept nogil:
        _advise_spans(_rows_span, self.parts, part_of, local, batch, PREFETCH_PROBES)

    def take(self, const int64_t[::1] indices):
        """The rows at ``indices`` (``int64``) copied into a new array ``(B, *row_shape)``."""
        cdef Py_ssize_t batch = indices.shape[0], k
        cdef int32_t* part_of = NULL
        cdef int64_t* local = NULL
        cdef char* dst
        cdef const rows_t* r
        cdef bint others = False
        cdef watch_t w
        try:
            self._locate_batch(indices, &part_of, &local)
            if self.row_shape is None and self.n:
                self.row(0)  # an empty batch: the first part gives the shape of a row
            if self.row_shape is None:
                return np.empty((batch,), dtype=np.float64)
            out = np.empty((batch,) + self.row_shape, dtype=self.descr)
            dst = cnp.PyArray_BYTES(<cnp.ndarray>out)
            with nogil:
                _watch_start(&w, not _advise_spans(_rows_span, self.parts, part_of, local, batch, COLD_PROBES))
                for k in range(batch):
                    if _slow(&w, k):
                        _watched(&w, _advise_spans(_rows_span, self.parts, part_of + k, local + k, batch - k,
                                                   WATCH_PROBES))
                    if k + PREFETCH_DISTANCE < batch:
                        r = self.parts + part_of[k + PREFETCH_DISTANCE]
                        if r.base != NULL:
                            _prefetch_bytes(r.base + local[k + PREFETCH_DISTANCE] * self.row_bytes, self.row_bytes)
                    r = self.parts + part_of[k]
                    if r.base != NULL:
                        memcpy(dst + k * self.row_bytes, r.base + local[k] * self.row_bytes, self.row_bytes)
                    else:
                        others = True
            if others:
                for k in range(batch):
                    if self.parts[part_of[k]].base == NULL:
                        out[k] = self.readers[part_of[k]][local[k]]
            return out
        finally:
            free(part_of)
            free(local)
