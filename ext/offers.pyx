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

A pipelined publish returns a future, and a per-message loop makes one per message: the
blocking client's ``PublishFuture`` is a small native object (a client, its batch's
``BatchAnswer`` and an index), made in C by the gate with no Python frame. The batch does
not list its futures: each refers to the batch's one ``BatchAnswer``, which gets the
request when the batch is sent (``bind_batch``: one store, whatever the batch's size) and
keeps the batch's results once read. The gate hands a future its caller dropped out
again (``NowaitGate._recycled_future``). The future's methods are those of
``concurrent.futures.Future`` (fastfanout.client.futures has the essay).
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.pythread cimport (
    NOWAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_get_thread_ident,
    PyThread_release_lock,
    PyThread_type_lock,
)
from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport PyObject, Py_REFCNT
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "pythread.h":
    int PY_LOCK_ACQUIRED
    int PyThread_acquire_lock_timed(PyThread_type_lock lock, long long microseconds,
                                    int intr_flag) nogil

cdef extern from "atomics.h" nogil:
    ctypedef uint64_t ff_atomic_u64          # C: _Atomic uint64_t; touch only via below
    uint64_t ff_load_seq_cst_u64(const ff_atomic_u64* position)
    void ff_store_seq_cst_u64(ff_atomic_u64* position, uint64_t value)
    uint64_t ff_exchange_u64(ff_atomic_u64* position, uint64_t value)

from fastfanout._ext.clocks cimport monotonic_ns as _now_ns

cdef extern from "Python.h":
    void PyObject_GC_Track(object op)
    void PyObject_GC_UnTrack(object op)
    int PyObject_GC_IsTracked(object op)
    const Py_ssize_t PY_SSIZE_T_MAX

from fastfanout._ext.locks cimport FastRLock, ff_lock_acquire, ff_lock_release
from fastfanout._ext.wire cimport FrameBuilder, check_body_size

import logging
from functools import partial

from fastfanout.errors import CallTimeout, FastFanoutError, blocking_misused
from fastfanout.settings import check_wait

__all__ = ["BatchAnswer", "FutureMaker", "LoopFutures", "NowaitGate", "OfferGate",
           "PendingBatch", "PublishFuture", "Ticker", "bind_batch"]

# ``publish_nowait(topic, body)`` straight from the caller's loop: a builtin function
# bound to the gate (METH_FASTCALL | METH_KEYWORDS). Two positional arguments and no
# keywords go to the gate's C path; anything else to its Python-level method of the
# same name (options, or the TypeError of a bad call). A ``def`` method with seven
# keyword-only defaults paid ~10 ns a call just to fill them in (reference counts of
# None), a quarter of the pipelined publish's own cost.
cdef extern from *:
    """
    typedef PyObject* (*ff_nowait_fn)(PyObject* gate, PyObject* name, PyObject* body,
                                      int send);
    static ff_nowait_fn ff_nowait_fast = NULL;

    static PyObject* ff_nowait_entry(PyObject* gate, PyObject* const* args,
                                     Py_ssize_t nargs, PyObject* kwnames, int send) {
        PyObject* method;
        PyObject* result;
        if (nargs == 2 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0))
            return ff_nowait_fast(gate, args[0], args[1], send);
        method = PyObject_GetAttrString(gate, send ? "send_nowait" : "publish_nowait");
        if (method == NULL)
            return NULL;
        result = PyObject_Vectorcall(method, args, (size_t)nargs, kwnames);
        Py_DECREF(method);
        return result;
    }
    static PyObject* ff_publish_nowait_entry(PyObject* gate, PyObject* const* args,
                                             Py_ssize_t nargs, PyObject* kwnames) {
        return ff_nowait_entry(gate, args, nargs, kwnames, 0);
    }
    static PyObject* ff_send_nowait_entry(PyObject* gate, PyObject* const* args,
                                          Py_ssize_t nargs, PyObject* kwnames) {
        return ff_nowait_entry(gate, args, nargs, kwnames, 1);
    }
    static PyMethodDef ff_publish_nowait_def = {
        "publish_nowait", (PyCFunction)(void(*)(void))ff_publish_nowait_entry,
        METH_FASTCALL | METH_KEYWORDS,
        "publish_nowait(topic, body, **options): a future of the publish (the gate's)."};
    static PyMethodDef ff_send_nowait_def = {
        "send_nowait", (PyCFunction)(void(*)(void))ff_send_nowait_entry,
        METH_FASTCALL | METH_KEYWORDS,
        "send_nowait(queue, body, **options): a future of the send (the gate's)."};
    static PyObject* ff_nowait_bound(PyObject* gate, int send) {
        return PyCFunction_NewEx(send ? &ff_send_nowait_def : &ff_publish_nowait_def,
                                 gate, NULL);
    }
    """
    ctypedef object (*ff_nowait_fn)(object gate, object name, object body, int send)
    ff_nowait_fn ff_nowait_fast
    object ff_nowait_bound(object gate, int send)


# The blocking client's futures log a failing done callback here (as before they were
# native: fastfanout.client.futures).
cdef object _log = logging.getLogger("fastfanout.client.futures")


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
        max_body: the largest body the broker can ever accept (bytes); a larger one is
            not appended: ``too_large(size)`` is called, and raises.
        max_frame: the most bytes a frame may hold (the broker's request limits, less
            room for the request's other frames); a body that would take a frame past
            it goes into the next one (the open frame is sent first, ``full``).
        too_large: called with the body's size when it is over ``max_body`` (raises).

    An asyncio producer's gate belongs to its event loop's thread (``home``): an offer
    from any other thread calls the loop's check, which raises, before anything is added.
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
    cdef public Py_ssize_t max_body
    cdef public Py_ssize_t max_frame
    cdef public object too_large
    cdef object _check_home          # (asyncio) raises WrongEventLoop; None: any thread
    cdef unsigned long _home_thread

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
        self.max_body = PY_SSIZE_T_MAX
        self.max_frame = PY_SSIZE_T_MAX
        self.too_large = None
        self._check_home = None
        self._home_thread = 0

    def home(self, check):
        """Tie the gate to this thread (its event loop's): ``check()`` on any other.

        ``check`` raises (``WrongEventLoop``) for a caller outside the owning loop; an
        offer from this thread costs one compare of thread ids. Until 2026-12-05 offers
        from another thread were added unchecked (racing the loop's own, their linger
        timer set from the wrong thread) until one filled the frame: its send was
        refused there, so the frame was kept and the loop's own next offer raised.
        """
        self._check_home = check
        self._home_thread = PyThread_get_thread_ident()

    def check_home(self):
        """Call the home check when called from another thread than the gate's."""
        if (self._check_home is not None
                and PyThread_get_thread_ident() != self._home_thread):
            self._check_home()

    def offer(self, body):
        """Add a message body to the frame (see ``RemoteProducer.offer``)."""
        cdef FrameBuilder builder = self._builder
        cdef uint32_t count = builder.out.count
        cdef size_t length = builder.out.length
        cdef Py_ssize_t body_bytes = builder.body_bytes
        if (self._check_home is not None
                and PyThread_get_thread_ident() != self._home_thread):
            self._check_home()
        if self.closed or len(self._kept):
            self._blocked()
            count, length, body_bytes = (builder.out.count, builder.out.length,
                                         builder.body_bytes)
        self._append(builder, body)
        if count and builder.out.length > <size_t>self.max_frame:
            # past the broker's request limit: the open frame leaves without it, and
            # the body opens the next one
            builder._rewind(count, length, body_bytes)
            self._full()
            self._append(builder, body)
        self.offered += 1
        if builder.out.count == 1:
            self._opened()
        if (builder.out.count >= <uint64_t>self._batch_messages
                or builder.out.length >= <size_t>self._batch_bytes):
            self._full()
        return self._result

    cdef int _append(self, FrameBuilder builder, object body) except -1:
        if type(body) is bytes:
            if PyBytes_GET_SIZE(body) > self.max_body:
                self.too_large(PyBytes_GET_SIZE(body))
            builder._append_bytes(<bytes>body)
        else:
            if self.max_body != PY_SSIZE_T_MAX:
                check_body_size(body, self.max_body, self.too_large)
            builder.append_body(body)   # any bytes-like body; InvalidArgument otherwise
        return 0


@cython.final
cdef class BatchAnswer:
    """What the blocking client's futures of one publish batch share: the request that
    carries the batch once it is sent, and the batch's results once read.

    A future is its batch's answer and its own index in it; the batch keeps no list of
    its futures, and sending it binds them all in one step (``bind_batch``). Callbacks
    added to a future while its batch is open wait here, with their future, until then.

    Attributes:
        request: the batch's request (``fastfanout.client.core.Request``); None while the
            batch is open.
        results: the batch's results (a list of one item: None until a future reads
            them), shared by its futures.
    """

    cdef readonly object request
    cdef list results
    cdef list _callbacks   # (future, callback) pairs added before the batch was sent

    def __cinit__(self):
        self.request = None
        self.results = [None]
        self._callbacks = None


@cython.final
cdef class PendingBatch:
    """A publish batch being filled (``ConnectionCore.batches``): records go into a
    native frame builder, and a future per record waits for the batch's one reply.

    Args:
        builder: an empty frame builder to fill (the core's last one, its memory grown
            to a batch already), or None for a new one.

    Attributes:
        builder: the frame being built (``FrameBuilder``).
        answer: what the blocking client's futures of its records share (``BatchAnswer``).
        futures: the asyncio client's futures of its records, in record order (the
            blocking client's refer to ``answer`` and are not listed).
        left: set by the core once the batch is no longer open (sent, or failed with its
            session): the gate appends to the batch it remembers only while this is
            False, with no look-up in ``ConnectionCore.batches``.
    """

    cdef readonly FrameBuilder builder
    cdef readonly BatchAnswer answer
    cdef readonly list futures
    cdef public bint left

    def __cinit__(self, FrameBuilder builder=None):
        self.builder = FrameBuilder() if builder is None else builder
        self.answer = BatchAnswer.__new__(BatchAnswer)
        self.futures = []
        self.left = False


@cython.final
cdef class NowaitGate:
    """``publish_nowait`` / ``send_nowait`` of a bare body, in C (both clients).

    The body joins the batch of its target (``ConnectionCore.enqueue``'s rules) and its
    future is returned. The common case — the target's batch is open — is one native
    call: the body appended in place, the future made, the batch sent when full.
    Opening a batch goes through the Python core as before.

    The common case reads no Python attribute: the gate remembers the batch it appended
    to (a ``PendingBatch``, whose ``left`` the core sets when it is sent or fails) and
    the blocking connection's lock. What else would end it is told with ``forget()``:
    the blocking driver calls it when its transport goes (a broken session, close) and
    in a forked child (a new lock). The asyncio client's gate (no connection) still
    checks the core's ``closed`` and ``forked`` on every call, and that the caller runs
    in the thread that made the gate (its event loop's): one compare of thread ids in
    C. A call from any other thread takes the look-up path, which calls ``check_loop``
    (``WrongEventLoop``), as does every call that opens a batch or changes target. A
    call from the loop's own thread that joins an open batch needs no more: the batch
    was opened (and checked) in this loop's iteration, and only one loop runs in a
    thread at a time.

    Args:
        core: the connection's ``ConnectionCore``.
        new_future: makes a publish's future from its batch and its index there (a
            ``FutureMaker`` or ``LoopFutures``: made from C).
        send_out: sends what the core queued.
        opened: called with no argument when no batch is open before this publish;
            returns the time (``ConnectionCore.enqueue``'s ``now``).
        connection: the blocking ``Connection`` (its ``lock`` is held for the call, and
            ``ensure`` is called when it has no transport), or None (asyncio).
        pace: called with no argument, after the lock is let go, by a call that sent a
            full batch (the blocking client waits there while too many batches are
            unanswered: ``Connection.pace``), or None.
        check_loop: (asyncio) raises ``WrongEventLoop`` unless called from the event
            loop that owns the connection; the gate's thread must be that loop's.
    """

    cdef object _core
    cdef object _new_future
    cdef object _future_client   # a FutureMaker's client: futures made here, in C
    cdef object _create_future   # a LoopFutures' loop.create_future: called directly
    cdef object _send_out
    cdef object _opened
    cdef object _connection
    cdef object _pace
    cdef bint _sent   # a call sent a full batch: ``pace`` is due once the lock is let go
    cdef object _publish_opcode
    cdef object _send_opcode
    cdef object _publish_options
    cdef object _send_options
    cdef uint64_t _batch_messages   # the core's limits (fixed when it is made)
    cdef size_t _batch_bytes
    # The batch the last call appended to, while it stays open (see ``_enqueue``): its
    # target (the caller's own opcode and name objects) and key.
    cdef object _opcode
    cdef object _name
    cdef object _key
    cdef PendingBatch _batch
    cdef Py_ssize_t _max_body   # the largest body the core lets through, read with it
    cdef Py_ssize_t _max_frame  # the most bytes a batch may hold (the request limits)
    # The blocking connection's lock once read (a ``FastRLock``; ``forget`` drops it).
    cdef FastRLock _lock
    # The last futures this gate made, a ring of FUTURE_RING: the one ``_next`` names is
    # made again for a new publish when the ring holds its only reference (see
    # ``_recycled_future``).
    cdef list _futures
    cdef Py_ssize_t _next
    # (asyncio) the owning loop's check, and its thread: any other thread is checked
    cdef object _check_loop
    cdef unsigned long _home_thread

    def __cinit__(self, object core, object new_future, object send_out, object opened,
                  object connection=None, object pace=None, object check_loop=None):
        self._core = core
        self._check_loop = check_loop
        self._home_thread = PyThread_get_thread_ident()
        self._futures = []
        self._next = 0
        self._pace = pace
        self._sent = False
        self._new_future = new_future
        self._future_client = (
            (<FutureMaker>new_future)._client if type(new_future) is FutureMaker else None)
        self._create_future = (
            (<LoopFutures>new_future)._create if type(new_future) is LoopFutures else None)
        self._send_out = send_out
        self._opened = opened
        self._connection = connection
        self._batch_messages = core.batch_messages
        self._batch_bytes = core.batch_bytes
        self._max_body = PY_SSIZE_T_MAX
        self._max_frame = PY_SSIZE_T_MAX

    def bind_face(self, publish_opcode, send_opcode, publish_options, send_options):
        """Let ``publish_nowait`` and ``send_nowait`` stand for a client's own.

        Args:
            publish_opcode: the PUBLISH opcode.
            send_opcode: the SEND opcode.
            publish_options: what ``publish_nowait`` with options calls (the client's
                Python method).
            send_options: the same for ``send_nowait``.
        """
        self._publish_opcode = publish_opcode
        self._send_opcode = send_opcode
        self._publish_options = publish_options
        self._send_options = send_options

    def publish_nowait(self, topic, body, *, attributes=None, delay=None, deliver_at=None,
                       group_id=None, dedup_id=None, priority=None, ttl=None):
        """A client's ``publish_nowait`` (after ``bind_face``): a bare body in one C
        call; with any option given, the client's Python method."""
        if (attributes is None and delay is None and deliver_at is None and group_id is None
                and dedup_id is None and priority is None and ttl is None):
            return self._locked(self._publish_opcode, topic, body)
        return self._publish_options(
            topic, body, attributes=attributes, delay=delay, deliver_at=deliver_at,
            group_id=group_id, dedup_id=dedup_id, priority=priority, ttl=ttl)

    def send_nowait(self, queue, body, *, attributes=None, delay=None, deliver_at=None,
                    group_id=None, dedup_id=None, priority=None, ttl=None):
        """A client's ``send_nowait`` (see ``publish_nowait``)."""
        if (attributes is None and delay is None and deliver_at is None and group_id is None
                and dedup_id is None and priority is None and ttl is None):
            return self._locked(self._send_opcode, queue, body)
        return self._send_options(
            queue, body, attributes=attributes, delay=delay, deliver_at=deliver_at,
            group_id=group_id, dedup_id=dedup_id, priority=priority, ttl=ttl)

    def calls(self):
        """``(publish_nowait, send_nowait)``: builtin functions bound to the gate, with the
        signatures of the methods above, that take a bare body to the C path with no
        argument parsing (what ``bind_face`` clients install as their own)."""
        return ff_nowait_bound(self, 0), ff_nowait_bound(self, 1)

    def enqueue(self, opcode, name, body):
        """Add ``body`` to the batch of (opcode, name); returns its future."""
        return self._locked(opcode, name, body)

    cdef object _locked(self, object opcode, object name, object body):
        cdef object connection
        cdef object future
        cdef object lock = None
        cdef FastRLock fast = self._lock
        if fast is None:
            connection = self._connection
            if connection is not None:
                lock = connection.lock   # a forked child makes a new one (``forget``)
                if type(lock) is FastRLock:
                    fast = self._lock = <FastRLock>lock
                    lock = None
        if fast is not None:
            if (fast._count == 0 and not fast._pending) or (
                    fast._count and fast._owner == PyThread_get_thread_ident()):
                ff_lock_acquire(fast)   # free, or this thread's: in C
            else:
                # another thread holds it — maybe a consumer's, waiting in ``recv`` for a
                # tenth of a second at a time: ``claim`` wakes it first (waiting for the
                # lock alone, each publish waited out such a wait)
                self._connection.claim()
            try:
                future = self._enqueue(opcode, name, body)
            finally:
                ff_lock_release(fast)
        elif lock is None:   # asyncio: no lock
            future = self._enqueue(opcode, name, body)
        else:
            lock.acquire()
            try:
                future = self._enqueue(opcode, name, body)
            finally:
                lock.release()
        if self._sent:   # a full batch left: wait here if too many are unanswered
            self._sent = False
            if self._pace is not None:
                self._pace()
        return future

    def forget(self):
        """Drop what the fast path remembers (the open batch, the connection's lock): the
        next call looks them up. Called when the connection's transport goes, when it is
        closed, and in a forked child."""
        self._batch = None
        self._key = self._opcode = self._name = None
        self._lock = None

    cdef object _enqueue(self, object opcode, object name, object body):
        cdef object core = self._core
        cdef object connection = self._connection
        cdef object batches
        cdef object key
        cdef PendingBatch batch = self._batch
        cdef FrameBuilder builder
        cdef object future
        cdef PyObject* found
        cdef uint32_t count
        cdef size_t length
        cdef Py_ssize_t body_bytes
        # The fast path: the same target as the last call (the caller's own objects), and
        # the batch that call appended to is still open (the core marks one that leaves)
        # — no attribute of the core or the connection read. Anything else (another
        # target, the batch sent or failed, ``forget``) takes the look-up below, which
        # remembers the batch again.
        if (batch is None or batch.left or name is not self._name
                or opcode is not self._opcode
                or (connection is None and (
                    core.forked or core.closed
                    or PyThread_get_thread_ident() != self._home_thread))):
            self._batch = None
            if core.forked or core.closed:
                core.check_open()   # raises
            if self._check_loop is not None:
                self._check_loop()   # asyncio: WrongEventLoop from a foreign thread or loop
            if connection is not None and connection.transport is None:
                connection.ensure()   # connects
            batches = core.batches
            key = (opcode, name)
            batch = None
            if type(name) is str:
                if type(batches) is dict:
                    found = PyDict_GetItem(batches, key)
                    if found != NULL:
                        batch = <PendingBatch?><object>found
                else:
                    batch = batches.get(key)
            if batch is None:   # a batch to open (or a bad name): the core's own path
                future = core.enqueue(opcode, name, body, None, self._new_future,
                                      self._opened() if not batches else 0.0)
                batches = core.batches
                if type(batches) is dict:
                    found = PyDict_GetItem(batches, key)
                    if found != NULL:   # still open: remember it
                        self._remember(opcode, name, key, <PendingBatch?><object>found)
                if core.outbox:   # a full batch
                    self._sent = True
                    self._send_out()
                return future
            self._remember(opcode, name, key, batch)
        builder = batch.builder
        count, length, body_bytes = builder.out.count, builder.out.length, builder.body_bytes
        if type(body) is bytes:
            if PyBytes_GET_SIZE(body) > self._max_body:
                core.body_too_large(PyBytes_GET_SIZE(body))
            builder._append_bytes(<bytes>body)
        else:
            check_body_size(body, self._max_body, core.body_too_large)
            builder.append_body(body)
        if count and builder.out.length > <size_t>self._max_frame:
            # past the broker's request limit: the batch leaves without it, and the body
            # opens the next one (the core's path)
            builder._rewind(count, length, body_bytes)
            key = self._key
            self._batch = None
            core.send_batch(key, core.batches.pop(key))
            if core.outbox:
                self._sent = True
                self._send_out()
            return self._enqueue(opcode, name, body)
        if self._future_client is not None:
            future = self._recycled_future(batch.answer, builder.out.count - 1)
        elif self._create_future is not None:
            future = self._create_future()
            batch.futures.append(future)
        else:
            future = self._new_future(batch, builder.out.count - 1)
        if (builder.out.count >= self._batch_messages
                or builder.out.length >= self._batch_bytes):
            key = self._key
            self._batch = None
            core.send_batch(key, core.batches.pop(key))
            if core.outbox:   # the full batch
                self._sent = True
                self._send_out()
        return future

    cdef PublishFuture _recycled_future(self, BatchAnswer answer, Py_ssize_t index):
        """A ``PublishFuture`` for the publish at ``index`` of the batch of ``answer``.

        A loop of ``publish_nowait`` drops each future at once (at its next call, when
        its variable takes the next one); making each one anew cost a free-list round
        trip per publish. The gate keeps the last FUTURE_RING futures it made, and hands
        out the oldest again when nothing else refers to it (its caller dropped it): it
        is reset as if new. One still referred to is left to its holders and replaced in
        the ring. The ring is small, so the future handed out again is still in the
        cache (a ring of thousands, when a batch listed its futures, missed it each time).
        """
        cdef list ring = self._futures
        cdef Py_ssize_t at
        cdef PublishFuture future
        if PyList_GET_SIZE(ring) < FUTURE_RING:
            future = _new_publish_future(self._future_client, answer, index)
            ring.append(future)
            return future
        at = self._next
        self._next = at + 1 if at + 1 < FUTURE_RING else 0
        if Py_REFCNT(<object>PyList_GET_ITEM(ring, at)) == 1:   # the ring's own only
            future = <PublishFuture>PyList_GET_ITEM(ring, at)
            future._index = index
            if future._answer is not answer:
                future._answer = answer
            if future._watched:   # it had callbacks (no call into the runtime to ask)
                future._watched = False
                PyObject_GC_UnTrack(future)
            return future
        future = _new_publish_future(self._future_client, answer, index)
        ring[at] = future   # the old one is its holders' alone now
        return future

    cdef int _remember(self, object opcode, object name, object key,
                       PendingBatch batch) except -1:
        self._opcode = opcode
        self._name = name
        self._key = key
        self._batch = batch
        self._max_body = self._core.max_body   # the broker's, told at its HELLO
        self._max_frame = self._core.frame_room
        return 0


cdef object _nowait_fast(object gate, object name, object body, int send):
    """The C path of the bound ``publish_nowait``/``send_nowait`` (``calls``)."""
    cdef NowaitGate self = <NowaitGate>gate
    return self._locked(self._send_opcode if send else self._publish_opcode, name, body)


ff_nowait_fast = _nowait_fast


cdef enum:
    FUTURE_RING = 8   # futures a nowait gate keeps to hand out again


cdef inline uint64_t _ns(double seconds) noexcept:
    return 0 if seconds <= 0 else <uint64_t>(seconds * 1e9)


@cython.final
cdef class Ticker:
    """Where the blocking client's background thread sleeps, without the GIL, until
    something is due.

    The thread used to wake every ``linger`` while publishes came in, and every
    ``REPLY_POLL`` while requests were in flight, each time taking the GIL (and often
    the connection's lock) from a caller that was sending full batches itself: a thread
    switch for nothing, twice, hundreds of times a second. Now it sleeps here until one
    of: the earliest *linger deadline* a caller set when it opened a batch or a frame
    (``due``); ``poll`` seconds after a caller last used the connection (``used``:
    sent a request, read replies), so a caller that keeps sending and reads its own
    replies keeps it asleep; its ``timeout`` (the heartbeat);
    or ``ring``. Checking and re-checking those is C on plain integers; the GIL is
    taken once something is due. A deadline earlier than the sleep posts the sleeper's
    bell: it wakes, sleeps again until that deadline, and still takes no GIL.

    A deadline names its *source* (a producer, the client's publish batches). A source
    opens a frame or batch only when its previous one has left, so the same source's
    next deadline replaces its last one: a caller that keeps filling frames moves the
    deadline ahead of the sleeper, which never wakes for them. Deadlines of different
    sources keep the earliest (and replace nothing until the sleeper looks again).

    Lost wake-ups: ``due`` stores the deadline then loads the time the sleeper sleeps
    until, and posts the bell if the deadline comes first; the sleeper stores that time
    then loads the deadline again. Both are sequentially consistent (atomics.h), so at
    least one side sees the other's store.

    Attributes:
        waits: ``wait`` calls that returned (each then takes the GIL).
        rings: of which ended by ``ring``.
        naps: sleeps within ``wait`` that ended with nothing due yet (no GIL taken).
    """

    cdef PyThread_type_lock _bell      # released to wake the sleeper, taken by ``wait``
    cdef ff_atomic_u64 _posted         # 1: the bell is released and not taken yet
    cdef ff_atomic_u64 _rung           # 1: ``ring`` asked ``wait`` to return
    cdef ff_atomic_u64 _due            # the earliest linger deadline (ns); 0: none
    cdef size_t _source                # whose deadline it is (an id; 0: several) (GIL)
    cdef ff_atomic_u64 _used           # when a caller last used the connection (ns)
    cdef ff_atomic_u64 _sleeping       # when the sleeper wakes at the latest (ns); 0: awake
    cdef readonly uint64_t waits
    cdef readonly uint64_t rings
    cdef readonly uint64_t naps

    def __cinit__(self):
        self._bell = PyThread_allocate_lock()
        if self._bell == NULL:
            raise MemoryError()
        PyThread_acquire_lock(self._bell, NOWAIT_LOCK)   # held: ``wait`` blocks on it
        ff_store_seq_cst_u64(&self._posted, 0)
        ff_store_seq_cst_u64(&self._rung, 0)
        self.waits = self.rings = self.naps = 0
        ff_store_seq_cst_u64(&self._due, 0)
        self._source = 0
        ff_store_seq_cst_u64(&self._used, 0)
        ff_store_seq_cst_u64(&self._sleeping, 0)

    def __dealloc__(self):
        if self._bell != NULL:
            PyThread_free_lock(self._bell)
            self._bell = NULL

    def due(self, double when, object source=None):
        """``source``'s open frame or batch must leave by ``when`` (``time.monotonic()``
        seconds): the sleeper wakes then, or now if it sleeps past it.

        Args:
            when: the deadline.
            source: what opened it (None: the client's publish batches); its earlier
                deadline, if it is the one kept, is replaced (its frame has left).
        """
        cdef uint64_t deadline = _ns(when)
        cdef uint64_t current = ff_load_seq_cst_u64(&self._due)
        cdef size_t who = 1 if source is None else <size_t><PyObject*>source
        cdef uint64_t sleeping
        if deadline == 0:
            deadline = 1
        if current == 0 or who == self._source:
            self._source = who
            ff_store_seq_cst_u64(&self._due, deadline)
        elif deadline < current:
            self._source = 0   # several sources: the earliest stands
            ff_store_seq_cst_u64(&self._due, deadline)
        else:
            self._source = 0
        sleeping = ff_load_seq_cst_u64(&self._sleeping)
        if sleeping != 0 and deadline < sleeping:
            self._post()

    cdef inline void _post(self) noexcept:
        if ff_exchange_u64(&self._posted, 1) == 0:
            PyThread_release_lock(self._bell)

    def take(self):
        """Forget the deadlines set so far (the sleeper looks at what is open and sets
        the next one itself); callers' later ``due`` calls stand."""
        self._source = 0
        ff_store_seq_cst_u64(&self._due, 0)

    def used(self):
        """The connection was used just now (a request sent, replies read): the reply
        poll starts over."""
        ff_store_seq_cst_u64(&self._used, _now_ns())

    def ring(self):
        """Make the sleeper's ``wait`` return now (or the next one at once)."""
        ff_store_seq_cst_u64(&self._rung, 1)
        self._post()

    def wait(self, double timeout, double poll=-1.0):
        """Sleep until a deadline (``due``) passes, ``timeout`` seconds pass, ``poll``
        seconds (if >= 0) pass after the later of now and the last ``used``, or a ring.

        Returns:
            True if rung.
        """
        cdef uint64_t start = _now_ns()
        cdef uint64_t end = start + _ns(timeout)
        cdef uint64_t poll_ns = _ns(poll)
        cdef bint polling = poll >= 0
        cdef uint64_t until
        cdef uint64_t value
        cdef uint64_t now
        cdef bint rung = False
        cdef uint64_t naps = 0
        with nogil:
            while True:
                until = end
                if polling:
                    value = ff_load_seq_cst_u64(&self._used)
                    value = (value if value > start else start) + poll_ns
                    if value < until:
                        until = value
                ff_store_seq_cst_u64(&self._sleeping, until)
                value = ff_load_seq_cst_u64(&self._due)
                if value != 0 and value < until:
                    until = value
                    ff_store_seq_cst_u64(&self._sleeping, until)
                now = _now_ns()
                if now >= until:
                    break
                if PyThread_acquire_lock_timed(
                        self._bell, <long long>((until - now) // 1000) + 1, 0) == PY_LOCK_ACQUIRED:
                    ff_store_seq_cst_u64(&self._posted, 0)
                    if ff_exchange_u64(&self._rung, 0):
                        rung = True
                        break
                naps += 1   # an earlier deadline posted the bell, or a deadline moved on
            ff_store_seq_cst_u64(&self._sleeping, 0)
        self.waits += 1
        self.naps += naps
        if rung:
            self.rings += 1
        return rung


cdef void _run_callback(object future, object callback):
    try:
        callback(future)
    except Exception:
        # as concurrent.futures does: a callback's failure is logged, not raised
        _log.exception("exception calling callback for %r", future)


def run_callback(future, callback):
    """Call ``callback(future)``, logging (not raising) what it raises."""
    _run_callback(future, callback)


def future_exception(future, timeout):
    """``exception(timeout)`` of both publish futures: wait as ``result`` does and return
    the publish's error, or None. ``CallTimeout`` and a bad ``timeout`` are raised: they
    are the caller's wait's, not the publish's."""
    check_wait("timeout", timeout)
    try:
        future.result(timeout)
    except CallTimeout:
        raise
    except FastFanoutError as error:
        return error
    return None


# A free list of 4,096 (at most 256 KiB kept): a future made from it does not count as a
# new object towards the cycle collector's next collection, where each one made past a
# free list of 512 did — with a batch of 2,000 in flight, a collection per batch, and
# now and then a full one (20-100 ns a publish). Batches up to 4,096 recycle theirs.
@cython.final
@cython.freelist(4096)
cdef class PublishFuture:
    """The eventual result of ``publish_nowait`` / ``send_nowait`` (blocking client).

    It offers the methods of ``concurrent.futures.Future``: ``result``, ``exception``,
    ``done``, ``add_done_callback``, ``running``, ``cancel`` and ``cancelled`` (a publish
    cannot be cancelled). It completes without further calls to the client: the
    client's background thread sends its batch after ``linger`` and reads the answer.

    Args:
        client: the blocking driver (``flush``, ``publish_results``, ``lock``).
        answer: what the futures of its batch share (``PendingBatch.answer``).
        index: the publish's position in its batch.
    """

    cdef object _client
    cdef BatchAnswer _answer
    cdef Py_ssize_t _index
    cdef bint _watched   # it got a callback: tracked by the cycle collector

    def __init__(self, client, BatchAnswer answer not None, Py_ssize_t index):
        self._client = client
        self._answer = answer
        self._index = index

    def result(self, timeout=None):
        """Wait for the broker's answer (flushing the batch if needed) and return it.

        Args:
            timeout: seconds to wait at most (default: the client's timeout, past which
                the connection counts as broken).

        Raises:
            InvalidArgument: ``timeout`` is not seconds (an int or float that is not NaN)
                or None; nothing is sent or waited for.
            CallTimeout: ``timeout`` passed unanswered; the future and the connection
                are left alone (it may still complete: wait again).
            FastFanoutError: the error of the whole batch this publish travelled in.
        """
        cdef BatchAnswer answer = self._answer
        if timeout is not None:
            check_wait("timeout", timeout)
        if answer.request is None:
            self._client.flush()
        if answer.request is None:
            raise AssertionError("a flushed publish has its request")
        results = answer.results[0]
        if results is None:
            results = answer.results[0] = self._client.publish_results(
                answer.request, timeout)
        return results[self._index]

    def exception(self, timeout=None):
        """Wait for the answer like ``result`` and return its error (None: it succeeded).

        Args:
            timeout: seconds to wait at most (default: the client's timeout, past which
                the connection counts as broken and ``BrokenConnection`` is returned).

        Raises:
            InvalidArgument: ``timeout`` is not seconds (an int or float that is not NaN)
                or None (raised, not returned: it is not the publish's error).
            CallTimeout: ``timeout`` passed unanswered (raised, as ``result``'s).
        """
        return future_exception(self, timeout)

    def done(self):
        """True once the broker answered (or the request failed)."""
        request = self._answer.request
        return request is not None and bool(request.done)

    def running(self):
        """True while the request is on its way or being answered."""
        request = self._answer.request
        return request is not None and not request.done

    def cancel(self):
        """Always False: a publish cannot be taken back (``concurrent.futures`` face)."""
        return False

    def cancelled(self):
        """Always False (see ``cancel``)."""
        return False

    def add_done_callback(self, callback):
        """Call ``callback(self)`` once the broker answered its batch (at once if it has).

        It runs in the thread that reads the answer (usually the client's background
        thread) with the client's lock held; an exception it raises is logged. Adding
        one does not send the batch early.
        """
        if not PyObject_GC_IsTracked(self):
            PyObject_GC_Track(self)   # callbacks may refer back to it: a cycle to collect
        self._watched = True
        cdef BatchAnswer answer = self._answer
        with self._client.held():   # wakes a thread waiting in recv with it
            if answer.request is None:   # still in its batch: bind_batch moves it
                if answer._callbacks is None:
                    answer._callbacks = []
                answer._callbacks.append((self, callback))
                return
            answer.request.watch(partial(run_callback, self, callback))

    def __await__(self):
        # (not in the stub: type checkers keep reporting the await themselves)
        raise blocking_misused(
            "a PublishFuture (what the blocking client's publish_nowait or send_nowait "
            "returns)", "awaited", "call its .result()")

    def __repr__(self):
        request = self._answer.request
        state = ("pending" if request is None
                 else "finished" if request.done else "running")
        return f"<PublishFuture #{self._index} {state}>"


cdef inline PublishFuture _new_publish_future(object client, BatchAnswer answer,
                                              Py_ssize_t index):
    cdef PublishFuture future = PublishFuture.__new__(PublishFuture)
    future._client = client
    future._answer = answer
    future._index = index
    # Not tracked by the cycle collector: a future refers to its client and its batch's
    # answer, neither of which refers back to it, unless it gets callbacks
    # (``add_done_callback`` tracks it then). Tracked, the thousands of futures of the
    # batches in flight made the collector run and walk them every 700 publishes.
    PyObject_GC_UnTrack(future)
    return future


@cython.final
cdef class FutureMaker:
    """``maker(batch, index)``: a ``PublishFuture`` of ``client`` for the record at
    ``index`` of ``batch`` (the blocking driver's ``make_future``); the gate makes them
    in C.

    Args:
        client: the blocking driver.
    """

    cdef object _client

    def __cinit__(self, object client):
        self._client = client

    def __call__(self, PendingBatch batch not None, Py_ssize_t index):
        return _new_publish_future(self._client, batch.answer, index)


@cython.final
cdef class LoopFutures:
    """``maker(batch, index)``: ``create_future()``, listed in ``batch.futures`` (the
    asyncio driver's ``make_future``: one future of the running loop per publish); the
    gate calls ``create_future`` directly.

    Args:
        create_future: the running loop's ``create_future``.
    """

    cdef object _create

    def __cinit__(self, object create_future):
        self._create = create_future

    def __call__(self, PendingBatch batch not None, Py_ssize_t index):
        future = self._create()
        batch.futures.append(future)
        return future


def bind_batch(PendingBatch batch not None, object request):
    """Tie the blocking client's futures of ``batch`` to the request that carries it
    (the batch was sent, or failed: ``request`` is then a failed one).

    One store for the whole batch; callbacks added while the batch was open move to the
    request (or run now if it is done already). Called with the connection's lock held.
    """
    cdef BatchAnswer answer = batch.answer
    cdef list callbacks = answer._callbacks
    answer.request = request
    answer._callbacks = None
    if callbacks is not None:
        for future, callback in callbacks:
            request.watch(partial(run_callback, future, callback))
