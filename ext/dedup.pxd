# The deduplication window: 128-bit keys remembered for a fixed time.
from libc.stdint cimport int64_t, uint64_t


cdef extern from "hash128.h":
    ctypedef struct ff_hash128_t:
        uint64_t low
        uint64_t high
    ff_hash128_t ff_hash128(const char* data, size_t length) noexcept nogil


cdef struct dedup_slot:
    uint64_t low           # key; (0, 0) marks an empty slot
    uint64_t high
    uint64_t message_id    # the id the first publish got
    int64_t expires_us


cdef struct dedup_order:
    uint64_t low
    uint64_t high
    int64_t expires_us


cdef class DedupWindow:
    cdef dedup_slot* slots          # open addressing, linear probing, power-of-two size
    cdef Py_ssize_t slot_count
    cdef Py_ssize_t size
    cdef dedup_order* order         # ring of keys in insertion (= expiry) order
    cdef Py_ssize_t order_capacity
    cdef Py_ssize_t order_head
    cdef Py_ssize_t order_length
    cdef readonly int64_t window_us
    cdef readonly Py_ssize_t max_entries
    cdef readonly unsigned long long evicted
    cdef readonly unsigned long long duplicates

    cdef uint64_t lookup(self, ff_hash128_t key, int64_t now_us) noexcept
    cdef int remember(self, ff_hash128_t key, uint64_t message_id, int64_t now_us) except -1
    cdef void expire(self, int64_t now_us) noexcept
    cdef Py_ssize_t _find(self, ff_hash128_t key) noexcept
    cdef void _delete_at(self, Py_ssize_t index) noexcept
    cdef int _grow(self) except -1
    cdef void _evict_oldest(self) noexcept
    cdef bint _forget_front(self) noexcept
