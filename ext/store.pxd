# The queue store: message blobs, per-queue entries, leases, dead-lettering.
cimport cython
from cpython.mem cimport PyMem_Free
from cpython.ref cimport PyObject, Py_XDECREF
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastfanout._ext.blobs cimport blob_t
from fastfanout._ext.dedup cimport DedupWindow
from fastfanout._ext.groups cimport GroupTable, fifo_group
from fastfanout._ext.journal cimport Journal
from fastfanout._ext.timers cimport DueHeap, TimerHeap

# Journal record kinds of a durable broker and the layout of an enqueue record
# (docs/storage.md has their payloads): written by store.pyx, read by recovery.pyx.
cdef enum:
    RECORD_TOPOLOGY = 1
    RECORD_ENQUEUE = 2
    RECORD_LEASE = 3
    RECORD_REMOVE = 4
    RECORD_DELAY = 5
    RECORD_SNAPSHOT = 6
    RECORD_TOPIC_KEY = 7
    RECORD_MOVED = 8           # a remove written by a move, after the new copy's record
    ENQUEUE_HEADER = 40        # fixed part of an enqueue record
    ENQUEUE_DEAD = 48          # its dead-letter part (then the source's name, 8-aligned)
    MESSAGE_HEADER = 48        # its message part (then body, attributes, group, dedup id)
    ENQUEUE_INLINE = 1         # flags: the message is in this record
    ENQUEUE_DEAD_LETTER = 2    # flags: the copy is a dead letter
    ENQUEUE_KEYED = 4          # flags: its publish or send left its dedup key in the
                               # queue's window (never a move: redrive, dead letter)
    ENQUEUE_RECEIVED = 8       # flags: a receive-times part follows (a copy-forward of
                               # a copy delivered before)
    ENQUEUE_RECEIVES = 16      # that part: i64 first receive, i64 last receive
    LEASE_RECORD = 16          # a lease record: u64 copy sequence, i64 receive time
    MESSAGE_TOPIC = 1          # message part's flags (byte 45): the topic follows the
                               # dedup id (u16 length, then the name)

# An entry slot number that names no entry.
cdef enum:
    NIL = 0xFFFFFFFF

cdef enum:
    STATE_FREE = 0
    STATE_VISIBLE = 1
    STATE_LEASED = 2
    STATE_DELAYED = 3
    STATE_DETACHED = 4         # between leaving its queue and being freed or moved

cdef enum:
    OVERFLOW_REJECT = 0
    OVERFLOW_DROP_OLDEST = 1
    OVERFLOW_DEAD_LETTER = 2
    OVERFLOW_HOLD = 3          # the store refuses like reject; the server waits for room

# Indexes into QueueStats.dropped, in the order of fastfanout.stats.DROP_REASONS.
cdef enum:
    DROP_OVERFLOW = 0
    DROP_RETENTION = 1
    DROP_MAX_RECEIVES = 2
    DROP_REJECTED = 3
    DROP_DEAD_LETTER_FULL = 4
    DROP_EXPIRED = 5
    DROP_REASON_COUNT = 6

# Why a message was dead-lettered (the names of DEAD_LETTER_REASONS in store.pyx).
cdef enum:
    DEAD_MAX_RECEIVES = 0
    DEAD_REJECTED = 1
    DEAD_EXPIRED = 2
    DEAD_OVERFLOW = 3

# Where a dead-lettered copy came from (owned by its entry).
cdef struct dead_letter_t:
    uint8_t reason
    uint32_t source_queue
    uint32_t source_incarnation
    PyObject* source_name      # a reference to the source's name (str): a deleted
                               # queue's id is reused, so the id alone cannot name it
    uint32_t receive_count
    int64_t first_receive_us   # -1 when never received
    int64_t last_receive_us
    int64_t time_us

# Who holds leases (see "Owners" in store.pyx): the embedded broker (owner 0), a server
# session, or a push consumer of a session. Slot number = owner tag.
cdef struct owner_t:
    uint64_t outstanding       # leases it holds now (made for it and not yet ended)
    uint32_t session           # the session it belongs to (itself for a session); NIL: free
    uint32_t limit             # most leases a push may leave it holding (0: no limit)
    uint32_t children          # its consumers whose slot is not free yet (a session's)
    uint32_t next_free         # the free list's link while free
    uint8_t open               # not closed yet (freed once closed, childless, no leases)

# A delayed copy held compactly until it is due (see "Pending copies" in store.pyx): no
# entry slot, no receipt, just its blob reference (in Store.pending_blobs, beside this:
# 8 + 12 bytes, no padding) and a place in its queue's arrival list.
cdef struct pending_t:
    uint32_t queue
    uint32_t arrival_prev      # links of its queue's arrival list (ids, see PENDING_TAG)
    uint32_t arrival_next      # (the free list's link while free)

# An arrival list links entries (their slot numbers) and pending copies (their index with
# this bit set); neither reaches 2**31 - 1, so no id equals NIL.
cdef enum:
    PENDING_TAG = 0x80000000
    PENDING_MASK = 0x7FFFFFFF

# One copy of a message in one queue.
cdef struct entry_t:
    blob_t* blob
    dead_letter_t* dead
    int64_t entered_us
    int64_t first_receive_us
    int64_t last_receive_us
    int64_t lease_due_us       # while in its queue's lease list: when the lease ends
    uint64_t lease_seq         # ... and its tie-break (the store's timer_seq when armed)
    uint32_t queue
    uint32_t generation        # bumped on every lease and on free: receipts go stale
    uint32_t receive_count
    uint32_t visible_prev      # links of the visible list of its priority level
    uint32_t visible_next      # (the free list's link while STATE_FREE, the lease
                               # list's links while leased and lease_listed)
    uint32_t arrival_prev      # links of the queue's arrival-ordered list of all copies
    uint32_t arrival_next
    uint32_t group             # FIFO group index in the queue's GroupTable, or NIL
    uint32_t group_next        # next pending entry of the same group
    uint32_t owner             # who holds the lease (valid while leased): an owner slot
    uint64_t journal_seq       # durable copy: the sequence of its enqueue record (0: none)
    uint32_t journal_segment   # durable copy: the segment index of its message record
    uint8_t state
    uint8_t level              # priority level (0 .. queue levels - 1)
    uint8_t listed             # in its queue's visible list (FIFO: only group heads are)
    uint8_t lease_listed       # leased, with its deadline in the queue's lease list

cdef struct queue_t:
    bint alive
    bint durable               # journaled (a broker with a data directory)
    uint32_t incarnation       # bumped each time a deleted queue's id is reused
    int64_t visibility_us
    int64_t delay_us
    int64_t retention_us
    int64_t max_messages       # -1: unbounded
    int64_t max_bytes          # -1: unbounded
    int64_t max_message_size
    int64_t max_receive_count  # -1: unbounded
    int64_t dead_letter_queue  # -1: none
    uint8_t overflow
    bint fifo
    bint content_dedup
    bint keeps_topics          # its copies' blobs carry the topic (a pattern subscriber)
    uint32_t backoff_count     # redelivery backoff steps (0: none)
    int64_t* backoff_us
    uint32_t levels
    uint32_t* visible_head     # per level
    uint32_t* visible_tail
    uint32_t arrival_head
    uint32_t arrival_tail
    uint32_t lease_head        # leases in (deadline, seq) order: almost all of them,
    uint32_t lease_tail        # as a queue's leases mostly end in the order they began
    uint64_t visible
    uint64_t leased
    uint64_t delayed
    uint64_t bytes
    uint64_t enqueued
    uint64_t delivered
    uint64_t redelivered
    uint64_t acked
    uint64_t dead_lettered
    uint64_t redriven
    uint64_t rejected
    uint64_t purged
    uint64_t duplicates
    uint64_t oversized         # messages refused with MessageTooLarge
    uint64_t dropped[6]


# final: no subclass, so Cython calls the methods directly inside store.pyx (the C
# compiler may inline the small ones) rather than through the vtable.
@cython.final
cdef class Store:
    cdef entry_t* entries
    cdef uint32_t entry_capacity
    cdef uint32_t free_head
    cdef uint64_t live_entries
    cdef queue_t* queues
    cdef uint32_t queue_count      # ids handed out: live queues and deleted ones
    cdef uint32_t queue_capacity
    cdef list free_queue_ids       # deleted queues' ids, taken again by add_queue
    cdef list names                # queue id -> name
    cdef TimerHeap timers          # slot -> delay end, or lease end out of list order
    cdef TimerHeap lease_timers    # queue id -> its lease list head's (due, seq), or an
                                   # earlier one after the head left (checked when due)
    cdef uint64_t timer_seq        # tie-break of every deadline, in arming order
    cdef int64_t retention_due_us  # no retention work before this time
    cdef uint64_t next_message_id
    cdef list group_tables         # queue id -> GroupTable (FIFO queues) or None
    cdef list dedup_windows        # queue id -> DedupWindow
    cdef bint deferring            # inside a publish: overflow dead letters wait
    cdef uint32_t* delivery_slots  # scratch of deliveries.receive_push (grown on demand)
    cdef Py_ssize_t delivery_slot_capacity
    cdef list deferred             # detached overflow victims awaiting flush_deferred
    cdef list moves                # moves whose records may not be written yet: how to
                                   # undo them if a full disk drops them
    cdef Py_ssize_t moves_limit    # its length at which the written ones are let go
    cdef owner_t* owners           # owner tag -> its lease count and session (slot 0: the
    cdef uint32_t owner_capacity   # embedded broker's, never closed)
    cdef uint32_t owner_free_head
    cdef Journal journal           # None: nothing is journaled (in memory)
    cdef bint restoring            # recovery is putting copies back: journal nothing
    cdef bint moving_unjournaled   # a move of a copy in memory only: its new one too
    cdef uint32_t publishing_topic # topic id + 1 of the publish running (0: a send)
    cdef bint enqueue_keyed        # the next enqueue's copy left its dedup key in the
                                   # queue's window (a publish or send; journaled)
    cdef uint64_t* segment_live    # segment index -> durable copies whose message
    cdef uint32_t segment_live_capacity  # record is in that segment
    cdef pending_t* pendings       # delayed copies not yet due, held without an entry
    cdef blob_t** pending_blobs    # ... their blobs (NULL: free, or dropped while its
                                   # timer is still in pending_timers)
    cdef uint32_t pending_capacity
    cdef uint32_t pending_used     # indexes handed out ever (those above: never used)
    cdef uint32_t pending_free_head
    cdef uint64_t pending_live
    cdef uint64_t pending_dropped  # dropped pending copies whose timer is still armed
    cdef DueHeap pending_timers    # pending index -> its due time (live and dropped ones)

    cdef inline queue_t* queue(self, uint32_t qid) noexcept:
        return &self.queues[qid]

    cdef inline void _lease_ended(self, uint32_t slot) noexcept:
        # inline: every ack, nack, expiry... ends a lease; the owner is freed (rarely)
        # only once it was closed and this was its last lease
        cdef owner_t* owner = &self.owners[self.entries[slot].owner]
        owner.outstanding -= 1
        if owner.outstanding == 0 and not owner.open and owner.children == 0:
            self._free_owner(self.entries[slot].owner)

    cdef inline uint32_t* _arrival_prev_of(self, uint32_t id) noexcept:
        # an arrival list's link field of an entry or (tagged) pending copy
        if id & PENDING_TAG:
            return &self.pendings[id & PENDING_MASK].arrival_prev
        return &self.entries[id].arrival_prev

    cdef inline uint32_t* _arrival_next_of(self, uint32_t id) noexcept:
        if id & PENDING_TAG:
            return &self.pendings[id & PENDING_MASK].arrival_next
        return &self.entries[id].arrival_next

    cdef inline uint64_t owner_credit(self, uint32_t owner) noexcept:
        """How many more leases a push may make for ``owner`` (an open owner's slot)."""
        cdef owner_t* o = &self.owners[owner]
        if o.limit == 0:
            return 0xFFFFFFFFFFFFFFFF
        return 0 if o.outstanding >= o.limit else o.limit - o.outstanding

    cdef inline int64_t due_floor_us(self) noexcept:
        """A time before which nothing is due (lease or delay end, pending copy,
        retention): ``advance_to`` of an earlier time has nothing to do. A lower bound
        (a queue's lease timer may be early); INT64_MAX when nothing is pending."""
        cdef int64_t due = self.timers.next_due()
        cdef int64_t other
        cdef uint64_t seq
        cdef uint32_t key
        # the heaps' tops: a dropped pending copy's timer waits there too (earlier, so
        # still a lower bound)
        if self.pending_timers.peek_top(&other, &seq, &key) and other < due:
            due = other
        if self.lease_timers.peek_top(&other, &seq, &key) and other < due:
            due = other
        return due if due < self.retention_due_us else self.retention_due_us

    cdef inline uint64_t message_size(self, blob_t* blob) noexcept:
        # inline: the fan-out sums it per message and target (a vtable call each was ~3 %
        # of the broker's time in the four-consumer benchmark)
        return <uint64_t>blob.body_len + blob.attrs_len

    cdef uint32_t* reserve_delivery_slots(self, Py_ssize_t count) except NULL
    cdef int room_for(self, uint32_t qid, uint64_t count, uint64_t size) noexcept
    cdef int make_room(self, uint32_t qid, uint64_t count, uint64_t size, int64_t now_us) except -1
    cdef int enqueue(self, uint32_t qid, blob_t* blob, int64_t now_us, int64_t due_us,
                     dead_letter_t* dead) except -1
    cdef void _journal_enqueue(self, uint32_t slot, int64_t due_us) noexcept
    cdef void _journal_copy(self, uint8_t kind, uint32_t slot, int64_t value) noexcept
    cdef void _journal_live(self, uint32_t segment, int delta) noexcept
    cdef uint64_t _journal_release(self, uint64_t seq, uint32_t segment, blob_t* blob,
                                   uint8_t kind=*) noexcept
    cdef uint64_t _journal_next(self) noexcept
    cdef void _rejournal(self, uint32_t slot, uint32_t below) noexcept
    cdef void _note_move(self, uint64_t record_seq, uint64_t old_seq, uint32_t old_segment,
                         uint64_t new_seq, uint64_t message_seq,
                         uint32_t message_segment) noexcept
    cdef int restore_entry(self, uint32_t qid, blob_t* blob, uint64_t copy_seq,
                           int64_t entered_us, int64_t due_us, uint32_t receive_count,
                           int64_t first_receive_us, int64_t last_receive_us,
                           dead_letter_t* dead) except -1
    cdef void journal_topic_key(self, uint32_t topic, uint64_t low, uint64_t high,
                                uint64_t message_id, int64_t now_us) noexcept
    cdef uint32_t _alloc_entry(self) except? 0xFFFFFFFF
    cdef int _enqueue_pending(self, uint32_t qid, blob_t* blob, int64_t now_us,
                              int64_t due_us) except -1
    cdef void _arrival_append(self, uint32_t qid, uint32_t id, int64_t now_us) noexcept
    cdef void _arrival_unlink(self, uint32_t qid, uint32_t id) noexcept
    cdef void _arrival_replace(self, uint32_t qid, uint32_t old, uint32_t new) noexcept
    cdef int64_t arrival_entered_us(self, uint32_t id) noexcept
    cdef void discard(self, uint32_t id) noexcept
    cdef void _drop_pending(self, uint32_t index) noexcept
    cdef void _free_pending(self, uint32_t index) noexcept
    cdef bint _pending_top(self, int64_t* due_us, uint64_t* seq, uint32_t* key) noexcept
    cdef uint32_t _materialize(self, uint32_t index) except? 0xFFFFFFFF
    cdef void _free_entry(self, uint32_t slot) noexcept
    cdef void _detach(self, uint32_t slot) noexcept
    cdef void _make_visible(self, uint32_t slot) noexcept
    cdef void _leave_visible(self, uint32_t slot) noexcept
    cdef void _list_visible(self, uint32_t slot) noexcept
    cdef void _group_remove(self, uint32_t slot) noexcept
    cdef void _group_promote(self, uint32_t qid, uint32_t group) noexcept
    cdef int64_t _backoff(self, uint32_t slot) noexcept
    cdef int _expire_entry(self, uint32_t slot, int64_t now_us) except -1
    cdef uint32_t _lease_next(self, uint32_t qid, int* level, int64_t lease_us,
                              int64_t now_us, uint32_t owner) except? 0xFFFFFFFE
    cdef bint _lease_head(self, uint32_t qid, uint32_t slot, int64_t lease_us,
                          int64_t now_us, uint32_t owner) except -1
    cdef int _group_append(self, uint32_t slot, uint32_t qid, blob_t* blob) except -1
    cdef uint32_t _oldest_visible(self, uint32_t qid) noexcept
    cdef int _dead_letter(self, uint32_t slot, uint8_t reason, int64_t now_us) except -1
    cdef int _dead_letter_detached(self, uint32_t slot, uint8_t reason,
                                   int64_t now_us) except -1
    cdef int flush_deferred(self, int64_t now_us) except -1
    cdef uint32_t _lease_slot(self, uint64_t receipt, uint32_t session) noexcept
    cdef uint32_t _require_lease(self, object receipt, uint32_t session) except? 0xFFFFFFFF
    cdef uint32_t require_owner(self, object owner) except? 0xFFFFFFFF
    cdef uint32_t require_session(self, object session) except? 0xFFFFFFFF
    cdef void _free_owner(self, uint32_t owner) noexcept
    cdef void _ack_slot(self, uint32_t slot) noexcept
    cdef void _return(self, uint32_t slot, int64_t delay_us, int64_t now_us) noexcept
    cdef int _expire_retention(self, int64_t now_us) except -1
    cdef int advance_to(self, int64_t now_us) except -1
    cdef int _arm(self, uint32_t slot, int64_t due_us) except -1
    cdef int _arm_lease(self, uint32_t slot, int64_t due_us) except -1
    cdef void _unlink_lease(self, uint32_t slot) noexcept
    cdef void _disarm(self, uint32_t slot) noexcept
    cdef int _settle_lease_timers(self, int64_t limit_us) except -1
    cdef bint _pop_due(self, int64_t now_us, uint32_t* slot, int64_t* due_us) except -1
cdef uint64_t receipt_value(object receipt) except? 0

# The session tag of a caller that may settle any lease: the embedded broker's own calls.
cdef enum:
    ANY_SESSION = 0

cdef inline void dead_letter_free(dead_letter_t* dead) noexcept:
    """Free a dead-letter record (NULL: nothing) and its reference to the source's name."""
    if dead != NULL:
        Py_XDECREF(dead.source_name)
        PyMem_Free(dead)
