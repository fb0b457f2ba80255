# The shared-memory ring of local channels (shmring.pyx has the layout and the rules).
# It is a FrameSink (sinks.pxd): the delivery core writes a push straight into it through
# that interface (`claim_pair` a two-frame message whose second frame it fills in place,
# then `commit` — one writer only) without cimporting this file; `claim` takes room for
# `size` bytes (the record header included).
from libc.stdint cimport uint64_t

from fastfanout._ext.sinks cimport (
    FrameSink,
    SINK_FULL,
    SINK_TOO_LARGE,
    SINK_WROTE,
    SINK_WROTE_WAKE,
)

cdef extern from "atomics.h" nogil:
    ctypedef uint64_t ff_atomic_u64

# Outcomes of writing (the Python constants FULL, WROTE, WROTE_WAKE, TOO_LARGE): the
# sink's outcomes, since claim_pair and commit answer as a FrameSink.
cdef enum:
    RING_FULL = SINK_FULL
    RING_WROTE = SINK_WROTE
    RING_WROTE_WAKE = SINK_WROTE_WAKE
    RING_TOO_LARGE = SINK_TOO_LARGE

cdef class SharedRing(FrameSink):
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
