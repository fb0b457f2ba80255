"""Deliveries: what a receive hands out, built from the entries the store leased.

Design
------
The store (``store.pyx``) leases messages; this module turns the leased entries into
what the caller asked for, in one of two shapes:

- ``receive``: a list of ``Message`` objects for user code (the edge of the embedded
  broker), attributes still msgpack-encoded until read;
- ``receive_push``: one codec frame of delivery records for the server to push as it
  is, with no Python object per message (a dead-lettered copy's record carries its
  dead-letter record as JSON text in the name part) — written straight into a sink
  when the server gives one (``sinks.pxd``: claim, fill, commit; a local channel's
  shared ring is one), else a bytes object. This module knows the sink interface only,
  never a transport.

**By reference.** When the sink ``takes_references`` (a local consumer's ring), a push
whose first message is the first of a publish frame read in place from a producer's ring
(its bodies left there: blobs.pyx) is cut at that frame's end, and when it holds exactly
that frame's messages, in order, each a first delivery held by this queue alone, the
records' headers are rewritten where they lie — id, timestamp, receipt, receive count,
flags — and the sink gets a reference to the frame instead of a copy (shmring.pyx,
"Deliveries by reference"): the broker copies no body. Anything else (a redelivery, a
fan-out, a dead-lettered copy, a frame read from a socket) is copied as before.

Both lease through ``Store._lease_head`` (``receive`` by way of ``Store._lease_next``),
which settles expired messages and exhausted receive counts on the way, so both shapes
obey the same rules. ``receive`` leases for owner 0 (the embedded broker);
``receive_push`` for the owner tag it is given, and never past that owner's credit (its
prefetch minus the leases it holds, counted by the store), so the push path's flow
control costs no Python per message. A push is also never larger than its bound
(``max_bytes``: what the consumer's ring takes): each head is sized before it is
leased, and the push stops short of the record that would not fit.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport UINT64_MAX, int64_t, uint16_t, uint32_t, uint64_t

from fastfanout._ext.codec cimport (
    FF_BATCH_HEADER_SIZE,
    FF_CODEC_OK,
    FF_RECORD_HEADER_SIZE,
    FF_FLAG_DEAD_LETTER,
    FF_FLAG_PRIORITY,
    FF_FLAG_RECEIPT,
    FF_FLAG_TOPIC,
    ff_load_le16,
    ff_load_le32,
    ff_record_size,
    ff_record_view,
    ff_store_le32,
    ff_store_le64,
    ff_write_batch_header,
    ff_write_record,
)
from fastfanout._ext.message cimport Message, make_message
from fastfanout._ext.blobs cimport (
    BLOB_EXTERNAL,
    BLOB_TOPIC,
    BodySource,
    blob_anchor_t,
    blob_body,
    blob_external_t,
    blob_parts,
    blob_t,
    blob_topic,
)
from fastfanout._ext.sinks cimport SINK_REFUSED, SINK_WROTE, FrameSink
from fastfanout._ext.store cimport NIL, Store, dead_letter_t, entry_t, queue_t

from msgspec.json import encode as _encode_json

cdef extern from *:
    """
    /* The first 2 KiB of a body, asked for before its copy: the store's blobs lie
       scattered (freed and reused out of order), so each body's copy would otherwise start
       with misses the hardware prefetcher cannot foresee. */
    static inline void ff_prefetch_body(const char* body, uint32_t length) {
        uint32_t end = length < 2048 ? length : 2048;
        for (uint32_t at = 0; at < end; at += 64) __builtin_prefetch(body + at);
    }
    """
    void ff_prefetch_body(const char* body, uint32_t length) noexcept nogil

cdef extern from "prefetch.h":
    void ff_prefetch_line(const void* address) noexcept nogil
    void ff_prefetch_object(const void* address, size_t size) noexcept nogil
    void ff_prefetch_range_for_write(char* address, size_t size, size_t limit) noexcept nogil

cdef enum:
    PREFETCH_AHEAD = 2         # records ahead of the copy whose bodies are asked for
    BLOB_PREFETCH_AHEAD = 8    # ... whose blob headers are (their bodies' lengths)
    ENTRY_PREFETCH_AHEAD = 16  # ... whose entries are (their blob pointers)
    WRITE_AHEAD_BYTES = 1024   # bytes ahead of the write whose lines are asked for (at least)

from fastfanout._ext.store import DEAD_LETTER_REASONS
from fastfanout.records import DeadLetterInfo


cdef inline object _optional_text(const char* data, uint16_t length):
    if length == 0:
        return None
    return data[:length].decode("utf-8")


cdef inline object _seconds_or_none(int64_t us):
    return None if us < 0 else us / 1e6


def receive(Store self, uint32_t qid, Py_ssize_t max_messages, int64_t lease_us, int64_t now_us,
            object owner, object tag=0):
    """Lease up to ``max_messages`` visible messages; returns a list of Message.

    ``owner`` is the object the messages' ``ack()`` and kin call. ``tag`` (an open owner
    tag, ``Store.open_owner``; 0: none) makes the leases that owner's: at most its credit
    of them, as ``receive_push`` (an embedded push consumer's prefetch).
    """
    cdef list received = []
    cdef uint32_t owner_tag = 0
    cdef uint64_t credit
    if tag != 0:
        owner_tag = self.require_owner(tag)
        credit = self.owner_credit(owner_tag)
        if <uint64_t>max_messages > credit:
            max_messages = <Py_ssize_t>credit
    cdef uint32_t slot
    cdef int level
    cdef str name = self.names[qid]
    level = self.queues[qid].levels - 1
    while len(received) < max_messages:
        slot = self._lease_next(qid, &level, lease_us, now_us, owner_tag)
        if slot == NIL:
            break
        received.append(_leased_message(self, qid, slot, name, owner))
    return received


cdef Message receive_one(Store self, uint32_t qid, int64_t lease_us, int64_t now_us,
                         object owner):
    """Lease one visible message of queue ``qid`` for owner tag 0: its Message, or None.

    ``receive`` with ``max_messages=1`` and no tag, for a C caller (the embedded broker's
    one-message receive): no list, no Python call.
    """
    cdef int level = self.queues[qid].levels - 1
    cdef uint32_t slot = self._lease_next(qid, &level, lease_us, now_us, 0)
    if slot == NIL:
        return None
    return _leased_message(self, qid, slot, self.names[qid], owner)


cdef Message _leased_message(Store self, uint32_t qid, uint32_t slot, str name, object owner):
    """The Message of the delivery just leased from entry ``slot`` of queue ``qid``."""
    cdef entry_t* entry = &self.entries[slot]
    cdef blob_t* blob = entry.blob
    cdef bytes attrs = None
    cdef object dead_info = None
    cdef uint64_t receipt
    cdef const char* tail
    cdef const char* topic
    cdef uint16_t topic_len
    cdef Message message
    if blob.attrs_len:
        attrs = PyBytes_FromStringAndSize(blob_parts(blob), blob.attrs_len)
    if entry.dead != NULL:
        dead_info = dead_letter_info(self, entry.dead)
    receipt = (<uint64_t>entry.generation << 32) | slot
    tail = blob_parts(blob) + blob.attrs_len
    message = make_message(
        blob.id, PyBytes_FromStringAndSize(blob_body(blob), blob.body_len), attrs,
        blob.timestamp_us / 1e6, entry.receive_count, receipt, name,
        _optional_text(tail, blob.group_len),
        _optional_text(tail + blob.group_len, blob.dedup_len),
        blob.priority, dead_info, owner)
    topic = blob_topic(blob, &topic_len)
    if topic != NULL and entry.dead == NULL and self.queues[qid].keeps_topics:
        message.topic = topic[:topic_len].decode("ascii")
    return message


cdef inline void _delivery_view(Store self, uint32_t slot, ff_record_view* record,
                                bytes dead_info) noexcept:
    """Fill ``record`` with the delivery of the just-leased entry ``slot``."""
    cdef entry_t* entry = &self.entries[slot]
    cdef blob_t* blob = entry.blob
    cdef uint16_t topic_len
    cdef const char* topic
    record.flags = FF_FLAG_RECEIPT | (FF_FLAG_PRIORITY if blob.priority else 0)
    record.priority = blob.priority
    record.receive_count = entry.receive_count
    record.id = blob.id
    record.timestamp_us = blob.timestamp_us
    record.deliver_at_us = 0
    record.receipt = (<uint64_t>entry.generation << 32) | slot
    record.name = NULL
    record.name_len = 0
    if dead_info is not None:
        record.flags |= FF_FLAG_DEAD_LETTER
        record.name = PyBytes_AS_STRING(dead_info)
        record.name_len = <uint32_t>PyBytes_GET_SIZE(dead_info)
    elif self.queues[entry.queue].keeps_topics:
        topic = blob_topic(blob, &topic_len)
        if topic != NULL:
            # the topic it was published on (its queue keeps topics: docs/protocol.md)
            record.flags |= FF_FLAG_TOPIC
            record.name = topic
            record.name_len = topic_len
    record.body = blob_body(blob)
    record.body_len = blob.body_len
    record.attrs = blob_parts(blob)
    record.attrs_len = blob.attrs_len
    record.group = record.attrs + blob.attrs_len
    record.group_len = blob.group_len
    record.dedup = record.group + blob.group_len
    record.dedup_len = blob.dedup_len


def receive_push(Store self, uint32_t qid, Py_ssize_t max_messages, int64_t lease_us,
                 int64_t now_us, FrameSink sink, bytes header, object owner=0,
                 object max_bytes=None):
    """Lease like ``receive`` but as one codec frame of delivery records, for the server.

    The leases are ``owner``'s (an open owner tag): at most its credit of them (its
    ``limit`` minus the leases it holds), so a consumer never holds more than its prefetch.

    Each record carries id, timestamp, body, attributes, group and dedup ids, priority
    (flag), receipt (flag) and receive count. A dead-lettered copy has the dead-letter
    flag and its record's name part holds the JSON text ``[reason, source_queue,
    receive_count, first_receive_us | null, last_receive_us | null, time_us]``; any other
    copy in a queue keeping topics whose blob carries its topic has the topic flag and
    the topic in its name part. No Python object is made per message except for
    dead-letter records.

    Two passes: lease (noting slots and sizes), then write every record straight into
    memory sized exactly — no growing buffer, no second copy. That memory is a new bytes
    object, or, with a ``sink`` that has room (a ``FrameSink``, e.g. a local channel's
    shared ring), the sink itself: the push ``[header, frame]`` is claimed there as one
    two-frame message, written in place and committed.

    ``max_bytes`` (None: no bound) bounds the delivery frame: leasing stops before the
    record that would take it past, though the first record always goes (a frame of one record may be
    larger). The server passes what the consumer's ring always has room for
    (``SharedRing.pair_room``), so a consumer whose credit is worth more than its ring
    gets several pushes through the ring rather than one too large for it, sent around
    it over the socket.

    Returns:
        ``(frame, count, receipts, status, more)``: ``frame`` is None when the push went
        into the sink, else the frame to send another way; ``receipts`` the leased
        receipts packed as little-endian u64s (what the session holds); ``status`` the
        sink's ``WROTE``/``WROTE_WAKE`` (ring the reader's bell), or ``FULL``/``PINNED``/
        ``TOO_LARGE``/``WROTE`` with a frame (not written: no sink, no room, no room
        while the reader waits, too large, or nothing leased — ``count`` 0 and an empty
        frame); ``fastfanout._ext.sinks`` names them. ``more`` is True when the push
        stopped at a bound of its own (``max_messages`` or ``max_bytes``) with credit
        left: another push may find more at once.
    """
    cdef uint32_t tag = self.require_owner(owner)
    cdef uint64_t credit = self.owner_credit(tag)
    cdef Py_ssize_t asked = max_messages
    cdef uint64_t bound = UINT64_MAX if max_bytes is None else max_bytes
    if <uint64_t>max_messages > credit:
        max_messages = <Py_ssize_t>credit
    cdef _Leased leased = _lease(self, qid, max_messages, lease_us, now_us, tag, bound,
                                 sink is not None and sink.takes_references)
    cdef bint more = leased.cut or (leased.count == asked and <uint64_t>asked < credit)
    cdef bytes receipts = PyBytes_FromStringAndSize(NULL, 8 * leased.count)
    cdef uint64_t end
    cdef char* out
    cdef int status = SINK_REFUSED
    cdef bytes frame
    cdef BodySource source
    if sink is not None and leased.count:
        source = _reference_source(self, leased)
        if source is not None:
            status = sink.claim_reference(header, source, &end)
            if status == SINK_WROTE:
                _rewrite_in_place(self, leased, PyBytes_AS_STRING(receipts))
                return None, leased.count, receipts, sink.commit(end), more
        if status == SINK_REFUSED:
            status = sink.claim_pair(header, leased.total, &out, &end)
        if status == SINK_WROTE:
            _write_records(self, leased, out, PyBytes_AS_STRING(receipts))
            return None, leased.count, receipts, sink.commit(end), more
    if status == SINK_REFUSED:
        status = SINK_WROTE   # no sink, or nothing leased: a frame to send another way
    frame = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>leased.total)
    _write_records(self, leased, PyBytes_AS_STRING(frame), PyBytes_AS_STRING(receipts))
    return frame, leased.count, receipts, status, more


cdef class _Leased:
    """What the leasing pass of a frame noted: slots, dead-letter texts, the frame size,
    and whether the size bound stopped it."""
    cdef uint32_t* slots
    cdef Py_ssize_t count
    cdef uint64_t total
    cdef dict dead_infos
    cdef bint cut
    cdef blob_anchor_t* anchor   # the push starts a frame read in place: its anchor


cdef inline void _prefetch_next_leases(Store self, uint32_t qid, int level) noexcept:
    """Ask for what the next two leases of a level will read, a lease ahead.

    A push leases the head of a visible list again and again; each head's entry and
    blob were last touched when the message was enqueued (a push or more ago: out of the
    caches), and the list gives the next entry only once the current one is read. So,
    once a lease is made: the new head's blob (its entry is in flight or here already:
    the lease wrote its link) and the entry after it, whose blob the next lease asks for.
    """
    cdef uint32_t head = self.queues[qid].visible_head[level]
    cdef entry_t* entry
    if head == NIL:
        return
    entry = &self.entries[head]
    ff_prefetch_line(entry.blob)
    if entry.visible_next != NIL:
        ff_prefetch_object(&self.entries[entry.visible_next], sizeof(entry_t))


cdef _Leased _lease(Store self, uint32_t qid, Py_ssize_t max_messages, int64_t lease_us,
                    int64_t now_us, uint32_t owner, uint64_t max_bytes, bint align):
    """The first pass: lease up to ``max_messages``, noting each slot and the frame size;
    past the first record, none that would take the frame beyond ``max_bytes``. With
    ``align`` (the sink takes references), a push whose first body lies in a frame read
    in place stops at that frame's last one (the next push may then be that frame whole).

    Each candidate is the head ``Store._lease_next`` would lease, sized before it is
    leased; ``Store._lease_head`` then leases it, or settles it (expired, out of
    receives) and the next head is looked at.
    """
    cdef ff_record_view record
    cdef _Leased leased = _Leased.__new__(_Leased)
    cdef uint32_t slot
    cdef int level = self.queues[qid].levels - 1
    cdef uint64_t size = 0   # ff_record_size sets it; gcc cannot see that on every path
    cdef bytes dead_info
    cdef blob_t* blob
    cdef blob_external_t* external
    cdef Py_ssize_t limit = max_messages
    leased.slots = self.reserve_delivery_slots(max_messages)
    leased.count = 0
    leased.total = FF_BATCH_HEADER_SIZE
    leased.dead_infos = None
    leased.cut = False
    leased.anchor = NULL
    while leased.count < limit:
        while level >= 0 and self.queues[qid].visible_head[level] == NIL:
            level -= 1
        if level < 0:
            break
        slot = self.queues[qid].visible_head[level]
        dead_info = None
        if self.entries[slot].dead != NULL:
            dead_info = dead_letter_json(self, self.entries[slot].dead)
        _delivery_view(self, slot, &record, dead_info)
        if ff_record_size(&record, &size) != FF_CODEC_OK:
            raise MemoryError()   # cannot happen: every part was checked at publish
        blob = self.entries[slot].blob
        if (align and leased.count == 0 and blob.flags & BLOB_EXTERNAL
                and blob.refcount == 1 and self.entries[slot].receive_count == 0):
            # (a blob of several queues, or a redelivery, is copied: no cut for it)
            external = <blob_external_t*>blob.data
            if (external.anchor != NULL and external.anchor.sealed
                    and external.anchor.count - external.index <= <uint64_t>limit):
                limit = external.anchor.count - external.index
                if external.index == 0:
                    leased.anchor = external.anchor
        if leased.anchor != NULL and (
                blob != leased.anchor.blobs[leased.count] or blob.refcount != 1
                or self.entries[slot].receive_count != 0 or dead_info is not None
                or blob.flags & BLOB_TOPIC):
            # not by reference after all (the frame's next message, a first delivery
            # held by this queue alone, as a delivery record has it): the bound holds
            leased.anchor = NULL
        # a push by reference copies no record into the ring: its bound is not theirs
        if leased.anchor == NULL and leased.count and leased.total + size > max_bytes:
            leased.cut = True
            break
        if not self._lease_head(qid, slot, lease_us, now_us, owner):
            # settled on the way (expired, or out of receives): the next head. Its
            # release may have ended the anchor (none of its blobs leased here yet)
            if leased.count == 0:
                leased.anchor = NULL
                limit = max_messages
            continue
        _prefetch_next_leases(self, qid, level)
        if dead_info is not None:
            if leased.dead_infos is None:
                leased.dead_infos = {}
            leased.dead_infos[leased.count] = dead_info
        leased.total += size
        leased.slots[leased.count] = slot
        leased.count += 1
    if leased.count == limit and limit < max_messages:
        leased.cut = True   # stopped at a frame's end: the next push may go at once
    return leased


cdef inline char* _record_in_place(blob_t* blob) noexcept:
    """Where the record of a blob whose body lies in place starts (its header)."""
    return <char*>blob_body(blob) - blob.attrs_len - blob.dedup_len - blob.group_len \
        - FF_RECORD_HEADER_SIZE


cdef BodySource _reference_source(Store self, _Leased leased):
    """The frame read in place the push is exactly, by reference, or None: its
    messages all of it (``_lease`` kept ``leased.anchor`` only while each leased one was
    the frame's next, a first delivery held by this queue alone), with no part a
    delivery record lacks (a name)."""
    cdef blob_anchor_t* anchor = leased.anchor
    cdef BodySource source
    cdef Py_ssize_t index
    cdef blob_t* blob
    cdef const char* record
    if anchor == NULL or <uint64_t>leased.count != anchor.count:
        return None
    source = <BodySource>anchor.frame
    if source.length < FF_BATCH_HEADER_SIZE or ff_load_le32(source.data + 4) != leased.count:
        return None
    for index in range(leased.count):
        blob = self.entries[leased.slots[index]].blob
        record = _record_in_place(blob)
        if (record < source.data + FF_BATCH_HEADER_SIZE
                or record + FF_RECORD_HEADER_SIZE > source.data + source.length
                or ff_load_le16(record + 10) != 0
                or ff_load_le32(record + 16) != blob.body_len):
            return None
    return source


cdef void _rewrite_in_place(Store self, _Leased leased, char* receipts) noexcept:
    """Make each publish record of the frame ``_reference_source`` found its delivery
    record, where it lies: flags, priority, receive count, id, timestamp, receipt (its
    lengths and parts are the same); each receipt also to ``receipts``."""
    cdef Py_ssize_t index
    cdef entry_t* entry
    cdef blob_t* blob
    cdef char* record
    cdef uint64_t receipt
    for index in range(leased.count):
        entry = &self.entries[leased.slots[index]]
        blob = entry.blob
        record = _record_in_place(blob)
        receipt = (<uint64_t>entry.generation << 32) | leased.slots[index]
        record[4] = <char>(FF_FLAG_RECEIPT | (FF_FLAG_PRIORITY if blob.priority else 0))
        record[5] = <char>blob.priority
        ff_store_le32(record + 20, entry.receive_count)
        ff_store_le64(record + 24, blob.id)
        ff_store_le64(record + 32, <uint64_t>blob.timestamp_us)
        ff_store_le64(record + 40, 0)
        ff_store_le64(record + 48, receipt)
        ff_store_le64(receipts + 8 * index, receipt)


cdef int _write_records(Store self, _Leased leased, char* out, char* receipts) except -1:
    """The second pass: the batch header and every record at ``out`` (``leased.total``
    bytes), and each receipt as a little-endian u64 at ``receipts`` unless NULL."""
    cdef ff_record_view record
    cdef Py_ssize_t index
    cdef uint64_t size = 0   # as above
    cdef blob_t* ahead
    cdef char* ahead_at
    cdef char* end = out + leased.total
    ff_write_batch_header(out, <uint32_t>leased.count)
    out += FF_BATCH_HEADER_SIZE
    for index in range(leased.count):
        # A long push's first entries and blobs have left the nearest caches by the time
        # the leasing pass is done: each record reads an entry, then its blob's header,
        # then its body, three dependent misses. They are asked for at three distances,
        # each step reading what the one before brought.
        if index + ENTRY_PREFETCH_AHEAD < leased.count:
            ff_prefetch_object(&self.entries[leased.slots[index + ENTRY_PREFETCH_AHEAD]],
                               sizeof(entry_t))
        if index + BLOB_PREFETCH_AHEAD < leased.count:
            ff_prefetch_line(self.entries[leased.slots[index + BLOB_PREFETCH_AHEAD]].blob)
        if index + PREFETCH_AHEAD < leased.count:
            ahead = self.entries[leased.slots[index + PREFETCH_AHEAD]].blob
            ff_prefetch_body(blob_body(ahead), ahead.body_len)
        _delivery_view(self, leased.slots[index], &record,
                       None if leased.dead_infos is None else leased.dead_infos.get(index))
        ff_record_size(&record, &size)
        # The room two records on, asked for with ownership: a push into a consumer's
        # ring writes lines its reader's core read last, and each store would wait for
        # the line to come over (the records of a push are mostly of one size). 7-8 %
        # less of the broker's time a 1 KiB row (docs/benchmarks.md, 2026-12-06). Small
        # records are asked for WRITE_AHEAD_BYTES on instead: two 120-byte records are
        # too little time for the line to come, and the store waited all the same (a
        # fifth of the broker's time with 64-byte bodies; 2026-12-07). Not past the push.
        ahead_at = out + (2 * size if 2 * size > WRITE_AHEAD_BYTES else WRITE_AHEAD_BYTES)
        if ahead_at < end:
            ff_prefetch_range_for_write(ahead_at, size, 2048)
        ff_write_record(out, &record, <uint32_t>size)
        out += size
        if receipts != NULL:
            ff_store_le64(receipts + 8 * index, record.receipt)
    return 0


cdef object dead_letter_info(Store self, dead_letter_t* dead):
    return DeadLetterInfo(
        DEAD_LETTER_REASONS[dead.reason], <object>dead.source_name,
        dead.receive_count, _seconds_or_none(dead.first_receive_us),
        _seconds_or_none(dead.last_receive_us), dead.time_us / 1e6)


cdef bytes dead_letter_json(Store self, dead_letter_t* dead):
    """A dead-letter record as a delivery record's name part (see ``receive_push``)."""
    return _encode_json([
        DEAD_LETTER_REASONS[dead.reason], <object>dead.source_name, dead.receive_count,
        None if dead.first_receive_us < 0 else dead.first_receive_us,
        None if dead.last_receive_us < 0 else dead.last_receive_us, dead.time_us])
