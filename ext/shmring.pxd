# The shared-memory ring of local channels (shmring.pyx has the layout and the rules).
# Other native modules cimport it to write a record straight into a ring: `claim` room
# for `size` bytes (the record header included), or `claim_pair` a two-frame message
# whose second frame they fill in place, then `commit` — one writer only.
from libc.stdint cimport uint64_t

cdef extern from "atomics.h" nogil:
    ctypedef uint64_t ff_atomic_u64

# Outcomes of writing (the Python constants FULL, WROTE, WROTE_WAKE, TOO_LARGE).
cdef enum:
    RING_FULL = 0
    RING_WROTE = 1
    RING_WROTE_WAKE = 2
    RING_TOO_LARGE = -1

cdef class SharedRing:
    cdef char* base
    cdef char* data
    cdef uint64_t capacity_
    cdef uint64_t mask
    cdef uint64_t map_size
    cdef int fd
    cdef ff_atomic_u64* head
    cdef ff_atomic_u64* tail
    cdef ff_atomic_u64* writer_waiting
    cdef ff_atomic_u64* reader_sleeping
    cdef readonly str path

    cdef void _unmap(self) noexcept
    cdef int _check(self) except -1
    cdef int _reserve(self, uint64_t size, uint64_t* at) except -2
    cdef int claim(self, uint64_t size, char** out, uint64_t* at) except -2
    cdef int claim_pair(self, bytes first, uint64_t second_len, char** second,
                        uint64_t* end) except -2
    cdef int commit(self, uint64_t end) noexcept
