# Message blobs: one published message in one block, shared by its queue copies.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

# One published message: immutable once made, shared by every queue copy (refcounted).
# data holds body, encoded attributes, group id, dedup id back to back. The fields go from
# widest to narrowest so that no padding comes before data (offset 69): a blob takes
# BLOB_HEADER + its parts, rounded to what malloc hands out (blobs.pyx).
cdef struct blob_t:
    int64_t refcount
    uint64_t id
    int64_t timestamp_us
    int64_t due_us            # explicit due time, or INT64_MIN: the queue's delay applies
    int64_t expires_us        # time-to-live end, or INT64_MAX
    uint64_t journal_seq      # the journal record holding this message (0: none yet)
    uint32_t body_len
    uint32_t attrs_len
    uint32_t journal_copies   # durable copies alive (0: journal_seq may name nothing)
    uint32_t journal_segment  # the index of that record's segment
    uint16_t group_len
    uint16_t dedup_len
    uint8_t priority
    char data[1]


cdef blob_t* blob_new(uint64_t id, int64_t timestamp_us, int64_t due_us, int64_t expires_us,
                      const char* body, uint32_t body_len,
                      const char* attrs, uint32_t attrs_len,
                      const char* group, uint16_t group_len,
                      const char* dedup, uint16_t dedup_len, uint8_t priority) noexcept nogil

cdef void blob_release(blob_t* blob) noexcept nogil
