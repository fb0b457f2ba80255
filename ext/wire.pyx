"""Building and reading wire frames without a Python object per message.

Design
------
The codec (``codec.pyx``) defines the frame; ``Record`` objects are its Python edge,
convenient and slow (one object per message). The client's publish path and both sides'
ack paths run once per message, so they get native helpers here:

- ``FrameBuilder`` appends publish records straight into a growing frame buffer (the
  client's automatic batching: ``publish_nowait`` appends, a flush ``take()``\\ s the
  frame);
- ``encode_entries`` turns a whole ``publish_batch`` list into one frame in one call;
  ``publish_frame_of`` makes an array batch a ``RowsFrame`` instead: the frame's size is
  known at once, and its records are written only where the frame goes — straight into a local channel's ring
  (``sinks.FrameSource``), or into a bytes buffer when something reads it as a buffer
  (a socket send);
- ``receipts_of`` / ``count_of`` read a delivery frame's receipts as packed little-endian
  u64s (the ACK payload) without decoding records.

Everything validates what the wire needs (lengths, UTF-8 ids, ranges) and raises
``InvalidArgument``; the broker re-validates what it stores.
"""

cimport cython
from cpython.buffer cimport (
    PyBUF_ANY_CONTIGUOUS,
    PyBUF_RECORDS_RO,
    PyBUF_SIMPLE,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport isfinite
from libc.string cimport memcpy
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

from fastfanout._ext.codec cimport (
    FF_BATCH_HEADER_SIZE,
    FF_RECORD_HEADER_SIZE,
    ff_align8,
    ff_record_size,
    ff_write_batch_header,
    ff_write_record,
    ff_store_le32,
    FF_CODEC_END,
    FF_CODEC_OK,
    FF_FLAG_DELIVER_AT,
    FF_FLAG_DELAY,
    FF_FLAG_EXPIRES,
    FF_FLAG_TTL,
    FF_FLAG_PRIORITY,
    FF_FLAG_RECEIPT,
    ff_frame_reader,
    ff_out_append_record,
    ff_out_free,
    ff_out_init,
    ff_out_reset,
    ff_reader_next,
    ff_reader_offset,
    ff_reader_open,
    ff_record_view,
    ff_store_le64,
    ff_load_le32,
    ff_ring_batch_scan,
    FF_RING_BATCH_PREFIX,
)
from fastfanout._ext.bodies cimport ff_body_buffer, ff_entry
from fastfanout._ext.sinks cimport FrameSource
from fastfanout._ext.rows cimport (
    ff_int_kind,
    ff_load_int,
    ff_rows,
    ff_rows_close,
    ff_rows_get,
    ff_rows_open,
)

from datetime import datetime

from msgspec.msgpack import encode as _encode_msgpack

from fastfanout._ext.codec import status_text
from fastfanout.errors import InvalidArgument, MalformedBatch
from fastfanout.records import PublishEntry
from fastfanout.settings import attribute_problem, id_problem, plain_seconds

MAX_DELAY = 365 * 86400.0
"""Longest delay or TTL the client accepts, in seconds (one year)."""


cdef inline void _clear(ff_record_view* view) noexcept:
    view.flags = 0
    view.priority = 0
    view.receive_count = 0
    view.id = 0
    view.timestamp_us = 0
    view.deliver_at_us = 0
    view.receipt = 0
    view.name = NULL
    view.name_len = 0
    view.group = NULL
    view.group_len = 0
    view.dedup = NULL
    view.dedup_len = 0
    view.attrs = NULL
    view.attrs_len = 0
    view.body = NULL
    view.body_len = 0


cdef inline double _as_double(object number) except? -1.0:
    """A float or int as a double; an int beyond a double's range is +-1e308 (finite,
    and beyond every limit: refused as too large, or a far past)."""
    try:
        return float(number)
    except OverflowError:
        return 1e308 if number > 0 else -1e308


cdef int64_t _seconds_us(object seconds, str what) except? -1:
    if type(seconds) is not float and type(seconds) is not int:
        plain = plain_seconds(seconds)   # a float or int subclass (numpy.float64): its value
        if type(plain) is not float and type(plain) is not int:
            raise InvalidArgument(
                f"{what} must be a number of seconds, got {type(seconds).__name__}")
        seconds = plain
    if not isfinite(_as_double(seconds)) or not 0 <= seconds <= MAX_DELAY:
        raise InvalidArgument(f"{what}={seconds!r} must be finite and from 0 to {MAX_DELAY:g} s")
    return <int64_t>round(seconds * 1e6)


cdef bytes _id_bytes(object value, str what):
    if value is None:
        return None
    if type(value) is not str or not value:
        raise InvalidArgument(f"{what} must be a non-empty str, got {value!r}")
    try:
        encoded = (<str>value).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(id_problem(what, value)) from None
    if len(encoded) > 128:
        raise InvalidArgument(f"{what} {value!r} is over 128 UTF-8 bytes")
    return encoded


cdef inline void _with_group(ff_record_view* view, bytes group) noexcept:
    """Give a record the builder's group id (``group``: its UTF-8 bytes)."""
    view.group = PyBytes_AS_STRING(group)
    view.group_len = <uint32_t>PyBytes_GET_SIZE(group)


cdef Py_ssize_t _append_body(FrameBuilder self, object body, Py_ssize_t index) except -1:
    """Append a record with only a body; returns its index (``index``: the body's
    position in the caller's list, named in an error)."""
    cdef ff_record_view view
    cdef Py_buffer buffer
    cdef int status
    _clear(&view)
    if self._group is not None:
        _with_group(&view, self._group)
    if type(body) is bytes:
        view.body = PyBytes_AS_STRING(body)
        view.body_len = <uint32_t>PyBytes_GET_SIZE(body)
        status = ff_out_append_record(&self.out, &view)
    else:
        ff_body_buffer(body, &buffer, index)
        try:
            view.body = <const char*>buffer.buf
            view.body_len = <uint32_t>buffer.len
            status = ff_out_append_record(&self.out, &view)
        finally:
            PyBuffer_Release(&buffer)
    if status != FF_CODEC_OK:
        raise InvalidArgument(f"cannot add the record: {status_text(status)}")
    self.body_bytes += view.body_len
    return self.out.count - 1


cdef Py_ssize_t _append_entry(FrameBuilder self, object body, object attributes, object delay,
                              object deliver_at, object group_id, object dedup_id,
                              object priority, object ttl, Py_ssize_t index) except -1:
    """Append one publish record; returns its index (``index``: the entry's position in
    the caller's list, named in a body's error)."""
    cdef ff_record_view view
    cdef Py_buffer buffer
    cdef bint have_buffer = False
    cdef bytes attrs = None
    cdef bytes group = _id_bytes(group_id, "group_id")
    cdef bytes dedup = _id_bytes(dedup_id, "dedup_id")
    cdef int status
    cdef double at_us
    cdef int64_t ttl_us
    _clear(&view)
    if attributes:
        if type(attributes) is not dict:
            if not isinstance(attributes, dict):
                raise InvalidArgument(
                    f"attributes must be a dict, got {type(attributes).__name__}")
            attributes = dict(attributes)   # a subclass (OrderedDict...): its items
        for value in (<dict>attributes).values():   # the broker's types: refused here
            kind = type(value)
            if not (kind is str or kind is int or kind is float or kind is bytes
                    or kind is list):
                raise InvalidArgument(attribute_problem(attributes))
        try:
            attrs = _encode_msgpack(attributes)
        except (OverflowError, UnicodeEncodeError, TypeError):
            raise InvalidArgument(attribute_problem(attributes)) from None
        view.attrs = PyBytes_AS_STRING(attrs)
        view.attrs_len = <uint32_t>PyBytes_GET_SIZE(attrs)
    if delay is not None and deliver_at is not None:
        raise InvalidArgument("give delay or deliver_at, not both")
    # A delay and a ttl travel as durations (FF_FLAG_DELAY, FF_FLAG_TTL): the broker
    # counts them from its acceptance on its own clock. Made absolute here, on this
    # process's clock, they were off by the two clocks' difference (another host's, or
    # a clock stepped meanwhile).
    if delay is not None:
        view.flags |= FF_FLAG_DELIVER_AT | FF_FLAG_DELAY
        view.deliver_at_us = _seconds_us(delay, "delay")
    elif deliver_at is not None:
        if isinstance(deliver_at, datetime):
            if deliver_at.tzinfo is None or deliver_at.utcoffset() is None:
                raise InvalidArgument(
                    f"deliver_at datetime {deliver_at!r} must be timezone-aware")
            deliver_at = deliver_at.timestamp()
        if type(deliver_at) is not float and type(deliver_at) is not int:
            deliver_at = plain_seconds(deliver_at)   # numpy.float64: its plain value
        if type(deliver_at) is not float and type(deliver_at) is not int:
            raise InvalidArgument(f"deliver_at={deliver_at!r} must be finite clock seconds")
        at_us = _as_double(deliver_at)
        if not isfinite(at_us):
            raise InvalidArgument(f"deliver_at={deliver_at!r} must be finite clock seconds")
        at_us *= 1e6
        # The broker refuses one more than a year ahead; one beyond the record's int64
        # field is refused here (OverflowError before), one in the past means now.
        if at_us > 9.2e18:
            raise InvalidArgument(
                f"deliver_at={deliver_at!r} must be finite and at most one year from now")
        view.flags |= FF_FLAG_DELIVER_AT
        view.deliver_at_us = <int64_t>round(deliver_at * 1e6) if at_us > 0.0 else 0
    if ttl is not None:
        ttl_us = _seconds_us(ttl, "ttl")
        if ttl_us <= 0:   # as the broker says it (not "expired before it was published")
            raise InvalidArgument(f"ttl must be > 0 seconds (at least 1 µs, 1e-06), got "
                                  f"{ttl!r}")
        view.flags |= FF_FLAG_EXPIRES | FF_FLAG_TTL
        view.receipt = <uint64_t>ttl_us
    if priority is not None:
        if type(priority) is not int or not 0 <= priority <= 255:
            raise InvalidArgument(f"priority={priority!r} must be an int from 0 to 255")
        view.flags |= FF_FLAG_PRIORITY
        view.priority = <uint8_t>priority
    if group is not None:
        view.group = PyBytes_AS_STRING(group)
        view.group_len = <uint32_t>PyBytes_GET_SIZE(group)
    if dedup is not None:
        view.dedup = PyBytes_AS_STRING(dedup)
        view.dedup_len = <uint32_t>PyBytes_GET_SIZE(dedup)
    if type(body) is bytes:
        view.body = PyBytes_AS_STRING(body)
        view.body_len = <uint32_t>PyBytes_GET_SIZE(body)
    else:
        ff_body_buffer(body, &buffer, index)
        have_buffer = True
        view.body = <const char*>buffer.buf
        view.body_len = <uint32_t>buffer.len
    try:
        status = ff_out_append_record(&self.out, &view)
    finally:
        if have_buffer:
            PyBuffer_Release(&buffer)
    if status != FF_CODEC_OK:
        raise InvalidArgument(f"cannot add the record: {status_text(status)}")
    self.body_bytes += view.body_len
    return self.out.count - 1


@cython.final
cdef int check_body_size(object body, Py_ssize_t limit, object too_large) except -1:
    """Call ``too_large(size)`` (it raises) for a buffer body of more than ``limit`` bytes.

    Before the body is copied anywhere; a body that is no buffer is left to the frame
    builder (``InvalidArgument``).
    """
    cdef Py_buffer view
    cdef Py_ssize_t size
    try:
        PyObject_GetBuffer(body, &view, PyBUF_ANY_CONTIGUOUS)
    except Exception:   # no (contiguous) buffer: the frame builder says what is wrong
        return 0
    size = view.len
    PyBuffer_Release(&view)
    if size > limit:
        too_large(size)
    return 0


cdef class FrameBuilder:
    """A publish batch being built: records appended in place, taken as one frame.

    Args:
        group_id: the FIFO group every record appended by body (``append_body``,
            ``extend_rows``, ``extend_ring``, a producer's offers) gets, or None (none).

    Raises:
        InvalidArgument: ``group_id`` is not a non-empty str of at most 128 UTF-8 bytes.
    """

    def __cinit__(self, group_id=None):
        self._group = _id_bytes(group_id, "group_id")
        if ff_out_init(&self.out, 16384) != FF_CODEC_OK:
            ff_out_free(&self.out)
            raise MemoryError()
        self.body_bytes = 0

    def __dealloc__(self):
        ff_out_free(&self.out)

    def __len__(self):
        return self.out.count

    @property
    def nbytes(self):
        """Bytes of the frame so far."""
        return self.out.length

    def append_body(self, body):
        """Append a record with only a body (the fast path); returns its index."""
        return _append_body(self, body, -1)   # one body: its errors name no entry

    def mark(self):
        """Where the frame ends now, for ``rewind``: ``(records, bytes, body bytes)``."""
        return self.out.count, self.out.length, self.body_bytes

    def rewind(self, mark):
        """Drop the records appended since ``mark`` (``mark()``'s value)."""
        count, length, body_bytes = mark
        self._rewind(count, length, body_bytes)

    cdef void _rewind(self, uint32_t count, size_t length, Py_ssize_t body_bytes) noexcept:
        """Drop the records past the first ``count`` (the frame then ``length`` bytes)."""
        if count <= self.out.count and length <= self.out.length:
            self.out.count = count
            self.out.length = length
            ff_store_le32(self.out.data + 4, count)
            self.body_bytes = body_bytes

    def append(self, body, attributes=None, delay=None, deliver_at=None, group_id=None,
               dedup_id=None, priority=None, ttl=None):
        """Append one publish record (the arguments of ``publish``); returns its index."""
        return _append_entry(self, body, attributes, delay, deliver_at, group_id, dedup_id,
                             priority, ttl, -1)   # one message: its errors name no entry

    @property
    def group_id(self):
        """The group id every record appended by body gets, or None."""
        return None if self._group is None else self._group.decode("utf-8")

    cdef int _append_bytes(self, bytes body) except -1:
        cdef ff_record_view view
        cdef int status
        _clear(&view)
        if self._group is not None:
            _with_group(&view, self._group)
        view.body = PyBytes_AS_STRING(body)
        view.body_len = <uint32_t>PyBytes_GET_SIZE(body)
        status = ff_out_append_record(&self.out, &view)
        if status != FF_CODEC_OK:
            raise InvalidArgument(f"cannot add the record: {status_text(status)}")
        self.body_bytes += view.body_len
        return 0

    cdef int _append_row(self, const char* body, Py_ssize_t length, Py_ssize_t index) except -1:
        cdef ff_record_view view
        cdef int status
        if length > <Py_ssize_t>0xFFFFFFFF:
            raise InvalidArgument(f"{ff_entry(index)}a body of {length} bytes is too long for "
                                  f"a record")
        _clear(&view)
        if self._group is not None:
            _with_group(&view, self._group)
        view.body = body
        view.body_len = <uint32_t>length
        status = ff_out_append_record(&self.out, &view)
        if status != FF_CODEC_OK:
            raise InvalidArgument(f"{ff_entry(index)}cannot add the record: {status_text(status)}")
        self.body_bytes += view.body_len
        return 0

    def extend_rows(self, entries, Py_ssize_t start=0, Py_ssize_t max_messages=-1,
                    Py_ssize_t max_bytes=-1, Py_ssize_t max_frame=-1):
        """Append the bodies of an array batch from row ``start`` until this frame holds
        ``max_messages`` records or ``max_bytes`` bytes (-1: no bound; at least one row is
        appended when any is left), and never past ``max_frame`` bytes unless the frame
        held nothing (-1: no bound): the row that would take it past is left for the
        next frame (so ``next_row`` may be ``start``).

        ``entries``: a 2-D (or structured) array or a ``(buffer, offsets)`` pair (see
        ``ext/rows.pxd``); no Python object is made per row.

        Returns:
            ``(next_row, rows)``: the first row not appended and the batch's row count.

        Raises:
            InvalidArgument: ``entries`` is not an array batch, or cannot be read.
        """
        cdef ff_rows rows
        cdef const char* body
        cdef Py_ssize_t length
        cdef Py_ssize_t i
        cdef uint32_t count
        cdef size_t size
        cdef Py_ssize_t body_bytes
        if not ff_rows_open(entries, &rows):
            _not_rows(entries)
        try:
            i = max(start, 0)
            while i < rows.count:
                if i > start and (0 <= max_messages <= self.out.count
                                  or 0 <= max_bytes <= <Py_ssize_t>self.out.length):
                    break
                ff_rows_get(&rows, i, &body, &length)
                count, size, body_bytes = self.out.count, self.out.length, self.body_bytes
                self._append_row(body, length, i)
                if count and 0 <= max_frame < <Py_ssize_t>self.out.length:
                    self._rewind(count, size, body_bytes)   # past the request limit
                    break
                i += 1
            return i, rows.count
        finally:
            ff_rows_close(&rows)

    def extend_ring(self, frame):
        """Append every body of a ring batch (``Ring.poll_batch``'s form: u32
        little-endian length + bytes, repeated), each a record of its own.

        Raises:
            MalformedBatch: ``frame`` is not in that form (nothing is appended).
        """
        cdef Py_buffer view
        cdef const char* data
        cdef size_t offset = 0
        cdef uint32_t length
        cdef uint64_t records
        cdef uint64_t largest
        cdef size_t fault
        cdef Py_ssize_t index = 0
        PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
        try:
            data = <const char*>view.buf
            if ff_ring_batch_scan(data, <size_t>view.len, &records, &largest,
                                  &fault) != FF_CODEC_OK:
                raise MalformedBatch(f"malformed ring batch at byte {fault}")
            while offset < <size_t>view.len:
                length = ff_load_le32(data + offset)
                self._append_row(data + offset + FF_RING_BATCH_PREFIX, length, index)
                offset += FF_RING_BATCH_PREFIX + length
                index += 1
        finally:
            PyBuffer_Release(&view)

    def extend(self, entries, max_body=None, too_large=None):
        """Append every entry of a ``publish_batch``: a list of bodies or PublishEntry,
        or an array batch (``extend_rows``).

        ``max_body`` (bytes, None: no limit): an entry's body above it is not copied:
        ``too_large(size)`` is called, and raises (the entries before it stay appended).
        """
        cdef Py_ssize_t index = 0
        cdef Py_ssize_t limit = PY_SSIZE_T_MAX if max_body is None else max_body
        cdef ff_rows rows
        # C names of their own: the loop below unpacks a PublishEntry's ``body`` object
        cdef const char* row_body
        cdef Py_ssize_t row_len
        if ff_rows_open(entries, &rows):
            try:
                for index in range(rows.count):
                    ff_rows_get(&rows, index, &row_body, &row_len)
                    self._append_row(row_body, row_len, index)
            finally:
                ff_rows_close(&rows)
            return
        for entry in entries:
            if type(entry) is bytes:
                if PyBytes_GET_SIZE(entry) > limit:
                    too_large(PyBytes_GET_SIZE(entry))
                self._append_bytes(<bytes>entry)   # the common case, without a Python call
            elif isinstance(entry, PublishEntry):
                body, attributes, delay, deliver_at, group_id, dedup_id, priority, ttl = entry
                if limit != PY_SSIZE_T_MAX:
                    check_body_size(body, limit, too_large)
                _append_entry(self, body, attributes, delay, deliver_at, group_id, dedup_id,
                              priority, ttl, index)
            else:
                if limit != PY_SSIZE_T_MAX:
                    check_body_size(entry, limit, too_large)
                _append_body(self, entry, index)
            index += 1

    def take(self):
        """The frame built so far (then the builder is empty again)."""
        cdef bytes frame = PyBytes_FromStringAndSize(self.out.data, self.out.length)
        ff_out_reset(&self.out)
        self.body_bytes = 0
        return frame


cdef int _not_rows(object entries) except -1:
    raise InvalidArgument(
        f"an array batch must be a 2-D or structured array or a (buffer, offsets) pair, "
        f"got {type(entries).__name__}")


def array_rows(entries):
    """The number of bodies of an array batch (``ext/rows.pxd``), its form checked.

    What a producer's ``offer_batch`` checks first, in every face: it takes array
    batches only.

    Raises:
        InvalidArgument: ``entries`` is not an array batch (a list, a 1-D array of a
            plain item type ...), or cannot be read as one.
    """
    cdef ff_rows rows
    if not ff_rows_open(entries, &rows):
        _not_rows(entries)
    count = rows.count
    ff_rows_close(&rows)
    return count


cdef uint64_t _rows_frame_size(ff_rows* rows) except 0:
    """Bytes of the publish frame of an open array batch (InvalidArgument: too large)."""
    cdef uint64_t total = FF_BATCH_HEADER_SIZE
    cdef Py_ssize_t i
    cdef const char* body
    cdef Py_ssize_t length
    for i in range(rows.count):
        ff_rows_get(rows, i, &body, &length)
        if length > <Py_ssize_t>0xFFFFFFF0:
            raise InvalidArgument(f"{ff_entry(i)}a body of {length} bytes is too long for a "
                                  f"record")
        total += ff_align8(<uint64_t>FF_RECORD_HEADER_SIZE + <uint64_t>length)
    if rows.count > <Py_ssize_t>0xFFFFFFFF or total > <uint64_t>0x7FFFFFFFFFFFFFFF:
        raise InvalidArgument(f"an array batch of {rows.count} bodies is too large for a frame")
    return total


cdef void _write_rows(ff_rows* rows, char* out) noexcept:
    """The publish frame of an open array batch at ``out`` (its size checked before):
    one record header and one copy of each body."""
    cdef ff_record_view view
    cdef uint64_t size = 0
    cdef Py_ssize_t i
    cdef const char* body
    cdef Py_ssize_t length
    _clear(&view)
    ff_write_batch_header(out, <uint32_t>rows.count)
    out += FF_BATCH_HEADER_SIZE
    for i in range(rows.count):
        ff_rows_get(rows, i, &body, &length)
        view.body = body
        view.body_len = <uint32_t>length
        ff_record_size(&view, &size)
        ff_write_record(out, &view, <uint32_t>size)
        out += size


@cython.final
cdef class RowsFrame(FrameSource):
    """The publish frame of an array batch, written only where it goes (``publish_frame_of``).

    ``len()`` is its size. A local channel's ring has it write its records in place
    (``write_into``: one copy of each body, from the array into the ring); any other
    reader gets its buffer: the frame is built then into a bytes object, once, and the
    array let go. Until then it keeps the array's buffer (the array stays alive and
    cannot be resized); the clients write it (or read its buffer) before the publish
    call returns, so a caller may change the array afterwards.
    """

    cdef ff_rows rows
    cdef bint open
    cdef bytes built

    def __cinit__(self):
        self.open = False
        self.built = None

    def __dealloc__(self):
        if self.open:
            ff_rows_close(&self.rows)
            self.open = False

    @property
    def count(self):
        """Records in the frame."""
        return self.rows.count if self.open else _count_built(self.built)

    cdef void write_into(self, char* out) noexcept:
        if self.built is not None:
            memcpy(out, PyBytes_AS_STRING(self.built), <size_t>self.nbytes)
        else:
            _write_rows(&self.rows, out)

    cdef bytes _build(self):
        if self.built is None:
            frame = PyBytes_FromStringAndSize(NULL, self.nbytes)
            _write_rows(&self.rows, PyBytes_AS_STRING(frame))
            self.built = frame
            ff_rows_close(&self.rows)
            self.open = False
        return self.built

    def __bytes__(self):
        return self._build()

    def __getbuffer__(self, Py_buffer* view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a publish frame is read-only")
        PyObject_GetBuffer(self._build(), view, flags)

    def __releasebuffer__(self, Py_buffer* view):
        PyBuffer_Release(view)

    def __repr__(self):
        return f"RowsFrame({self.nbytes} bytes)"


cdef object _count_built(bytes frame):
    cdef ff_frame_reader reader
    if ff_reader_open(&reader, PyBytes_AS_STRING(frame), <size_t>PyBytes_GET_SIZE(frame)) \
            != FF_CODEC_OK:
        return 0
    return reader.count


def encode_entries(entries, max_body=None, too_large=None):
    """One publish frame (bytes) from a list of bodies or ``PublishEntry`` tuples, or from
    an array batch (a 2-D or structured array, a ``(buffer, offsets)`` pair:
    ``ext/rows.pxd``), which is written straight into a frame of its exact size.

    A body over ``max_body`` bytes is refused before it is copied (``too_large(size)``,
    which raises; see ``FrameBuilder.extend``)."""
    cdef FrameBuilder builder
    cdef ff_rows rows
    if ff_rows_open(entries, &rows):
        try:
            frame = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>_rows_frame_size(&rows))
            _write_rows(&rows, PyBytes_AS_STRING(frame))
            return frame
        finally:
            ff_rows_close(&rows)
    builder = FrameBuilder()
    builder.extend(entries, max_body, too_large)
    return builder.take()


def publish_frame_of(entries, max_body=None, too_large=None):
    """``encode_entries``, except that an array batch becomes a ``RowsFrame``: the frame
    written only where it goes (a local channel's ring: one copy of each body; anything
    else reads its buffer, built then). An array batch is not copied here: its size is
    checked with the request's."""
    cdef RowsFrame frame
    cdef ff_rows rows
    if not ff_rows_open(entries, &rows):
        return encode_entries(entries, max_body, too_large)
    frame = RowsFrame.__new__(RowsFrame)
    frame.rows = rows
    frame.open = True   # closed by the frame from now on
    frame.nbytes = <Py_ssize_t>_rows_frame_size(&frame.rows)
    return frame


def pack_receipts(receipts):
    """Receipts as packed little-endian u64s (the ACK payload).

    Args:
        receipts: a 1-D integer array (``uint64``, or another 4- or 8-byte integer type
            in native byte order holding no negative value: read with no Python object
            per receipt), or an iterable of ints (numpy integers too; not bools).

    Raises:
        InvalidArgument: a receipt is not an int in [0, 2**64), or the array is not 1-D
            integers.
    """
    cdef Py_buffer view
    cdef bytes packed
    cdef char* out
    cdef Py_ssize_t i
    cdef Py_ssize_t n
    cdef int kind
    cdef bint signed
    cdef int64_t value
    cdef uint64_t receipt
    if type(receipts) is not list and type(receipts) is not tuple \
            and type(receipts) is not bytes and type(receipts) is not bytearray \
            and PyObject_CheckBuffer(receipts):
        PyObject_GetBuffer(receipts, &view, PyBUF_RECORDS_RO)
        try:
            kind = ff_int_kind(view.format, view.itemsize)
            if view.ndim != 1 or kind == 0:
                raise InvalidArgument(
                    f"receipts must be a 1-D array of integers (uint64, or 4- or 8-byte "
                    f"integers in native byte order), got "
                    f"{view.ndim}-D items of format {(<bytes>view.format).decode()!r}")
            n = view.shape[0]
            signed = kind in b"qlin"
            packed = PyBytes_FromStringAndSize(NULL, n * 8)
            out = PyBytes_AS_STRING(packed)
            for i in range(n):
                value = ff_load_int(<const char*>view.buf + i * view.strides[0],
                                    <int>view.itemsize, signed)
                if signed and value < 0:
                    raise InvalidArgument(f"receipts[{i}]={value} must be >= 0")
                ff_store_le64(out + 8 * i, <uint64_t>value)
            return packed
        finally:
            PyBuffer_Release(&view)
    try:
        items = receipts if type(receipts) is list else list(receipts)
    except TypeError:
        raise InvalidArgument(
            f"receipts must be an iterable of ints or a uint64 array, got "
            f"{type(receipts).__name__}") from None
    n = len(items)
    packed = PyBytes_FromStringAndSize(NULL, n * 8)
    out = PyBytes_AS_STRING(packed)
    for i in range(n):
        item = items[i]
        try:
            # a numpy integer reads as its int; a bool is no receipt (the broker agrees)
            if type(item) is not int and (type(item) is bool
                                          or not hasattr(item, "__index__")):
                raise TypeError
            receipt = item
        except (TypeError, OverflowError):
            raise InvalidArgument(
                f"receipts must be ints in [0, 2**64), got {items[:5]!r}...") from None
        ff_store_le64(out + 8 * i, receipt)
    return packed


def receipts_of(frame):
    """The receipts of a delivery frame as packed little-endian u64s (the ACK payload).

    Raises:
        InvalidArgument: the frame is malformed or a record has no receipt.
    """
    cdef Py_buffer buffer
    cdef ff_frame_reader reader
    cdef ff_record_view view
    cdef int status
    cdef bytes packed
    cdef char* out
    cdef uint32_t i = 0
    PyObject_GetBuffer(frame, &buffer, PyBUF_SIMPLE)
    try:
        status = ff_reader_open(&reader, <const char*>buffer.buf, buffer.len)
        if status != FF_CODEC_OK:
            raise InvalidArgument(f"malformed delivery frame: {status_text(status)}")
        packed = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>reader.count * 8)
        out = PyBytes_AS_STRING(packed)
        while True:
            status = ff_reader_next(&reader, &view)
            if status == FF_CODEC_END:
                break
            if status != FF_CODEC_OK:
                raise InvalidArgument(
                    f"malformed delivery frame: {status_text(status)} at byte "
                    f"{ff_reader_offset(&reader)}")
            if not view.flags & FF_FLAG_RECEIPT:
                raise InvalidArgument(f"record {i} of the delivery frame has no receipt")
            ff_store_le64(out + 8 * i, view.receipt)
            i += 1
        return packed
    finally:
        PyBuffer_Release(&buffer)


def receipt_span(frame):
    """``(count, first, last)``: the records of a frame and the receipt slots of its first
    and last record (a stream batch's topic sequence numbers), read without decoding.

    Raises:
        InvalidArgument: the frame is malformed.
    """
    cdef Py_buffer buffer
    cdef ff_frame_reader reader
    cdef ff_record_view view
    cdef int status
    cdef uint64_t first = 0
    cdef uint64_t last = 0
    cdef uint32_t count = 0
    PyObject_GetBuffer(frame, &buffer, PyBUF_SIMPLE)
    try:
        status = ff_reader_open(&reader, <const char*>buffer.buf, buffer.len)
        while status == FF_CODEC_OK:
            status = ff_reader_next(&reader, &view)
            if status == FF_CODEC_OK:
                if count == 0:
                    first = view.receipt
                last = view.receipt
                count += 1
        if status != FF_CODEC_END:
            raise InvalidArgument(f"malformed stream frame: {status_text(status)}")
        return count, first, last
    finally:
        PyBuffer_Release(&buffer)


def frame_columns(frame):
    """Where the columns of a delivery frame are, for zero-copy array views
    (``fastfanout.arrays``), read natively in one pass.

    Returns:
        ``(count, stride, first_body, body_len, index)``. When every record has the same
        length, body position and body length (a batch of fixed-size bodies, no dead
        letters), ``stride`` is the record length, ``first_body`` the frame offset of
        the first body, ``body_len`` the common body length and ``index`` None: record
        ``i``'s fields sit at ``8 + i * stride`` plus their header offset. Otherwise
        ``stride`` is 0, ``body_len`` the common body length or -1, and ``index`` packs
        the columns gathered: ``count`` i64 body offsets, i64 body lengths, u64 ids, u64
        receipts, u32 receive counts (little-endian, in that order).

    Raises:
        InvalidArgument: the frame is malformed.
    """
    cdef Py_buffer buffer
    cdef ff_frame_reader reader
    cdef ff_record_view view
    cdef int status
    cdef Py_ssize_t n
    cdef Py_ssize_t i = 0
    cdef size_t before
    cdef size_t after
    cdef int64_t body_at
    cdef int64_t stride = -1
    cdef int64_t first_body = -1
    cdef int64_t first_rel = -1
    cdef int64_t body_len = -1
    cdef bint uniform = True
    cdef bint same_len = True
    cdef bytes index = None
    cdef char* out = NULL
    PyObject_GetBuffer(frame, &buffer, PyBUF_SIMPLE)
    try:
        status = ff_reader_open(&reader, <const char*>buffer.buf, buffer.len)
        if status != FF_CODEC_OK:
            raise InvalidArgument(f"malformed delivery frame: {status_text(status)}")
        n = reader.count
        for _ in range(2):   # a second pass gathers the columns when the first found no layout
            if not uniform:
                index = PyBytes_FromStringAndSize(NULL, n * 36)
                out = PyBytes_AS_STRING(index)
                ff_reader_open(&reader, <const char*>buffer.buf, buffer.len)
            i = 0
            while True:
                before = ff_reader_offset(&reader)
                status = ff_reader_next(&reader, &view)
                if status == FF_CODEC_END:
                    break
                if status != FF_CODEC_OK:
                    raise InvalidArgument(
                        f"malformed delivery frame: {status_text(status)} at byte "
                        f"{ff_reader_offset(&reader)}")
                after = ff_reader_offset(&reader)
                body_at = <int64_t>(view.body - <const char*>buffer.buf)
                if out != NULL:
                    ff_store_le64(out + 8 * i, <uint64_t>body_at)
                    ff_store_le64(out + 8 * (n + i), <uint64_t>view.body_len)
                    ff_store_le64(out + 8 * (2 * n + i), view.id)
                    ff_store_le64(out + 8 * (3 * n + i), view.receipt)
                    (<uint32_t*>(out + 32 * n))[i] = <uint32_t>view.receive_count
                elif i == 0:
                    stride = <int64_t>(after - before)
                    first_body = body_at
                    first_rel = body_at - <int64_t>before
                    body_len = view.body_len
                else:
                    if view.body_len != body_len:
                        same_len = False
                    if <int64_t>(after - before) != stride or \
                            body_at - <int64_t>before != first_rel or not same_len:
                        uniform = False
                i += 1
            if uniform:
                break
        if uniform:
            return n, (stride if n else 0), first_body, body_len, None
        return n, 0, first_body, (body_len if same_len else -1), index
    finally:
        PyBuffer_Release(&buffer)


def count_of(frame):
    """Records in a frame, read from its header (not validated)."""
    cdef Py_buffer buffer
    cdef ff_frame_reader reader
    PyObject_GetBuffer(frame, &buffer, PyBUF_SIMPLE)
    try:
        if ff_reader_open(&reader, <const char*>buffer.buf, buffer.len) != FF_CODEC_OK:
            raise InvalidArgument("malformed frame header")
        return reader.count
    finally:
        PyBuffer_Release(&buffer)
