"""The deduplication window of the reference model: a dict of keys and their expiry.

A key is ``("id", dedup_id)`` for a message with a dedup id, else ``("body", body)``
under content deduplication: the model keeps the body itself where the broker keeps a
128-bit hash of it (equal bodies, equal keys; a hash collision is the broker's risk,
not a rule). The two kinds never equal each other: a dedup id is not a body.

A key lives for exactly ``window_us`` after it was remembered; ``len`` counts the keys
whose window has not ended. At ``capacity`` live keys the oldest is forgotten early and
counted in ``evicted``.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CAPACITY", "DedupKey", "DedupWindow"]

DEFAULT_CAPACITY = 1_000_000
"""Live keys one window holds before it forgets the oldest early (docs/semantics.md)."""

DedupKey = tuple[str, str | bytes]
"""``("id", dedup_id)`` or ``("body", body)``."""


class DedupWindow:
    """Keys remembered for ``window_us`` microseconds, at most ``capacity`` at once.

    Args:
        window_us: how long a key is remembered, microseconds.
        capacity: most live keys.
    """

    def __init__(self, window_us: int, capacity: int = DEFAULT_CAPACITY) -> None:
        self.window_us = window_us
        self.capacity = capacity
        # key -> (message id, expiry); insertion order is expiry order (one window length)
        self.keys: dict[DedupKey, tuple[int, int]] = {}
        self.evicted = 0

    def expire(self, now_us: int) -> None:
        """Forget every key whose window ended at or before ``now_us``."""
        for key in [key for key, (_, expires_us) in self.keys.items() if expires_us <= now_us]:
            del self.keys[key]

    def lookup(self, key: DedupKey, now_us: int) -> int | None:
        """The message id remembered for ``key``, or None (absent or its window ended)."""
        found = self.keys.get(key)
        if found is None or found[1] <= now_us:
            return None
        return found[0]

    def remember(self, key: DedupKey, message_id: int, now_us: int) -> None:
        """Remember ``key`` for ``message_id`` from ``now_us`` on, for the whole window."""
        self.expire(now_us)
        if key not in self.keys and len(self.keys) >= self.capacity:
            del self.keys[next(iter(self.keys))]
            self.evicted += 1
        self.keys.pop(key, None)
        self.keys[key] = (message_id, now_us + self.window_us)

    def size(self, now_us: int) -> int:
        """Keys whose window has not ended at ``now_us``."""
        return sum(1 for _, expires_us in self.keys.values() if expires_us > now_us)
