"""A producer's ``offer(body)`` and a client's ``publish_nowait(topic, body)`` in C.

Design
------
``RemoteProducer.offer`` appends a body to the frame being built (``FrameBuilder``) and
decides whether the frame is full; written in Python that was a method frame, three
attribute lookups and a few int objects per message. ``OfferGate.offer`` does the same
in C and calls back into Python only at the edges a frame has: its first message (the
linger clock starts), a full frame (it is sent), and a producer that is closed or holds
refused frames (the Python side raises or flushes first). The count of offered messages
is a C integer. ``NowaitGate`` does the same for the pipelined single publish of the
blocking client when the target's batch is open.
"""

cimport cython
from libc.stdint cimport uint64_t

from fastfanout._ext.wire cimport FrameBuilder

__all__ = ["NowaitGate", "OfferGate"]


@cython.final
cdef class OfferGate:
    """Appends offered bodies to a producer's frame, in C.

    Args:
        builder: the frame being built.
        batch_messages: records at which the frame is full.
        batch_bytes: frame bytes at which it is full.
        kept: the producer's refused frames (a sized collection): while it is not empty,
            ``blocked`` is called before a body is appended.
        blocked: called with no argument before an offer while the gate is ``closed`` or
            frames are kept: raises (``Closed``), or flushes the kept frames.
        opened: called with no argument when a body opens a new frame.
        full: called with no argument when the frame is full (it sends it).
        result: what ``offer`` returns (the asyncio producer's ``DONE``; None).

    Attributes:
        closed: set when the producer is closed (``blocked`` then raises).
        offered: bodies offered so far.
    """

    cdef FrameBuilder _builder
    cdef Py_ssize_t _batch_messages
    cdef Py_ssize_t _batch_bytes
    cdef object _kept
    cdef object _blocked
    cdef object _opened
    cdef object _full
    cdef object _result
    cdef public bint closed
    cdef readonly uint64_t offered

    def __cinit__(self, FrameBuilder builder not None, Py_ssize_t batch_messages,
                  Py_ssize_t batch_bytes, object kept, object blocked, object opened,
                  object full, object result=None):
        self._builder = builder
        self._batch_messages = batch_messages
        self._batch_bytes = batch_bytes
        self._kept = kept
        self._blocked = blocked
        self._opened = opened
        self._full = full
        self._result = result
        self.closed = False
        self.offered = 0

    def offer(self, body):
        """Add a message body to the frame (see ``RemoteProducer.offer``)."""
        cdef FrameBuilder builder = self._builder
        if self.closed or len(self._kept):
            self._blocked()
        if type(body) is bytes:
            builder._append_bytes(<bytes>body)
        else:
            builder.append_body(body)   # any bytes-like body; InvalidArgument otherwise
        self.offered += 1
        if builder.out.count == 1:
            self._opened()
        if (builder.out.count >= <uint64_t>self._batch_messages
                or builder.out.length >= <size_t>self._batch_bytes):
            self._full()
        return self._result


@cython.final
cdef class NowaitGate:
    """``publish_nowait`` / ``send_nowait`` of a bare body, in C (both clients).

    The body joins the batch of its target (``ConnectionCore.enqueue``'s rules) and its
    future is returned. The common case — the target's batch is open — is one native
    call: the body appended in place, the future made, the batch sent when full.
    Opening a batch goes through the Python core as before.

    Args:
        core: the connection's ``ConnectionCore``.
        new_future: makes a publish's future from its index in the batch.
        send_out: sends what the core queued.
        opened: called with no argument when no batch is open before this publish;
            returns the time (``ConnectionCore.enqueue``'s ``now``).
        connection: the blocking ``Connection`` (its ``lock`` is held for the call, and
            ``ensure`` is called when it has no transport), or None (asyncio).
    """

    cdef object _core
    cdef object _new_future
    cdef object _send_out
    cdef object _opened
    cdef object _connection

    def __cinit__(self, object core, object new_future, object send_out, object opened,
                  object connection=None):
        self._core = core
        self._new_future = new_future
        self._send_out = send_out
        self._opened = opened
        self._connection = connection

    def enqueue(self, opcode, name, body):
        """Add ``body`` to the batch of (opcode, name); returns its future."""
        cdef object connection = self._connection
        cdef object lock = None
        if connection is not None:
            lock = connection.lock   # a forked child makes a new one
            lock.acquire()
        try:
            return self._enqueue(opcode, name, body)
        finally:
            if lock is not None:
                lock.release()

    cdef object _enqueue(self, object opcode, object name, object body):
        cdef object core = self._core
        cdef object connection = self._connection
        cdef object batches
        cdef object batch
        cdef object key
        cdef FrameBuilder builder
        cdef object future
        if core.forked or core.closed:
            core.check_open()   # raises
        if connection is not None and connection.transport is None:
            connection.ensure()   # connects
        batches = core.batches
        key = (opcode, name)
        batch = batches.get(key) if type(name) is str else None
        if batch is None:   # a batch to open (or a bad name): the core's own path
            future = core.enqueue(opcode, name, body, None, self._new_future,
                                  self._opened() if not batches else 0.0)
        else:
            builder = batch.builder
            if type(body) is bytes:
                builder._append_bytes(<bytes>body)
            else:
                builder.append_body(body)
            future = self._new_future(builder.out.count - 1)
            batch.futures.append(future)
            if (builder.out.count >= <uint64_t>core.batch_messages
                    or builder.out.length >= <size_t>core.batch_bytes):
                core.send_batch(key, batches.pop(key))
        if core.outbox:   # a full batch
            self._send_out()
        return future
