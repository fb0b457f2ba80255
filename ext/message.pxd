# The received-message record handed to user code: made only at the edge.
from libc.stdint cimport uint64_t


# What a Message's ack() calls in C when its owner is one (the embedded broker's
# one-message calls, single.pyx); any other owner is called as ``owner.ack(receipt)``.
cdef class Settler:
    cdef int ack_receipt(self, uint64_t receipt) except -1


cdef class Message:
    cdef readonly uint64_t id
    cdef readonly bytes body
    cdef readonly double timestamp
    cdef readonly unsigned int receive_count
    cdef readonly uint64_t receipt
    cdef readonly str queue
    cdef readonly object group_id
    cdef readonly object dedup_id
    cdef readonly int priority
    cdef readonly object dead_letter
    cdef readonly object topic         # str, or None (set by deliveries.receive)
    cdef bytes _encoded_attributes     # msgpack map, or None for no attributes
    cdef object _attributes            # decoded on first access
    cdef object _owner                 # the broker or client that issued the receipt


cdef Message make_message(uint64_t id, bytes body, bytes encoded_attributes, double timestamp,
                          unsigned int receive_count, uint64_t receipt, str queue,
                          object group_id, object dedup_id, int priority,
                          object dead_letter, object owner)
