"""A lock-free producer for the embedded broker: a thread offers, the broker publishes.

Design
------
Prior art: the LMAX Disruptor's single-writer ring in front of a business-logic thread,
and the Kafka producer's accumulator (records wait for their batch, are sent on a full
batch or on ``flush()``).

``Broker.publish`` takes the broker's lock and runs the whole fan-out for every call,
about a microsecond of work per message under the lock. A ``Producer`` splits that: its
thread only copies the body into a single-producer ring (``fastfanout._ext.ring``: no
lock, no broker call, the GIL released for large batches), and the ring is drained into
the dispatcher as one batch — by ``flush()``, when the ring fills up, and on ``close()``.
Drained bodies become blobs straight from the ring's batch form; no Python object is
made per message.

Invariants:

- One thread offers (the ring is single-producer). ``flush()`` may run in any thread:
  the drain side is serialised by the producer's own lock, then the broker's.
- Nothing is lost: a drained batch that the broker refuses (``QueueFull`` from a
  ``reject`` queue, a deleted topic) is kept and published first by the next
  ``flush()``; the error is raised to the caller of ``flush()``. But a batch refused with
  ``MessageTooLarge`` (a message over a queue's ``max_message_size``) can never be
  published as it is: its error is raised once and the batch is dropped
  (``dropped_batches``), so the producer goes on with the messages offered after it.
- Messages offered are published in offer order; publish results (ids) are not reported
  per message — ``flush()`` returns the batch results.
- A producer with a ``group_id`` (a FIFO topic's) gives every message that group: a
  drained batch is written into a publish frame whose records carry it (one native
  pass, ``FrameBuilder.extend_ring``), and that frame is published.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from fastfanout._ext.batches import EncodedBatch, PublishBatch, RingBatch
from fastfanout._ext.codec import count_ring_batch
from fastfanout._ext.ring import Ring
from fastfanout._ext.wire import FrameBuilder, array_rows
from fastfanout.errors import Closed, InvalidArgument, MessageTooLarge

if TYPE_CHECKING:
    from fastfanout.records import Body

PublishRing = Callable[[str, Any], PublishBatch]
"""How a producer publishes a drained batch (or an array batch): the broker's publish."""

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_MAX_BYTES", "Producer"]

DEFAULT_CAPACITY: Final = 65_536
"""Messages a producer's ring holds before an offer has to publish (power of two)."""
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
"""Body bytes a producer's ring holds, in bytes."""
DRAIN_BATCH: Final = 65_536
"""Most messages published per drained batch."""


class Producer:
    """Offers messages to one topic of an embedded broker without taking its lock.

    Made by ``Broker.producer(topic)``. Use from one producing thread.

    Attributes:
        topic: the topic published to.
        group_id: the FIFO group of every message offered, or None.
        offered: messages offered so far.
        published: messages published so far (flushed and accepted by the broker).
        full_count: offers that found the ring full and flushed it first.
        dropped_batches: drained batches refused with ``MessageTooLarge`` and dropped.
        discarded: messages dropped by ``discard()`` (offered, never published).
    """

    def __init__(self, publish_ring: PublishRing, topic: str, capacity: int,
                 max_bytes: int, *, group_id: str | None = None) -> None:
        # the frame drained batches are written into when they carry a group
        self._framing = None if group_id is None else FrameBuilder(group_id)
        self.topic = topic
        self.group_id = group_id
        self._publish_ring = publish_ring
        self._ring = Ring(capacity, max_bytes)
        self._drain_lock = threading.Lock()
        self._held: bytes | None = None   # a drained batch the broker refused
        self._closed = False
        self.offered = 0
        self.published = 0
        self.full_count = 0
        self.dropped_batches = 0
        self.discarded = 0

    def offer(self, body: Body) -> None:
        """Add a message; it is published by the next flush (or when the ring is full).

        Args:
            body: the message body (bytes-like, copied).

        Raises:
            MessageTooLarge: the body is larger than the ring's ``max_bytes``.
            Closed: the producer was closed.
            QueueFull: the ring was full and flushing it was refused (back pressure);
                nothing offered is lost, and this body was not added.
        """
        if self._closed:
            raise Closed(f"the producer of topic {self.topic!r} is closed")
        if not self._ring.offer(body):
            self.full_count += 1
            self.flush()
            if not self._ring.offer(body):
                raise InvalidArgument(
                    "the producer's ring is full right after a flush: is another thread "
                    "offering too? A producer serves one thread")
        self.offered += 1

    def offer_batch(self, bodies: Any) -> PublishBatch:
        """Publish every row of an array batch now, after everything offered before.

        Args:
            bodies: a 2-D (``uint8``, or any C-contiguous rows) or structured numpy array
                (one row = one body), or a ``(buffer, offsets)`` pair (body ``i`` is
                ``buffer[offsets[i]:offsets[i + 1]]``); read natively, no Python object
                per message.

        Returns:
            The batch's results.

        Raises:
            Closed: the producer was closed.
            InvalidArgument: ``bodies`` cannot be read as an array batch (nothing was
                published from it).
            FastFanoutError: what the broker raised for the earlier offers' flush or
                for the batch (all of it or none is published).
        """
        if self._closed:
            raise Closed(f"the producer of topic {self.topic!r} is closed")
        if isinstance(bodies, list):
            raise InvalidArgument("offer_batch takes an array batch; offer() each body of a "
                                  "list")
        array_rows(bodies)   # an array batch only, as the clients' producers take
        self.flush()
        batch = bodies
        if self._framing is not None:
            self._framing.extend_rows(bodies)
            batch = EncodedBatch(self._framing.take())
        results = self._publish_ring(self.topic, batch)
        self.offered += len(results)
        self.published += len(results)
        return results

    def flush(self) -> PublishBatch | None:
        """Publish everything offered so far, in batches; returns the last batch's results.

        Raises:
            MessageTooLarge: a message of a batch is over a queue's ``max_message_size``;
                that batch is dropped (raised once: the next flush goes on after it).
            FastFanoutError: what the broker raised for a batch (it is kept and retried
                first by the next flush, so nothing is lost).
        """
        last: PublishBatch | None = None
        with self._drain_lock:
            while True:
                frame = self._held
                if frame is None:
                    if not len(self._ring):
                        return last
                    frame = self._ring.poll_batch(DRAIN_BATCH)
                self._held = frame
                try:
                    last = self._publish_ring(self.topic, self._batch_of(frame))
                except MessageTooLarge:
                    self._held = None   # refused for good: never sent again
                    self.dropped_batches += 1
                    raise
                self._held = None
                self.published += len(last)

    def _batch_of(self, frame: bytes) -> RingBatch | EncodedBatch:
        """A drained ring batch as the dispatcher takes it (with the group, if any)."""
        if self._framing is None:
            return RingBatch(frame)
        self._framing.extend_ring(frame)
        return EncodedBatch(self._framing.take())

    @property
    def pending(self) -> int:
        """Messages offered and not yet published (the ring plus a refused batch)."""
        return len(self._ring) + self._held_count()

    def _held_count(self) -> int:
        """Messages in the batch the broker refused last (ring batch form)."""
        return 0 if self._held is None else count_ring_batch(self._held)

    def close(self) -> None:
        """Flush what is left, then refuse further offers.

        Raises:
            FastFanoutError: the flush was refused (as ``flush``); the producer stays
                open with its messages, for a later ``close()`` — or ``discard()`` them
                first when they can never be published (their topic was deleted).
        """
        if not self._closed:
            self.flush()
            self._closed = True

    def discard(self) -> int:
        """Drop every message offered and not yet published; returns how many.

        The way out when a flush is refused for good (the topic was deleted, and the
        producer cannot close): the messages are not published, and are counted in
        ``discarded``. Offers made after it are published as usual.
        """
        with self._drain_lock:
            count = len(self._ring) + self._held_count()
            self._held = None
            while len(self._ring):
                self._ring.poll_batch(DRAIN_BATCH)
            self.discarded += count
            return count

    def detach(self) -> None:
        """Refuse further offers without a flush: its broker is closing (``Broker.close``).

        What is offered and not published stays counted in ``pending``.
        """
        self._closed = True

    def __enter__(self) -> Producer:
        if self._closed:
            raise Closed(f"the producer of topic {self.topic!r} is closed")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
