"""The broker's stream side: who listens (XPUB subscriptions), topic sequences, sending.

Stream listeners subscribe to topic prefixes on the broker's XPUB socket; the server reads
each (un)subscription (``XPUB_VERBOSER``: every one, duplicates included) and counts
listeners per prefix, so a publish to a topic nobody listens to builds no stream frame.
Every accepted record of a topic takes the topic's next sequence number whether or not
anyone listens, so a listener counts what it missed as gaps. A send that XPUB_NODROP
refuses (a listener's queue is full) follows the slow-listener policy and is counted.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Final

from fastfanout.errors import WouldBlock
from fastfanout.transport import ServerTransport

__all__ = ["SLOW_LISTENER_POLICIES", "Streams"]

SLOW_LISTENER_POLICIES: Final = ("drop", "wait")
"""``drop``: a stream batch no listener can take now is dropped (counted);
``wait``: the broker waits up to ``stream_wait`` seconds for room, then drops (counted)."""


class Streams:
    """Listeners' prefixes, per-topic sequence numbers and the slow-listener policy.

    Args:
        counters: the server's counters (``stream_batches``, ``stream_messages``,
            ``stream_dropped``, ``stream_dropped.<policy>``).
        slow_listener: one of ``SLOW_LISTENER_POLICIES``.
        stream_wait: seconds the ``wait`` policy waits for room.
    """

    def __init__(self, counters: Counter[str], slow_listener: str, stream_wait: float) -> None:
        self._counters = counters
        self._slow_listener = slow_listener
        self._stream_wait = stream_wait
        self._prefixes: Counter[bytes] = Counter()
        self._listened: dict[str, bool] = {}
        self._sequences: dict[str, int] = {}

    def subscriptions(self) -> int:
        """Listener subscriptions in force (one per listener and prefix)."""
        return sum(self._prefixes.values())

    def read_subscriptions(self, transport: ServerTransport) -> None:
        """Apply every (un)subscription waiting on the XPUB socket."""
        while (change := transport.recv_subscription()) is not None:
            subscribed, prefix = change
            if subscribed:
                self._prefixes[prefix] += 1
            elif self._prefixes[prefix] > 1:
                self._prefixes[prefix] -= 1
            else:
                self._prefixes.pop(prefix, None)
            self._listened.clear()

    def listened(self, topic: str) -> bool:
        """Whether some listener's prefix matches ``topic`` (cached until a change)."""
        listened = self._listened.get(topic)
        if listened is None:
            name = topic.encode()
            listened = self._listened[topic] = any(
                name.startswith(prefix) for prefix in self._prefixes)
        return listened

    def published(self, transport: ServerTransport, topic: str, batch_frame: bytes,
                  result: Any) -> None:
        """Number a publish's accepted records; stream them if anyone listens."""
        sequence = self._sequences.get(topic, 0)
        if not self.listened(topic):
            self._sequences[topic] = sequence + result.accepted
            return
        frame, count = result.stream_frame(
            batch_frame, topic, sequence + 1, round(time.time() * 1_000_000))
        self._sequences[topic] = sequence + count
        if count:
            self._send(transport, [topic.encode(), frame], count)

    def _send(self, transport: ServerTransport, frames: list[bytes], count: int) -> None:
        """Send one stream batch, applying the slow-listener policy (counted)."""
        counters = self._counters
        deadline = time.monotonic() + (self._stream_wait if self._slow_listener == "wait" else 0)
        while True:
            try:
                transport.publish_stream(frames)
                counters["stream_batches"] += 1
                counters["stream_messages"] += count
                return
            except WouldBlock:
                if time.monotonic() >= deadline:
                    counters["stream_dropped"] += count
                    counters[f"stream_dropped.{self._slow_listener}"] += count
                    return
                time.sleep(0.0005)
