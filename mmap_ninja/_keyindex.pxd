# cython: language_level=3
"""Declarations of the key index kernels (``_keyindex``): the hash of a key, which is part of
the file format of ``keys/index.ninja``."""

from libc.stdint cimport uint8_t, uint64_t

cdef uint64_t key_hash(const uint8_t* p, Py_ssize_t n) noexcept nogil
