"""The store's invariants, checked in full: for tests and the debug build.

``check(store)`` walks every queue's lists and timers and asserts each invariant of
``store.pyx``'s module essay (one state per live entry, lease lists in deadline order,
gauges equal to what the lists hold, no stray timer, each owner's lease count equal to
the leases tagged with it). It is O(entries): the debug build
runs it before every broker call, the tests after every step of the model comparison.
"""

from libc.stdint cimport uint32_t, uint64_t

from fastfanout._ext.store cimport (
    NIL,
    PENDING_MASK,
    PENDING_TAG,
    STATE_DELAYED,
    STATE_LEASED,
    STATE_VISIBLE,
    Store,
    queue_t,
)


def check(Store store):
    """Verify every invariant of the module docstring (slow; for tests and debug)."""
    cdef uint32_t qid
    cdef uint32_t slot
    cdef uint32_t level
    cdef uint64_t visible
    cdef uint64_t leased
    cdef uint64_t delayed
    cdef uint64_t size
    cdef uint64_t live = 0
    cdef queue_t* q
    cdef dict owned = {}
    cdef uint32_t previous
    cdef uint32_t pending
    cdef uint64_t pending_seen = 0
    cdef Py_ssize_t node
    cdef dict pending_timers = {}   # pending index -> timers in the heap
    for node in range(store.pending_timers.size):
        pending = store.pending_timers.nodes[node].key
        pending_timers[pending] = pending_timers.get(pending, 0) + 1
    for qid in range(store.queue_count):
        q = &store.queues[qid]
        if not q.alive:
            assert q.arrival_head == NIL, "a deleted queue holds entries"
            continue
        visible = leased = delayed = size = 0
        slot = q.arrival_head
        previous = NIL
        while slot != NIL:
            if slot & PENDING_TAG:
                pending = slot & PENDING_MASK
                assert pending < store.pending_used and \
                    store.pending_blobs[pending] != NULL, "a free pending copy is listed"
                assert store.pendings[pending].queue == qid, \
                    "pending copy in another queue's list"
                assert store.pendings[pending].arrival_prev == previous, "broken arrival links"
                assert pending_timers.get(pending) == 1, "a pending copy has no timer, or two"
                delayed += 1
                pending_seen += 1
                size += store.message_size(store.pending_blobs[pending])
                previous = slot
                slot = store.pendings[pending].arrival_next
                continue
            assert store.entries[slot].arrival_prev == previous, "broken arrival links"
            assert store.entries[slot].queue == qid, "entry in another queue's list"
            state = store.entries[slot].state
            if state == STATE_VISIBLE:
                visible += 1
                assert not store.timers.armed(slot), "a visible entry has a timer"
            elif state == STATE_LEASED:
                leased += 1
                owner = store.entries[slot].owner
                assert owner < store.owner_capacity and store.owners[owner].session != NIL, \
                    "a lease of a free owner"
                owned[owner] = owned.get(owner, 0) + 1
                assert store.entries[slot].lease_listed != store.timers.armed(slot), \
                    "a leased entry has no deadline, or two"
            elif state == STATE_DELAYED:
                delayed += 1
                assert store.timers.armed(slot), "a delayed entry has no timer"
            else:
                raise AssertionError("a free entry is in an arrival list")
            size += store.message_size(store.entries[slot].blob)
            previous = slot
            slot = store.entries[slot].arrival_next
        assert q.arrival_tail == previous, "stale arrival tail"
        assert (visible, leased, delayed, size) == (q.visible, q.leased, q.delayed, q.bytes), \
            f"gauges of queue {store.names[qid]} disagree with its lists"
        count = 0
        for level in range(q.levels):
            slot = q.visible_head[level]
            while slot != NIL:
                assert store.entries[slot].state == STATE_VISIBLE, "non-visible entry listed"
                count += 1
                slot = store.entries[slot].visible_next
        if q.fifo:
            assert count <= q.visible, "more listed than visible entries"
        else:
            assert count == q.visible, "visible lists disagree with the visible gauge"
        live += visible + leased + delayed
    assert live == store.live_entries + store.pending_live, \
        "slab count disagrees with the queues"
    assert pending_seen == store.pending_live, "pending copies and their count disagree"
    assert <uint64_t>len(pending_timers) == store.pending_live + store.pending_dropped == <uint64_t>len(
        store.pending_timers), "pending timers disagree with the live and dropped copies"
    for pending, count in pending_timers.items():
        assert pending < store.pending_used and count == 1, "a stray pending timer"
    pending = store.pending_free_head
    while pending != NIL:
        assert pending < store.pending_used and store.pending_blobs[pending] == NULL and \
            pending not in pending_timers, "a pending copy in use is on the free list"
        pending = store.pendings[pending].arrival_next
    for owner in range(store.owner_capacity):
        if store.owners[owner].session != NIL:
            assert store.owners[owner].outstanding == owned.get(owner, 0), \
                f"owner {owner} counts {store.owners[owner].outstanding} leases, holds " \
                f"{owned.get(owner, 0)}"
            assert store.owners[owner].open or store.owners[owner].outstanding or \
                store.owners[owner].children, f"owner {owner} is closed and idle, not free"
    assert not store.deferred, "overflow victims left undelivered"
    listed = 0
    for qid in range(store.queue_count):
        q = &store.queues[qid]
        slot = q.lease_head
        if slot != NIL:
            assert store.lease_timers.armed(qid), "a lease list without a queue timer"
        level = 0   # the previous entry's slot + 1 (0: none yet)
        while slot != NIL:
            assert q.alive, "a deleted queue holds leases"
            assert store.entries[slot].queue == qid, "lease in another queue's list"
            assert store.entries[slot].state == STATE_LEASED, "a lease list holds a non-lease"
            assert store.entries[slot].lease_listed, "unflagged entry in a lease list"
            if level:
                assert (store.entries[level - 1].lease_due_us,
                        store.entries[level - 1].lease_seq) < (
                    store.entries[slot].lease_due_us, store.entries[slot].lease_seq), \
                    "a lease list out of (deadline, seq) order"
                assert store.entries[slot].visible_prev == level - 1, "broken lease links"
            else:
                assert store.entries[slot].visible_prev == NIL, "broken lease links"
            level = slot + 1
            listed += 1
            slot = store.entries[slot].visible_next
        assert q.lease_tail == (NIL if level == 0 else level - 1), "stale lease tail"
    assert len(store.timers) + len(store.pending_timers) - store.pending_dropped + listed == sum(
        store.queues[qid].leased + store.queues[qid].delayed
        for qid in range(store.queue_count) if store.queues[qid].alive), "stray timers"
    return True
