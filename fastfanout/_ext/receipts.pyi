from fastfanout._ext.store import Store

_BytesLike = bytes | bytearray | memoryview

STALE_RECEIPTS_LISTED: int
"""Most stale receipts a ``StaleReceipt`` lists; its message counts them all."""

def receipt_queue(store: Store, receipt: int, session: int = 0) -> int:
    """The queue id of a valid receipt's delivery (raises StaleReceipt otherwise)."""

def ack(store: Store, receipt: int, session: int = 0) -> None:
    """Delete the leased message of ``receipt``."""

def ack_batch(store: Store, receipts: list[int], session: int = 0) -> int:
    """Ack every receipt, or none if any is stale (then StaleReceipt lists the stale)."""

def ack_packed(store: Store, frame: _BytesLike, session: int = 0) -> int:
    """Ack receipts packed as little-endian u64s: all of them, or none if any is stale."""

def ack_frames(store: Store, frames: list[bytes], session: int = 0) -> list[int]:
    """Ack each receipts frame on its own, all of it or none; returns the stale receipts."""

def release_packed(store: Store, frame: _BytesLike, now_us: int, session: int = 0) -> int:
    """Return every still-leased delivery among packed receipts to its queue at once."""

def live_mask(store: Store, frame: _BytesLike, session: int = 0) -> bytes:
    """One byte a packed receipt: 1 if it names a live lease ``session`` may settle."""

def nack(store: Store, receipt: int, delay_us: int, now_us: int, session: int = 0) -> None:
    """End the lease; visible again at once, or after ``delay_us`` (< 0: the backoff)."""

def extend(store: Store, receipt: int, lease_us: int, now_us: int, session: int = 0) -> None:
    """Make the lease end ``lease_us`` from now; 0 returns the message at once."""

def term(store: Store, receipt: int, now_us: int, session: int = 0) -> None:
    """Dead-letter the leased message at once (reason ``rejected``)."""

def nack_batch(store: Store, receipts: list[int] | _BytesLike, delay_us: int, now_us: int,
               session: int = 0) -> int:
    """``nack`` every receipt (a list of ints or packed u64s), or none if any is stale."""

def extend_batch(store: Store, receipts: list[int] | _BytesLike, lease_us: int, now_us: int,
                 session: int = 0) -> int:
    """``extend`` every receipt (a list of ints or packed u64s), or none if any is stale."""

def term_batch(store: Store, receipts: list[int] | _BytesLike, now_us: int,
               session: int = 0) -> int:
    """``term`` every receipt (a list of ints or packed u64s), or none if any is stale."""
