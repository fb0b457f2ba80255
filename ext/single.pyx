"""The embedded broker's one-message calls in C: publish, send, receive and ack.

Design
------
``Broker.publish(topic, body)`` with nothing else given, ``Broker.send(queue, body)``,
``Broker.receive(queue)`` with its defaults and ``message.ack()`` of a received message
are what a per-message loop calls. In Python each went through half a dozen frames (the
open check, the entry, the batch of one, the lock's ``with``, the clock) around one
native call. ``SingleCalls`` does each in one C call: the broker's lock taken and
released through its C methods, the clock read and the store advanced in C, the native
publish or lease made, and the receivers waiting in ``receive`` woken only when there
are some. The broker makes one ``SingleCalls`` over its own parts and keeps its
``closed`` flag and waiter count current; every other form of these calls (options,
a durable broker, a debug build) takes the Python path.
"""

cimport cython
from libc.math cimport fabs, isfinite, nearbyint
from libc.stdint cimport int64_t, uint32_t

from fastfanout._ext.store cimport Store

from fastfanout._ext import receipts as _by_receipt
from fastfanout._ext.deliveries import receive as _receive
from fastfanout.errors import Closed, InvalidArgument

__all__ = ["SingleCalls"]


@cython.final
cdef class SingleCalls:
    """One-message publish, send, receive and ack of an embedded broker, in C.

    Args:
        owner: what received messages settle through (the broker: nack, extend, term).
        lock: the broker's lock (a ``threading.RLock``).
        arrivals: the broker's condition that receivers waiting for messages wait on.
        store: the broker's store.
        dispatcher: the broker's dispatcher.
        topics: topic name -> id (the broker's own dict).
        queues: queue name -> id.
        queue_names: queue id -> name.
        visibility_us: queue id -> default lease, microseconds.
        clock: the broker's clock (seconds).
        topic_id: the broker's lookup that raises the right error for a bad topic name.
        queue_id: the same for a queue name.

    Attributes:
        closed: set by the broker's ``close()``.
        waiters: receivers waiting in ``receive`` (the broker counts them here too).
    """

    cdef object _owner
    cdef object _acquire
    cdef object _release
    cdef object _arrivals
    cdef Store _store
    cdef object _publish
    cdef object _send
    cdef dict _topics
    cdef dict _queues
    cdef dict _queue_names
    cdef dict _visibility_us
    cdef object _clock
    cdef object _topic_id
    cdef object _queue_id
    cdef public bint closed
    cdef public Py_ssize_t waiters

    def __cinit__(self, object owner, object lock, object arrivals, Store store not None,
                  object dispatcher, dict topics, dict queues, dict queue_names,
                  dict visibility_us, object clock, object topic_id, object queue_id):
        self._owner = owner
        self._acquire = lock.acquire
        self._release = lock.release
        self._arrivals = arrivals
        self._store = store
        self._publish = dispatcher.publish
        self._send = dispatcher.send
        self._topics = topics
        self._queues = queues
        self._queue_names = queue_names
        self._visibility_us = visibility_us
        self._clock = clock
        self._topic_id = topic_id
        self._queue_id = queue_id
        self.closed = False
        self.waiters = 0

    cdef int64_t _now_us(self) except? -1:
        """Read the clock (seconds, rounded half to even to µs) and apply what is due."""
        cdef object now
        cdef double seconds
        cdef int64_t now_us
        if self.closed:
            raise Closed("the broker is closed")
        now = self._clock()
        if type(now) is not float and type(now) is not int:
            raise InvalidArgument(f"the clock returned {now!r}; it must return finite seconds")
        seconds = now
        if not isfinite(seconds) or fabs(seconds) > 9.2e12:
            raise InvalidArgument(f"the clock returned {now!r}; it must return finite seconds")
        now_us = <int64_t>nearbyint(seconds * 1e6)
        self._store.advance_to(now_us)
        return now_us

    cdef inline object _wake(self):
        if self.waiters:
            self._arrivals.notify_all()
        return None

    cdef object _one(self, bint to_topic, object name, object body):
        """One bare message to a topic (``to_topic``) or a queue: its PublishResult."""
        cdef object target_id
        cdef int64_t now_us
        if self.closed:
            raise Closed("the broker is closed")
        names = self._topics if to_topic else self._queues
        self._acquire()
        try:
            now_us = self._now_us()
            target_id = names.get(name) if type(name) is str else None
            if target_id is None:   # raises the right error
                target_id = self._topic_id(name) if to_topic else self._queue_id(name)
            if to_topic:
                batch = self._publish(target_id, [body], now_us)
            else:
                batch = self._send(target_id, [body], now_us)
            self._wake()
        finally:
            self._release()
        return batch[0]

    def publish(self, topic, body):
        """``Broker.publish(topic, body)``: one message, no options; its PublishResult."""
        return self._one(True, topic, body)

    def send(self, queue, body):
        """``Broker.send(queue, body)``: one message, no options; its PublishResult."""
        return self._one(False, queue, body)

    def receive(self, queue):
        """``Broker.receive(queue)`` with its defaults: a list of at most one Message.

        Its messages settle through this object (``ack`` in C; the rest the broker's).
        """
        cdef object queue_id
        cdef int64_t now_us
        if self.closed:
            raise Closed("the broker is closed")
        self._acquire()
        try:
            now_us = self._now_us()
            queue_id = self._queues.get(queue) if type(queue) is str else None
            if queue_id is None:
                queue_id = self._queue_id(queue)
            return _receive(self._store, <uint32_t>queue_id, 1,
                            self._visibility_us[queue_id], now_us, self, 0)
        finally:
            self._release()

    def ack(self, receipt, *, session=0):
        """``Broker.ack(receipt)``: delete the message of a delivery (``StaleReceipt``)."""
        self._acquire()
        try:
            self._now_us()
            _by_receipt.ack(self._store, receipt, session)
            self._wake()   # a consumer out of credit may take more now
        finally:
            self._release()

    def nack(self, receipt, *, delay=None):
        """``Broker.nack``."""
        return self._owner.nack(receipt, delay=delay)

    def extend(self, receipt, seconds):
        """``Broker.extend``."""
        return self._owner.extend(receipt, seconds)

    def term(self, receipt):
        """``Broker.term``."""
        return self._owner.term(receipt)
