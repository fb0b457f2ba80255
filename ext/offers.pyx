"""A producer's ``offer(body)`` in C: one native call per message, no Python frame.

Design
------
``RemoteProducer.offer`` appends a body to the frame being built (``FrameBuilder``) and
decides whether the frame is full; written in Python that was a method frame, three
attribute lookups and a few int objects per message. ``OfferGate.offer`` does the same
in C and calls back into Python only at the edges a frame has: its first message (the
linger clock starts), a full frame (it is sent), and a producer that is closed or holds
refused frames (the Python side raises or flushes first). The count of offered messages
is a C integer.
"""

cimport cython
from libc.stdint cimport uint64_t

from fastfanout._ext.wire cimport FrameBuilder

__all__ = ["OfferGate"]


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
