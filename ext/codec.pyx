"""The batch record codec: one contiguous frame of many message records.

Design
------
Prior art: Kafka record batches and Aeron's data frames (fixed little-endian headers,
8-byte alignment, a length first so a reader can skip a record it does not understand),
and py-pgproto's ``frb`` read buffer (a cursor that checks every length before it reads).
The same bytes are the publish batch on the wire, the delivery batch, and what the store
and fan-out dispatcher keep, so a message is never re-encoded between a publisher's
socket and a consumer's socket.

Layout (all integers little-endian)::

    batch frame = b"FFB1" | u32 record count | record * count
    record      = 56-byte header | name | group | dedup | attrs | body | zero padding

    off size field
    0   4   record_len     whole record incl. header and padding, a multiple of 8
    4   1   flags          bit0 deliver_at, bit1 priority, bit2 receipt,
                           bit3 dead_letter (delivery records: the name part holds
                           the JSON text [reason, source_queue, receive_count,
                           first_receive_us|null, last_receive_us|null, time_us]),
                           bit4 expires (publish records: the receipt slot holds
                           expires_at_us, the time-to-live end; never with bit2),
                           bit5 topic (delivery records: the name part holds the
                           topic the message was published on; never with bit3)
    5   1   priority       0..255 (meaningful when bit1)
    6   2   group_len
    8   2   dedup_len
    10  2   name_len       topic or queue name, 0 = none
    12  4   attrs_len      encoded attributes, opaque to the codec
    16  4   body_len
    20  4   receive_count
    24  8   id             u64, 0 = not assigned yet
    32  8   timestamp_us   i64
    40  8   deliver_at_us  i64 (meaningful when bit0)
    48  8   receipt        u64 (meaningful when bit2; expires_at_us i64 when bit4)
    56  ... the variable parts, in that order, then 0..7 zero bytes

Invariants the reader enforces (``ff_reader_next`` in codec.pxd), so that every view it
hands out lies inside the caller's buffer:

- ``record_len`` is at least 56, a multiple of 8, and inside the frame;
- the variable parts fit in ``record_len`` and the padding is canonical (the shortest,
  all zero), so one record has exactly one encoding;
- priority, deliver_at_us and receipt are zero when their flag is clear;
- unknown flag bits are refused (a newer writer must bump the magic, not smuggle
  meaning into bits an older reader would ignore);
- the header count matches the records present, with no trailing bytes.

Every structural check is done in C on raw pointers with explicit lengths (bounds checks
are compiled out); exceptions are raised only here, at the Python edge, as
:class:`fastfanout.errors.InvalidArgument` naming the fault and its byte offset.

The module also defines the *ring batch* form moved by :class:`fastfanout._ext.ring.Ring`:
``[u32 little-endian length][length bytes]`` repeated, no header, no padding.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from fastfanout.errors import InvalidArgument, MalformedBatch

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors)

BATCH_MAGIC = b"FFB1"
BATCH_HEADER_SIZE = FF_BATCH_HEADER_SIZE
RECORD_HEADER_SIZE = FF_RECORD_HEADER_SIZE

cdef dict _FAULTS = {
    FF_CODEC_SHORT_HEADER: "frame shorter than the 8-byte batch header",
    FF_CODEC_BAD_MAGIC: "bad magic (expected b'FFB1')",
    FF_CODEC_SHORT_RECORD: "truncated record header (a record needs at least 56 bytes)",
    FF_CODEC_BAD_RECORD_LEN: "record_len is not a multiple of 8 of at least 56",
    FF_CODEC_RECORD_OVERRUN: "record_len runs past the end of the frame",
    FF_CODEC_PARTS_OVERRUN: "variable parts exceed record_len",
    FF_CODEC_BAD_PADDING: "record padding is not the shortest run of zero bytes",
    FF_CODEC_BAD_FLAGS: "receipt and expiry, or dead letter and topic, both set, or a delay (ttl) flag without deliver_at (expiry)",
    FF_CODEC_COUNT_MISMATCH: "record count in the header does not match the records present",
    FF_CODEC_STRAY_FIELD: "priority, deliver_at_us or receipt/expiry is non-zero without its flag",
}

cdef dict _RING_FAULTS = {
    FF_CODEC_SHORT_RECORD: "truncated u32 length prefix",
    FF_CODEC_RECORD_OVERRUN: "record length runs past the end of the buffer",
}


def status_text(int status):
    """The human description of a codec status code (for error messages)."""
    return _FAULTS.get(status, f"codec status {status}")


cdef object _malformed(int status, size_t offset, str form="batch frame"):
    faults = _RING_FAULTS if form == "ring batch" else _FAULTS
    return MalformedBatch(
        f"malformed {form}: {faults.get(status, 'unknown fault')} at byte offset {offset}"
    )


cdef inline object _checked_int(object value, object low, object high, str field):
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{field} must be an int, not {type(value).__name__}")
        value = int(value)
    if not (low <= value <= high):
        raise InvalidArgument(f"{field} must be in [{low}, {high}], got {value}")
    return value


cdef inline str _checked_text(object value, str field):
    cdef Py_ssize_t size
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a str or None, not {type(value).__name__}")
    if not value:
        # A zero length already means "none" on the wire; an empty string would not
        # survive a round trip, so it is refused instead of silently becoming None.
        raise InvalidArgument(f"{field} must be a non-empty str or None")
    try:
        PyUnicode_AsUTF8AndSize(value, &size)  # also caches the UTF-8 form for encode
    except UnicodeEncodeError as error:
        raise InvalidArgument(f"{field} is not encodable as UTF-8: {error}") from None
    if size > FF_MAX_SHORT_FIELD:
        raise InvalidArgument(f"{field} is {size} bytes in UTF-8; the limit is 65535")
    if type(value) is not str:
        value = str.__str__(value)  # an exact str: subclasses could override behaviour
    return <str>value


cdef inline bytes _checked_bytes(object value, str field):
    if type(value) is bytes:
        return <bytes>value
    if isinstance(value, (str, int)) or value is None:
        raise InvalidArgument(f"{field} must be bytes-like, not {type(value).__name__}")
    try:
        return bytes(memoryview(value))
    except TypeError:
        raise InvalidArgument(
            f"{field} must be bytes-like, not {type(value).__name__}") from None


cdef inline uint32_t _utf8_len(str text) noexcept:
    cdef Py_ssize_t size = 0
    if text is None:
        return 0
    # Cannot fail: the constructor already produced (and cached) the UTF-8 form.
    PyUnicode_AsUTF8AndSize(text, &size)
    return <uint32_t>size


cdef inline const char* _utf8(str text) noexcept:
    cdef Py_ssize_t size
    if text is None:
        return NULL
    return PyUnicode_AsUTF8AndSize(text, &size)


@cython.final
cdef class Record:
    """One message record as the codec carries it.

    Immutable. ``Record`` objects exist only at the Python edge; native modules work on
    ``ff_record_view`` pointers into the frame instead.

    Args:
        body: message body (bytes-like, up to 4 GiB - 1).
        id: message id, 0..2**64-1 (0 = not assigned yet).
        timestamp_us: publish time, microseconds since the Unix epoch (signed 64-bit).
        attributes: encoded attributes, opaque bytes to the codec.
        name: topic or queue name (non-empty, at most 65535 UTF-8 bytes) or None.
        group_id: FIFO group id (same limits as name) or None.
        dedup_id: deduplication id (same limits as name) or None.
        priority: 0..255, or None for no priority.
        deliver_at_us: absolute delivery time, microseconds since the epoch, or None.
        receipt: lease receipt, 0..2**64-1, or None.
        receive_count: deliveries so far, 0..2**32-1.
        expires_at_us: time-to-live end of a publish record, microseconds since the
            epoch, or None. It shares the receipt slot: a record has at most one.
        delay_us: a publish record's delay, microseconds after the broker accepts it
            (its clock), or None; it shares ``deliver_at_us``'s slot: at most one.
        ttl_us: a publish record's time to live, microseconds after the broker accepts
            it, or None; it shares the receipt slot with ``expires_at_us``.
        dead_letter: a delivery record's dead-letter flag: True when ``name`` holds the
            dead-letter record as JSON text (see docs/protocol.md).
        name_is_topic: a delivery record's topic flag: True when ``name`` holds the topic
            the message was published on (never with ``dead_letter``).

    Raises:
        InvalidArgument: a field has the wrong type or is out of range, or the whole
            record would exceed 4 GiB - 8 bytes encoded.
    """

    def __init__(self, body=b"", *, id=0, timestamp_us=0, attributes=b"", name=None,
                 group_id=None, dedup_id=None, priority=None, deliver_at_us=None,
                 receipt=None, receive_count=0, expires_at_us=None, dead_letter=False,
                 name_is_topic=False, delay_us=None, ttl_us=None):
        cdef uint64_t size
        if self._encoded_size:
            # Every initialised record has a non-zero size (the header alone is 56).
            raise InvalidArgument("Record is immutable: __init__ may run only once")
        self.body = _checked_bytes(body, "body")
        self.attributes = _checked_bytes(attributes, "attributes")
        if PyBytes_GET_SIZE(self.body) > <Py_ssize_t>0xFFFFFFFF:
            raise InvalidArgument("body exceeds 4294967295 bytes (u32 body_len)")
        if PyBytes_GET_SIZE(self.attributes) > <Py_ssize_t>0xFFFFFFFF:
            raise InvalidArgument("attributes exceed 4294967295 bytes (u32 attrs_len)")
        self.id = _checked_int(id, 0, 0xFFFFFFFFFFFFFFFF, "id")
        self.timestamp_us = _checked_int(timestamp_us, -(1 << 63), (1 << 63) - 1,
                                         "timestamp_us")
        self.receive_count = _checked_int(receive_count, 0, 0xFFFFFFFF, "receive_count")
        self.name = _checked_text(name, "name")
        self.group_id = _checked_text(group_id, "group_id")
        self.dedup_id = _checked_text(dedup_id, "dedup_id")
        self.priority = None if priority is None else _checked_int(priority, 0, 255,
                                                                   "priority")
        self.deliver_at_us = None if deliver_at_us is None else _checked_int(
            deliver_at_us, -(1 << 63), (1 << 63) - 1, "deliver_at_us")
        self.receipt = None if receipt is None else _checked_int(
            receipt, 0, 0xFFFFFFFFFFFFFFFF, "receipt")
        self.expires_at_us = None if expires_at_us is None else _checked_int(
            expires_at_us, 0, (1 << 63) - 1, "expires_at_us")
        self.delay_us = None if delay_us is None else _checked_int(
            delay_us, 0, (1 << 63) - 1, "delay_us")
        self.ttl_us = None if ttl_us is None else _checked_int(ttl_us, 0, (1 << 63) - 1,
                                                              "ttl_us")
        if self.deliver_at_us is not None and self.delay_us is not None:
            raise InvalidArgument("a record carries a deliver_at_us or a delay_us, not both")
        if sum(field is not None for field in (self.receipt, self.expires_at_us,
                                               self.ttl_us)) > 1:
            raise InvalidArgument(
                "a record carries one of a receipt, an expires_at_us and a ttl_us")
        if type(dead_letter) is not bool:
            raise InvalidArgument(f"dead_letter must be a bool, got {dead_letter!r}")
        self.dead_letter = dead_letter
        if type(name_is_topic) is not bool:
            raise InvalidArgument(f"name_is_topic must be a bool, got {name_is_topic!r}")
        if dead_letter and name_is_topic:
            raise InvalidArgument("a record's name is a dead-letter record or a topic, not both")
        self.name_is_topic = name_is_topic
        size = ff_align8(<uint64_t>FF_RECORD_HEADER_SIZE + _utf8_len(self.name)
                         + _utf8_len(self.group_id) + _utf8_len(self.dedup_id)
                         + <uint64_t>PyBytes_GET_SIZE(self.attributes)
                         + <uint64_t>PyBytes_GET_SIZE(self.body))
        if size > FF_MAX_RECORD_LEN:
            raise InvalidArgument(
                f"record would be {size} bytes encoded; the limit is {FF_MAX_RECORD_LEN}")
        self._encoded_size = size

    cdef int _fill_view(self, ff_record_view* view) except -1:
        view.start = NULL
        view.record_len = <uint32_t>self._encoded_size
        view.flags = 0
        view.priority = 0
        view.deliver_at_us = 0
        view.receipt = 0
        if self.priority is not None:
            view.flags |= FF_FLAG_PRIORITY
            view.priority = <uint8_t>self.priority
        if self.deliver_at_us is not None:
            view.flags |= FF_FLAG_DELIVER_AT
            view.deliver_at_us = <int64_t>self.deliver_at_us
        if self.receipt is not None:
            view.flags |= FF_FLAG_RECEIPT
            view.receipt = <uint64_t>self.receipt
        if self.expires_at_us is not None:
            view.flags |= FF_FLAG_EXPIRES
            view.receipt = <uint64_t>self.expires_at_us
        if self.delay_us is not None:
            view.flags |= FF_FLAG_DELIVER_AT | FF_FLAG_DELAY
            view.deliver_at_us = <int64_t>self.delay_us
        if self.ttl_us is not None:
            view.flags |= FF_FLAG_EXPIRES | FF_FLAG_TTL
            view.receipt = <uint64_t>self.ttl_us
        if self.dead_letter:
            view.flags |= FF_FLAG_DEAD_LETTER
        if self.name_is_topic:
            view.flags |= FF_FLAG_TOPIC
        view.receive_count = self.receive_count
        view.id = self.id
        view.timestamp_us = self.timestamp_us
        view.name = _utf8(self.name)
        view.name_len = _utf8_len(self.name)
        view.group = _utf8(self.group_id)
        view.group_len = _utf8_len(self.group_id)
        view.dedup = _utf8(self.dedup_id)
        view.dedup_len = _utf8_len(self.dedup_id)
        view.attrs = PyBytes_AS_STRING(self.attributes)
        view.attrs_len = <uint32_t>PyBytes_GET_SIZE(self.attributes)
        view.body = PyBytes_AS_STRING(self.body)
        view.body_len = <uint32_t>PyBytes_GET_SIZE(self.body)
        return 0

    cdef tuple _key(self):
        return (self.id, self.timestamp_us, self.body, self.attributes, self.name,
                self.group_id, self.dedup_id, self.priority, self.deliver_at_us,
                self.receipt, self.receive_count, self.expires_at_us, self.dead_letter,
                self.name_is_topic, self.delay_us, self.ttl_us)

    def __eq__(self, other):
        if not isinstance(other, Record):
            return NotImplemented
        return self._key() == (<Record>other)._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (
            f"Record(body={self.body!r}, id={self.id}, timestamp_us={self.timestamp_us}, "
            f"attributes={self.attributes!r}, name={self.name!r}, "
            f"group_id={self.group_id!r}, dedup_id={self.dedup_id!r}, "
            f"priority={self.priority!r}, deliver_at_us={self.deliver_at_us!r}, "
            f"receipt={self.receipt!r}, receive_count={self.receive_count}, "
            f"expires_at_us={self.expires_at_us!r}, dead_letter={self.dead_letter}, "
            f"name_is_topic={self.name_is_topic}, delay_us={self.delay_us!r}, "
            f"ttl_us={self.ttl_us!r})"
        )

    def __reduce__(self):
        return (_record_from_kwargs, (dict(
            body=self.body, id=self.id, timestamp_us=self.timestamp_us,
            attributes=self.attributes, name=self.name, group_id=self.group_id,
            dedup_id=self.dedup_id, priority=self.priority,
            deliver_at_us=self.deliver_at_us, receipt=self.receipt,
            receive_count=self.receive_count, expires_at_us=self.expires_at_us,
            dead_letter=self.dead_letter, name_is_topic=self.name_is_topic,
            delay_us=self.delay_us, ttl_us=self.ttl_us),))


def _record_from_kwargs(kwargs):
    return Record(**kwargs)


cdef str _decode_text(const char* data, uint32_t length, str field, size_t offset):
    if length == 0:
        return None
    try:
        return PyUnicode_DecodeUTF8(data, length, NULL)
    except UnicodeDecodeError:
        raise MalformedBatch(
            f"malformed batch frame: {field} is not valid UTF-8 in the record at byte "
            f"offset {offset}") from None


cdef Record _record_from_view(const ff_record_view* view, size_t offset):
    cdef Record record
    if view.flags & (FF_FLAG_EXPIRES | FF_FLAG_TTL) and <int64_t>view.receipt < 0:
        # a Record takes neither below 0: one the reader made could not be written again
        raise MalformedBatch(
            f"malformed batch frame: a negative "
            f"{'ttl_us' if view.flags & FF_FLAG_TTL else 'expires_at_us'} in the record "
            f"at byte offset {offset}")
    record = Record.__new__(Record)
    record.id = view.id
    record.timestamp_us = view.timestamp_us
    record.body = PyBytes_FromStringAndSize(view.body, view.body_len)
    record.attributes = PyBytes_FromStringAndSize(view.attrs, view.attrs_len)
    record.name = _decode_text(view.name, view.name_len, "name", offset)
    record.group_id = _decode_text(view.group, view.group_len, "group_id", offset)
    record.dedup_id = _decode_text(view.dedup, view.dedup_len, "dedup_id", offset)
    record.priority = view.priority if view.flags & FF_FLAG_PRIORITY else None
    record.deliver_at_us = (view.deliver_at_us if view.flags & FF_FLAG_DELIVER_AT
                            and not view.flags & FF_FLAG_DELAY else None)
    record.delay_us = view.deliver_at_us if view.flags & FF_FLAG_DELAY else None
    record.receipt = view.receipt if view.flags & FF_FLAG_RECEIPT else None
    record.expires_at_us = (<int64_t>view.receipt if view.flags & FF_FLAG_EXPIRES
                            and not view.flags & FF_FLAG_TTL else None)
    record.ttl_us = <int64_t>view.receipt if view.flags & FF_FLAG_TTL else None
    record.dead_letter = bool(view.flags & FF_FLAG_DEAD_LETTER)
    record.name_is_topic = bool(view.flags & FF_FLAG_TOPIC)
    record.receive_count = view.receive_count
    record._encoded_size = view.record_len
    return record


def encode_batch(records):
    """Encode records into one batch frame.

    Args:
        records: an iterable of :class:`Record`.

    Returns:
        The frame: ``b"FFB1"``, the u32 record count, then each record (8-byte aligned).

    Raises:
        InvalidArgument: an item is not a Record, or there are more than 2**32-1 records.
    """
    cdef object items = PySequence_Fast(records, "records must be an iterable of Record")
    cdef Py_ssize_t count = PySequence_Fast_GET_SIZE(items)
    cdef Py_ssize_t i
    cdef uint64_t total = FF_BATCH_HEADER_SIZE
    cdef object item
    cdef ff_record_view view
    cdef bytes frame
    cdef char* out
    if count > <Py_ssize_t>0xFFFFFFFF:
        raise InvalidArgument(f"{count} records in one frame; the limit is 4294967295")
    # Two passes over objects whose sizes are already known: the frame is allocated
    # once, exactly, and written in place (no growth, no final copy).
    for i in range(count):
        item = <object>PySequence_Fast_GET_ITEM(items, i)
        if type(item) is not Record:
            raise InvalidArgument(
                f"records[{i}] must be a Record, not {type(item).__name__}")
        total += (<Record>item)._encoded_size
    frame = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
    out = PyBytes_AS_STRING(frame)
    ff_write_batch_header(out, <uint32_t>count)
    out += FF_BATCH_HEADER_SIZE
    for i in range(count):
        item = <object>PySequence_Fast_GET_ITEM(items, i)
        (<Record>item)._fill_view(&view)
        ff_write_record(out, &view, view.record_len)
        out += view.record_len
    return frame


cdef class _ReadBuffer:
    """A read-only contiguous view of a bytes-like argument (released on exit)."""

    cdef Py_buffer buffer
    cdef bint held

    def __cinit__(self, object source):
        self.held = False
        try:
            PyObject_GetBuffer(source, &self.buffer, PyBUF_SIMPLE)
        except TypeError:
            raise InvalidArgument(
                f"expected a bytes-like frame, not {type(source).__name__}") from None
        self.held = True

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.buffer)


def decode_batch(frame):
    """Decode a batch frame into records.

    Args:
        frame: a bytes-like object holding exactly one batch frame.

    Returns:
        The records, in frame order.

    Raises:
        InvalidArgument: the frame is malformed (the message names the fault and its
            byte offset), or a name/group/dedup id is not valid UTF-8.
    """
    cdef const char* data
    cdef size_t length
    cdef ff_frame_reader reader
    cdef ff_record_view view
    cdef int status
    cdef size_t offset
    cdef list result
    cdef _ReadBuffer source = None
    if type(frame) is bytes:
        data = PyBytes_AS_STRING(frame)
        length = <size_t>PyBytes_GET_SIZE(frame)
    else:
        source = _ReadBuffer(frame)
        data = <const char*>source.buffer.buf
        length = <size_t>source.buffer.len
    status = ff_reader_open(&reader, data, length)
    if status != FF_CODEC_OK:
        raise _malformed(status, ff_reader_offset(&reader))
    result = []
    while True:
        offset = ff_reader_offset(&reader)
        status = ff_reader_next(&reader, &view)
        if status == FF_CODEC_END:
            return result
        if status != FF_CODEC_OK:
            raise _malformed(status, offset)
        result.append(_record_from_view(&view, offset))


def count_records(frame):
    """Validate a whole batch frame without decoding it and return its record count.

    Args:
        frame: a bytes-like object holding exactly one batch frame.

    Returns:
        The number of records in the frame.

    Raises:
        InvalidArgument: the frame is malformed (the message names the fault and its
            byte offset).
    """
    cdef ff_frame_reader reader
    cdef ff_record_view view
    cdef int status
    cdef _ReadBuffer source = _ReadBuffer(frame)
    status = ff_reader_open(&reader, <const char*>source.buffer.buf,
                            <size_t>source.buffer.len)
    while status == FF_CODEC_OK:
        status = ff_reader_next(&reader, &view)
    if status != FF_CODEC_END:
        raise _malformed(status, ff_reader_offset(&reader))
    return reader.count


def pack_ring_batch(records):
    """Pack byte strings into the ring batch form ``([u32 LE length][bytes])*``.

    Args:
        records: an iterable of bytes-like objects, each at most 4 GiB - 1 bytes.

    Returns:
        The packed buffer (empty for no records).

    Raises:
        InvalidArgument: an item is not bytes-like or is too long for a u32 length.
    """
    cdef object items = PySequence_Fast(records, "records must be an iterable of bytes")
    cdef Py_ssize_t count = PySequence_Fast_GET_SIZE(items)
    cdef Py_ssize_t i
    cdef Py_ssize_t total = 0
    cdef list parts = []
    cdef bytes part
    cdef bytes packed
    cdef char* out
    for i in range(count):
        part = _checked_bytes(<object>PySequence_Fast_GET_ITEM(items, i), f"records[{i}]")
        if PyBytes_GET_SIZE(part) > <Py_ssize_t>0xFFFFFFFF:
            raise InvalidArgument(f"records[{i}] exceeds 4294967295 bytes (u32 length)")
        parts.append(part)
        total += FF_RING_BATCH_PREFIX + PyBytes_GET_SIZE(part)
    packed = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(packed)
    for part in parts:
        ff_store_le32(out, <uint32_t>PyBytes_GET_SIZE(part))
        memcpy(out + FF_RING_BATCH_PREFIX, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))
        out += FF_RING_BATCH_PREFIX + PyBytes_GET_SIZE(part)
    return packed


def count_ring_batch(frame):
    """Validate a ring batch buffer and return how many records it holds.

    Raises:
        InvalidArgument: a length prefix is truncated or runs past the end.
    """
    cdef _ReadBuffer source = _ReadBuffer(frame)
    cdef uint64_t records
    cdef uint64_t largest
    cdef size_t fault = 0
    cdef int status = ff_ring_batch_scan(<const char*>source.buffer.buf,
                                         <size_t>source.buffer.len, &records, &largest,
                                         &fault)
    if status != FF_CODEC_OK:
        raise _malformed(status, fault, "ring batch")
    return records


def unpack_ring_batch(frame):
    """Split a ring batch buffer into its records.

    Args:
        frame: a bytes-like object in the ring batch form.

    Returns:
        The records, in order.

    Raises:
        InvalidArgument: a length prefix is truncated or runs past the end (the message
            names the byte offset).
    """
    cdef _ReadBuffer source = _ReadBuffer(frame)
    cdef const char* data = <const char*>source.buffer.buf
    cdef size_t length = <size_t>source.buffer.len
    cdef uint64_t records
    cdef uint64_t largest
    cdef size_t fault = 0
    cdef size_t offset = 0
    cdef uint32_t record_len
    cdef list result
    cdef int status = ff_ring_batch_scan(data, length, &records, &largest, &fault)
    if status != FF_CODEC_OK:
        raise _malformed(status, fault, "ring batch")
    result = []
    while offset < length:
        record_len = ff_load_le32(data + offset)
        result.append(PyBytes_FromStringAndSize(data + offset + FF_RING_BATCH_PREFIX,
                                                record_len))
        offset += FF_RING_BATCH_PREFIX + record_len
    return result
