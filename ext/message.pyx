"""The ``Message`` record returned by ``receive`` and ``consume``.

The hot path never builds one of these: the core keeps messages as C records and builds a
``Message`` only when user code asks for it (``receive``), filling its fields directly
(no ``__init__`` call, no keyword parsing). Attributes stay msgpack-encoded until read,
since many consumers never look at them.
"""

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t

from msgspec.msgpack import decode as _decode_attributes

from fastfanout.records import REPLY_TO, reply_address_of


cdef class Settler:
    """An owner of receipts that a ``Message`` acks in C (``ack_receipt``), with no call
    through Python: the embedded broker's one-message calls are one."""

    cdef int ack_receipt(self, uint64_t receipt) except -1:
        """Ack the delivery of ``receipt`` (``StaleReceipt`` when its lease ended)."""
        raise NotImplementedError


# A free list: a per-message receive loop reuses the Message its last one freed.
@cython.freelist(8)
cdef class Message:
    """A message received from a queue.

    Attributes:
        id: broker-unique, increasing message id (the same in every queue it reached).
        body: the body bytes as published (``memoryview(message)``: a read-only view of
            them, as the clients' ``RemoteMessage`` gives).
        attributes: message attributes (decoded on first access).
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

    def __init__(self, *args, **kwargs):
        raise TypeError("Message objects are made by receive(), not by user code")

    @property
    def attributes(self):
        """Message attributes: name -> str | int | float | bytes | list[str]."""
        if self._attributes is None:
            if self._encoded_attributes is None:
                self._attributes = {}
            else:
                self._attributes = _decode_attributes(self._encoded_attributes)
        return self._attributes

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        # the body without a copy, as RemoteMessage gives it: code written against a
        # client runs unchanged on the embedded broker
        body = self.body
        PyBuffer_FillInfo(buffer, body, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), 1,
                          flags)

    def ack(self):
        """Delete the message (its lease must still run). Raises StaleReceipt otherwise."""
        if isinstance(self._owner, Settler):
            (<Settler>self._owner).ack_receipt(self.receipt)   # in C
        else:
            self._owner.ack(self.receipt)

    def nack(self, delay=None):
        """End the lease; visible again after ``delay`` seconds (None: the queue's backoff)."""
        self._owner.nack(self.receipt, delay=delay)

    def extend(self, seconds):
        """Make the lease end ``seconds`` from now."""
        self._owner.extend(self.receipt, seconds)

    def term(self):
        """Dead-letter the message at once (reason ``rejected``)."""
        self._owner.term(self.receipt)

    @property
    def reply_to(self):
        """The address a reply goes to (its ``fastfanout.reply_to`` attribute: a
        ``request``), or None (a message published or sent)."""
        return self.attributes.get(REPLY_TO)

    def reply(self, body, *, attributes=None):
        """Answer this request: ``body`` (and ``attributes``) go straight back to its
        requester (``Broker.reply``). It does not settle the message: ack it too.

        Raises:
            InvalidArgument: the message asked for no reply, or a bad body or attributes.
        """
        return self._owner.reply(reply_address_of(self.attributes), body,
                                 attributes=attributes)

    def __repr__(self):
        return (f"Message(id={self.id}, queue={self.queue!r}, receive_count={self.receive_count}, "
                f"body={self.body[:32]!r}{'...' if len(self.body) > 32 else ''})")


cdef Message make_message(uint64_t id, bytes body, bytes encoded_attributes, double timestamp,
                          unsigned int receive_count, uint64_t receipt, str queue,
                          object group_id, object dedup_id, int priority,
                          object dead_letter, object owner):
    cdef Message message = Message.__new__(Message)
    message.id = id
    message.body = body
    message._encoded_attributes = encoded_attributes
    message.timestamp = timestamp
    message.receive_count = receive_count
    message.receipt = receipt
    message.queue = queue
    message.group_id = group_id
    message.dedup_id = dedup_id
    message.priority = priority
    message.dead_letter = dead_letter
    message._owner = owner
    return message
