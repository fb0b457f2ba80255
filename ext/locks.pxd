# A reentrant lock whose uncontended acquire and release are a few C statements, and a
# condition over it waiting and notifying in C (locks.pyx has the design). Other modules
# take and release the lock with ff_lock_acquire / ff_lock_release and wait and notify
# with ff_cond_wait / ff_cond_notify_all, holding the GIL.
from cpython.pythread cimport PyThread_type_lock


cdef class FastRLock:
    cdef PyThread_type_lock _real_lock
    cdef unsigned long _owner       # the owning thread's ident (valid while _count > 0)
    cdef Py_ssize_t _count          # recursion depth; 0: free
    cdef Py_ssize_t _pending        # threads waiting for the real lock
    cdef bint _is_locked            # the real lock is held (on behalf of the owner)


cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident() nogil


# The whole acquire and release (any case); the inline forms below do the uncontended
# cases in the caller's own code and call these for the rest.
cdef int ff_lock_acquire_any(FastRLock lock) except -1
cdef int ff_lock_release_any(FastRLock lock) except -1


cdef inline int ff_lock_acquire(FastRLock lock) except -1:
    """Acquire ``lock``, waiting as long as it takes (the GIL held)."""
    if lock._count == 0:
        if not lock._pending:
            lock._owner = PyThread_get_thread_ident()
            lock._count = 1
            return 0
    elif lock._owner == PyThread_get_thread_ident():
        lock._count += 1
        return 0
    return ff_lock_acquire_any(lock)


cdef inline int ff_lock_release(FastRLock lock) except -1:
    """Release ``lock`` once (``RuntimeError`` unless this thread holds it)."""
    if lock._count > 1 or (lock._count == 1 and not lock._is_locked):
        if lock._owner == PyThread_get_thread_ident():
            lock._count -= 1
            return 0
    return ff_lock_release_any(lock)


cdef class FastCondition:
    cdef FastRLock _lock
    cdef PyThread_type_lock* _waiters   # the waiters' locks not notified yet, oldest first
    cdef Py_ssize_t _count              # how many
    cdef Py_ssize_t _capacity
    cdef PyThread_type_lock _pool[8]    # released waiter locks for the next waits
    cdef Py_ssize_t _pooled
    cdef readonly Py_ssize_t sleeping   # threads inside a wait now
    cdef readonly unsigned long long waits   # waits begun (how often callers parked)
    cdef int _check_owned(self) except -1


# The caller holds the condition's lock and the GIL. ff_cond_wait returns 1 if notified,
# 0 when timeout_us (-1: none) passed; ff_cond_notify_all costs one test with no waiter.
cdef int ff_cond_wait(FastCondition cond, long long timeout_us) except -1
cdef void ff_cond_notify(FastCondition cond, Py_ssize_t count) noexcept


cdef inline void ff_cond_notify_all(FastCondition cond) noexcept:
    if cond._count:
        ff_cond_notify(cond, cond._count)
