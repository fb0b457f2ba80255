"""Message blobs: a published message's body, attributes and ids in one block.

Design
------
Prior art: the slab allocators of memcached and the Linux kernel (size classes, free
lists, a bound on what is kept).

A blob is immutable once made and reference-counted: fanning a message out to N queues
makes N store entries pointing at one blob (``store.pyx``), so a copy costs no body.
Blobs come from a pool: freed small blobs wait on a free list per size class (16-byte
steps) and are handed out again, so a steady stream of messages costs no malloc/free per
message (they were ~15% of a broker's time). The pool keeps at most ``BLOB_POOL_MAX_BYTES``;
beyond that blobs go back to malloc.

Big blobs (past the small classes, up to ``BLOB_BIG_MAX_SIZE``: the rows of a numpy
pipeline, 1 KiB bodies and more) have a pool of their own: classes in 64-byte steps, each
blob taking its class's whole size, at most ``BLOB_BIG_POOL_MAX_BYTES`` kept. glibc serves
chunks past its thread cache (1,032 bytes) from its sorted bins, at ~0.1 µs a malloc/free
pair: a sixth of the broker's time for a stream of 1 KiB messages. Beyond the bound (a
burst freed at once) blobs go back to malloc, counted (``blob_big_pool_stats``); bigger
blobs always do (the copy of their body costs more than malloc).

Invariant: every caller of ``blob_new``/``blob_release`` holds the GIL, which guards the
pools (no lock here).
"""

from libc.stdint cimport INT64_MAX, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

# Size classes: the sizes malloc serves without waste. glibc hands out chunks of 16 k
# bytes holding 16 k - 8, so a blob asks for 24, 40, 56 ... bytes: a 64-byte body with
# its 40-byte header takes one 112-byte chunk (the 69-byte header of before took 144; a
# 64-byte step and sizeof(blob_t) took 208); with a journal part, 128. Classes go in
# 16-byte steps up to 520 bytes. The pool keeps each chunk's start (a journaled blob's
# header is 16 bytes into its chunk).
cdef enum:
    BLOB_POOL_CLASSES = 32
BLOB_POOL_MAX_BYTES = 32 << 20
"""Bytes of freed blobs the pool keeps at most."""
cdef void* _pool_head[BLOB_POOL_CLASSES]
cdef size_t _pool_bytes = 0
cdef size_t _pool_limit = BLOB_POOL_MAX_BYTES
# Big classes: sizes from BLOB_BIG_MIN_SIZE (the first past the small classes) in
# 64-byte steps; each a size glibc serves without waste (8 more than a multiple of 16).
cdef enum:
    BLOB_BIG_CLASSES = 256
    BLOB_BIG_MIN_SIZE = 24 + (BLOB_POOL_CLASSES << 4)
BLOB_BIG_MAX_SIZE = BLOB_BIG_MIN_SIZE + ((BLOB_BIG_CLASSES - 1) << 6)
"""Bytes of the biggest blob the big pool keeps (16,856: bodies up to ~16 KiB)."""
BLOB_BIG_POOL_MAX_BYTES = 32 << 20
"""Bytes of freed big blobs the big pool keeps at most."""
cdef void* _big_head[BLOB_BIG_CLASSES]
cdef size_t _big_bytes = 0
cdef size_t _big_limit = BLOB_BIG_POOL_MAX_BYTES
cdef unsigned long long _big_overflows = 0
cdef blob_t _probe
cdef size_t BLOB_HEADER = <size_t>(<char*>_probe.data - <char*>&_probe)
"""Bytes of a blob before its parts (the offset of ``data``)."""


cdef inline size_t _blob_size(size_t total) noexcept nogil:
    """What to ask malloc for to hold ``total`` bytes: the whole of a glibc chunk."""
    if total <= 24:
        return 24
    return ((total - 8 + 15) & ~(<size_t>15)) + 8


cdef inline size_t _blob_class(size_t size) noexcept nogil:
    """The pool class of a ``_blob_size`` (>= BLOB_POOL_CLASSES: none)."""
    return (size - 24) >> 4


cdef inline size_t _big_class(size_t size) noexcept nogil:
    """The big pool's class of a ``_blob_size`` past the small classes (>=
    BLOB_BIG_CLASSES: none, too big)."""
    return (size - BLOB_BIG_MIN_SIZE + 63) >> 6


cdef inline char* _big_take(size_t size) noexcept nogil:
    """A chunk for a blob of ``_blob_size`` ``size`` past the small classes: from the big
    pool, else malloc'd at its class's whole size (NULL: OOM)."""
    global _big_bytes
    cdef size_t size_class = _big_class(size)
    cdef char* chunk
    if size_class >= BLOB_BIG_CLASSES:
        return <char*>malloc(size)
    chunk = <char*>_big_head[size_class]
    if chunk != NULL:
        _big_head[size_class] = (<void**>chunk)[0]
        _big_bytes -= BLOB_BIG_MIN_SIZE + (size_class << 6)
        return chunk
    return <char*>malloc(BLOB_BIG_MIN_SIZE + (size_class << 6))


cdef inline void _big_give(char* chunk, size_t size) noexcept nogil:
    """Return the chunk of a freed blob of ``_blob_size`` ``size`` past the small classes:
    to the big pool while it is under its bound, else to malloc."""
    global _big_bytes, _big_overflows
    cdef size_t size_class = _big_class(size)
    if size_class < BLOB_BIG_CLASSES:
        if _big_bytes < _big_limit:
            (<void**>chunk)[0] = _big_head[size_class]
            _big_head[size_class] = chunk
            _big_bytes += BLOB_BIG_MIN_SIZE + (size_class << 6)
            return
        _big_overflows += 1
    free(chunk)


def blob_big_pool_stats():
    """The big pool (blobs of more than ~500 bytes, up to ``BLOB_BIG_MAX_SIZE``): the bytes
    of freed big blobs it keeps for reuse (at most ``BLOB_BIG_POOL_MAX_BYTES``) and how
    many freed big blobs went back to malloc because it was at that bound."""
    return _big_bytes, _big_overflows


def blob_bytes(Py_ssize_t parts, bint journaled=False, Py_ssize_t topic=-1):
    """Bytes one blob takes for ``parts`` bytes of body, attributes and ids (header, the
    journal part of a ``journaled`` one, the tail of a ``topic`` name of that many bytes
    (-1: none) and rounding included: what malloc is asked for; a big blob's whole
    class)."""
    cdef size_t size = _blob_size((sizeof(blob_journal_t) if journaled else 0) + BLOB_HEADER
                                  + <size_t>parts + (<size_t>(2 + topic) if topic >= 0 else 0))
    if _blob_class(size) >= BLOB_POOL_CLASSES and _big_class(size) < BLOB_BIG_CLASSES:
        return BLOB_BIG_MIN_SIZE + (_big_class(size) << 6)
    return size


cdef inline size_t _blob_tail(blob_t* blob) noexcept nogil:
    """Bytes of a blob's data: its parts, the ttl end, the topic."""
    cdef uint16_t topic_len = 0
    blob_topic(blob, &topic_len)
    return (<size_t>blob.body_len + blob.attrs_len + blob.group_len + blob.dedup_len
            + (8 if blob.flags & BLOB_EXPIRES else 0)
            + (2 + <size_t>topic_len if blob.flags & BLOB_TOPIC else 0))


cdef inline char* _chunk_take(size_t size) noexcept nogil:
    """A chunk of ``_blob_size`` ``size``: from the pool's class, else malloc (NULL: OOM)."""
    global _pool_bytes
    cdef size_t size_class = _blob_class(size)
    cdef char* chunk
    if size_class < BLOB_POOL_CLASSES:
        chunk = <char*>_pool_head[size_class]
        if chunk != NULL:
            _pool_head[size_class] = (<void**>chunk)[0]
            _pool_bytes -= size
            return chunk
        return <char*>malloc(size)
    return _big_take(size)


def blob_pool_bytes():
    """Bytes of freed blobs the pool keeps for reuse (at most ``BLOB_POOL_MAX_BYTES``)."""
    return _pool_bytes


cdef blob_t* blob_new(uint64_t id, int64_t timestamp_us, int64_t due_us, int64_t expires_us,
                      const char* body, uint32_t body_len,
                      const char* attrs, uint32_t attrs_len,
                      const char* group, uint16_t group_len,
                      const char* dedup, uint16_t dedup_len, uint8_t priority,
                      bint journaled) noexcept nogil:
    """Allocate a blob with refcount 1 holding copies of the given parts (NULL on OOM).

    ``journaled``: made for a broker with a journal, so it gets a journal part
    (``blob_journal``), zeroed.
    """
    global _pool_bytes
    cdef size_t prefix = sizeof(blob_journal_t) if journaled else 0
    cdef size_t parts = <size_t>body_len + attrs_len + group_len + dedup_len
    cdef size_t size = _blob_size(
        prefix + BLOB_HEADER + parts + (8 if expires_us != INT64_MAX else 0))
    cdef size_t size_class = _blob_class(size)
    cdef char* chunk
    cdef blob_t* blob
    cdef blob_journal_t* journal
    cdef char* cursor
    if group_len > 255 or dedup_len > 255:
        return NULL   # unreachable: every caller validates C_MAX_ID_LENGTH (128) first
    if size_class < BLOB_POOL_CLASSES:
        chunk = <char*>_pool_head[size_class]
        if chunk != NULL:
            _pool_head[size_class] = (<void**>chunk)[0]
            _pool_bytes -= size
        else:
            chunk = <char*>malloc(size)
    else:
        chunk = _big_take(size)
    if chunk == NULL:
        return NULL
    blob = <blob_t*>(chunk + prefix)
    blob.refcount = 1
    blob.id = id
    blob.timestamp_us = timestamp_us
    blob.due_us = due_us
    blob.body_len = body_len
    blob.attrs_len = attrs_len
    blob.group_len = <uint8_t>group_len
    blob.dedup_len = <uint8_t>dedup_len
    blob.priority = priority
    blob.flags = ((BLOB_EXPIRES if expires_us != INT64_MAX else 0)
                  | (BLOB_JOURNAL if journaled else 0))
    if journaled:
        journal = <blob_journal_t*>chunk
        journal.seq = 0
        journal.copies = 0
        journal.segment = 0
    cursor = blob.data
    if body_len:
        memcpy(cursor, body, body_len)
    cursor += body_len
    if attrs_len:
        memcpy(cursor, attrs, attrs_len)
    cursor += attrs_len
    if group_len:
        memcpy(cursor, group, group_len)
    cursor += group_len
    if dedup_len:
        memcpy(cursor, dedup, dedup_len)
    cursor += dedup_len
    if expires_us != INT64_MAX:
        memcpy(cursor, &expires_us, 8)
    return blob


cdef blob_t* blob_with_topic(blob_t* blob, const char* topic,
                            uint16_t topic_len) noexcept nogil:
    """The message of ``blob`` (refcount 1, no copy yet) with ``topic``, the name it is
    published on, as its tail (``BLOB_TOPIC``): a new blob; ``blob`` is released. NULL on
    OOM (``blob`` released too). Made only for a publish that reaches a queue keeping
    topics, so no other blob has the tail."""
    cdef size_t prefix = sizeof(blob_journal_t) if blob.flags & BLOB_JOURNAL else 0
    cdef size_t tail = _blob_tail(blob)
    cdef size_t size = _blob_size(prefix + BLOB_HEADER + tail + 2 + topic_len)
    cdef char* chunk = _chunk_take(size)
    cdef blob_t* made
    if chunk == NULL:
        blob_release(blob)
        return NULL
    memcpy(chunk, <char*>blob - prefix, prefix + BLOB_HEADER + tail)
    made = <blob_t*>(chunk + prefix)
    made.refcount = 1
    made.flags |= BLOB_TOPIC
    memcpy(made.data + tail, &topic_len, 2)
    memcpy(made.data + tail + 2, topic, topic_len)
    blob_release(blob)
    return made


cdef void blob_release(blob_t* blob) noexcept nogil:
    global _pool_bytes
    cdef size_t size
    cdef size_t size_class
    cdef size_t prefix
    cdef void* chunk
    blob.refcount -= 1
    if blob.refcount != 0:
        return
    prefix = sizeof(blob_journal_t) if blob.flags & BLOB_JOURNAL else 0
    size = _blob_size(prefix + BLOB_HEADER + _blob_tail(blob))
    size_class = _blob_class(size)
    chunk = <char*>blob - prefix
    if size_class >= BLOB_POOL_CLASSES:
        _big_give(<char*>chunk, size)
    elif _pool_bytes < _pool_limit:
        (<void**>chunk)[0] = _pool_head[size_class]
        _pool_head[size_class] = chunk
        _pool_bytes += size
    else:
        free(chunk)
