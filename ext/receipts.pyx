"""Settling deliveries by receipt: ack, nack, extend, term, and the packed forms.

Design
------
Prior art: SQS's ``DeleteMessage`` / ``ChangeMessageVisibility`` by receipt handle and
its batch forms; RabbitMQ's ``basic.ack`` / ``basic.nack``.

Functions over a ``Store`` (``store.pyx`` keeps the entries and their lease state; the
slot-level primitives — ``_lease_slot``, ``_ack_slot``, ``_return`` — live there). A
receipt names one delivery: ``generation << 32 | slot``; a stale one (its lease ended)
raises ``StaleReceipt`` listing it. Every call takes the caller's ``session`` tag: the
server passes the session a request came from, and a receipt of a lease made for another
session is stale to it (see "Owners" in ``store.pyx``); ``ANY_SESSION`` (0, the default:
the embedded broker's own calls) may settle any lease. The batch forms are all or none: every receipt is
checked before the first is acked, so a stale receipt changes nothing. The packed forms
read little-endian u64 receipts straight from a wire frame (the server's SETTLE and ACK)
with no Python int per receipt. ``nack_batch``, ``extend_batch`` and ``term_batch`` are
all or none the same way (a receipt repeated in one batch settles once, as in
``ack_batch``) and take either a list of ints or a packed frame (NACK_BATCH and the
others' receipts, or an array the broker packed): one native pass reads them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastfanout._ext.codec cimport ff_load_le64, ff_store_le64
from fastfanout._ext.store cimport (
    ANY_SESSION,
    DEAD_REJECTED,
    NIL,
    Store,
    entry_t,
    receipt_value,
)

from fastfanout.errors import InvalidArgument, StaleReceipt

cdef extern from *:
    """
    #define ff_prefetch_write(address) __builtin_prefetch((address), 1)
    """
    void ff_prefetch_write(const void* address) noexcept nogil

cdef extern from "prefetch.h":
    void ff_prefetch_object(const void* address, size_t size) noexcept nogil

cdef enum settle_kind:
    SETTLE_ACK = 0      # delete the message
    SETTLE_NACK = 1     # return, after arg_us (< 0: the queue's backoff)
    SETTLE_EXTEND = 2   # lease ends arg_us from now (0: return at once, no backoff)
    SETTLE_TERM = 3     # dead-letter, reason rejected

cdef enum:
    ACK_PREFETCH_AHEAD = 12    # receipts ahead of an ack whose blob header is asked for
    CHECK_PREFETCH_AHEAD = 24  # receipts ahead of a check whose entry is asked for

STALE_RECEIPTS_LISTED = 65536
"""Most stale receipts a ``StaleReceipt`` lists (the first ones, each once, in order);
its message counts them all. A 64 MiB frame of stale receipts made the broker list 8
million (a dict of them, then a 40 MB error reply: about 800 MB for one request) until
2026-12-05."""
cdef Py_ssize_t C_STALE_LISTED = STALE_RECEIPTS_LISTED


cdef int _receipts_buffer(object frame, Py_buffer* buffer) except -1:
    """Get ``frame``'s buffer; InvalidArgument (nothing held) unless it holds whole u64s."""
    cdef Py_ssize_t length
    PyObject_GetBuffer(frame, buffer, PyBUF_SIMPLE)
    length = buffer.len
    if length % 8:
        PyBuffer_Release(buffer)
        raise InvalidArgument(
            f"a receipts frame holds u64s: {length} bytes is not a multiple of 8")
    return 0


def receipt_queue(Store store, object receipt, object session=ANY_SESSION):
    """The queue id of a valid receipt's delivery (raises StaleReceipt otherwise)."""
    return store.entries[store._require_lease(receipt, store.require_session(session))].queue


def ack(Store store, object receipt, object session=ANY_SESSION):
    """Delete the leased message of ``receipt``."""
    cdef uint32_t slot = store._require_lease(receipt, store.require_session(session))
    store._ack_slot(slot)


def ack_batch(Store store, list receipts, object session=ANY_SESSION):
    """Ack every receipt, or none if any is stale (then StaleReceipt lists the stale).

    Returns the number of receipts (``_settle_many``: each read and checked once).
    """
    return _settle_many(store, receipts, SETTLE_ACK, 0, 0, session, "acked")


def ack_packed(Store store, frame, object session=ANY_SESSION):
    """Ack receipts packed as little-endian u64s: all of them, or none if any is stale.

    Returns the number of receipts. Raises InvalidArgument when the length is not a
    multiple of 8, StaleReceipt (listing the stale receipts) otherwise.
    """
    cdef Py_ssize_t count
    cdef Py_ssize_t stale_count = 0
    stale = _ack_frame(store, frame, &count, &stale_count, store.require_session(session))
    if stale is not None:
        raise StaleReceipt(
            f"{stale_count} of {count} receipts are stale (first: {stale[0]}"
            f"{_listed(stale, stale_count)}); nothing was acked", stale)
    return count


def ack_frames(Store store, list frames, object session=ANY_SESSION):
    """Ack each receipts frame on its own, all of it or none (as ``ack_packed``).

    Returns the stale receipts of the frames refused, in order (empty: all acked).
    Raises InvalidArgument, acking nothing, when a frame is not a multiple of 8 bytes.
    """
    cdef list stale = []
    cdef Py_ssize_t count
    cdef Py_ssize_t stale_count = 0
    cdef uint32_t tag = store.require_session(session)
    for frame in frames:
        count = memoryview(frame).nbytes
        if count % 8:
            raise InvalidArgument(
                f"a receipts frame holds u64s: {count} bytes is not a multiple of 8")
    for frame in frames:
        refused = _ack_frame(store, frame, &count, &stale_count, tag)
        if refused is not None and len(stale) < C_STALE_LISTED:
            stale += refused[:C_STALE_LISTED - len(stale)]
    return stale


cdef str _listed(list listed, Py_ssize_t stale_count):
    """What an error's message adds when its list of stale receipts was cut."""
    if stale_count <= C_STALE_LISTED or len(listed) < C_STALE_LISTED:
        return ""
    return f"; the first {len(listed)} distinct ones are listed"


cdef inline void _prefetch_entry(Store store, uint64_t receipt) noexcept:
    """Ask for the entry a receipt names (when it names one of the store's slots)."""
    cdef uint32_t slot = <uint32_t>receipt
    if slot < store.entry_capacity:
        ff_prefetch_object(&store.entries[slot], sizeof(entry_t))


cdef list _ack_frame(Store store, object frame, Py_ssize_t* count, Py_ssize_t* stale_count,
                     uint32_t session):
    """Ack a receipts frame whole; None, or (nothing acked) its stale receipts in order
    (the first ``STALE_RECEIPTS_LISTED``).

    ``count`` gets the number of receipts of the frame; ``stale_count`` is increased by
    the number of its stale ones (each time one is met).
    """
    cdef Py_buffer buffer
    cdef const char* data
    cdef Py_ssize_t index
    cdef uint64_t receipt
    cdef uint32_t slot
    cdef dict stale = None
    _receipts_buffer(frame, &buffer)
    try:
        data = <const char*>buffer.buf
        count[0] = buffer.len // 8
        for index in range(count[0]):
            if index + CHECK_PREFETCH_AHEAD < count[0]:
                # Checking a receipt reads its entry, which was last touched when it was
                # leased (a push ago: out of the caches). The receipts are all here, so
                # their entries are asked for 24 checks ahead: the misses overlap
                # instead of stalling one check each (the first item of the broker's
                # profile of a SETTLE before).
                _prefetch_entry(store, ff_load_le64(data + 8 * (index + CHECK_PREFETCH_AHEAD)))
            receipt = ff_load_le64(data + 8 * index)
            if store._lease_slot(receipt, session) == NIL:
                stale_count[0] += 1
                if stale is None:
                    stale = {}
                if len(stale) < C_STALE_LISTED:
                    stale[receipt] = None   # listed once, in order
        if stale is not None:
            return list(stale)
        for index in range(count[0]):
            if index + CHECK_PREFETCH_AHEAD < count[0]:   # (a long frame's first entries
                # may have left the nearest cache again during the checks)
                _prefetch_entry(store, ff_load_le64(data + 8 * (index + CHECK_PREFETCH_AHEAD)))
            if index + ACK_PREFETCH_AHEAD < count[0]:
                # An ack reads and writes the message's blob (its size, its refcount),
                # which lies anywhere: ask for it a few acks ahead. (The first pass
                # checked every receipt, so the slot is one of the store's.)
                slot = <uint32_t>ff_load_le64(data + 8 * (index + ACK_PREFETCH_AHEAD))
                if slot < store.entry_capacity:
                    ff_prefetch_write(store.entries[slot].blob)
            slot = store._lease_slot(ff_load_le64(data + 8 * index), session)
            if slot != NIL:
                store._ack_slot(slot)
        return None
    finally:
        PyBuffer_Release(&buffer)


def release_packed(Store store, frame, int64_t now_us, object session=ANY_SESSION):
    """Return every still-leased delivery among packed u64 receipts to its queue at
    once (no backoff); stale receipts are skipped. Returns how many were released.

    The server calls this when a client vanishes, with every receipt it handed it.
    """
    cdef Py_buffer buffer
    cdef const char* data
    cdef Py_ssize_t index
    cdef uint32_t slot
    cdef Py_ssize_t released = 0
    cdef uint32_t tag = store.require_session(session)
    _receipts_buffer(frame, &buffer)
    try:
        data = <const char*>buffer.buf
        for index in range(buffer.len // 8):
            slot = store._lease_slot(ff_load_le64(data + 8 * index), tag)
            if slot != NIL:
                store._return(slot, 0, now_us)
                released += 1
        return released
    finally:
        PyBuffer_Release(&buffer)


def live_mask(Store store, frame, object session=ANY_SESSION):
    """Which packed u64 receipts still name a lease ``session`` may settle: one byte a
    receipt, 1 for a live lease, 0 for a stale one (ended however it ended: acked,
    nacked, expired, purged, its queue deleted). Reads only.

    The server calls this to forget the receipts it holds for a session whose leases
    ended without the session telling it (acked out of order, extended then acked, the
    queue deleted), so that what it holds is bounded by the leases that are live.
    """
    cdef Py_buffer buffer
    cdef const char* data
    cdef char* out
    cdef Py_ssize_t index, count
    cdef object mask
    cdef uint32_t tag = store.require_session(session)
    _receipts_buffer(frame, &buffer)
    try:
        data = <const char*>buffer.buf
        count = buffer.len // 8
        mask = PyBytes_FromStringAndSize(NULL, count)
        out = PyBytes_AS_STRING(mask)
        for index in range(count):
            out[index] = store._lease_slot(ff_load_le64(data + 8 * index), tag) != NIL
        return mask
    finally:
        PyBuffer_Release(&buffer)


def nack(Store store, object receipt, int64_t delay_us, int64_t now_us, object session=ANY_SESSION):
    """End the lease; visible again at once, or after ``delay_us`` (< 0: the backoff)."""
    cdef uint32_t slot = store._require_lease(receipt, store.require_session(session))
    store._return(slot, delay_us, now_us)


def extend(Store store, object receipt, int64_t lease_us, int64_t now_us, object session=ANY_SESSION):
    """Make the lease end ``lease_us`` from now; 0 returns the message at once
    (like ``nack(delay=0)``: no backoff)."""
    cdef uint32_t slot = store._require_lease(receipt, store.require_session(session))
    if lease_us == 0:
        store._return(slot, 0, now_us)
    else:
        store._disarm(slot)
        store._arm_lease(slot, now_us + lease_us)


def term(Store store, object receipt, int64_t now_us, object session=ANY_SESSION):
    """Dead-letter the leased message at once (reason ``rejected``)."""
    cdef uint32_t slot = store._require_lease(receipt, store.require_session(session))
    store._dead_letter(slot, DEAD_REJECTED, now_us)


cdef int _settle_slot(Store store, uint32_t slot, settle_kind kind, int64_t arg_us,
                      int64_t now_us) except -1:
    """Settle one checked lease as ``ack``, ``nack``, ``extend`` or ``term`` does."""
    if kind == SETTLE_ACK:
        store._ack_slot(slot)
    elif kind == SETTLE_NACK:
        store._return(slot, arg_us, now_us)
    elif kind == SETTLE_EXTEND:
        if arg_us == 0:
            store._return(slot, 0, now_us)
        else:
            store._disarm(slot)
            store._arm_lease(slot, now_us + arg_us)
    else:
        store._dead_letter(slot, DEAD_REJECTED, now_us)
    return 0


cdef Py_ssize_t _settle_many(Store store, object receipts, settle_kind kind, int64_t arg_us,
                             int64_t now_us, object session, str verb) except -1:
    """Settle every receipt (a list of ints, or packed little-endian u64s), or none.

    Every receipt is read once and checked before the first is settled: any stale one
    raises StaleReceipt (listing each stale receipt once, in order) and changes nothing.
    A receipt repeated in the batch is settled once (its second look finds it no longer
    leased, or for ``extend``, extended to the same end). Returns the number of receipts.
    """
    cdef uint32_t tag = store.require_session(session)
    cdef Py_buffer buffer
    cdef bint buffered = type(receipts) is not list
    cdef const char* data
    cdef char* values = NULL
    cdef Py_ssize_t index
    cdef Py_ssize_t count
    cdef uint64_t receipt
    cdef uint32_t slot
    cdef dict stale = None
    cdef Py_ssize_t stale_count = 0
    if buffered:
        _receipts_buffer(receipts, &buffer)
        data = <const char*>buffer.buf
        count = buffer.len // 8
    else:
        count = len(<list>receipts)
        values = <char*>PyMem_Malloc(max(count, 1) * 8)
        if values == NULL:
            raise MemoryError()
        data = values
    try:
        for index in range(count):
            if buffered:
                receipt = ff_load_le64(data + 8 * index)
            else:
                # each int is read (and checked) once, here; the second pass reads the copy
                receipt = receipt_value((<list>receipts)[index])
                ff_store_le64(values + 8 * index, receipt)
            if store._lease_slot(receipt, tag) == NIL:
                stale_count += 1
                if stale is None:
                    stale = {}
                if len(stale) < C_STALE_LISTED:
                    stale[receipt] = None   # a dict: a repeated receipt is listed once, in order
        if stale is not None:
            listed = list(stale)
            raise StaleReceipt(
                f"{stale_count} of {count} receipts are stale (first: {listed[0]}"
                f"{_listed(listed, stale_count)}); nothing was {verb}", listed)
        for index in range(count):
            slot = store._lease_slot(ff_load_le64(data + 8 * index), tag)
            if slot != NIL:   # NIL here only for a receipt repeated in this batch
                _settle_slot(store, slot, kind, arg_us, now_us)
        return count
    finally:
        if buffered:
            PyBuffer_Release(&buffer)
        else:
            PyMem_Free(values)


def nack_batch(Store store, object receipts, int64_t delay_us, int64_t now_us,
               object session=ANY_SESSION):
    """``nack`` every receipt (a list of ints or packed u64s), or none if any is stale.

    Returns the number of receipts; raises StaleReceipt listing the stale ones.
    """
    return _settle_many(store, receipts, SETTLE_NACK, delay_us, now_us, session, "nacked")


def extend_batch(Store store, object receipts, int64_t lease_us, int64_t now_us,
                 object session=ANY_SESSION):
    """``extend`` every receipt (a list of ints or packed u64s), or none if any is stale.

    Returns the number of receipts; raises StaleReceipt listing the stale ones.
    """
    return _settle_many(store, receipts, SETTLE_EXTEND, lease_us, now_us, session, "extended")


def term_batch(Store store, object receipts, int64_t now_us, object session=ANY_SESSION):
    """``term`` every receipt (a list of ints or packed u64s), or none if any is stale.

    Returns the number of receipts; raises StaleReceipt listing the stale ones.
    """
    return _settle_many(store, receipts, SETTLE_TERM, 0, now_us, session, "terminated")
