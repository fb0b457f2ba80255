"""Frozen statistics records returned by ``Broker.stats()`` (and ``Client.stats()``).

Every counter is O(1) to read: the native core keeps them as it works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DROP_REASONS", "BrokerStats", "QueueStats", "TopicStats"]

DROP_REASONS: tuple[str, ...] = (
    "overflow",
    "retention",
    "max_receives",
    "rejected",
    "dead_letter_full",
    "expired",
)
"""Every reason a queue may drop a message for; each has a counter in ``QueueStats.dropped``."""


@dataclass(frozen=True, slots=True)
class TopicStats:
    """Counters of one topic.

    Attributes:
        published: messages accepted by publish (duplicates excluded).
        deliveries: copies enqueued into subscribed queues.
        unrouted: messages published while no subscription matched.
        subscriptions: current number of subscriptions.
        duplicates: publishes recognised as duplicates (accepted, not delivered).
        filtered_out: copies a subscription's filter policy kept from its queue.
        dedup_entries: keys held by the topic's deduplication window.
        dedup_evicted: keys its window forgot early because it was full (1,000,000).
    """

    published: int = 0
    deliveries: int = 0
    unrouted: int = 0
    subscriptions: int = 0
    duplicates: int = 0
    filtered_out: int = 0
    dedup_entries: int = 0
    dedup_evicted: int = 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters and gauges of one queue (see docs/semantics.md for exact meanings).

    Attributes:
        enqueued: copies that entered the queue.
        delivered: leases handed out by receive (redeliveries included).
        redelivered: deliveries with ``receive_count > 1``.
        acked: messages deleted by ack.
        dead_lettered: messages moved to the dead-letter queue.
        redriven: messages redrive moved out of this queue.
        rejected: messages refused with QueueFull.
        purged: messages removed by purge.
        duplicates: copies not enqueued because the queue's window had their key.
        oversized: messages refused with MessageTooLarge (over ``max_message_size``).
        dedup_entries: keys held by the queue's deduplication window.
        dedup_evicted: keys its window forgot early because it was full (1,000,000).
        groups: FIFO groups currently holding messages.
        dropped: reason -> messages dropped for it (every reason of DROP_REASONS present).
        visible: messages that can be received now.
        leased: messages received and not yet acked, nacked or expired.
        delayed: messages waiting for their due time.
        messages: visible + leased + delayed.
        bytes: body and attribute bytes held.
        oldest_age: seconds since the oldest held message entered the queue (0.0 if empty).
    """

    enqueued: int = 0
    delivered: int = 0
    redelivered: int = 0
    acked: int = 0
    dead_lettered: int = 0
    redriven: int = 0
    rejected: int = 0
    purged: int = 0
    duplicates: int = 0
    oversized: int = 0
    dedup_entries: int = 0
    dedup_evicted: int = 0
    groups: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    visible: int = 0
    leased: int = 0
    delayed: int = 0
    messages: int = 0
    bytes: int = 0
    oldest_age: float = 0.0


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """Statistics of a whole broker.

    Attributes:
        topics: topic name -> its counters.
        queues: queue name -> its counters.
        storage: a durable broker's storage counters (None in memory): journal_bytes,
            segments, records, bytes_written, syncs, store_full (refusals), failures,
            failure, removed_segments, snapshots, and recovery (records, bytes, seconds,
            torn_tail, skipped, bad_segments, messages restored, orphan_records).
    """

    topics: dict[str, TopicStats]
    queues: dict[str, QueueStats]
    storage: dict[str, Any] | None = None
