"""Message blobs: a published message's body, attributes and ids in one block.

Design
------
Prior art: the slab allocators of memcached and the Linux kernel (size classes, chunks
carved into equal objects, free lists), and jemalloc's and mimalloc's way of finding an
object's chunk from its address (chunks aligned to their size).

A blob is immutable once made and reference-counted: fanning a message out to N queues
makes N store entries pointing at one blob (``store.pyx``), so a copy costs no body.

Blobs of at most ``BLOB_SLAB_MAX`` bytes come from a **slab**: size classes in 8-byte
steps up to 256 bytes and 16-byte steps up to 1024, each served from 64 KiB chunks
(``BLOB_SLAB_CHUNK``) carved into objects of its size. A chunk is aligned to its size, so
a blob's chunk is its address with the low bits cleared: freeing needs no header in the
blob, and a blob costs its bytes rounded to its class — a 64-byte message with its
32-byte header takes 96 bytes, where malloc took a 112-byte chunk (its 8-byte chunk
header and 16-byte rounding). Each chunk keeps a free list of its freed objects and a
bump offset for the never-used rest; each class keeps a list of its chunks with room, so
a steady stream of messages costs no malloc/free per message (they were ~15% of a
broker's time). A chunk whose last blob is freed leaves its class: up to
``BLOB_SLAB_KEEP_BYTES`` of such empty chunks stay resident for the next blobs of any
class, and beyond that an empty chunk's pages go back to the kernel
(``madvise(MADV_DONTNEED)``; its address space is kept and reused first when a class
needs a chunk), so memory comes back once the messages are consumed. Chunks are cut
from 4 MiB mappings (``mmap``), never unmapped.

Blobs past the slab, up to ``BLOB_BIG_MAX_SIZE`` (the rows of a numpy pipeline: 1 KiB
bodies and more), have a pool of their own: classes in 64-byte steps, each blob taking its
class's whole size, at most ``BLOB_BIG_POOL_MAX_BYTES`` of freed ones kept. glibc serves
chunks past its thread cache (1,032 bytes) from its sorted bins, at ~0.1 µs a malloc/free
pair: a sixth of the broker's time for a stream of 1 KiB messages. Beyond the bound (a
burst freed at once) blobs go back to malloc, counted (``blob_big_pool_stats``); bigger
blobs always do (the copy of their body costs more than malloc).

Bodies left in place. A local client's publish frame of 64 KiB or more is read in place
from its ring (a ``RingFrame``, shmring.pyx): a body of ``IN_PLACE_MIN_BODY`` bytes or
more then stays there. Its blob (``blob_make`` with an anchor, flag ``BLOB_EXTERNAL``) holds a
``blob_external_t`` where the body would be: the body's address, its **anchor** and its
slot there; every other part is copied as usual, and ``blob_body``/``blob_parts`` find
the parts of either kind. One anchor serves the blobs of one frame: it keeps the frame
(one reference) while any of them lives, so the client's ring does not reuse that room,
and lets it go when the last one is released. A delivery then copies the body once, from
the client's ring to the consumer's, where it was copied twice (into the blob, then out
of it): a tenth less of the broker's time a 1 KiB row (docs/benchmarks.md, 2026-12-06).
The ring lets such frames fill it until its writer waits for room (shmring.pyx,
"Evacuation on demand"); then it asks the oldest frame's anchor to **evacuate**
(``blob_anchor_evacuate``): each body
still alive is copied to memory of its own (a chunk of the slab or the big pool) and its
blob points there; the anchor ends and the frame's record is let go without a copy of the
frame (``in_place_stats()`` counts these). So a consumer that falls behind costs the
copies of what it has not consumed, not a pinned producer. A ring closed (its client's
session ended) evacuates its frames at once (shmring.pyx, ``close``). A body is never left in place
for a blob that carries its topic (a queue keeping topics: ``blob_with_topic``), nor
from a frame read from a socket. The client keeps its ring writable: one that rewrites a
record it sent alters only its own messages, as publishing others would; their lengths
are the broker's, so nothing is read out of bounds.

Invariant: every caller of ``blob_new``/``blob_with_topic``/``blob_release`` holds the
GIL, which guards the slab (no lock here): the broker core calls them under it only (no
``nogil`` section touches a blob).
"""

from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport INT64_MAX, uint8_t, uintptr_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

cdef extern from "prefetch.h":
    void ff_prefetch_line(const void* address) noexcept nogil

cdef extern from "<sys/mman.h>" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int madvise(void* addr, size_t length, int advice)
    void* MAP_FAILED
    enum: PROT_READ
    enum: PROT_WRITE
    enum: MAP_PRIVATE
    enum: MAP_ANONYMOUS
    enum: MADV_DONTNEED

# One slab chunk's header, at its start; its objects follow at SLAB_HEADER.
cdef struct slab_chunk_t:
    slab_chunk_t* next        # in its class's list of chunks with room, or the empty stack
    slab_chunk_t* prev
    char* free                # a freed object (the next one in its first word), or NULL
    uint32_t bump             # offset of its first never-used byte
    uint32_t used             # objects handed out and not freed
    uint32_t size             # its objects' size (its class's)
    uint32_t size_class       # its class, or SLAB_EMPTY while empty
    uint32_t listed           # in its class's list of chunks with room

cdef enum:
    SLAB_CHUNK = 1 << 16      # bytes of one chunk (and its alignment)
    SLAB_HEADER = 48          # bytes before a chunk's first object (8-aligned objects)
    SLAB_ARENA = 1 << 22      # bytes mapped at a time (64 chunks)
    SLAB_MAX = 1024           # largest slab blob (bytes)
    SLAB_SMALL = 256          # classes in 8-byte steps up to here, then 16-byte steps
    SLAB_CLASSES = 32 + (SLAB_MAX - SLAB_SMALL) // 16
    SLAB_EMPTY = 0xFFFFFFFF

BLOB_SLAB_CHUNK = SLAB_CHUNK
"""Bytes of one slab chunk (blobs of one size class are carved from it)."""
BLOB_SLAB_MAX = SLAB_MAX
"""The largest blob the slab serves, in bytes (header and parts); bigger ones: malloc."""
BLOB_SLAB_KEEP_BYTES = 4 << 20
"""Bytes of empty chunks the slab keeps resident for reuse; beyond that an empty chunk's
pages go back to the kernel (``blob_slab_stats()["released"]`` counts them)."""

cdef slab_chunk_t* _slab_lists[SLAB_CLASSES]   # per class: its chunks with room
cdef slab_chunk_t* _slab_kept = NULL           # empty chunks still resident
cdef size_t _slab_kept_bytes = 0
cdef size_t _slab_keep_limit = BLOB_SLAB_KEEP_BYTES
cdef char** _slab_released = NULL              # empty chunks given back to the kernel
cdef size_t _slab_released_count = 0
cdef size_t _slab_released_capacity = 0
cdef char* _slab_fresh = NULL                  # never-used chunks of the last mapping
cdef char* _slab_fresh_end = NULL
cdef size_t _slab_mapped = 0                   # bytes of chunks mapped
cdef size_t _slab_chunks = 0                   # chunks holding blobs
cdef size_t _slab_live = 0                     # bytes of the blobs handed out
cdef size_t _slab_releases = 0                 # chunks released, ever

# Big classes: sizes from BLOB_BIG_MIN_SIZE (the first ``_blob_size`` past the slab) in
# 64-byte steps; each a size glibc serves without waste (8 more than a multiple of 16).
cdef enum:
    BLOB_BIG_CLASSES = 256
    BLOB_BIG_MIN_SIZE = SLAB_MAX + 8
BLOB_BIG_MAX_SIZE = BLOB_BIG_MIN_SIZE + ((BLOB_BIG_CLASSES - 1) << 6)
"""Bytes of the biggest blob the big pool keeps (17,352: bodies up to ~17 KiB)."""
BLOB_BIG_POOL_MAX_BYTES = 32 << 20
"""Bytes of freed big blobs the big pool keeps at most."""
cdef void* _big_head[BLOB_BIG_CLASSES]
cdef size_t _big_bytes = 0
cdef size_t _big_limit = BLOB_BIG_POOL_MAX_BYTES
cdef unsigned long long _big_overflows = 0
cdef size_t _anchors_live = 0                  # anchors whose frames blobs still keep
cdef unsigned long long _evacuations = 0
cdef unsigned long long _evacuated_bodies = 0
cdef unsigned long long _evacuated_bytes = 0

cdef blob_t _probe
cdef size_t BLOB_HEADER = <size_t>(<char*>_probe.data - <char*>&_probe)
"""Bytes of a blob before its parts (the offset of ``data``)."""


cdef inline size_t _blob_size(size_t total) noexcept nogil:
    """What a blob of ``total`` bytes takes: its slab class's size, or (bigger than
    SLAB_MAX) what malloc is asked for, the whole of a glibc chunk (16 k - 8 bytes)."""
    if total <= SLAB_SMALL:
        return (total + 7) & ~(<size_t>7)
    if total <= SLAB_MAX:
        return (total + 15) & ~(<size_t>15)
    return ((total - 8 + 15) & ~(<size_t>15)) + 8


cdef inline size_t _slab_class(size_t size) noexcept nogil:
    """The class of a slab size (a ``_blob_size`` of at most SLAB_MAX)."""
    if size <= SLAB_SMALL:
        return (size >> 3) - 1
    return 31 + ((size - SLAB_SMALL) >> 4)


cdef inline size_t _big_class(size_t size) noexcept nogil:
    """The big pool's class of a ``_blob_size`` past the slab (>= BLOB_BIG_CLASSES: none,
    too big)."""
    return (size - BLOB_BIG_MIN_SIZE + 63) >> 6


cdef inline char* _big_take(size_t size) noexcept nogil:
    """Memory for a blob of ``_blob_size`` ``size`` past the slab: from the big pool, else
    malloc'd at its class's whole size (NULL: OOM)."""
    global _big_bytes
    cdef size_t size_class = _big_class(size)
    cdef char* chunk
    if size_class >= BLOB_BIG_CLASSES:
        return <char*>malloc(size)
    chunk = <char*>_big_head[size_class]
    if chunk != NULL:
        _big_head[size_class] = (<void**>chunk)[0]
        _big_bytes -= BLOB_BIG_MIN_SIZE + (size_class << 6)
        # The free list runs through the freed blobs' first words, and a freed blob is
        # cold by the time it is reused (a queue's worth of bodies came through since):
        # reading the next one's word now hides the miss of the next take (a stream of
        # 1 KiB bodies stalled a tenth of the broker's time on it).
        if _big_head[size_class] != NULL:
            ff_prefetch_line(_big_head[size_class])
        return chunk
    return <char*>malloc(BLOB_BIG_MIN_SIZE + (size_class << 6))


cdef inline void _big_give(char* chunk, size_t size) noexcept nogil:
    """Give back the memory of a freed blob of ``_blob_size`` ``size`` past the slab: to
    the big pool while it is under its bound, else to malloc (counted)."""
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
    """The big pool (blobs past ``BLOB_SLAB_MAX``, up to ``BLOB_BIG_MAX_SIZE``): the bytes
    of freed big blobs it keeps for reuse (at most ``BLOB_BIG_POOL_MAX_BYTES``) and how
    many freed big blobs went back to malloc because it was at that bound."""
    return _big_bytes, _big_overflows


def blob_bytes(Py_ssize_t parts, bint journaled=False, Py_ssize_t topic=-1):
    """Bytes one blob takes for ``parts`` bytes of body, attributes and ids (header, the
    journal part of a ``journaled`` one, the tail of a ``topic`` name of that many bytes
    (-1: none) and rounding to its slab class, to its big pool class, or to what malloc
    hands out, included)."""
    cdef size_t size = _blob_size((sizeof(blob_journal_t) if journaled else 0) + BLOB_HEADER
                                  + <size_t>parts + (<size_t>(2 + topic) if topic >= 0 else 0))
    if size > SLAB_MAX and _big_class(size) < BLOB_BIG_CLASSES:
        return BLOB_BIG_MIN_SIZE + (_big_class(size) << 6)
    return size


def blob_slab_stats():
    """The blob slab's state: ``live_bytes`` (bytes of the blobs it has handed out and not
    had back), ``chunks`` (chunks holding blobs), ``kept_bytes`` (empty chunks kept
    resident, at most ``BLOB_SLAB_KEEP_BYTES``), ``released_chunks`` (empty chunks whose
    pages are back with the kernel now), ``released`` (chunks released ever: the keep
    limit's counter) and ``mapped_bytes`` (address space mapped for chunks)."""
    return {"live_bytes": _slab_live, "chunks": _slab_chunks, "kept_bytes": _slab_kept_bytes,
            "released_chunks": _slab_released_count, "released": _slab_releases,
            "mapped_bytes": _slab_mapped}


cdef slab_chunk_t* _slab_chunk(size_t size, size_t size_class) noexcept nogil:
    """An empty chunk for objects of ``size`` bytes (class ``size_class``), listed as its
    class's chunk with room: a kept one, a released one, or a fresh one (NULL: OOM)."""
    global _slab_kept, _slab_kept_bytes, _slab_released_count, _slab_fresh
    global _slab_fresh_end, _slab_mapped, _slab_chunks
    cdef slab_chunk_t* chunk
    cdef char* mapped
    cdef char* aligned
    cdef size_t head
    if _slab_kept != NULL:
        chunk = _slab_kept
        _slab_kept = chunk.next
        _slab_kept_bytes -= SLAB_CHUNK
    elif _slab_released_count:
        _slab_released_count -= 1
        chunk = <slab_chunk_t*>_slab_released[_slab_released_count]
    else:
        if _slab_fresh == _slab_fresh_end:
            # Map one more arena, one chunk larger to cut it at a chunk boundary.
            mapped = <char*>mmap(NULL, SLAB_ARENA + SLAB_CHUNK, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            if <void*>mapped == MAP_FAILED:
                return NULL
            aligned = <char*>((<uintptr_t>mapped + SLAB_CHUNK - 1)
                              & ~(<uintptr_t>SLAB_CHUNK - 1))
            head = <size_t>(aligned - mapped)
            if head:
                munmap(mapped, head)
            if SLAB_CHUNK - head:
                munmap(aligned + SLAB_ARENA, SLAB_CHUNK - head)
            _slab_fresh = aligned
            _slab_fresh_end = aligned + SLAB_ARENA
            _slab_mapped += SLAB_ARENA
        chunk = <slab_chunk_t*>_slab_fresh
        _slab_fresh += SLAB_CHUNK
    chunk.free = NULL
    chunk.bump = SLAB_HEADER
    chunk.used = 0
    chunk.size = <uint32_t>size
    chunk.size_class = <uint32_t>size_class
    chunk.prev = NULL
    chunk.next = _slab_lists[size_class]
    if chunk.next != NULL:
        chunk.next.prev = chunk
    _slab_lists[size_class] = chunk
    chunk.listed = 1
    _slab_chunks += 1
    return chunk


cdef inline void _slab_unlist(slab_chunk_t* chunk) noexcept nogil:
    """Take ``chunk`` out of its class's list of chunks with room."""
    if chunk.prev != NULL:
        chunk.prev.next = chunk.next
    else:
        _slab_lists[chunk.size_class] = chunk.next
    if chunk.next != NULL:
        chunk.next.prev = chunk.prev
    chunk.listed = 0


cdef void _slab_empty(slab_chunk_t* chunk) noexcept nogil:
    """``chunk`` (unlisted) holds no blob any more: keep it resident for reuse, or give
    its pages back to the kernel when the kept chunks reach the limit."""
    global _slab_kept, _slab_kept_bytes, _slab_released, _slab_released_count
    global _slab_released_capacity, _slab_chunks, _slab_releases
    cdef char** grown
    cdef size_t capacity
    _slab_chunks -= 1
    chunk.size_class = SLAB_EMPTY
    if _slab_kept_bytes + SLAB_CHUNK > _slab_keep_limit:
        if _slab_released_count == _slab_released_capacity:
            capacity = _slab_released_capacity * 2 if _slab_released_capacity else 64
            grown = <char**>realloc(_slab_released, capacity * sizeof(char*))
            if grown != NULL:
                _slab_released = grown
                _slab_released_capacity = capacity
        if _slab_released_count < _slab_released_capacity:
            madvise(chunk, SLAB_CHUNK, MADV_DONTNEED)
            _slab_released[_slab_released_count] = <char*>chunk
            _slab_released_count += 1
            _slab_releases += 1
            return
    chunk.next = _slab_kept    # (no room to note a released one: keep it resident)
    _slab_kept = chunk
    _slab_kept_bytes += SLAB_CHUNK


cdef inline char* _chunk_take(size_t size) noexcept nogil:
    """Memory for a blob of ``_blob_size`` ``size``: from the slab, or malloc when bigger
    than SLAB_MAX: the big pool (NULL: out of memory)."""
    global _slab_live
    cdef size_t size_class
    cdef slab_chunk_t* chunk
    cdef char* taken
    if size > SLAB_MAX:
        return _big_take(size)
    size_class = _slab_class(size)
    chunk = _slab_lists[size_class]
    if chunk == NULL:
        chunk = _slab_chunk(size, size_class)
        if chunk == NULL:
            return NULL
    if chunk.free != NULL:
        taken = chunk.free
        chunk.free = (<char**>taken)[0]
        if chunk.free != NULL:
            ff_prefetch_line(chunk.free)   # the next take's word (see _big_take)
    else:
        taken = <char*>chunk + chunk.bump
        chunk.bump += <uint32_t>size
    chunk.used += 1
    if chunk.free == NULL and chunk.bump + size > SLAB_CHUNK:
        _slab_unlist(chunk)   # full
    _slab_live += size
    return taken


cdef inline void _chunk_give(char* taken, size_t size) noexcept nogil:
    """Give back what ``_chunk_take(size)`` returned."""
    global _slab_live
    cdef slab_chunk_t* chunk
    if size > SLAB_MAX:
        _big_give(taken, size)
        return
    chunk = <slab_chunk_t*>(<uintptr_t>taken & ~(<uintptr_t>SLAB_CHUNK - 1))
    (<char**>taken)[0] = chunk.free
    chunk.free = taken
    chunk.used -= 1
    _slab_live -= size
    if chunk.used == 0:
        if chunk.listed:
            _slab_unlist(chunk)
        _slab_empty(chunk)
    elif not chunk.listed:
        # It had no room: list it again, first, so its hole is filled next.
        chunk.prev = NULL
        chunk.next = _slab_lists[chunk.size_class]
        if chunk.next != NULL:
            chunk.next.prev = chunk
        _slab_lists[chunk.size_class] = chunk
        chunk.listed = 1


cdef inline size_t _blob_tail(blob_t* blob) noexcept nogil:
    """Bytes of a blob's data: its parts, the ttl end, the topic."""
    cdef uint16_t topic_len = 0
    blob_topic(blob, &topic_len)
    return (<size_t>(blob_parts(blob) - blob.data) + blob.attrs_len + blob.group_len
            + blob.dedup_len + (8 if blob.flags & BLOB_EXPIRES else 0)
            + (2 + <size_t>topic_len if blob.flags & BLOB_TOPIC else 0))


cdef blob_t* blob_new(uint64_t id, int64_t timestamp_us, int64_t due_us, int64_t expires_us,
                      const char* body, uint32_t body_len,
                      const char* attrs, uint32_t attrs_len,
                      const char* group, uint16_t group_len,
                      const char* dedup, uint16_t dedup_len, uint8_t priority,
                      bint journaled) noexcept nogil:
    """Allocate a blob with refcount 1 holding copies of the given parts (NULL on OOM).

    ``due_us``: the publish's own due time (INT64_MIN: none), kept only in the journal
    part, for the journal's message record. ``journaled``: made for a broker with a
    journal, so it gets a journal part (``blob_journal``): no record yet.
    """
    return blob_make(NULL, id, timestamp_us, due_us, expires_us, body, body_len, attrs,
                     attrs_len, group, group_len, dedup, dedup_len, priority, journaled)


cdef blob_t* blob_make(blob_anchor_t* anchor, uint64_t id, int64_t timestamp_us,
                       int64_t due_us, int64_t expires_us,
                       const char* body, uint32_t body_len,
                       const char* attrs, uint32_t attrs_len,
                       const char* group, uint16_t group_len,
                       const char* dedup, uint16_t dedup_len, uint8_t priority,
                       bint journaled) noexcept nogil:
    """``blob_new`` with an ``anchor``: unless NULL, the body stays where it lies, in the
    anchor's frame (``BLOB_EXTERNAL``), and only the other parts are copied. NULL on OOM,
    or when the anchor is full (made for fewer blobs)."""
    cdef size_t prefix = sizeof(blob_journal_t) if journaled else 0
    cdef size_t body_room = sizeof(blob_external_t) if anchor != NULL else body_len
    cdef size_t parts = body_room + attrs_len + group_len + dedup_len
    cdef size_t size = _blob_size(
        prefix + BLOB_HEADER + parts + (8 if expires_us != INT64_MAX else 0))
    cdef char* chunk
    cdef blob_t* blob
    cdef blob_journal_t* journal
    cdef blob_external_t* external
    cdef char* cursor
    if group_len > 255 or dedup_len > 255:
        return NULL   # unreachable: every caller validates C_MAX_ID_LENGTH (128) first
    if anchor != NULL and anchor.count >= anchor.capacity:
        return NULL
    chunk = _chunk_take(size)
    if chunk == NULL:
        return NULL
    blob = <blob_t*>(chunk + prefix)
    blob.refcount = 1
    blob.id = id
    blob.timestamp_us = timestamp_us
    blob.body_len = body_len
    blob.attrs_len = attrs_len
    blob.group_len = <uint8_t>group_len
    blob.dedup_len = <uint8_t>dedup_len
    blob.priority = priority
    blob.flags = ((BLOB_EXPIRES if expires_us != INT64_MAX else 0)
                  | (BLOB_JOURNAL if journaled else 0)
                  | (BLOB_EXTERNAL if anchor != NULL else 0))
    if journaled:
        journal = <blob_journal_t*>chunk
        journal.seq = 0
        journal.due_us = due_us
        journal.copies = 0
        journal.segment = 0
    cursor = blob.data
    if anchor != NULL:
        external = <blob_external_t*>cursor
        external.body = body
        external.anchor = anchor
        external.index = anchor.count
        external.reserved = 0
        anchor.blobs[anchor.count] = blob
        anchor.count += 1
        anchor.live += 1
    elif body_len:
        memcpy(cursor, body, body_len)
    cursor += body_room
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


# -- bodies left in place -------------------------------------------------------------

cdef class BodySource:
    """A buffer whose bytes stay where they lie while it lives (a frame read in place by
    a transport): blobs may keep their bodies in it (see "Bodies left in place")."""

    def __cinit__(self):
        self.anchor = NULL
        self.evacuate = NULL

    cdef bint lies_in_place(self):
        """True while its bytes are where they were read (a subclass says)."""
        return False


cdef blob_anchor_t* blob_anchor_new(BodySource frame, uint32_t capacity) except NULL:
    """An anchor for up to ``capacity`` blobs whose bodies lie in ``frame`` (kept: one
    reference); ``blob_anchor_seal`` gives it to the frame."""
    global _anchors_live
    cdef blob_anchor_t* anchor = <blob_anchor_t*>malloc(sizeof(blob_anchor_t))
    if anchor == NULL:
        raise MemoryError()
    anchor.blobs = <blob_t**>malloc(max(capacity, 1) * sizeof(blob_t*))
    if anchor.blobs == NULL:
        free(anchor)
        raise MemoryError()
    Py_INCREF(frame)
    anchor.frame = <PyObject*>frame
    anchor.count = 0
    anchor.capacity = capacity
    anchor.live = 0
    anchor.sealed = 0
    _anchors_live += 1
    return anchor


cdef void blob_anchor_seal(blob_anchor_t* anchor) noexcept:
    """Every blob of the anchor's publish is made (or released): hook it to its frame,
    so the frame's ring may evacuate it, or end it now if no blob lives on it."""
    cdef BodySource frame = <BodySource>anchor.frame
    anchor.sealed = 1
    if anchor.live == 0:
        _anchor_end(anchor)
    else:
        frame.anchor = <void*>anchor
        frame.evacuate = blob_anchor_evacuate


cdef void _anchor_end(blob_anchor_t* anchor) noexcept with gil:
    """No blob refers to the frame any more: unhook it and let it go."""
    global _anchors_live
    cdef PyObject* frame = anchor.frame
    if (<BodySource>frame).anchor == <void*>anchor:
        (<BodySource>frame).anchor = NULL
    free(anchor.blobs)
    free(anchor)
    _anchors_live -= 1
    Py_DECREF(<object>frame)


cdef int blob_anchor_evacuate(void* pointer) noexcept:
    """Copy the bodies that live on an anchor out of its frame (each to memory of its
    own), then end the anchor: the frame's ring needs its room back. 0, or -1 (out of
    memory: nothing changed, the frame stays pinned)."""
    global _evacuated_bodies, _evacuated_bytes, _evacuations
    cdef blob_anchor_t* anchor = <blob_anchor_t*>pointer
    cdef uint32_t i
    cdef uint32_t done
    cdef blob_t* blob
    cdef blob_external_t* external
    cdef char** copies = <char**>malloc(max(anchor.count, 1) * sizeof(char*))
    if copies == NULL:
        return -1
    for i in range(anchor.count):
        blob = anchor.blobs[i]
        copies[i] = NULL
        if blob == NULL:
            continue
        copies[i] = _chunk_take(_blob_size(max(blob.body_len, 1)))
        if copies[i] == NULL:
            for done in range(i):
                if copies[done] != NULL:
                    _chunk_give(copies[done], _blob_size(max(anchor.blobs[done].body_len, 1)))
            free(copies)
            return -1
    for i in range(anchor.count):
        blob = anchor.blobs[i]
        if blob == NULL:
            continue
        external = <blob_external_t*>blob.data
        memcpy(copies[i], external.body, blob.body_len)
        external.body = copies[i]
        external.anchor = NULL
        _evacuated_bodies += 1
        _evacuated_bytes += blob.body_len
    free(copies)
    _evacuations += 1
    anchor.live = 0
    _anchor_end(anchor)
    return 0


cdef inline void _external_end(blob_t* blob) noexcept nogil:
    """The last reference to a blob whose body lies elsewhere is gone."""
    cdef blob_external_t* external = <blob_external_t*>blob.data
    cdef blob_anchor_t* anchor = external.anchor
    if anchor == NULL:
        # evacuated: the copy is this blob's
        _chunk_give(<char*>external.body, _blob_size(max(blob.body_len, 1)))
        return
    anchor.blobs[external.index] = NULL
    anchor.live -= 1
    if anchor.live == 0 and anchor.sealed:
        _anchor_end(anchor)


def in_place_stats():
    """What bodies left in place cost: ``(anchors, evacuations, evacuated_bodies,
    evacuated_bytes)`` — frames still kept by their blobs, frames whose bodies were
    copied out because their ring needed the room, and the bodies and bytes so copied."""
    return (_anchors_live, _evacuations, _evacuated_bodies, _evacuated_bytes)


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
    cdef blob_external_t* external
    if chunk == NULL:
        blob_release(blob)
        return NULL
    memcpy(chunk, <char*>blob - prefix, prefix + BLOB_HEADER + tail)
    made = <blob_t*>(chunk + prefix)
    made.refcount = 1
    made.flags |= BLOB_TOPIC
    memcpy(made.data + tail, &topic_len, 2)
    memcpy(made.data + tail + 2, topic, topic_len)
    if blob.flags & BLOB_EXTERNAL:
        # the body (in its frame, or owned) is the new blob's now
        external = <blob_external_t*>made.data
        if external.anchor != NULL:
            external.anchor.blobs[external.index] = made
        _chunk_give(<char*>blob - prefix, _blob_size(prefix + BLOB_HEADER + tail))
    else:
        blob_release(blob)
    return made


cdef void blob_release(blob_t* blob) noexcept nogil:
    cdef size_t prefix
    blob.refcount -= 1
    if blob.refcount != 0:
        return
    prefix = sizeof(blob_journal_t) if blob.flags & BLOB_JOURNAL else 0
    if blob.flags & BLOB_EXTERNAL:
        _external_end(blob)
    _chunk_give(<char*>blob - prefix, _blob_size(prefix + BLOB_HEADER + _blob_tail(blob)))
