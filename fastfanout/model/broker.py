"""The reference model of the broker semantics: the test oracle, never a runtime fallback.

Design
------
``ModelBroker`` implements ``docs/semantics.md`` as plainly as Python allows, so that a
reader can check it against the page line by line; the hypothesis state machines in
``tests/property/`` drive it and the native ``Broker`` with the same calls and demand
equal answers. Speed is no goal: every operation scans lists, timers are found by
scanning every pending deadline, nothing is cached that could be recomputed.

Prior art: the reference models that yarl and frozenlist test their C accelerators
against, and the SQS/SNS documentation where the semantics page is silent.

Invariants (``_check`` verifies them, the state machines call it after every step):
- every message copy is in exactly one state: ``visible``, ``leased`` (has a live
  receipt and a deadline) or ``delayed`` (has a deadline);
- a visible copy is listed (receivable) unless it is a FIFO copy held back by its group;
  a FIFO group has at most one leased copy, its head, and lists at most its head;
- a receipt is live exactly while the delivery it names holds its lease;
- per queue ``enqueued == messages + acked + purged + dead_lettered + redriven +
  sum(dropped)``.

Choices where the page is silent (each a reading a demanding SQS user would expect, and
the one the native broker makes):
- times reported to the user (``timestamp``, dead-letter times) are the internal
  microsecond times divided by 1e6, not the raw float the clock returned;
- a failed publish consumes no message id and remembers no dedup key;
- ``delay`` and ``deliver_at`` together are refused (``InvalidArgument``); a
  ``deliver_at`` in the past means no delay, more than 365 days ahead is refused;
- dead-lettering and redrive do not check the target's ``max_message_size`` (the message
  was accepted once) nor its deduplication window; they do respect its room;
- a publish is checked in this order, the first fault raising: every entry's arguments;
  the topic's FIFO rules; then per target queue in subscription order, per entry, its
  FIFO rules, its window (a duplicate is counted at once) and its ``max_message_size``
  (one refused message counted ``oversized``), then the room for the copies it takes;
- a target queue checks only the copies it takes: not those its policy filtered out or
  its window found duplicate;
- ``QueueStats.rejected`` counts the copies the first full queue would have taken;
- a copy dead-lettered into a FIFO queue without a group id joins the group ``""``;
- a redriven copy is an ordinary message again: its TTL applies once more;
- ``extend(receipt, 0)`` acts as ``nack(receipt)``, so the redelivery backoff applies;
- ``close()`` is idempotent; every other call on a closed broker raises ``Closed``
  before any argument is checked.

Restart (``restart()``, docs/semantics.md "Durable queues"): what a broker with a data
directory holds after it is closed and opened again on the same directory, as the
journal records it. Where the issue is silent the model follows the native broker: a
durable queue's copies come back in the order they entered it (a nack's move to the
tail is not kept); a copy that never waited is visible at once, leased ones too, without
a redelivery backoff; a copy that waited (it entered delayed, or a nack or backoff
delayed it) waits again for its last due time, so once that passed it is visible right
after the others; retention still counts from the first entry; every stats counter
starts afresh (``enqueued`` = copies held).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from fastfanout.errors import (
    AlreadyExists,
    Closed,
    InvalidArgument,
    NotFound,
    StaleReceipt,
)
from fastfanout.model.checks import (
    MAX_DEDUP_WINDOW_US,
    MAX_DELAY_US,
    MAX_MESSAGE_SIZE_LIMIT,
    MAX_PRIORITY,
    MAX_RECEIVE_BATCH,
    MAX_VISIBILITY_US,
    MAX_WAIT_US,
    OVERFLOW_POLICIES,
    US,
    backoff_steps_us,
    check_flag,
    check_iterable,
    check_name,
    check_receipt,
    duration_us,
    is_number,
    optional_count,
    parse_entry,
    to_us,
)
from fastfanout.model.dedup import DEFAULT_CAPACITY, DedupWindow
from fastfanout.model.publish import (
    Subscription,
    SubscriptionCounters,
    Topic,
    check_batch,
    room_plan,
)
from fastfanout.model.queue import Copy, Queue, Settings
from fastfanout.records import Attributes, DeadLetterInfo, ExponentialBackoff, PublishResult
from fastfanout.semantics.filter_policy import SCOPES, parse_policy
from fastfanout.semantics.topic_pattern import is_pattern, pattern_matches, validate_pattern
from fastfanout.settings import finite
from fastfanout.stats import (
    SUBSCRIPTION_DROP_REASONS,
    BrokerStats,
    QueueStats,
    SubscriptionStats,
    TopicStats,
)

__all__ = ["ModelBroker", "ModelMessage"]


@dataclass(frozen=True)
class ModelMessage:
    """One delivery returned by ``ModelBroker.receive`` (the fields of the native ``Message``).

    Attributes:
        id: the broker-unique message id (shared by all copies).
        body: the body as published.
        attributes: the attributes as published (``{}`` when none).
        timestamp: clock seconds when the message was published or sent.
        receive_count: deliveries of this copy so far, this one included.
        receipt: the receipt naming this delivery.
        queue: the queue it was received from.
        dead_letter: why it reached this dead-letter queue, or None.
        group_id: its FIFO group id, or None.
        dedup_id: its deduplication id, or None.
        priority: the priority it was published with (0 when none).
    """

    id: int
    body: bytes
    attributes: Attributes
    timestamp: float
    receive_count: int
    receipt: int
    queue: str
    dead_letter: DeadLetterInfo | None
    group_id: str | None = None
    dedup_id: str | None = None
    priority: int = 0


_FIXED_QUEUE_SETTINGS = frozenset(
    {"max_priority", "fifo", "content_dedup", "dedup_window", "durable"})
"""The settings ``set_queue_settings`` does not change (a queue's own for life)."""


class ModelBroker:
    """A slow, obviously correct broker following docs/semantics.md (the test oracle).

    Args:
        clock: a callable returning the time in seconds (float); ``time.time`` by default.
        dedup_capacity: live keys per deduplication window before the oldest is
            forgotten early (1,000,000 as the broker; smaller for tests).
        data_dir: None for a broker in memory; any other value makes the model act as a
            broker with a data directory (queues durable by default, ``restart()``
            keeps them). The model writes nothing there.

    The API and the errors are those of ``fastfanout.Broker``; ``receive(wait=...)``
    only validates ``wait`` (the model has no threads, so it never blocks).
    """

    def __init__(self, *, clock: Callable[[], float] | None = None,
                 dedup_capacity: int = DEFAULT_CAPACITY,
                 data_dir: str | os.PathLike[str] | None = None) -> None:
        if clock is not None and not callable(clock):
            raise InvalidArgument(f"clock must be a callable returning seconds, got {clock!r}")
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        self._dedup_capacity = dedup_capacity
        self._durable = data_dir is not None
        self._closed = False
        self._topics: dict[str, Topic] = {}
        self._subscriptions: dict[int, Subscription] = {}
        self._subscription_counters: dict[int, SubscriptionCounters] = {}
        self._queues: dict[str, Queue] = {}
        self._leases: dict[int, Copy] = {}  # live receipt -> leased copy
        self._next_message_id = 1
        self._next_subscription_id = 1
        self._next_receipt = 1
        self._next_armed = 0

    # -- time --------------------------------------------------------------------------

    def _begin(self) -> int:
        """Refuse calls on a closed broker, read the clock and advance to it."""
        if self._closed:
            raise Closed("the broker is closed")
        now = self._clock()
        if not is_number(now) or not finite(now):
            raise InvalidArgument(f"the clock returned {now!r}; it must return finite seconds")
        now_us = to_us(now)
        self._advance(now_us)
        return now_us

    def _advance(self, now_us: int) -> None:
        # 1. retention, oldest first (queues never affect each other here).
        for queue in self._queues.values():
            for copy in [copy for copy in queue.copies
                         if copy.entered_us + queue.retention_us <= now_us]:
                self._remove(queue, copy)
                queue.dropped["retention"] += 1
        # 2. timers, one at a time in order of (due time, arming order): an expired lease
        # with a backoff arms a new timer, which may itself be due already.
        while True:
            due = [(copy.due_us, copy.armed, queue, copy)
                   for queue in self._queues.values() for copy in queue.copies
                   if copy.state in ("leased", "delayed") and copy.due_us <= now_us]
            if not due:
                return
            _, _, queue, copy = min(due, key=lambda item: item[:2])
            if copy.state == "leased":
                self._end_lease(copy)
                queue.release_group(copy)
                backoff_us = queue.backoff_after_failure(copy)
                if backoff_us > 0:  # counted from the lease end
                    self._arm(copy, "delayed", copy.due_us + backoff_us)
                    continue
            queue.make_visible(copy)

    def _arm(self, copy: Copy, state: str, due_us: int) -> None:
        if state == "delayed":
            copy.journal_due_us = due_us
        copy.state = state
        copy.due_us = due_us
        copy.armed = self._next_armed
        self._next_armed += 1

    def _end_lease(self, copy: Copy) -> None:
        if copy.receipt is not None:
            del self._leases[copy.receipt]
            copy.receipt = None

    def _remove(self, queue: Queue, copy: Copy) -> None:
        """Take a copy out of its queue, whatever its state (counting is the caller's)."""
        self._end_lease(copy)
        queue.detach(copy)

    # -- enqueueing, room and dead letters ---------------------------------------------

    def _enqueue(self, queue: Queue, copy: Copy, due_us: int, now_us: int) -> None:
        copy.journal_due_us = due_us
        queue.add(copy, now_us)
        if due_us > now_us:
            self._arm(copy, "delayed", due_us)
        else:
            queue.make_visible(copy)


    def _evict(self, queue: Queue, evictions: list[Copy], now_us: int,
               deferred: list[tuple[Queue, Copy]] | None = None) -> None:
        """Remove copies to make room: dropped, or dead-lettered (now, or into ``deferred``)."""
        for copy in evictions:
            self._remove(queue, copy)
            if queue.settings.overflow != "dead_letter":
                queue.dropped["overflow"] += 1
            elif deferred is not None:
                deferred.append((queue, copy))
            else:
                self._to_dead_letter_queue(queue, copy, "overflow", now_us)

    def _dead_letter(self, queue: Queue, copy: Copy, reason: str, now_us: int) -> None:
        """Move a copy to its queue's DLQ (or drop it, counted, when there is none/no room)."""
        self._remove(queue, copy)
        self._to_dead_letter_queue(queue, copy, reason, now_us)

    def _to_dead_letter_queue(self, queue: Queue, copy: Copy, reason: str,
                              now_us: int) -> None:
        dlq_name = queue.settings.dead_letter_queue
        if dlq_name is None:
            queue.dropped[reason] += 1
            return
        dlq = self._queues[dlq_name]
        evictions = room_plan(dlq, 1, copy.size)
        if evictions is None:
            queue.dropped["dead_letter_full"] += 1
            dlq.refused_moves += 1
            return
        self._evict(dlq, evictions, now_us)
        info = DeadLetterInfo(
            reason=reason, source_queue=queue.name, receive_count=copy.receive_count,
            first_receive_time=None if copy.first_receive_us is None
            else copy.first_receive_us / US,
            last_receive_time=None if copy.last_receive_us is None
            else copy.last_receive_us / US,
            time=now_us / US)
        self._enqueue(dlq, copy.moved(info), now_us, now_us)
        queue.dead_lettered += 1

    # -- topics ------------------------------------------------------------------------

    def create_topic(self, name: str, *, fifo: bool = False, content_dedup: bool = False,
                     dedup_window: float = 300.0) -> None:
        """Create a topic; a no-op if it exists with equal settings.

        Args:
            name: 1 to 256 characters from ``A-Z a-z 0-9 _ . : -``.
            fifo: every message needs a ``group_id`` (and a ``dedup_id`` unless
                ``content_dedup``); it feeds FIFO queues only.
            content_dedup: deduplicate messages without a ``dedup_id`` by their body.
            dedup_window: seconds a key is remembered (1 s to 1 day).

        Raises:
            AlreadyExists: the topic exists with other settings.
        """
        self._begin()
        check_name("topic", name)
        settings = (check_flag("fifo", fifo), check_flag("content_dedup", content_dedup),
                    dedup_window)
        window_us = duration_us("dedup_window", dedup_window, MAX_DEDUP_WINDOW_US, US)
        existing = self._topics.get(name)
        if existing is not None:
            if existing.settings != settings:
                raise AlreadyExists(f"topic {name!r} exists with other settings")
            return
        self._topics[name] = Topic(settings, DedupWindow(window_us, self._dedup_capacity))

    def _topic(self, name: object) -> str:
        checked = check_name("topic", name)
        if checked not in self._topics:
            raise NotFound(f"topic {checked!r} does not exist")
        return checked

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its direct subscriptions (copies already enqueued stay)."""
        self._begin()
        del self._topics[self._topic(name)]
        for sid in [sid for sid, sub in self._subscriptions.items() if sub.topic == name]:
            del self._subscriptions[sid], self._subscription_counters[sid]

    def list_topics(self) -> list[str]:
        """Names of every topic, sorted."""
        self._begin()
        return sorted(self._topics)

    # -- queues ------------------------------------------------------------------------

    def _queue(self, name: object, kind: str = "queue") -> Queue:
        queue = self._queues.get(check_name(kind, name))
        if queue is None:
            raise NotFound(f"queue {name!r} does not exist")
        return queue

    def _checked_queue_settings(
        self, name: str, visibility_timeout: float, max_receive_count: int | None,
        dead_letter_queue: str | None, delay: float, max_messages: int | None,
        max_bytes: int | None, max_message_size: int, retention: float, overflow: str,
        max_priority: int, fifo: bool, content_dedup: bool, dedup_window: float,
        redelivery_backoff: tuple[float, ...] | ExponentialBackoff | None,
        durable: bool | None,
    ) -> tuple[Settings, tuple[int, ...]]:
        """A queue's settings checked (InvalidArgument), and its backoff in µs."""
        check_name("queue", name)
        duration_us("visibility_timeout", visibility_timeout, MAX_VISIBILITY_US)
        duration_us("delay", delay, MAX_DELAY_US)
        if (duration_us("delay", delay, MAX_DELAY_US)
                >= duration_us("retention", retention, MAX_DELAY_US, minimum_us=US)):
            raise InvalidArgument(
                f"queue {name!r}: delay={delay!r} s is not shorter than retention="
                f"{retention!r} s")
        optional_count("max_receive_count", max_receive_count)
        optional_count("max_messages", max_messages)
        optional_count("max_bytes", max_bytes)
        if (type(max_message_size) is not int
                or not 1 <= max_message_size <= MAX_MESSAGE_SIZE_LIMIT):
            raise InvalidArgument(
                f"max_message_size={max_message_size!r} must be an int from 1 to "
                f"{MAX_MESSAGE_SIZE_LIMIT}")
        if overflow not in OVERFLOW_POLICIES:
            raise InvalidArgument(f"overflow={overflow!r} must be one of {OVERFLOW_POLICIES}")
        if type(max_priority) is not int or not 0 <= max_priority <= MAX_PRIORITY:
            raise InvalidArgument(f"max_priority={max_priority!r} must be an int from 0 to 255")
        check_flag("fifo", fifo)
        check_flag("content_dedup", content_dedup)
        if fifo and max_priority:
            raise InvalidArgument(f"queue {name!r}: priorities do not apply to FIFO queues")
        duration_us("dedup_window", dedup_window, MAX_DEDUP_WINDOW_US, US)
        if durable is None:
            durable = self._durable
        check_flag("durable", durable)
        if durable and not self._durable:
            raise InvalidArgument(
                f"queue {name!r}: durable=True needs a broker with a data directory")
        backoff_us = backoff_steps_us(redelivery_backoff)
        if isinstance(redelivery_backoff, list):
            redelivery_backoff = tuple(redelivery_backoff)
        if dead_letter_queue is not None:
            check_name("dead_letter_queue", dead_letter_queue)
            if dead_letter_queue == name:
                raise InvalidArgument(f"queue {name!r} cannot be its own dead-letter queue")
        elif overflow == "dead_letter":
            raise InvalidArgument("overflow='dead_letter' requires a dead_letter_queue")
        settings = Settings(visibility_timeout, max_receive_count, dead_letter_queue, delay,
                            max_messages, max_bytes, max_message_size, retention, overflow,
                            max_priority, fifo, content_dedup, dedup_window,
                            redelivery_backoff, durable)
        return settings, backoff_us

    def create_queue(
        self,
        name: str,
        *,
        visibility_timeout: float = 30.0,
        max_receive_count: int | None = None,
        dead_letter_queue: str | None = None,
        delay: float = 0.0,
        max_messages: int | None = None,
        max_bytes: int | None = None,
        max_message_size: int = 1_048_576,
        retention: float = 345_600.0,
        overflow: str = "reject",
        max_priority: int = 0,
        fifo: bool = False,
        content_dedup: bool = False,
        dedup_window: float = 300.0,
        redelivery_backoff: tuple[float, ...] | ExponentialBackoff | None = None,
        durable: bool | None = None,
    ) -> None:
        """Create a queue; a no-op if it exists with equal settings.

        Args:
            name: 1 to 256 characters from ``A-Z a-z 0-9 _ . : -``.
            visibility_timeout: default lease of a receive, seconds (0 to 43,200).
            max_receive_count: deliveries allowed before dead-lettering (None: no limit).
            dead_letter_queue: name of an existing queue that takes dead letters.
            delay: seconds every new message waits before it is visible (0 to 1 year).
            max_messages: most messages held (visible + leased + delayed), or None.
            max_bytes: most body + attribute bytes held, or None.
            max_message_size: largest message in bytes (1 to 256 MiB).
            retention: seconds a message may stay in the queue (1 s to 1 year).
            overflow: ``reject``, ``drop_oldest`` or ``dead_letter``.
            max_priority: highest priority level, 0 to 255 (0: none); not with ``fifo``.
            fifo: strict order per group, one leased message per group.
            content_dedup: deduplicate messages without a ``dedup_id`` by their body.
            dedup_window: seconds a key is remembered (1 s to 1 day).
            redelivery_backoff: waits in seconds after failed delivery 1, 2, ... (the
                last repeats), or an ``ExponentialBackoff``.
            durable: its messages survive a restart; None: True with a data directory.

        Raises:
            InvalidArgument: a setting is out of range or malformed, or ``durable=True``
                on a broker in memory.
            AlreadyExists: the queue exists with other settings.
            NotFound: ``dead_letter_queue`` does not exist.
        """
        self._begin()
        settings, backoff_us = self._checked_queue_settings(
            name, visibility_timeout, max_receive_count, dead_letter_queue, delay,
            max_messages, max_bytes, max_message_size, retention, overflow, max_priority,
            fifo, content_dedup, dedup_window, redelivery_backoff, durable)
        existing = self._queues.get(name)
        if existing is not None:
            if existing.settings != settings:
                raise AlreadyExists(f"queue {name!r} exists with other settings")
            return
        if dead_letter_queue is not None:
            self._queue(dead_letter_queue, "dead_letter_queue")
        self._queues[name] = Queue(name, settings, backoff_us, self._dedup_capacity)

    def delete_queue(self, name: str) -> None:
        """Delete a queue, its messages and its subscriptions; its receipts become stale.

        Raises:
            InvalidArgument: the queue is another queue's dead-letter queue.
        """
        self._begin()
        queue = self._queue(name)
        users = sorted(other.name for other in self._queues.values()
                       if other.settings.dead_letter_queue == name)
        if users:
            raise InvalidArgument(f"queue {name!r} is the dead-letter queue of {users}")
        for copy in list(queue.copies):
            self._remove(queue, copy)
        for sid in [sid for sid, sub in self._subscriptions.items() if sub.queue == name]:
            del self._subscriptions[sid], self._subscription_counters[sid]
        del self._queues[name]

    def set_queue_settings(self, /, name: str, **changes: Any) -> Settings:
        """Change settings of queue ``name``; returns all of its settings after.

        Those that may change: visibility timeout, receive limit, dead-letter queue,
        delay, the three bounds, retention, overflow and backoff; each applies from the
        next operation that reads it (retention to the held copies too). The others may
        only be given their present value.

        Raises:
            NotFound: the queue or the new dead-letter queue does not exist.
            InvalidArgument: an unknown setting, one that cannot change, a bad value, or
                a dead-letter queue leading back to this queue.
        """
        self._begin()
        queue = self._queue(name)
        present = {field.name: getattr(queue.settings, field.name)
                   for field in dataclasses.fields(queue.settings)}
        for key, value in changes.items():
            if key not in present:
                raise InvalidArgument(f"{key!r} is not a queue setting")
            if key in _FIXED_QUEUE_SETTINGS and (
                    type(value) is not type(present[key]) or value != present[key]):
                raise InvalidArgument(f"queue {name!r}: {key} cannot change")
        settings, backoff_us = self._checked_queue_settings(name, **{**present, **changes})
        hop = settings.dead_letter_queue
        if hop is not None:
            self._queue(hop, "dead_letter_queue")
        while hop is not None:
            if hop == name:
                raise InvalidArgument(f"queue {name!r}: its dead-letter queues lead back")
            hop = self._queues[hop].settings.dead_letter_queue
        queue.change_settings(settings, backoff_us)
        return settings

    def list_queues(self) -> list[str]:
        """Names of every queue, sorted."""
        self._begin()
        return sorted(self._queues)

    # -- subscriptions -----------------------------------------------------------------

    @staticmethod
    def _compile(policy: object, scope: object) -> tuple[Any, str | None]:
        """Validate a policy; returns it decoded and as sorted JSON (None: no filter)."""
        if scope not in SCOPES:
            raise InvalidArgument(f"filter_scope must be one of {SCOPES}, got {scope!r}")
        if policy is None:
            return None, None
        parse_policy(policy, scope)  # type: ignore[arg-type]
        decoded = json.loads(policy) if isinstance(policy, str | bytes) else dict(
            policy)  # type: ignore[call-overload]
        return decoded, json.dumps(decoded, sort_keys=True)

    def subscribe(self, topic: str, queue: str, *,
                  filter_policy: Mapping[str, Any] | str | None = None,
                  filter_scope: str = "attributes") -> int:
        """Subscribe a queue to a topic, or to every topic a pattern matches.

        Args:
            topic: a topic name, or a pattern (``*`` one token, ``>`` one or more).
            queue: the queue that takes the copies.
            filter_policy: an SNS filter policy (dict or JSON text); None takes all.
            filter_scope: ``"attributes"`` or ``"body"``.

        Returns:
            The subscription id (the existing one for the same pair and policy).

        Raises:
            InvalidFilterPolicy: the policy is malformed.
            InvalidArgument: a FIFO topic and a standard queue, or the reverse.
            AlreadyExists: the pair is subscribed with another policy.
        """
        self._begin()
        policy, canonical = self._compile(filter_policy, filter_scope)
        if type(topic) is str and is_pattern(topic):
            validate_pattern(topic)
        else:
            topic_fifo = self._topics[self._topic(topic)].fifo
            known = self._queues.get(queue) if type(queue) is str else None
            if topic_fifo != (known is not None and known.fifo):
                self._queue(queue)
                raise InvalidArgument(
                    f"topic {topic!r} and queue {queue!r}: a FIFO topic feeds FIFO queues "
                    f"only, and FIFO queues subscribe to FIFO topics only")
        self._queue(queue)
        for sid, sub in self._subscriptions.items():
            if (sub.topic, sub.queue) == (topic, queue):
                if (sub.canonical, sub.scope) != (canonical, filter_scope):
                    raise AlreadyExists(
                        f"queue {queue!r} is subscribed to {topic!r} with another policy")
                return sid
        sid = self._next_subscription_id
        self._next_subscription_id += 1
        self._subscriptions[sid] = Subscription(topic, queue, policy, canonical, filter_scope)
        self._subscription_counters[sid] = SubscriptionCounters()
        return sid

    def _subscription(self, subscription_id: object) -> Subscription:
        if type(subscription_id) is not int:
            raise InvalidArgument(f"subscription_id {subscription_id!r} must be an int")
        sub = self._subscriptions.get(subscription_id)
        if sub is None:
            raise NotFound(f"subscription {subscription_id} does not exist")
        return sub

    def set_filter_policy(self, subscription_id: int,
                          filter_policy: Mapping[str, Any] | str | None, *,
                          filter_scope: str | None = None) -> None:
        """Replace a subscription's filter policy; it applies from the next publish on.

        ``filter_scope`` None keeps the subscription's scope.
        """
        self._begin()
        if filter_scope is not None:
            policy, canonical = self._compile(filter_policy, filter_scope)
        sub = self._subscription(subscription_id)
        if filter_scope is None:
            filter_scope = sub.scope
            policy, canonical = self._compile(filter_policy, filter_scope)
        self._subscriptions[subscription_id] = Subscription(
            sub.topic, sub.queue, policy, canonical, filter_scope)

    def unsubscribe(self, subscription_id: int) -> None:
        """Remove a subscription.

        Raises:
            InvalidArgument: the id is not an int.
            NotFound: no subscription has this id.
        """
        self._begin()
        self._subscription(subscription_id)
        del self._subscriptions[subscription_id], self._subscription_counters[subscription_id]

    def list_subscriptions(self) -> dict[int, tuple[str, str]]:
        """Every subscription: id -> (topic or pattern, queue)."""
        self._begin()
        return {sid: (sub.topic, sub.queue) for sid, sub in self._subscriptions.items()}

    def _feeding(self, topic: str) -> list[tuple[int, Queue, Subscription]]:
        """The subscriptions feeding a topic (id, queue, subscription), in id order.

        Direct ones, and matching patterns whose queue has the topic's FIFO-ness.
        """
        fifo = self._topics[topic].fifo
        return [(sid, self._queues[sub.queue], sub)
                for sid, sub in sorted(self._subscriptions.items())
                if (sub.topic == topic
                    or (is_pattern(sub.topic) and pattern_matches(sub.topic, topic)))
                and self._queues[sub.queue].fifo == fifo]

    # -- publish and send --------------------------------------------------------------

    def _deliver(self, targets: list[tuple[Queue, list[Subscription] | None]],
                 topic: Topic | None,
                 items: list[object], now_us: int, *,
                 feeders: list[list[SubscriptionCounters]] | None = None,
                 **single: object) -> list[PublishResult]:
        """Check a publish or send, then enqueue every copy, all or nothing.

        ``feeders``: per target, the counters of the subscriptions feeding it (a publish).
        """
        entries = [parse_entry(item, now_us, **single) for item in items]
        if not entries:
            return []
        batch = check_batch(entries, targets, topic, now_us, feeders)
        count = len(entries)
        ids = [0] * count
        for index in range(count):
            if not batch.duplicate(index):
                ids[index] = self._next_message_id
                self._next_message_id += 1
        for index in range(count):
            original = batch.from_batch[index]
            ids[index] = (batch.from_window[index] or ids[index] if original is None
                          else ids[original])
        for index, entry in enumerate(entries):
            key = batch.keys[index]
            if (topic is not None and key is not None and not batch.duplicate(index)
                    and (entry.dedup_id is not None or topic.content_dedup)):
                topic.window.remember(key, ids[index], now_us)
        deliveries = [0] * count
        filtered_out = 0
        # The room each target was found to have is promised to this publish: overflow
        # dead letters are moved only once every copy is in, so they cannot take the room
        # of a later target (a DLQ subscribed beside its source) past its bound.
        deferred: list[tuple[Queue, Copy]] = []
        for position, (queue, _) in enumerate(targets):
            skip = batch.skip[position]
            taken = [index for index in range(count)
                     if skip[index] is None and not batch.duplicate(index)]
            target_filtered = sum(1 for index in range(count)
                                  if skip[index] == "filtered" and not batch.duplicate(index))
            filtered_out += target_filtered
            # a refused batch counts none (until 2026-12-05 its checks counted them)
            target_duplicates = sum(1 for index in range(count) if skip[index] == "duplicate")
            queue.duplicates += target_duplicates
            for counters in [] if feeders is None else feeders[position]:
                counters.filtered_out += target_filtered
                counters.delivered += len(taken)
                counters.duplicates += target_duplicates
            if not taken:
                continue
            evictions = room_plan(queue, len(taken), sum(entries[i].size for i in taken))
            self._evict(queue, evictions or [], now_us, deferred)
            for index in taken:
                entry = entries[index]
                key = batch.keys[index]
                if key is not None and (
                        entry.dedup_id is not None or queue.settings.content_dedup
                        or (topic is not None and topic.content_dedup)):
                    queue.window.remember(key, ids[index], now_us)
                copy = Copy(id=ids[index], body=entry.body, attributes=entry.attributes,
                            timestamp_us=now_us, size=entry.size, dead_letter=None,
                            priority=entry.priority, expires_us=entry.expires_us,
                            group_id=entry.group_id, dedup_id=entry.dedup_id)
                due_us = now_us + queue.delay_us if entry.due_us is None else entry.due_us
                self._enqueue(queue, copy, due_us, now_us)
                deliveries[index] += 1
        for queue, copy in deferred:
            self._to_dead_letter_queue(queue, copy, "overflow", now_us)
        if topic is not None:
            accepted = [index for index in range(count) if not batch.duplicate(index)]
            topic.published += len(accepted)
            topic.deliveries += sum(deliveries)
            topic.duplicates += count - len(accepted)
            topic.filtered_out += filtered_out
            topic.unrouted += sum(1 for index in accepted if deliveries[index] == 0)
        return [PublishResult(ids[index], deliveries[index], batch.duplicate(index))
                for index in range(count)]

    def _publish(self, topic: str, items: list[object], **single: object
                 ) -> list[PublishResult]:
        now_us = self._begin()
        record = self._topics[self._topic(topic)]
        # One copy per queue however many of its subscriptions feed the topic; it goes if
        # any of them lets it through (the first one's place in subscription order).
        merged: dict[str, tuple[Queue, list[Subscription]]] = {}
        feeding: dict[str, list[SubscriptionCounters]] = {}
        for sid, queue, sub in self._feeding(topic):
            merged.setdefault(queue.name, (queue, []))[1].append(sub)
            feeding.setdefault(queue.name, []).append(self._subscription_counters[sid])
        targets: list[tuple[Queue, list[Subscription] | None]] = list(merged.values())
        return self._deliver(targets, record, items, now_us, feeders=list(feeding.values()),
                             **single)

    def publish(self, topic: str, body: bytes, *, attributes: Attributes | None = None,
                delay: float | None = None, deliver_at: float | datetime | None = None,
                group_id: str | None = None, dedup_id: str | None = None,
                priority: int | None = None, ttl: float | None = None) -> PublishResult:
        """Publish one message: a copy into every subscribed queue its policy lets through.

        Args:
            topic: the topic name.
            body: the body (bytes-like; copied).
            attributes: up to 10 attributes (str, int, float, bytes or list[str] values).
            delay: seconds before the copies are visible (overrides the queues' delays).
            deliver_at: clock seconds (or an aware datetime) when the copies are visible.
            group_id: the FIFO group (FIFO topics and queues need one).
            dedup_id: the deduplication id; a repeat inside a window is not delivered.
            priority: 0 to 255 (a queue clamps it to its ``max_priority``).
            ttl: seconds after which a copy reaching the head of a queue expires.

        Raises:
            MessageTooLarge: the message exceeds a target queue's ``max_message_size``.
            QueueFull: a target queue has no room (nothing is enqueued anywhere).
        """
        return self._publish(topic, [body], attributes=attributes, delay=delay,
                             deliver_at=deliver_at, group_id=group_id, dedup_id=dedup_id,
                             priority=priority, ttl=ttl)[0]

    def publish_batch(self, topic: str, entries: Iterable[object]) -> list[PublishResult]:
        """Publish many messages (bodies or PublishEntry): every copy is enqueued, or none."""
        check_iterable("entries", entries)
        return self._publish(topic, list(entries))

    def send(self, queue: str, body: bytes, *, attributes: Attributes | None = None,
             delay: float | None = None, deliver_at: float | datetime | None = None,
             group_id: str | None = None, dedup_id: str | None = None,
             priority: int | None = None, ttl: float | None = None) -> PublishResult:
        """Send one message straight to a queue (arguments as for ``publish``)."""
        now_us = self._begin()
        return self._deliver([(self._queue(queue), None)], None, [body], now_us,
                             attributes=attributes, delay=delay, deliver_at=deliver_at,
                             group_id=group_id, dedup_id=dedup_id, priority=priority,
                             ttl=ttl)[0]

    def send_batch(self, queue: str, entries: Iterable[object]) -> list[PublishResult]:
        """Send many messages straight to a queue: all are enqueued, or none."""
        now_us = self._begin()
        check_iterable("entries", entries)
        return self._deliver([(self._queue(queue), None)], None, list(entries), now_us)

    # -- receive and settle ------------------------------------------------------------

    def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                visibility_timeout: float | None = None) -> list[ModelMessage]:
        """Lease up to ``max_messages`` listed messages, highest priority first.

        Expired messages (TTL) and messages out of receives are settled on the way,
        when they reach the head.

        Args:
            queue: the queue name.
            max_messages: 1 to 10,000.
            wait: seconds, 0 to 20 (validated only: the model never blocks).
            visibility_timeout: lease in seconds (0 to 43,200), default the queue's.

        Returns:
            The deliveries made, each with a fresh receipt (maybe none).
        """
        now_us = self._begin()
        if type(max_messages) is not int or not 1 <= max_messages <= MAX_RECEIVE_BATCH:
            raise InvalidArgument(
                f"max_messages={max_messages!r} must be an int from 1 to {MAX_RECEIVE_BATCH}")
        duration_us("wait", wait, MAX_WAIT_US)
        lease_us = None if visibility_timeout is None else duration_us(
            "visibility_timeout", visibility_timeout, MAX_VISIBILITY_US)
        target = self._queue(queue)
        if lease_us is None:
            lease_us = target.visibility_us
        limit = target.settings.max_receive_count
        received: list[ModelMessage] = []
        while len(received) < max_messages:
            copy = target.next_for_receive()
            if copy is None:
                break
            if (copy.expires_us is not None and copy.expires_us <= now_us
                    and copy.dead_letter is None):
                self._dead_letter(target, copy, "expired", now_us)
                continue
            if limit is not None and copy.receive_count + 1 > limit:
                self._dead_letter(target, copy, "max_receives", now_us)
                continue
            target.lease(copy)
            copy.receive_count += 1
            if copy.first_receive_us is None:
                copy.first_receive_us = now_us
            copy.last_receive_us = now_us
            self._arm(copy, "leased", now_us + lease_us)
            copy.receipt = self._next_receipt
            self._next_receipt += 1
            self._leases[copy.receipt] = copy
            target.delivered += 1
            if copy.receive_count > 1:
                target.redelivered += 1
            received.append(ModelMessage(
                id=copy.id, body=copy.body, attributes=_copy_attributes(copy.attributes),
                timestamp=copy.timestamp_us / US, receive_count=copy.receive_count,
                receipt=copy.receipt, queue=target.name, dead_letter=copy.dead_letter,
                group_id=copy.group_id, dedup_id=copy.dedup_id, priority=copy.priority))
        return received

    def _leased(self, receipt: object) -> tuple[Queue, Copy]:
        copy = self._leases.get(check_receipt(receipt))
        if copy is None:
            raise StaleReceipt(f"receipt {receipt} is stale", [receipt])  # type: ignore[list-item]
        return self._queue_of(copy), copy

    def _queue_of(self, copy: Copy) -> Queue:
        return next(queue for queue in self._queues.values() if queue.holds(copy))

    def ack(self, receipt: int) -> None:
        """Delete the message of a live delivery.

        Raises:
            StaleReceipt: the delivery's lease has ended.
        """
        self._begin()
        queue, copy = self._leased(receipt)
        self._remove(queue, copy)
        queue.acked += 1

    def ack_batch(self, receipts: Iterable[int]) -> None:
        """Ack every receipt, or none when any is stale (listed in the error's ``receipts``)."""
        self._begin()
        check_iterable("receipts", receipts)
        unique = list(dict.fromkeys(check_receipt(receipt) for receipt in receipts))
        stale = [receipt for receipt in unique if receipt not in self._leases]
        if stale:
            raise StaleReceipt(f"stale receipts: {stale}", stale)
        for receipt in unique:
            queue, copy = self._leased(receipt)
            self._remove(queue, copy)
            queue.acked += 1

    def _return(self, queue: Queue, copy: Copy, delay_us: int | None, now_us: int) -> None:
        """End a lease early: visible again, or delayed (None: the redelivery backoff)."""
        self._end_lease(copy)
        queue.release_group(copy)
        if delay_us is None:
            delay_us = queue.backoff_after_failure(copy)
        if delay_us > 0:
            self._arm(copy, "delayed", now_us + delay_us)
        else:
            queue.make_visible(copy)

    def nack(self, receipt: int, *, delay: float | None = None) -> None:
        """End a lease now; visible again after ``delay`` seconds (None: the backoff)."""
        now_us = self._begin()
        delay_us = None if delay is None else duration_us("delay", delay, MAX_DELAY_US)
        queue, copy = self._leased(receipt)
        self._return(queue, copy, delay_us, now_us)

    def extend(self, receipt: int, seconds: float) -> None:
        """Make the lease end ``seconds`` (0 to 43,200) from now; 0 acts as ``nack``."""
        now_us = self._begin()
        lease_us = duration_us("seconds", seconds, MAX_VISIBILITY_US)
        queue, copy = self._leased(receipt)
        if lease_us == 0:
            self._return(queue, copy, 0, now_us)   # like nack(delay=0): no backoff
        else:
            self._arm(copy, "leased", now_us + lease_us)

    def term(self, receipt: int) -> None:
        """Dead-letter a leased message now, reason ``rejected``."""
        now_us = self._begin()
        queue, copy = self._leased(receipt)
        self._dead_letter(queue, copy, "rejected", now_us)

    def _leased_batch(self, receipts: Iterable[int]) -> list[int]:
        """A batch's receipts, each once in order; StaleReceipt (listing them) if any is."""
        check_iterable("receipts", receipts)
        unique = list(dict.fromkeys(check_receipt(receipt) for receipt in receipts))
        stale = [receipt for receipt in unique if receipt not in self._leases]
        if stale:
            raise StaleReceipt(f"stale receipts: {stale}", stale)
        return unique

    def nack_batch(self, receipts: Iterable[int], *, delay: float | None = None) -> None:
        """``nack`` every receipt, or none when any is stale (as ``ack_batch``)."""
        now_us = self._begin()
        delay_us = None if delay is None else duration_us("delay", delay, MAX_DELAY_US)
        for receipt in self._leased_batch(receipts):
            queue, copy = self._leased(receipt)
            self._return(queue, copy, delay_us, now_us)

    def extend_batch(self, receipts: Iterable[int], seconds: float) -> None:
        """``extend`` every receipt, or none when any is stale (as ``ack_batch``)."""
        now_us = self._begin()
        lease_us = duration_us("seconds", seconds, MAX_VISIBILITY_US)
        for receipt in self._leased_batch(receipts):
            queue, copy = self._leased(receipt)
            if lease_us == 0:
                self._return(queue, copy, 0, now_us)
            else:
                self._arm(copy, "leased", now_us + lease_us)

    def term_batch(self, receipts: Iterable[int]) -> None:
        """``term`` every receipt, or none when any is stale (as ``ack_batch``)."""
        now_us = self._begin()
        for receipt in self._leased_batch(receipts):
            queue, copy = self._leased(receipt)
            self._dead_letter(queue, copy, "rejected", now_us)

    # -- dead letters and housekeeping -------------------------------------------------

    def redrive(self, dead_letter_queue: str, *, to: str | None = None,
                max_messages: int | None = None) -> int:
        """Move listed messages of a DLQ, highest priority first, back to their source.

        Args:
            dead_letter_queue: the queue to take messages from.
            to: a queue to move them all to instead, or None.
            max_messages: most messages to move, or None for all.

        Returns:
            The number of messages moved.
        """
        now_us = self._begin()
        limit = optional_count("max_messages", max_messages)
        source = self._queue(dead_letter_queue)
        target = None if to is None else self._queue(to)
        if target is source:
            raise InvalidArgument(f"cannot redrive {dead_letter_queue!r} into itself")
        moved = 0
        # Only what is visible when the call starts: making room in a destination may
        # dead-letter its messages into this very queue, and those must not cycle. A
        # FIFO queue lists only its groups' heads: take every visible copy, in arrival
        # order.
        visible = ([copy for copy in source.copies if copy.state == "visible"]
                   if source.fifo else source.listed_for_receive())
        for copy in visible:
            if limit is not None and moved >= limit:
                break
            if not source.holds(copy) or copy.state != "visible":
                continue  # evicted by the room made for an earlier move
            destination = target
            if destination is None and copy.dead_letter is not None:
                destination = self._queues.get(copy.dead_letter.source_queue)
            if destination is None:
                continue
            evictions = room_plan(destination, 1, copy.size)
            if evictions is None:
                destination.refused_moves += 1
                break
            # A move takes the message out first, so dead letters caused by the room
            # made in the destination find its slot free.
            self._remove(source, copy)
            source.redriven += 1
            self._evict(destination, evictions, now_us)
            self._enqueue(destination, copy.moved(None), now_us, now_us)
            moved += 1
        return moved

    def purge(self, queue: str) -> int:
        """Remove every message of a queue (any state); returns how many."""
        self._begin()
        target = self._queue(queue)
        removed = len(target.copies)
        for copy in list(target.copies):
            self._remove(target, copy)
        target.purged += removed
        return removed

    def stats(self) -> BrokerStats:
        """Counters of every topic and queue, as ``fastfanout.Broker.stats``."""
        now_us = self._begin()
        topics = {
            name: TopicStats(
                published=topic.published, deliveries=topic.deliveries,
                unrouted=topic.unrouted, subscriptions=len(self._feeding(name)),
                duplicates=topic.duplicates, filtered_out=topic.filtered_out,
                dedup_entries=topic.window.size(now_us), dedup_evicted=topic.window.evicted,
                fifo=topic.fifo, content_dedup=topic.content_dedup)
            for name, topic in sorted(self._topics.items())}
        queues = {}
        for name, queue in sorted(self._queues.items()):
            states = [copy.state for copy in queue.copies]
            oldest = min((copy.entered_us for copy in queue.copies), default=now_us)
            queues[name] = QueueStats(
                enqueued=queue.enqueued, delivered=queue.delivered,
                redelivered=queue.redelivered, acked=queue.acked,
                dead_lettered=queue.dead_lettered, redriven=queue.redriven,
                rejected=queue.rejected, purged=queue.purged, duplicates=queue.duplicates,
                oversized=queue.oversized, dedup_entries=queue.window.size(now_us),
                dedup_evicted=queue.window.evicted, groups=len(queue.groups),
                dropped=dict(queue.dropped), visible=states.count("visible"),
                leased=states.count("leased"), delayed=states.count("delayed"),
                messages=len(states), bytes=queue.bytes, oldest_age=(now_us - oldest) / US)
        subscriptions = {}
        for sid, sub in sorted(self._subscriptions.items()):
            counters = self._subscription_counters[sid]
            subscriptions[sid] = SubscriptionStats(
                topic=sub.topic, queue=sub.queue, delivered=counters.delivered,
                filtered_out=counters.filtered_out,
                dropped=dict(zip(SUBSCRIPTION_DROP_REASONS, (
                    counters.rejected, counters.oversized, counters.duplicates), strict=True)))
        return BrokerStats(topics=topics, queues=queues, subscriptions=subscriptions)

    def leased_receipts(self) -> set[int]:
        """The receipts of every lease that has not ended (for tests comparing brokers)."""
        return set(self._leases)

    def check(self) -> bool:
        """Assert the model's own invariants (for tests); True when they hold.

        The model's twin of ``Broker.check``.

        Raises:
            AssertionError: an invariant does not hold.
        """
        live = {}
        for queue in self._queues.values():
            listed = queue.listed_for_drop()
            assert len({id(copy) for copy in listed}) == len(listed)
            assert all(copy.level == level for level, copies in enumerate(queue.lists)
                       for copy in copies)
            for copy in queue.copies:
                assert copy.state in ("visible", "leased", "delayed"), copy
                assert copy.listed == any(held is copy for held in listed), copy
                assert not copy.listed or copy.state == "visible", copy
                assert copy.listed or queue.fifo or copy.state != "visible", copy
                assert (copy.receipt is not None) == (copy.state == "leased"), copy
                if copy.receipt is not None:
                    live[copy.receipt] = copy
            if queue.fifo:
                members = [copy for group in queue.groups.values() for copy in group.members]
                assert len(members) == len(queue.copies)
                for group in queue.groups.values():
                    head = group.members[0]
                    leased = [copy for copy in group.members if copy.state == "leased"]
                    assert leased == ([] if group.leased is None else [head]), group
                    assert [copy for copy in group.members if copy.listed] == (
                        [head] if group.leased is None and head.state == "visible" else [])
            else:
                assert not queue.groups
            held = (len(queue.copies) + queue.acked + queue.purged + queue.dead_lettered
                    + queue.redriven + sum(queue.dropped.values()))
            assert queue.enqueued == held, queue.name
        assert live.keys() == self._leases.keys()
        assert all(live[receipt] is self._leases[receipt] for receipt in live)
        return True

    # -- lifecycle ---------------------------------------------------------------------

    def restart(self) -> None:
        """Act as the broker closed and opened again on its data directory.

        Kept: every topic (its dedup window too), queue (with its settings) and
        subscription, the next message and subscription ids. Each durable queue keeps
        its copies (``Queue.restart``: arrival order, leased -> visible with the receive
        count kept, delayed keep their due time); a queue that is not durable, or every
        queue of a broker without a data directory, is emptied. Every receipt is stale
        and every counter starts afresh (``enqueued`` = copies held). A model without a
        data directory is a new, empty broker afterwards (message ids from 1 again).

        Raises:
            Closed: the model broker was closed.
        """
        now_us = self._begin()
        if not self._durable:
            self.__init__(clock=self._clock,   # type: ignore[misc]
                          dedup_capacity=self._dedup_capacity)
            return
        self._leases.clear()
        for queue in self._queues.values():
            for copy in queue.restart(now_us):
                self._arm(copy, "delayed", copy.journal_due_us)
        for topic in self._topics.values():
            topic.published = topic.deliveries = topic.unrouted = 0
            topic.duplicates = topic.filtered_out = 0
            topic.window.evicted = 0
        for sid in self._subscription_counters:
            self._subscription_counters[sid] = SubscriptionCounters()
        self._advance(now_us)

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def close(self) -> None:
        """Close the model broker: every later call raises ``Closed`` (idempotent)."""
        self._closed = True

    def __enter__(self) -> ModelBroker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _copy_attributes(attributes: Attributes) -> dict[str, Any]:
    return {name: list(value) if type(value) is list else value
            for name, value in attributes.items()}
