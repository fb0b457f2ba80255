"""Whole-queue operations of the store: create, delete, purge, redrive, counters.

Design
------
Prior art: SQS's ``CreateQueue`` / ``DeleteQueue`` / ``PurgeQueue`` and its dead-letter
redrive (``StartMessageMoveTask``); RabbitMQ's ``queue.purge``.

Functions over a ``Store``: ``store.pyx`` holds the per-message machinery (entries,
visible and lease lists, timers, enqueue and dead-lettering), this module the calls
that act on a queue as a whole. A deleted queue frees its allocations and its id is
taken by the next queue created (its ``incarnation`` bumped): receipts name entry slots
and generations, not queues, and a dead-letter record holds its source's name, so a
reused id confuses neither (short-lived queues keep the broker's memory flat).
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport INT64_MIN, int64_t, uint32_t, uint64_t

from fastfanout._ext.blobs cimport blob_journal, blob_release, blob_t
from fastfanout._ext.dedup cimport DedupWindow
from fastfanout._ext.groups cimport GroupTable
from fastfanout._ext.store cimport (
    DROP_REASON_COUNT,
    NIL,
    PENDING_TAG,
    RECORD_MOVED,
    STATE_VISIBLE,
    Store,
    dead_letter_t,
    queue_t,
)


cdef int64_t* _backoff_steps(list backoff_us) except? NULL:
    """``backoff_us`` as a C array for a queue (NULL for none); the queue frees it."""
    cdef int64_t* backoff
    cdef Py_ssize_t level
    if not backoff_us:
        return NULL
    backoff = <int64_t*>PyMem_Malloc(len(backoff_us) * sizeof(int64_t))
    if backoff == NULL:
        raise MemoryError()
    for level in range(len(backoff_us)):
        backoff[level] = backoff_us[level]
    return backoff


cdef inline void _set_changeable(queue_t* q, int64_t visibility_us, int64_t delay_us,
                                 int64_t max_messages, int64_t max_bytes,
                                 int64_t max_message_size, int64_t max_receive_count,
                                 int64_t dead_letter_queue, int overflow) noexcept:
    """The settings ``set_queue_settings`` may change (but retention and the backoff)."""
    q.visibility_us = visibility_us
    q.delay_us = delay_us
    q.max_messages = max_messages
    q.max_bytes = max_bytes
    q.max_message_size = max_message_size
    q.max_receive_count = max_receive_count
    q.dead_letter_queue = dead_letter_queue
    q.overflow = overflow


def add_queue(Store store, str name, int64_t visibility_us, int64_t delay_us,
              int64_t retention_us, int64_t max_messages, int64_t max_bytes,
              int64_t max_message_size, int64_t max_receive_count, int64_t dead_letter_queue,
              int overflow, int max_priority, bint fifo=False, bint content_dedup=False,
              int64_t dedup_window_us=300_000_000, list backoff_us=None):
    """Create a queue from validated settings; returns its id.

    The id of a deleted queue is taken again (its incarnation bumped), else a new one.
    """
    cdef queue_t* grown
    cdef queue_t* q
    cdef uint32_t capacity
    cdef uint32_t level
    cdef uint32_t qid
    cdef uint32_t incarnation = 0
    cdef int64_t* backoff = NULL
    cdef uint32_t* visible_head = NULL
    cdef uint32_t* visible_tail = NULL
    cdef bint reused = len(store.free_queue_ids) > 0
    if not reused and store.queue_count == store.queue_capacity:
        capacity = store.queue_capacity * 2 if store.queue_capacity else 16
        grown = <queue_t*>PyMem_Realloc(store.queues, capacity * sizeof(queue_t))
        if grown == NULL:
            raise MemoryError()
        store.queues = grown
        store.queue_capacity = capacity
    backoff = _backoff_steps(backoff_us)
    visible_head = <uint32_t*>PyMem_Malloc((max_priority + 1) * sizeof(uint32_t))
    visible_tail = <uint32_t*>PyMem_Malloc((max_priority + 1) * sizeof(uint32_t))
    if visible_head == NULL or visible_tail == NULL:
        PyMem_Free(visible_head)
        PyMem_Free(visible_tail)
        PyMem_Free(backoff)
        raise MemoryError()
    group_table = GroupTable() if fifo else None
    window = DedupWindow(dedup_window_us)
    # Nothing can fail from here on.
    if reused:
        qid = store.free_queue_ids.pop()
        incarnation = store.queues[qid].incarnation + 1
        store.names[qid] = name
        store.group_tables[qid] = group_table
        store.dedup_windows[qid] = window
    else:
        qid = store.queue_count
        store.names.append(name)
        store.group_tables.append(group_table)
        store.dedup_windows.append(window)
        store.queue_count += 1
    q = &store.queues[qid]
    q.backoff_us = backoff
    q.backoff_count = len(backoff_us) if backoff_us else 0
    q.visible_head = visible_head
    q.visible_tail = visible_tail
    for level in range(max_priority + 1):
        q.visible_head[level] = NIL
        q.visible_tail[level] = NIL
    q.levels = max_priority + 1
    q.alive = True
    q.durable = False
    q.incarnation = incarnation
    q.retention_us = retention_us
    _set_changeable(q, visibility_us, delay_us, max_messages, max_bytes, max_message_size,
                    max_receive_count, dead_letter_queue, overflow)
    q.fifo = fifo
    q.content_dedup = content_dedup
    q.keeps_topics = False
    q.duplicates = 0
    q.oversized = 0
    q.arrival_head = NIL
    q.arrival_tail = NIL
    q.lease_head = NIL
    q.lease_tail = NIL
    q.visible = q.leased = q.delayed = q.bytes = 0
    q.enqueued = q.delivered = q.redelivered = q.acked = 0
    q.dead_lettered = q.redriven = q.rejected = q.purged = 0
    for level in range(<uint32_t>DROP_REASON_COUNT):
        q.dropped[level] = 0
    return qid


def set_queue_settings(Store store, uint32_t qid, int64_t visibility_us, int64_t delay_us,
                       int64_t retention_us, int64_t max_messages, int64_t max_bytes,
                       int64_t max_message_size, int64_t max_receive_count,
                       int64_t dead_letter_queue, int overflow, list backoff_us=None):
    """Change the settings of live queue ``qid`` that may change (validated settings).

    Every one applies from the next operation that reads it: a new lease, a publish's
    delay and limits, the next delivery's receive-count check, the next failure's
    backoff. Retention applies to the messages already held too (SQS's rule): the next
    advance of the clock scans again. Ordering, priorities and deduplication are a
    queue's for life (``add_queue`` only).
    """
    cdef queue_t* q = &store.queues[qid]
    cdef int64_t* backoff = _backoff_steps(backoff_us)
    # Nothing can fail from here on.
    PyMem_Free(q.backoff_us)
    q.backoff_us = backoff
    q.backoff_count = len(backoff_us) if backoff_us else 0
    if retention_us != q.retention_us:
        q.retention_us = retention_us
        store.retention_due_us = 0   # the next advance of the clock finds the new ends
    _set_changeable(q, visibility_us, delay_us, max_messages, max_bytes, max_message_size,
                    max_receive_count, dead_letter_queue, overflow)


def set_keeps_topics(Store store, uint32_t qid, bint keeps):
    """Whether a publish reaching queue ``qid`` puts its topic's name into the message's
    blob (so its deliveries carry the topic): set for a queue holding a pattern
    subscription. It applies from the next publish on."""
    store.queues[qid].keeps_topics = keeps


def remove_queue(Store store, uint32_t qid):
    """Delete a queue and every copy it holds (their receipts go stale).

    Its allocations are freed and its id is kept for the next ``add_queue``: a receipt
    names an entry slot and generation, not a queue, and a dead-letter record keeps its
    source's name, so neither can be confused by the reuse.
    """
    cdef queue_t* q = &store.queues[qid]
    while q.arrival_head != NIL:
        store.discard(q.arrival_head)
    store.lease_timers.disarm(qid)   # a stale queue timer must not outlive its queue
    PyMem_Free(q.visible_head)
    PyMem_Free(q.visible_tail)
    PyMem_Free(q.backoff_us)
    q.visible_head = q.visible_tail = NULL
    q.backoff_us = NULL
    q.backoff_count = 0
    q.levels = 0
    q.alive = False
    store.names[qid] = None
    store.group_tables[qid] = None
    store.dedup_windows[qid] = None
    store.free_queue_ids.append(qid)


def redrive(Store store, uint32_t dlq, int64_t to, int64_t max_messages, int64_t now_us,
            dict live_queues):
    """Move dead-lettered visible messages back; returns how many moved.

    Without ``to``, each goes to the queue now named like its source queue
    (``live_queues``: name -> id), as SQS redrives to a queue re-created under the
    same name; messages whose source name names no queue stay.
    """
    cdef uint64_t moved = 0
    cdef uint64_t moved_seq
    cdef uint32_t moved_segment
    cdef uint64_t message_seq
    cdef uint32_t message_segment
    cdef uint64_t new_seq
    cdef uint64_t mark
    cdef uint32_t slot
    cdef uint32_t level
    cdef uint32_t target
    cdef uint32_t generation
    cdef dead_letter_t* dead
    cdef blob_t* blob
    cdef int room
    cdef list candidates = []
    # Snapshot the visible messages first: making room in a target may dead-letter
    # messages into this very queue, and those must not be visited in this call.
    if store.group_tables[dlq] is not None:
        # A FIFO queue lists only its groups' heads as visible: take every visible
        # message, in arrival order (so each group's order), not one per group a call.
        slot = store.queues[dlq].arrival_head
        while slot != NIL:
            if not slot & PENDING_TAG and store.entries[slot].state == STATE_VISIBLE:
                candidates.append((slot, store.entries[slot].generation))
            slot = store._arrival_next_of(slot)[0]
    else:
        level = store.queues[dlq].levels
        while level > 0:
            level -= 1
            slot = store.queues[dlq].visible_head[level]
            while slot != NIL:
                candidates.append((slot, store.entries[slot].generation))
                slot = store.entries[slot].visible_next
    for slot, generation in candidates:
        if max_messages >= 0 and moved >= <uint64_t>max_messages:
            break
        if (store.entries[slot].state != STATE_VISIBLE or store.entries[slot].queue != dlq
                or store.entries[slot].generation != generation):
            continue
        dead = store.entries[slot].dead
        if to >= 0:
            target = <uint32_t>to
        elif dead != NULL and <object>dead.source_name in live_queues:
            target = live_queues[<object>dead.source_name]
        else:
            continue
        blob = store.entries[slot].blob
        room = store.room_for(target, 1, store.message_size(blob))
        if room < 0:
            break
        blob.refcount += 1
        store._detach(slot)
        # The dead letter's remove record follows the new copy's enqueue record.
        moved_seq = store.entries[slot].journal_seq
        moved_segment = store.entries[slot].journal_segment
        message_seq = message_segment = 0
        if moved_seq:
            message_seq = blob_journal(blob).seq
            message_segment = blob_journal(blob).segment
        store.entries[slot].journal_seq = 0
        store._free_entry(slot)
        store.queues[dlq].redriven += 1
        new_seq = 0
        try:
            if room == 0:
                store.make_room(target, 1, store.message_size(blob), now_us)
            mark = store._journal_next()
            # (a copy in memory only stays so: see _dead_letter_detached)
            store.moving_unjournaled = moved_seq == 0 and store.queues[dlq].durable
            try:
                store.enqueue(target, blob, now_us, INT64_MIN, NULL)
            finally:
                store.moving_unjournaled = False
            if store._journal_next() > mark:
                new_seq = store._journal_next() - 1   # the new copy's enqueue record
        finally:
            store._note_move(store._journal_release(moved_seq, moved_segment, blob,
                                                    RECORD_MOVED),
                             moved_seq, moved_segment, new_seq, message_seq,
                             message_segment)
            blob_release(blob)
        moved += 1
    return moved


def purge(Store store, uint32_t qid):
    """Remove every message of the queue; returns how many."""
    cdef queue_t* q = &store.queues[qid]
    cdef uint64_t removed = 0
    while q.arrival_head != NIL:
        store.discard(q.arrival_head)
        removed += 1
    q.purged += removed
    return removed


def release_all(Store store):
    """Free every copy every queue holds, journaling nothing: the broker is closing.

    A closed broker serves no call again, so what its queues hold is let go at once
    rather than when the store is collected: the memory of the bodies, and the frames of
    a local client's ring that bodies left in place keep mapped (a stopped server in a
    process that goes on must not keep a dead producer's ring). The journal of a durable
    broker is detached first and keeps every copy for the next start. Returns how many
    copies were freed.
    """
    cdef uint32_t qid
    cdef queue_t* q
    cdef uint64_t freed = 0
    store.journal = None
    for qid in range(store.queue_count):
        q = &store.queues[qid]
        if not q.alive:
            continue
        while q.arrival_head != NIL:
            store.discard(q.arrival_head)
            freed += 1
    return freed


def counters(Store store, uint32_t qid, int64_t now_us):
    """The queue's counters and gauges as a tuple, in QueueStats field order."""
    cdef queue_t* q = &store.queues[qid]
    (<DedupWindow>store.dedup_windows[qid]).expire(now_us)   # live keys only
    cdef double oldest = 0.0
    if q.arrival_head != NIL:
        oldest = (now_us - store.arrival_entered_us(q.arrival_head)) / 1e6
    return (q.enqueued, q.delivered, q.redelivered, q.acked, q.dead_lettered, q.redriven,
            q.rejected, q.purged, q.duplicates, q.oversized,
            len(<DedupWindow>store.dedup_windows[qid]),
            (<DedupWindow>store.dedup_windows[qid]).evicted,
            0 if store.group_tables[qid] is None else len(store.group_tables[qid]),
            [q.dropped[i] for i in range(DROP_REASON_COUNT)],
            q.visible, q.leased, q.delayed, q.visible + q.leased + q.delayed, q.bytes,
            oldest)
