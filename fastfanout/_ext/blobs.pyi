BLOB_POOL_MAX_BYTES: int
BLOB_BIG_POOL_MAX_BYTES: int
BLOB_BIG_MAX_SIZE: int

def blob_pool_bytes() -> int:
    """Bytes of freed blobs the pool keeps for reuse (at most ``BLOB_POOL_MAX_BYTES``)."""
def blob_big_pool_stats() -> tuple[int, int]:
    """The big pool (blobs of more than ~500 bytes, up to ``BLOB_BIG_MAX_SIZE``): the bytes
    of freed big blobs it keeps for reuse (at most ``BLOB_BIG_POOL_MAX_BYTES``) and how
    many freed big blobs went back to malloc because it was at that bound."""
def blob_bytes(parts: int, journaled: bool = False, topic: int = -1) -> int:
    """Bytes one blob takes for ``parts`` bytes of body, attributes and ids (with its
    journal part when ``journaled``, and the tail of a topic name of ``topic`` bytes
    unless -1; a big blob's whole class)."""
