BLOB_POOL_MAX_BYTES: int

def blob_pool_bytes() -> int:
    """Bytes of freed blobs the pool keeps for reuse (at most ``BLOB_POOL_MAX_BYTES``)."""
def blob_bytes(parts: int, journaled: bool = False, topic: int = -1) -> int:
    """Bytes one blob takes for ``parts`` bytes of body, attributes and ids (with its
    journal part when ``journaled``, and the tail of a topic name of ``topic`` bytes
    unless -1)."""
