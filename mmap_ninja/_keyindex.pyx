# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled kernels of the key index of a map: a hash table of the keys' positions, stored in
``keys/index.ninja`` and updated in place.

The table is ``capacity`` (a power of two) slots of ``uint64``: 0 for an empty slot, else the
top ``TAG_BITS`` bits of the key's hash over ``position + 1`` (``POSITION_BITS`` bits). A key is
looked for from slot ``hash & (capacity - 1)`` on, one slot after the other (linear probing),
until an empty slot. A slot whose tag matches names a candidate position, which is a match only
if it is below the number of keys the reader knows and the key stored there has the same bytes:
slots left by a writer that died before it committed, or that point past what a reader knows,
are skipped, so the table never needs to be rolled back and readers never lock. Slots are only
ever filled, never changed, while a table is in use; a table that fills up past half is built
anew, beside it.

The hash (``key_hash``) is part of the file format: 64-bit, over the key's UTF-8 bytes, read
8 bytes at a time (little-endian) with a multiply-rotate step, finished by SplitMix64's mix.

Keys are stored back to back: key ``j`` is ``stored[ends[j - 1]:ends[j]]`` (from 0 for key
0), so a lookup reads one array of offsets, not the ``starts`` the strings map also keeps.
Every offset read from disk is checked before memory is touched: a key whose offsets fall
outside the key bytes raises ``ValueError``.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcmp
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define MN_KEY_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 0)
    #else
    #define MN_KEY_PREFETCH(p) ((void)0)
    #endif
    """
    void prefetch "MN_KEY_PREFETCH"(const void* p) noexcept nogil

POSITION_BITS = 40
TAG_BITS = 64 - POSITION_BITS
# The largest number of keys a table can index.
MAX_POSITIONS = (1 << POSITION_BITS) - 1

cdef uint64_t POSITION_MASK = (<uint64_t>1 << 40) - 1
cdef uint64_t TAG_MASK = ~POSITION_MASK

# What a kernel found wrong with the offsets of a stored key.
cdef enum:
    FOUND_OK = 0
    FOUND_BAD_OFFSETS = 1


cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _mix(uint64_t z) noexcept nogil:
    # SplitMix64's finalizer
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef uint64_t key_hash(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """The 64-bit hash of the ``n`` bytes at ``p`` (see the module docstring)."""
    cdef uint64_t h = <uint64_t>0x9E3779B97F4A7C15 ^ (<uint64_t>n * <uint64_t>0xC2B2AE3D27D4EB4F)
    cdef uint64_t word
    cdef Py_ssize_t i = 0
    cdef int k
    while i + 8 <= n:
        word = 0
        for k in range(8):  # little-endian on every machine
            word |= (<uint64_t>p[i + k]) << (8 * k)
        h = _rotl(h ^ (word * <uint64_t>0x87C37B91114253D5), 31) * <uint64_t>0x4CF5AD432745937F
        i += 8
    if i < n:
        word = 0
        k = 0
        while i < n:
            word |= (<uint64_t>p[i]) << (8 * k)
            i += 1
            k += 1
        h = _rotl(h ^ (word * <uint64_t>0x87C37B91114253D5), 31) * <uint64_t>0x4CF5AD432745937F
    return _mix(h)


cdef inline uint64_t _slot_value(uint64_t h, int64_t position) noexcept nogil:
    return (h & TAG_MASK) | (<uint64_t>(position + 1) & POSITION_MASK)


cdef inline int64_t _start_of(const int64_t* ends, int64_t j) noexcept nogil:
    """Where key ``j`` starts: keys are stored back to back, so right after key ``j - 1``."""
    return ends[j - 1] if j > 0 else 0


cdef int64_t _find(const uint64_t* slots, uint64_t capacity, const uint8_t* stored, Py_ssize_t stored_size,
                   const int64_t* ends, int64_t count, const uint8_t* key, Py_ssize_t key_size, uint64_t h,
                   int* status) noexcept nogil:
    """The position of the key, -1 when absent; ``status`` set on damaged offsets."""
    cdef uint64_t mask = capacity - 1
    cdef uint64_t at = h & mask
    cdef uint64_t tag = h & TAG_MASK
    cdef uint64_t slot, probes = 0
    cdef int64_t j, start, end
    while probes < capacity:
        slot = slots[at]
        if slot == 0:
            return -1
        if (slot & TAG_MASK) == tag:
            j = <int64_t>(slot & POSITION_MASK) - 1
            if 0 <= j < count:
                start = _start_of(ends, j)
                end = ends[j]
                if start < 0 or end < start or end > stored_size:
                    status[0] = FOUND_BAD_OFFSETS
                    return j
                if end - start == key_size and (key_size == 0 or memcmp(stored + start, key, key_size) == 0):
                    return j
        at = (at + 1) & mask
        probes += 1
    return -1


cdef void _find_batch(const uint64_t* table, uint64_t capacity, const uint8_t* base, Py_ssize_t stored_size,
                      const int64_t* ends, int64_t count, const uint8_t** keys, const Py_ssize_t* sizes,
                      Py_ssize_t n, uint64_t* hashes, int64_t* found, int* status, int64_t* bad) noexcept nogil:
    """``found[i]``: the position of key ``i`` (``sizes[i]`` bytes at ``keys[i]``), -1 when
    absent. The keys' lookups are independent: each pass asks the memory for what the next one
    reads, for all keys at once, so that the misses of a batch overlap instead of following one
    another (the slot, then the candidate's end offsets, then its bytes)."""
    cdef uint64_t mask = capacity - 1, slot
    cdef Py_ssize_t i
    cdef int64_t j, start
    for i in range(n):
        if sizes[i] < 0:  # a key no stored key can equal
            continue
        hashes[i] = key_hash(keys[i], sizes[i])
        prefetch(table + (hashes[i] & mask))
    for i in range(n):
        if sizes[i] < 0:
            found[i] = -1
            continue
        slot = table[hashes[i] & mask]
        j = <int64_t>(slot & POSITION_MASK) - 1
        found[i] = j if slot != 0 and (slot & TAG_MASK) == (hashes[i] & TAG_MASK) and 0 <= j < count else -1
        if found[i] > 0:
            prefetch(ends + j - 1)  # the end of key j - 1 (where key j starts) and of key j: one line, mostly
        if found[i] >= 0:
            prefetch(ends + j)
    for i in range(n):
        j = found[i]
        if j >= 0:
            start = _start_of(ends, j)
            if 0 <= start < stored_size:
                prefetch(base + start)
    for i in range(n):
        if sizes[i] < 0:
            continue
        found[i] = _find(table, capacity, base, stored_size, ends, count, keys[i], sizes[i], hashes[i], status)
        if status[0] != FOUND_OK:
            bad[0] = found[i]
            return


cdef inline const uint8_t* _bytes_at(const uint8_t[::1] data) noexcept nogil:
    return &data[0] if data.shape[0] else NULL


def hash_keys(const uint8_t[::1] data, const int64_t[::1] starts, const int64_t[::1] ends) -> np.ndarray:
    """The hash of each key ``data[starts[i]:ends[i]]`` (``uint64``); the offsets are checked
    first."""
    cdef Py_ssize_t n = starts.shape[0], i
    if ends.shape[0] != n:
        raise ValueError(f"{n} starts and {ends.shape[0]} ends")
    for i in range(n):
        if starts[i] < 0 or ends[i] < starts[i] or ends[i] > data.shape[0]:
            raise ValueError(f"the offsets of key {i} fall outside its bytes")
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] hashes = out
    cdef const uint8_t* base = _bytes_at(data)
    with nogil:
        for i in range(n):
            hashes[i] = key_hash(base + starts[i], ends[i] - starts[i])
    return out


def insert(uint64_t[::1] slots, const uint64_t[::1] hashes, int64_t first) -> None:
    """Fill a slot for each key ``i`` of ``hashes`` at position ``first + i``. The caller keeps
    the table at most half full and the keys unique."""
    cdef uint64_t capacity = slots.shape[0], mask = capacity - 1, at, probes
    cdef Py_ssize_t i, n = hashes.shape[0]
    if capacity == 0 or capacity & mask:
        raise ValueError(f"a key table holds a power of two of slots, not {capacity}")
    if first < 0 or first + n > MAX_POSITIONS:
        raise ValueError(f"positions {first} to {first + n} do not fit a key table")
    cdef bint full = False
    with nogil:
        for i in range(n):
            at = hashes[i] & mask
            probes = 0
            while slots[at] != 0 and probes < capacity:
                at = (at + 1) & mask
                probes += 1
            if probes == capacity:
                full = True
                break
            slots[at] = _slot_value(hashes[i], first + i)
    if full:
        raise ValueError("the key table is full")


cdef void _check_table(const uint64_t[::1] slots, const int64_t[::1] ends, int64_t count, str source) except *:
    cdef uint64_t capacity = slots.shape[0]
    if capacity == 0 or capacity & (capacity - 1):
        raise ValueError(f"{source}: a key table holds a power of two of slots, not {capacity}")
    if count < 0 or count > ends.shape[0]:
        raise ValueError(f"{source}: {count} keys asked of {ends.shape[0]} stored")


def find(const uint64_t[::1] slots, const uint8_t[::1] stored, const int64_t[::1] ends, int64_t count,
         const uint8_t[::1] keys, const int64_t[::1] offsets, str source="the key index") -> np.ndarray:
    """The position of each key ``keys[offsets[i]:offsets[i + 1]]`` among the first ``count``
    keys stored (``stored[ends[j - 1]:ends[j]]`` for key ``j``, from 0 for key 0), -1 where
    absent (``int64``)."""
    _check_table(slots, ends, count, source)
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    if n < 0:
        raise ValueError("offsets must hold at least one entry")
    for i in range(n):
        if offsets[i] < 0 or offsets[i + 1] < offsets[i] or offsets[i + 1] > keys.shape[0]:
            raise ValueError(f"the offsets of key {i} fall outside its bytes")
    pointers = np.empty(n, dtype=np.uintp)
    sizes_out = np.empty(n, dtype=np.intp)
    cdef size_t[::1] at = pointers
    cdef Py_ssize_t[::1] sizes = sizes_out
    cdef const uint8_t* query = _bytes_at(keys)
    for i in range(n):
        at[i] = <size_t>(query + offsets[i])
        sizes[i] = offsets[i + 1] - offsets[i]
    return _found(slots, stored, ends, count, pointers, sizes_out, source)


def find_strings(const uint64_t[::1] slots, const uint8_t[::1] stored, const int64_t[::1] ends, int64_t count,
                 keys, str source="the key index") -> np.ndarray:
    """``find`` of each ``str`` of ``keys`` (a sequence), read as UTF-8 where Python keeps it
    (nothing is joined or copied for ASCII keys); -1 for a ``str`` that is not valid UTF-8 (lone
    surrogates: no stored key equals it), ``TypeError`` for a key that is not a ``str``."""
    _check_table(slots, ends, count, source)
    cdef tuple held = tuple(keys)  # keeps every str, and so its UTF-8, alive while the GIL is released
    cdef Py_ssize_t n = len(held), i, size
    pointers = np.empty(n, dtype=np.uintp)
    sizes_out = np.empty(n, dtype=np.intp)
    cdef size_t[::1] at = pointers
    cdef Py_ssize_t[::1] sizes = sizes_out
    cdef const char* utf8
    for i in range(n):
        key = held[i]
        if type(key) is not str and not isinstance(key, str):
            raise TypeError(f"keys are str; key {i} is a {type(key).__name__}")
        try:
            utf8 = PyUnicode_AsUTF8AndSize(key, &size)
        except UnicodeEncodeError:
            at[i], sizes[i] = 0, -1
            continue
        at[i] = <size_t>utf8
        sizes[i] = size
    result = _found(slots, stored, ends, count, pointers, sizes_out, source)
    del held
    return result


cdef object _found(const uint64_t[::1] slots, const uint8_t[::1] stored, const int64_t[::1] ends, int64_t count,
                   pointers, sizes_out, str source):
    cdef Py_ssize_t n = len(pointers)
    cdef size_t[::1] at = pointers
    cdef Py_ssize_t[::1] sizes = sizes_out
    out = np.empty(n, dtype=np.int64)
    hashes_out = np.empty(n, dtype=np.uint64)
    cdef int64_t[::1] found = out
    cdef uint64_t[::1] hashes = hashes_out
    cdef int status = FOUND_OK
    cdef int64_t bad = -1
    if n == 0:
        return out
    with nogil:
        _find_batch(&slots[0], slots.shape[0], _bytes_at(stored), stored.shape[0],
                    &ends[0] if ends.shape[0] else NULL, count, <const uint8_t**>&at[0], &sizes[0], n,
                    &hashes[0], &found[0], &status, &bad)
    if status == FOUND_BAD_OFFSETS:
        raise ValueError(f"{source}: the offsets of key {bad} fall outside its bytes: damaged")
    return out


def misplaced(const uint64_t[::1] slots, const uint8_t[::1] stored, const int64_t[::1] ends, int64_t count) -> int:
    """The first of the first ``count`` stored keys (back to back: key ``j`` is
    ``stored[ends[j - 1]:ends[j]]``) that the table does not find at its own position (missing
    from it, damaged, or the same as an earlier key); -1 when every key is found where it is.
    The offsets are checked first: ``ValueError`` for the first bad ones."""
    _check_table(slots, ends, count, "the key index")
    cdef uint64_t capacity = slots.shape[0]
    cdef int64_t i, j, start
    for i in range(count):
        start = ends[i - 1] if i > 0 else 0
        if start < 0 or ends[i] < start or ends[i] > stored.shape[0]:
            raise ValueError(f"the offsets of key {i} fall outside its bytes")
    if count == 0:
        return -1
    cdef const uint8_t* base = _bytes_at(stored)
    cdef int status = FOUND_OK
    cdef int64_t first_bad = -1
    with nogil:
        for i in range(count):
            start = ends[i - 1] if i > 0 else 0
            j = _find(&slots[0], capacity, base, stored.shape[0], &ends[0], count, base + start, ends[i] - start,
                      key_hash(base + start, ends[i] - start), &status)
            if j != i:
                first_bad = i
                break
    return first_bad
