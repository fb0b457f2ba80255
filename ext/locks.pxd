# A reentrant lock whose uncontended acquire and release are a few C statements
# (locks.pyx has the design). Other modules take and release it in C with
# ff_lock_acquire / ff_lock_release, holding the GIL.
from cpython.pythread cimport PyThread_type_lock


cdef class FastRLock:
    cdef PyThread_type_lock _real_lock
    cdef unsigned long _owner       # the owning thread's ident (valid while _count > 0)
    cdef Py_ssize_t _count          # recursion depth; 0: free
    cdef Py_ssize_t _pending        # threads waiting for the real lock
    cdef bint _is_locked            # the real lock is held (on behalf of the owner)


cdef int ff_lock_acquire(FastRLock lock) except -1
cdef int ff_lock_release(FastRLock lock) except -1
