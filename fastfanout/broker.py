"""The embedded broker: SNS-style topics fanning out to SQS-style queues, in process.

``Broker`` is the thin, typed face of the native core (``fastfanout._ext``): it checks
arguments, keeps the name tables, reads the clock and serialises calls; the core does
everything per message. The server (``fastfanout.server``) wraps one ``Broker``, and the
client offers the very same methods, so code written against one runs against the other.

Thread safety: every call holds one lock for its whole duration (the core is not
re-entrant). ``receive(wait=...)`` waits on a condition of that lock, woken by every
publish or send and by the next timer due time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from fastfanout._ext.batches import EncodedBatch, PublishBatch, RingBatch
from fastfanout._ext.deliveries import receive, receive_frame
from fastfanout._ext.fanout import Dispatcher
from fastfanout._ext.message import Message
from fastfanout._ext.store import DEBUG as STORE_DEBUG
from fastfanout._ext.store import Store
from fastfanout.errors import AlreadyExists, Closed, InvalidArgument, NotFound
from fastfanout.producer import DEFAULT_CAPACITY, DEFAULT_MAX_BYTES, Producer
from fastfanout.records import Attributes, ExponentialBackoff, PublishEntry, PublishResult
from fastfanout.routing import compile_policy, dispatch_targets, feeding_subscriptions
from fastfanout.settings import (
    MAX_DEDUP_WINDOW,
    MAX_DELAY,
    MAX_RECEIVE_BATCH,
    MAX_VISIBILITY_TIMEOUT,
    MAX_WAIT,
    QueueSettings,
    Subscription,
    TopicSettings,
    check_flag,
    check_name,
    check_queue_settings,
    optional_count,
    seconds_to_us,
)
from fastfanout.stats import DROP_REASONS, BrokerStats, QueueStats, TopicStats
from fastfanout.topic_pattern import is_pattern, pattern_matches, validate_pattern

__all__ = [
    "MAX_DELAY",
    "MAX_VISIBILITY_TIMEOUT",
    "Broker",
    "QueueSettings",
    "Subscription",
    "TopicSettings",
]

def _entry(
    body: bytes | bytearray | memoryview,
    attributes: Attributes | None,
    delay: float | None,
    deliver_at: float | datetime | None,
    group_id: str | None,
    dedup_id: str | None,
    priority: int | None,
    ttl: float | None,
) -> bytes | bytearray | memoryview | PublishEntry:
    """A bare body when nothing else is given (the fast path), else a PublishEntry."""
    if (attributes is None and delay is None and deliver_at is None and group_id is None
            and dedup_id is None and priority is None and ttl is None):
        return body
    return PublishEntry(body, attributes, delay, deliver_at, group_id, dedup_id, priority, ttl)  # type: ignore[arg-type]


class Broker:
    """An in-process broker: topics, subscriptions and queues, no sockets.

    Args:
        clock: a callable returning the time in seconds (float). Defaults to
            ``time.time``. Tests pass a fake clock to move time by hand; every lease,
            delay and retention is measured on it.

    Every method raises ``Closed`` after ``close()``. Bad arguments raise a subclass of
    ``FastFanoutError`` and change nothing.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        if clock is not None and not callable(clock):
            raise InvalidArgument(f"clock must be a callable returning seconds, got {clock!r}")
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        self._store = Store()
        self._dispatcher = Dispatcher(self._store)
        self._lock = threading.RLock()
        self._arrivals = threading.Condition(self._lock)
        self._waiters = 0
        self._closed = False
        self._queues: dict[str, int] = {}
        self._queue_settings: dict[str, QueueSettings] = {}
        self._queue_names: dict[int, str] = {}
        self._visibility_us: dict[int, int] = {}   # queue id -> default lease, µs
        self._topics: dict[str, int] = {}
        self._topic_settings: dict[str, TopicSettings] = {}
        # subscription id -> Subscription; per topic the ids that feed it, in id order
        # (derived from the subscriptions: direct ones and matching patterns).
        self._subscriptions: dict[int, Subscription] = {}
        self._topic_subscriptions: dict[str, list[int]] = {}
        self._next_subscription = 1

    # -- plumbing ----------------------------------------------------------------------

    def _ensure_open(self) -> None:
        """Raise ``Closed`` after ``close()`` (before any argument is looked at)."""
        if self._closed:
            raise Closed("the broker is closed")

    def _now_us(self) -> int:
        """Read the clock, check the broker is open and apply everything due."""
        if self._closed:
            raise Closed("the broker is closed")
        if STORE_DEBUG:
            self._store.check()   # debug build: every invariant, before every call
        now_us: int = self._store.tick(self._clock)
        return now_us

    def _queue_id(self, name: object) -> int:
        queue_id = self._queues.get(name) if type(name) is str else None
        if queue_id is None:
            check_name("queue", name)
            raise NotFound(f"queue {name!r} does not exist")
        return queue_id

    def _topic_id(self, name: object) -> int:
        topic_id = self._topics.get(name) if type(name) is str else None
        if topic_id is None:
            check_name("topic", name)
            raise NotFound(f"topic {name!r} does not exist")
        return topic_id

    def _wake_receivers(self) -> None:
        if self._waiters:
            self._arrivals.notify_all()

    # -- topics ------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        *,
        fifo: bool = False,
        content_dedup: bool = False,
        dedup_window: float = 300.0,
    ) -> None:
        """Create a topic; a no-op if it exists with equal settings.

        Args:
            name: 1 to 256 characters from ``A-Z a-z 0-9 _ . : -``.
            fifo: a FIFO topic: every message needs a ``group_id`` (and a ``dedup_id``
                unless ``content_dedup``); only FIFO queues may subscribe.
            content_dedup: deduplicate messages without a ``dedup_id`` by body hash.
            dedup_window: seconds a dedup id is remembered (1 s to 1 day).

        Raises:
            AlreadyExists: the topic exists with other settings.
        """
        self._ensure_open()
        check_name("topic", name)
        settings = TopicSettings(
            fifo=check_flag("fifo", fifo),
            content_dedup=check_flag("content_dedup", content_dedup),
            dedup_window=dedup_window)
        window_us = seconds_to_us(
            "dedup_window", dedup_window, maximum=MAX_DEDUP_WINDOW, minimum=1.0)
        with self._lock:
            self._now_us()
            existing = self._topic_settings.get(name)
            if existing is not None:
                if existing != settings:
                    raise AlreadyExists(f"topic {name!r} exists with other settings: {existing}")
                return
            self._topics[name] = self._dispatcher.add_topic(fifo, content_dedup, window_us)
            self._topic_settings[name] = settings
            self._topic_subscriptions[name] = []
            self._refresh_targets(name)

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its subscriptions (messages already enqueued stay)."""
        with self._lock:
            self._now_us()
            topic_id = self._topic_id(name)
            for subscription_id in self._topic_subscriptions.pop(name):
                if self._subscriptions[subscription_id].topic == name:
                    del self._subscriptions[subscription_id]
            self._dispatcher.remove_topic(topic_id)
            del self._topics[name], self._topic_settings[name]

    def list_topics(self) -> list[str]:
        """Names of every topic, sorted."""
        with self._lock:
            self._now_us()
            return sorted(self._topics)

    # -- queues ------------------------------------------------------------------------

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
    ) -> None:
        """Create a queue; a no-op if it exists with equal settings.

        Args:
            name: 1 to 256 characters from ``A-Z a-z 0-9 _ . : -``.
            visibility_timeout: default lease of a receive, seconds (0 to 43,200).
            max_receive_count: deliveries allowed before the message is dead-lettered
                (None: unlimited).
            dead_letter_queue: name of an existing queue that receives dead letters.
            delay: seconds every new message waits before it is visible (0 to 1 year),
                unless the message gives its own delay.
            max_messages: most messages held (visible + leased + delayed), or None.
            max_bytes: most body + attribute bytes held, or None.
            max_message_size: largest message (body + encoded attributes), bytes
                (1 to 256 MiB).
            retention: seconds a message may stay in the queue (1 s to 1 year).
            overflow: what a full queue does: ``reject`` (raise ``QueueFull``),
                ``drop_oldest``, ``dead_letter`` (move the oldest visible to the DLQ) or
                ``hold`` (Pulsar's producer_request_hold: a broker server keeps the
                publish until there is room; embedded, it raises ``QueueFull`` with
                ``hold=True`` at once).
            max_priority: highest priority level, 0 to 255 (0: no priorities); a message
                priority above it counts as it (RabbitMQ's rule). Not on FIFO queues.
            fifo: strict order per ``group_id``; while a message of a group is leased, no
                later message of that group is delivered. Messages need a ``group_id``,
                and a ``dedup_id`` unless ``content_dedup``.
            content_dedup: deduplicate messages without a ``dedup_id`` by body hash.
            dedup_window: seconds a dedup id is remembered (1 s to 1 day); a message
                repeating one inside the window is accepted and not delivered again.
            redelivery_backoff: waits in seconds before redelivery after failed
                delivery 1, 2, ... (the last repeats), or an ``ExponentialBackoff``; it
                applies when a lease expires and on ``nack`` without a ``delay``.

        Raises:
            AlreadyExists: the queue exists with other settings.
            NotFound: ``dead_letter_queue`` does not exist.
            InvalidArgument: a setting is out of range or malformed.
        """
        self._ensure_open()
        settings, native = check_queue_settings(name, QueueSettings(
            visibility_timeout=visibility_timeout, max_receive_count=max_receive_count,
            dead_letter_queue=dead_letter_queue, delay=delay, max_messages=max_messages,
            max_bytes=max_bytes, max_message_size=max_message_size, retention=retention,
            overflow=overflow, max_priority=max_priority, fifo=fifo,
            content_dedup=content_dedup, dedup_window=dedup_window,
            redelivery_backoff=redelivery_backoff))
        with self._lock:
            self._now_us()
            existing = self._queue_settings.get(name)
            if existing is not None:
                if existing != settings:
                    raise AlreadyExists(
                        f"queue {name!r} exists with other settings: {existing}")
                return
            dlq_id = (-1 if settings.dead_letter_queue is None
                      else self._queue_id(settings.dead_letter_queue))
            queue_id = self._store.add_queue(
                name, native.visibility_us, native.delay_us, native.retention_us,
                native.message_limit, native.byte_limit, native.max_message_size,
                native.receive_limit, dlq_id, native.overflow, native.max_priority,
                native.fifo, native.content_dedup, native.window_us, native.backoff_us)
            self._queues[name] = queue_id
            self._queue_names[queue_id] = name
            self._visibility_us[queue_id] = native.visibility_us
            self._queue_settings[name] = settings

    def delete_queue(self, name: str) -> None:
        """Delete a queue, its messages and its subscriptions.

        Raises:
            InvalidArgument: the queue is the dead-letter queue of another queue.
        """
        with self._lock:
            self._now_us()
            queue_id = self._queue_id(name)
            users = sorted(other for other, settings in self._queue_settings.items()
                           if settings.dead_letter_queue == name)
            if users:
                raise InvalidArgument(
                    f"queue {name!r} is the dead-letter queue of {', '.join(users)}; "
                    f"delete those first")
            for sid in [sid for sid, sub in self._subscriptions.items() if sub.queue == name]:
                del self._subscriptions[sid]
            for topic in self._topics:
                self._refresh_targets(topic)
            self._store.remove_queue(queue_id)
            del self._queues[name], self._queue_settings[name], self._queue_names[queue_id]

    def list_queues(self) -> list[str]:
        """Names of every queue, sorted."""
        with self._lock:
            self._now_us()
            return sorted(self._queues)

    def queue_settings(self, name: str) -> QueueSettings:
        """The settings queue ``name`` was created with."""
        with self._lock:
            self._now_us()
            self._queue_id(name)
            return self._queue_settings[name]

    # -- subscriptions -----------------------------------------------------------------

    def _refresh_targets(self, topic: str) -> None:
        """Recompute which subscriptions feed ``topic`` and hand them to the dispatcher."""
        feeding = feeding_subscriptions(
            self._subscriptions, topic, self._topic_settings[topic].fifo,
            lambda queue: self._queue_settings[queue].fifo)
        self._topic_subscriptions[topic] = feeding
        targets, policies = dispatch_targets(self._subscriptions, feeding, self._queues)
        self._dispatcher.set_targets(self._topics[topic], targets, policies)

    def _refresh_for(self, topic_or_pattern: str) -> None:
        if is_pattern(topic_or_pattern):
            for topic in self._topics:
                if pattern_matches(topic_or_pattern, topic):
                    self._refresh_targets(topic)
        elif topic_or_pattern in self._topics:
            self._refresh_targets(topic_or_pattern)

    def subscribe(
        self,
        topic: str,
        queue: str,
        *,
        filter_policy: Mapping[str, Any] | str | None = None,
        filter_scope: str = "attributes",
    ) -> int:
        """Subscribe ``queue`` to a topic, or to every topic a pattern matches.

        Args:
            topic: a topic name, or a NATS-style pattern (``orders.*`` matches one more
                token, ``orders.>`` one or more) that also covers topics created later.
            queue: the queue that receives a copy of each matching message.
            filter_policy: an SNS filter policy (dict or JSON text); None delivers all.
            filter_scope: ``"attributes"`` (match message attributes) or ``"body"``
                (match the body parsed as a JSON object).

        Returns:
            The subscription id. Subscribing the same pair again with the same policy
            returns the existing id.

        Raises:
            InvalidFilterPolicy: the policy is malformed or over a limit.
            AlreadyExists: the pair is subscribed already with another policy.
        """
        self._ensure_open()
        compiled, normalized = compile_policy(filter_policy, filter_scope)
        with self._lock:
            self._now_us()
            if is_pattern(topic):
                validate_pattern(topic)
            else:
                self._topic_id(topic)
                topic_fifo = self._topic_settings[topic].fifo
                if topic_fifo != self._queue_settings.get(queue, QueueSettings()).fifo:
                    self._queue_id(queue)
                    raise InvalidArgument(
                        f"topic {topic!r} is {'FIFO' if topic_fifo else 'standard'} and queue "
                        f"{queue!r} is not: a FIFO topic feeds FIFO queues only, and FIFO "
                        f"queues subscribe to FIFO topics only")
            self._queue_id(queue)
            for sid, sub in self._subscriptions.items():
                if sub.topic == topic and sub.queue == queue:
                    if (sub.filter_policy, sub.filter_scope) != (normalized, filter_scope):
                        raise AlreadyExists(
                            f"queue {queue!r} is subscribed to {topic!r} already (subscription "
                            f"{sid}) with another filter policy; use set_filter_policy")
                    return sid
            sid = self._next_subscription
            self._next_subscription += 1
            self._subscriptions[sid] = Subscription(
                topic, queue, normalized, filter_scope, compiled)
            self._refresh_for(topic)
            return sid

    def set_filter_policy(
        self,
        subscription_id: int,
        filter_policy: Mapping[str, Any] | str | None,
        *,
        filter_scope: str = "attributes",
    ) -> None:
        """Replace a subscription's filter policy; it applies from the next publish on.

        Args:
            subscription_id: the subscription.
            filter_policy: the new policy, or None to deliver everything.
            filter_scope: ``"attributes"`` or ``"body"``.
        """
        self._ensure_open()
        compiled, normalized = compile_policy(filter_policy, filter_scope)
        with self._lock:
            self._now_us()
            sub = self._subscription(subscription_id)
            self._subscriptions[subscription_id] = Subscription(
                sub.topic, sub.queue, normalized, filter_scope, compiled)
            self._refresh_for(sub.topic)

    def _subscription(self, subscription_id: object) -> Subscription:
        if type(subscription_id) is not int:
            raise InvalidArgument(
                f"subscription_id must be an int, got {type(subscription_id).__name__}")
        sub = self._subscriptions.get(subscription_id)
        if sub is None:
            raise NotFound(f"subscription {subscription_id} does not exist")
        return sub

    def unsubscribe(self, subscription_id: int) -> None:
        """Remove a subscription.

        Raises:
            NotFound: no subscription has this id.
        """
        with self._lock:
            self._now_us()
            sub = self._subscription(subscription_id)
            del self._subscriptions[subscription_id]
            self._refresh_for(sub.topic)

    def list_subscriptions(self) -> dict[int, tuple[str, str]]:
        """Every subscription: id -> (topic or pattern, queue)."""
        with self._lock:
            self._now_us()
            return {sid: (sub.topic, sub.queue) for sid, sub in self._subscriptions.items()}

    def subscription(self, subscription_id: int) -> Subscription:
        """The record of one subscription (topic or pattern, queue, filter policy)."""
        with self._lock:
            self._now_us()
            return self._subscription(subscription_id)

    # -- publish and send --------------------------------------------------------------

    def _enqueue(self, topic: str | None, queue: str | None,
                 entries: Iterable[Any] | EncodedBatch | RingBatch) -> PublishBatch:
        """Run one batch through the dispatcher: to a topic's queues, or to one queue."""
        # The hot path of every publish and send: lookups inlined, no helper calls.
        with self._lock:
            now_us = self._now_us()
            if topic is not None:
                topic_id = self._topics.get(topic) if type(topic) is str else None
                if topic_id is None:
                    topic_id = self._topic_id(topic)   # raises the right error
                batch = self._dispatcher.publish(topic_id, entries, now_us)
            else:
                queue_id = self._queues.get(queue) if type(queue) is str else None
                if queue_id is None:
                    queue_id = self._queue_id(queue)   # raises the right error
                batch = self._dispatcher.send(queue_id, entries, now_us)
            if self._waiters:
                self._arrivals.notify_all()
            return batch

    def _enqueue_one(self, topic: str | None, queue: str | None,
                     entry: bytes | bytearray | memoryview | PublishEntry) -> PublishResult:
        """``publish``/``send`` of one message: a batch of one."""
        result: PublishResult = self._enqueue(topic, queue, [entry])[0]
        return result

    def publish(
        self,
        topic: str,
        body: bytes | bytearray | memoryview,
        *,
        attributes: Attributes | None = None,
        delay: float | None = None,
        deliver_at: float | datetime | None = None,
        group_id: str | None = None,
        dedup_id: str | None = None,
        priority: int | None = None,
        ttl: float | None = None,
    ) -> PublishResult:
        """Publish one message to every queue subscribed to ``topic``.

        Args:
            topic: the topic name.
            body: the body (bytes-like; copied).
            attributes: name -> str | int | float | bytes | list[str] (at most 10).
            delay: seconds before the copies become visible (overrides queue delays;
                up to one year).
            deliver_at: when the copies become visible: clock seconds (epoch with the
                default clock) or a timezone-aware datetime; up to one year ahead.
            group_id: FIFO message group (required by FIFO topics and queues).
            dedup_id: deduplication id; a repeat inside the window is not delivered.
            priority: 0 to 255, for queues with ``max_priority``.
            ttl: seconds the message may wait; once expired it is dropped (or
                dead-lettered, reason ``expired``) when it reaches the head of a queue.

        Returns:
            The message id and the number of copies made.

        Raises:
            MessageTooLarge: the message exceeds a target queue's ``max_message_size``.
            QueueFull: a target queue with the ``reject`` policy has no room (no copy is
                made anywhere).
        """
        self._ensure_open()
        return self._enqueue_one(topic, None, _entry(
            body, attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))

    def publish_batch(
        self, topic: str, entries: Iterable[bytes | bytearray | memoryview | PublishEntry]
    ) -> PublishBatch:
        """Publish many messages at once: all are enqueued, or none.

        Args:
            topic: the topic name.
            entries: bodies, or ``PublishEntry`` tuples for attributes and delays.

        Returns:
            A sequence of ``PublishResult``, one per entry, in order.
        """
        return self._enqueue(topic, None, entries)

    def send(
        self,
        queue: str,
        body: bytes | bytearray | memoryview,
        *,
        attributes: Attributes | None = None,
        delay: float | None = None,
        deliver_at: float | datetime | None = None,
        group_id: str | None = None,
        dedup_id: str | None = None,
        priority: int | None = None,
        ttl: float | None = None,
    ) -> PublishResult:
        """Send one message straight to a queue (see ``publish`` for the arguments).

        A duplicate (by ``dedup_id``, or body with ``content_dedup``) inside the queue's
        window returns ``duplicate=True`` and the original message id.
        """
        self._ensure_open()
        return self._enqueue_one(None, queue, _entry(
            body, attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))

    def send_batch(
        self, queue: str, entries: Iterable[bytes | bytearray | memoryview | PublishEntry]
    ) -> PublishBatch:
        """Send many messages straight to a queue: all are enqueued, or none."""
        return self._enqueue(None, queue, entries)

    # -- lock-free producers ------------------------------------------------------------

    def producer(
        self, topic: str, *, capacity: int = DEFAULT_CAPACITY, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> Producer:
        """A producer for one thread: ``offer()`` copies into a ring, ``flush()`` publishes.

        Args:
            topic: the topic to publish to (it must exist now; it is looked up again at
                each flush).
            capacity: messages the ring holds (rounded up to a power of two).
            max_bytes: body bytes the ring holds.

        Returns:
            A ``Producer`` (see ``fastfanout.producer``); use it as a context manager or
            close it, which flushes.
        """
        self._ensure_open()
        with self._lock:
            self._now_us()
            self._topic_id(topic)
        return Producer(self, topic, capacity, max_bytes)

    def _publish_ring(self, topic: str, batch: RingBatch) -> PublishBatch:
        return self._enqueue(topic, None, batch)

    # -- encoded fast paths (the server's) ---------------------------------------------

    def publish_frame(self, topic: str, frame: bytes | bytearray | memoryview) -> PublishBatch:
        """Publish a batch given as one codec frame (see docs/protocol.md): all or none.

        The records' body, attributes (msgpack), group and dedup ids, priority,
        ``deliver_at_us`` (flag) and expiry (flag) are used; ids and timestamps are
        assigned by the broker. No Python object is made per message.

        Raises:
            InvalidArgument: the frame or one of its records is malformed.
        """
        self._ensure_open()
        return self._enqueue(topic, None, EncodedBatch(frame))

    def send_frame(self, queue: str, frame: bytes | bytearray | memoryview) -> PublishBatch:
        """Send a batch given as one codec frame straight to a queue: all or none."""
        self._ensure_open()
        return self._enqueue(None, queue, EncodedBatch(frame))

    def receive_frame(
        self, queue: str, max_messages: int = 1, visibility_timeout: float | None = None
    ) -> tuple[bytes, int]:
        """Lease like ``receive`` (without waiting) and return one codec frame.

        Returns:
            ``(frame, count)``: delivery records with receipt and receive count set.
        """
        self._ensure_open()
        if type(max_messages) is not int or not 1 <= max_messages <= MAX_RECEIVE_BATCH:
            raise InvalidArgument(
                f"max_messages={max_messages!r} must be an int from 1 to {MAX_RECEIVE_BATCH}")
        lease_us = None if visibility_timeout is None else seconds_to_us(
            "visibility_timeout", visibility_timeout, maximum=MAX_VISIBILITY_TIMEOUT)
        with self._lock:
            now_us = self._now_us()
            queue_id = self._queue_id(queue)
            if lease_us is None:
                lease_us = self._visibility_us[queue_id]
            frame: bytes
            count: int
            frame, count = receive_frame(self._store, queue_id, max_messages, lease_us, now_us)
            return frame, count

    def next_due(self) -> float | None:
        """Clock seconds when the next lease or delay ends (None: nothing pending)."""
        with self._lock:
            self._now_us()
            due = self._store.next_due_us()
            return None if due is None else due / 1_000_000

    def next_due_in(self) -> float | None:
        """Seconds until the next lease or delay ends (0: due now; None: nothing pending).

        It reads the clock without applying what is due (the next other call does), so a
        caller that sleeps this long and then calls, say, ``receive`` finds it applied.
        """
        with self._lock:
            self._ensure_open()
            due_in = self._store.due_in_us(self._clock)
            return None if due_in is None else due_in / 1_000_000

    # -- receive -----------------------------------------------------------------------

    def receive(
        self,
        queue: str,
        *,
        max_messages: int = 1,
        wait: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        """Lease up to ``max_messages`` visible messages.

        Args:
            queue: the queue name.
            max_messages: 1 to 10,000.
            wait: seconds (real time, 0 to 20) to wait for a message when none is visible.
            visibility_timeout: lease length in seconds (default: the queue's).

        Returns:
            The leased messages, each with a fresh receipt (maybe none).
        """
        self._ensure_open()
        if type(max_messages) is not int or not 1 <= max_messages <= MAX_RECEIVE_BATCH:
            raise InvalidArgument(
                f"max_messages={max_messages!r} must be an int from 1 to {MAX_RECEIVE_BATCH}")
        wait_us = 0 if wait == 0.0 and type(wait) is float else seconds_to_us(
            "wait", wait, maximum=MAX_WAIT)
        lease_us = None if visibility_timeout is None else seconds_to_us(
            "visibility_timeout", visibility_timeout, maximum=MAX_VISIBILITY_TIMEOUT)
        with self._lock:
            now_us = self._now_us()
            queue_id = self._queue_id(queue)
            if lease_us is None:
                lease_us = self._visibility_us[queue_id]
            messages: list[Message] = receive(self._store,
                queue_id, max_messages, lease_us, now_us, self)
            if messages or not wait_us:
                return messages
            deadline = time.monotonic() + wait_us / 1_000_000
            self._waiters += 1
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return []
                    next_due = self._store.next_due_us()
                    if next_due is not None:
                        # Wake at the due time itself (a 20 µs floor keeps it from spinning).
                        remaining = min(remaining, max(next_due - now_us, 20) / 1_000_000)
                    self._arrivals.wait(remaining)
                    now_us = self._now_us()
                    if queue not in self._queues or self._queues[queue] != queue_id:
                        raise NotFound(f"queue {queue!r} was deleted while waiting")
                    messages = receive(self._store, queue_id, max_messages, lease_us, now_us, self)
                    if messages:
                        return messages
            finally:
                self._waiters -= 1

    # -- settle ------------------------------------------------------------------------

    def ack(self, receipt: int) -> None:
        """Delete the message of a delivery.

        Raises:
            StaleReceipt: the lease of that delivery has ended.
        """
        with self._lock:
            self._now_us()
            self._store.ack(receipt)

    def ack_batch(self, receipts: Iterable[int]) -> None:
        """Ack many deliveries: all of them, or (if any receipt is stale) none.

        Raises:
            StaleReceipt: with ``receipts`` listing the stale ones; nothing was acked.
        """
        self._ensure_open()
        receipt_list = receipts if type(receipts) is list else list(receipts)
        with self._lock:
            self._now_us()
            self._store.ack_batch(receipt_list)

    def ack_packed(self, receipts: bytes | bytearray | memoryview) -> int:
        """Ack receipts packed as little-endian u64s (the wire's ACK payload): all or none.

        Returns:
            The number of receipts acked.

        Raises:
            InvalidArgument: the length is not a multiple of 8.
            StaleReceipt: with ``receipts`` listing the stale ones; nothing was acked.
        """
        with self._lock:
            self._now_us()
            count: int = self._store.ack_packed(receipts)
            return count

    def ack_frames(self, frames: list[bytes]) -> list[int]:
        """Ack each receipts frame on its own, all of it or none (a SETTLE's frames).

        Returns:
            The stale receipts of the frames that were refused (empty: all acked).

        Raises:
            InvalidArgument: a frame's length is not a multiple of 8 (nothing acked).
        """
        with self._lock:
            self._now_us()
            stale: list[int] = self._store.ack_frames(frames)
            return stale

    def release_packed(self, receipts: bytes | bytearray | memoryview) -> int:
        """Return every still-leased delivery among packed u64 receipts at once.

        Stale receipts are skipped (not an error): this is how a server gives back what a
        vanished client held. Returns how many deliveries were released.
        """
        with self._lock:
            now_us = self._now_us()
            released: int = self._store.release_packed(receipts, now_us)
            if released:
                self._wake_receivers()
            return released

    def nack(self, receipt: int, *, delay: float | None = None) -> None:
        """End a lease early; the message is visible again after ``delay`` seconds.

        Args:
            receipt: the delivery's receipt.
            delay: seconds before redelivery; None: the queue's redelivery backoff
                (no wait without one).
        """
        self._ensure_open()
        delay_us = -1 if delay is None else seconds_to_us("delay", delay, maximum=MAX_DELAY)
        with self._lock:
            now_us = self._now_us()
            self._store.nack(receipt, delay_us, now_us)
            self._wake_receivers()

    def extend(self, receipt: int, seconds: float) -> None:
        """Make the lease end ``seconds`` from now (0: return the message at once)."""
        self._ensure_open()
        lease_us = seconds_to_us("seconds", seconds, maximum=MAX_VISIBILITY_TIMEOUT)
        with self._lock:
            now_us = self._now_us()
            self._store.extend(receipt, lease_us, now_us)
            if lease_us == 0:
                self._wake_receivers()

    def term(self, receipt: int) -> None:
        """Dead-letter a leased message now (reason ``rejected``)."""
        with self._lock:
            now_us = self._now_us()
            self._store.term(receipt, now_us)
            self._wake_receivers()

    # -- dead letters and housekeeping -------------------------------------------------

    def redrive(
        self, dead_letter_queue: str, *, to: str | None = None, max_messages: int | None = None
    ) -> int:
        """Move dead-lettered messages back to their source queue (or to ``to``).

        Args:
            dead_letter_queue: the queue to take messages from.
            to: a queue to move them all to, instead of each one's source queue.
            max_messages: most messages to move (None: all).

        Returns:
            The number of messages moved.
        """
        self._ensure_open()
        limit = optional_count("max_messages", max_messages)
        with self._lock:
            now_us = self._now_us()
            source_id = self._queue_id(dead_letter_queue)
            target_id = -1 if to is None else self._queue_id(to)
            if target_id == source_id:
                raise InvalidArgument(f"redrive of {dead_letter_queue!r} into itself")
            moved: int = self._store.redrive(source_id, target_id, limit, now_us, self._queues)
            if moved:
                self._wake_receivers()
            return moved

    def purge(self, queue: str) -> int:
        """Remove every message of a queue (visible, leased and delayed); returns how many."""
        with self._lock:
            self._now_us()
            removed: int = self._store.purge(self._queue_id(queue))
            return removed

    def stats(self) -> BrokerStats:
        """Counters of every topic and queue (see ``TopicStats`` and ``QueueStats``)."""
        with self._lock:
            now_us = self._now_us()
            topics = {}
            for name, topic_id in sorted(self._topics.items()):
                (published, deliveries, unrouted, duplicates, filtered_out, dedup_entries,
                 dedup_evicted) = self._dispatcher.topic_counters(topic_id, now_us)
                topics[name] = TopicStats(
                    published=published, deliveries=deliveries, unrouted=unrouted,
                    subscriptions=len(self._topic_subscriptions[name]), duplicates=duplicates,
                    filtered_out=filtered_out, dedup_entries=dedup_entries,
                    dedup_evicted=dedup_evicted)
            queues = {}
            for name, queue_id in sorted(self._queues.items()):
                (enqueued, delivered, redelivered, acked, dead_lettered, redriven, rejected,
                 purged, duplicates, oversized, dedup_entries, dedup_evicted, groups, dropped,
                 visible, leased, delayed,
                 messages, held_bytes, oldest_age) = self._store.counters(queue_id, now_us)
                queues[name] = QueueStats(
                    enqueued=enqueued, delivered=delivered, redelivered=redelivered,
                    acked=acked, dead_lettered=dead_lettered, redriven=redriven,
                    rejected=rejected, purged=purged, duplicates=duplicates,
                    oversized=oversized, dedup_entries=dedup_entries,
                    dedup_evicted=dedup_evicted, groups=groups,
                    dropped=dict(zip(DROP_REASONS, dropped, strict=True)), visible=visible,
                    leased=leased, delayed=delayed, messages=messages, bytes=held_bytes,
                    oldest_age=oldest_age)
            return BrokerStats(topics=topics, queues=queues)

    def check(self) -> bool:
        """Verify the core's internal invariants (slow; for tests)."""
        with self._lock:
            return bool(self._store.check())

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def close(self) -> None:
        """Close the broker: later calls, and receives still waiting, raise ``Closed``."""
        with self._lock:
            self._closed = True
            self._arrivals.notify_all()

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
