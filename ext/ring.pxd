# Bounded single-producer/single-consumer ring of variable-size byte records.
#
# The contract other native modules use: create/destroy, producer-side offer (one record
# or a ring-batch buffer), consumer-side peek/release (zero copy), poll (copy out) and
# poll_batch (copy out in ring-batch form). Every function is `noexcept nogil` and returns
# a status code; exactly one thread may call the producer functions and exactly one (may
# be another) the consumer functions, concurrently, without locks. Layout and ordering
# argument: the opening essay of ring.pyx.
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "atomics.h" nogil:
    ctypedef uint64_t ff_atomic_u64          # C: _Atomic uint64_t; touch only via below
    ctypedef char ff_cache_pad[64]
    enum: FF_CACHE_LINE
    size_t ff_cache_line_round(size_t size)
    uint64_t ff_load_acquire_u64(const ff_atomic_u64* position)
    void ff_store_release_u64(ff_atomic_u64* position, uint64_t value)
    uint64_t ff_load_relaxed_u64(const ff_atomic_u64* position)
    void ff_store_relaxed_u64(ff_atomic_u64* position, uint64_t value)
    void ff_cpu_relax()

# Status codes of the hot path (exceptions exist only at the Python edge).
cdef enum:
    FF_RING_OK = 0
    FF_RING_FULL = -1          # no room now (by record count or by bytes): back pressure
    FF_RING_TOO_LARGE = -2     # the record can never fit: longer than max_record
    FF_RING_EMPTY = -3
    FF_RING_MALFORMED = -4     # a ring-batch buffer has a truncated or overrunning prefix
    FF_RING_NO_ROOM = -5       # the caller's destination buffer cannot hold the record

cdef enum:
    FF_RING_MAX_CAPACITY = 1 << 30

# One ring. Groups of fields written by different threads are separated by a full cache
# line of padding so that they never share a line (no false sharing), whatever the
# alignment of the allocation.
cdef struct ff_ring:
    # Immutable after ff_ring_create: read by both sides, written by neither.
    uint64_t capacity                  # record slots, a power of two
    uint64_t mask                      # capacity - 1
    uint64_t max_bytes                 # size of the byte ring = bound on payload held
    uint64_t max_record                # largest record: min(max_bytes, 2**32 - 1)
    uint32_t* lengths                  # slot array: length of record `seq` at seq & mask
    char* data                         # byte ring: record payloads back to back, wrapping
    ff_cache_pad _pad_config
    # Published by the producer (the consumer's gating sequence is producer_seq).
    ff_atomic_u64 producer_seq         # records committed = sequence of the next claim
    ff_atomic_u64 producer_bytes       # payload bytes committed, ever (statistics)
    ff_atomic_u64 full_count           # offer calls refused or cut short for lack of room
    ff_cache_pad _pad_producer_shared
    # Producer-private.
    uint64_t producer_next             # next sequence to claim (== producer_seq at rest)
    uint64_t producer_tail             # payload bytes claimed, ever
    uint64_t producer_tail_index       # producer_tail % max_bytes
    uint64_t cached_consumer_seq       # last consumer_seq seen; reread only when full
    uint64_t cached_consumer_bytes
    ff_cache_pad _pad_producer_private
    # Published by the consumer (the producer's gating sequences).
    ff_atomic_u64 consumer_seq         # records released
    ff_atomic_u64 consumer_bytes       # payload bytes released, ever
    ff_cache_pad _pad_consumer_shared
    # Consumer-private.
    uint64_t consumer_next             # next sequence to read
    uint64_t consumer_head             # payload bytes read, ever
    uint64_t consumer_head_index       # consumer_head % max_bytes
    uint64_t cached_producer_seq       # last producer_seq seen; reread only when empty
    ff_cache_pad _pad_consumer_private


# A record still inside the ring, as at most two segments (the second is non-empty only
# when the record wraps past the end of the byte ring).
cdef struct ff_ring_segments:
    const char* first
    size_t first_length
    const char* second
    size_t second_length


# Lifecycle. `capacity` must be a power of two in [1, 2**30], max_bytes >= 1; NULL when
# out of memory. Destroy only when neither side is running.
cdef ff_ring* ff_ring_create(uint64_t capacity, uint64_t max_bytes) noexcept nogil
cdef void ff_ring_destroy(ff_ring* ring) noexcept nogil

# Producer side.
cdef int ff_ring_offer(ff_ring* ring, const char* record, size_t length) noexcept nogil
cdef uint64_t ff_ring_offer_batch(ff_ring* ring, const char* frame, size_t length,
                                  size_t* consumed, int* status) noexcept nogil

# Consumer side.
cdef int ff_ring_peek(ff_ring* ring, ff_ring_segments* record) noexcept nogil
cdef void ff_ring_release(ff_ring* ring) noexcept nogil
cdef int ff_ring_poll(ff_ring* ring, char* destination, size_t capacity,
                      size_t* length) noexcept nogil
cdef uint64_t ff_ring_available(ff_ring* ring, uint64_t max_records,
                                size_t* batch_bytes) noexcept nogil
cdef uint64_t ff_ring_poll_batch(ff_ring* ring, char* destination, size_t capacity,
                                 uint64_t max_records, size_t* written) noexcept nogil

# Either side or a third thread (snapshots; exact when the ring is quiescent).
cdef uint64_t ff_ring_size(ff_ring* ring) noexcept nogil
cdef uint64_t ff_ring_bytes_used(ff_ring* ring) noexcept nogil


cdef class Ring:
    cdef ff_ring* ring
    cdef bint producing                # a Python-level producer call is in progress
    cdef bint consuming                # a Python-level consumer call is in progress

    cdef int _enter_producer(self) except -1
    cdef int _enter_consumer(self) except -1
