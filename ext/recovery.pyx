"""Recovery of a durable broker: the journal's records replayed in C.

Design
------
Prior art: the redo pass of ARIES-style recovery (read the log forward once, keep what
is still live at its end) and the NATS JetStream file store's rebuild of its message
index from its block files.

``Replay`` is the ``journal.RecordSink`` that ``journal.scan`` hands every good record
to, as a pointer into the segment's bytes: the per-message records (enqueue, lease,
remove, delay, topic key) are applied here with no Python object per record. An
enqueue record that holds its message makes the message's blob at once (the very blob
the store will hold after the restart); an enqueue naming an earlier record's message
shares that blob. Lease, delay and remove records update or drop the copy their first
8 bytes name. Topology records and snapshots (rare, msgpack) go to ``other_record``,
a Python method of the subclass in ``fastfanout.storage.durability``, which tells this
class what it learns: a queue created or deleted and the ids that name queues
(``new_queue``, ``bind_queue``, ``drop_queue``), a topic id created or deleted
(``topic_created``, ``topic_deleted``), the dedup keys a snapshot holds
(``set_queue_keys``, ``set_topic_keys``), the next message id.

When the scan is done, ``restore(store, targets)`` puts every live copy of a queue that
still exists into the store (``Store.restore_entry``), in the order the copies entered
their queues, and ``restore_keys`` puts the dedup keys into the live windows. Both work
per copy and per key in C; their caller works per queue.

Invariants:

- ``copies`` holds one ``replay_copy`` per enqueue record read, in record (= copy
  sequence) order; ``index[seq - index_base]`` is the copy made by record ``seq``
  (``NO_COPY`` for any other record).
- A live copy holds one reference to its blob (``blob != NULL``); a removed one holds
  none. During replay ``blob_journal(blob).copies`` counts the live copies of a blob, and the
  copy whose record holds the message keeps it findable (``held``) exactly while that
  count is above 0: the writer names a message by its record only while a durable copy
  of it lives (``store.pyx``'s ``_journal_release``), so a later record never needs one
  whose copies are all gone.
- Copies belong to a *replay queue*, numbered from 0 in the order recovery meets the
  queues and never reused; the records name queues by id, and ``queue_ids`` maps each
  id to the replay queue it names now. Ids change across restarts (a snapshot names
  the same queue by a new id: ``bind_queue``) and a deleted queue's id is reused, so a
  copy keeps the number of the queue it entered, and is restored only if that queue
  is still live (a deleted queue's copies go with it).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_INCREF, PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport INT64_MIN, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FAILED,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    madvise,
    mmap,
    mremap,
    munmap,
)

from fastfanout._ext.blobs cimport blob_body, blob_journal, blob_new, blob_parts, blob_release, blob_t, blob_with_topic
from fastfanout._ext.codec cimport ff_align8, ff_load_le16, ff_load_le32, ff_load_le64
from fastfanout._ext.dedup cimport DedupWindow, ff_hash128, ff_hash128_t
from fastfanout._ext.journal cimport RecordSink
from fastfanout._ext.store cimport (
    ENQUEUE_DEAD,
    ENQUEUE_DEAD_LETTER,
    ENQUEUE_HEADER,
    ENQUEUE_INLINE,
    ENQUEUE_KEYED,
    ENQUEUE_RECEIVED,
    ENQUEUE_RECEIVES,
    LEASE_RECORD,
    MESSAGE_HEADER,
    MESSAGE_TOPIC,
    NIL,
    RECORD_DELAY,
    RECORD_ENQUEUE,
    RECORD_LEASE,
    RECORD_MOVED,
    RECORD_REMOVE,
    RECORD_SNAPSHOT,
    RECORD_TOPIC_KEY,
    RECORD_TOPOLOGY,
    Store,
    dead_letter_free,
    dead_letter_t,
)

from fastfanout.errors import InvalidArgument

cdef extern from "<sys/mman.h>" nogil:
    enum: MREMAP_MAYMOVE

cdef enum:
    NO_COPY = 0xFFFFFFFF
    # The receive count of a copy whose enqueue named a message record compaction had
    # removed (blob NULL): no remove record named it yet (see Replay._ghost).
    GHOST = 0xFFFFFFFF
    TOPIC_KEY_RECORD = 40      # u32 topic id, 4 zero bytes, u64 low, high, message id, i64 time

# A body key must never equal a dedup-id key: the constant ext/fanout.pyx flips into it.
cdef uint64_t BODY_KEY_MARK = 0x9e3779b97f4a7c15ULL
# Most record sequences one replay indexes (4 bytes each): far above any real journal.
cdef uint64_t MAX_INDEXED = 1ULL << 32


cdef void* _grow_mapping(void* old, size_t old_bytes, size_t new_bytes) noexcept:
    """Make or grow an anonymous mapping of ``new_bytes`` (NULL when out of memory).

    The replay's big arrays (copies, index) live in mappings with huge pages advised:
    they fault in 2 MiB steps rather than 4 KiB ones, and grow by ``mremap`` without
    a copy.
    """
    cdef void* grown
    if old == NULL:
        grown = mmap(NULL, new_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0)
    else:
        grown = mremap(old, old_bytes, new_bytes, MREMAP_MAYMOVE)
    if grown == MAP_FAILED:
        return NULL
    madvise(grown, new_bytes, MADV_HUGEPAGE)   # advice: its failure changes nothing
    return grown


cdef struct replay_copy:
    uint64_t seq               # its enqueue record
    int64_t entered_us
    int64_t due_us
    blob_t* blob               # its message: a reference while the copy lives, else NULL
    blob_t* held               # the message this record holds (an inline record), while
                               # any copy of it lives (later records name it), else NULL
    dead_letter_t* dead        # its dead-letter info (owned), or NULL
    uint32_t queue             # its replay queue
    uint32_t receive_count
    int64_t first_receive_us   # its receive times (lease records, or a copy-forward's
    int64_t last_receive_us    # enqueue record), -1 when never received


cdef struct replay_key:
    uint64_t low
    uint64_t high
    uint64_t message_id
    int64_t when_us


cdef struct key_list:
    replay_key* keys
    size_t count
    size_t capacity


cdef struct replay_queue:
    key_list keys              # its window's keys, in journal order
    bint live


cdef struct replay_topic:
    key_list keys
    bint live


cdef int _key_append(key_list* keys, uint64_t low, uint64_t high, uint64_t message_id,
                     int64_t when_us) except -1:
    cdef size_t capacity
    cdef replay_key* grown
    if keys.count == keys.capacity:
        capacity = keys.capacity * 2 if keys.capacity else 16
        grown = <replay_key*>PyMem_Realloc(keys.keys, capacity * sizeof(replay_key))
        if grown == NULL:
            raise MemoryError()
        keys.keys = grown
        keys.capacity = capacity
    keys.keys[keys.count].low = low
    keys.keys[keys.count].high = high
    keys.keys[keys.count].message_id = message_id
    keys.keys[keys.count].when_us = when_us
    keys.count += 1
    return 0


cdef void _key_free(key_list* keys) noexcept:
    PyMem_Free(keys.keys)
    keys.keys = NULL
    keys.count = keys.capacity = 0


cdef int _keys_from(key_list* keys, list entries) except -1:
    """Replace ``keys`` with ``[[low, high, message_id, when_us], ...]`` (a snapshot's)."""
    keys.count = 0
    for entry in entries:
        _key_append(keys, entry[0], entry[1], entry[2], entry[3])
    return 0


cdef void _merge(replay_copy* copies, const uint32_t* source, uint32_t* target, size_t low,
                 size_t middle, size_t high) noexcept:
    """Merge the sorted runs source[low:middle] and source[middle:high] into target,
    by entry time, the left run first on ties (stable)."""
    cdef size_t left = low
    cdef size_t right = middle
    cdef size_t out = low
    while left < middle and right < high:
        if copies[source[right]].entered_us < copies[source[left]].entered_us:
            target[out] = source[right]
            right += 1
        else:
            target[out] = source[left]
            left += 1
        out += 1
    while left < middle:
        target[out] = source[left]
        left += 1
        out += 1
    while right < high:
        target[out] = source[right]
        right += 1
        out += 1


cdef int _sort_by_entry(replay_copy* copies, uint32_t* order, size_t count) except -1:
    """Sort copy numbers by entry time, stably (ties stay in copy sequence order).

    A natural merge sort: the copies are read in sequence order, which is entry order
    but for the few that compaction journaled afresh (copied forward: later sequences,
    their old entry times), so there are few runs and few passes; sorted input costs
    one pass.
    """
    cdef size_t i
    cdef size_t runs = 1
    cdef size_t* starts
    cdef size_t* merged_starts
    cdef size_t merged
    cdef uint32_t* scratch
    cdef uint32_t* source = order
    cdef uint32_t* target
    cdef uint32_t* swap
    for i in range(1, count):
        if copies[order[i]].entered_us < copies[order[i - 1]].entered_us:
            runs += 1
    if runs == 1:
        return 0
    starts = <size_t*>PyMem_Malloc((runs + 1) * sizeof(size_t))
    scratch = <uint32_t*>PyMem_Malloc(count * sizeof(uint32_t))
    if starts == NULL or scratch == NULL:
        PyMem_Free(starts)
        PyMem_Free(scratch)
        raise MemoryError()
    runs = 0
    starts[0] = 0
    for i in range(1, count):
        if copies[order[i]].entered_us < copies[order[i - 1]].entered_us:
            runs += 1
            starts[runs] = i
    runs += 1
    starts[runs] = count
    target = scratch
    while runs > 1:
        merged = 0
        merged_starts = starts   # written in place: entry merged <= entry i read
        i = 0
        while i < runs:
            if i + 1 < runs:
                _merge(copies, source, target, starts[i], starts[i + 1], starts[i + 2])
            else:
                memcpy(target + starts[i], source + starts[i],
                       (starts[i + 1] - starts[i]) * sizeof(uint32_t))
            merged_starts[merged] = starts[i]
            merged += 1
            i += 2
        merged_starts[merged] = count
        runs = merged
        swap = source
        source = target
        target = swap
    if source != order:
        memcpy(order, source, count * sizeof(uint32_t))
    PyMem_Free(starts)
    PyMem_Free(scratch)
    return 0


cdef class Replay(RecordSink):
    """What a durable broker's journal adds up to, built record by record in C.

    Give it to ``journal.scan`` as the sink; subclass it in Python for the topology
    records and snapshots (``other_record``). Then ``restore`` the copies into a store
    and ``restore_keys`` the dedup keys into the windows (see the module docstring).

    Attributes:
        next_message_id: above every message id read (records and snapshots).
        orphans: records recovery could not use (an enqueue naming a queue or message
            it does not know, a record too short for its kind); an enqueue naming a
            message compaction removed counts (at ``restore``) only if no remove record
            named its copy; the subclass counts its own too.
        busy_segments: the indexes (in ``scan``'s order) of the segments that held a
            record other than a snapshot (a topology record: when the subclass adds
            it, knowing the segment from ``segment_now``): any other segment held
            only what every later snapshot restates (a restart's segment that nothing
            followed), and may go.
        segment_now: the segment index of the record ``other_record`` is given.
    """

    cdef replay_copy* copies
    cdef size_t copy_count
    cdef size_t copy_capacity
    cdef uint32_t* index
    cdef uint64_t index_base          # sequence of index[0] (0: nothing indexed yet)
    cdef size_t index_capacity
    cdef replay_queue* queues         # by replay queue number
    cdef uint32_t queue_count
    cdef uint32_t queue_capacity
    cdef uint32_t* queue_ids          # queue id -> the replay queue it names, or NO_COPY
    cdef uint32_t queue_id_capacity
    cdef replay_topic* topics         # by topic id
    cdef uint32_t topic_capacity
    cdef size_t live
    cdef bint restored
    cdef bytes dead_name_raw          # the last dead-letter source name read, and its str
    cdef object dead_name             # (dead letters of one queue share one object)
    cdef readonly uint64_t next_message_id
    cdef public Py_ssize_t orphans
    cdef Py_ssize_t ghosts            # ghost copies no remove record named yet
    cdef readonly set busy_segments   # segment indexes holding a record but snapshots
    cdef uint32_t busy_last           # the last index added to it (+1; 0: none yet)
    cdef readonly uint32_t segment_now  # the segment of the record ``other_record`` has

    def __cinit__(self, *args, **kwargs):
        self.copies = NULL
        self.index = NULL
        self.queues = NULL
        self.queue_ids = NULL
        self.topics = NULL
        self.next_message_id = 1
        self.dead_name_raw = b""
        self.dead_name = ""
        self.busy_segments = set()

    def __dealloc__(self):
        cdef size_t i
        if self.copies != NULL:
            for i in range(self.copy_count):
                if self.copies[i].blob != NULL:
                    blob_release(self.copies[i].blob)
                    dead_letter_free(self.copies[i].dead)
            munmap(self.copies, self.copy_capacity * sizeof(replay_copy))
        if self.index != NULL:
            munmap(self.index, self.index_capacity * sizeof(uint32_t))
        if self.queues != NULL:
            for i in range(self.queue_count):
                _key_free(&self.queues[i].keys)
            PyMem_Free(self.queues)
        PyMem_Free(self.queue_ids)
        if self.topics != NULL:
            for i in range(self.topic_capacity):
                _key_free(&self.topics[i].keys)
            PyMem_Free(self.topics)

    @property
    def live_copies(self):
        """Copies the records read so far leave in their queues."""
        return self.live

    # -- ids, as the subclass learns them from topology records and snapshots ----------

    cdef uint32_t _queue_of(self, uint32_t qid) noexcept:
        """The replay queue queue id ``qid`` names now, or NO_COPY."""
        return self.queue_ids[qid] if qid < self.queue_id_capacity else NO_COPY

    cdef replay_queue* _replay_queue(self, uint32_t number) except NULL:
        if number >= self.queue_count:
            raise InvalidArgument(f"no replay queue {number}")
        return &self.queues[number]

    cdef replay_topic* _topic(self, uint32_t tid) except NULL:
        cdef uint32_t capacity
        cdef replay_topic* grown
        if tid >= self.topic_capacity:
            capacity = self.topic_capacity * 2 if self.topic_capacity else 16
            while capacity <= tid:
                capacity *= 2
            grown = <replay_topic*>PyMem_Realloc(self.topics, capacity * sizeof(replay_topic))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self.topic_capacity, 0,
                   (capacity - self.topic_capacity) * sizeof(replay_topic))
            self.topics = grown
            self.topic_capacity = capacity
        return &self.topics[tid]

    def new_queue(self):
        """Number a new (empty, live) replay queue; returns its number."""
        cdef uint32_t capacity
        cdef replay_queue* grown
        if self.queue_count == self.queue_capacity:
            capacity = self.queue_capacity * 2 if self.queue_capacity else 16
            grown = <replay_queue*>PyMem_Realloc(self.queues, capacity * sizeof(replay_queue))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self.queue_capacity, 0,
                   (capacity - self.queue_capacity) * sizeof(replay_queue))
            self.queues = grown
            self.queue_capacity = capacity
        self.queues[self.queue_count].live = True
        self.queue_count += 1
        return self.queue_count - 1

    def bind_queue(self, uint32_t qid, uint32_t number):
        """Queue id ``qid`` names replay queue ``number`` from now on."""
        cdef uint32_t capacity
        cdef uint32_t* grown
        self._replay_queue(number)
        if qid >= self.queue_id_capacity:
            capacity = self.queue_id_capacity * 2 if self.queue_id_capacity else 16
            while capacity <= qid:
                capacity *= 2
            grown = <uint32_t*>PyMem_Realloc(self.queue_ids, capacity * sizeof(uint32_t))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self.queue_id_capacity, 0xFF,
                   (capacity - self.queue_id_capacity) * sizeof(uint32_t))
            self.queue_ids = grown
            self.queue_id_capacity = capacity
        self.queue_ids[qid] = number

    def unbind_queues(self):
        """No queue id names any replay queue (a snapshot binds them anew)."""
        if self.queue_ids != NULL:
            memset(self.queue_ids, 0xFF, self.queue_id_capacity * sizeof(uint32_t))

    def drop_queue(self, uint32_t number):
        """Replay queue ``number`` was deleted: its copies and keys go with it, and no id
        names it any more."""
        cdef uint32_t qid
        cdef replay_queue* queue = self._replay_queue(number)
        queue.live = False
        queue.keys.count = 0
        for qid in range(self.queue_id_capacity):
            if self.queue_ids[qid] == number:
                self.queue_ids[qid] = NO_COPY

    def topic_created(self, uint32_t tid):
        """Topic id ``tid`` names a new topic from now on (with an empty window)."""
        cdef replay_topic* topic = self._topic(tid)
        topic.live = True
        topic.keys.count = 0

    def topic_deleted(self, uint32_t tid):
        """The topic with id ``tid`` was deleted: its keys go with it."""
        if tid < self.topic_capacity:
            self.topics[tid].live = False
            self.topics[tid].keys.count = 0

    def clear_keys(self):
        """Forget every queue's and topic's dedup keys (a snapshot states them anew)."""
        cdef uint32_t i
        for i in range(self.queue_count):
            self.queues[i].keys.count = 0
        for i in range(self.topic_capacity):
            self.topics[i].keys.count = 0

    def set_queue_keys(self, uint32_t number, list entries):
        """Replay queue ``number``'s window holds ``entries``: ``[low, high, message_id,
        remembered_us]`` each, oldest first (a snapshot's)."""
        _keys_from(&self._replay_queue(number).keys, entries)

    def set_topic_keys(self, uint32_t tid, list entries):
        """Topic ``tid``'s window holds ``entries`` (as ``set_queue_keys``)."""
        _keys_from(&self._topic(tid).keys, entries)

    def raise_message_id(self, uint64_t next_id):
        """Make ``next_message_id`` at least ``next_id``."""
        if next_id > self.next_message_id:
            self.next_message_id = next_id

    def other_record(self, int kind, bytes payload):
        """A record that is not about one copy (topology, snapshot): the subclass reads
        it; this base counts it as an orphan."""
        self.orphans += 1

    # -- the records (journal.scan's sink) ---------------------------------------------

    cdef replay_copy* _find(self, uint64_t seq) noexcept:
        """The copy made by record ``seq`` (live or not), or NULL."""
        cdef uint64_t at
        cdef uint32_t number
        if seq < self.index_base or self.index_base == 0:
            return NULL
        at = seq - self.index_base
        if at >= self.index_capacity:
            return NULL
        number = self.index[at]
        return NULL if number == NO_COPY else &self.copies[number]

    cdef int record(self, uint64_t seq, uint8_t kind, const char* payload, uint32_t length,
                    uint32_t segment) except -1:
        cdef replay_copy* copy
        if self.restored:
            raise InvalidArgument("this replay was restored already")
        if (kind != RECORD_SNAPSHOT and kind != RECORD_TOPOLOGY
                and segment + 1 != self.busy_last):
            # (records come segment by segment: one set insertion per segment; a
            # topology record's ``other_record`` says whether it counts)
            self.busy_segments.add(segment)
            self.busy_last = segment + 1
        if (kind == RECORD_LEASE or kind == RECORD_REMOVE or kind == RECORD_DELAY
                or kind == RECORD_MOVED):   # (a move's remove: a remove)
            if length < (16 if kind == RECORD_DELAY else 8):
                self.orphans += 1
                return 0
            copy = self._find(ff_load_le64(payload))
            if copy == NULL or copy.blob == NULL:
                if (copy != NULL and (kind == RECORD_REMOVE or kind == RECORD_MOVED)
                        and copy.receive_count == GHOST):
                    copy.receive_count = 0   # a ghost's copy was gone: nothing was lost
                    self.ghosts -= 1
                return 0   # a copy gone already (or before the oldest segment)
            if kind == RECORD_LEASE:
                copy.receive_count += 1
                if length >= LEASE_RECORD:   # its receive time (older journals: none)
                    copy.last_receive_us = <int64_t>ff_load_le64(payload + 8)
                    if copy.first_receive_us < 0:
                        copy.first_receive_us = copy.last_receive_us
            elif kind == RECORD_DELAY:
                copy.due_us = <int64_t>ff_load_le64(payload + 8)
            else:
                self._remove(copy)
            return 0
        if kind == RECORD_ENQUEUE:
            return self._enqueue(seq, payload, length, segment)
        if kind == RECORD_TOPIC_KEY:
            return self._topic_key(payload, length)
        self.segment_now = segment
        self.other_record(kind, PyBytes_FromStringAndSize(payload, length))
        return 0

    cdef bint _room_for(self, uint64_t seq) except -1:
        """Make room to index a new copy at ``seq``; False (counted an orphan) when
        ``seq`` lies before the index's base or beyond its reach (MAX_INDEXED)."""
        if self.index_base == 0:
            self.index_base = seq
        if seq < self.index_base or seq - self.index_base >= MAX_INDEXED:
            self.orphans += 1
            return False
        self._grow_index(seq)
        self._grow_copies()
        return True

    cdef int _ghost(self, uint64_t seq) except -1:
        """An enqueue naming a message record before the oldest one read.

        Compaction removes a segment once no live copy has its message there, so such a
        copy was gone before its message's segment was: its remove record (an ack, or
        compaction copying it forward) follows. It is indexed as a ghost, without a
        message; one that no remove record names is an orphan (counted at ``restore``:
        the message was in a lost stretch).
        """
        cdef replay_copy* copy
        if not self._room_for(seq):
            return 0
        copy = &self.copies[self.copy_count]
        copy.seq = seq
        copy.entered_us = 0
        copy.due_us = 0
        copy.receive_count = GHOST
        copy.first_receive_us = copy.last_receive_us = -1
        copy.queue = NO_COPY
        copy.blob = NULL
        copy.held = NULL
        copy.dead = NULL
        self.index[seq - self.index_base] = <uint32_t>self.copy_count
        self.copy_count += 1
        self.ghosts += 1
        return 0

    cdef void _remove(self, replay_copy* copy) noexcept:
        cdef blob_t* blob = copy.blob
        cdef replay_copy* holder
        copy.blob = NULL
        dead_letter_free(copy.dead)
        copy.dead = NULL
        self.live -= 1
        blob_journal(blob).copies -= 1   # recovery's blobs are made journaled
        if blob_journal(blob).copies == 0:
            holder = self._find(blob_journal(blob).seq)
            if holder != NULL:
                holder.held = NULL   # no later record names it
        blob_release(blob)

    cdef int _topic_key(self, const char* p, uint32_t length) except -1:
        cdef uint32_t tid
        cdef uint64_t message_id
        if length < TOPIC_KEY_RECORD:
            self.orphans += 1
            return 0
        tid = ff_load_le32(p)
        message_id = ff_load_le64(p + 24)
        if message_id >= self.next_message_id:
            self.next_message_id = message_id + 1
        if tid < self.topic_capacity and self.topics[tid].live:
            _key_append(&self.topics[tid].keys, ff_load_le64(p + 8), ff_load_le64(p + 16),
                        message_id, <int64_t>ff_load_le64(p + 32))
        return 0

    cdef int _grow_index(self, uint64_t seq) except -1:
        """Make room in the index for sequence ``seq`` (NO_COPY in the new room)."""
        cdef size_t capacity
        cdef uint32_t* grown
        cdef uint64_t at = seq - self.index_base
        if at < self.index_capacity:
            return 0
        capacity = self.index_capacity * 2 if self.index_capacity else 1 << 20
        while capacity <= at:
            capacity *= 2
        grown = <uint32_t*>_grow_mapping(self.index, self.index_capacity * sizeof(uint32_t),
                                         capacity * sizeof(uint32_t))
        if grown == NULL:
            raise MemoryError()
        memset(grown + self.index_capacity, 0xFF,
               (capacity - self.index_capacity) * sizeof(uint32_t))
        self.index = grown
        self.index_capacity = capacity
        return 0

    cdef int _grow_copies(self) except -1:
        cdef size_t capacity
        cdef replay_copy* grown
        if self.copy_count < self.copy_capacity:
            return 0
        if self.copy_count >= NO_COPY - 1:
            raise MemoryError("more copies than one replay can index")
        capacity = self.copy_capacity * 2 if self.copy_capacity else 1 << 16
        grown = <replay_copy*>_grow_mapping(self.copies, self.copy_capacity * sizeof(replay_copy),
                                            capacity * sizeof(replay_copy))
        if grown == NULL:
            raise MemoryError()
        self.copies = grown
        self.copy_capacity = capacity
        return 0

    cdef dead_letter_t* _dead(self, const char* p) except NULL:
        """A dead-letter record from an enqueue record's dead-letter part."""
        cdef uint32_t name_length = ff_load_le32(p + 36)
        cdef const char* name = p + ENQUEUE_DEAD
        cdef dead_letter_t* dead
        if name_length != len(self.dead_name_raw) or \
                memcmp(name, <const char*>self.dead_name_raw, name_length) != 0:
            self.dead_name_raw = PyBytes_FromStringAndSize(name, name_length)
            self.dead_name = PyUnicode_DecodeUTF8(name, name_length, "replace")
        dead = <dead_letter_t*>PyMem_Malloc(sizeof(dead_letter_t))
        if dead == NULL:
            raise MemoryError()
        dead.reason = <uint8_t>p[0]
        dead.receive_count = ff_load_le32(p + 4)
        dead.first_receive_us = <int64_t>ff_load_le64(p + 8)
        dead.last_receive_us = <int64_t>ff_load_le64(p + 16)
        dead.time_us = <int64_t>ff_load_le64(p + 24)
        dead.source_queue = NIL
        dead.source_incarnation = 0
        dead.source_name = <PyObject*>self.dead_name
        Py_INCREF(self.dead_name)
        return dead

    cdef int _enqueue(self, uint64_t seq, const char* p, uint32_t size,
                      uint32_t segment) except -1:
        cdef uint32_t qid
        cdef uint32_t flags
        cdef uint64_t position = ENQUEUE_HEADER
        cdef uint64_t dead_at = 0
        cdef uint64_t received_at = 0
        cdef uint32_t name_length
        cdef const char* m = NULL
        cdef uint32_t body_len = 0
        cdef uint32_t attrs_len = 0
        cdef uint16_t group_len = 0
        cdef uint16_t dedup_len = 0
        cdef uint64_t topic_at = 0
        cdef uint16_t topic_len = 0
        cdef uint64_t message_id = 0
        cdef blob_t* blob = NULL
        cdef replay_copy* holder
        cdef replay_copy* copy
        cdef replay_queue* queue
        cdef ff_hash128_t key
        cdef uint32_t number
        if size < ENQUEUE_HEADER:
            self.orphans += 1
            return 0
        qid = ff_load_le32(p)
        flags = ff_load_le32(p + 4)
        if flags & ENQUEUE_DEAD_LETTER:
            if size < position + ENQUEUE_DEAD:
                self.orphans += 1
                return 0
            name_length = ff_load_le32(p + position + 36)
            if size < position + ENQUEUE_DEAD + name_length:
                self.orphans += 1
                return 0
            dead_at = position
            position += ENQUEUE_DEAD + ff_align8(name_length)
        if flags & ENQUEUE_RECEIVED:
            if size < position + ENQUEUE_RECEIVES:
                self.orphans += 1
                return 0
            received_at = position
            position += ENQUEUE_RECEIVES
        if flags & ENQUEUE_INLINE:
            if size < position + MESSAGE_HEADER:
                self.orphans += 1
                return 0
            m = p + position
            body_len = ff_load_le32(m + 32)
            attrs_len = ff_load_le32(m + 36)
            group_len = ff_load_le16(m + 40)
            dedup_len = ff_load_le16(m + 42)
            if position + MESSAGE_HEADER + <uint64_t>body_len + attrs_len + group_len + \
                    dedup_len > size:
                self.orphans += 1
                return 0
            if (<uint8_t>m[45]) & MESSAGE_TOPIC:
                # the topic it was published on (a queue keeping topics had a copy)
                topic_at = (position + MESSAGE_HEADER + <uint64_t>body_len + attrs_len
                            + group_len + dedup_len)
                if topic_at + 2 > size or topic_at + 2 + ff_load_le16(p + topic_at) > size:
                    self.orphans += 1
                    return 0
                topic_len = ff_load_le16(p + topic_at)
            message_id = ff_load_le64(m)
            if message_id >= self.next_message_id:
                self.next_message_id = message_id + 1
            blob = NULL
        else:
            holder = self._find(ff_load_le64(p + 8))
            if holder == NULL and (self.index_base == 0 or ff_load_le64(p + 8) < self.index_base):
                return self._ghost(seq)
            if holder == NULL or holder.held == NULL:
                self.orphans += 1
                return 0
            blob = holder.held
        number = self._queue_of(qid)
        if number == NO_COPY or not self.queues[number].live:
            self.orphans += 1
            return 0
        if not self._room_for(seq):
            return 0
        if blob == NULL:
            m += MESSAGE_HEADER
            blob = blob_new(message_id, <int64_t>ff_load_le64(m - MESSAGE_HEADER + 8),
                            <int64_t>ff_load_le64(m - MESSAGE_HEADER + 16),
                            <int64_t>ff_load_le64(m - MESSAGE_HEADER + 24),
                            m, body_len, m + body_len, attrs_len,
                            m + body_len + attrs_len, group_len,
                            m + body_len + attrs_len + group_len, dedup_len,
                            <uint8_t>(m - MESSAGE_HEADER)[44], True)
            if blob != NULL and topic_at:
                blob = blob_with_topic(blob, p + topic_at + 2, topic_len)
            if blob == NULL:
                raise MemoryError()
            blob_journal(blob).seq = seq
            blob_journal(blob).segment = segment
        else:
            blob.refcount += 1
        copy = &self.copies[self.copy_count]
        copy.seq = seq
        copy.entered_us = <int64_t>ff_load_le64(p + 16)
        copy.due_us = <int64_t>ff_load_le64(p + 24)
        copy.receive_count = ff_load_le32(p + 32)
        if flags & ENQUEUE_RECEIVED:
            copy.first_receive_us = <int64_t>ff_load_le64(p + received_at)
            copy.last_receive_us = <int64_t>ff_load_le64(p + received_at + 8)
        else:
            copy.first_receive_us = copy.last_receive_us = -1
        copy.queue = number
        copy.blob = blob
        copy.held = blob if flags & ENQUEUE_INLINE else NULL
        copy.dead = NULL
        self.index[seq - self.index_base] = <uint32_t>self.copy_count
        self.copy_count += 1
        self.live += 1
        blob_journal(blob).copies += 1
        if flags & ENQUEUE_DEAD_LETTER:
            copy.dead = self._dead(p + dead_at)
        if flags & ENQUEUE_KEYED:
            # the key its publish or send left in the queue's window (fanout.pyx's)
            if blob.dedup_len:
                key = ff_hash128(blob_parts(blob) + blob.attrs_len + blob.group_len,
                                 blob.dedup_len)
            else:
                key = ff_hash128(blob_body(blob), blob.body_len)
                key.high ^= BODY_KEY_MARK
            queue = &self.queues[number]
            _key_append(&queue.keys, key.low, key.high, blob.id, blob.timestamp_us)
        return 0

    # -- the restore -------------------------------------------------------------------

    def restore(self, Store store, list targets, int64_t now_us):
        """Put every live copy back into ``store``, in the order they entered their
        queues, with its id, body, attributes, group, priority, dedup id, entry time,
        due time, receive count and dead-letter info (journaling nothing).

        Args:
            store: the new broker's store.
            targets: by replay queue number, the store's id of that queue, or None to
                drop its copies (a queue not restored, or not durable).
            now_us: the broker's clock now: a copy whose due time is still ahead waits
                for it; every other one is visible at once, in entry order (a due time
                that has passed is not kept: a copy-forward does not journal it).

        Returns:
            The number of copies restored. The replay is spent afterwards.
        """
        cdef size_t count = len(targets)
        cdef size_t i
        cdef size_t n = 0
        cdef uint32_t* qids = NULL
        cdef uint32_t* order = NULL
        cdef replay_copy* copy
        cdef blob_t* blob
        if self.restored:
            raise InvalidArgument("this replay was restored already")
        self.restored = True
        qids = <uint32_t*>PyMem_Malloc((count + 1) * sizeof(uint32_t))
        order = <uint32_t*>PyMem_Malloc((self.live + 1) * sizeof(uint32_t))
        if qids == NULL or order == NULL:
            PyMem_Free(qids)
            PyMem_Free(order)
            raise MemoryError()
        try:
            for i in range(count):
                target = targets[i]
                qids[i] = NO_COPY if target is None else <uint32_t>target
            # Which copies go back; the store counts their blobs' durable copies anew.
            for i in range(self.copy_count):
                copy = &self.copies[i]
                copy.held = NULL
                blob = copy.blob
                if blob == NULL:
                    continue
                blob_journal(blob).copies = 0
                if copy.queue < count and qids[copy.queue] != NO_COPY \
                        and self.queues[copy.queue].live:
                    order[n] = <uint32_t>i
                    n += 1
                else:
                    copy.blob = NULL
                    dead_letter_free(copy.dead)
                    copy.dead = NULL
                    self.live -= 1
                    blob_release(blob)
            _sort_by_entry(self.copies, order, n)
            for i in range(n):
                copy = &self.copies[order[i]]
                store.restore_entry(qids[copy.queue], copy.blob, copy.seq, copy.entered_us,
                                    copy.due_us if copy.due_us > now_us else INT64_MIN,
                                    copy.receive_count, copy.first_receive_us,
                                    copy.last_receive_us, copy.dead)
                copy.dead = NULL   # the entry has it
                blob = copy.blob
                copy.blob = NULL
                self.live -= 1
                blob_release(blob)
        finally:
            PyMem_Free(qids)
            PyMem_Free(order)
        store.raise_message_ids(self.next_message_id)
        self.orphans += self.ghosts   # enqueues of messages in a lost stretch
        self.ghosts = 0
        return n

    def restore_keys(self, list topic_windows, list queue_windows):
        """Put the dedup keys back into their windows (keys past their window are
        forgotten at the window's next use).

        Args:
            topic_windows: by topic id as the records name it, the ``DedupWindow`` of
                that topic now, or None (a topic not restored).
            queue_windows: by replay queue number, the ``DedupWindow`` of that queue
                now, or None (a queue not restored).
        """
        cdef uint32_t i
        for i in range(min(<size_t>len(topic_windows), self.topic_capacity)):
            if topic_windows[i] is not None and self.topics[i].live:
                _remember(topic_windows[i], &self.topics[i].keys)
        for i in range(min(<size_t>len(queue_windows), self.queue_count)):
            if queue_windows[i] is not None and self.queues[i].live:
                _remember(queue_windows[i], &self.queues[i].keys)


cdef int _remember(DedupWindow window, key_list* keys) except -1:
    """Remember every key of ``keys`` in ``window`` as of its own time, unless the
    window holds it already (the first publish's id stays)."""
    cdef size_t i
    cdef ff_hash128_t key
    cdef replay_key* entry
    for i in range(keys.count):
        entry = &keys.keys[i]
        if entry.message_id == 0 or (entry.low == 0 and entry.high == 0):
            continue
        key.low = entry.low
        key.high = entry.high
        if window.lookup(key, entry.when_us) == 0:
            window.remember(key, entry.message_id, entry.when_us)
    return 0
