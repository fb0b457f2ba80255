"""Frozen statistics records returned by ``Broker.stats()`` (and ``Client.stats()``).

Every counter is O(1) to read: the native core keeps them as it works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DROP_REASONS", "HANDLER_COUNTERS", "HANDLER_TIMES", "MAX_REPORTED_HANDLERS",
           "MAX_REPORT_NAME", "SUBSCRIPTION_DROP_REASONS", "BrokerStats", "QueueStats",
           "ReplyStats", "SubscriptionStats", "TopicStats", "TopologyStats",
           "check_worker_report"]

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
    """Counters of one topic, and the two settings its publishers must meet.

    Attributes:
        published: messages accepted by publish (duplicates excluded).
        deliveries: copies enqueued into subscribed queues.
        unrouted: accepted messages that reached no queue: no subscription, every
            policy filtered them out, or every queue held them as duplicates.
        subscriptions: current number of subscriptions.
        duplicates: publishes recognised as duplicates (accepted, not delivered).
        filtered_out: copies a subscription's filter policy kept from its queue.
        dedup_entries: keys held by the topic's deduplication window.
        dedup_evicted: keys its window forgot early because it was full (1,000,000).
        fifo: the topic is FIFO (its setting): every message needs a ``group_id``.
        content_dedup: the topic deduplicates by body hash (its setting); a FIFO topic
            without it needs a ``dedup_id`` on every message.
    """

    published: int = 0
    deliveries: int = 0
    unrouted: int = 0
    subscriptions: int = 0
    duplicates: int = 0
    filtered_out: int = 0
    dedup_entries: int = 0
    dedup_evicted: int = 0
    fifo: bool = False
    content_dedup: bool = False


SUBSCRIPTION_DROP_REASONS: tuple[str, ...] = ("rejected", "oversized", "duplicates")
"""Why a copy for a subscription did not enter its queue; each has a counter in
``SubscriptionStats.dropped``: ``rejected`` (the queue was full: ``QueueFull``, as the
queue's ``rejected``), ``oversized`` (``MessageTooLarge``, as the queue's ``oversized``),
``duplicates`` (the queue's deduplication window held its key, as the queue's
``duplicates``)."""


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """Counters of one subscription, kept by the native dispatcher as it fans out.

    A queue fed by several subscriptions of one topic (a direct one and a pattern, say)
    takes one copy when any of them lets the message through; each of those
    subscriptions is credited with that copy (and with its queue's refusals).

    Attributes:
        topic: the topic name or pattern it subscribes to.
        queue: the queue it feeds.
        delivered: copies it put into its queue.
        filtered_out: messages of its topics its filter policy did not let through (in
            its topic's ``filtered_out`` too).
        dropped: reason -> copies for it that did not enter its queue (every reason of
            SUBSCRIPTION_DROP_REASONS present).
    """

    topic: str
    queue: str
    delivered: int = 0
    filtered_out: int = 0
    dropped: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(SUBSCRIPTION_DROP_REASONS, 0))


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
class TopologyStats:
    """A broker's topology against its limits (``Broker(max_topics=...)``).

    Attributes:
        topics: topics held now.
        queues: queues held now.
        subscriptions: subscriptions held now (patterns count once).
        max_topics: the most topics it holds.
        max_queues: the most queues it holds.
        max_subscriptions_per_topic: the most subscriptions feeding one topic.
        topics_refused: ``create_topic`` calls refused at ``max_topics``.
        queues_refused: ``create_queue`` calls refused at ``max_queues``.
        subscriptions_refused: ``subscribe`` calls refused at
            ``max_subscriptions_per_topic``.
        pattern_subscriptions: pattern subscriptions held now (in ``subscriptions``).
        max_pattern_subscriptions: the most pattern subscriptions it holds.
        pattern_subscriptions_refused: pattern ``subscribe`` calls refused at
            ``max_pattern_subscriptions``.
    """

    topics: int = 0
    queues: int = 0
    subscriptions: int = 0
    max_topics: int = 0
    max_queues: int = 0
    max_subscriptions_per_topic: int = 0
    topics_refused: int = 0
    queues_refused: int = 0
    subscriptions_refused: int = 0
    pattern_subscriptions: int = 0
    max_pattern_subscriptions: int = 0
    pattern_subscriptions_refused: int = 0


@dataclass(frozen=True, slots=True)
class ReplyStats:
    """An embedded broker's requests and the replies to them (``Broker.request``).

    Attributes:
        requests: requests it published.
        replies: replies its waiting requests took.
        replies_dropped: replies that reached it for no waiting request (too late, a
            second reply, or addressed to another broker's or client's inbox), dropped.
    """

    requests: int = 0
    replies: int = 0
    replies_dropped: int = 0


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """Statistics of a whole broker.

    Attributes:
        topics: topic name -> its counters.
        queues: queue name -> its counters.
        subscriptions: subscription id -> its counters.
        storage: a durable broker's storage counters (None in memory): journal_bytes,
            segments, records, bytes_written, syncs, inline_writes and writer_batches
            (commits written by the server's thread or handed to the journal's writer
            thread), slow_inline_writes, store_full (refusals), store_full_dedup (of
            those, refused while the dedup windows' snapshot heading each segment alone
            passed a segment's share of max_disk_bytes: settles cannot free it),
            dedup_snapshot_bytes (the current segment's header and head snapshot, the
            dedup windows' keys in it), failures,
            failure, kept_settles (settles a full disk's refused batch kept for the
            next write), reserve_bytes (disk held in reserve for a full disk: the
            data directory's file ``reserve``) and reserve_releases (times it was given
            back on a full disk), removed_segments, superseded_segments (segments a start removed
            out of the middle: a start's that held only its snapshot), removal_errors
            (old segments that could not be unlinked: each try), snapshots, and
            recovery (records, bytes, seconds, torn_tail, skipped, bad_headers,
            bad_segments, missing, duplicates, messages restored, orphan_records).
        topology: how many topics, queues and subscriptions against the limits, and the
            calls each limit refused.
        replies: the broker's own requests and the replies they took.
    """

    topics: dict[str, TopicStats]
    queues: dict[str, QueueStats]
    storage: dict[str, Any] | None = None
    subscriptions: dict[int, SubscriptionStats] = field(default_factory=dict)
    topology: TopologyStats = field(default_factory=TopologyStats)
    replies: ReplyStats = field(default_factory=ReplyStats)


# -- worker reports (REPORT / WORKERS on the wire, ``fastfanout stats``) ------------------

MAX_REPORTED_HANDLERS = 1024
"""Most handlers one worker report may name (the server refuses a larger report and counts
it in ``worker_reports_refused``)."""
MAX_REPORT_NAME = 1024
"""Longest worker, handler or queue name in a worker report, characters."""
HANDLER_COUNTERS: tuple[str, ...] = ("processed", "failed", "retried", "dead_lettered",
                                     "timed_out", "in_flight", "extended", "processes")
"""The integer counters of a handler in a worker report (``HandlerStats``' fields)."""
HANDLER_TIMES: tuple[str, ...] = ("p50", "p99")
"""The handler-time percentiles of a handler in a worker report (seconds, or None)."""


def _report_name(value: Any, what: str) -> str:
    if type(value) is not str or not value or len(value) > MAX_REPORT_NAME:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_REPORT_NAME} "
                         f"characters, not {value!r:.80}")
    return value


def check_worker_report(value: Any) -> dict[str, Any]:
    """A worker report as the server keeps it, checked and with only the known keys.

    A report is a map ``{worker: str, pid: int, handlers: {name: {queue: str,
    processed, failed, retried, dead_lettered, timed_out, in_flight, extended, processes:
    int >= 0, p50, p99: seconds or None}}}`` (missing counters are 0, missing times None).

    Raises:
        ValueError: naming what is wrong (the server answers ``invalid_argument``).
    """
    if not isinstance(value, dict):
        raise ValueError(f"a worker report must be a map, not {type(value).__name__}")
    pid = value.get("pid", 0)
    if type(pid) is not int or pid < 0:
        raise ValueError(f"pid must be an integer >= 0, not {pid!r:.80}")
    handlers = value.get("handlers", {})
    if not isinstance(handlers, dict):
        raise ValueError("handlers must be a map of handler name to its counters")
    if len(handlers) > MAX_REPORTED_HANDLERS:
        raise ValueError(f"a worker report names {len(handlers)} handlers, more than "
                         f"MAX_REPORTED_HANDLERS={MAX_REPORTED_HANDLERS}")
    checked: dict[str, Any] = {}
    for name, counters in handlers.items():
        _report_name(name, "a handler name")
        if not isinstance(counters, dict):
            raise ValueError(f"handler {name!r}: its counters must be a map")
        entry: dict[str, Any] = {"queue": _report_name(counters.get("queue"),
                                                       f"handler {name!r}: queue")}
        for key in HANDLER_COUNTERS:
            number = counters.get(key, 0)
            if type(number) is not int or number < 0:
                raise ValueError(f"handler {name!r}: {key} must be an integer >= 0, not "
                                 f"{number!r:.80}")
            entry[key] = number
        for key in HANDLER_TIMES:
            seconds = counters.get(key)
            if seconds is not None and (type(seconds) not in (int, float) or not
                                        0 <= seconds < float("inf")):
                raise ValueError(f"handler {name!r}: {key} must be seconds >= 0 or nil, "
                                 f"not {seconds!r:.80}")
            entry[key] = None if seconds is None else float(seconds)
        checked[name] = entry
    return {"worker": _report_name(value.get("worker"), "worker"), "pid": pid,
            "handlers": checked}
