"""The clocks the extensions read, as inline C (compiled into each module that cimports them).

One definition of each read: ``time.monotonic()`` in nanoseconds, microseconds and
seconds, with the POSIX names re-exported for the wall clock reads (``CLOCK_REALTIME``,
its coarse twin) that ``single.pyx`` makes.
"""

from libc.stdint cimport int64_t, uint64_t
from posix.time cimport (
    CLOCK_MONOTONIC,
    CLOCK_REALTIME,
    CLOCK_REALTIME_COARSE,
    clock_getres,
    clock_gettime,
    timespec,
)


cdef inline uint64_t monotonic_ns() noexcept nogil:
    """``time.monotonic()`` in nanoseconds (the same clock)."""
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <uint64_t>now.tv_sec * 1000000000 + <uint64_t>now.tv_nsec


cdef inline int64_t monotonic_us() noexcept nogil:
    """``time.monotonic()`` in microseconds."""
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <int64_t>now.tv_sec * 1000000 + now.tv_nsec // 1000


cdef inline double monotonic() noexcept nogil:
    """``time.monotonic()`` in seconds."""
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9
