BLOB_SLAB_CHUNK: int
"""Bytes of one slab chunk (blobs of one size class are carved from it)."""
BLOB_SLAB_MAX: int
"""The largest blob the slab serves, in bytes (header and parts); bigger ones: malloc."""
BLOB_SLAB_KEEP_BYTES: int
"""Bytes of empty chunks the slab keeps resident for reuse; beyond that an empty chunk's
pages go back to the kernel (``blob_slab_stats()["released"]`` counts them)."""

BLOB_BIG_POOL_MAX_BYTES: int
"""Bytes of freed big blobs the big pool keeps at most."""
BLOB_BIG_MAX_SIZE: int
"""Bytes of the biggest blob the big pool keeps (bigger ones: malloc)."""

def blob_big_pool_stats() -> tuple[int, int]:
    """The big pool (blobs past ``BLOB_SLAB_MAX``, up to ``BLOB_BIG_MAX_SIZE``): the bytes
    of freed big blobs it keeps for reuse (at most ``BLOB_BIG_POOL_MAX_BYTES``) and how
    many freed big blobs went back to malloc because it was at that bound."""

def blob_slab_stats() -> dict[str, int]:
    """The blob slab's state: ``live_bytes`` (bytes of the blobs it has handed out and not
    had back), ``chunks`` (chunks holding blobs), ``kept_bytes`` (empty chunks kept
    resident, at most ``BLOB_SLAB_KEEP_BYTES``), ``released_chunks`` (empty chunks whose
    pages are back with the kernel now), ``released`` (chunks released ever: the keep
    limit's counter) and ``mapped_bytes`` (address space mapped for chunks)."""
def blob_bytes(parts: int, journaled: bool = False, topic: int = -1) -> int:
    """Bytes one blob takes for ``parts`` bytes of body, attributes and ids (with its
    journal part when ``journaled``, and the tail of a topic name of ``topic`` bytes
    unless -1), rounded to its slab class (or to what malloc hands out, when bigger than
    ``BLOB_SLAB_MAX``)."""

def in_place_stats() -> tuple[int, int, int, int]:
    """What bodies left in place cost: ``(anchors, evacuations, evacuated_bodies,
    evacuated_bytes)`` — frames still kept by their blobs, frames whose bodies were
    copied out because their ring needed the room, and the bodies and bytes so copied."""

class BodySource:
    """A buffer whose bytes stay where they lie while it lives (a frame read in place by
    a transport, as ``shmring.RingFrame``): blobs may keep their bodies in it."""
