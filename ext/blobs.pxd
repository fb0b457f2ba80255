# Message blobs: one published message in one block, shared by its queue copies.
from cpython.ref cimport PyObject
from libc.stdint cimport INT64_MAX, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

# One published message: immutable once made, shared by every queue copy (refcounted).
# data holds body, encoded attributes, group id, dedup id back to back, then the
# time-to-live end when the message has one (BLOB_EXPIRES; 8 unaligned bytes, read with
# blob_expires_us), then the topic it was published on when a queue it went to keeps
# topics (BLOB_TOPIC; u16 length, then the name; read with blob_topic). A blob made for
# a broker with a journal has its journal part
# (blob_journal_t) right before the header (BLOB_JOURNAL). The fields go from widest to
# narrowest so that no padding comes before data (offset 32): a blob takes (24 +)
# BLOB_HEADER + its parts (+ 8) (+ 2 + topic), rounded up to its slab class (8-byte
# steps up to 256 bytes, then 16-byte steps up to 1024; blobs.pyx). A publish's own due
# time (delay or deliver_at) is not kept here: the publish path carries it beside the
# blob (only a journaled blob keeps it, in its journal part, for the journal's message
# record). Group and dedup ids are at most 255 bytes (callers validate C_MAX_ID_LENGTH,
# 128, first).
cdef struct blob_t:
    uint64_t id
    int64_t timestamp_us
    uint32_t refcount
    uint32_t body_len
    uint32_t attrs_len
    uint8_t group_len
    uint8_t dedup_len
    uint8_t priority
    uint8_t flags             # BLOB_EXPIRES, BLOB_JOURNAL, BLOB_TOPIC
    char data[1]

# Where a durable message's record is (blob_journal).
cdef struct blob_journal_t:
    uint64_t seq              # the journal record holding this message (0: none yet)
    int64_t due_us            # the publish's own due time, or INT64_MIN: the queue's delay
    uint32_t copies           # durable copies alive (0: seq may name nothing)
    uint32_t segment          # the index of that record's segment

cdef enum:
    BLOB_EXPIRES = 1          # flags: a time-to-live end follows the parts in data
    BLOB_JOURNAL = 2          # flags: a blob_journal_t comes right before the header
    BLOB_TOPIC = 4            # flags: the topic's name ends data (after the ttl end)
    BLOB_EXTERNAL = 8         # flags: data starts with a blob_external_t, not the body


# The blobs whose bodies lie in one frame read in place (a ``BodySource``): the frame is
# kept (one reference) while any of them lives, unless evacuated first.
cdef struct blob_anchor_t:
    PyObject* frame           # the BodySource (a strong reference)
    blob_t** blobs            # the blobs made on it, in order (NULL: released)
    uint32_t count            # slots used
    uint32_t capacity
    uint32_t live             # blobs alive on it
    uint32_t sealed           # every blob of its publish is made: free at live == 0


# A body kept where it arrived (BLOB_EXTERNAL; blobs.pyx, "Bodies left in place"): the
# first 24 bytes of data, in the body's place; the other parts follow as usual.
cdef struct blob_external_t:
    const char* body          # the body's bytes: in the anchor's frame, or its own chunk
    blob_anchor_t* anchor     # the frame it lies in; NULL once evacuated (body owned)
    uint32_t index            # this blob's slot in anchor.blobs
    uint32_t reserved


cdef inline const char* blob_body(blob_t* blob) noexcept nogil:
    """The message's body (``blob.body_len`` bytes), wherever it lies."""
    if blob.flags & BLOB_EXTERNAL:
        return (<blob_external_t*>blob.data).body
    return blob.data


cdef inline char* blob_parts(blob_t* blob) noexcept nogil:
    """Where the parts after the body start: attributes, group id, dedup id, the ttl end
    and the topic, back to back."""
    if blob.flags & BLOB_EXTERNAL:
        return blob.data + sizeof(blob_external_t)
    return blob.data + blob.body_len


cdef inline int64_t blob_expires_us(blob_t* blob) noexcept nogil:
    """The message's time-to-live end (clock microseconds), or INT64_MAX: none."""
    cdef int64_t expires
    if not blob.flags & BLOB_EXPIRES:
        return INT64_MAX
    memcpy(&expires, blob_parts(blob) + blob.attrs_len + blob.group_len
           + blob.dedup_len, 8)
    return expires


cdef inline const char* blob_topic(blob_t* blob, uint16_t* length) noexcept nogil:
    """The topic the message was published on (``length`` bytes of ASCII), or NULL with
    ``length`` 0 when the blob does not carry it (no queue it went to keeps topics)."""
    cdef const char* tail
    if not blob.flags & BLOB_TOPIC:
        length[0] = 0
        return NULL
    tail = (blob_parts(blob) + blob.attrs_len + blob.group_len + blob.dedup_len
            + (8 if blob.flags & BLOB_EXPIRES else 0))
    memcpy(length, tail, 2)
    return tail + 2


cdef inline blob_journal_t* blob_journal(blob_t* blob) noexcept nogil:
    """The journal part of a blob made ``journaled``; NULL for any other blob."""
    if blob.flags & BLOB_JOURNAL:
        return <blob_journal_t*>(<char*>blob - sizeof(blob_journal_t))
    return NULL


cdef inline uint64_t blob_journal_seq(blob_t* blob) noexcept nogil:
    """The journal record holding the message (0: none, or no journal part)."""
    if blob.flags & BLOB_JOURNAL:
        return (<blob_journal_t*>(<char*>blob - sizeof(blob_journal_t))).seq
    return 0


cdef blob_t* blob_new(uint64_t id, int64_t timestamp_us, int64_t due_us, int64_t expires_us,
                      const char* body, uint32_t body_len,
                      const char* attrs, uint32_t attrs_len,
                      const char* group, uint16_t group_len,
                      const char* dedup, uint16_t dedup_len, uint8_t priority,
                      bint journaled) noexcept nogil

cdef blob_t* blob_make(blob_anchor_t* anchor, uint64_t id, int64_t timestamp_us,
                       int64_t due_us, int64_t expires_us,
                       const char* body, uint32_t body_len,
                       const char* attrs, uint32_t attrs_len,
                       const char* group, uint16_t group_len,
                       const char* dedup, uint16_t dedup_len, uint8_t priority,
                       bint journaled) noexcept nogil

cdef blob_anchor_t* blob_anchor_new(BodySource frame, uint32_t capacity) except NULL
cdef void blob_anchor_seal(blob_anchor_t* anchor) noexcept


# A buffer whose bytes stay where they lie while it lives: a frame read in place from a
# transport (shmring.pyx's ``RingFrame``). Blobs may keep their bodies in it (an anchor);
# before the transport moves its bytes (or lets them go) it asks ``evacuate``.
cdef class BodySource:
    cdef const char* data                           # its bytes (a subclass sets them)
    cdef Py_ssize_t length
    cdef void* anchor                               # its blob_anchor_t, or NULL
    cdef int (*evacuate)(void* anchor) noexcept     # copy the bodies out (-1: cannot)

    cdef bint lies_in_place(self)

cdef blob_t* blob_with_topic(blob_t* blob, const char* topic,
                            uint16_t topic_len) noexcept nogil

cdef void blob_release(blob_t* blob) noexcept nogil
