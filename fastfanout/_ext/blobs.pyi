BLOB_POOL_MAX_BYTES: int

def blob_pool_bytes() -> int:
    """Bytes of freed blobs the pool keeps for reuse (at most ``BLOB_POOL_MAX_BYTES``)."""
def blob_bytes(parts: int, journaled: bool = False) -> int:
    """Bytes one blob takes for ``parts`` bytes of body, attributes and ids (with its
    journal part when ``journaled``)."""
