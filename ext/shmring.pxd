# The shared-memory ring of local channels (shmring.pyx has the layout and the rules).
# It is a FrameSink (sinks.pxd): the delivery core writes a push straight into it through
# that interface (`claim_pair` a two-frame message whose second frame it fills in place,
# then `commit` — one writer only) without cimporting this file; `claim` takes room for
# `size` bytes (the record header included).
from cpython.ref cimport PyObject
from libc.stdint cimport uint32_t, uint64_t

from fastfanout._ext.blobs cimport BodySource
from fastfanout._ext.sinks cimport (
    FrameSink,
    FrameSource,
    SINK_FULL,
    SINK_PINNED,
    SINK_REFUSED,
    SINK_TOO_LARGE,
    SINK_WROTE,
    SINK_WROTE_WAKE,
)

cdef extern from "atomics.h" nogil:
    ctypedef uint64_t ff_atomic_u64

# Outcomes of writing (the Python constants FULL, WROTE, WROTE_WAKE, TOO_LARGE, PINNED): the
# sink's outcomes, since claim_pair and commit answer as a FrameSink.
cdef enum:
    RING_FULL = SINK_FULL
    RING_WROTE = SINK_WROTE
    RING_WROTE_WAKE = SINK_WROTE_WAKE
    RING_TOO_LARGE = SINK_TOO_LARGE
    RING_PINNED = SINK_PINNED
    RING_REFUSED = SINK_REFUSED

cdef class SharedRing(FrameSink):
    cdef char* base
    cdef char* data
    cdef uint64_t capacity_
    cdef uint64_t mask
    cdef uint64_t map_size
    cdef int fd
    cdef ff_atomic_u64* head
    cdef ff_atomic_u64* tail
    cdef ff_atomic_u64* writer_waiting
    cdef ff_atomic_u64* writer_watches
    cdef ff_atomic_u64* writer_wants_pins
    cdef ff_atomic_u64* reader_sleeping
    cdef ff_atomic_u64* reader_evacuates
    cdef bint reader_wake               # writer: a FULL found the reader to wake
    cdef readonly str path
    # reader side: frames held in place (``read(..., hold_min)``, see the module essay)
    cdef uint64_t read_pos              # where the next read starts (the tail, or past it)
    cdef bint reading                   # read_pos is set
    cdef uint64_t* held_start           # held records, oldest first (a circle of MAX_HELD)
    cdef uint64_t* held_end
    cdef PyObject** held_frame          # each record's RingFrame (borrowed; NULL: gone)
    cdef uint64_t held_first            # sequence number of the oldest held record
    cdef uint64_t held_count
    cdef readonly Py_ssize_t live_frames
    cdef public uint64_t max_held
    cdef readonly uint64_t hold_refusals
    cdef readonly uint64_t hold_detaches
    cdef bint wake_pending              # a release made room while the writer waited
    cdef bint evacuation_failed         # an anchor could not evacuate (no memory)
    cdef uint64_t pinned_wake_head      # the head when sleep last woke a writer pinned out
    cdef public object on_room          # called at such a release (else wake_pending)
    cdef bint close_pending             # closed while frames were live: unmap at the last
    cdef uint64_t ring_id_              # random, set at create (0: a view, or an old ring)
    # writer side: the frames records written here refer to (deliveries by reference),
    # each pinned until the reader's tail passes its record's end
    cdef uint64_t* pin_end
    cdef PyObject** pin_frame           # the RingFrame (a strong reference)
    cdef uint64_t pin_first
    cdef uint64_t pin_count
    cdef readonly uint64_t references_written
    cdef readonly uint64_t reference_refusals
    # reader side: the rings references read here point into, mapped read-only
    cdef dict origins                   # ring id -> SharedRing
    cdef readonly uint64_t references_read
    cdef readonly uint64_t origins_dropped
    cdef readonly uint64_t references_privatized
    # a retired origin mapping: the page ranges still mapped (pairs of start, end), or
    # NULL while it is mapped whole
    cdef size_t* kept_ranges
    cdef size_t kept_count
    cdef readonly uint64_t references_detached

    cdef void _unpin(self, uint64_t upto) noexcept
    cdef void _let_go_of_references(self) noexcept
    cdef int _write_control(self, uint32_t kind, uint32_t length, uint64_t value) except -2
    cdef void _let_go_of_every_reference(self) noexcept
    cdef void _unmap_around_frames(self, SharedRing origin, size_t page) noexcept
    cdef bint _let_go_of_reference(self, object held) noexcept
    cdef int _privatize(self, object held) noexcept
    cdef list _read_reference(self, const char* record, uint64_t tail, uint64_t length,
                              uint64_t hold_min)
    @staticmethod
    cdef SharedRing _view(str path)
    cdef SharedRing _origin(self, uint32_t pid, uint32_t fd, uint64_t ring_id)

    cdef bint _hold(self, uint64_t start, uint64_t end, uint64_t* seq) except -1
    cdef void _detach_oldest(self, uint64_t end, uint64_t span, bint anchored_only) noexcept
    cdef bint _move_tail(self) noexcept
    cdef bint _evacuable(self) noexcept
    cdef void _make_room(self) noexcept
    cdef uint64_t _reader_pos(self) noexcept
    cdef void _release(self, uint64_t seq) noexcept
    cdef void _frame_gone(self) noexcept

    cdef void _unmap(self) noexcept
    cdef int _check(self) except -1
    cdef int _room(self, uint64_t size) noexcept
    cdef uint64_t _pair_room(self, uint64_t first_len) noexcept
    cdef int _reserve(self, uint64_t size, uint64_t* at) except -2
    cdef int claim(self, uint64_t size, char** out, uint64_t* at) except -2
    cdef int claim_pair(self, bytes first, uint64_t second_len, char** second,
                        uint64_t* end) except -2
    cdef int claim_reference(self, bytes first, BodySource source, uint64_t* end) except -2
    cdef int commit(self, uint64_t end) noexcept


cdef class RingFrame(BodySource):
    cdef SharedRing ring
    cdef object keep                    # what maps ``data`` when not ``ring`` (a reference)
    cdef uint64_t seq
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t exports             # buffers exported and not released
    cdef bytes owned                    # the copy, once detached from the ring
    # BodySource's anchor: what refers into the frame without a buffer (blobs.pyx's
    # bodies left in place), or NULL; before detaching the frame the ring asks it to
    # copy out what it needs (``evacuate``: 0, or -1 when it cannot: it stays pinned).

    cdef int _detach(self) except -1
    cdef void _let_go(self) noexcept
    cdef void _leave_ring(self) noexcept
