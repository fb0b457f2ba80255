"""The embedded broker's one-message calls in C: publish, send, receive and ack.

Design
------
``Broker.publish(topic, body)`` with nothing else given, ``Broker.send(queue, body)``,
``Broker.receive(queue)`` of one message (waiting or not), ``Broker.ack(receipt)`` and
``message.ack()`` of a received message are what a per-message loop calls. In Python
each went through half a dozen frames (the open check, the entry, the batch of one, the
lock's ``with``, the clock) around one native call. ``SingleCalls`` does each in one C
call: the broker's lock taken and released through its C methods, the clock read and
the store advanced in C, the native publish or lease made, and the receivers waiting in
``receive`` woken only when there are some. The broker makes one ``SingleCalls`` over
its own parts and keeps its ``closed`` flag current; every other form of these calls
(options, a durable broker, a debug build) takes the Python path.

``publish``, ``send``, ``receive`` and ``ack`` take the broker's whole signature, so
that the broker's own methods are these (instance attributes over the class's Python
methods): a per-message ``broker.publish(topic, body)`` is then one C call from the
caller's loop, with no Python frame. A bare publish makes no Python object but its
``PublishResult`` (``Dispatcher.publish_one``: a batch of one with no list and no
``PublishBatch``; the result tuple filled in C); the clock, when it is ``time.time``,
is read in C.

Receiving one message makes its ``Message`` (from a free list) straight from the leased
entry (``deliveries.receive_one``) and a list of it, nothing else; its ``ack()`` comes
back here in C (``Settler.ack_receipt``). A receive that finds nothing and may wait
parks on the broker's arrivals condition, a ``FastCondition`` (``locks.pyx``): the
wait, the notify of every publish path and the lock handed back and forth are C, and a
publish wakes a parked receiver once (a notify takes it off the waiting count at once),
then runs on with nobody to wake. Under the GIL two threads mostly take turns by the
interpreter's switch interval, so a consumer thread keeping up with a producer thread
mostly finds messages without waiting (``Broker.receiver_parks`` counts the parks).
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.math cimport fabs, isfinite, nearbyint
from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastfanout._ext.batches cimport publish_result
from fastfanout._ext.deliveries cimport receive_one
from fastfanout._ext.fanout cimport Dispatcher
from fastfanout._ext.locks cimport (
    FastCondition,
    FastRLock,
    ff_cond_notify_all,
    ff_cond_wait,
    ff_lock_acquire,
    ff_lock_release,
)
from fastfanout._ext.message cimport Message, Settler
from fastfanout._ext.store cimport ANY_SESSION, NIL, Store

import time as _time

from fastfanout.errors import Closed, InvalidArgument, NotFound
from fastfanout.settings import MAX_WAIT

from fastfanout._ext.clocks cimport (
    CLOCK_REALTIME,
    CLOCK_REALTIME_COARSE,
    clock_getres,
    clock_gettime,
    monotonic_us as _monotonic_us,
    timespec,
)

cdef object _system_time = _time.time
cdef double _MAX_WAIT = MAX_WAIT


cdef int64_t _coarse_margin_us() noexcept:
    """Two ticks of the coarse clock, microseconds: how far it may lag the system clock
    (with a tick's slack); -1 when it has no sound resolution (then it is not used)."""
    cdef timespec spec
    if clock_getres(CLOCK_REALTIME_COARSE, &spec) != 0 or spec.tv_sec != 0:
        return -1
    return 2 * ((spec.tv_nsec + 999) // 1000)


__all__ = ["SingleCalls"]


@cython.final
cdef class SingleCalls(Settler):
    """One-message publish, send, receive and ack of an embedded broker, in C.

    Args:
        owner: what received messages settle through (the broker: nack, extend, term).
        lock: the broker's lock (a ``FastRLock``, or a ``threading.RLock``).
        arrivals: the broker's condition that receivers waiting for messages wait on (a
            ``FastCondition`` of ``lock``).
        store: the broker's store.
        dispatcher: the broker's dispatcher.
        topics: topic name -> id (the broker's own dict).
        queues: queue name -> id.
        queue_names: queue id -> name.
        clock: the broker's clock (seconds).
        topic_id: the broker's lookup that raises the right error for a bad topic name.
        queue_id: the same for a queue name.
        publish_options: what ``publish`` with options calls (the broker's Python
            path); default ``owner.publish``. A broker whose instance ``publish`` is this
            object's passes its class's method.
        send_options: the same for ``send``.
        receive_options: the same for ``receive`` (any other form than one message of
            the queue's lease for owner 0).
        ack_options: the same for ``ack`` (a session other than 0).
        settles: the messages received here settle through this object (their ``ack()``
            in C); False: through ``owner`` (a broker whose class has an ``ack`` of its
            own keeps it in charge).

    Attributes:
        closed: set by the broker's ``close()``.
    """

    cdef object _owner
    cdef FastRLock _fast_lock     # the broker's lock when it is a FastRLock (in C), or
    cdef object _acquire          # its acquire and release methods
    cdef object _release
    cdef FastCondition _arrivals
    cdef Store _store
    cdef Dispatcher _dispatcher
    cdef bint _system_clock
    cdef dict _topics
    cdef dict _queues
    cdef dict _queue_names
    cdef object _clock
    cdef object _topic_id
    cdef object _queue_id
    cdef object _options_publish
    cdef object _options_send
    cdef object _options_receive
    cdef object _options_ack
    cdef object _settler             # what received messages settle through
    cdef int64_t _coarse_margin_us   # see _apply_due; -1: no coarse clock
    cdef public bint closed

    def __cinit__(self, object owner, object lock, FastCondition arrivals not None,
                  Store store not None, Dispatcher dispatcher not None, dict topics,
                  dict queues, dict queue_names, object clock,
                  object topic_id, object queue_id, object publish_options=None,
                  object send_options=None, object receive_options=None,
                  object ack_options=None, bint settles=True):
        self._owner = owner
        self._fast_lock = lock if type(lock) is FastRLock else None
        self._acquire = lock.acquire
        self._release = lock.release
        self._arrivals = arrivals
        self._store = store
        self._dispatcher = dispatcher
        self._topics = topics
        self._queues = queues
        self._queue_names = queue_names
        self._clock = clock
        self._system_clock = clock is _system_time
        self._topic_id = topic_id
        self._queue_id = queue_id
        self._options_publish = (publish_options if publish_options is not None
                                 else owner.publish)
        self._options_send = send_options if send_options is not None else owner.send
        self._options_receive = (receive_options if receive_options is not None
                                 else owner.receive)
        self._options_ack = ack_options if ack_options is not None else owner.ack
        self._settler = self if settles else owner
        self._coarse_margin_us = _coarse_margin_us()
        self.closed = False

    cdef int64_t _now_us(self) except? -1:
        """Read the clock (seconds, rounded half to even to µs) and apply what is due."""
        cdef object now
        cdef double seconds
        cdef timespec spec
        cdef int64_t ns
        cdef int64_t now_us
        if self.closed:
            raise Closed("the broker is closed")
        if self._system_clock:
            # time.time() without the call: the same clock read, made seconds as CPython
            # makes them (_PyTime_AsSecondsDouble), so the same microsecond comes out.
            clock_gettime(CLOCK_REALTIME, &spec)
            ns = <int64_t>spec.tv_sec * 1000000000 + spec.tv_nsec
            if ns % 1000000000 == 0:
                seconds = <double>(ns // 1000000000)
            else:
                seconds = <double>ns / 1e9
            now_us = <int64_t>nearbyint(seconds * 1e6)
            self._store.advance_to(now_us)
            return now_us
        now = self._clock()
        if type(now) is not float and type(now) is not int:
            raise InvalidArgument(f"the clock returned {now!r}; it must return finite seconds")
        seconds = now
        if not isfinite(seconds) or fabs(seconds) > 9.2e12:
            raise InvalidArgument(f"the clock returned {now!r}; it must return finite seconds")
        now_us = <int64_t>nearbyint(seconds * 1e6)
        self._store.advance_to(now_us)
        return now_us

    cdef int _apply_due(self) except -1:
        """What an ack needs of the clock: everything due by now applied (``Closed``
        once closed), with no clock read when nothing can be due yet.

        An ack uses no time of its own, only what is due by now (a lease that ended
        makes its receipt stale). Reading the system clock costs tens of nanoseconds on
        some machines, a third of a per-message send, receive and ack; the coarse clock
        (the same time as of the last kernel tick, a few ns) says when the earliest due
        time (``Store.due_floor_us``) is more than two ticks away, and then nothing is
        due. Another clock than ``time.time`` is always read.
        """
        cdef timespec spec
        if self._system_clock and self._coarse_margin_us >= 0:
            if self.closed:
                raise Closed("the broker is closed")
            clock_gettime(CLOCK_REALTIME_COARSE, &spec)
            if (<int64_t>spec.tv_sec * 1000000 + spec.tv_nsec // 1000 + self._coarse_margin_us
                    < self._store.due_floor_us()):
                return 0
        self._now_us()
        return 0

    cdef inline int _lock(self) except -1:
        if self._fast_lock is not None:
            return ff_lock_acquire(self._fast_lock)
        self._acquire()
        return 0

    cdef inline int _unlock(self) except -1:
        if self._fast_lock is not None:
            return ff_lock_release(self._fast_lock)
        self._release()
        return 0

    cdef inline void _wake(self) noexcept:
        ff_cond_notify_all(self._arrivals)   # one test when nobody waits

    cdef object _one(self, bint to_topic, object name, object body):
        """One bare message to a topic (``to_topic``) or a queue: its PublishResult.

        No Python object is made but the result: the dispatcher's one-message path
        (``Dispatcher.publish_one``) takes the body and writes the id and copy count.
        """
        cdef object target_id
        cdef PyObject* found
        cdef int64_t now_us
        cdef uint64_t message_id = 0
        cdef uint32_t deliveries = 0
        cdef unsigned char duplicate = 0
        if self.closed:
            raise Closed("the broker is closed")
        self._lock()
        try:
            now_us = self._now_us()
            found = NULL
            if type(name) is str:
                found = PyDict_GetItem(self._topics if to_topic else self._queues, name)
            if found != NULL:
                target_id = <object>found
            else:   # raises the right error
                target_id = self._topic_id(name) if to_topic else self._queue_id(name)
            if to_topic:
                self._dispatcher.publish_one(<uint32_t>target_id, 0, body, now_us,
                                             &message_id, &deliveries, &duplicate)
            else:
                self._dispatcher.publish_one(-1, <uint32_t>target_id, body, now_us,
                                             &message_id, &deliveries, &duplicate)
            self._wake()
        finally:
            self._unlock()
        return publish_result(message_id, deliveries, duplicate)

    def publish(self, topic, body, *, attributes=None, delay=None, deliver_at=None,
                group_id=None, dedup_id=None, priority=None, ttl=None):
        """``Broker.publish``: a bare message in one C call; with any option given, the
        broker's Python path (``publish_options``); its PublishResult."""
        if (attributes is None and delay is None and deliver_at is None and group_id is None
                and dedup_id is None and priority is None and ttl is None):
            return self._one(True, topic, body)
        return self._options_publish(
            topic, body, attributes=attributes, delay=delay, deliver_at=deliver_at,
            group_id=group_id, dedup_id=dedup_id, priority=priority, ttl=ttl)

    def send(self, queue, body, *, attributes=None, delay=None, deliver_at=None,
             group_id=None, dedup_id=None, priority=None, ttl=None):
        """``Broker.send``: as ``publish``, to one queue."""
        if (attributes is None and delay is None and deliver_at is None and group_id is None
                and dedup_id is None and priority is None and ttl is None):
            return self._one(False, queue, body)
        return self._options_send(
            queue, body, attributes=attributes, delay=delay, deliver_at=deliver_at,
            group_id=group_id, dedup_id=dedup_id, priority=priority, ttl=ttl)

    def receive(self, queue, *, max_messages=1, wait=0.0, visibility_timeout=None,
                owner=0):
        """``Broker.receive``: one message with the queue's lease, waiting up to ``wait``
        seconds, in C; any other form the broker's Python path (``receive_options``).

        Returns:
            A list of at most one Message, which settles through this object (``ack`` in
            C; the rest the broker's).
        """
        cdef double seconds
        if (type(max_messages) is not int or max_messages != 1 or visibility_timeout is not None
                or type(owner) is not int or owner != 0):
            return self._options_receive(queue, max_messages=max_messages, wait=wait,
                                         visibility_timeout=visibility_timeout, owner=owner)
        if type(wait) is float or (type(wait) is int and -1 <= wait <= _MAX_WAIT):
            seconds = wait
            if 0.0 <= seconds <= _MAX_WAIT:   # not NaN either
                return self._receive_one(queue, <int64_t>nearbyint(seconds * 1e6))
        return self._options_receive(queue, max_messages=max_messages, wait=wait,
                                     visibility_timeout=visibility_timeout, owner=owner)

    cdef list _receive_one(self, object queue, int64_t wait_us):
        """One message of ``queue`` for owner 0, waiting up to ``wait_us`` for one."""
        cdef object queue_id
        cdef uint32_t qid
        cdef int64_t now_us
        cdef int64_t lease_us
        cdef int64_t deadline_us
        cdef int64_t left_us
        cdef object next_due
        cdef Message message
        cdef list received
        if self.closed:
            raise Closed("the broker is closed")
        self._lock()
        try:
            now_us = self._now_us()
            queue_id = self._queues.get(queue) if type(queue) is str else None
            if queue_id is None:
                queue_id = self._queue_id(queue)   # raises the right error
            qid = <uint32_t>queue_id
            lease_us = self._store.queue(qid).visibility_us   # the queue's default lease
            message = receive_one(self._store, qid, lease_us, now_us, self._settler)
            if message is None and wait_us:
                deadline_us = _monotonic_us() + wait_us
                while message is None:
                    left_us = deadline_us - _monotonic_us()
                    if left_us <= 0:
                        break
                    next_due = self._store.next_due_us()
                    if next_due is not None:
                        # wake at the due time itself (a 20 µs floor keeps it from spinning)
                        left_us = min(left_us, max(<int64_t>next_due - now_us, 20))
                    ff_cond_wait(self._arrivals, left_us)
                    now_us = self._now_us()   # Closed once the broker closed
                    if self._queues.get(queue) != queue_id:
                        raise NotFound(f"queue {queue!r} was deleted while waiting")
                    message = receive_one(self._store, qid, lease_us, now_us, self._settler)
        finally:
            self._unlock()
        if message is None:
            return []
        received = [message]
        return received

    cdef int ack_receipt(self, uint64_t receipt) except -1:
        """``message.ack()`` of a message received here: ``ack(receipt)`` in C."""
        cdef uint32_t slot
        if self.closed:
            raise Closed("the broker is closed")
        self._lock()
        try:
            self._apply_due()
            slot = self._store._lease_slot(receipt, ANY_SESSION)
            if slot == NIL:
                self._store._require_lease(receipt, ANY_SESSION)   # raises StaleReceipt
            self._store._ack_slot(slot)
            self._wake()   # a consumer out of credit may take more now
        finally:
            self._unlock()
        return 0

    def ack(self, receipt, *, session=0):
        """``Broker.ack``: delete the message of a delivery (``StaleReceipt``); with a
        session other than 0, the broker's Python path (``ack_options``)."""
        if (type(session) is int and session == 0 and type(receipt) is int
                and 0 <= receipt <= 0xFFFFFFFFFFFFFFFF):
            self.ack_receipt(receipt)
            return None
        return self._options_ack(receipt, session=session)

    def nack(self, receipt, *, delay=None):
        """``Broker.nack``."""
        return self._owner.nack(receipt, delay=delay)

    def extend(self, receipt, seconds):
        """``Broker.extend``."""
        return self._owner.extend(receipt, seconds)

    def term(self, receipt):
        """``Broker.term``."""
        return self._owner.term(receipt)

    def reply(self, address, body, *, attributes=None):
        """The broker's ``reply`` (a received message's ``reply()``)."""
        return self._owner.reply(address, body, attributes=attributes)
