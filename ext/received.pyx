"""Received messages made in C at the client's edge, and the acks they queue.

Design
------
A delivery frame (one codec batch, see codec.pyx) arrives as a bytes object. The
per-message loop users write — ``for message in consumer: message.ack()`` — used to
decode the frame into codec ``Record`` objects, then build a pure-Python
``RemoteMessage`` from each, then queue a Python receipts frame per ack. Here every step
of that loop is C:

- ``MessageCursor`` walks a frame with the codec's bounds-checked reader and makes one
  ``RemoteMessage`` per step (its ``tp_iternext`` is C: no generator, no deque), asking
  its ``refill`` callable for the next frame only when one is used up;
- a ``RemoteMessage`` holds its frame and its record's offset in it: id, receipt, receive
  count, priority and timestamp are copied at once (plain C fields); the body,
  attributes, group and dedup ids and the dead-letter record are made on first access;
  the body is a ``bytes`` copy made once and kept (``memoryview(message)`` is a
  zero-copy view of the body in the frame, which the view keeps alive). Making and
  freeing one is the loop's largest cost, so a message made by a cursor takes two
  references (its frame, and the cursor's ``_Origin``: owner, consumer and queue, shared
  by all its messages), and whether it is settled is a C flag; the fields made on first
  access live in one ``_Decoded`` object, made only when one of them is read;
- ``message.ack()`` of a pushed message appends its receipt to an ``AckBuffer`` (C
  array); the buffer's frames leave in one SETTLE, each frame the receipts acked one
  after another from one delivery (so a consumer that acks every message of a push in
  order settles exactly that push, which the broker forgets at once).

Why bytes for the body: for a 64-byte body a ``bytes`` copy costs less than a
``memoryview`` slice (about 30 ns against 90 ns here, see docs/benchmarks.md), and most
bodies are small; it is made only when read, so a loop that never reads it pays nothing.
Large bodies can be read without a copy through ``memoryview(message)``.

Frames read in place. A large push of a local channel arrives as a ``RingFrame`` (a view
of the client's ring, shmring.pyx), not bytes. The cursor walks it where it lies — until
2026-12-07 it copied it into bytes first, 7 % of the per-message loop's time — holding
an export of it while it is the frame at hand (the ring may not move it then), and its
messages keep the frame object and their records' offsets. Once the cursor has moved on,
the ring may *detach* the frame (copy it to the heap, when its room is wanted and no
buffer views it): its data moves, the layout does not, so a message finds its record
from the frame's data at each access, never from a pointer kept. ``memoryview(message)``
of such a message exports the frame too (it stays put while the view lives).

The acks of single messages go as ``SETTLE`` with ``protocol.SETTLE_EACH`` as its last
frame: the broker acks each frame whole, and if one is refused it acks that frame's
fresh receipts one by one, so a stale receipt fails alone, as a frame per receipt did.
"""

cimport cython
from cpython.buffer cimport (
    PyBUF_SIMPLE,
    PyBuffer_FillInfo,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject_IsTrue
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from fastfanout._ext.blobs cimport BodySource
from fastfanout._ext.codec cimport (
    FF_CODEC_END,
    FF_CODEC_OK,
    FF_FLAG_DEAD_LETTER,
    FF_FLAG_TOPIC,
    FF_FLAG_PRIORITY,
    FF_RECORD_HEADER_SIZE,
    ff_frame_reader,
    ff_load_le16,
    ff_load_le32,
    ff_reader_next,
    ff_reader_offset,
    ff_reader_open,
    ff_record_view,
    ff_store_le64,
)

import json

from fastfanout._ext.codec import status_text
from fastfanout.errors import InvalidArgument, MalformedBatch, WrongClient, WrongEventLoop
from fastfanout.records import REPLY_TO, DeadLetterInfo, reply_address_of

from msgspec import DecodeError as _MsgpackDecodeError
from msgspec.msgpack import Decoder as _MsgpackDecoder

cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors)

from fastfanout._ext.clocks cimport monotonic as _monotonic

__all__ = ["DONE", "AckBuffer", "AsyncMessageCursor", "Done", "MessageCursor", "RemoteMessage",
           "messages_of"]

# An awaitable already complete with a value, for ``__anext__`` when a message is at hand:
# ``await`` takes the value through ``am_send`` (no StopIteration raised, no frame).
cdef extern from *:
    """
    typedef struct { PyObject_HEAD PyObject* value; } ff_ready;

    static PyObject* ff_ready_await(PyObject* self) { Py_INCREF(self); return self; }

    static PySendResult ff_ready_send(PyObject* self, PyObject* arg, PyObject** result) {
        ff_ready* ready = (ff_ready*)self;
        *result = ready->value ? ready->value : Py_NewRef(Py_None);
        ready->value = NULL;
        return PYGEN_RETURN;
    }

    static PyObject* ff_ready_next(PyObject* self) {
        ff_ready* ready = (ff_ready*)self;
        PyObject* value = ready->value;
        PyObject* stop;
        if (value == NULL) { PyErr_SetNone(PyExc_StopIteration); return NULL; }
        ready->value = NULL;
        stop = PyObject_CallOneArg(PyExc_StopIteration, value);
        Py_DECREF(value);
        if (stop != NULL) { PyErr_SetObject(PyExc_StopIteration, stop); Py_DECREF(stop); }
        return NULL;
    }

    static void ff_ready_dealloc(PyObject* self) {
        Py_XDECREF(((ff_ready*)self)->value);
        PyObject_Free(self);
    }

    static PyAsyncMethods ff_ready_async = {ff_ready_await, 0, 0, ff_ready_send};

    static PyTypeObject ff_ready_type = {
        PyVarObject_HEAD_INIT(NULL, 0)
        .tp_name = "fastfanout._ext.received.Ready",
        .tp_basicsize = sizeof(ff_ready),
        .tp_dealloc = ff_ready_dealloc,
        .tp_as_async = &ff_ready_async,
        .tp_flags = Py_TPFLAGS_DEFAULT,
        .tp_doc = "An awaitable already complete with its value.",
        .tp_iter = PyObject_SelfIter,
        .tp_iternext = ff_ready_next,
    };

    static PyObject* ff_ready_new(PyObject* value) {
        ff_ready* ready = PyObject_New(ff_ready, &ff_ready_type);
        if (ready == NULL) return NULL;
        Py_INCREF(value);
        ready->value = value;
        return (PyObject*)ready;
    }

    static int ff_ready_init(void) { return PyType_Ready(&ff_ready_type); }
    """
    int ff_ready_init() except -1
    object ff_ready_new(object value)

ff_ready_init()

# Reading one attribute of one object per call, as the interpreter's LOAD_ATTR_SLOT does:
# when the attribute is a plain ``__slots__`` slot of the object's type, its offset is
# noted once, and each read checks the type and its version tag (any change to the type
# clears it) and loads the slot; otherwise (or after a change) the usual getattr.
cdef extern from *:
    """
    #include <structmember.h>
    typedef struct {
        PyTypeObject* type;        /* NULL: not a slot (use getattr) */
        unsigned int version;
        Py_ssize_t offset;
    } ff_slot;

    static void ff_slot_note(ff_slot* slot, PyObject* obj, PyObject* name) {
        PyTypeObject* type = Py_TYPE(obj);
        PyObject* descr;
        PyMemberDef* member;
        slot->type = NULL;
        if (type->tp_getattro != PyObject_GenericGetAttr) return;
        descr = _PyType_Lookup(type, name);   /* borrowed; sets the version tag */
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type) return;
        if (!(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) || type->tp_version_tag == 0)
            return;
        member = ((PyMemberDescrObject*)descr)->d_member;
        if (member->type != T_OBJECT_EX) return;
        slot->type = type;
        slot->version = type->tp_version_tag;
        slot->offset = member->offset;
    }

    /* The slot's value (borrowed), or NULL: read it with getattr instead. */
    static inline PyObject* ff_slot_peek(const ff_slot* slot, PyObject* obj) {
        PyTypeObject* type = Py_TYPE(obj);
        if (type != slot->type || type->tp_version_tag != slot->version
                || !(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
            return NULL;
        return *(PyObject**)((char*)obj + slot->offset);
    }
    """
    ctypedef struct ff_slot:
        pass
    PyObject* Py_True
    PyObject* Py_False
    void ff_slot_note(ff_slot* slot, object obj, object name)
    PyObject* ff_slot_peek(const ff_slot* slot, object obj) noexcept

cdef object _decode_attributes = _MsgpackDecoder().decode
cdef object _UNSET = object()   # a lazily made field not made yet


@cython.final
cdef class Done:
    """An awaitable that is already complete (``await`` it: None at once).

    What the plain calls that code may await return: ``message.ack()`` and its kind, and
    the asyncio listener's ``close()``. They act at once (an asyncio message's ack is
    queued for this loop iteration's SETTLE); ``await message.ack()`` then works as it
    reads, in asyncio code, and a blocking caller just ignores the value.
    """

    def __await__(self):
        return iter(())   # an iterator that ends at once: ``await DONE`` is None

    def __repr__(self):
        return "DONE"


DONE = Done()
cdef Done _DONE = DONE


@cython.final
cdef class AckBuffer:
    """Pipelined acks of single messages, packed in C until they are sent.

    Each ``add`` appends a receipt; consecutive acks of messages of one delivery frame
    share one receipts frame, a new frame starting whenever the delivery changes.

    Args:
        state: what tells whether acks may still be queued: an object with a ``closed``
            attribute (a consumer's state, a connection's core). Once it is closed,
            ``message.ack()`` goes to the message's owner instead (and waits).
        limit: receipts queued at which ``on_full`` is called (at least 1).
        on_full: called with no argument when ``limit`` receipts are queued (it sends
            them), or None.
        on_first: called with no argument when the first receipt is queued into an
            empty buffer (say, to schedule the send), or None. It is called before the
            receipt is queued: if it raises, nothing was queued.

    An asyncio connection's buffer belongs to its event loop (``home``): an ``add`` from
    any other thread calls the loop's check, which raises, before anything is queued.
    """

    cdef uint64_t* _receipts
    cdef Py_ssize_t _count
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t* _cuts          # index of the first receipt of each frame after the first
    cdef Py_ssize_t _cut_count
    cdef Py_ssize_t _cut_capacity
    cdef const void* _last_delivery
    cdef double _since
    cdef readonly Py_ssize_t limit
    cdef readonly object state
    cdef object _on_full
    cdef object _on_first
    cdef ff_slot _closed_slot      # where ``state.closed`` is, when it is a slot
    cdef object _check_home        # (asyncio) raises WrongEventLoop; None: any thread
    cdef unsigned long _home_thread

    def __cinit__(self, object state, Py_ssize_t limit, object on_full=None,
                  object on_first=None):
        if limit < 1:
            raise InvalidArgument(f"limit={limit} must be at least 1")
        self.state = state
        self.limit = limit
        self._on_full = on_full
        self._on_first = on_first
        self._receipts = NULL
        self._cuts = NULL
        self._count = self._capacity = self._cut_count = self._cut_capacity = 0
        self._last_delivery = NULL
        self._since = 0.0
        # every message.ack() reads ``state.closed``: a slot of a consumer's state is
        # read in C (a generic getattr was ~10 % of the consumer's loop)
        ff_slot_note(&self._closed_slot, state, "closed")
        self._check_home = None
        self._home_thread = 0

    def __dealloc__(self):
        PyMem_Free(self._receipts)
        PyMem_Free(self._cuts)

    def home(self, check):
        """Tie the buffer to this thread (its event loop's): ``check()`` on any other.

        ``check`` raises (``WrongEventLoop``) for a caller outside the owning loop; an
        ``add`` from this thread costs one compare of thread ids, as ``NowaitGate``'s.
        Until 2026-12-05 an ack from another thread into a buffer that held acks already
        was queued unchecked (a race on the buffer with the loop's thread).
        """
        self._check_home = check
        self._home_thread = PyThread_get_thread_ident()

    @property
    def count(self):
        """Receipts queued and not taken yet."""
        return self._count

    @property
    def since(self):
        """Monotonic seconds (``time.monotonic``) when the oldest queued ack was queued."""
        return self._since

    @property
    def closed(self):
        """True once its ``state`` is closed: acks then go through the message's owner."""
        return bool(self.state.closed)

    cdef int _grow(self) except -1:
        cdef Py_ssize_t capacity = self._capacity * 2 if self._capacity else 256
        cdef uint64_t* grown = <uint64_t*>PyMem_Realloc(self._receipts,
                                                         capacity * sizeof(uint64_t))
        if grown == NULL:
            raise MemoryError()
        self._receipts = grown
        self._capacity = capacity
        return 0

    cdef int _cut(self) except -1:
        cdef Py_ssize_t capacity
        cdef Py_ssize_t* grown
        if self._cut_count == self._cut_capacity:
            capacity = self._cut_capacity * 2 if self._cut_capacity else 16
            grown = <Py_ssize_t*>PyMem_Realloc(self._cuts, capacity * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self._cuts = grown
            self._cut_capacity = capacity
        self._cuts[self._cut_count] = self._count
        self._cut_count += 1
        return 0

    cdef inline int is_closed(self) except -1:
        """Whether its state is closed (then acks go through the message's owner)."""
        cdef PyObject* closed = ff_slot_peek(&self._closed_slot, self.state)
        if closed == NULL:
            return 1 if self.state.closed else 0
        if closed == Py_False:
            return 0
        if closed == Py_True:
            return 1
        return PyObject_IsTrue(<object>closed)

    cdef int add(self, uint64_t receipt, const void* delivery) except -1:
        """Queue one receipt of the delivery ``delivery`` (an identity, or NULL).

        Whatever raises before the receipt is queued (a foreign thread's check,
        ``on_first``) leaves the buffer as it was. Until 2026-12-05 ``on_first`` ran
        after: an ack refused by it (``WrongEventLoop``) stayed queued with no send
        scheduled, and the loop's own later acks waited behind it, unsent.
        """
        cdef bint first = self._count == 0
        if (self._check_home is not None
                and PyThread_get_thread_ident() != self._home_thread):
            self._check_home()
        if first and self._on_first is not None:
            self._on_first()
        if self._count == self._capacity:
            self._grow()
        if first:
            self._since = _monotonic()
            self._cut_count = 0
        elif delivery != self._last_delivery or delivery == NULL:
            self._cut()
        self._last_delivery = delivery
        self._receipts[self._count] = receipt
        self._count += 1
        if self._count >= self.limit and self._on_full is not None:
            self._on_full()
        return 0

    def append(self, receipt):
        """Queue the ack of one receipt on its own frame (from Python code)."""
        self.add(<uint64_t>receipt, NULL)

    def take(self):
        """The queued acks as receipts frames (u64 little-endian), and empty the buffer.

        Returns:
            A list of bytes: one frame per run of acks of one delivery, in ack order.
        """
        cdef list frames = []
        cdef Py_ssize_t start = 0
        cdef Py_ssize_t end
        cdef Py_ssize_t cut
        for cut in range(self._cut_count + 1):
            end = self._cuts[cut] if cut < self._cut_count else self._count
            if end > start:
                frames.append(_pack(self._receipts + start, end - start))
            start = end
        self._count = 0
        self._cut_count = 0
        self._last_delivery = NULL
        return frames

    def clear(self):
        """Drop the queued acks (the session they were for has ended)."""
        self._count = 0
        self._cut_count = 0
        self._last_delivery = NULL


cdef bytes _pack(const uint64_t* receipts, Py_ssize_t count):
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, 8 * count)
    cdef char* out = PyBytes_AS_STRING(frame)
    cdef Py_ssize_t index
    for index in range(count):
        ff_store_le64(out + 8 * index, receipts[index])
    return frame


cdef inline object _text(const char* data, uint32_t length):
    if length == 0:
        return None
    try:
        return PyUnicode_DecodeUTF8(data, length, NULL)
    except UnicodeDecodeError:
        raise MalformedBatch("malformed delivery record: a name or id is not UTF-8") from None


cdef inline object _seconds(object microseconds):
    return None if microseconds is None else microseconds / 1e6


@cython.final
cdef class _Origin:
    """Where a cursor's messages come from and settle through: one, shared by them all.

    A message holds one reference to it where it held three (owner, consumer, queue):
    making and freeing a message is then two reference counts fewer each way.
    """
    cdef object owner       # what settles by receipt (the client)
    cdef object consumer    # the AckBuffer (or settler) its acks join, or None
    cdef object queue       # the queue's name, or None: read from each record


cdef _Origin _origin(object owner, object consumer, object queue):
    cdef _Origin origin = _Origin.__new__(_Origin)
    origin.owner = owner
    origin.consumer = consumer
    origin.queue = queue if queue else None
    return origin


@cython.final
cdef class _Decoded:
    """A message's fields made on first access (all but the body): made only when one is
    read, so a loop that reads the body and acks never makes it."""
    cdef object encoded       # encoded attributes (constructor path), or None
    cdef object attributes
    cdef object group_id
    cdef object dedup_id
    cdef object dead_letter
    cdef object topic
    cdef object queue

    def __cinit__(self):
        self.encoded = None
        self.attributes = self.group_id = self.dedup_id = _UNSET
        self.dead_letter = self.topic = self.queue = _UNSET


@cython.final
@cython.freelist(64)
cdef class RemoteMessage:
    """A message received over the wire; the same attributes as ``fastfanout.Message``.

    Made in C from the delivery frame (see the module's essay); the constructor is the
    slow path, from a decoded codec ``Record``.

    Args:
        record: a codec ``Record`` of a delivery.
        owner: what settles it by receipt (the client).
        consumer: the consumer whose pipelined acks it joins (an ``AckBuffer`` or an
            object with ``closed`` and ``defer_settle``), or None.
        dead_letter: its ``DeadLetterInfo`` when it was dead-lettered, else None.
        queue: the queue it was received from.

    Attributes:
        id: broker-unique, increasing message id.
        body: the body bytes (``memoryview(message)``: the body without a copy).
        timestamp: clock seconds when it was published or sent.
        receive_count: deliveries of this message by this queue, this one included.
        receipt: the receipt of this delivery, for ack/nack/extend/term.
        queue: the queue it was received from.
        group_id: FIFO group, or None.
        dedup_id: deduplication id, or None.
        priority: priority (0 when the queue has none).
        dead_letter: a DeadLetterInfo when it was dead-lettered into this queue, else None.
        topic: the topic it was published on when its queue keeps topics (a queue
            subscribed to a topic pattern), else None (a send, a dead-lettered copy).
    """

    cdef readonly uint64_t id
    cdef readonly uint64_t receipt
    cdef readonly uint32_t receive_count
    cdef readonly int priority
    cdef int64_t _timestamp_us
    cdef uint8_t _flags
    cdef bint _live               # not settled yet through its consumer (or apart)
    cdef size_t _offset           # where its record's header is in _frame
    cdef object _frame            # the delivery frame (bytes, or a RingFrame) its record
                                  # is in, or None (made from a codec Record)
    cdef _Origin _origin
    cdef object _body             # None until read (frame path)
    cdef _Decoded _decoded        # None until a field other than the body is read

    def __init__(self, record, owner, consumer, dead_letter=None, queue=""):
        cdef _Decoded decoded = _Decoded.__new__(_Decoded)
        self.id = record.id
        self.receipt = record.receipt or 0
        self.receive_count = record.receive_count
        self.priority = record.priority or 0
        self._timestamp_us = record.timestamp_us
        self._flags = ((FF_FLAG_DEAD_LETTER if record.dead_letter else 0)
                       | (FF_FLAG_TOPIC if record.name_is_topic else 0))
        self._frame = None
        self._offset = 0
        self._body = record.body
        decoded.encoded = record.attributes
        decoded.group_id = record.group_id
        decoded.dedup_id = record.dedup_id
        decoded.dead_letter = dead_letter
        decoded.queue = queue or ("" if record.dead_letter or record.name_is_topic
                                  else record.name or "")
        decoded.topic = record.name if record.name_is_topic else None
        self._decoded = decoded
        self._origin = _origin(owner, consumer, None)
        self._live = consumer is not None

    cdef inline const char* _part(self, int which, uint32_t* length) noexcept:
        """A variable part of the record: 0 name, 1 group, 2 dedup, 3 attrs, 4 body
        (the message has a frame). The pointer holds until the frame can move: while
        the GIL is held with no Python code run in between."""
        cdef object frame = self._frame
        cdef const char* p = (PyBytes_AS_STRING(frame) if type(frame) is bytes
                              else (<BodySource>frame).data) + self._offset
        cdef uint32_t name_len = ff_load_le16(p + 10)
        cdef uint32_t group_len = ff_load_le16(p + 6)
        cdef uint32_t dedup_len = ff_load_le16(p + 8)
        cdef uint32_t attrs_len = ff_load_le32(p + 12)
        cdef uint32_t body_len = ff_load_le32(p + 16)
        cdef const char* part = p + FF_RECORD_HEADER_SIZE
        if which == 0:
            length[0] = name_len
            return part
        part += name_len
        if which == 1:
            length[0] = group_len
            return part
        part += group_len
        if which == 2:
            length[0] = dedup_len
            return part
        part += dedup_len
        if which == 3:
            length[0] = attrs_len
            return part
        length[0] = body_len
        return part + attrs_len

    cdef inline _Decoded _fields(self):
        """The lazily made fields, made (all unset) on the first call."""
        if self._decoded is None:
            self._decoded = _Decoded.__new__(_Decoded)
        return self._decoded

    @property
    def body(self):
        """The body bytes (made on first access, then kept)."""
        cdef const char* data
        cdef uint32_t length
        if self._body is None:
            data = self._part(4, &length)
            self._body = PyBytes_FromStringAndSize(data, length)
        return self._body

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        cdef const char* data
        cdef uint32_t length
        cdef Py_buffer* hold
        if self._frame is None:
            body = self.body
            PyBuffer_FillInfo(buffer, body, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body),
                              1, flags)
            return
        if type(self._frame) is bytes:
            data = self._part(4, &length)
            PyBuffer_FillInfo(buffer, self, <void*>data, length, 1, flags)
            return
        # a frame read in place: exported for as long as the view lives, so that the
        # ring neither reuses nor moves it (``__releasebuffer__`` lets it go)
        hold = <Py_buffer*>PyMem_Malloc(sizeof(Py_buffer))
        if hold == NULL:
            raise MemoryError()
        try:
            PyObject_GetBuffer(self._frame, hold, PyBUF_SIMPLE)
        except BaseException:
            PyMem_Free(hold)
            raise
        data = self._part(4, &length)
        try:
            PyBuffer_FillInfo(buffer, self, <void*>data, length, 1, flags)
        except BaseException:
            PyBuffer_Release(hold)
            PyMem_Free(hold)
            raise
        buffer.internal = <void*>hold

    def __releasebuffer__(self, Py_buffer* buffer):
        cdef Py_buffer* hold = <Py_buffer*>buffer.internal
        if hold != NULL:
            buffer.internal = NULL
            PyBuffer_Release(hold)
            PyMem_Free(hold)

    @property
    def timestamp(self):
        """Clock seconds when it was published or sent."""
        return self._timestamp_us / 1e6

    @property
    def queue(self):
        """The queue it was received from."""
        cdef const char* data
        cdef uint32_t length
        cdef _Decoded fields
        if self._decoded is None and self._origin.queue is not None:
            return self._origin.queue
        fields = self._fields()
        if fields.queue is _UNSET:
            if self._origin.queue is not None:
                fields.queue = self._origin.queue
            elif self._flags & (FF_FLAG_DEAD_LETTER | FF_FLAG_TOPIC):
                fields.queue = ""
            else:
                data = self._part(0, &length)
                fields.queue = _text(data, length) or ""
        return fields.queue

    @property
    def topic(self):
        """The topic it was published on (its queue keeps topics), else None."""
        cdef const char* data
        cdef uint32_t length
        cdef _Decoded fields = self._fields()
        if fields.topic is _UNSET:
            if self._flags & FF_FLAG_TOPIC:
                data = self._part(0, &length)
                fields.topic = _text(data, length)
            else:
                fields.topic = None
        return fields.topic

    @property
    def group_id(self):
        """FIFO group, or None."""
        cdef const char* data
        cdef uint32_t length
        cdef _Decoded fields = self._fields()
        if fields.group_id is _UNSET:
            data = self._part(1, &length)
            fields.group_id = _text(data, length)
        return fields.group_id

    @property
    def dedup_id(self):
        """Deduplication id, or None."""
        cdef const char* data
        cdef uint32_t length
        cdef _Decoded fields = self._fields()
        if fields.dedup_id is _UNSET:
            data = self._part(2, &length)
            fields.dedup_id = _text(data, length)
        return fields.dedup_id

    @property
    def attributes(self):
        """Message attributes: name -> str | int | float | bytes | list[str]."""
        cdef const char* data
        cdef uint32_t length
        cdef _Decoded fields = self._fields()
        if fields.attributes is _UNSET:
            try:
                if self._frame is not None:
                    data = self._part(3, &length)
                    fields.attributes = _decode_attributes(
                        PyBytes_FromStringAndSize(data, length)) if length else {}
                else:
                    fields.attributes = (_decode_attributes(fields.encoded)
                                         if fields.encoded else {})
            except (_MsgpackDecodeError, RecursionError) as exc:
                # a record no broker makes (until 2026-12-05 msgspec's own error)
                raise MalformedBatch(
                    f"malformed delivery record: its attributes are not msgpack ({exc})"
                ) from None
        return fields.attributes

    @property
    def dead_letter(self):
        """A DeadLetterInfo when it was dead-lettered into this queue, else None.

        A dead-lettered copy's record holds ``[reason, source, receive_count, first_us,
        last_us, time_us]`` as JSON in its name part (docs/protocol.md).
        """
        cdef const char* data
        cdef uint32_t length
        cdef _Decoded fields = self._fields()
        if fields.dead_letter is _UNSET:
            if not self._flags & FF_FLAG_DEAD_LETTER:
                fields.dead_letter = None
            else:
                data = self._part(0, &length)
                try:
                    reason, source, count, first, last, when = json.loads(data[:length])
                    fields.dead_letter = DeadLetterInfo(reason, source, count,
                                                        _seconds(first), _seconds(last),
                                                        when / 1e6)
                except (ValueError, TypeError, RecursionError):   # JSON's errors included
                    # a record no broker makes (until 2026-12-05 json's or Python's own)
                    raise MalformedBatch(
                        "malformed delivery record: its dead-letter record is not "
                        "[reason, source, receive_count, first_us, last_us, time_us]"
                    ) from None
        return fields.dead_letter

    def _settled(self):
        # settled apart from its batch: a later DeliveryBatch.ack() leaves it out
        self._live = False

    def detach(self):
        """For its batch's ack: True (and now settled) unless settled on its own before."""
        live = self._live
        self._live = False
        return live

    def ack(self):
        """Delete the message (its lease must still run); returns ``DONE`` (awaitable).

        A message pushed to a consumer (``consume``) is acked pipelined, with that
        consumer's other acks in one SETTLE within the client's linger, as
        ``DeliveryBatch.ack()`` does: a stale receipt is then counted by the broker
        (``error.stale_receipt``), not raised. Otherwise (``receive``, a cancelled
        consumer) the call waits and raises ``StaleReceipt``; the asyncio client queues
        it for its loop iteration (``await message.ack()`` works too, and does not wait
        for the broker). ``await client.ack(message.receipt)`` always waits.
        """
        cdef object consumer
        cdef AckBuffer acks
        cdef const void* delivery = NULL
        if self._live:
            consumer = self._origin.consumer
            if type(consumer) is AckBuffer:
                acks = <AckBuffer>consumer
                if not acks.is_closed():
                    if self._frame is not None:
                        delivery = <const void*>self._frame
                    acks.add(self.receipt, delivery)   # raises having queued nothing
                    self._live = False
                    return _DONE
            elif not consumer.closed:
                consumer.defer_settle(_pack(&self.receipt, 1))   # refused: nothing queued
                self._live = False
                return _DONE
        try:
            self._origin.owner.ack(self.receipt)
        finally:
            self._live = False
        return _DONE

    def nack(self, delay=None):
        """End the lease; visible again after ``delay`` seconds (None: queue backoff).

        Returns ``DONE`` (awaitable; the asyncio client sends the request at once).

        Raises:
            InvalidArgument: ``delay`` is not a number of seconds in range; nothing was
                done (the message stays leased, and its batch's ``ack()`` acks it).
        """
        try:
            self._origin.owner.nack(self.receipt, delay=delay)
        except (InvalidArgument, WrongEventLoop):
            raise   # refused before it acted: still ours to settle (a batch ack included)
        except BaseException:
            self._live = False
            raise
        self._live = False
        return _DONE

    def extend(self, seconds):
        """Make the lease end ``seconds`` from now (0: give the message back); ``DONE``."""
        self._origin.owner.extend(self.receipt, seconds)
        if seconds == 0:
            self._live = False
        return _DONE

    def term(self):
        """Dead-letter the message at once (reason ``rejected``); returns ``DONE``."""
        try:
            self._origin.owner.term(self.receipt)
        except WrongEventLoop:
            raise   # refused before it acted: still ours to settle
        except BaseException:
            self._live = False
            raise
        self._live = False
        return _DONE

    @property
    def reply_to(self):
        """The address a reply goes to (its ``fastfanout.reply_to`` attribute: a
        ``request``), or None (a message published or sent)."""
        return self.attributes.get(REPLY_TO)

    def reply(self, body, *, attributes=None):
        """Answer this request: ``body`` (and ``attributes``) go straight back to its
        requester (the client's ``reply``; the asyncio client's is sent at once, not
        awaited). It does not settle the message: ack it too.

        Raises:
            InvalidArgument: the message asked for no reply, or a bad body or attributes.
        """
        return self._origin.owner.reply(reply_address_of(self.attributes), body,
                                        attributes=attributes)

    def __repr__(self):
        return (f"RemoteMessage(id={self.id}, queue={self.queue!r}, "
                f"receive_count={self.receive_count}, body={self.body[:32]!r})")


cdef inline RemoteMessage _make(const ff_record_view* view, object frame, const char* base,
                                _Origin origin):
    # Only the fields the loop reads are set: the body and the decoded fields stay None
    # (as the type's allocation leaves them) until read.
    cdef RemoteMessage message = RemoteMessage.__new__(RemoteMessage)
    message.id = view.id
    message.receipt = view.receipt
    message.receive_count = view.receive_count
    message.priority = view.priority if view.flags & FF_FLAG_PRIORITY else 0
    message._timestamp_us = view.timestamp_us
    message._flags = view.flags
    message._live = origin.consumer is not None
    message._frame = frame
    message._offset = <size_t>(view.start - base)
    message._origin = origin
    return message


cdef object _malformed(int status, size_t offset):
    return MalformedBatch(
        f"malformed batch frame: {status_text(status)} at byte offset {offset}")


@cython.final
cdef class MessageCursor:
    """Iterates the messages of delivery frames, one ``RemoteMessage`` per step, in C.

    Args:
        owner: what the messages settle through by receipt (the client).
        consumer: their consumer's ``AckBuffer`` (or a settler), or None.
        queue: the queue they come from.
        refill: called with no argument when a frame is used up: the next delivery
            frame (bytes), or None to end the iteration (it may raise StopIteration).
        release: called, when the cursor is dropped in the middle of a frame, with the
            packed receipts of the messages it never made (``take_unread``): they go
            back to the queue. None: they stay leased until their visibility timeout.
    """

    cdef object _frame
    cdef Py_buffer _hold           # an export of _frame while it lies in a ring
    cdef bint _holding
    cdef ff_frame_reader _reader
    cdef ff_record_view _view      # the record just read (a field: no clearing per step)
    cdef _Origin _origin           # owner, consumer and queue, shared by its messages
    cdef readonly str queue
    cdef object _refill
    cdef object _release
    cdef object __weakref__         # its client drops its frame on close (a weak reference)

    def __cinit__(self, object owner, object consumer, str queue, object refill=None,
                  object release=None):
        self._origin = _origin(owner, consumer, queue)
        self.queue = queue
        self._refill = refill
        self._release = release
        self._frame = None
        self._holding = False
        self._reader.count = self._reader.index = 0
        self._reader.remaining = 0

    def __dealloc__(self):
        self._leave()

    def __del__(self):
        # a ``for`` loop left by ``break`` drops its cursor in the middle of a frame:
        # the messages it never made are given back (the consumer itself is cancelled
        # by its own finalizer)
        try:
            self.release_unread()
        except BaseException:   # a finalizer raises nothing (interpreter exit, say)
            pass

    def release_unread(self):
        """Hand the messages of the current frame not yet made to ``release`` (back to
        their queue); they are never made. Nothing without ``release``, or a frame."""
        cdef object release = self._release
        cdef bytes unread
        if release is None or self._frame is None:
            return
        try:
            unread = self.take_unread()
        except MalformedBatch:   # nothing of a malformed rest can be read, nor released
            return
        if unread:
            release(unread)

    cdef void _leave(self) noexcept:
        """Drop the frame at hand (and the export of a frame read in place)."""
        self._frame = None
        if self._holding:
            self._holding = False
            PyBuffer_Release(&self._hold)

    cdef int load(self, object frame) except -1:
        cdef int status
        cdef const char* data
        cdef size_t length
        self._leave()
        if type(frame) is bytes:
            data, length = PyBytes_AS_STRING(frame), <size_t>PyBytes_GET_SIZE(frame)
        elif isinstance(frame, BodySource):
            # a frame read in place (a RingFrame): walked where it lies, exported while
            # it is the one at hand (see the module's essay)
            PyObject_GetBuffer(frame, &self._hold, PyBUF_SIMPLE)
            self._holding = True
            data, length = <const char*>self._hold.buf, <size_t>self._hold.len
        else:
            frame = bytes(frame)
            data, length = PyBytes_AS_STRING(frame), <size_t>PyBytes_GET_SIZE(frame)
        status = ff_reader_open(&self._reader, data, length)
        if status != FF_CODEC_OK:
            self._leave()
            self._reader.count = self._reader.index = 0
            raise _malformed(status, ff_reader_offset(&self._reader))
        self._frame = frame
        return 0

    def feed(self, frame):
        """Start on a delivery frame (the rest of the current one is dropped)."""
        self.load(frame)

    def drop(self):
        """Drop the rest of the current frame: the next step calls ``refill``.

        Its client closing calls it, so that an iteration resumed after ``close()``
        raises ``Closed`` (from ``refill``) rather than yielding messages nothing can
        settle any more.
        """
        self._leave()
        self._reader.count = self._reader.index = 0

    @property
    def owner(self):
        """What its messages settle through by receipt."""
        return self._origin.owner

    @property
    def consumer(self):
        """The ``AckBuffer`` (or settler) its messages' acks join, or None."""
        return self._origin.consumer

    @property
    def pending(self):
        """Messages of the current frame not yet made."""
        return self._reader.count - self._reader.index if self._frame is not None else 0

    def take_unread(self):
        """The receipts of the current frame's messages not yet made, packed (8 bytes
        little-endian each); the frame is dropped, so they are never made.

        A cancelled consumer gives them back to its queue (``ConnectionCore.release``).

        Raises:
            MalformedBatch: the rest of the frame is malformed (nothing is taken).
        """
        cdef Py_ssize_t left = self.pending
        cdef bytes packed
        cdef char* out
        cdef Py_ssize_t taken = 0
        cdef size_t offset
        cdef int status
        if left <= 0:
            self._leave()
            return b""
        packed = PyBytes_FromStringAndSize(NULL, left * 8)
        out = PyBytes_AS_STRING(packed)
        while taken < left:
            offset = ff_reader_offset(&self._reader)
            status = ff_reader_next(&self._reader, &self._view)
            if status != FF_CODEC_OK:
                self._leave()
                raise _malformed(status, offset)
            ff_store_le64(out + 8 * taken, self._view.receipt)
            taken += 1
        self._leave()
        return packed

    def __iter__(self):
        return self

    cdef object _next_here(self):
        """The next message of the current frame, or None once it is used up."""
        cdef size_t offset = ff_reader_offset(&self._reader)
        cdef int status = ff_reader_next(&self._reader, &self._view)
        if status == FF_CODEC_OK:
            return _make(&self._view, self._frame, self._reader.frame, self._origin)
        self._leave()
        if status != FF_CODEC_END:
            raise _malformed(status, offset)
        return None

    def __next__(self):
        cdef object message
        while True:
            if self._frame is not None:
                message = self._next_here()
                if message is not None:
                    return message
            if self._refill is None:
                raise StopIteration
            frame = self._refill()
            if frame is None:
                raise StopIteration
            self.load(frame)


@cython.final
cdef class AsyncMessageCursor:
    """Iterates (``async for``) the messages of delivery frames, one per step, in C.

    A step with a message at hand returns an awaitable already complete (no coroutine,
    no generator); only when a frame is used up does it await ``refill``.

    Args:
        owner: what the messages settle through by receipt (the client's settler).
        consumer: their ``AckBuffer`` (or a settler), or None.
        queue: the queue they come from.
        refill: an async iterator of delivery payloads (lists of frames, the first one
            the delivery frame); its end ends the iteration.
        release: called by ``aclose`` (or when the cursor is dropped) with the packed
            receipts of the current frame's messages not yet made (they go back to the
            queue), or None.
    """

    cdef MessageCursor _cursor
    cdef object _refill
    cdef object __weakref__         # its client drops its frame on close (a weak reference)

    def __cinit__(self, object owner, object consumer, str queue, object refill,
                  object release=None):
        self._cursor = MessageCursor(owner, consumer, queue, None, release)
        self._refill = refill

    @property
    def pending(self):
        """Messages of the current frame not yet made."""
        return self._cursor.pending

    def drop(self):
        """Drop the rest of the current frame: the next step awaits ``refill``.

        Its client closing calls it (``MessageCursor.drop``).
        """
        self._cursor.drop()

    def __aiter__(self):
        return self

    def __iter__(self):
        raise WrongClient(
            f"the consumer of queue {self._cursor.queue!r} belongs to an asyncio client: "
            f"iterate it with 'async for' in a coroutine; in synchronous code use the "
            f"consume() of a blocking client (fastfanout.connect())")

    # (not in the stub: type checkers keep reporting these misuses themselves)
    def __await__(self):
        raise WrongClient(
            f"the consumer of queue {self._cursor.queue!r} (an asyncio client's "
            f"consume(), a plain call) is not awaited: iterate it with 'async for "
            f"message in client.consume(...)'")

    def __aenter__(self):
        raise WrongClient(
            f"the consumer of queue {self._cursor.queue!r} (an asyncio client's "
            f"consume()) is not entered with 'async with': iterate it with 'async for "
            f"message in client.consume(...)'; leaving the loop cancels it")

    def __aexit__(self, *exc):   # pragma: no cover - __aenter__ raised
        pass

    def __anext__(self):
        cdef MessageCursor cursor = self._cursor
        cdef object message
        if cursor._frame is not None:
            message = cursor._next_here()
            if message is not None:
                return ff_ready_new(message)
        return _refilled(self)

    def aclose(self):
        """Close the iteration at once (its consumer is cancelled): an awaitable.

        The rest of the frame being iterated is never yielded: it is handed to
        ``release`` (back to the queue), as the frames the consumer had not started are
        by its cancel.
        """
        return _closed(self)


async def _closed(AsyncMessageCursor self):
    """``aclose``: the iteration's consumer cancelled first (its CANCEL fired by the
    refill's ``finally``), then the rest of the frame released, so the broker does not
    push it back to the consumer in between (a delivery counted twice)."""
    await self._refill.aclose()
    self._cursor.release_unread()


async def _refilled(AsyncMessageCursor self):
    """The next message once the current frame is used up: awaits the next frame(s)."""
    cdef object message
    while True:
        try:
            frames = await self._refill.__anext__()
        except StopAsyncIteration:
            raise StopAsyncIteration from None
        self._cursor.load(frames[0])
        message = self._cursor._next_here()
        if message is not None:
            return message


def messages_of(frame, owner, consumer=None, str queue=""):
    """Every message of a delivery frame, made in C (a list of ``RemoteMessage``).

    Raises:
        MalformedBatch: the frame is malformed (nothing is returned).
    """
    cdef MessageCursor cursor = MessageCursor(owner, consumer, queue)
    cursor.load(frame)
    return list(cursor)
