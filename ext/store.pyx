"""The queue store: every queue's message copies, their leases, delays and dead-lettering.

Design
------
Prior art: Amazon SQS (leases, receipts, receive counts, redrive policies), RabbitMQ
(overflow policies ``reject-publish`` / ``drop-head`` / dead-lettering), and the slab +
intrusive-list layout of memcached and the Linux kernel.

A published message is one immutable, reference-counted **blob** (body, encoded
attributes, group and dedup ids in one block from ``blobs.pyx``'s slab). Fanning it out to N queues makes
N **entries** that point at the same blob, so a copy costs a slab slot, not a body.
Entries live in one slab (an array grown by doubling; free slots chained in a free list),
and are named by their slot number. An entry sits in two intrusive doubly-linked lists of
its queue: the **arrival list** (every copy, oldest first: retention and ``oldest_age``
read its head in O(1)) and, while visible, the **visible list** of its priority level
(FIFO: receive takes the head, anything that becomes visible again goes to the tail).
Delays are deadlines in a ``TimerHeap`` keyed by slot. Leases are too cheap for a heap:
a queue's leases nearly always end in the order they began (one visibility timeout), so
each queue keeps its leases in an intrusive **lease list** in (deadline, seq) order —
O(1) to arm (append) and to end (unlink) — and a second heap holds one timer per queue,
its list head's deadline. A lease that would break the list order (a shorter
``visibility_timeout`` or an ``extend``) goes to the slot heap instead. When a list's head
leaves, the queue's timer is left early (stale) and put right only when it comes due, so
an ack touches no heap. Every deadline gets a sequence number from one counter and both
sources are merged by (deadline, seq): they fire exactly in the order one heap would.

Pending copies: a delayed message waits far longer than it is leased, and a scheduling
workload holds millions of them, so a new delayed copy of a plain queue (not FIFO, not
durable) takes no entry: it is a 20-byte **pending copy** (its blob reference, in an
array of its own, and its queue and arrival links) in a second slab, with its due time
in a third heap (a ``DueHeap``: 20 bytes a timer) keyed by its index. That heap has no
position index, so a pending copy dropped before it is due (purge, retention, queue
deletion, overflow) leaves its timer behind and keeps its index until the timer is out:
skipped when it reaches the top, or taken out with all the others once they outnumber
the live pending copies (O(n) then, O(1) a drop amortised).
It sits in its queue's arrival list like an entry (an arrival list links entry slots and
pending indexes tagged with ``PENDING_TAG``), so retention, ``oldest_age``, purge and
queue deletion see it in its place, and the gauges count it as delayed. When it comes
due (merged with the other deadlines by (deadline, seq)) it becomes an entry in its very
place of the arrival list, and goes on from there like any delayed entry. A delayed copy
that is anything else — a redelivery's backoff, a FIFO or durable queue's, a dead letter,
a recovered copy — is an entry from the start. A pending copy has no receipt (nothing
can settle a delayed copy). Its entry time is its message's timestamp: only a copy made
by the publish or send that made its message is held pending.

Receipts: a receipt is ``generation << 32 | slot``. The slot's generation is bumped on
every lease and on every free, so a receipt is valid only while the very delivery it
names holds its lease — checking one is two loads and two compares, no table lookup.

Owners (RabbitMQ's ``basic.qos``, counted where the leases are): every lease carries an
**owner** tag, the slot of an ``owner_t`` — 0 for the embedded broker's own receives, a
server session, or a push consumer of a session — and each owner counts its
``outstanding`` leases. The count goes up where a lease begins (``_lease_head``) and
down wherever one ends, whatever ends it (ack, nack, extend to 0, term, expiry, purge,
queue deletion, release): the three places a leased entry changes state (``_detach``,
``_return``, ``advance_to``) call ``_lease_ended``. A consumer's credit is its
``limit`` (prefetch) minus that count, so a push never leaves it holding more than its
prefetch, however its messages get settled. A session settles a lease only when the
lease's owner belongs to it (``_lease_slot`` with its session tag); any other receipt is
stale to it. Owner slots are reused: a closed owner stays until its last lease has ended
(and a session until its consumers are gone), so no tag names two holders at once.

Invariants (checked by ``invariants.check`` in the debug build and by the model tests):
- every live entry is in exactly one state: visible (in one visible list, no timer),
  leased (in its lease list or with a slot timer, in no visible list) or delayed (slot
  timer armed, in no visible list); every pending copy is in its queue's arrival list
  with its pending timer armed;
- a lease list is in (deadline, seq) order, and a queue with a non-empty list has a
  queue timer no later than its head;
- a queue's gauges (visible, leased, delayed, bytes) equal what its lists hold;
- ``enqueued == messages + acked + purged + dead_lettered + redriven + sum(dropped)``.

This module is the per-message machinery; the calls that act on a whole queue (create,
delete, purge, redrive, counters) are functions in ``queues.pyx``, settling by receipt is
in ``receipts.pyx``, blobs come from ``blobs.pyx`` and ``invariants.pyx`` checks all of it.

Time is integer microseconds (``now_us``) handed in by the caller, who has already
called ``advance_to(now_us)``; the store never reads a clock. Nothing here takes a lock:
the Python layer serialises calls (the GIL alone makes each call atomic, as none of them
calls back into Python code that could release it, except building result objects).
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.number cimport PyNumber_Index
from cpython.ref cimport Py_INCREF, PyObject
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.math cimport fabs, isfinite, nearbyint

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcpy

from fastfanout._ext.blobs cimport (
    BLOB_EXPIRES,
    blob_body,
    blob_parts,
    blob_expires_us,
    blob_journal,
    blob_topic,
    blob_journal_t,
    blob_release,
    blob_t,
)
from fastfanout._ext.codec cimport (
    ff_align8,
    ff_store_le16,
    ff_store_le32,
    ff_store_le64,
)
from fastfanout._ext.journal cimport Journal
from fastfanout._ext.dedup cimport DedupWindow, ff_hash128
from fastfanout._ext.groups cimport GroupTable, fifo_group
from fastfanout._ext.timers cimport TimerHeap

from fastfanout.errors import InvalidArgument, StaleReceipt

cdef extern from "prefetch.h":
    void ff_prefetch_line(const void* address) noexcept nogil

cdef extern from *:
    int FASTFANOUT_DEBUG   # set by setup.py: 1 in the debug build

DEBUG = bool(FASTFANOUT_DEBUG)
"""True in the debug build (FASTFANOUT_DEBUG=1): the broker checks every invariant of the
store before each call."""

RECORD_KINDS = {"topology": RECORD_TOPOLOGY, "enqueue": RECORD_ENQUEUE,
                "lease": RECORD_LEASE, "remove": RECORD_REMOVE, "delay": RECORD_DELAY,
                "snapshot": RECORD_SNAPSHOT, "topic_key": RECORD_TOPIC_KEY,
                "moved": RECORD_MOVED}
"""Journal record kinds by name (see docs/storage.md)."""

DEAD_LETTER_REASONS = ("max_receives", "rejected", "expired", "overflow")
"""Names of the dead-letter reasons, indexed by their code."""

# Which drop reason counts a dead-lettering that found no dead-letter queue.
cdef uint8_t[4] DROP_FOR_DEAD_REASON = [DROP_MAX_RECEIVES, DROP_REJECTED, DROP_EXPIRED,
                                        DROP_OVERFLOW]


cdef bint _reclaim_dropped(void* store, uint32_t index) noexcept:
    """``DueHeap.remove_where``'s test for the pending timers: the timer of a dropped
    pending copy goes, and the copy's index with it (to the free list)."""
    if (<Store>store).pending_blobs[index] != NULL:
        return False
    (<Store>store)._free_pending(index)
    return True


cdef uint64_t receipt_value(object receipt) except? 0:
    """A receipt as a C integer; InvalidArgument for anything but an int in [0, 2**64).

    An integer of another type (``__index__``: a numpy ``uint64`` taken from a batch's
    ``receipts``) is read as its int, as the clients read it; a bool is refused.
    """
    if type(receipt) is not int:
        if type(receipt) is bool or not hasattr(type(receipt), "__index__"):
            raise InvalidArgument(
                f"a receipt is an int, got {type(receipt).__name__} {receipt!r}")
        receipt = PyNumber_Index(receipt)
    if receipt < 0 or receipt >= 2**64:
        raise InvalidArgument(f"a receipt is an int in [0, 2**64), got {receipt}")
    return receipt


@cython.final
cdef int64_t _clock_us(object clock) except? -1:
    """Read ``clock`` (finite seconds) as microseconds, rounded half to even."""
    cdef object now = clock()
    cdef double seconds
    if type(now) is not float and type(now) is not int:
        raise InvalidArgument(f"the clock returned {now!r}; it must return finite seconds")
    seconds = now
    if not isfinite(seconds) or fabs(seconds) > 9.2e12:
        raise InvalidArgument(f"the clock returned {now!r}; it must return finite seconds")
    return <int64_t>nearbyint(seconds * 1e6)


cdef inline void _fresh_entry(entry_t* entry, queue_t* q, uint32_t qid, blob_t* blob,
                              dead_letter_t* dead, int64_t entered_us) noexcept:
    """Fill a newly allocated entry of queue ``qid`` (``q``) holding ``blob`` (the caller
    accounts for its reference) and ``dead``: not received, not listed, in no group; the
    caller sets its state and links it."""
    entry.blob = blob
    entry.dead = dead
    entry.journal_seq = 0
    entry.entered_us = entered_us
    entry.first_receive_us = -1
    entry.last_receive_us = -1
    entry.queue = qid
    entry.receive_count = 0
    entry.level = blob.priority if blob.priority < q.levels else q.levels - 1
    entry.listed = 0
    entry.lease_listed = 0
    entry.group = NIL
    entry.group_next = NIL


cdef class Store:
    """All queues of one broker. Used by the broker layer only, through these methods."""

    def __cinit__(self):
        self.entries = NULL
        self.entry_capacity = 0
        self.free_head = NIL
        self.live_entries = 0
        self.queues = NULL
        self.queue_count = 0
        self.queue_capacity = 0
        self.free_queue_ids = []
        self.names = []
        self.timers = TimerHeap()
        self.lease_timers = TimerHeap()
        self.timer_seq = 0
        self.retention_due_us = INT64_MAX
        self.next_message_id = 1
        self.group_tables = []
        self.dedup_windows = []
        self.deferred = []
        self.moves = []
        self.moves_limit = 4096
        self.deferring = False
        self.delivery_slots = NULL
        self.delivery_slot_capacity = 0
        self.owners = <owner_t*>PyMem_Malloc(sizeof(owner_t))
        if self.owners == NULL:
            raise MemoryError()
        self.owner_capacity = 1
        self.owner_free_head = NIL
        # owner 0: the embedded broker's receives; never closed, its session is itself
        self.owners[0].outstanding = 0
        self.owners[0].session = 0
        self.owners[0].limit = 0
        self.owners[0].children = 0
        self.owners[0].next_free = NIL
        self.owners[0].open = 1
        self.journal = None
        self.restoring = False
        self.publishing_topic = 0
        self.enqueue_keyed = False
        self.segment_live = NULL
        self.segment_live_capacity = 0
        self.pendings = NULL
        self.pending_blobs = NULL
        self.pending_capacity = 0
        self.pending_used = 0
        self.pending_free_head = NIL
        self.pending_live = 0
        self.pending_dropped = 0
        self.pending_timers = DueHeap()

    def __dealloc__(self):
        cdef uint32_t slot
        cdef uint32_t qid
        PyMem_Free(self.delivery_slots)
        PyMem_Free(self.owners)
        PyMem_Free(self.segment_live)
        if self.pending_blobs != NULL:
            for slot in range(self.pending_used):
                if self.pending_blobs[slot] != NULL:
                    blob_release(self.pending_blobs[slot])
        PyMem_Free(self.pending_blobs)
        PyMem_Free(self.pendings)
        if self.entries != NULL:
            for slot in range(self.entry_capacity):
                if self.entries[slot].state != STATE_FREE:
                    blob_release(self.entries[slot].blob)
                    dead_letter_free(self.entries[slot].dead)
            PyMem_Free(self.entries)
        if self.queues != NULL:
            for qid in range(self.queue_count):
                PyMem_Free(self.queues[qid].visible_head)
                PyMem_Free(self.queues[qid].visible_tail)
                PyMem_Free(self.queues[qid].backoff_us)
            PyMem_Free(self.queues)

    # -- entries -----------------------------------------------------------------------

    cdef uint32_t _alloc_entry(self) except? 0xFFFFFFFF:
        cdef uint32_t slot
        cdef uint32_t capacity
        cdef entry_t* grown
        if self.free_head == NIL:
            if self.entry_capacity >= 0x7FFFFFFF:
                raise MemoryError("the store holds 2**31 message copies: its hard limit")
            capacity = self.entry_capacity * 2 if self.entry_capacity else 1024
            grown = <entry_t*>PyMem_Realloc(self.entries, capacity * sizeof(entry_t))
            if grown == NULL:
                raise MemoryError()
            self.entries = grown
            # Chain the new slots into the free list, lowest first.
            for slot in range(self.entry_capacity, capacity):
                grown[slot].state = STATE_FREE
                grown[slot].generation = 0
                grown[slot].visible_next = slot + 1 if slot + 1 < capacity else NIL
            self.free_head = self.entry_capacity
            self.entry_capacity = capacity
        slot = self.free_head
        self.free_head = self.entries[slot].visible_next
        self.live_entries += 1
        # The free list runs through the free entries, cold when reused: fetch the next
        # one now so that the next allocation does not stall on it.
        if self.free_head != NIL:
            ff_prefetch_line(&self.entries[self.free_head].visible_next)
        return slot

    cdef void _free_entry(self, uint32_t slot) noexcept:
        """Release a detached entry: drop its blob reference and recycle the slot."""
        cdef entry_t* entry = &self.entries[slot]
        if entry.journal_seq:
            self._journal_release(entry.journal_seq, entry.journal_segment, entry.blob)
            entry.journal_seq = 0
        blob_release(entry.blob)
        entry.blob = NULL
        if entry.dead != NULL:
            dead_letter_free(entry.dead)
            entry.dead = NULL
        entry.state = STATE_FREE
        entry.generation += 1
        entry.visible_next = self.free_head
        self.free_head = slot
        self.live_entries -= 1

    # -- pending copies and arrival lists (see "Pending copies" above) ------------------

    cdef int _enqueue_pending(self, uint32_t qid, blob_t* blob, int64_t now_us,
                              int64_t due_us) except -1:
        """Hold a delayed copy of ``blob`` in queue ``qid`` as a pending copy until
        ``due_us`` (the caller checked it may: see ``enqueue``)."""
        cdef uint32_t index
        cdef uint32_t capacity
        cdef void* grown
        cdef queue_t* q
        if self.pending_free_head == NIL and self.pending_used == self.pending_capacity:
            if self.pending_capacity >= 0x7FFFFFFF:
                raise MemoryError("the store holds 2**31 pending copies: its hard limit")
            # Grown by doubling; the new part is not written (nor made resident) until
            # used: pending_used hands indexes out in order.
            capacity = self.pending_capacity * 2 if self.pending_capacity else 1024
            grown = PyMem_Realloc(self.pendings, capacity * sizeof(pending_t))
            if grown == NULL:
                raise MemoryError()
            self.pendings = <pending_t*>grown
            grown = PyMem_Realloc(self.pending_blobs, capacity * sizeof(blob_t*))
            if grown == NULL:
                raise MemoryError()
            self.pending_blobs = <blob_t**>grown
            self.pending_capacity = capacity
        index = self.pending_free_head if self.pending_free_head != NIL else self.pending_used
        # Arm first: it is the one step that can fail (growing the heap).
        self.pending_timers.push(index, due_us, self.timer_seq)
        self.timer_seq += 1
        if index == self.pending_free_head:
            self.pending_free_head = self.pendings[index].arrival_next
        else:
            self.pending_used += 1
        self.pending_live += 1
        blob.refcount += 1
        self.pending_blobs[index] = blob
        self.pendings[index].queue = qid
        self._arrival_append(qid, index | PENDING_TAG, now_us)
        q = &self.queues[qid]
        q.bytes += self.message_size(blob)
        q.enqueued += 1
        q.delayed += 1
        return 0

    cdef void _drop_pending(self, uint32_t index) noexcept:
        """Remove a pending copy from its queue (gauges included) and release its blob.
        Its index stays taken until its timer is out of the heap: skipped at the top
        (``_pending_top``), or taken out with every dropped one's once they are as many as
        the live ones (O(n), so O(1) a drop amortised)."""
        cdef pending_t* pending = &self.pendings[index]
        cdef queue_t* q = &self.queues[pending.queue]
        self._arrival_unlink(pending.queue, index | PENDING_TAG)
        q.delayed -= 1
        q.bytes -= self.message_size(self.pending_blobs[index])
        blob_release(self.pending_blobs[index])
        self.pending_blobs[index] = NULL
        self.pending_live -= 1
        self.pending_dropped += 1
        if self.pending_dropped > 1024 and self.pending_dropped > self.pending_live:
            self.pending_timers.remove_where(_reclaim_dropped, <void*>self)
            self.pending_dropped = 0

    cdef void _free_pending(self, uint32_t index) noexcept:
        """Put the index of a pending copy that is gone, and whose timer is too, on the
        free list."""
        self.pending_blobs[index] = NULL
        self.pendings[index].arrival_next = self.pending_free_head
        self.pending_free_head = index

    cdef bint _pending_top(self, int64_t* due_us, uint64_t* seq, uint32_t* key) noexcept:
        """The earliest live pending copy's timer (due, seq, index), dropped ones' timers
        on top taken out on the way; False when no pending copy is left."""
        while self.pending_timers.peek_top(due_us, seq, key):
            if self.pending_blobs[key[0]] != NULL:
                return True
            self.pending_timers.pop_top()
            self._free_pending(key[0])
            self.pending_dropped -= 1
        return False

    cdef uint32_t _materialize(self, uint32_t index) except? 0xFFFFFFFF:
        """Turn a due pending copy into a delayed entry in its place of the arrival list
        (the caller pops its timer next); returns the entry's slot."""
        cdef uint32_t slot = self._alloc_entry()   # may grow (move) the entries
        cdef entry_t* entry = &self.entries[slot]
        cdef uint32_t qid = self.pendings[index].queue
        cdef queue_t* q = &self.queues[qid]
        cdef blob_t* blob = self.pending_blobs[index]
        # the pending copy's reference to its blob passes to the entry
        _fresh_entry(entry, q, qid, blob, NULL, blob.timestamp_us)
        entry.state = STATE_DELAYED
        self._arrival_replace(qid, index | PENDING_TAG, slot)
        self._free_pending(index)
        self.pending_live -= 1
        return slot

    cdef int64_t arrival_entered_us(self, uint32_t id) noexcept:
        """When the copy ``id`` of an arrival list entered its queue."""
        if id & PENDING_TAG:
            # A pending copy entered when its message was made (enqueue checks it).
            return self.pending_blobs[id & PENDING_MASK].timestamp_us
        return self.entries[id].entered_us

    cdef void _arrival_append(self, uint32_t qid, uint32_t id, int64_t now_us) noexcept:
        """Append ``id`` (entered at ``now_us``) to the tail of ``qid``'s arrival list."""
        cdef queue_t* q = &self.queues[qid]
        self._arrival_next_of(id)[0] = NIL
        self._arrival_prev_of(id)[0] = q.arrival_tail
        if q.arrival_tail == NIL:
            q.arrival_head = id
            if now_us + q.retention_us < self.retention_due_us:
                self.retention_due_us = now_us + q.retention_us
        else:
            self._arrival_next_of(q.arrival_tail)[0] = id
        q.arrival_tail = id

    cdef void _arrival_unlink(self, uint32_t qid, uint32_t id) noexcept:
        cdef queue_t* q = &self.queues[qid]
        cdef uint32_t prev = self._arrival_prev_of(id)[0]
        cdef uint32_t next = self._arrival_next_of(id)[0]
        if prev == NIL:
            q.arrival_head = next
        else:
            self._arrival_next_of(prev)[0] = next
        if next == NIL:
            q.arrival_tail = prev
        else:
            self._arrival_prev_of(next)[0] = prev

    cdef void _arrival_replace(self, uint32_t qid, uint32_t old, uint32_t new) noexcept:
        """Put ``new`` in ``old``'s place of ``qid``'s arrival list."""
        cdef queue_t* q = &self.queues[qid]
        cdef uint32_t prev = self._arrival_prev_of(old)[0]
        cdef uint32_t next = self._arrival_next_of(old)[0]
        self._arrival_prev_of(new)[0] = prev
        self._arrival_next_of(new)[0] = next
        if prev == NIL:
            q.arrival_head = new
        else:
            self._arrival_next_of(prev)[0] = new
        if next == NIL:
            q.arrival_tail = new
        else:
            self._arrival_prev_of(next)[0] = new

    cdef void discard(self, uint32_t id) noexcept:
        """Remove the copy ``id`` of an arrival list from its queue and free it (the
        caller counts why)."""
        if id & PENDING_TAG:
            self._drop_pending(id & PENDING_MASK)
        else:
            self._detach(id)
            self._free_entry(id)

    cdef uint32_t* reserve_delivery_slots(self, Py_ssize_t count) except NULL:
        """A scratch array of at least ``count`` slots (kept between calls)."""
        cdef uint32_t* grown
        if count < 1:
            count = 1   # never hand out NULL, even for an empty receive
        if count > self.delivery_slot_capacity:
            grown = <uint32_t*>PyMem_Realloc(self.delivery_slots, count * sizeof(uint32_t))
            if grown == NULL:
                raise MemoryError()
            self.delivery_slots = grown
            self.delivery_slot_capacity = count
        return self.delivery_slots

    cdef void _list_visible(self, uint32_t slot) noexcept:
        """Append a visible entry to the tail of its level's visible list."""
        cdef entry_t* entry = &self.entries[slot]
        cdef queue_t* q = &self.queues[entry.queue]
        cdef uint32_t tail = q.visible_tail[entry.level]
        entry.listed = 1
        entry.visible_next = NIL
        entry.visible_prev = tail
        if tail == NIL:
            q.visible_head[entry.level] = slot
        else:
            self.entries[tail].visible_next = slot
        q.visible_tail[entry.level] = slot

    cdef void _make_visible(self, uint32_t slot) noexcept:
        """Enter the visible state. In a FIFO queue only an unlocked group's head is listed."""
        cdef entry_t* entry = &self.entries[slot]
        cdef queue_t* q = &self.queues[entry.queue]
        cdef fifo_group* group
        entry.state = STATE_VISIBLE
        entry.listed = 0
        q.visible += 1
        if not q.fifo:
            self._list_visible(slot)
            return
        group = &(<GroupTable>self.group_tables[entry.queue]).groups[entry.group]
        if group.head == slot and group.leased == NIL:
            self._list_visible(slot)

    cdef void _leave_visible(self, uint32_t slot) noexcept:
        """Leave the visible state (unlisting the entry if it is listed)."""
        cdef entry_t* entry = &self.entries[slot]
        cdef queue_t* q = &self.queues[entry.queue]
        q.visible -= 1
        if not entry.listed:
            return
        entry.listed = 0
        if entry.visible_prev == NIL:
            q.visible_head[entry.level] = entry.visible_next
        else:
            self.entries[entry.visible_prev].visible_next = entry.visible_next
        if entry.visible_next == NIL:
            q.visible_tail[entry.level] = entry.visible_prev
        else:
            self.entries[entry.visible_next].visible_prev = entry.visible_prev

    cdef void _group_promote(self, uint32_t qid, uint32_t group_index) noexcept:
        """List a FIFO group's head when the group is unlocked and its head is visible."""
        cdef fifo_group* group = &(<GroupTable>self.group_tables[qid]).groups[group_index]
        if (group.leased == NIL and group.head != NIL and
                self.entries[group.head].state == STATE_VISIBLE and
                not self.entries[group.head].listed):
            self._list_visible(group.head)

    cdef void _group_remove(self, uint32_t slot) noexcept:
        """Take an entry out of its FIFO group (almost always the head), then promote."""
        cdef entry_t* entry = &self.entries[slot]
        cdef uint32_t qid = entry.queue
        cdef GroupTable table = <GroupTable>self.group_tables[qid]
        cdef uint32_t group_index = entry.group
        cdef fifo_group* group = &table.groups[group_index]
        cdef uint32_t previous
        if group.leased == slot:
            group.leased = NIL
        if group.head == slot:
            group.head = entry.group_next
            if group.tail == slot:
                group.tail = NIL
        else:
            # Almost always the head leaves a group (every removal path takes the oldest
            # message); a redrive of a FIFO queue whose group head is leased takes the
            # next ones in arrival order, each found right behind the head.
            previous = group.head
            while self.entries[previous].group_next != slot:
                previous = self.entries[previous].group_next
            self.entries[previous].group_next = entry.group_next
            if group.tail == slot:
                group.tail = previous
        group.count -= 1
        entry.group = NIL
        if group.count == 0:
            table.release(group_index)
        else:
            self._group_promote(qid, group_index)

    cdef int64_t _backoff(self, uint32_t slot) noexcept:
        """Redelivery delay after the entry's latest failed delivery (0 without backoff)."""
        cdef queue_t* q = &self.queues[self.entries[slot].queue]
        cdef uint32_t step
        if q.backoff_count == 0 or self.entries[slot].receive_count == 0:
            return 0
        step = self.entries[slot].receive_count - 1
        if step >= q.backoff_count:
            step = q.backoff_count - 1
        return q.backoff_us[step]

    cdef void _detach(self, uint32_t slot) noexcept:
        """Take an entry out of every list and gauge of its queue (the slot stays allocated)."""
        cdef entry_t* entry = &self.entries[slot]
        cdef queue_t* q = &self.queues[entry.queue]
        if entry.state == STATE_VISIBLE:
            self._leave_visible(slot)
        elif entry.state == STATE_LEASED:
            self._disarm(slot)
            q.leased -= 1
            self._lease_ended(slot)
        elif entry.state == STATE_DELAYED:
            self.timers.disarm(slot)
            q.delayed -= 1
        # A detached entry is in no state: group promotion must not see it as visible.
        entry.state = STATE_DETACHED
        if entry.group != NIL:
            self._group_remove(slot)
        self._arrival_unlink(entry.queue, slot)
        q.bytes -= self.message_size(entry.blob)

    cdef uint32_t _oldest_visible(self, uint32_t qid) noexcept:
        """The visible entry that drop_oldest removes first: head of the lowest level."""
        cdef queue_t* q = &self.queues[qid]
        cdef uint32_t level
        for level in range(q.levels):
            if q.visible_head[level] != NIL:
                return q.visible_head[level]
        return NIL

    # -- room and overflow -------------------------------------------------------------

    cdef int room_for(self, uint32_t qid, uint64_t count, uint64_t size) noexcept:
        """Can ``count`` messages of ``size`` bytes in all enter? 1 yes, 0 not without
        dropping (the policy allows it and enough visible messages exist), -1 no."""
        cdef queue_t* q = &self.queues[qid]
        cdef uint64_t held = q.visible + q.leased + q.delayed
        cdef uint64_t held_bytes = q.bytes
        cdef uint32_t slot
        cdef uint32_t level
        if ((q.max_messages < 0 or held + count <= <uint64_t>q.max_messages) and
                (q.max_bytes < 0 or held_bytes + size <= <uint64_t>q.max_bytes)):
            return 1
        if q.overflow == OVERFLOW_REJECT or q.overflow == OVERFLOW_HOLD:
            return -1
        # Walk the visible messages in drop order and see whether dropping them is enough.
        for level in range(q.levels):
            slot = q.visible_head[level]
            while slot != NIL:
                held -= 1
                held_bytes -= self.message_size(self.entries[slot].blob)
                if ((q.max_messages < 0 or held + count <= <uint64_t>q.max_messages) and
                        (q.max_bytes < 0 or held_bytes + size <= <uint64_t>q.max_bytes)):
                    return 0
                slot = self.entries[slot].visible_next
        return -1

    cdef int make_room(self, uint32_t qid, uint64_t count, uint64_t size, int64_t now_us) except -1:
        """Drop or dead-letter the oldest visible messages until the batch fits.

        The caller has checked ``room_for(...) >= 0``.
        """
        cdef queue_t* q
        cdef uint32_t slot
        while True:
            q = &self.queues[qid]
            if ((q.max_messages < 0 or q.visible + q.leased + q.delayed + count
                    <= <uint64_t>q.max_messages) and
                    (q.max_bytes < 0 or q.bytes + size <= <uint64_t>q.max_bytes)):
                return 0
            slot = self._oldest_visible(qid)
            if slot == NIL:
                return 0   # cannot happen after room_for; never loop forever
            if q.overflow == OVERFLOW_DEAD_LETTER and self.deferring:
                # Inside a publish: the victim leaves now, and reaches its dead-letter
                # queue only after every copy of the publish is in (flush_deferred), so
                # the room the publish was promised in that queue is not taken from it.
                self._detach(slot)
                self.deferred.append(slot)
            elif q.overflow == OVERFLOW_DEAD_LETTER:
                self._dead_letter(slot, DEAD_OVERFLOW, now_us)
            else:
                self._detach(slot)
                self._free_entry(slot)
                self.queues[qid].dropped[DROP_OVERFLOW] += 1

    # -- enqueue -----------------------------------------------------------------------

    cdef int enqueue(self, uint32_t qid, blob_t* blob, int64_t now_us, int64_t due_us,
                     dead_letter_t* dead) except -1:
        """Add a copy of ``blob`` to queue ``qid`` (room already made).

        ``due_us``: when it becomes visible (<= now: at once). ``dead``: a dead-letter
        record the entry takes ownership of, or NULL.

        A new delayed copy of a plain queue (not FIFO, not durable; made by this very
        publish or send, so it entered when its message was made) waits as a pending
        copy, without an entry, until it is due.
        """
        cdef uint32_t slot
        cdef entry_t* entry
        cdef queue_t* q = &self.queues[qid]
        if (due_us > now_us and dead == NULL and not q.fifo and not q.durable
                and not self.restoring and blob.timestamp_us == now_us):
            return self._enqueue_pending(qid, blob, now_us, due_us)
        slot = self._alloc_entry()
        entry = &self.entries[slot]
        q = &self.queues[qid]
        blob.refcount += 1
        _fresh_entry(entry, q, qid, blob, dead, now_us)
        if q.fifo:
            self._group_append(slot, qid, blob)
            q = &self.queues[qid]
        self._arrival_append(qid, slot, now_us)
        q.bytes += self.message_size(blob)
        q.enqueued += 1
        if due_us > now_us:
            entry.state = STATE_DELAYED
            q.delayed += 1
            self._arm(slot, due_us)
        else:
            self._make_visible(slot)
        if self.queues[qid].durable and not self.restoring and not self.moving_unjournaled:
            self._journal_enqueue(slot, due_us)
        return 0

    # -- the journal (durable queues; see docs/storage.md) -----------------------------

    cdef void _journal_live(self, uint32_t segment, int delta) noexcept:
        """Count a durable copy in (1) or out (-1) of its message record's segment."""
        cdef uint32_t capacity
        cdef uint32_t index
        cdef uint64_t* grown
        if segment >= self.segment_live_capacity:
            capacity = self.segment_live_capacity * 2 if self.segment_live_capacity else 64
            while capacity <= segment:
                capacity *= 2
            grown = <uint64_t*>PyMem_Realloc(self.segment_live, capacity * sizeof(uint64_t))
            if grown == NULL:
                if self.journal is not None:
                    self.journal.failure = "out of memory for the segment live counts"
                return
            for index in range(self.segment_live_capacity, capacity):
                grown[index] = 0
            self.segment_live = grown
            self.segment_live_capacity = capacity
        self.segment_live[segment] += delta

    cdef void _journal_enqueue(self, uint32_t slot, int64_t due_us) noexcept:
        """Append the enqueue record of a durable copy (and its message, unless a live
        durable copy's record holds it already)."""
        cdef entry_t* entry = &self.entries[slot]
        cdef blob_t* blob = entry.blob
        cdef dead_letter_t* dead = entry.dead
        cdef blob_journal_t* journaled = blob_journal(blob)
        cdef bint inline = journaled == NULL or journaled.seq == 0
        cdef uint32_t data_len = (blob.body_len + blob.attrs_len + blob.group_len
                                  + blob.dedup_len)
        cdef uint16_t topic_len = 0
        cdef const char* topic = blob_topic(blob, &topic_len)
        cdef Py_ssize_t name_len = 0
        cdef const char* name = NULL
        cdef uint64_t length = ENQUEUE_HEADER
        cdef char* p
        cdef char* cursor
        cdef uint64_t seq
        if self.journal is None:
            return
        if journaled == NULL:
            # Cannot happen: a broker with a journal makes every blob with a journal part.
            self.journal.failure = "a durable copy's message has no journal part"
            return
        if dead != NULL:
            name = PyUnicode_AsUTF8AndSize(<object>dead.source_name, &name_len)
            length += ENQUEUE_DEAD + ff_align8(<uint64_t>name_len)
        if entry.first_receive_us >= 0:
            length += ENQUEUE_RECEIVES   # delivered before (a copy-forward): its times
        if inline:
            length += MESSAGE_HEADER + data_len + (2 + topic_len if topic != NULL else 0)
        p = self.journal.reserve(RECORD_ENQUEUE, <uint32_t>length)
        if p == NULL:
            return   # the journal failed: the broker fails closed (journal.failure)
        ff_store_le32(p, entry.queue)
        ff_store_le32(p + 4, (ENQUEUE_INLINE if inline else 0) |
                      (ENQUEUE_DEAD_LETTER if dead != NULL else 0) |
                      (ENQUEUE_KEYED if self.enqueue_keyed else 0) |
                      (ENQUEUE_RECEIVED if entry.first_receive_us >= 0 else 0))
        ff_store_le64(p + 8, 0 if inline else journaled.seq)
        ff_store_le64(p + 16, <uint64_t>entry.entered_us)
        ff_store_le64(p + 24, <uint64_t>due_us)
        ff_store_le32(p + 32, entry.receive_count)
        ff_store_le32(p + 36, self.publishing_topic)
        cursor = p + ENQUEUE_HEADER
        if dead != NULL:
            cursor[0] = <char>dead.reason
            ff_store_le32(cursor + 4, dead.receive_count)
            ff_store_le64(cursor + 8, <uint64_t>dead.first_receive_us)
            ff_store_le64(cursor + 16, <uint64_t>dead.last_receive_us)
            ff_store_le64(cursor + 24, <uint64_t>dead.time_us)
            ff_store_le32(cursor + 32, dead.source_queue)
            ff_store_le32(cursor + 36, <uint32_t>name_len)
            memcpy(cursor + ENQUEUE_DEAD, name, name_len)
            cursor += ENQUEUE_DEAD + ff_align8(<uint64_t>name_len)
        if entry.first_receive_us >= 0:
            ff_store_le64(cursor, <uint64_t>entry.first_receive_us)
            ff_store_le64(cursor + 8, <uint64_t>entry.last_receive_us)
            cursor += ENQUEUE_RECEIVES
        if inline:
            ff_store_le64(cursor, blob.id)
            ff_store_le64(cursor + 8, <uint64_t>blob.timestamp_us)
            ff_store_le64(cursor + 16, <uint64_t>journaled.due_us)
            ff_store_le64(cursor + 24, <uint64_t>blob_expires_us(blob))
            ff_store_le32(cursor + 32, blob.body_len)
            ff_store_le32(cursor + 36, blob.attrs_len)
            ff_store_le16(cursor + 40, blob.group_len)
            ff_store_le16(cursor + 42, blob.dedup_len)
            cursor[44] = <char>blob.priority
            cursor[45] = <char>(MESSAGE_TOPIC if topic != NULL else 0)
            memcpy(cursor + MESSAGE_HEADER, blob_body(blob), blob.body_len)
            memcpy(cursor + MESSAGE_HEADER + blob.body_len, blob_parts(blob),
                   data_len - blob.body_len)
            if topic != NULL:
                ff_store_le16(cursor + MESSAGE_HEADER + data_len, topic_len)
                memcpy(cursor + MESSAGE_HEADER + data_len + 2, topic, topic_len)
        seq = self.journal.finish()
        if inline:
            journaled.seq = seq
            journaled.segment = self.journal.segment_index
        journaled.copies += 1
        entry.journal_seq = seq
        entry.journal_segment = journaled.segment
        self._journal_live(entry.journal_segment, 1)

    cdef uint64_t _journal_release(self, uint64_t seq, uint32_t segment, blob_t* blob,
                                   uint8_t kind=RECORD_REMOVE) noexcept:
        """A durable copy went: its remove record, and it no longer counts as live.

        Moves (dead-lettering, redrive, copy-forward) call it after the enqueue record of
        the new copy, so a crash between the two leaves a duplicate, never a loss; their
        record is of kind ``RECORD_MOVED`` (a remove to recovery), which a full disk does
        not keep when it drops the new copy's record (``Journal.keep_on_full``): kept,
        it would have removed the only copy on disk. Returns the record's sequence (0:
        none written)."""
        cdef char* p
        cdef blob_journal_t* journaled = blob_journal(blob)
        cdef uint64_t written = 0
        if seq == 0:
            return 0
        if self.journal is not None and not self.restoring:
            p = self.journal.reserve(kind, 8)
            if p != NULL:
                ff_store_le64(p, seq)
                written = self.journal.finish()
        self._journal_live(segment, -1)
        journaled.copies -= 1   # a journaled copy's blob has its journal part
        if journaled.copies == 0:
            journaled.seq = 0   # its record may go with its segment
        return written

    cdef uint64_t _journal_next(self) noexcept:
        """The sequence the journal gives its next record (0: no journal)."""
        return 0 if self.journal is None else self.journal.next_seq

    cdef void _note_move(self, uint64_t record_seq, uint64_t old_seq, uint32_t old_segment,
                         uint64_t new_seq, uint64_t message_seq,
                         uint32_t message_segment) noexcept:
        """A move (copy-forward, dead-lettering, redrive) journaled the new copy's record
        (``new_seq``; 0: none, the new queue journals nothing) and the old copy's remove
        (``record_seq``, kind ``RECORD_MOVED``): noted, so that a full disk dropping them
        puts the copy back on its old record (``forget_journal_after``). The notes whose
        records are in the file are let go as more come."""
        if record_seq == 0:
            return
        try:
            if len(self.moves) >= self.moves_limit:
                self.moves = [move for move in self.moves
                              if move[0] > self.journal.written_seq]
                # twice what is left: a batch of moves not written yet (a redrive of
                # 10,000) is not scanned again at every move (it was: seconds)
                self.moves_limit = max(4096, 2 * len(self.moves))
            self.moves.append((record_seq, old_seq, old_segment, new_seq, message_seq,
                               message_segment))
        except MemoryError:
            pass   # (a drop then leaves the copy in memory only, as before 2026-12-07)

    cdef void journal_topic_key(self, uint32_t topic, uint64_t low, uint64_t high,
                                uint64_t message_id, int64_t now_us) noexcept:
        """A topic's dedup window remembered a key (a publish with a dedup id, or a body
        on a content_dedup topic): its record, so a retry after a restart is still a
        duplicate whatever queues the publish reached."""
        cdef char* p = self.journal.reserve(RECORD_TOPIC_KEY, 40)
        if p == NULL:
            return
        ff_store_le32(p, topic)
        ff_store_le64(p + 8, low)
        ff_store_le64(p + 16, high)
        ff_store_le64(p + 24, message_id)
        ff_store_le64(p + 32, <uint64_t>now_us)
        self.journal.finish()

    cdef void _journal_copy(self, uint8_t kind, uint32_t slot, int64_t value) noexcept:
        """Append a small record about a durable copy: lease (at ``value``, its receive
        time), remove, or delay (until ``value``)."""
        cdef char* p
        if self.journal is None or self.restoring:
            return
        p = self.journal.reserve(kind, 8 if kind == RECORD_REMOVE else 16)
        if p == NULL:
            return
        ff_store_le64(p, self.entries[slot].journal_seq)
        if kind != RECORD_REMOVE:
            ff_store_le64(p + 8, <uint64_t>value)
        self.journal.finish()

    def attach_journal(self, Journal journal):
        """Journal every change of a durable queue's copies from now on."""
        self.journal = journal

    def dedup_window(self, uint32_t qid):
        """The dedup window of queue ``qid`` (recovery and snapshots)."""
        return self.dedup_windows[qid]

    def set_durable(self, uint32_t qid, bint durable):
        """Mark a queue durable (its copies are journaled) or not."""
        self.queues[qid].durable = durable

    def set_publishing_topic(self, uint32_t topic_plus_one):
        """The topic (id + 1; 0: none) the next enqueue records name (recovery tests)."""
        self.publishing_topic = topic_plus_one

    def oldest_live_segment(self, uint32_t upto):
        """The lowest segment index below ``upto`` holding the message record of a live
        durable copy, else ``upto``."""
        cdef uint32_t index
        for index in range(min(upto, self.segment_live_capacity)):
            if self.segment_live[index]:
                return index
        return upto

    def segment_live_count(self, uint32_t segment):
        """Live durable copies whose message record is in segment ``segment``."""
        return self.segment_live[segment] if segment < self.segment_live_capacity else 0

    def copy_forward(self, uint32_t below, Py_ssize_t max_copies):
        """Journal afresh the live durable copies whose message record is in a segment
        below ``below`` (a remove record, then a new enqueue record holding the message,
        its receive count, due time and dead-letter info), oldest first, so those
        segments hold nothing live and can be removed. Nothing is moved when there are
        more than ``max_copies``; returns how many were moved (-count when too many).

        The copies that entered the same queue in the same microsecond as a moved one
        move with it, in journal order: recovery restores a queue's copies by entry
        time, ties in journal order, so a moved copy must not land after one that
        entered after it in the same microsecond (a FIFO group's order; a batch shares
        its entry time, and so does every copy under a frozen test clock).
        """
        cdef list found = []
        cdef set tied = set()
        cdef uint32_t slot
        cdef entry_t* entry
        cdef int64_t earliest = INT64_MAX
        cdef int64_t latest = INT64_MIN
        for slot in range(self.entry_capacity):
            entry = &self.entries[slot]
            if entry.state != STATE_FREE and entry.journal_seq and \
                    entry.journal_segment < below:
                found.append((entry.journal_seq, slot))
                tied.add((entry.queue, entry.entered_us))
                earliest = min(earliest, entry.entered_us)
                latest = max(latest, entry.entered_us)
        if found:
            for slot in range(self.entry_capacity):
                entry = &self.entries[slot]
                if entry.state != STATE_FREE and entry.journal_seq and \
                        entry.journal_segment >= below and \
                        earliest <= entry.entered_us <= latest and \
                        (entry.queue, entry.entered_us) in tied:
                    found.append((entry.journal_seq, slot))
        if len(found) > max_copies:
            return -len(found)
        found.sort()
        for _, slot in found:
            self._rejournal(slot, below)
        return len(found)

    cdef void _rejournal(self, uint32_t slot, uint32_t below) noexcept:
        """Journal a live durable copy afresh where it is now: a new enqueue record (its
        message in it when the record holding it is in a segment below ``below``), then
        the old record's remove (``RECORD_MOVED``), the move noted for a full disk."""
        cdef entry_t* entry = &self.entries[slot]
        cdef int64_t due = INT64_MIN
        cdef uint32_t index
        cdef uint64_t moved_seq = entry.journal_seq
        cdef uint32_t moved_segment = entry.journal_segment
        cdef blob_journal_t* journaled = blob_journal(entry.blob)
        cdef uint64_t message_seq = journaled.seq
        cdef uint32_t message_segment = journaled.segment
        cdef uint64_t removed
        if entry.state == STATE_DELAYED:
            index = self.timers.position[slot] if slot < self.timers.key_capacity else 0
            if index:
                due = self.timers.nodes[index - 1].due_us
        if journaled.segment < below:
            journaled.seq = 0   # the new record holds the message again
        entry.journal_seq = 0
        self._journal_enqueue(slot, due)   # first the new record, then the remove
        removed = self._journal_release(moved_seq, moved_segment, entry.blob, RECORD_MOVED)
        # undone if a full disk drops the new records (forget_journal_after)
        self._note_move(removed, moved_seq, moved_segment, entry.journal_seq,
                        message_seq, message_segment)

    def forget_journal_after(self, uint64_t seq):
        """The journal dropped its records after ``seq`` (a full disk): the copies they
        described are in memory only from now on (no record names them). Returns the
        message ids of those copies (their publishes were refused: the caller forgets
        their dedup keys, so that a retry is stored, not called a duplicate).

        But a copy that a move (``copy_forward``, a dead-lettering, a redrive; a chain
        of them) took off a record in the file, and whose new record (and the old one's
        remove: ``RECORD_MOVED``, never kept) was dropped, goes back to that record: it
        counts as live there again, and its settles name it (after a restart it is
        where that record puts it). One no entry holds any more (settled since, or
        moved to a queue that journals nothing) has that record removed (a remove
        record, written with the next write). Until 2026-12-07 such copies stayed in
        memory only: a compaction removed the old record's segment and the restart
        lost a live message, or the record stayed and the restart brought back a
        settled one (or a redriven one twice).
        """
        cdef uint32_t slot
        cdef entry_t* entry
        cdef blob_journal_t* journaled
        cdef uint64_t new_seq
        cdef uint64_t old_seq
        cdef uint32_t old_segment
        cdef uint64_t message_seq
        cdef uint32_t message_segment
        cdef dict origin = {}   # a dropped new record -> the file's record of the copy
        cdef list gone = []     # file records whose copies left the durable queues
        cdef uint64_t record_seq
        cdef char* p
        cdef list again = []    # copies put back on their old record: journaled afresh
        cdef set refused = set()   # message ids of the copies now in memory only
        for record_seq, old_seq, old_segment, new_seq, message_seq, message_segment in \
                self.moves:
            if record_seq <= seq:
                continue   # written (and the new copy's record before it)
            # the copy's record in the file: the old one, or, when that one was itself a
            # dropped move's new record (a redrive of a dead letter), that move's origin
            source = ((old_seq, old_segment, message_seq, message_segment) if old_seq <= seq
                      else origin.pop(old_seq, None))
            if source is None:
                continue   # never in the file: in memory only, as any dropped copy
            if new_seq:
                origin[new_seq] = source
            else:
                gone.append(source)
        self.moves = []
        self.moves_limit = 4096
        for slot in range(self.entry_capacity):
            entry = &self.entries[slot]
            if entry.state == STATE_FREE or entry.journal_seq <= seq:
                continue
            source = origin.pop(entry.journal_seq, None) if origin else None
            if source is not None:
                # moved (copied forward, dead-lettered, redriven) in the dropped batch:
                # back on its record in the file, live there again, then journaled
                # afresh where it is now (written with the next write: until then, or
                # if that is refused too, a restart finds it on the old record)
                old_seq, old_segment, message_seq, message_segment = source
                self._journal_live(entry.journal_segment, -1)
                entry.journal_seq = old_seq
                entry.journal_segment = old_segment
                self._journal_live(old_segment, 1)
                journaled = blob_journal(entry.blob)
                if journaled.seq > seq:
                    journaled.seq = message_seq if 0 < message_seq <= seq else 0
                    journaled.segment = message_segment
                again.append(slot)
                continue
            self._journal_live(entry.journal_segment, -1)
            journaled = blob_journal(entry.blob)   # a journaled copy's: not NULL
            journaled.copies -= 1
            if journaled.copies == 0 or journaled.seq > seq:
                journaled.seq = 0
            entry.journal_seq = 0
            refused.add(entry.blob.id)
        # Moves whose copy no entry holds any more: settled after the move, or moved into
        # a queue that journals nothing. Their record in the file goes (a remove, written
        # with the next write): else the restart brought an acked message back.
        for old_seq, old_segment, message_seq, message_segment in [*origin.values(), *gone]:
            p = self.journal.reserve(RECORD_REMOVE, 8)
            if p != NULL:
                ff_store_le64(p, old_seq)
                self.journal.finish()
        for slot in again:
            self._rejournal(slot, 0)
        return refused

    def raise_message_ids(self, uint64_t next_id):
        """Make the next message id at least ``next_id`` (recovery)."""
        if next_id > self.next_message_id:
            self.next_message_id = next_id

    cdef int restore_entry(self, uint32_t qid, blob_t* blob, uint64_t copy_seq,
                           int64_t entered_us, int64_t due_us, uint32_t receive_count,
                           int64_t first_receive_us, int64_t last_receive_us,
                           dead_letter_t* dead) except -1:
        """Put back a durable copy found by recovery (``recovery.pyx``), journaling
        nothing.

        ``blob``: its message, its journal part's ``seq`` and ``segment`` naming the
        record holding it (the entry takes a reference); ``copy_seq``: the sequence of
        its enqueue record; ``due_us``: when it becomes visible (<= ``entered_us``: at
        once); ``first_receive_us``, ``last_receive_us``: its receive times (-1: never
        received); ``dead``: NULL or its dead-letter record, taken over on success (left
        to the caller on an exception).
        """
        cdef uint32_t slot
        self.restoring = True
        try:
            self.enqueue(qid, blob, entered_us, due_us, dead)
        finally:
            self.restoring = False
        slot = self.queues[qid].arrival_tail
        self.entries[slot].receive_count = receive_count
        self.entries[slot].first_receive_us = first_receive_us
        self.entries[slot].last_receive_us = last_receive_us
        self.entries[slot].journal_seq = copy_seq
        self.entries[slot].journal_segment = blob_journal(blob).segment
        blob_journal(blob).copies += 1
        self._journal_live(blob_journal(blob).segment, 1)
        if blob.id >= self.next_message_id:
            self.next_message_id = blob.id + 1
        return 0

    cdef int _group_append(self, uint32_t slot, uint32_t qid, blob_t* blob) except -1:
        cdef GroupTable table = <GroupTable>self.group_tables[qid]
        cdef const char* group_id = blob_parts(blob) + blob.attrs_len
        cdef uint32_t group_index = table.find_or_add(ff_hash128(group_id, blob.group_len))
        cdef fifo_group* group = &table.groups[group_index]
        self.entries[slot].group = group_index
        if group.tail == NIL:
            group.head = slot
        else:
            self.entries[group.tail].group_next = slot
        group.tail = slot
        group.count += 1
        return 0

    # -- dead-lettering ----------------------------------------------------------------

    cdef int _dead_letter(self, uint32_t slot, uint8_t reason, int64_t now_us) except -1:
        """Move a live entry to its queue's dead-letter queue (or drop it, counted)."""
        self._detach(slot)
        return self._dead_letter_detached(slot, reason, now_us)

    cdef int flush_deferred(self, int64_t now_us) except -1:
        """Dead-letter the overflow victims a publish set aside (see make_room)."""
        cdef list victims = self.deferred
        self.deferred = []
        for slot in victims:
            self._dead_letter_detached(slot, DEAD_OVERFLOW, now_us)
        return 0

    cdef int _dead_letter_detached(self, uint32_t slot, uint8_t reason,
                                   int64_t now_us) except -1:
        cdef uint32_t source = self.entries[slot].queue
        cdef int64_t dlq = self.queues[source].dead_letter_queue
        cdef blob_t* blob = self.entries[slot].blob
        cdef dead_letter_t* dead
        cdef int room
        cdef uint64_t moved_seq
        cdef uint32_t moved_segment
        cdef uint64_t message_seq
        cdef uint32_t message_segment
        cdef uint64_t new_seq
        cdef uint64_t mark
        if dlq < 0:
            self.queues[source].dropped[DROP_FOR_DEAD_REASON[reason]] += 1
            self._free_entry(slot)
            return 0
        room = self.room_for(<uint32_t>dlq, 1, self.message_size(blob))
        if room < 0:
            # Counted on the source only: `rejected` counts refused publishes and sends.
            self.queues[source].dropped[DROP_DEAD_LETTER_FULL] += 1
            self._free_entry(slot)
            return 0
        dead = <dead_letter_t*>PyMem_Malloc(sizeof(dead_letter_t))
        if dead == NULL:
            raise MemoryError()
        dead.reason = reason
        dead.source_queue = source
        dead.source_incarnation = self.queues[source].incarnation
        dead.source_name = <PyObject*>self.names[source]
        Py_INCREF(<object>dead.source_name)
        dead.receive_count = self.entries[slot].receive_count
        dead.first_receive_us = self.entries[slot].first_receive_us
        dead.last_receive_us = self.entries[slot].last_receive_us
        dead.time_us = now_us
        # Keep the blob alive while the source entry is freed and room is made; the
        # source copy's remove record follows the dead letter's enqueue record.
        blob.refcount += 1
        moved_seq = self.entries[slot].journal_seq
        moved_segment = self.entries[slot].journal_segment
        message_seq = message_segment = 0
        if moved_seq:
            message_seq = blob_journal(blob).seq
            message_segment = blob_journal(blob).segment
        self.entries[slot].journal_seq = 0
        self._free_entry(slot)
        new_seq = 0
        try:
            if room == 0:
                self.make_room(<uint32_t>dlq, 1, self.message_size(blob), now_us)
            mark = self._journal_next()
            # A copy in memory only (its record refused by a full disk) stays so: until
            # 2026-12-07 its dead letter was journaled, and a send answered StoreFull
            # came back after the restart.
            self.moving_unjournaled = moved_seq == 0 and self.queues[source].durable
            try:
                self.enqueue(<uint32_t>dlq, blob, now_us, INT64_MIN, dead)
            finally:
                self.moving_unjournaled = False
            if self._journal_next() > mark:
                new_seq = self._journal_next() - 1   # the dead letter's enqueue record
        except BaseException:
            dead_letter_free(dead)
            self._journal_release(moved_seq, moved_segment, blob)   # (a loss: a remove)
            blob_release(blob)
            raise
        self._note_move(self._journal_release(moved_seq, moved_segment, blob, RECORD_MOVED),
                        moved_seq, moved_segment, new_seq, message_seq, message_segment)
        blob_release(blob)
        self.queues[source].dead_lettered += 1
        return 0

    # -- time --------------------------------------------------------------------------

    cdef int _expire_retention(self, int64_t now_us) except -1:
        cdef uint32_t qid
        cdef uint32_t slot
        cdef queue_t* q
        cdef int64_t next_due = INT64_MAX
        cdef int64_t end
        for qid in range(self.queue_count):
            q = &self.queues[qid]
            if not q.alive:
                continue
            while q.arrival_head != NIL:
                slot = q.arrival_head
                end = self.arrival_entered_us(slot) + q.retention_us
                if end > now_us:
                    if end < next_due:
                        next_due = end
                    break
                self.discard(slot)
                q.dropped[DROP_RETENTION] += 1
        self.retention_due_us = next_due
        return 0

    cdef int advance_to(self, int64_t now_us) except -1:
        """Apply everything due at ``now_us``: retention first, then timers in order."""
        cdef uint32_t slot
        cdef int64_t due
        cdef entry_t* entry
        cdef queue_t* q
        cdef int64_t backoff
        if now_us >= self.retention_due_us:
            self._expire_retention(now_us)
        while self._pop_due(now_us, &slot, &due):
            entry = &self.entries[slot]
            q = &self.queues[entry.queue]
            if entry.state == STATE_LEASED:
                # A lease ran out: a failed delivery. With a backoff the message waits
                # (from the lease end, so the schedule does not depend on when we looked).
                backoff = self._backoff(slot)
                q.leased -= 1
                self._lease_ended(slot)
                if entry.group != NIL:
                    (<GroupTable>self.group_tables[entry.queue]).groups[entry.group].leased = NIL
                if backoff > 0:
                    entry.state = STATE_DELAYED
                    q.delayed += 1
                    if entry.journal_seq:
                        self._journal_copy(RECORD_DELAY, slot, due + backoff)
                    self._arm(slot, due + backoff)
                    continue
            else:
                q.delayed -= 1
            self._make_visible(slot)
        return 0

    # -- deadlines -----------------------------------------------------------------------

    cdef int _arm(self, uint32_t slot, int64_t due_us) except -1:
        """Arm the slot timer of an entry (a delay, or a lease out of list order)."""
        self.timers.arm_seq(slot, due_us, self.timer_seq)
        self.timer_seq += 1
        return 0

    cdef int _arm_lease(self, uint32_t slot, int64_t due_us) except -1:
        """Give a leased entry its deadline: appended to its queue's lease list when that
        keeps the list in order (the usual case, O(1)), else a slot timer."""
        cdef entry_t* entry = &self.entries[slot]
        cdef uint32_t qid = entry.queue
        cdef queue_t* q = &self.queues[qid]
        cdef uint32_t tail = q.lease_tail
        if tail != NIL and self.entries[tail].lease_due_us > due_us:
            entry.lease_listed = 0
            return self._arm(slot, due_us)
        entry.lease_listed = 1
        entry.lease_due_us = due_us
        entry.lease_seq = self.timer_seq
        self.timer_seq += 1
        entry.visible_prev = tail
        entry.visible_next = NIL
        q.lease_tail = slot
        if tail != NIL:
            self.entries[tail].visible_next = slot
            return 0
        q.lease_head = slot
        self.lease_timers.arm_seq(qid, due_us, entry.lease_seq)
        return 0

    cdef void _unlink_lease(self, uint32_t slot) noexcept:
        """Take an entry out of its lease list (its queue timer may now be early)."""
        cdef entry_t* entry = &self.entries[slot]
        cdef queue_t* q = &self.queues[entry.queue]
        entry.lease_listed = 0
        if entry.visible_prev == NIL:
            q.lease_head = entry.visible_next
        else:
            self.entries[entry.visible_prev].visible_next = entry.visible_next
        if entry.visible_next == NIL:
            q.lease_tail = entry.visible_prev
        else:
            self.entries[entry.visible_next].visible_prev = entry.visible_prev

    cdef void _disarm(self, uint32_t slot) noexcept:
        """Cancel whatever deadline a leased or delayed entry has."""
        if self.entries[slot].lease_listed:
            self._unlink_lease(slot)
        else:
            self.timers.disarm(slot)

    cdef int _settle_lease_timers(self, int64_t limit_us) except -1:
        """Put right the queue timers that are due by ``limit_us`` but early: each is
        re-armed at its list's head, or dropped with an empty list."""
        cdef int64_t due
        cdef uint64_t seq
        cdef uint32_t qid
        cdef uint32_t head
        while self.lease_timers.peek_top(&due, &seq, &qid) and due <= limit_us:
            head = self.queues[qid].lease_head
            if head == NIL:
                self.lease_timers.pop_top()
            elif self.entries[head].lease_seq != seq:
                self.lease_timers.arm_seq(qid, self.entries[head].lease_due_us,
                                          self.entries[head].lease_seq)
            else:
                return 0
        return 0

    cdef bint _pop_due(self, int64_t now_us, uint32_t* slot, int64_t* due_us) except -1:
        """Pop the earliest deadline due at ``now_us`` across the slot heap and the lease
        lists, by (deadline, seq); False when nothing is due."""
        cdef int64_t slot_due
        cdef uint64_t slot_seq
        cdef uint32_t slot_key
        cdef int64_t queue_due
        cdef uint64_t queue_seq
        cdef uint32_t qid
        cdef uint32_t head
        cdef int64_t pending_due
        cdef uint64_t pending_seq
        cdef uint32_t pending_key
        cdef bint has_slot = self.timers.peek_top(&slot_due, &slot_seq, &slot_key)
        cdef bint has_queue
        cdef bint has_pending = self._pending_top(&pending_due, &pending_seq, &pending_key)
        if has_pending and pending_due <= now_us and (
                not has_slot or pending_due < slot_due or
                (pending_due == slot_due and pending_seq < slot_seq)):
            # The pending copy beats every slot timer; it stands for the slot heap below.
            has_slot = True
            slot_due = pending_due
            slot_seq = pending_seq
        else:
            has_pending = False
        self._settle_lease_timers(now_us)
        has_queue = self.lease_timers.peek_top(&queue_due, &queue_seq, &qid)
        if has_queue and queue_due <= now_us and (
                not has_slot or queue_due < slot_due or
                (queue_due == slot_due and queue_seq < slot_seq)):
            head = self.queues[qid].lease_head
            self._unlink_lease(head)
            slot[0] = head
            due_us[0] = queue_due
            head = self.queues[qid].lease_head
            if head == NIL:
                self.lease_timers.pop_top()
            else:
                self.lease_timers.arm_seq(qid, self.entries[head].lease_due_us,
                                          self.entries[head].lease_seq)
            return True
        if has_pending:
            slot[0] = self._materialize(pending_key)   # before the pop: it may fail
            self.pending_timers.pop_top()
            due_us[0] = pending_due
            return True
        if has_slot and slot_due <= now_us:
            self.timers.pop_top()
            slot[0] = slot_key
            due_us[0] = slot_due
            return True
        return False

    def tick(self, object clock):
        """Read ``clock`` (seconds), apply everything due, return the time in microseconds.

        Rounds like Python's ``round(seconds * 1e6)`` (ties to even).
        """
        cdef int64_t now_us = _clock_us(clock)
        self.advance_to(now_us)
        return now_us

    def due_in_us(self, object clock):
        """Microseconds from ``clock``'s now to the next lease or delay end (0: due now;
        None: nothing pending), without applying what is due."""
        due = self.next_due_us()
        if due is None:
            return None
        cdef int64_t now_us = _clock_us(clock)
        return 0 if due <= now_us else due - now_us

    def advance(self, int64_t now_us):
        """Apply everything due at ``now_us`` (retention, lease ends, delays)."""
        self.advance_to(now_us)

    def next_due_us(self):
        """The next time something becomes due (lease end, delay end), or None."""
        cdef int64_t due = self.timers.next_due()
        cdef int64_t pending_due = INT64_MAX
        cdef uint64_t pending_seq
        cdef uint32_t pending_key
        cdef int64_t queue_due
        cdef uint64_t seq
        cdef uint32_t qid
        self._settle_lease_timers(INT64_MAX)
        if self.lease_timers.peek_top(&queue_due, &seq, &qid) and queue_due < due:
            due = queue_due
        if self._pending_top(&pending_due, &pending_seq, &pending_key) and pending_due < due:
            due = pending_due
        return None if due == INT64_MAX else due

    # -- leasing (deliveries.pyx builds what receive returns) ---------------------------

    cdef int _expire_entry(self, uint32_t slot, int64_t now_us) except -1:
        """A message outlived its TTL: dead-letter it (reason expired) or drop it, counted."""
        cdef uint32_t qid = self.entries[slot].queue
        if self.queues[qid].dead_letter_queue >= 0:
            return self._dead_letter(slot, DEAD_EXPIRED, now_us)
        self._detach(slot)
        self._free_entry(slot)
        self.queues[qid].dropped[DROP_EXPIRED] += 1
        return 0

    cdef uint32_t _lease_next(self, uint32_t qid, int* level, int64_t lease_us,
                              int64_t now_us, uint32_t owner) except? 0xFFFFFFFE:
        """Lease the next deliverable message for ``owner`` (an open owner's slot),
        highest priority level first (``level`` is the caller's cursor); NIL when nothing
        is visible.

        Per-message TTL and max_receive_count are settled on the way, when a message
        reaches the head (RabbitMQ's rule for TTL); a dead-lettered copy never expires.
        """
        cdef uint32_t slot
        while level[0] >= 0:
            slot = self.queues[qid].visible_head[level[0]]
            if slot == NIL:
                level[0] -= 1
            elif self._lease_head(qid, slot, lease_us, now_us, owner):
                return slot
        return NIL

    cdef bint _lease_head(self, uint32_t qid, uint32_t slot, int64_t lease_us,
                          int64_t now_us, uint32_t owner) except -1:
        """Lease the listed visible entry ``slot`` (True), or settle it first when it
        expired or ran out of receives (False: dead-lettered or dropped)."""
        cdef queue_t* q = &self.queues[qid]
        cdef entry_t* entry = &self.entries[slot]
        if entry.blob.flags & BLOB_EXPIRES and blob_expires_us(entry.blob) <= now_us \
                and entry.dead == NULL:
            self._expire_entry(slot, now_us)
            return False
        if q.max_receive_count >= 0 and entry.receive_count + 1 > <uint64_t>q.max_receive_count:
            self._dead_letter(slot, DEAD_MAX_RECEIVES, now_us)
            return False
        self._leave_visible(slot)
        if entry.group != NIL:
            (<GroupTable>self.group_tables[qid]).groups[entry.group].leased = slot
        entry.state = STATE_LEASED
        entry.generation += 1
        entry.owner = owner
        self.owners[owner].outstanding += 1
        entry.receive_count += 1
        if entry.first_receive_us < 0:
            entry.first_receive_us = now_us
        entry.last_receive_us = now_us
        if entry.journal_seq:
            self._journal_copy(RECORD_LEASE, slot, now_us)
        q.leased += 1
        q.delivered += 1
        if entry.receive_count > 1:
            q.redelivered += 1
        self._arm_lease(slot, now_us + lease_us)
        return True

    # -- receipts (the primitives; the calls by receipt are in receipts.pyx) ------------

    cdef uint32_t _lease_slot(self, uint64_t receipt, uint32_t session) noexcept:
        """The slot a receipt names if its delivery still holds the lease and ``session``
        may settle it (``ANY_SESSION``, or the session of the lease's owner), else NIL."""
        cdef uint32_t slot = <uint32_t>receipt   # the low 32 bits (a C cast, no Python int)
        cdef uint32_t generation = <uint32_t>(receipt >> 32)
        if slot >= self.entry_capacity:
            return NIL
        if self.entries[slot].state != STATE_LEASED or self.entries[slot].generation != generation:
            return NIL
        if session != ANY_SESSION and self.owners[self.entries[slot].owner].session != session:
            return NIL   # another session's delivery: as stale to this one as an ended lease
        return slot

    cdef uint32_t _require_lease(self, object receipt_object,
                                 uint32_t session) except? 0xFFFFFFFF:
        cdef uint64_t receipt = receipt_value(receipt_object)
        cdef uint32_t slot = self._lease_slot(receipt, session)
        if slot == NIL:
            raise StaleReceipt(
                f"receipt {receipt} is stale: its lease ended (acked, nacked, expired, "
                f"redelivered, purged or its queue deleted) or was made for another "
                f"session", [receipt])
        return slot

    # -- owners (see the module essay) --------------------------------------------------

    cdef uint32_t require_owner(self, object owner) except? 0xFFFFFFFF:
        """``owner`` as the slot of an open owner; InvalidArgument otherwise."""
        if type(owner) is not int or not 0 <= owner < self.owner_capacity or \
                not self.owners[<uint32_t>owner].open:
            raise InvalidArgument(f"owner {owner!r} is not an open owner tag")
        return <uint32_t>owner

    cdef uint32_t require_session(self, object session) except? 0xFFFFFFFF:
        """``session`` as the tag of an open session (``ANY_SESSION`` included)."""
        cdef uint32_t tag = self.require_owner(session)
        if self.owners[tag].session != tag:
            raise InvalidArgument(f"owner {session!r} is a consumer, not a session")
        return tag

    cdef void _free_owner(self, uint32_t owner) noexcept:
        """Recycle a closed owner's slot (no lease, no consumer left); a consumer's going
        may free its closed session in turn."""
        cdef uint32_t session = self.owners[owner].session
        self.owners[owner].session = NIL
        self.owners[owner].next_free = self.owner_free_head
        self.owner_free_head = owner
        if session != owner:
            self.owners[session].children -= 1
            if (self.owners[session].children == 0 and not self.owners[session].open
                    and self.owners[session].outstanding == 0):
                self._free_owner(session)

    def open_owner(self, object session=None, uint32_t limit=0):
        """A new owner tag: a session's (``session`` None) or a push consumer's of the
        open session ``session``, whose pushes leave it at most ``limit`` leases (0: no
        limit)."""
        cdef uint32_t parent = NIL if session is None else self.require_session(session)
        cdef uint32_t owner
        cdef uint32_t capacity
        cdef owner_t* grown
        if self.owner_free_head == NIL:
            if self.owner_capacity >= 0x7FFFFFFF:
                raise MemoryError("2**31 owners are open: the store's hard limit")
            capacity = self.owner_capacity * 2
            grown = <owner_t*>PyMem_Realloc(self.owners, capacity * sizeof(owner_t))
            if grown == NULL:
                raise MemoryError()
            self.owners = grown
            for owner in range(self.owner_capacity, capacity):
                grown[owner].session = NIL
                grown[owner].open = 0
                grown[owner].next_free = owner + 1 if owner + 1 < capacity else NIL
            self.owner_free_head = self.owner_capacity
            self.owner_capacity = capacity
        owner = self.owner_free_head
        self.owner_free_head = self.owners[owner].next_free
        self.owners[owner].outstanding = 0
        self.owners[owner].session = owner if parent == NIL else parent
        self.owners[owner].limit = limit
        self.owners[owner].children = 0
        self.owners[owner].next_free = NIL
        self.owners[owner].open = 1
        if parent != NIL:
            self.owners[parent].children += 1
        return owner

    def close_owner(self, object owner):
        """Close an owner: it takes no new lease; its slot is reused once its last lease
        has ended (and, for a session, its consumers' slots are free)."""
        cdef uint32_t tag = self.require_owner(owner)
        if tag == 0:
            raise InvalidArgument("owner 0 (the embedded broker's) is never closed")
        self.owners[tag].open = 0
        if self.owners[tag].outstanding == 0 and self.owners[tag].children == 0:
            self._free_owner(tag)

    def outstanding(self, object owner):
        """Leases an open owner holds now."""
        return self.owners[self.require_owner(owner)].outstanding

    cdef void _ack_slot(self, uint32_t slot) noexcept:
        cdef queue_t* q = &self.queues[self.entries[slot].queue]
        self._detach(slot)
        self._free_entry(slot)
        q.acked += 1

    cdef void _return(self, uint32_t slot, int64_t delay_us, int64_t now_us) noexcept:
        """End a lease early: visible again, or delayed by ``delay_us`` (< 0: the backoff)."""
        cdef queue_t* q = &self.queues[self.entries[slot].queue]
        self._disarm(slot)
        q.leased -= 1
        self._lease_ended(slot)
        if self.entries[slot].group != NIL:
            (<GroupTable>self.group_tables[self.entries[slot].queue]).groups[
                self.entries[slot].group].leased = NIL
        if delay_us < 0:
            delay_us = self._backoff(slot)
        if delay_us > 0:
            self.entries[slot].state = STATE_DELAYED
            q.delayed += 1
            if self.entries[slot].journal_seq:
                self._journal_copy(RECORD_DELAY, slot, now_us + delay_us)
            # _arm() can fail only on OOM growing the heap; a lease just left it or a list.
            self._arm(slot, now_us + delay_us)
        else:
            self._make_visible(slot)

    def new_message_ids(self, uint64_t count):
        """Reserve ``count`` consecutive message ids; returns the first."""
        cdef uint64_t first = self.next_message_id
        self.next_message_id += count
        return first

    @property
    def entries_live(self):
        """Message copies held across all queues (pending copies included)."""
        return self.live_entries + self.pending_live

    @property
    def pending_copies(self):
        """Delayed copies held as pending copies (no entry yet; see the module essay)."""
        return self.pending_live
