"""A reentrant lock for the broker and the blocking client, cheap when uncontended.

Design
------
Prior art: ``fastrlock`` (S. Behnel), whose algorithm this is.

``threading.RLock`` costs a clock read, an argument parse and a semaphore operation on
every ``acquire`` and another semaphore operation on every ``release`` — about a tenth of
a microsecond per call when nobody else wants the lock, which is most of what a
per-message ``Broker.publish`` or ``publish_nowait`` would spend on locking. ``FastRLock``
relies on the GIL instead: while no other thread wants it, acquiring is setting the owner
and a count (the GIL orders these steps between threads, and nothing here lets the GIL go
in between). Only when a second thread wants it does the real OS lock come in: that
thread takes the real lock on the owner's behalf (``_is_locked``), counts itself
pending, and blocks on the real lock without the GIL; the owner's last release lets the
real lock go, and the waiter wakes as the new owner. A free lock with pending waiters is
not taken by the fast path, so waiters are not overtaken forever.

It has ``threading.RLock``'s face — ``acquire(blocking=True, timeout=-1)``, ``release``,
the context manager — and the private methods ``threading.Condition`` uses
(``_is_owned``, ``_release_save``, ``_acquire_restore``), so a condition built on it
waits and notifies as on an ``RLock``. C callers (``single.pyx``, ``offers.pyx``) use
``ff_lock_acquire``/``ff_lock_release``. Not fork-safe by itself: a forked child makes a
new one, as with ``RLock``.

``FastCondition`` is ``threading.Condition`` over a ``FastRLock``, in C: the same
algorithm (each waiter blocks on a lock of its own, which a notify releases) without
the Python frames of ``wait`` and ``notify_all`` around it — ``Condition.wait`` alone is
a dozen Python lines, a new lock and a deque append per wait, and ``notify_all`` copies
its waiter deque whether or not anyone waits. Here a wait takes a waiter lock from a
small pool, and a notify with nobody waiting is one test (``ff_cond_notify_all``, inline
for C callers). A notified waiter leaves the waiting count at once, so a producer
calling notify per message rings a parked consumer once, not on every message until
the consumer runs again (under the GIL that may be thousands of messages later).
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.pythread cimport PyThread_type_lock
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
)

from fastfanout._ext.clocks cimport monotonic_us as _monotonic_us

__all__ = ["FastCondition", "FastRLock"]

cdef extern from "pythread.h":
    long long PY_TIMEOUT_MAX
    int PY_LOCK_ACQUIRED
    int PY_LOCK_INTR
    int PyThread_acquire_lock_timed(PyThread_type_lock lock, long long microseconds,
                                    int intr_flag) nogil


cdef bint _acquire_real(FastRLock lock, unsigned long me, long long timeout_us) except -1:
    """The slow path: another thread owns the lock, or threads wait for it.

    ``timeout_us``: -1 to wait for ever, 0 not to wait, else microseconds. Holds the GIL
    on entry and on return; lets it go only while blocked on the real lock.
    """
    cdef int got
    if not lock._is_locked and not lock._pending:
        # The owner took the lock by the fast path: take the real lock on its behalf
        # (it lets it go on its last release), before letting the GIL go.
        if PyThread_acquire_lock(lock._real_lock, NOWAIT_LOCK):
            lock._is_locked = True
    lock._pending += 1
    with nogil:
        if timeout_us < 0:
            got = PyThread_acquire_lock(lock._real_lock, WAIT_LOCK)
        elif timeout_us == 0:
            got = PyThread_acquire_lock(lock._real_lock, NOWAIT_LOCK)
        else:
            got = PyThread_acquire_lock_timed(lock._real_lock, timeout_us, 0) == PY_LOCK_ACQUIRED
    lock._pending -= 1
    if not got:
        return False
    lock._is_locked = True
    lock._owner = me
    lock._count = 1
    return True


cdef inline bint _acquire(FastRLock lock, long long timeout_us) except -1:
    cdef unsigned long me = PyThread_get_thread_ident()
    if lock._count:
        if lock._owner == me:
            lock._count += 1
            return True
    elif not lock._pending:
        lock._owner = me
        lock._count = 1
        return True
    return _acquire_real(lock, me, timeout_us)


cdef inline void _release(FastRLock lock) noexcept:
    lock._count -= 1
    if lock._count == 0 and lock._is_locked:
        PyThread_release_lock(lock._real_lock)
        lock._is_locked = False


cdef int ff_lock_acquire_any(FastRLock lock) except -1:
    """Acquire ``lock``, waiting as long as it takes (the GIL held)."""
    if not _acquire(lock, -1):
        raise RuntimeError("a blocking acquire of a FastRLock failed")
    return 0


cdef int ff_lock_release_any(FastRLock lock) except -1:
    """Release ``lock`` once (``RuntimeError`` unless this thread holds it)."""
    if lock._count == 0 or lock._owner != PyThread_get_thread_ident():
        raise RuntimeError("cannot release un-acquired lock")
    _release(lock)
    return 0


@cython.final
cdef class FastRLock:
    """A reentrant lock with ``threading.RLock``'s face, cheap when uncontended.

    ``acquire(blocking=True, timeout=-1)`` returns whether it was acquired; ``release``
    raises ``RuntimeError`` unless the calling thread holds it. Usable with
    ``threading.Condition``.
    """

    def __cinit__(self):
        self._real_lock = PyThread_allocate_lock()
        if self._real_lock == NULL:
            raise MemoryError()
        self._owner = 0
        self._count = 0
        self._pending = 0
        self._is_locked = False

    def __dealloc__(self):
        if self._real_lock != NULL:
            PyThread_free_lock(self._real_lock)
            self._real_lock = NULL

    def acquire(self, bint blocking=True, double timeout=-1):
        """Acquire the lock (again, if this thread holds it); True if acquired.

        Args:
            blocking: False: do not wait (``timeout`` must then be -1).
            timeout: seconds to wait at most; -1 waits for ever.
        """
        cdef long long timeout_us
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout_us = 0
        elif timeout == -1:
            timeout_us = -1
        elif timeout < 0:
            raise ValueError("timeout value must be a non-negative number")
        else:
            if timeout * 1e6 > <double>PY_TIMEOUT_MAX:
                raise OverflowError("timeout value is too large")
            timeout_us = <long long>(timeout * 1e6)
            if timeout_us == 0 and timeout > 0:
                timeout_us = 1
        return _acquire(self, timeout_us)

    def release(self):
        """Release the lock once (``RuntimeError`` unless this thread holds it)."""
        ff_lock_release(self)

    def __enter__(self):
        ff_lock_acquire(self)
        return True

    def __exit__(self, kind, value, traceback):
        ff_lock_release(self)
        return False

    def _is_owned(self):
        """True if the calling thread holds the lock (``threading.Condition``)."""
        return self._count > 0 and self._owner == PyThread_get_thread_ident()

    def held_here(self):
        """True if the calling thread holds the lock (public: ``_is_owned`` is the name
        ``threading.Condition`` looks for)."""
        return self._count > 0 and self._owner == PyThread_get_thread_ident()

    def _release_save(self):
        """Release the lock whatever its depth; the state to restore (a condition's
        ``wait``)."""
        cdef Py_ssize_t count = self._count
        cdef unsigned long owner = self._owner
        if count == 0 or owner != PyThread_get_thread_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._count = 1
        _release(self)
        return (count, owner)

    def _acquire_restore(self, state):
        """Acquire the lock again at the depth ``_release_save`` saved."""
        count, owner = state
        ff_lock_acquire(self)
        self._count = count
        self._owner = owner

    def __repr__(self):
        return (f"<FastRLock {'locked' if self._count else 'unlocked'} "
                f"owner={self._owner if self._count else 0} count={self._count}>")


cdef enum:
    POOLED_WAITER_LOCKS = 8   # waiter locks a condition keeps for its next waits


cdef int _grow(PyThread_type_lock** array, Py_ssize_t* capacity, Py_ssize_t needed) except -1:
    cdef Py_ssize_t size = capacity[0] * 2 if capacity[0] else 4
    cdef PyThread_type_lock* grown
    while size < needed:
        size *= 2
    grown = <PyThread_type_lock*>PyMem_Realloc(array[0], size * sizeof(PyThread_type_lock))
    if grown == NULL:
        raise MemoryError()
    array[0] = grown
    capacity[0] = size
    return 0


cdef void _notify(FastCondition cond, Py_ssize_t count) noexcept:
    """Release the ``count`` oldest waiters' locks (``count`` <= ``cond._count``)."""
    cdef Py_ssize_t index
    for index in range(count):
        PyThread_release_lock(cond._waiters[index])
    cond._count -= count
    for index in range(cond._count):
        cond._waiters[index] = cond._waiters[index + count]


cdef int _put_back(FastCondition cond, PyThread_type_lock waiter) noexcept:
    """A waiter lock (released) back into the pool, or freed when the pool is full."""
    if cond._pooled < POOLED_WAITER_LOCKS:
        cond._pool[cond._pooled] = waiter
        cond._pooled += 1
    else:
        PyThread_free_lock(waiter)
    return 0


cdef int ff_cond_wait(FastCondition cond, long long timeout_us) except -1:
    """Wait until notified or ``timeout_us`` passes (-1: no end); 1 if notified, else 0.

    The caller holds the condition's lock (at any depth): it is let go for the wait and
    taken again, at the same depth, before returning (even when a signal handler's
    exception ends the wait early).
    """
    cdef FastRLock lock = cond._lock
    cdef unsigned long me = PyThread_get_thread_ident()
    cdef PyThread_type_lock waiter
    cdef Py_ssize_t depth
    cdef Py_ssize_t index
    cdef long long deadline_us
    cdef long long left_us
    cdef int status = 0
    cdef bint notified = False
    if lock._count == 0 or lock._owner != me:
        raise RuntimeError("cannot wait on un-acquired lock")
    if cond._count == cond._capacity:
        _grow(&cond._waiters, &cond._capacity, cond._count + 1)
    if cond._pooled:
        cond._pooled -= 1
        waiter = cond._pool[cond._pooled]
    else:
        waiter = PyThread_allocate_lock()
        if waiter == NULL:
            raise MemoryError()
    PyThread_acquire_lock(waiter, NOWAIT_LOCK)   # a free lock: taken at once
    cond._waiters[cond._count] = waiter
    cond._count += 1
    cond.sleeping += 1
    cond.waits += 1
    depth = lock._count
    lock._count = 1
    _release(lock)
    deadline_us = _monotonic_us() + timeout_us if timeout_us > 0 else 0
    try:
        while True:
            left_us = timeout_us
            if timeout_us > 0:
                left_us = deadline_us - _monotonic_us()
                if left_us < 0:
                    left_us = 0
            with nogil:
                if left_us == 0:
                    status = PyThread_acquire_lock_timed(waiter, 0, 0)
                else:
                    status = PyThread_acquire_lock_timed(waiter, left_us, 1)
            if status != PY_LOCK_INTR:
                notified = status == PY_LOCK_ACQUIRED
                break
            PyErr_CheckSignals()   # a handler's exception ends the wait (finally below)
    finally:
        cond.sleeping -= 1
        ff_lock_acquire(lock)
        lock._count = depth
        lock._owner = me
        if notified:
            PyThread_release_lock(waiter)   # released by a notify, then taken by us
        else:
            for index in range(cond._count):
                if cond._waiters[index] == waiter:   # not notified: leave the list
                    cond._count -= 1
                    while index < cond._count:
                        cond._waiters[index] = cond._waiters[index + 1]
                        index += 1
                    PyThread_release_lock(waiter)   # ours since the wait began
                    break
            else:
                notified = True   # notified after the wait ended: released already
        _put_back(cond, waiter)
    return notified


cdef void ff_cond_notify(FastCondition cond, Py_ssize_t count) noexcept:
    """Wake up to ``count`` waiters, oldest first (the caller holds the lock)."""
    if count > cond._count:
        count = cond._count
    if count > 0:
        _notify(cond, count)


@cython.final
cdef class FastCondition:
    """``threading.Condition`` over a ``FastRLock``, waiting and notifying in C.

    The same face: a context manager over the lock, ``acquire``/``release``, ``wait``,
    ``wait_for``, ``notify`` and ``notify_all`` (each raising ``RuntimeError`` when the
    calling thread does not hold the lock). Waiters are woken oldest first.

    Args:
        lock: the lock the condition waits on (a ``FastRLock``).

    Attributes:
        waiting: waiters not notified yet (a notify takes those it wakes off at once).
        sleeping: threads inside ``wait`` now, notified or not (a gauge).
        waits: waits begun since the condition was made (how often callers parked).
    """

    def __cinit__(self, FastRLock lock not None):
        self._lock = lock
        self._waiters = NULL
        self._count = 0
        self._capacity = 0
        self._pooled = 0
        self.sleeping = 0
        self.waits = 0

    def __dealloc__(self):
        cdef Py_ssize_t index
        for index in range(self._pooled):
            PyThread_free_lock(self._pool[index])
        self._pooled = 0
        PyMem_Free(self._waiters)   # a condition waited on is alive: no waiter is left
        self._waiters = NULL

    cdef int _check_owned(self) except -1:
        if self._lock._count == 0 or self._lock._owner != PyThread_get_thread_ident():
            raise RuntimeError("cannot notify on un-acquired lock")
        return 0

    @property
    def waiting(self):
        """Waiters not notified yet."""
        return self._count

    def acquire(self, bint blocking=True, double timeout=-1):
        """The lock's ``acquire``."""
        return self._lock.acquire(blocking, timeout)

    def release(self):
        """The lock's ``release``."""
        ff_lock_release(self._lock)

    def __enter__(self):
        ff_lock_acquire(self._lock)
        return True

    def __exit__(self, kind, value, traceback):
        ff_lock_release(self._lock)
        return False

    def wait(self, timeout=None):
        """Let the lock go until notified or ``timeout`` seconds pass (None: no end).

        Returns:
            True if notified, False on timeout.
        """
        cdef long long timeout_us = -1
        cdef double seconds
        if timeout is not None:
            seconds = timeout
            if seconds <= 0:
                timeout_us = 0
            elif seconds * 1e6 >= <double>PY_TIMEOUT_MAX:
                raise OverflowError("timeout value is too large")
            else:
                timeout_us = <long long>(seconds * 1e6)
                if timeout_us == 0:
                    timeout_us = 1
        return bool(ff_cond_wait(self, timeout_us))

    def wait_for(self, predicate, timeout=None):
        """Wait until ``predicate()`` is true or ``timeout`` seconds pass; its last value."""
        cdef double end = 0.0
        cdef double left
        result = predicate()
        if timeout is not None:
            end = _monotonic_us() / 1e6 + timeout
        while not result:
            if timeout is not None:
                left = end - _monotonic_us() / 1e6
                if left <= 0:
                    break
                self.wait(left)
            else:
                self.wait()
            result = predicate()
        return result

    def notify(self, Py_ssize_t n=1):
        """Wake up to ``n`` waiters (the caller holds the lock)."""
        self._check_owned()
        ff_cond_notify(self, n)

    def notify_all(self):
        """Wake every waiter (the caller holds the lock)."""
        self._check_owned()
        ff_cond_notify(self, self._count)

    def __repr__(self):
        return f"<FastCondition({self._lock!r}, {self._count} waiting)>"
