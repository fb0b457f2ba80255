# The sink interface: where the native delivery path writes a push in place, whatever the
# transport behind it (sinks.pyx has the contract). A transport's writer subclasses
# FrameSink and overrides both methods; the delivery core cimports only this file.
from libc.stdint cimport uint64_t

from fastfanout._ext.blobs cimport BodySource

# Outcomes of a claim or a commit (a subclass's Python constants may name them too).
cdef enum:
    SINK_FULL = 0           # no room now: nothing claimed
    SINK_WROTE = 1          # claimed (fill it, then commit) / committed
    SINK_WROTE_WAKE = 2     # committed; the reader may sleep: ring its bell
    SINK_TOO_LARGE = -1     # can never fit: nothing claimed
    SINK_PINNED = -3        # no room, and none will come while the reader waits: the
                            # room there is, frames it still uses pin; nothing claimed
    SINK_REFUSED = -4       # claim_reference: not by reference (write a copy instead)

cdef class FrameSink:
    cdef bint takes_references          # claim_reference may succeed (else: never try)
    cdef int claim_pair(self, bytes first, uint64_t second_len, char** second,
                        uint64_t* end) except -2
    cdef int claim_reference(self, bytes first, BodySource source, uint64_t* end) except -2
    cdef int commit(self, uint64_t end) noexcept


# A frame that writes itself where it goes (a publish frame encoded from an array batch):
# the ring writes it in place instead of copying a bytes frame built first. Anything else
# reads it as a buffer (built then, once). sinks.pyx has the contract.
cdef class FrameSource:
    cdef readonly Py_ssize_t nbytes
    cdef void write_into(self, char* out) noexcept
