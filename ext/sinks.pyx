"""The sink interface of the native delivery path: a place to write one message in place.

Design
------
The delivery core (``deliveries.pyx``) builds a push frame straight into the memory its
consumer will read, when the server gives it such memory; the local channel's shared
ring (``shmring.pyx``) is one. So that the core does not depend on a transport, it writes
into this interface instead, as Aeron's publications and the Disruptor's sequencers do:
*claim* room for a message, fill it, *commit*. ``FrameSink`` declares the two calls
(``sinks.pxd``, ``cdef`` methods, so a call is one indirect C call and no Python);
``SharedRing`` implements them. Invariants every implementation keeps: one writer; a
claim that does not return ``SINK_WROTE`` claimed nothing; what is claimed is not
visible to the reader before ``commit``; claims are committed in order.

The other direction has the same idea: a ``FrameSource`` is a frame that is not built
yet but knows its size (``nbytes``) and writes itself at a given address
(``write_into``, one C call): the local channel's ring (``shmring.pyx``) writes a client's
publish frame encoded from an array batch straight into its record, skipping the bytes
frame that would otherwise be built first and copied. Whatever else reads one reads its
buffer (built then, once, and kept). Invariants: ``nbytes`` is fixed at creation;
``write_into`` writes exactly ``nbytes`` bytes, the same ones every time, and never fails.

A sink that ``takes_references`` may also take a message whose second frame already lies
in memory its reader can map (a ``BodySource``: a frame read in place from another
client's ring) as a *reference* to it (``claim_reference``): no byte of the frame is
copied, and the sink keeps the source from moving until its reader is done with it
(shmring.pyx, "Deliveries by reference"). Invariants: a reference claimed is committed
as any claim; the source's bytes are final before ``commit``; the sink answers
``SINK_REFUSED`` for a source it cannot describe to its reader (nothing claimed).

The base class is a sink that never has room (every claim is ``SINK_FULL``): a writer
given one falls back to building the frame as a bytes object, as with no sink at all.
"""

from libc.stdint cimport uint64_t

from fastfanout._ext.blobs cimport BodySource

FULL = SINK_FULL
"""A claim found no room now; nothing was claimed."""
WROTE = SINK_WROTE
"""A claim succeeded (fill it, then commit), or a commit published without a wake-up."""
WROTE_WAKE = SINK_WROTE_WAKE
"""A commit published the message and the reader may sleep: ring its bell."""
TOO_LARGE = SINK_TOO_LARGE
"""A claim can never fit this sink; nothing was claimed."""
PINNED = SINK_PINNED
"""A claim found no room, and none will come soon: the reader has read everything and
waits, while frames it still uses pin the room there is. Nothing was claimed; send the
message another way (as ``TOO_LARGE``)."""
REFUSED = SINK_REFUSED
"""``claim_reference``: the sink cannot take this frame by reference (write a copy);
nothing was claimed."""


cdef class FrameSink:
    """Where a native writer puts one two-frame message in place (see the module essay).

    This base has no room ever; transports subclass it (``SharedRing``).
    """

    cdef int claim_pair(self, bytes first, uint64_t second_len, char** second,
                        uint64_t* end) except -2:
        """Claim a message of two frames: ``first`` copied in, ``second_len`` bytes left
        for the second frame at ``second`` (the caller fills them, then ``commit(end)``).

        Returns ``SINK_WROTE``, or ``SINK_FULL``/``SINK_TOO_LARGE``/``SINK_PINNED``
        (nothing claimed).
        """
        return SINK_FULL

    cdef int claim_reference(self, bytes first, BodySource source, uint64_t* end) except -2:
        """Claim a message of two frames whose second is ``source`` itself, by reference
        (its bytes stay where they lie: the reader maps them); ``commit(end)`` publishes it.

        Returns ``SINK_WROTE``, ``SINK_FULL``/``SINK_PINNED`` (as ``claim_pair``) or
        ``SINK_REFUSED`` (not by reference: write a copy); nothing is claimed but on
        ``SINK_WROTE``. This base refuses.
        """
        return SINK_REFUSED

    cdef int commit(self, uint64_t end) noexcept:
        """Publish everything claimed up to ``end``: ``SINK_WROTE`` or ``SINK_WROTE_WAKE``."""
        return SINK_WROTE


cdef class FrameSource:
    """A frame that writes itself where it goes (see the module essay); len() is its size.

    The base is an empty frame; ``wire.RowsFrame`` is the one in use.
    """

    def __len__(self):
        return self.nbytes

    cdef void write_into(self, char* out) noexcept:
        """Write the frame's ``nbytes`` bytes at ``out``."""
        pass
