# The fan-out dispatcher: topics, their target queues, and the publish path.
from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastfanout._ext.store cimport Store, blob_t


cdef struct topic_t:
    bint alive
    uint32_t* targets          # queue ids, in subscription order
    uint32_t target_count
    uint64_t published
    uint64_t deliveries
    uint64_t unrouted


cdef class PublishBatch:
    cdef uint64_t* ids
    cdef uint32_t* deliveries
    cdef unsigned char* duplicates
    cdef Py_ssize_t count


cdef class Dispatcher:
    cdef Store store
    cdef topic_t* topics
    cdef uint32_t topic_count
    cdef uint32_t topic_capacity
    cdef blob_t** scratch          # blobs of the batch being published
    cdef Py_ssize_t scratch_capacity

    cdef int _reserve_scratch(self, Py_ssize_t count) except -1
    cdef PublishBatch _publish(self, const uint32_t* targets, uint32_t target_count,
                               object entries, int64_t now_us, int64_t topic)
