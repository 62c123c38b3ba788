# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, embedsignature=True
"""File-system primitives of mmap_ninja, compiled: mappings that hold no file descriptor, and
the atomic exchange of two directories.

- ``Mapping``: the first bytes of a file mapped into memory. The file is opened, mapped and
  closed at once: the mapping alone keeps the file's pages reachable, so a process can hold
  thousands of maps under the usual limit of 1,024 open descriptors. ``Mapping`` exposes the
  buffer protocol, so numpy arrays (and memoryviews) are built over it; the memory is unmapped
  when the last of them goes away, never earlier.
- ``exchange``: swap two directory entries in one step (Linux ``renameat2`` with
  ``RENAME_EXCHANGE``), which is how a map rebuilt aside replaces the old one while readers
  see either the old or the new one.
"""

from cpython.buffer cimport PyBuffer_FillInfo
from libc.errno cimport errno
from libc.stdlib cimport free, malloc
from posix.fcntl cimport O_CLOEXEC, O_RDONLY, O_RDWR, open
from posix.mman cimport (
    MADV_RANDOM,
    MAP_FAILED,
    MAP_PRIVATE,
    MAP_SHARED,
    MS_SYNC,
    PROT_READ,
    PROT_WRITE,
    madvise,
    mincore,
    mmap,
    msync,
    munmap,
)
from posix.stat cimport fstat, struct_stat
from posix.unistd cimport close, sysconf

import os

cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <stdio.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    /* renameat2(RENAME_EXCHANGE): swap two paths atomically (Linux 3.15+). Elsewhere, or on a
       file system without it, fails with ENOSYS or EINVAL and the caller falls back. */
    static int mn_exchange(const char *a, const char *b) {
    #if defined(__linux__) && defined(SYS_renameat2)
        return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, 2 /* RENAME_EXCHANGE */);
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }
    static char mn_empty_buffer[1];
    """
    int mn_exchange(const char* a, const char* b) nogil
    char mn_empty_buffer[1]

cdef extern from "<unistd.h>" nogil:
    enum: _SC_PAGESIZE


MODES = ("r", "r+", "c")


cdef class Mapping:
    """The first ``size`` bytes of the file ``path`` mapped into memory (all of it when
    ``size`` is ``None``), holding no file descriptor.

    ``mode``: ``"r"`` read-only and shared, ``"r+"`` writable and shared (writes reach the
    file), ``"c"`` copy-on-write (writes stay in this process). ``ValueError`` names the file
    when it is shorter than ``size``. ``inode`` is ``(st_dev, st_ino)`` of the file mapped.
    ``random_access``: tell the kernel the pages are read at random (``MADV_RANDOM``), so that
    a page fault reads that page only, not the megabytes of read-ahead around it (the readers
    tell the kernel the ranges of a batch beforehand: see ``_core``).
    """

    cdef char* addr
    cdef Py_ssize_t length
    cdef readonly bint readonly
    cdef readonly str mode
    cdef readonly object path
    cdef readonly tuple inode

    def __cinit__(self, path, size=None, str mode="r", bint random_access=False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self.readonly = mode == "r"
        self.addr = NULL
        cdef bytes encoded = os.fsencode(self.path)
        cdef int fd = open(encoded, (O_RDWR if mode == "r+" else O_RDONLY) | O_CLOEXEC)
        if fd < 0:
            code = errno
            raise OSError(code, os.strerror(code), self.path)
        cdef struct_stat status
        cdef Py_ssize_t wanted
        cdef void* addr
        try:
            if fstat(fd, &status) != 0:
                code = errno
                raise OSError(code, os.strerror(code), self.path)
            self.inode = (status.st_dev, status.st_ino)
            wanted = status.st_size if size is None else size
            if wanted < 0:
                raise ValueError(f"{self.path}: cannot map {wanted} bytes")
            if status.st_size < wanted:
                raise ValueError(f"{self.path}: holds {status.st_size} bytes, {wanted} are needed")
            if wanted > 0:
                addr = mmap(NULL, wanted, PROT_READ if mode == "r" else PROT_READ | PROT_WRITE,
                            MAP_PRIVATE if mode == "c" else MAP_SHARED, fd, 0)
                if addr == MAP_FAILED:
                    code = errno
                    raise OSError(code, f"cannot map {wanted} bytes: {os.strerror(code)}", self.path)
                self.addr = <char*>addr
                if random_access:
                    madvise(addr, wanted, MADV_RANDOM)  # advisory: a failure changes nothing
            self.length = wanted
        finally:
            close(fd)  # the mapping stays valid without it

    def __dealloc__(self):
        if self.addr != NULL:
            munmap(self.addr, self.length)
            self.addr = NULL

    def __len__(self):
        return self.length

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.addr if self.addr != NULL else mn_empty_buffer,
                          self.length, self.readonly, flags)

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    def resident(self):
        """``(resident, total)``: how many of the mapping's pages are in the page cache
        (``mincore``), and how many it has."""
        cdef long page = sysconf(_SC_PAGESIZE)
        cdef size_t pages = (self.length + page - 1) // page if self.addr != NULL else 0
        cdef size_t k, count = 0
        if pages == 0:
            return 0, 0
        cdef unsigned char* vec = <unsigned char*>malloc(pages)
        if vec == NULL:
            raise MemoryError(f"cannot allocate {pages} bytes to look up {self.path} in the page cache")
        try:
            if mincore(self.addr, self.length, vec) != 0:
                code = errno
                raise OSError(code, os.strerror(code), self.path)
            for k in range(pages):
                count += vec[k] & 1
        finally:
            free(vec)
        return count, pages

    def flush(self):
        """Write changed pages of a shared writable mapping to the file, and wait for it."""
        if self.addr != NULL and self.mode == "r+":
            if msync(self.addr, self.length, MS_SYNC) != 0:
                code = errno
                raise OSError(code, os.strerror(code), self.path)

    def __repr__(self):
        return f"Mapping({self.path!r}, {self.length} bytes, mode={self.mode!r})"


def exchange(a, b):
    """Swap the directory entries ``a`` and ``b`` (both must exist) in one atomic step.
    ``OSError`` with ``errno.ENOSYS`` or ``errno.EINVAL`` where the system cannot."""
    cdef bytes first = os.fsencode(a), second = os.fsencode(b)
    cdef const char* pa = first
    cdef const char* pb = second
    cdef int result
    with nogil:
        result = mn_exchange(pa, pb)
    if result != 0:
        code = errno
        raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))
