"""A ring of whole messages in a file two processes map: the local transport's channel.

Design
------
The broker and a client on the same host can skip the sockets for their messages: each
direction is one single-writer/single-reader ring in a shared file (``mmap``), and a
message is copied once into it and once out of it. Prior art: Aeron's IPC log buffers
and the ring buffers of Chronicle Queue; the positions follow the same single-writer
rules as ``ring.pyx`` (atomics.h argues them), but the layout holds no pointer, so the
ring means the same in both address spaces.

Layout of the file (little-endian, every offset fixed)::

    0    magic u64 = b"FFSHMR01"
    8    version u32 = 1, header size u32 = 256
    16   capacity u64: bytes of the data area, a power of two
    24   ring id u64: random, non-zero (what a reference to this ring names)
    64   head u64: bytes ever written (the writer's position)
    72   writer_waiting u64: 1 while the writer waits for room
    80   writer_watches u64: 1 while the writer waits for the tail to pass its references
    88   writer_wants_pins u64: 1 while the writer asks the reader to let go of what it
         reads by reference (a producer waits for the room those frames pin)
    128  tail u64: bytes ever read (the reader's position)
    136  reader_sleeping u64: 1 while the reader may sleep on an empty ring
    144  reader_evacuates u64: 1 while it sleeps holding frames it evacuates on demand
    256  data area, ``capacity`` bytes

A message is one 8-aligned record: ``u32 frames, u32 length`` (the bytes after this
8-byte header), ``frames`` u32 frame lengths padded to 8, then the frames back to back,
padded to 8. A record never wraps: when it does not fit before the end of the data
area, the writer fills the rest with a *wrap* record (``frames = 0xFFFFFFFF``) and
starts again at offset 0. A *marker* record (``frames = 0xFFFFFFFE``) tells the reader
that the next message of this direction travels over the socket instead (it is larger
than half the ring, ``max_message``, which is what always fits once the ring drains);
the reader takes that socket message before it reads on. A *count* record (``frames =
0xFFFFFFFC``, then a u64) says how many messages the writer has sent over the socket
*unannounced* so far, all of them before the records that follow: the reader reads on
only once it has taken that many (below, "Unannounced"). A *reference* record
(``frames = 0xFFFFFFFD``) carries a message whose last frame lies in another ring (below,
"Deliveries by reference").

Waking. Nobody spins: a reader that finds its ring empty announces that it will sleep
(``sleep()``: ``reader_sleeping = 1``, then it looks once more) and waits on its bell, a
FIFO the transport polls; a writer that publishes a message clears the flag and, if it
was set, rings the bell (``write`` returns ``WROTE_WAKE``). A writer that finds no room
sets ``writer_waiting`` and the reader, having made room, clears it and rings the
writer's bell (``read`` says so). Both handshakes are Dekker's pattern and use seq_cst
operations (atomics.h), so a wake-up is never lost; a spurious one costs a poll.

Holding frames in place (the reader's side, ``read(max_messages, hold_min)``). A
message's last frame of ``hold_min`` bytes or more may be returned as a ``RingFrame``
instead of a bytes copy:
a read-only buffer that views the frame where it lies in the ring. Its record then stays
*held*: the shared ``tail`` (what the writer may reuse) does not pass the oldest held
record while the reader's own position moves on, and the record is released when its
last ``RingFrame`` is deallocated (every view of it gone: a numpy array made from it
keeps it). A release of the oldest held record moves the tail on; when the writer was
waiting for room, ``on_room`` is called then (the channel rings the writer's bell), or
without one the next ``read`` (or ``sleep``, which then returns False) reports it so the
reader rings. The bound: a frame is held only while the span it pins (from the
oldest held record to the end of this one) stays within ``max_held`` bytes (default half
the ring) and fewer than ``MAX_HELD`` records are held; otherwise it is copied
as before and ``hold_refusals`` counts it. Other records read after a held one are
pinned too (the tail cannot pass the held one): when the pinned span passes half the
ring, ``read`` copies the oldest held frames out of the ring (``detach``: the object
stays, its bytes move to the heap) as long as no buffer views them, and
``hold_detaches`` counts them.

Evacuation on demand. A frame that the broker's blobs keep bodies in (a ``BodySource``
with an anchor, blobs.pyx's "Bodies left in place") can be let go at any time without
a copy of it: its anchor first *evacuates* it (the live bodies are copied out, each on
its own). That copy is what leaving the bodies in place saves, so it is made only when
the room is wanted: while the oldest held frame has an anchor, the frames held do not
count against ``max_held`` and nothing is evacuated as the reader reads on; when the
writer waits for room (``writer_waiting``), the read evacuates the oldest such frames
until half the ring is free — or all of them when half is free already, for what the
writer waits to write did not fit around the wrap. A reader about to sleep with such a
frame oldest says so (``reader_evacuates``, stored before ``reader_sleeping``); a writer
that then finds no room does not go around the ring (``PINNED``) but rings the reader
(``take_reader_wake``) and waits as for ``FULL``; ``pending`` is true while the writer
waits for room such frames pin, so the woken reader reads and evacuates, and the tail
it moves rings the writer back. An evacuation that fails (no memory) leaves its frame
counted as pinned until a held record is released. (Until 2026-12-06 frames were
evacuated as soon as the held span passed half the ring: in the numpy pipeline of
bench/e2e_numpy.py, half of the rows were copied twice.) A frame still viewed (a live
numpy array or memoryview of it) cannot move: kept for good, it leaves the ring full
behind it once the writer has filled it, and from then on every message goes around the
ring (``PINNED``, below), so views of held frames are for the work at hand (see
docs/arrays.md). ``close`` with frames still live unmaps at the last one's release.

Pinned out. A reader that keeps the view of its last frame while it waits for the next
(``table = batch.as_array(...)`` in a loop) pins at most ``max_held``, yet the writer's
next record may find no room: a record never straddles the end of the ring, so half the
ring free in two pieces can be too little. No read will free that room, only the owner
dropping its view — a deadlock if the writer waited. So the writer looks at
``reader_sleeping`` when it finds no room: a reader asleep has read every record, and
the write answers ``PINNED`` (send it over the socket after a marker, as a message too
large). The reader's side closes the race: ``sleep`` with frames held and the writer
waiting returns False once for that writer's head, and the next ``read`` says to ring
it, so it tries again and finds the reader asleep. Both use seq_cst operations on the
two flags (Dekker's pattern again): one of them sees the other's.

Unannounced. A writer pinned out that finds no room even for the marker's 8 bytes (the
reader holds frames for good and the room left went to markers) would wait for ever —
until 2026-12-07 its session ended. Nothing is unread then (``PINNED``: the reader
sleeps with every record read), so nothing in the ring can be overtaken: the message
goes over the socket with no marker (``write_marker`` answers ``PINNED``, not ``FULL``),
and before its next record the writer writes a count record (``write_count``) of every
message it has sent so. A reader that meets a count larger than the socket messages it
has taken unannounced stops the ring there until they have come (the channel keeps the
tally, fastfanout.transport.local_channel). Only a client's ring is written so (the
broker reads its socket at all times; a client reads its socket only after a marker).

Deliveries by reference. A push of the broker to a consumer may be exactly one publish
frame of another local client, read in place from that client's ring (its bodies left
there: blobs.pyx), each record a first delivery to one queue: the broker then rewrites
the records' headers where they lie (id, receipt, receive count, flags: the bodies do not
move) and writes into the consumer's ring a small reference record instead of a copy
(``claim_reference``, a ``FrameSink`` call)::

    0   u32 0xFFFFFFFD, u32 length (the bytes after these 8)
    8   u32 first frame's length, u32 pid of the broker
    16  u32 descriptor of the origin ring in the broker, u32 0
    24  u64 the origin ring's id
    32  u64 offset of the frame in the origin ring's data area, u64 its length
    48  the first frame (the push header), padded to 8

The reader maps the origin ring read-only the first time it meets its id
(``/proc/PID/fd/N``, checked as any ring, and its id compared), keeps at most
``MAX_ORIGINS`` such mappings, the most recently used (``origins_dropped`` counts the
ones let go for a new one), and returns for the record ``[first, frame]``, the frame a
``RingFrame`` viewing the origin ring: held as any frame read in place (the reference
record stays in this ring while the frame or a view of it lives; ``detach`` copies the
referenced bytes). The writer *pins* the origin frame (an export of it: its ring neither
evacuates nor reuses it) until this ring's tail passes the reference record's end; it
looks at the tail at each claim and on ``unpin()``, and ``watch_pins()`` (before the
writer's process sleeps) announces ``writer_watches`` so that the reader's next move of
its tail rings the writer, which then unpins (a flag of its own: ``writer_waiting`` would
tell a reader about to sleep with frames held that the writer waits for room they pin). ``close`` on the writer's side lets every pin go.
Pins given back on demand. A producer whose ring has no room because the oldest frame
the broker holds there is pinned, or whose pinned room passes a quarter of its ring
(``waits_on_pins``, the broker reading that ring: at half, the broker copies its frames
out rather than hold them, and their pushes are copies), gets the broker to ask every
consumer pinning more than a few frames for them: ``ask_for_pins`` sets
``writer_wants_pins`` in the consumer's ring and the broker rings its bell. The
consumer's next ``read`` (its ``sleep`` first returns False) lets go of the frames it
holds by reference, oldest first, all but the newest ``KEPT_WHEN_ASKED`` records it holds
(``_let_go_of_references``): copied out as a detached
frame when nothing views it, else *privatized* — its pages in this process's mapping of
the origin ring are replaced by private copies of the same bytes (``mmap``, then
``mremap`` over them: a view reads the same memory, never a hole), and the origin mapping
is retired (the next reference maps the ring anew: the copied pages at the frame's edges
may hold bytes of frames the writer has not written yet). Its record is released, the
tail moves on, the writer unpins the frame and the producer's ring has its room again.
So a consumer that keeps views of its batches for good (collecting arrays, say) costs a
copy of them when the room is wanted, not its producer's ring (counted:
``references_privatized``, ``references_detached``). A copy made only then: a pipeline
whose consumer drops its views in time copies nothing. Until 2026-12-07 such a view pinned
the producer's frame for good, and its writer went around its ring (``PINNED``, then
unannounced) for as long, the reason the setting was off by default. A frame of this ring
itself (a push copied in) kept viewed keeps the tail still, and so the pins of every
reference after it; and a consumer that does not call into its client meanwhile gives
nothing back until it does (its producer then goes around its ring). ``close`` on the
reader's side lets go of every frame it holds by reference the same way, wherever it
lies (``_let_go_of_every_reference``): a consumer's arrays outlive its connection as its
own copies, and the broker may drop its ring whenever it likes (until 2026-12-07 the
ring lingered, and one dropped past ``MAX_LINGERING`` let the producer write under the
arrays). A retired mapping keeps mapped only the pages of the frames held in it
(``_unmap_around_frames``): kept whole, a consumer keeping its arrays mapped each
producer's ring again at each ask (4-5 times the memory it kept).
Counted: ``references_written`` and ``reference_refusals`` (writer), ``references_read``
and ``origins_dropped`` (reader). What it saves: the broker's copy of every body of the
push (a third of its time a 1 KiB row in the numpy pipeline: docs/benchmarks.md,
2026-12-07).

Opening. ``create`` makes the ring in an anonymous memory file (``memfd_create``): it
has no name in any file system, so nothing of a channel is left behind by a process that
dies, and it lives exactly as long as a mapping or a descriptor of it. Its pages are
reserved at once (``posix_fallocate``), so a shortage is an ``OSError`` there rather than
a ``SIGBUS`` at a later write, and it is then *sealed* against shrinking and growing
(``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``): a mapped page can never vanish under a
process that maps it, whatever the other side (or any process that can reach the file)
does — truncating a mapped file is what would kill its mapper with ``SIGBUS``.
``SharedRing(path)`` maps an existing one (the broker opens ``/proc/PID/fd/N`` of the
client's descriptor) after checking that it is a regular file of this user, sealed
against shrinking, whose header is intact and agrees with its size, so a stray or
hostile file gives ``ValueError`` instead of a crash. The mapping is the same plain
shared mapping as of any file: sealing costs the ring nothing per message. Both sides
map it whole at once (``MAP_POPULATE``): otherwise the first pass through a fresh ring
stops at a page fault on every page in each process (a thousand and more for 4 MiB,
a write fault each on the writer's side), the slow start of every short run.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_WRITABLE
from cpython.ref cimport PyObject, Py_REFCNT
from libc.stdint cimport UINT64_MAX, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from posix.fcntl cimport O_NONBLOCK, O_RDONLY, O_RDWR, open as c_open
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap

cdef extern from "<sys/mman.h>":
    int MAP_POPULATE
    int MAP_PRIVATE
    int MAP_ANONYMOUS
    int MREMAP_MAYMOVE
    int MREMAP_FIXED
    int mprotect(void* address, size_t length, int protection)
    void* mremap(void* old_address, size_t old_size, size_t new_size, int flags, ...)
cdef extern from "<unistd.h>":
    long sysconf(int name)
    int _SC_PAGESIZE
from posix.stat cimport S_ISREG, fstat, struct_stat
from posix.unistd cimport close as c_close, geteuid, getpid
from cpython.ref cimport Py_DECREF, Py_INCREF

from fastfanout._ext.codec cimport ff_align8, ff_load_le32, ff_store_le32

import fcntl
import os

cdef extern from "atomics.h" nogil:
    uint64_t ff_load_acquire_u64(const ff_atomic_u64* position)
    void ff_store_release_u64(ff_atomic_u64* position, uint64_t value)
    uint64_t ff_load_relaxed_u64(const ff_atomic_u64* position)
    uint64_t ff_load_seq_cst_u64(const ff_atomic_u64* position)
    void ff_store_seq_cst_u64(ff_atomic_u64* position, uint64_t value)
    uint64_t ff_exchange_u64(ff_atomic_u64* position, uint64_t value)

cdef extern from "<fcntl.h>":
    enum: O_CLOEXEC
    enum: O_NOCTTY

cdef enum:
    HEADER_SIZE = 256
    OFF_CAPACITY = 16
    OFF_RING_ID = 24
    OFF_HEAD = 64
    OFF_WRITER_WAITING = 72
    OFF_WRITER_WATCHES = 80
    OFF_WRITER_WANTS_PINS = 88
    OFF_TAIL = 128
    OFF_READER_SLEEPING = 136
    OFF_READER_EVACUATES = 144
    RECORD_HEADER = 8
    REFERENCE_FIXED = 40   # a reference record's fields after its header

cdef extern from *:
    """
    #define FF_SHM_WRAP ((uint32_t)0xFFFFFFFFu)
    #define FF_SHM_MARKER ((uint32_t)0xFFFFFFFEu)
    #define FF_SHM_REFERENCE ((uint32_t)0xFFFFFFFDu)
    #define FF_SHM_COUNT ((uint32_t)0xFFFFFFFCu)
    #define FF_SHM_MAGIC ((uint64_t)0x3130524d48534646ull)
    """
    const uint32_t FF_SHM_WRAP
    const uint32_t FF_SHM_MARKER
    const uint32_t FF_SHM_REFERENCE
    const uint32_t FF_SHM_COUNT
    const uint64_t FF_SHM_MAGIC

VERSION = 1
MIN_CAPACITY = 1 << 16
MAX_CAPACITY = 1 << 30
MAX_FRAMES = 1 << 16
"""Most frames one message may have (a record's frame table is bounded)."""
MAX_HELD = 4096
"""Most records a reader holds in place at once (``read``'s ``hold_min``)."""
cdef uint64_t C_MAX_HELD = 4096
MAX_PINS = 4096
"""Most frames a writer pins at once for references it wrote (more: a copy is written)."""
cdef uint64_t C_MAX_PINS = 4096
MAX_ORIGINS = 16
"""Most other rings a reader keeps mapped for the references it reads (one more unmaps
the least recently used, once no frame of it lives)."""
KEPT_WHEN_ASKED = 2
"""Held records a reader keeps in place when the writer asks for its pins: the newest,
what its user most likely works on (the older frames read by reference go)."""
cdef uint64_t C_KEPT_WHEN_ASKED = 2


FULL = RING_FULL
"""``write``: no room now; ``writer_waiting`` is set, the reader will ring."""
WROTE = RING_WROTE
"""``write``: written; the reader is awake."""
WROTE_WAKE = RING_WROTE_WAKE
"""``write``: written; the reader may sleep: ring its bell."""
TOO_LARGE = RING_TOO_LARGE
"""``write``: larger than ``max_message``: send it over the socket after a marker."""
PINNED = RING_PINNED
"""``write``: no room, and the reader has read everything and sleeps: the room is pinned
by frames it holds in place and still uses, and no read will free it. Send the message
over the socket after a marker, as ``TOO_LARGE`` (waiting could wait forever)."""
REFUSED = RING_REFUSED
"""``claim_reference``: not by reference (write a copy); nothing was claimed."""
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
"""The seals ``create`` puts on a ring: its size can never change again."""


cdef class SharedRing:
    """One direction of a local channel, mapped from ``path`` (see the module essay).

    ``SharedRing(path)`` maps an existing ring (a sealed memory file, e.g. the
    ``/proc/PID/fd/N`` of another process's ring); ``SharedRing.create(capacity)`` makes
    one. Exactly one process writes and one reads.

    Raises (``SharedRing(path)``):
        OSError: ``path`` cannot be opened or mapped.
        ValueError: it is not a ring of this user, or not sealed against shrinking.
    """

    def __cinit__(self):
        self.base = NULL
        self.fd = -1
        self.held_start = NULL
        self.held_end = NULL
        self.held_frame = NULL
        self.pin_end = NULL
        self.pin_frame = NULL
        self.kept_ranges = NULL
        self.kept_count = 0
        self.pinned_wake_head = UINT64_MAX

    def __init__(self, str path):
        cdef bytes encoded = os.fsencode(path)
        self.path = path
        # no O_NOFOLLOW: the broker opens the magic link /proc/PID/fd/N; what it leads
        # to is checked on the descriptor (a sealed regular file of this user)
        self.fd = c_open(encoded, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0)
        if self.fd < 0:
            raise OSError(_errno(), f"cannot open the shared ring {path}")
        _map_ring(self, 0, True)

    @staticmethod
    def create(uint64_t capacity, str name="fastfanout-ring"):
        """An empty ring of ``capacity`` bytes in a new sealed anonymous memory file.

        Args:
            capacity: bytes of the data area, a power of two from ``MIN_CAPACITY`` to
                ``MAX_CAPACITY``.
            name: the file's name in ``/proc/PID/fd`` listings (it has none elsewhere).

        Raises:
            ValueError: a bad ``capacity``.
            OSError: no memory file, or no memory for its pages.
        """
        if capacity < MIN_CAPACITY or capacity > MAX_CAPACITY or capacity & (capacity - 1):
            raise ValueError(f"ring capacity {capacity} must be a power of two from "
                             f"{MIN_CAPACITY} to {MAX_CAPACITY}")
        cdef SharedRing ring = SharedRing.__new__(SharedRing)
        ring.path = f"memfd:{name}"
        ring.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(ring.fd, HEADER_SIZE + capacity)
            # Reserve the pages now: short of memory this fails here (ENOSPC/ENOMEM)
            # instead of killing a process with SIGBUS at its first write to a page.
            os.posix_fallocate(ring.fd, 0, HEADER_SIZE + capacity)
            fcntl.fcntl(ring.fd, fcntl.F_ADD_SEALS, SEALS)
        except OSError:
            ring._unmap()
            raise
        _map_ring(ring, capacity, True)
        return ring

    @staticmethod
    cdef SharedRing _view(str path):
        """Another ring mapped read-only (the origin of references), its descriptor closed."""
        cdef SharedRing ring = SharedRing.__new__(SharedRing)
        ring.path = path
        ring.fd = c_open(os.fsencode(path), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0)
        if ring.fd < 0:
            raise OSError(_errno(), f"cannot open the shared ring {path}")
        _map_ring(ring, 0, False)
        c_close(ring.fd)
        ring.fd = -1
        return ring

    @property
    def ring_id(self):
        """The ring's id (random, fixed at create): what a reference to it names."""
        return self.ring_id_

    @property
    def takes_references(self):
        """Whether pushes may be written here by reference (``claim_reference``; False
        until set: the broker sets it on a consumer's ring)."""
        return self.takes_references

    @takes_references.setter
    def takes_references(self, bint value):
        self.takes_references = value

    @property
    def pins(self):
        """Frames pinned now for references written here and not yet read past."""
        return self.pin_count

    def unpin(self):
        """Let go of the frames whose reference records the reader has read past (its
        tail); returns how many stay pinned."""
        if self.pin_count and self.base != NULL:
            self._unpin(ff_load_acquire_u64(self.tail))
        return self.pin_count

    def watch_pins(self):
        """Before the writer's process sleeps: with frames pinned, announce
        ``writer_watches`` so that the reader rings when its tail moves. False when it
        has moved past a pin already (``unpin`` now instead of sleeping)."""
        if not self.pin_count or self.base == NULL:
            return True
        ff_store_seq_cst_u64(self.writer_watches, 1)
        return self.pin_end[self.pin_first % C_MAX_PINS] > ff_load_seq_cst_u64(self.tail)

    cdef void _unpin(self, uint64_t upto) noexcept:
        """Let go of the pins whose records end at ``upto`` or before (oldest first)."""
        cdef uint64_t slot
        cdef PyObject* frame
        while self.pin_count and self.pin_end[self.pin_first % C_MAX_PINS] <= upto:
            slot = self.pin_first % C_MAX_PINS
            frame = self.pin_frame[slot]
            self.pin_frame[slot] = NULL
            self.pin_first += 1
            self.pin_count -= 1
            (<RingFrame>frame).exports -= 1
            # may release the frame's record in its own ring (which then rings its writer)
            Py_DECREF(<object>frame)

    def fileno(self):
        """The ring's descriptor (the client names it in ATTACH; -1 once closed)."""
        return self.fd

    def __dealloc__(self):
        self._unpin(UINT64_MAX)
        self._unmap()
        free(self.pin_end)
        free(self.pin_frame)
        free(self.held_start)
        free(self.held_end)
        free(self.held_frame)

    cdef void _unmap(self) noexcept:
        cdef size_t index
        if self.base != NULL:
            if self.kept_ranges != NULL:
                # a retired mapping: only what is left of it (the holes may hold other
                # mappings of this process by now: a bug hunt saw them unmapped, and a
                # crash, until 2026-12-07)
                for index in range(self.kept_count):
                    munmap(<void*>self.kept_ranges[2 * index],
                           self.kept_ranges[2 * index + 1] - self.kept_ranges[2 * index])
                free(self.kept_ranges)
                self.kept_ranges = NULL
                self.kept_count = 0
            else:
                munmap(self.base, self.map_size)
            self.base = NULL
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1

    def close(self):
        """Unmap the ring (either side; the other keeps its own mapping).

        With ``RingFrame``s still live (held frames someone still views), the mapping
        stays until the last of them is gone; the ring is closed for any other use.
        Frames kept only by bodies left in place (blobs.pyx) are evacuated first: their
        live bodies move out, so a client gone does not leave its whole ring mapped
        for as long as its messages wait in a queue (until 2026-12-07 a 900 KB body of
        a client that had ended kept its 4 MiB ring).
        """
        self._unpin(UINT64_MAX)   # the reader reads no more references of this side
        if self.references_read and self.held_count and self.base != NULL \
                and not self.close_pending:
            self._let_go_of_every_reference()
        if self.live_frames > 0 and self.base != NULL and not self.close_pending \
                and self.held_count:
            self._detach_oldest(UINT64_MAX, 0, True)
        if self.live_frames > 0:
            self.close_pending = True
            return
        self._unmap()

    cdef int _check(self) except -1:
        if self.base == NULL or self.close_pending:
            raise ValueError("the shared ring is closed")
        return 0

    @property
    def capacity(self):
        """Bytes of the data area."""
        return self.capacity_

    @property
    def max_message(self):
        """Largest record that ``write`` accepts (half the ring, headers included)."""
        return self.capacity_ // 2

    @property
    def closed(self):
        """True after ``close``."""
        return self.base == NULL or self.close_pending

    @property
    def held(self):
        """Records held in place now (``read``'s ``hold_min``)."""
        return self.held_count

    @property
    def held_bytes(self):
        """Bytes of the ring the reader pins now: from the oldest held record on."""
        if self.held_count == 0:
            return 0
        return self.read_pos - self.held_start[self.held_first % C_MAX_HELD]

    @property
    def used(self):
        """Bytes written and not yet read (records, padding and wrap fillers)."""
        self._check()
        return ff_load_acquire_u64(self.head) - ff_load_acquire_u64(self.tail)

    def record_size(self, list frames):
        """Bytes ``frames`` take in the ring as one record (header and padding included)."""
        return _record_size(frames)

    # -- writer ------------------------------------------------------------------------

    cdef int _room(self, uint64_t size) noexcept:
        """WROTE when a record of ``size`` fits at the head now (after a wrap filler if it
        would straddle the end), else FULL with ``writer_waiting`` announced (the reader
        rings when it makes room), or PINNED (no room, and the reader sleeps with every
        record read). Writes nothing else."""
        cdef uint64_t head = ff_load_relaxed_u64(self.head)
        cdef uint64_t offset = head & self.mask
        cdef uint64_t need = size
        if offset + size > self.capacity_:
            need += self.capacity_ - offset
        if self.capacity_ - (head - ff_load_acquire_u64(self.tail)) < need:
            # announce the wait, then look again: the reader either sees the flag (and
            # rings) or made room before this second look
            ff_store_seq_cst_u64(self.writer_waiting, 1)
            if self.capacity_ - (head - ff_load_seq_cst_u64(self.tail)) < need:
                # A reader asleep has read every record: what stops this one is room
                # its held frames pin (a wrap can make it so with half the ring free),
                # and only its owner letting go of them frees it — maybe never.
                if ff_load_seq_cst_u64(self.reader_sleeping):
                    if ff_load_seq_cst_u64(self.reader_evacuates):
                        # what pins the room moves out on demand: wake the reader
                        # (``take_reader_wake``), then wait for its ring as for FULL
                        self.reader_wake = True
                        return RING_FULL
                    return RING_PINNED
                return RING_FULL
        return RING_WROTE

    cdef int _reserve(self, uint64_t size, uint64_t* at) except -2:
        """Room for a record of ``size`` at ``at`` (a wrap filler written), or FULL, or
        PINNED (no room, and the reader sleeps with every record read)."""
        cdef int status = self._room(size)
        cdef uint64_t head = ff_load_relaxed_u64(self.head)
        cdef uint64_t offset = head & self.mask
        if status != RING_WROTE:
            return status
        if offset + size > self.capacity_:
            ff_store_le32(self.data + offset, FF_SHM_WRAP)
            ff_store_le32(self.data + offset + 4, <uint32_t>(self.capacity_ - offset - RECORD_HEADER))
            head += self.capacity_ - offset
        at[0] = head
        return RING_WROTE

    cdef int claim(self, uint64_t size, char** out, uint64_t* at) except -2:
        """Room for a record of ``size`` bytes (8-aligned, header included) at ``out``.

        Returns WROTE (fill ``out``, then ``commit(at + size)``), FULL, PINNED or
        TOO_LARGE (nothing claimed). Native writers use it to build a record in place.
        """
        cdef int status
        self._check()
        if size > self.capacity_ // 2:
            return RING_TOO_LARGE
        status = self._reserve(size, at)
        if status != RING_WROTE:
            return status
        out[0] = self.data + (at[0] & self.mask)
        return RING_WROTE

    cdef int claim_pair(self, bytes first, uint64_t second_len, char** second,
                        uint64_t* end) except -2:
        """Claim a record of two frames: ``first`` copied in, ``second_len`` bytes left
        for the second frame at ``second`` (the caller fills them, then ``commit(end)``).

        Returns WROTE, FULL, PINNED or TOO_LARGE (nothing claimed) as ``claim``. The record
        layout stays here: the server writes a push's frame in place through this.
        """
        cdef uint64_t first_len = <uint64_t>PyBytes_GET_SIZE(first)
        cdef uint64_t size = _pair_size(first_len, second_len)
        cdef char* out
        cdef uint64_t at
        cdef int status = self.claim(size, &out, &at)
        if status != RING_WROTE:
            return status
        ff_store_le32(out, 2)
        ff_store_le32(out + 4, <uint32_t>(size - RECORD_HEADER))
        ff_store_le32(out + 8, <uint32_t>first_len)
        ff_store_le32(out + 12, <uint32_t>second_len)
        memcpy(out + RECORD_HEADER + 8, PyBytes_AS_STRING(first), first_len)
        second[0] = out + RECORD_HEADER + 8 + first_len
        memset(second[0] + second_len, 0, size - RECORD_HEADER - 8 - first_len - second_len)
        end[0] = at + size
        return RING_WROTE

    cdef int claim_reference(self, bytes first, BodySource source, uint64_t* end) except -2:
        """Claim a reference record: ``first`` copied in, the second frame ``source``
        itself (a ``RingFrame`` read in place from another ring of this process), pinned
        until the reader reads past it; ``commit(end)`` publishes it.

        Returns WROTE, FULL or PINNED (as ``claim``), or REFUSED: references are off
        here, ``source`` is not a frame in place in an open ring with an id, or
        ``MAX_PINS`` frames are pinned already (counted in ``reference_refusals``).
        """
        cdef RingFrame frame
        cdef SharedRing origin
        cdef uint64_t first_len = <uint64_t>PyBytes_GET_SIZE(first)
        cdef uint64_t size = ff_align8(RECORD_HEADER + REFERENCE_FIXED + first_len)
        cdef uint64_t offset
        cdef uint64_t at
        cdef uint64_t slot
        cdef char* out
        cdef int status
        self._check()
        if not self.takes_references or type(source) is not RingFrame:
            return RING_REFUSED
        frame = <RingFrame>source
        origin = frame.ring
        if self.pin_count:
            self._unpin(ff_load_acquire_u64(self.tail))
        if (origin is None or frame.keep is not None or origin.base == NULL
                or origin.close_pending or origin.fd < 0 or origin.ring_id_ == 0
                or frame.data < origin.data
                or frame.data + frame.length > origin.data + origin.capacity_
                or self.pin_count >= C_MAX_PINS):
            self.reference_refusals += 1
            return RING_REFUSED
        if self.pin_end == NULL:
            self.pin_end = <uint64_t*>malloc(C_MAX_PINS * sizeof(uint64_t))
            self.pin_frame = <PyObject**>malloc(C_MAX_PINS * sizeof(PyObject*))
            if self.pin_end == NULL or self.pin_frame == NULL:
                free(self.pin_end)
                free(self.pin_frame)
                self.pin_end = NULL
                self.pin_frame = NULL
                raise MemoryError()
        status = self.claim(size, &out, &at)
        if status != RING_WROTE:
            return status
        offset = <uint64_t>(frame.data - origin.data)
        ff_store_le32(out, FF_SHM_REFERENCE)
        ff_store_le32(out + 4, <uint32_t>(size - RECORD_HEADER))
        ff_store_le32(out + 8, <uint32_t>first_len)
        ff_store_le32(out + 12, <uint32_t>getpid())
        ff_store_le32(out + 16, <uint32_t>origin.fd)
        ff_store_le32(out + 20, 0)
        _store_le64(out + 24, origin.ring_id_)
        _store_le64(out + 32, offset)
        _store_le64(out + 40, <uint64_t>frame.length)
        memcpy(out + RECORD_HEADER + REFERENCE_FIXED, PyBytes_AS_STRING(first), first_len)
        memset(out + RECORD_HEADER + REFERENCE_FIXED + first_len, 0,
               size - RECORD_HEADER - REFERENCE_FIXED - first_len)
        slot = (self.pin_first + self.pin_count) % C_MAX_PINS
        self.pin_end[slot] = at + size
        Py_INCREF(frame)
        self.pin_frame[slot] = <PyObject*>frame
        frame.exports += 1   # its ring neither evacuates nor reuses it while pinned
        self.pin_count += 1
        self.references_written += 1
        end[0] = at + size
        return RING_WROTE

    def take_reader_wake(self):
        """True once after a ``FULL`` that found the reader asleep with frames it
        evacuates on demand (``reader_evacuates``): ring the reader's bell, then wait
        for room as for any ``FULL``."""
        cdef bint wake = self.reader_wake
        self.reader_wake = False
        return wake

    def wait_room(self, bytes first):
        """Whether a record of ``pair_room(first)`` fits now: ``WROTE`` (it does: a claim
        that size succeeds), ``FULL`` (not now; ``writer_waiting`` is announced, so the
        reader rings this side's bell when it makes room) or ``PINNED`` (not now, and
        the reader sleeps having read everything: only its letting go of held frames
        would make room). The server asks it before leasing a push, so that what it
        leases goes into the ring at once, not into a queue in front of it."""
        cdef uint64_t first_len = <uint64_t>PyBytes_GET_SIZE(first)
        self._check()
        return self._room(_pair_size(first_len, self._pair_room(first_len)))

    def pair_room(self, bytes first):
        """The largest second frame to claim with ``first`` (``claim_pair``): a record of
        a quarter of the ring, less its header, its two lengths and ``first`` — or, where
        less than a quarter but a sixteenth at least is left before the ring's end, a
        record that ends there (no wrap filler). The reader
        pins at most ``max_held`` (half the ring) with frames it holds in place; the other
        half, free once it has read everything, lies in at most two pieces (the wrap),
        one of them a quarter at least: such a record always finds room then, never
        ``TOO_LARGE`` nor ``PINNED``. The server cuts its pushes to it."""
        return self._pair_room(<uint64_t>PyBytes_GET_SIZE(first))

    cdef uint64_t _pair_room(self, uint64_t first_len) noexcept:
        # limit is a multiple of 8: a second frame up to limit - overhead, padded, fits.
        # Where the head has less than a quarter of the ring before the end but a
        # sixteenth at least, the record is cut to end there: a wrap filler would
        # waste that room, and a reader holding frames in place would count it against
        # ``max_held`` (the numpy pipeline of bench/e2e_numpy.py had one push in twelve
        # copied out so).
        cdef uint64_t overhead = RECORD_HEADER + 8 + first_len
        cdef uint64_t limit = self.capacity_ // 4
        cdef uint64_t to_end = self.capacity_ - (ff_load_relaxed_u64(self.head) & self.mask)
        if self.capacity_ // 16 <= to_end < limit:
            limit = to_end   # the head is 8-aligned, and so is to_end
        return 0 if overhead >= limit else limit - overhead

    cdef int commit(self, uint64_t end) noexcept:
        """Publish everything claimed up to ``end``: WROTE, or WROTE_WAKE (ring the bell)."""
        ff_store_seq_cst_u64(self.head, end)
        return RING_WROTE_WAKE if ff_exchange_u64(self.reader_sleeping, 0) else RING_WROTE

    def write(self, list frames):
        """Append one message (a list of frames: bytes, ``FrameSource``s — written in
        place — or other contiguous buffers).

        Returns ``WROTE`` or ``WROTE_WAKE`` (ring the reader's bell), ``FULL`` (nothing
        written; the reader rings this side's bell when it has made room),
        ``TOO_LARGE`` (larger than ``max_message``, or more than ``MAX_FRAMES`` frames:
        send it over the socket after ``write_marker``) or ``PINNED`` (no room while
        the reader sleeps having read everything: send it as ``TOO_LARGE``).
        """
        self._check()
        cdef Py_ssize_t count = len(frames)
        cdef Py_ssize_t index
        cdef uint64_t size
        cdef uint64_t head
        cdef uint64_t table
        cdef char* out
        cdef char* body
        cdef object frame
        cdef Py_buffer view
        cdef int status
        if count > MAX_FRAMES:
            return RING_TOO_LARGE
        size = _record_size(frames)
        status = self.claim(size, &out, &head)
        if status != RING_WROTE:
            return status
        ff_store_le32(out, <uint32_t>count)
        ff_store_le32(out + 4, <uint32_t>(size - RECORD_HEADER))
        table = ff_align8(4 * <uint64_t>count)
        memset(out + RECORD_HEADER + 4 * count, 0, table - 4 * count)
        out += RECORD_HEADER
        body = out + table
        for index in range(count):
            frame = frames[index]
            if type(frame) is bytes:
                ff_store_le32(out + 4 * index, <uint32_t>PyBytes_GET_SIZE(frame))
                memcpy(body, PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame))
                body += PyBytes_GET_SIZE(frame)
            elif isinstance(frame, FrameSource):
                # a frame that writes itself: encoded straight into the record
                ff_store_le32(out + 4 * index, <uint32_t>(<FrameSource>frame).nbytes)
                (<FrameSource>frame).write_into(body)
                body += (<FrameSource>frame).nbytes
            else:
                PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
                ff_store_le32(out + 4 * index, <uint32_t>view.len)
                memcpy(body, view.buf, view.len)
                body += view.len
                PyBuffer_Release(&view)
        memset(body, 0, (self.data + (head & self.mask) + size) - body)
        return self.commit(head + size)

    def ask_for_pins(self):
        """The writer's side: ask the reader to let go of the frames it holds by
        reference (a producer waits for their room). True when newly asked: ring the
        reader's bell."""
        self._check()
        return ff_exchange_u64(self.writer_wants_pins, 1) == 0

    def waits_on_pins(self):
        """The reader's side: the oldest frame held here is pinned by a reference (or
        viewed), and the writer waits for room, or what is held from it on passes half
        of ``max_held`` (past ``max_held`` new frames are copied out, not held, and
        their pushes copied): what ``ask_for_pins`` of the rings whose readers hold those
        references may free."""
        cdef PyObject* pointer
        if self.base == NULL or not self.held_count:
            return False
        pointer = self.held_frame[self.held_first % C_MAX_HELD]
        if pointer == NULL or (<RingFrame>pointer).exports == 0:
            return False
        return (ff_load_relaxed_u64(self.writer_waiting) != 0
                or self._reader_pos() - self.held_start[self.held_first % C_MAX_HELD]
                > self.max_held // 2)

    cdef void _let_go_of_references(self) noexcept:
        """Let go of the held frames read by reference, oldest first, but for the newest
        ``KEPT_WHEN_ASKED`` records: copied out if nothing views them, else privatized
        (see the module's essay). Stops at a frame of this ring, or one that cannot be."""
        cdef PyObject* pointer
        while self.held_count > C_KEPT_WHEN_ASKED:
            pointer = self.held_frame[self.held_first % C_MAX_HELD]
            if pointer == NULL:
                return   # not possible: a record without frame is popped at once
            if not self._let_go_of_reference(<object>pointer):
                return

    cdef void _let_go_of_every_reference(self) noexcept:
        """Let go of every held frame read by reference (the reader closes): whatever
        holds the tail, a frame it views is its own copy then, and the broker may let
        the producer's frame go (even a lingering ring closed past ``MAX_LINGERING``).
        Until 2026-12-07 the arrays of a consumer closed with its views kept changed
        under it once the broker dropped its lingering ring (found by a bug hunt)."""
        cdef uint64_t seq = self.held_first
        cdef uint64_t last = self.held_first + self.held_count
        cdef PyObject* pointer
        while seq < last:   # releases pop only behind ``seq``: the slots ahead stay
            pointer = self.held_frame[seq % C_MAX_HELD]
            seq += 1
            if pointer != NULL:
                self._let_go_of_reference(<object>pointer)

    cdef bint _let_go_of_reference(self, object held) noexcept:
        """Copy out (nothing views it) or privatize a held frame read by reference;
        False when it is a frame of this ring, or cannot be let go."""
        cdef RingFrame frame = <RingFrame>held
        if frame.keep is None or frame.ring is not self or frame.anchor != NULL:
            return False
        if frame.exports:
            if self._privatize(frame) < 0:
                return False
            self.references_privatized += 1
            frame._leave_ring()
        else:
            if frame._detach() < 0:
                return False
            self.references_detached += 1
        return True

    cdef int _privatize(self, object held) noexcept:
        """Replace the pages of ``held`` (a RingFrame read by reference) in its origin
        mapping by private copies of the same bytes, and retire that mapping; -1 when
        the memory cannot be had."""
        cdef RingFrame frame = <RingFrame>held
        cdef size_t page = <size_t>sysconf(_SC_PAGESIZE)
        cdef size_t start = (<size_t>frame.data) & ~(page - 1)
        cdef size_t end = (<size_t>frame.data + <size_t>frame.length + page - 1) & ~(page - 1)
        cdef size_t size = end - start
        cdef SharedRing origin
        cdef void* fresh = mmap(NULL, size, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if fresh == MAP_FAILED:
            return -1
        memcpy(fresh, <const void*>start, size)
        if (mprotect(fresh, size, PROT_READ) != 0
                or mremap(fresh, size, size, MREMAP_MAYMOVE | MREMAP_FIXED,
                          <void*>start) == MAP_FAILED):
            munmap(fresh, size)
            return -1
        origin = <SharedRing>frame.keep
        if self.origins is not None and self.origins.get(origin.ring_id_) is origin:
            # retired: its pages around this frame are copies now (frames live in it
            # keep it mapped, as before)
            del self.origins[origin.ring_id_]
            self._unmap_around_frames(origin, page)
        return 0

    cdef void _unmap_around_frames(self, SharedRing origin, size_t page) noexcept:
        """Unmap the pages of a retired origin mapping that no frame held here lies in:
        no new frame will ever be read in it, and a mapping kept whole while one frame
        of it lives made a consumer keeping its arrays map each producer's ring again
        and again (4-5 times the memory it kept: found by a bug hunt). What stays is
        noted (``kept_ranges``): the last frame's going unmaps that alone — the holes may
        hold this process's own mappings by then (a first version unmapped the whole
        range, theirs too, and a consumer crashed: found by the next bug hunt)."""
        cdef size_t count = 0
        cdef size_t kept = 0
        cdef size_t index
        cdef size_t other
        cdef size_t at = <size_t>origin.base
        cdef size_t stop = (<size_t>origin.base + <size_t>origin.map_size + page - 1) & ~(page - 1)
        cdef size_t start
        cdef size_t end
        cdef size_t* starts
        cdef size_t* ends
        cdef PyObject* pointer
        cdef uint64_t seq
        cdef size_t* ranges
        if origin.base == NULL or not self.held_count or origin.kept_ranges != NULL:
            return
        starts = <size_t*>malloc(2 * self.held_count * sizeof(size_t))
        ranges = <size_t*>malloc(2 * self.held_count * sizeof(size_t))
        if starts == NULL or ranges == NULL:
            free(starts)
            free(ranges)
            return   # no memory: it stays mapped whole
        ends = starts + self.held_count
        for seq in range(self.held_first, self.held_first + self.held_count):
            pointer = self.held_frame[seq % C_MAX_HELD]
            if pointer == NULL or (<RingFrame>pointer).keep is not origin:
                continue
            start = (<size_t>(<RingFrame>pointer).data) & ~(page - 1)
            end = ((<size_t>(<RingFrame>pointer).data + <size_t>(<RingFrame>pointer).length
                    + page - 1) & ~(page - 1))
            # in order of start (a few frames: an insertion)
            index = count
            while index > 0 and starts[index - 1] > start:
                starts[index] = starts[index - 1]
                ends[index] = ends[index - 1]
                index -= 1
            starts[index] = start
            ends[index] = end
            count += 1
        for other in range(count):   # overlapping ranges (frames sharing a page) merged
            if kept and starts[other] <= ranges[2 * kept - 1]:
                if ends[other] > ranges[2 * kept - 1]:
                    ranges[2 * kept - 1] = ends[other]
            else:
                ranges[2 * kept] = starts[other]
                ranges[2 * kept + 1] = ends[other]
                kept += 1
        free(starts)
        for other in range(kept):
            if ranges[2 * other] > at:
                munmap(<void*>at, ranges[2 * other] - at)
            at = ranges[2 * other + 1]
        if stop > at:
            munmap(<void*>at, stop - at)
        origin.kept_ranges = ranges   # what _unmap unmaps, and nothing else
        origin.kept_count = kept

    def write_marker(self):
        """Append a marker: this direction's next message travels over the socket.

        ``WROTE``/``WROTE_WAKE``; ``FULL`` (no room now: the reader rings when it makes
        some) or ``PINNED`` (no room, and the reader sleeps having read every record:
        the message may go over the socket unannounced, see the module essay).
        """
        return self._write_control(FF_SHM_MARKER, 0, 0)

    def write_count(self, uint64_t count):
        """Append a count record: ``count`` messages sent over the socket unannounced
        come before the records after it. The same answers as ``write_marker``."""
        return self._write_control(FF_SHM_COUNT, 8, count)

    cdef int _write_control(self, uint32_t kind, uint32_t length, uint64_t value) except -2:
        """A record of ``kind`` with ``length`` bytes after its header (0, or 8: ``value``):
        a marker or a count."""
        cdef uint64_t head
        cdef int status
        cdef char* out
        self._check()
        status = self._reserve(RECORD_HEADER + length, &head)
        if status != RING_WROTE:
            return status
        out = self.data + (head & self.mask)
        ff_store_le32(out, kind)
        ff_store_le32(out + 4, length)
        if length:
            _store_le64(out + RECORD_HEADER, value)
        return self.commit(head + RECORD_HEADER + length)

    # -- reader ------------------------------------------------------------------------

    def read(self, Py_ssize_t max_messages, uint64_t hold_min=0):
        """Up to ``max_messages`` messages: ``(messages, wake_writer)``.

        Each message is a list of frames, None for a marker (reading stops after it:
        the socket's next message comes first), or an int for a count record (reading
        stops after it too: that many messages sent over the socket unannounced, in
        all, come first). A frame is a bytes copy; with
        ``hold_min`` > 0, a message's last frame of ``hold_min`` bytes or more is a
        ``RingFrame`` viewing the ring in place while ``max_held`` allows (see the
        module essay).
        ``wake_writer``: the writer waits for room and this read (or a release since
        the last read) made some — ring the writer's bell. Only a message's last frame
        is ever held (one per record), so ``type(message[-1])`` tells.

        Raises:
            ValueError: a record is malformed (the ring is not one of ours, or the
                peer wrote past its bounds); nothing after it is read.
        """
        self._check()
        cdef list messages = []
        if not self.reading:
            self.read_pos = ff_load_relaxed_u64(self.tail)
            self.reading = True
        cdef uint64_t tail = self.read_pos
        cdef uint64_t head = ff_load_acquire_u64(self.head)
        cdef uint64_t offset
        cdef uint32_t kind
        cdef uint64_t length
        cdef uint64_t table
        cdef uint64_t frame_length
        cdef uint64_t at
        cdef uint32_t index
        cdef int64_t hold_index
        cdef uint64_t seq = 0
        cdef list frames
        cdef const char* record
        cdef RingFrame held
        while tail != head and len(messages) < max_messages:
            offset = tail & self.mask
            if head - tail < RECORD_HEADER or offset + RECORD_HEADER > self.capacity_:
                raise ValueError(f"{self.path}: torn record at {tail}")
            record = self.data + offset
            kind = ff_load_le32(record)
            length = ff_load_le32(record + 4)
            if (length & 7 or offset + RECORD_HEADER + length > self.capacity_
                    or head - tail < RECORD_HEADER + length):
                raise ValueError(f"{self.path}: record at {tail} overruns the ring")
            if kind == FF_SHM_WRAP:
                tail += RECORD_HEADER + length
                self.read_pos = tail
                continue
            if kind == FF_SHM_MARKER:
                tail += RECORD_HEADER
                self.read_pos = tail
                messages.append(None)
                break
            if kind == FF_SHM_COUNT:
                if length != 8:
                    raise ValueError(f"{self.path}: count record at {tail} is not 8 bytes")
                messages.append(_load_le64(record + RECORD_HEADER))
                tail += RECORD_HEADER + length
                self.read_pos = tail
                break
            if kind == FF_SHM_REFERENCE:
                messages.append(self._read_reference(record, tail, length, hold_min))
                tail += RECORD_HEADER + length
                self.read_pos = tail
                continue
            table = ff_align8(4 * <uint64_t>kind)
            if kind > MAX_FRAMES or table > length:
                raise ValueError(f"{self.path}: record at {tail} has a bad frame table")
            at = RECORD_HEADER + table
            hold_index = -1   # the record's last frame, when of hold_min bytes or more
            for index in range(kind):
                frame_length = ff_load_le32(record + RECORD_HEADER + 4 * index)
                if at + frame_length > RECORD_HEADER + length:
                    raise ValueError(f"{self.path}: record at {tail} overruns itself")
                if hold_min and frame_length >= hold_min and index == kind - 1:
                    hold_index = index
                at += frame_length
            frames = []
            at = RECORD_HEADER + table
            for index in range(kind):
                # Read again, so checked again: the writer's process may rewrite its
                # record meanwhile (a hostile one did, and the first look's bound no
                # longer held: a copy past the mapping, a crash of the reader).
                frame_length = ff_load_le32(record + RECORD_HEADER + 4 * index)
                if at + frame_length > RECORD_HEADER + length:
                    raise ValueError(f"{self.path}: record at {tail} overruns itself")
                if index == hold_index:
                    # made first: an allocation may collect (and release) other frames,
                    # so nothing is pushed on the held records between these two steps
                    held = RingFrame.__new__(RingFrame)
                    if not self._hold(tail, tail + RECORD_HEADER + length, &seq):
                        hold_index = -1
                if index == hold_index:
                    held.ring = self
                    held.data = record + at
                    held.length = <Py_ssize_t>frame_length
                    held.seq = seq
                    self.held_frame[seq % C_MAX_HELD] = <PyObject*>held
                    self.live_frames += 1
                    frames.append(held)
                else:
                    frames.append(PyBytes_FromStringAndSize(record + at,
                                                            <Py_ssize_t>frame_length))
                at += frame_length
            messages.append(frames)
            tail += RECORD_HEADER + length
            self.read_pos = tail
        if (self.references_read and ff_load_relaxed_u64(self.writer_wants_pins)
                and ff_exchange_u64(self.writer_wants_pins, 0)):
            self._let_go_of_references()
        if self.held_count:
            self._make_room()
        return messages, self._move_tail()

    cdef list _read_reference(self, const char* record, uint64_t tail, uint64_t length,
                              uint64_t hold_min):
        """The message of a reference record at ``tail``: ``[first, frame]``, the frame
        viewing the origin ring in place (held) — or a copy of it without ``hold_min``
        or past ``max_held``."""
        cdef uint64_t first_len
        cdef uint64_t offset
        cdef uint64_t frame_len
        cdef uint64_t seq = 0
        cdef SharedRing origin
        cdef RingFrame held
        cdef list frames
        if length < REFERENCE_FIXED:
            raise ValueError(f"{self.path}: reference record at {tail} is too short")
        first_len = ff_load_le32(record + 8)
        offset = _load_le64(record + 32)
        frame_len = _load_le64(record + 40)
        if first_len > length - REFERENCE_FIXED:
            raise ValueError(f"{self.path}: reference record at {tail} overruns itself")
        origin = self._origin(ff_load_le32(record + 12), ff_load_le32(record + 16),
                              _load_le64(record + 24))
        if offset > origin.capacity_ or frame_len > origin.capacity_ - offset:
            raise ValueError(f"{self.path}: reference record at {tail} points past its "
                             f"ring's end")
        frames = [PyBytes_FromStringAndSize(record + RECORD_HEADER + REFERENCE_FIXED,
                                            <Py_ssize_t>first_len)]
        self.references_read += 1
        if hold_min:
            held = RingFrame.__new__(RingFrame)
            if self._hold(tail, tail + RECORD_HEADER + length, &seq):
                held.ring = self
                held.keep = origin
                held.data = origin.data + offset
                held.length = <Py_ssize_t>frame_len
                held.seq = seq
                self.held_frame[seq % C_MAX_HELD] = <PyObject*>held
                self.live_frames += 1
                frames.append(held)
                return frames
        frames.append(PyBytes_FromStringAndSize(origin.data + offset, <Py_ssize_t>frame_len))
        return frames

    cdef SharedRing _origin(self, uint32_t pid, uint32_t fd, uint64_t ring_id):
        """The ring ``ring_id`` a reference names, mapped read-only (at its first use:
        the writer's ``/proc/PID/fd/N``); ValueError when it cannot be."""
        cdef SharedRing origin = None
        cdef str path
        if self.origins is not None:
            origin = self.origins.pop(ring_id, None)
        if origin is not None:
            self.origins[ring_id] = origin   # the most recently used last
            return origin
        if ring_id == 0:
            raise ValueError(f"{self.path}: a reference names no ring")
        path = f"/proc/{pid}/fd/{fd}"
        try:
            origin = SharedRing._view(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: cannot map the ring a reference names "
                             f"({exc})") from exc
        if origin.ring_id_ != ring_id:
            raise ValueError(f"{self.path}: {path} is not the ring a reference names")
        if self.origins is None:
            self.origins = {}
        while len(self.origins) >= MAX_ORIGINS:
            # the least recently used goes (its frames still alive keep their mapping)
            del self.origins[next(iter(self.origins))]
            self.origins_dropped += 1
        self.origins[ring_id] = origin
        return origin

    cdef void _detach_oldest(self, uint64_t end, uint64_t span, bint anchored_only) noexcept:
        """Let go of the oldest held frames while no buffer views them, until the pinned
        span up to ``end`` is within ``span`` (a frame someone views stops it; with
        ``anchored_only``, so does a frame without an anchor). A frame with an anchor
        has it copy out what it refers to first; nobody else holding the frame, its
        record is then let go with no copy of it, else the frame is copied out."""
        cdef RingFrame frame
        cdef PyObject* pointer
        while self.held_count and (end - self.held_start[self.held_first % C_MAX_HELD]
                                   > span):
            pointer = self.held_frame[self.held_first % C_MAX_HELD]
            if pointer == NULL:
                break   # not possible: a record without frame is popped at once
            frame = <RingFrame>pointer
            if frame.exports or (anchored_only and frame.anchor == NULL):
                break
            if frame.anchor != NULL:
                if frame.evacuate(frame.anchor) < 0:
                    # out of memory: it stays, and counts as pinned (the writer goes
                    # around: PINNED) until a frame is let go
                    self.evacuation_failed = True
                    break
                frame.anchor = NULL   # the anchor has ended (and let go of the frame)
                if Py_REFCNT(frame) == 1:   # this function's reference alone
                    frame._let_go()
                    self.hold_detaches += 1
                    continue
            if frame._detach() < 0:
                break
            self.hold_detaches += 1

    cdef bint _hold(self, uint64_t start, uint64_t end, uint64_t* seq) except -1:
        """Hold the record at [start, end) for one frame; False: over the bound."""
        cdef uint64_t oldest = start
        cdef uint64_t slot
        if self.held_start == NULL:
            self.held_start = <uint64_t*>malloc(C_MAX_HELD * sizeof(uint64_t))
            self.held_end = <uint64_t*>malloc(C_MAX_HELD * sizeof(uint64_t))
            self.held_frame = <PyObject**>malloc(C_MAX_HELD * sizeof(PyObject*))
            if self.held_start == NULL or self.held_end == NULL or self.held_frame == NULL:
                raise MemoryError()
        if self.held_count:
            oldest = self.held_start[self.held_first % C_MAX_HELD]
            if end - oldest > self.max_held and self._evacuable():
                # frames kept only by bodies left in place pin no room the writer
                # waits for: they move out when it does (``_make_room``)
                oldest = start
        if self.held_count >= C_MAX_HELD or end - oldest > self.max_held:
            self.hold_refusals += 1
            return False
        seq[0] = self.held_first + self.held_count
        slot = seq[0] % C_MAX_HELD
        self.held_start[slot] = start
        self.held_end[slot] = end
        self.held_frame[slot] = NULL   # set by read at once (no allocation in between)
        self.held_count += 1
        return True

    cdef void _make_room(self) noexcept:
        """After a read: let go of what pins too much of the ring, or what the writer
        waits for. Frames held with an anchor (bodies left in place) are evacuated only
        when the writer waits: the oldest ones until half the ring is free (any record
        fits in that, but for a wrap), or all of them when half is free already (what it
        waits for did not fit around the wrap); other held frames past half the ring
        are copied out (detached) as they are read."""
        cdef uint64_t oldest = self.held_start[self.held_first % C_MAX_HELD]
        cdef uint64_t head
        if self._evacuable():
            if ff_load_seq_cst_u64(self.writer_waiting):
                head = ff_load_acquire_u64(self.head)
                self._detach_oldest(head, self.capacity_ // 2
                                    if head - oldest > self.capacity_ // 2 else 0, True)
        elif self.read_pos - oldest > self.capacity_ // 2:
            self._detach_oldest(self.read_pos, self.capacity_ // 2, False)

    cdef bint _evacuable(self) noexcept:
        """The oldest held frame is kept by an anchor alone, which can evacuate it (a
        frame viewed, or pinned by a reference another ring's reader reads, cannot move:
        the writer then goes around the ring, ``PINNED``, as for any frame held for good;
        until 2026-12-07 a pinned frame counted as evacuable, and the writer waited for
        room nothing would make while the reader spun)."""
        cdef PyObject* pointer
        if not self.held_count or self.evacuation_failed:
            return False
        pointer = self.held_frame[self.held_first % C_MAX_HELD]
        return (pointer != NULL and (<RingFrame>pointer).anchor != NULL
                and (<RingFrame>pointer).exports == 0)

    cdef bint _move_tail(self) noexcept:
        """Publish the tail: the oldest held record, or the read position. True: the
        writer waits for room (now or at a release since the last call): ring it."""
        cdef uint64_t tail = self.read_pos
        cdef bint wake = self.wake_pending
        self.wake_pending = False
        if self.held_count:
            tail = self.held_start[self.held_first % C_MAX_HELD]
        if tail != ff_load_relaxed_u64(self.tail):
            ff_store_seq_cst_u64(self.tail, tail)
            if ff_exchange_u64(self.writer_waiting, 0) != 0:
                wake = True
            # (a seq_cst load after the seq_cst store: Dekker's pattern with watch_pins)
            if (ff_load_seq_cst_u64(self.writer_watches) != 0
                    and ff_exchange_u64(self.writer_watches, 0) != 0):
                wake = True
        return wake

    cdef void _release(self, uint64_t seq) noexcept:
        """A held record's frame is gone; the oldest records with none left are freed."""
        cdef uint64_t slot
        if seq < self.held_first or seq >= self.held_first + self.held_count:
            return
        self.held_frame[seq % C_MAX_HELD] = NULL
        self.evacuation_failed = False   # memory came back: evacuations may succeed
        if seq != self.held_first:
            return
        while self.held_count and self.held_frame[self.held_first % C_MAX_HELD] == NULL:
            self.held_first += 1
            self.held_count -= 1
        if self.base != NULL and self.reading:
            if self._move_tail():
                if self.on_room is None:
                    self.wake_pending = True   # the next read (or sleep) says so
                else:
                    try:
                        self.on_room()
                    except Exception:
                        self.wake_pending = True

    cdef void _frame_gone(self) noexcept:
        self.live_frames -= 1
        if self.live_frames == 0 and self.close_pending:
            self._unmap()

    def pending(self):
        """True when a record (or marker) is waiting to be read (or a release made room
        for a waiting writer: the next ``read`` says to ring it)."""
        self._check()
        if self.wake_pending:
            return True
        if ff_load_acquire_u64(self.head) != self._reader_pos():
            return True
        # the writer waits for room that frames held with an anchor pin: evacuate them
        return self._evacuable() and ff_load_relaxed_u64(self.writer_waiting) != 0

    cdef uint64_t _reader_pos(self) noexcept:
        return self.read_pos if self.reading else ff_load_relaxed_u64(self.tail)

    def sleep(self):
        """Announce that the reader is about to wait on its bell.

        Returns False when a message arrived meanwhile (read it; do not wait), or when
        the writer waits for room that frames held here pin (read: the read says to ring
        the writer, which then sends around the ring — ``PINNED``); True when the writer
        is now bound to ring the bell for its next message.
        """
        self._check()
        if self.wake_pending:
            return False   # a release made room for a waiting writer: read (and ring)
        if self.references_read and ff_load_relaxed_u64(self.writer_wants_pins):
            return False   # the writer asks for its pins: the read gives them back
        cdef uint64_t head
        cdef bint evacuable = self._evacuable()
        # before the flag the writer looks at: a writer that finds no room while this
        # side sleeps with frames it evacuates on demand rings it (``take_reader_wake``)
        ff_store_seq_cst_u64(self.reader_evacuates, evacuable)
        ff_store_seq_cst_u64(self.reader_sleeping, 1)
        head = ff_load_seq_cst_u64(self.head)
        if head != self._reader_pos():
            ff_exchange_u64(self.reader_sleeping, 0)
            return False
        if evacuable and ff_load_seq_cst_u64(self.writer_waiting):
            # the writer waits for room such frames pin: the next read evacuates them
            # (``pending`` says so) and rings it
            ff_exchange_u64(self.reader_sleeping, 0)
            return False
        if (self.held_count and head != self.pinned_wake_head
                and ff_load_seq_cst_u64(self.writer_waiting)):
            # Everything is read, yet the writer waits for room: frames held here pin
            # it. Ring the writer once for what it waits to write (the flag stays set, so
            # it sees this side asleep and sends that message another way: PINNED).
            self.pinned_wake_head = head
            self.wake_pending = True
            return False
        return True


cdef class RingFrame:
    """A frame read in place from a ring: a read-only buffer of its bytes.

    Made by ``SharedRing.read`` with ``hold_min``; its record stays in the ring (the
    writer does not reuse it) until this object is deallocated — every buffer exported
    from it (a memoryview, a numpy array) keeps it alive. ``bytes(frame)`` copies it.
    """

    def __cinit__(self):
        self.ring = None
        self.data = NULL
        self.length = 0

    def __len__(self):
        return self.length

    cdef int _detach(self) except -1:
        """Copy the frame out of the ring and release its record (no buffer views it)."""
        self.owned = PyBytes_FromStringAndSize(self.data, self.length)
        self.data = PyBytes_AS_STRING(self.owned)
        self.keep = None
        self._leave_ring()
        return 0

    cdef bint lies_in_place(self):
        return self.ring is not None

    cdef void _let_go(self) noexcept:
        """Release the frame's record with no copy of it: nobody reads it any more (only
        the ring's own reference is left, and it drops it at once)."""
        self.data = NULL
        self.length = 0
        self.keep = None
        self._leave_ring()

    cdef void _leave_ring(self) noexcept:
        """Release the frame's record: its bytes are elsewhere now, or read no more."""
        cdef SharedRing ring = self.ring
        self.ring = None
        ring._release(self.seq)
        ring._frame_gone()

    @property
    def in_ring(self):
        """True while the frame is read in place (False once copied out: ``detach``)."""
        return self.ring is not None

    def __getbuffer__(self, Py_buffer* view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a frame held in a shared ring is read-only")
        self.exports += 1
        self.shape[0] = self.length
        view.buf = <void*>self.data
        view.obj = self
        view.len = self.length
        view.readonly = 1
        view.itemsize = 1
        view.format = b"B"
        view.ndim = 1
        view.shape = self.shape
        view.strides = &view.itemsize
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        self.exports -= 1

    def __bytes__(self):
        return PyBytes_FromStringAndSize(self.data, self.length)

    def __repr__(self):
        return f"RingFrame({self.length} bytes)"

    def __dealloc__(self):
        if self.ring is not None:
            self._leave_ring()


cdef inline uint64_t _pair_size(uint64_t first_len, uint64_t second_len) noexcept:
    """Bytes of a two-frame record (``claim_pair``): header, two lengths, both frames."""
    return ff_align8(RECORD_HEADER + 8 + first_len + second_len)


cdef int _map_ring(SharedRing ring, uint64_t capacity, bint writable) except -1:
    """Check ``ring.fd`` and map it; a ``capacity`` (a new ring) writes the header.

    Anything wrong closes the descriptor and raises (ValueError: not a ring of ours,
    or not sealed against shrinking; OSError: fstat or mmap failed).
    """
    try:
        _map_checked(ring, capacity, writable)
    except BaseException:
        ring._unmap()
        raise
    return 0


cdef int _map_checked(SharedRing ring, uint64_t capacity, bint writable) except -1:
    cdef struct_stat info
    cdef str path = ring.path
    if fstat(ring.fd, &info) != 0:
        raise OSError(_errno(), f"cannot stat the shared ring {path}")
    if not S_ISREG(info.st_mode) or info.st_uid != geteuid():
        raise ValueError(f"{path} is not a regular file of this user")
    try:
        seals = fcntl.fcntl(ring.fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0   # a file system without seals
    if not seals & fcntl.F_SEAL_SHRINK:
        # a file that may shrink under the mapping would SIGBUS this process
        raise ValueError(f"{path} is not sealed against shrinking (F_SEAL_SHRINK)")
    if info.st_size < HEADER_SIZE + MIN_CAPACITY or info.st_size > HEADER_SIZE + MAX_CAPACITY:
        raise ValueError(f"{path} has the wrong size for a shared ring")
    ring.map_size = <uint64_t>info.st_size
    cdef void* mapped = mmap(NULL, ring.map_size, PROT_READ | (PROT_WRITE if writable else 0),
                             MAP_SHARED | MAP_POPULATE, ring.fd, 0)
    if mapped == MAP_FAILED:
        raise OSError(_errno(), f"cannot map the shared ring {path}")
    ring.base = <char*>mapped
    if capacity:
        memset(ring.base, 0, HEADER_SIZE)
        _store_le64(ring.base + OFF_CAPACITY, capacity)
        ff_store_le32(ring.base + 8, VERSION)
        ff_store_le32(ring.base + 12, HEADER_SIZE)
        _store_le64(ring.base + OFF_RING_ID, _new_ring_id())
        # the magic last: a reader that sees it sees a whole header
        ff_store_release_u64(<ff_atomic_u64*>ring.base, FF_SHM_MAGIC)
    if (ff_load_acquire_u64(<ff_atomic_u64*>ring.base) != FF_SHM_MAGIC
            or ff_load_le32(ring.base + 8) != VERSION
            or ff_load_le32(ring.base + 12) != HEADER_SIZE):
        raise ValueError(f"{path} is not a shared ring of version {VERSION}")
    ring.capacity_ = _load_le64(ring.base + OFF_CAPACITY)
    if (ring.capacity_ & (ring.capacity_ - 1) or ring.capacity_ < MIN_CAPACITY
            or HEADER_SIZE + ring.capacity_ != ring.map_size):
        raise ValueError(f"{path}: its header disagrees with its size")
    ring.mask = ring.capacity_ - 1
    ring.ring_id_ = _load_le64(ring.base + OFF_RING_ID)
    ring.max_held = ring.capacity_ // 2
    ring.data = ring.base + HEADER_SIZE
    ring.head = <ff_atomic_u64*>(ring.base + OFF_HEAD)
    ring.tail = <ff_atomic_u64*>(ring.base + OFF_TAIL)
    ring.writer_waiting = <ff_atomic_u64*>(ring.base + OFF_WRITER_WAITING)
    ring.writer_watches = <ff_atomic_u64*>(ring.base + OFF_WRITER_WATCHES)
    ring.writer_wants_pins = <ff_atomic_u64*>(ring.base + OFF_WRITER_WANTS_PINS)
    ring.reader_sleeping = <ff_atomic_u64*>(ring.base + OFF_READER_SLEEPING)
    ring.reader_evacuates = <ff_atomic_u64*>(ring.base + OFF_READER_EVACUATES)
    return 0


cdef uint64_t _record_size(list frames) except 0:
    """Bytes of ``frames`` as one record; TypeError for a frame that is not a buffer."""
    cdef Py_ssize_t count = len(frames)
    cdef uint64_t size = RECORD_HEADER + ff_align8(4 * <uint64_t>count)
    cdef object frame
    cdef Py_buffer view
    for frame in frames:
        if type(frame) is bytes:
            size += <uint64_t>PyBytes_GET_SIZE(<bytes>frame)
        elif isinstance(frame, FrameSource):
            size += <uint64_t>(<FrameSource>frame).nbytes
        else:
            PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
            size += <uint64_t>view.len
            PyBuffer_Release(&view)
    return ff_align8(size)


cdef uint64_t _new_ring_id() except 0:
    """A random non-zero ring id."""
    cdef uint64_t ring_id = 0
    while ring_id == 0:
        ring_id = int.from_bytes(os.urandom(8), "little")
    return ring_id


cdef inline uint64_t _load_le64(const char* p) noexcept:
    cdef uint64_t value
    memcpy(&value, p, 8)
    return value


cdef inline void _store_le64(char* p, uint64_t value) noexcept:
    memcpy(p, &value, 8)


cdef extern from "<errno.h>":
    int errno


cdef inline int _errno() noexcept:
    return errno
