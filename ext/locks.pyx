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
"""

cimport cython
from cpython.pythread cimport PyThread_type_lock
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
)

__all__ = ["FastRLock"]

cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident()
    long long PY_TIMEOUT_MAX
    int PY_LOCK_ACQUIRED
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


cdef int ff_lock_acquire(FastRLock lock) except -1:
    """Acquire ``lock``, waiting as long as it takes (the GIL held)."""
    if not _acquire(lock, -1):
        raise RuntimeError("a blocking acquire of a FastRLock failed")
    return 0


cdef int ff_lock_release(FastRLock lock) except -1:
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
