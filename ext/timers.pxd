# The timer heap: deadlines of leases and delays, keyed by entry slot.
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef struct timer_node:
    int64_t due_us      # when the timer fires (clock microseconds)
    uint64_t seq        # arming order: ties on due_us fire in the order they were armed
    uint32_t key        # the entry slot this timer belongs to


cdef class TimerHeap:
    cdef timer_node* nodes      # binary min-heap on (due_us, seq)
    cdef Py_ssize_t size           # nodes, dead ones included
    cdef Py_ssize_t dead           # cancelled nodes not yet removed
    cdef Py_ssize_t node_capacity
    cdef uint32_t* position     # key -> heap index + 1 (0 = key not armed)
    cdef Py_ssize_t key_capacity
    cdef uint64_t next_seq

    cdef int arm(self, uint32_t key, int64_t due_us) except -1
    cdef int arm_seq(self, uint32_t key, int64_t due_us, uint64_t seq) except -1
    cdef bint peek_top(self, int64_t* due_us, uint64_t* seq, uint32_t* key) noexcept
    cdef void pop_top(self) noexcept
    cdef bint disarm(self, uint32_t key) noexcept
    cdef bint armed(self, uint32_t key) noexcept
    cdef int64_t next_due(self) noexcept
    cdef bint pop_due(self, int64_t now_us, uint32_t* key, int64_t* due_us) noexcept
    cdef int _reserve_keys(self, Py_ssize_t keys) except -1
    cdef void _sift_up(self, Py_ssize_t index) noexcept
    cdef void _sift_down(self, Py_ssize_t index) noexcept
    cdef void _remove_at(self, Py_ssize_t index) noexcept
    cdef void _drop_dead_top(self) noexcept
    cdef void _compact(self) noexcept
    cdef void _place(self, Py_ssize_t index) noexcept


# A due heap's node: packed, 20 bytes (a scheduling workload holds millions of them).
cdef packed struct due_node:
    int64_t due_us      # when it fires (clock microseconds)
    uint64_t seq        # the caller's tie-break: arming order
    uint32_t key        # what fires (a pending copy's index)

# Tells whether the node of ``key`` goes (``DueHeap.remove_where``), called once per node.
ctypedef bint (*due_key_test)(void* context, uint32_t key) noexcept


cdef class DueHeap:
    cdef due_node* nodes        # binary min-heap on (due_us, seq)
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    cdef int push(self, uint32_t key, int64_t due_us, uint64_t seq) except -1
    cdef bint peek_top(self, int64_t* due_us, uint64_t* seq, uint32_t* key) noexcept
    cdef void pop_top(self) noexcept
    cdef Py_ssize_t remove_where(self, due_key_test test, void* context) noexcept
    cdef void _sift_up(self, Py_ssize_t index) noexcept
    cdef void _sift_down(self, Py_ssize_t index) noexcept
