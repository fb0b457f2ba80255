# Publish batches: entries validated into blobs, and the results of a batch.
from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastfanout._ext.codec cimport ff_record_view
from fastfanout._ext.blobs cimport blob_anchor_t, blob_t

cdef enum:
    C_MAX_BODY = 256 * 1024 * 1024   # hard ceiling on one body (batches.MAX_BODY)
    C_IN_PLACE_MIN_BODY = 512        # bodies this large stay in a frame read in place


cdef class PublishBatch:
    cdef uint64_t* ids
    cdef uint32_t* deliveries
    cdef unsigned char* duplicates
    cdef Py_ssize_t count


cdef class EncodedBatch:
    cdef readonly object frame


cdef class RingBatch:
    cdef readonly object frame


cdef blob_t* make_blob(object item, Py_ssize_t i, int64_t now_us, bint journaled,
                      int64_t* due_us) except NULL
cdef blob_t* blob_from_record(ff_record_view* record, Py_ssize_t i, int64_t now_us,
                               bint journaled, int64_t* due_us,
                               blob_anchor_t* anchor) except NULL
cdef object publish_result(uint64_t message_id, uint32_t deliveries, bint duplicate)
