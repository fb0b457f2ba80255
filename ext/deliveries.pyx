"""Deliveries: what a receive hands out, built from the entries the store leased.

Design
------
The store (``store.pyx``) leases messages; this module turns the leased entries into
what the caller asked for, in one of two shapes:

- ``receive``: a list of ``Message`` objects for user code (the edge of the embedded
  broker), attributes still msgpack-encoded until read;
- ``receive_frame``: one codec frame of delivery records for the server to push as it
  is, with no Python object per message (a dead-lettered copy's record carries its
  dead-letter record as JSON text in the name part).

Both lease through ``Store._lease_next``, which settles expired messages and exhausted
receive counts on the way, so both shapes obey the same rules.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

from fastfanout._ext.codec cimport (
    FF_CODEC_OK,
    FF_FLAG_DEAD_LETTER,
    FF_FLAG_PRIORITY,
    FF_FLAG_RECEIPT,
    ff_out_append_record,
    ff_out_buffer,
    ff_out_free,
    ff_out_init,
    ff_record_view,
)
from fastfanout._ext.message cimport make_message
from fastfanout._ext.store cimport NIL, Store, blob_t, dead_letter_t, entry_t, queue_t

from msgspec.json import encode as _encode_json

from fastfanout._ext.store import DEAD_LETTER_REASONS
from fastfanout.records import DeadLetterInfo


cdef inline object _optional_text(const char* data, uint16_t length):
    if length == 0:
        return None
    return data[:length].decode("utf-8")


cdef inline object _seconds_or_none(int64_t us):
    return None if us < 0 else us / 1e6


def receive(Store self, uint32_t qid, Py_ssize_t max_messages, int64_t lease_us, int64_t now_us,
            object owner):
    """Lease up to ``max_messages`` visible messages; returns a list of Message."""
    cdef list received = []
    cdef queue_t* q
    cdef entry_t* entry
    cdef blob_t* blob
    cdef uint32_t slot
    cdef int level
    cdef str name = self.names[qid]
    cdef object dead_info
    cdef bytes attrs
    cdef uint64_t receipt
    cdef const char* tail
    level = self.queues[qid].levels - 1
    while len(received) < max_messages:
        slot = self._lease_next(qid, &level, lease_us, now_us)
        if slot == NIL:
            break
        entry = &self.entries[slot]
        blob = entry.blob
        attrs = None
        if blob.attrs_len:
            attrs = PyBytes_FromStringAndSize(blob.data + blob.body_len, blob.attrs_len)
        dead_info = None
        if entry.dead != NULL:
            dead_info = dead_letter_info(self, entry.dead)
        receipt = (<uint64_t>entry.generation << 32) | slot
        tail = blob.data + blob.body_len + blob.attrs_len
        received.append(make_message(
            blob.id, PyBytes_FromStringAndSize(blob.data, blob.body_len), attrs,
            blob.timestamp_us / 1e6, entry.receive_count, receipt, name,
            _optional_text(tail, blob.group_len),
            _optional_text(tail + blob.group_len, blob.dedup_len),
            blob.priority, dead_info, owner))
    return received


def receive_frame(Store self, uint32_t qid, Py_ssize_t max_messages, int64_t lease_us,
                  int64_t now_us):
    """Lease like ``receive`` but return one codec frame of delivery records.

    Returns:
        ``(frame, count)``. Each record carries id, timestamp, body, attributes,
        group and dedup ids, priority (flag), receipt (flag) and receive count. A
        dead-lettered copy has the dead-letter flag and its record's name part holds
        the JSON text ``[reason, source_queue, receive_count, first_receive_us | null,
        last_receive_us | null, time_us]``. No Python object is made per message
        except for dead-letter records.
    """
    cdef ff_out_buffer out
    cdef ff_record_view record
    cdef queue_t* q
    cdef entry_t* entry
    cdef blob_t* blob
    cdef uint32_t slot
    cdef int level
    cdef Py_ssize_t leased = 0
    cdef bytes dead_info
    cdef object frame
    if ff_out_init(&out, 4096) != FF_CODEC_OK:
        ff_out_free(&out)
        raise MemoryError()
    try:
        level = self.queues[qid].levels - 1
        while leased < max_messages:
            slot = self._lease_next(qid, &level, lease_us, now_us)
            if slot == NIL:
                break
            entry = &self.entries[slot]
            blob = entry.blob
            record.flags = FF_FLAG_RECEIPT | (FF_FLAG_PRIORITY if blob.priority else 0)
            record.priority = blob.priority
            record.receive_count = entry.receive_count
            record.id = blob.id
            record.timestamp_us = blob.timestamp_us
            record.deliver_at_us = 0
            record.receipt = (<uint64_t>entry.generation << 32) | slot
            record.name = NULL
            record.name_len = 0
            if entry.dead != NULL:
                dead_info = _encode_json([
                    DEAD_LETTER_REASONS[entry.dead.reason],
                    self.names[entry.dead.source_queue], entry.dead.receive_count,
                    None if entry.dead.first_receive_us < 0 else entry.dead.first_receive_us,
                    None if entry.dead.last_receive_us < 0 else entry.dead.last_receive_us,
                    entry.dead.time_us])
                record.flags |= FF_FLAG_DEAD_LETTER
                record.name = PyBytes_AS_STRING(dead_info)
                record.name_len = <uint32_t>PyBytes_GET_SIZE(dead_info)
            record.body = blob.data
            record.body_len = blob.body_len
            record.attrs = blob.data + blob.body_len
            record.attrs_len = blob.attrs_len
            record.group = record.attrs + blob.attrs_len
            record.group_len = blob.group_len
            record.dedup = record.group + blob.group_len
            record.dedup_len = blob.dedup_len
            if ff_out_append_record(&out, &record) != FF_CODEC_OK:
                raise MemoryError()
            leased += 1
        frame = PyBytes_FromStringAndSize(out.data, out.length)
    finally:
        ff_out_free(&out)
    return frame, leased


cdef object dead_letter_info(Store self, dead_letter_t* dead):
    return DeadLetterInfo(
        DEAD_LETTER_REASONS[dead.reason], self.names[dead.source_queue],
        dead.receive_count, _seconds_or_none(dead.first_receive_us),
        _seconds_or_none(dead.last_receive_us), dead.time_us / 1e6)
