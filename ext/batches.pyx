"""Publish batches: entries in (validated and copied into blobs), results out.

Design
------
A publish batch arrives either as Python entries (bytes-like bodies or ``PublishEntry``
tuples) or as a codec frame (``EncodedBatch``: the wire's publish batch). Both become
blobs here, one per message, with every check a broker owes its callers: body and id
sizes, attribute types (the SNS types; ``bool`` refused; numbers finite), delays and
schedules up to a year, TTLs. The limits are C constants so that the per-message checks
never look up a Python global. A fault raises ``InvalidArgument`` (or
``MessageTooLarge``) naming the entry; the dispatcher then frees what was made, so a
batch is all or nothing.

Results go out as a ``PublishBatch``: ids, copy counts and duplicate flags in C arrays,
``PublishResult`` tuples made only when indexed, and the wire's results frame written
straight from the arrays (``to_wire``).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyTypeObject
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM
from libc.math cimport isfinite
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastfanout._ext.codec cimport (
    FF_CODEC_OK,
    FF_FLAG_DELIVER_AT,
    FF_FLAG_DELAY,
    FF_FLAG_EXPIRES,
    FF_FLAG_TTL,
    FF_FLAG_PRIORITY,
    FF_FLAG_RECEIPT,
    ff_frame_reader,
    ff_out_append_record,
    ff_out_buffer,
    ff_out_free,
    ff_out_init,
    ff_reader_next,
    ff_reader_open,
    ff_record_view,
    ff_store_le32,
    ff_store_le64,
)
from fastfanout._ext.blobs cimport BodySource, blob_anchor_t, blob_make, blob_new, blob_t
from fastfanout._ext.bodies cimport ff_body_buffer, ff_entry

from datetime import datetime

from msgspec.msgpack import decode as _decode_attributes
from msgspec.msgpack import encode as _encode_attributes

from fastfanout.errors import InvalidArgument, MalformedBatch, MessageTooLarge
from fastfanout.records import PublishEntry, PublishResult
from fastfanout.settings import (
    attribute_problem,
    attribute_type_problem,
    id_problem,
    plain_seconds,
)

cdef extern from "Python.h":
    PyObject* PyType_GenericAlloc(PyTypeObject* kind, Py_ssize_t items)

# The limits as C constants: the per-message checks below must not look up Python globals.
cdef enum:
    C_MAX_ATTRIBUTES = 10
    C_MAX_ATTRIBUTE_NAME = 256
    C_MAX_ID_LENGTH = 128
cdef int64_t C_MAX_DELAY_US = 365LL * 86400LL * 1000000LL

MAX_ATTRIBUTES = C_MAX_ATTRIBUTES
"""Attributes one message may carry (the SNS limit)."""
MAX_ATTRIBUTE_NAME = C_MAX_ATTRIBUTE_NAME
"""Characters in one attribute name."""
MAX_ID_LENGTH = C_MAX_ID_LENGTH
"""UTF-8 bytes in a group id or a dedup id (the SQS limit)."""
MAX_DELAY_US = C_MAX_DELAY_US
"""Longest delay: one year, in microseconds."""
MAX_BODY = C_MAX_BODY
"""Hard ceiling on one body, whatever a queue allows: 256 MiB."""
IN_PLACE_MIN_BODY = C_IN_PLACE_MIN_BODY
"""Bodies of this many bytes or more in a publish frame read in place from a client's ring
stay there (blobs.pyx, "Bodies left in place") instead of being copied into their blobs."""

def encode_attributes(object attributes):
    """Check attributes as a publish does (SNS types, at most ``MAX_ATTRIBUTES``, names
    of 1 to 256 characters, finite numbers) and encode them (msgpack); None for none.

    Raises:
        InvalidArgument: what a publish with them would raise.
    """
    return _encode(attributes, -1)   # its errors name no entry, as a single publish's


cdef bytes _encode(object attributes, Py_ssize_t index):
    """Validate attributes (SNS types) and encode them, or None when there are none."""
    if attributes is None:
        return None
    if type(attributes) is not dict:
        if not isinstance(attributes, dict):
            raise InvalidArgument(
                f"{ff_entry(index)}attributes must be a dict, got {type(attributes).__name__}")
        attributes = dict(attributes)   # a subclass (OrderedDict...): its items, plainly
    if not attributes:
        return None
    if len(attributes) > C_MAX_ATTRIBUTES:
        raise InvalidArgument(
            f"{ff_entry(index)}{len(attributes)} attributes, at most {C_MAX_ATTRIBUTES} allowed")
    for name, value in (<dict>attributes).items():
        if type(name) is not str or not 0 < len(<str>name) <= C_MAX_ATTRIBUTE_NAME:
            raise InvalidArgument(
                f"{ff_entry(index)}attribute name {name!r} must be a str of 1 to "
                f"{C_MAX_ATTRIBUTE_NAME} characters")
        kind = type(value)
        if kind is str or kind is int or kind is bytes:
            continue
        if kind is float:
            if not isfinite(value):
                raise InvalidArgument(
                    f"{ff_entry(index)}attribute {name!r} is {value!r}; numbers must be finite")
            continue
        if kind is list and all(type(item) is str for item in value):
            continue
        raise InvalidArgument(f"{ff_entry(index)}{attribute_type_problem(name, value)}")
    try:
        return _encode_attributes(attributes)
    except (OverflowError, UnicodeEncodeError):
        raise InvalidArgument(f"{ff_entry(index)}{attribute_problem(attributes)}") from None


cdef bytes _encode_id(object value, str what, Py_ssize_t index):
    if value is None:
        return None
    if type(value) is not str:
        raise InvalidArgument(f"{ff_entry(index)}{what} must be a str, got {type(value).__name__}")
    try:
        encoded = (<str>value).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{ff_entry(index)}{id_problem(what, value)}") from None
    if not 0 < len(encoded) <= C_MAX_ID_LENGTH:
        raise InvalidArgument(
            f"{ff_entry(index)}{what} {value!r} must be 1 to {C_MAX_ID_LENGTH} UTF-8 bytes")
    return encoded


cdef int64_t _duration_us(object seconds, str what, Py_ssize_t index, int64_t limit_us) except? -1:
    if type(seconds) is not float and type(seconds) is not int:
        plain = plain_seconds(seconds)   # a float or int subclass (numpy.float64): its value
        if type(plain) is not float and type(plain) is not int:
            raise InvalidArgument(f"{ff_entry(index)}{what} must be a number of seconds, "
                                  f"got {type(seconds).__name__}")
        seconds = plain
    # an int out of range is refused before it meets a double (10**400: OverflowError)
    if (type(seconds) is int and not 0 <= seconds <= limit_us) or not isfinite(seconds) \
            or seconds < 0 or seconds * 1e6 > limit_us:
        raise InvalidArgument(
            f"{ff_entry(index)}{what}={seconds!r:.40} must be finite, >= 0 and <= "
            f"{limit_us / 1e6:g} s")
    return <int64_t>round(seconds * 1e6)


cdef object _result_type = PublishResult


cdef object publish_result(uint64_t message_id, uint32_t deliveries, bint duplicate):
    """A ``PublishResult`` made in C: the tuple subtype allocated and filled directly, as
    ``tuple.__new__`` would, without its argument tuple or the NamedTuple's Python-level
    ``__new__`` (a quarter microsecond)."""
    cdef object item_id = message_id
    cdef object item_deliveries = deliveries
    cdef object item_duplicate = True if duplicate else False
    cdef PyObject* made = PyType_GenericAlloc(<PyTypeObject*>_result_type, 3)
    if made == NULL:
        raise MemoryError()
    result = <object>made
    Py_DECREF(result)   # <object> took a reference of its own
    Py_INCREF(item_id)
    PyTuple_SET_ITEM(result, 0, item_id)
    Py_INCREF(item_deliveries)
    PyTuple_SET_ITEM(result, 1, item_deliveries)
    Py_INCREF(item_duplicate)
    PyTuple_SET_ITEM(result, 2, item_duplicate)
    return result


cdef inline object _result(uint64_t message_id, uint32_t deliveries, unsigned char duplicate):
    return publish_result(message_id, deliveries, duplicate != 0)


@cython.final
cdef class PublishBatch:
    """The results of a batch publish: a read-only sequence of ``PublishResult``.

    Results are made when indexed; ``message_ids`` gives all ids at once.
    """

    def __cinit__(self, Py_ssize_t count):
        self.count = count
        self.ids = <uint64_t*>PyMem_Malloc(max(count, 1) * sizeof(uint64_t))
        self.deliveries = <uint32_t*>PyMem_Malloc(max(count, 1) * sizeof(uint32_t))
        self.duplicates = <unsigned char*>PyMem_Malloc(max(count, 1))
        if self.ids == NULL or self.deliveries == NULL or self.duplicates == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.ids)
        PyMem_Free(self.deliveries)
        PyMem_Free(self.duplicates)

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        cdef Py_ssize_t i
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        i = index
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"result index {index} out of range for {self.count} results")
        return _result(self.ids[i], self.deliveries[i], self.duplicates[i])

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self.count):
            yield _result(self.ids[i], self.deliveries[i], self.duplicates[i])

    def __eq__(self, other):
        try:
            return list(self) == list(other)
        except TypeError:
            return NotImplemented

    def __repr__(self):
        return f"PublishBatch({list(self)!r})"

    @property
    def message_ids(self):
        """Every message id of the batch, in entry order."""
        return [self.ids[i] for i in range(self.count)]

    @property
    def accepted(self):
        """Entries that were not duplicates."""
        cdef Py_ssize_t i
        cdef Py_ssize_t total = 0
        for i in range(self.count):
            total += not self.duplicates[i]
        return total

    def to_wire(self):
        """The results frame of the wire protocol: u32 n, n u64 ids, n u32 deliveries,
        n u8 duplicate flags (little-endian)."""
        cdef bytes frame = PyBytes_FromStringAndSize(NULL, 4 + 13 * self.count)
        cdef char* out = PyBytes_AS_STRING(frame)
        cdef Py_ssize_t i
        ff_store_le32(out, <uint32_t>self.count)
        out += 4
        for i in range(self.count):
            ff_store_le64(out + 8 * i, self.ids[i])
        out += 8 * self.count
        for i in range(self.count):
            ff_store_le32(out + 4 * i, self.deliveries[i])
        out += 4 * self.count
        for i in range(self.count):
            out[i] = 1 if self.duplicates[i] else 0
        return frame

    def stream_frame(self, frame, str topic, uint64_t first_sequence, int64_t now_us):
        """The stream frame of a publish: the accepted records of ``frame`` (the publish
        batch these results belong to) with their id, timestamp, the topic as name and
        their topic sequence number (from ``first_sequence``) in the receipt slot.

        Returns:
            ``(stream_frame, count)``.
        """
        cdef Py_buffer buffer
        cdef ff_frame_reader reader
        cdef ff_record_view view
        cdef ff_out_buffer out
        cdef bytes name = topic.encode("utf-8")
        cdef Py_ssize_t i = 0
        cdef uint64_t sequence = first_sequence
        cdef object result
        PyObject_GetBuffer(frame, &buffer, PyBUF_SIMPLE)
        if ff_out_init(&out, <size_t>buffer.len + 64 * self.count + 64) != FF_CODEC_OK:
            ff_out_free(&out)
            PyBuffer_Release(&buffer)
            raise MemoryError()
        try:
            if ff_reader_open(&reader, <const char*>buffer.buf, buffer.len) != FF_CODEC_OK:
                raise InvalidArgument("malformed publish frame")
            while ff_reader_next(&reader, &view) == FF_CODEC_OK and i < self.count:
                if not self.duplicates[i]:
                    view.id = self.ids[i]
                    view.timestamp_us = now_us
                    view.flags = (view.flags & FF_FLAG_PRIORITY) | FF_FLAG_RECEIPT
                    view.deliver_at_us = 0
                    view.receipt = sequence
                    view.receive_count = 0
                    view.name = PyBytes_AS_STRING(name)
                    view.name_len = <uint32_t>PyBytes_GET_SIZE(name)
                    if ff_out_append_record(&out, &view) != FF_CODEC_OK:
                        raise MemoryError()
                    sequence += 1
                i += 1
            result = (PyBytes_FromStringAndSize(out.data, out.length), out.count)
        finally:
            ff_out_free(&out)
            PyBuffer_Release(&buffer)
        return result


@cython.final
cdef class EncodedBatch:
    """A publish batch already in the codec's frame layout (what clients send on the wire).

    Pass one to ``publish_batch`` / ``send_batch`` instead of a list: the dispatcher
    makes blobs straight from its records, with no Python object per message. A frame
    read in place from a client's ring (a ``BodySource``) may keep large bodies where
    they lie (blobs.pyx, "Bodies left in place").
    """

    def __cinit__(self, frame):
        if not isinstance(frame, (bytes, bytearray, memoryview, BodySource)):
            raise InvalidArgument(f"a frame must be bytes-like, got {type(frame).__name__}")
        self.frame = frame


@cython.final
cdef class RingBatch:
    """Bodies in the ring's batch form (u32 little-endian length + bytes, repeated), as
    ``Ring.poll_batch`` returns them: what a ``Producer`` hands the dispatcher."""

    def __cinit__(self, frame):
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"a frame must be bytes-like, got {type(frame).__name__}")
        self.frame = frame


cdef blob_t* blob_from_record(ff_record_view* record, Py_ssize_t i, int64_t now_us,
                               bint journaled, int64_t* due_out,
                               blob_anchor_t* anchor) except NULL:
    """Validate one publish record of a frame and copy it into a new blob; ``due_out``
    gets its own due time (``deliver_at``), or INT64_MIN: the queue's delay applies.
    With an ``anchor`` (the frame was read in place), a body of ``IN_PLACE_MIN_BODY``
    bytes or more stays where it lies (``blob_make``)."""
    cdef bytes encoded = None
    cdef const char* attrs = NULL
    cdef uint32_t attrs_len = 0
    cdef int64_t due_us = INT64_MIN
    cdef int64_t expires_us = INT64_MAX
    cdef blob_t* blob
    if record.body_len > C_MAX_BODY:
        raise MessageTooLarge(
            f"{ff_entry(i)}body of {record.body_len} bytes exceeds the hard limit of "
            f"{C_MAX_BODY} bytes")
    if record.attrs_len:
        # Attributes arrive msgpack-encoded: check them like local ones (types, count,
        # names), and store the canonical encoding.
        try:
            attributes = _decode_attributes(record.attrs[:record.attrs_len])
        except Exception as error:
            raise InvalidArgument(f"{ff_entry(i)}attributes are not valid msgpack: {error}")
        encoded = _encode(attributes, i)
        if encoded is not None:
            attrs = PyBytes_AS_STRING(encoded)
            attrs_len = <uint32_t>PyBytes_GET_SIZE(encoded)
    if record.group_len > C_MAX_ID_LENGTH or record.dedup_len > C_MAX_ID_LENGTH:
        raise InvalidArgument(
            f"{ff_entry(i)}group and dedup ids must be at most {C_MAX_ID_LENGTH} bytes")
    try:
        if record.group_len:
            record.group[:record.group_len].decode("utf-8")
        if record.dedup_len:
            record.dedup[:record.dedup_len].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBatch(f"{ff_entry(i)}a group or dedup id is not valid UTF-8") from None
    if record.flags & FF_FLAG_DELAY:
        # a delay (µs), counted from now on this broker's clock, not the client's
        if not 0 <= record.deliver_at_us <= C_MAX_DELAY_US:
            raise InvalidArgument(f"{ff_entry(i)}delay must be from 0 to one year")
        due_us = now_us + record.deliver_at_us
    elif record.flags & FF_FLAG_DELIVER_AT:
        if record.deliver_at_us - now_us > C_MAX_DELAY_US:
            raise InvalidArgument(f"{ff_entry(i)}deliver_at is more than one year ahead")
        due_us = max(record.deliver_at_us, now_us)
    if record.flags & FF_FLAG_TTL:
        if not 0 < record.receipt <= <uint64_t>C_MAX_DELAY_US:
            raise InvalidArgument(f"{ff_entry(i)}ttl must be > 0 seconds and at most one year")
        expires_us = now_us + <int64_t>record.receipt
    elif record.flags & FF_FLAG_EXPIRES:
        expires_us = <int64_t>record.receipt
        if expires_us <= now_us:
            raise InvalidArgument(f"{ff_entry(i)}the message expired before it was published")
    blob = blob_make(anchor if record.body_len >= C_IN_PLACE_MIN_BODY else NULL,
                     0, now_us, due_us, expires_us, record.body, record.body_len,
                     attrs, attrs_len, record.group, <uint16_t>record.group_len,
                     record.dedup, <uint16_t>record.dedup_len,
                     record.priority if record.flags & FF_FLAG_PRIORITY else 0, journaled)
    if blob == NULL:
        raise MemoryError()
    due_out[0] = due_us
    return blob


cdef blob_t* make_blob(object item, Py_ssize_t i, int64_t now_us, bint journaled,
                      int64_t* due_out) except NULL:
    """Validate one entry (a body: any C-contiguous buffer, or a PublishEntry) into a new
    blob; ``due_out`` gets its own due time (``delay`` or ``deliver_at``), or INT64_MIN:
    the queue's delay applies."""
    cdef object attributes = None
    cdef bytes encoded
    cdef bytes group = None
    cdef bytes dedup = None
    cdef int64_t due_us = INT64_MIN
    cdef int64_t expires_us = INT64_MAX
    cdef uint8_t priority = 0
    cdef Py_buffer view
    cdef bint have_view = False
    cdef const char* body
    cdef Py_ssize_t body_len
    cdef blob_t* blob
    if type(item) is bytes:
        body = PyBytes_AS_STRING(item)
        body_len = PyBytes_GET_SIZE(item)
    else:
        if isinstance(item, PublishEntry):
            (payload, attributes, delay, deliver_at, group_id, dedup_id, priority_value,
             ttl) = item
            if delay is not None and deliver_at is not None:
                raise InvalidArgument(f"{ff_entry(i)}give delay or deliver_at, not both")
            if delay is not None:
                due_us = now_us + _duration_us(delay, "delay", i, C_MAX_DELAY_US)
            elif deliver_at is not None:
                due_us = _deliver_at_us(deliver_at, i, now_us)
            if ttl is not None:
                expires_us = now_us + _duration_us(ttl, "ttl", i, C_MAX_DELAY_US)
                if expires_us == now_us:
                    # the same words as a client's (wire.pyx), with the unit's floor
                    raise InvalidArgument(f"{ff_entry(i)}ttl must be > 0 seconds (at least "
                                          f"1 µs, 1e-06), got {ttl!r}")
            group = _encode_id(group_id, "group_id", i)
            dedup = _encode_id(dedup_id, "dedup_id", i)
            if priority_value is not None:
                if type(priority_value) is not int or not 0 <= priority_value <= 255:
                    raise InvalidArgument(
                        f"{ff_entry(i)}priority must be an int from 0 to 255, got "
                        f"{priority_value!r}")
                priority = priority_value
            item = payload
        if type(item) is bytes:
            body = PyBytes_AS_STRING(item)
            body_len = PyBytes_GET_SIZE(item)
        else:
            ff_body_buffer(item, &view, i)
            have_view = True
            body = <const char*>view.buf
            body_len = view.len
    try:
        if body_len > C_MAX_BODY:
            raise MessageTooLarge(
                f"{ff_entry(i)}body of {body_len} bytes exceeds the hard limit of {C_MAX_BODY} bytes")
        encoded = _encode(attributes, i)
        blob = blob_new(
            0, now_us, due_us, expires_us, body, <uint32_t>body_len,
            PyBytes_AS_STRING(encoded) if encoded is not None else NULL,
            <uint32_t>(PyBytes_GET_SIZE(encoded) if encoded is not None else 0),
            PyBytes_AS_STRING(group) if group is not None else NULL,
            <uint16_t>(len(group) if group is not None else 0),
            PyBytes_AS_STRING(dedup) if dedup is not None else NULL,
            <uint16_t>(len(dedup) if dedup is not None else 0), priority, journaled)
    finally:
        if have_view:
            PyBuffer_Release(&view)
    if blob == NULL:
        raise MemoryError()
    due_out[0] = due_us
    return blob


cdef int64_t _deliver_at_us(object deliver_at, Py_ssize_t i, int64_t now_us) except? -1:
    """An absolute due time (clock seconds or an aware datetime) in microseconds."""
    cdef double at_us
    if isinstance(deliver_at, datetime):
        if deliver_at.tzinfo is None or deliver_at.utcoffset() is None:
            raise InvalidArgument(
                f"{ff_entry(i)}deliver_at datetime {deliver_at!r} must be timezone-aware")
        deliver_at = deliver_at.timestamp()
    if type(deliver_at) is not float and type(deliver_at) is not int:
        deliver_at = plain_seconds(deliver_at)   # numpy.float64: its plain value
    if type(deliver_at) is not float and type(deliver_at) is not int:
        raise InvalidArgument(
            f"{ff_entry(i)}deliver_at must be clock seconds or an aware datetime, got "
            f"{type(deliver_at).__name__}")
    try:
        at_us = float(deliver_at)
    except OverflowError:   # an int beyond a double's range: far ahead, or a far past
        at_us = 1e308 if deliver_at > 0 else -1e308
    if not isfinite(at_us):
        raise InvalidArgument(
            f"{ff_entry(i)}deliver_at={deliver_at!r} must be finite and at most one year from now")
    at_us *= 1e6   # may be infinite now: too far ahead, or a far past
    if at_us - now_us > C_MAX_DELAY_US:
        raise InvalidArgument(
            f"{ff_entry(i)}deliver_at={deliver_at!r} must be finite and at most one year from now")
    if at_us <= now_us:
        return now_us   # the past means now (a far past fits no int64: OverflowError before)
    return max(<int64_t>round(deliver_at * 1e6), now_us)
