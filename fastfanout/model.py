"""The reference model of the queue semantics: the test oracle, never a runtime fallback.

Design
------
``ModelBroker`` implements ``docs/semantics.md`` as plainly as Python allows, so that a
reader can check it against the page line by line; the hypothesis state machine in
``tests/property/`` drives it and the native ``Broker`` with the same calls and demands
equal answers. Speed is no goal: every operation scans lists, timers are found by sorting
every pending deadline, nothing is cached that could be recomputed.

Prior art: the reference models that yarl and frozenlist test their C accelerators
against, and the SQS/SNS documentation where the semantics page is silent.

Invariants (``_check`` verifies them, the state machine calls it after every step):
- every message copy is in exactly one state: ``visible`` (in its queue's visible list),
  ``leased`` (has a live receipt and a deadline) or ``delayed`` (has a deadline);
- a receipt is live exactly while the delivery it names holds its lease;
- per queue ``enqueued == messages + acked + purged + dead_lettered + redriven +
  sum(dropped)``.

Choices where the page is silent (each a reading a demanding SQS user would expect):
- times reported to the user (``timestamp``, dead-letter times) are the internal
  microsecond times divided by 1e6, not the raw float the clock returned;
- a failed publish (any error) consumes no message id;
- ``delay`` and ``deliver_at`` together are refused (``InvalidArgument``); a
  ``deliver_at`` in the past means no delay, more than 365 days ahead is refused;
- dead-lettering and redrive do not check the target's ``max_message_size`` (the message
  was accepted once); they do respect its ``max_messages``/``max_bytes`` room;
- attribute numbers must be finite (SNS Number has no NaN or infinity); duration ranges
  apply to the seconds given, before the conversion to microseconds;
- ``close()`` is idempotent; every other call on a closed broker raises ``Closed``
  before any argument is checked.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import msgspec

from fastfanout.errors import (
    AlreadyExists,
    Closed,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    QueueFull,
    StaleReceipt,
)
from fastfanout.records import Attributes, DeadLetterInfo, PublishEntry, PublishResult
from fastfanout.stats import DROP_REASONS, BrokerStats, QueueStats, TopicStats

__all__ = ["ModelBroker", "ModelMessage", "attributes_size"]

_US = 1_000_000
_MAX_VISIBILITY_US = 43_200 * _US
_MAX_DELAY_US = 31_536_000 * _US
_MAX_WAIT_US = 20 * _US
_MAX_RECEIVE_BATCH = 10_000
_MAX_MESSAGE_SIZE_LIMIT = 256 * 1024 * 1024
_MAX_ATTRIBUTES = 10
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,256}")
_OVERFLOW_POLICIES = ("reject", "drop_oldest", "dead_letter")


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
    """

    id: int
    body: bytes
    attributes: Attributes
    timestamp: float
    receive_count: int
    receipt: int
    queue: str
    dead_letter: DeadLetterInfo | None


def attributes_size(attributes: Attributes) -> int:
    """The encoded size of attributes in bytes: msgpack length, 0 for none."""
    if not attributes:
        return 0
    return len(msgspec.msgpack.encode(attributes))


@dataclass
class _Settings:
    """The settings of one queue as given (for the equal-settings check)."""

    visibility_timeout: float
    max_receive_count: int | None
    dead_letter_queue: str | None
    delay: float
    max_messages: int | None
    max_bytes: int | None
    max_message_size: int
    retention: float
    overflow: str


@dataclass
class _Copy:
    """One message copy held by a queue."""

    id: int
    body: bytes
    attributes: Attributes
    timestamp_us: int
    size: int
    entered_us: int
    arrival: int  # global enqueue order: ties of entered_us break on it
    dead_letter: DeadLetterInfo | None
    receive_count: int = 0
    first_receive_us: int | None = None
    last_receive_us: int | None = None
    state: str = "visible"  # visible | leased | delayed
    due_us: int = 0  # lease end or delay end (leased / delayed only)
    armed: int = 0  # arming order of the running timer
    receipt: int | None = None  # live receipt while leased


class _Queue:
    """A queue: its settings, its copies and its counters."""

    def __init__(self, name: str, settings: _Settings) -> None:
        self.name = name
        self.settings = settings
        self.visibility_us = _to_us(settings.visibility_timeout)
        self.delay_us = _to_us(settings.delay)
        self.retention_us = _to_us(settings.retention)
        self.copies: list[_Copy] = []  # every held copy, in arrival order
        self.visible: list[_Copy] = []  # FIFO of visible copies
        self.enqueued = 0
        self.delivered = 0
        self.redelivered = 0
        self.acked = 0
        self.dead_lettered = 0
        self.redriven = 0
        self.rejected = 0
        self.purged = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        # Not a contract counter: dead letters and redrive moves this queue had no room
        # for. The state machine uses it to describe a known broker divergence.
        self.refused_moves = 0

    @property
    def bytes(self) -> int:
        return sum(copy.size for copy in self.copies)


@dataclass
class _Entry:
    """One validated entry of a publish or send."""

    body: bytes
    attributes: Attributes
    size: int
    delay_us: int | None  # None: the queue's delay


def _to_us(seconds: float) -> int:
    return round(seconds * 1e6)


def _is_number(value: object) -> bool:
    return type(value) is int or type(value) is float


def _check_name(kind: str, name: object) -> str:
    if type(name) is not str or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{kind} name {name!r} must be 1 to 256 characters from A-Z a-z 0-9 _ . : -")
    return name


def _duration_us(what: str, seconds: object, maximum_us: int, minimum_us: int = 0) -> int:
    """Check a duration in seconds (the range applies to the value given) -> microseconds."""
    if not _is_number(seconds) or not math.isfinite(seconds):  # type: ignore[arg-type]
        raise InvalidArgument(f"{what}={seconds!r} must be a finite number of seconds")
    if not minimum_us / _US <= seconds <= maximum_us / _US:  # type: ignore[operator]
        raise InvalidArgument(
            f"{what}={seconds!r} must be from {minimum_us / _US:g} to {maximum_us / _US:g} s")
    return _to_us(seconds)  # type: ignore[arg-type]


def _optional_count(what: str, value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise InvalidArgument(f"{what}={value!r} must be None or an int >= 1")
    return value


def _check_receipt(receipt: object) -> int:
    if type(receipt) is not int or not 0 <= receipt < 2**64:
        raise InvalidArgument(f"receipt {receipt!r} must be an int in [0, 2**64)")
    return receipt


def _check_attributes(attributes: object) -> Attributes:
    if attributes is None:
        return {}
    if type(attributes) is not dict:
        raise InvalidArgument(f"attributes must be a dict or None, got {attributes!r}")
    if len(attributes) > _MAX_ATTRIBUTES:
        raise InvalidArgument(f"{len(attributes)} attributes; at most {_MAX_ATTRIBUTES}")
    checked: Attributes = {}
    for name, value in attributes.items():
        if type(name) is not str or not 1 <= len(name) <= 256:
            raise InvalidArgument(f"attribute name {name!r} must be a str of 1 to 256 chars")
        if type(value) is float and not math.isfinite(value):
            raise InvalidArgument(f"attribute {name!r}={value!r}: numbers must be finite")
        if type(value) in (str, int, float, bytes):
            checked[name] = value
        elif type(value) is list and all(type(item) is str for item in value):
            checked[name] = list(value)
        else:
            raise InvalidArgument(
                f"attribute {name!r}={value!r} must be str, int, float, bytes or list[str]")
    try:
        attributes_size(checked)
    except (OverflowError, msgspec.EncodeError) as error:
        raise InvalidArgument(f"attributes cannot be encoded: {error}") from None
    return checked


class ModelBroker:
    """A slow, obviously correct broker following docs/semantics.md (the test oracle).

    Args:
        clock: a callable returning the time in seconds (float); ``time.time`` by default.

    The API and the errors are those of ``fastfanout.Broker``; ``receive(wait=...)``
    only validates ``wait`` (the model has no threads, so it never blocks).
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        if clock is not None and not callable(clock):
            raise InvalidArgument(f"clock must be a callable returning seconds, got {clock!r}")
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        self._closed = False
        self._topics: dict[str, dict[str, int]] = {}  # name -> published/deliveries/unrouted
        self._subscriptions: dict[int, tuple[str, str]] = {}  # id -> (topic, queue)
        self._queues: dict[str, _Queue] = {}
        self._leases: dict[int, _Copy] = {}  # live receipt -> leased copy
        self._next_message_id = 1
        self._next_subscription_id = 1
        self._next_receipt = 1
        self._next_arrival = 0
        self._next_armed = 0

    # -- time --------------------------------------------------------------------------

    def _begin(self) -> int:
        """Refuse calls on a closed broker, read the clock and advance to it."""
        if self._closed:
            raise Closed("the broker is closed")
        now = self._clock()
        if not _is_number(now) or not math.isfinite(now):
            raise InvalidArgument(f"the clock returned {now!r}; it must return finite seconds")
        now_us = _to_us(now)
        self._advance(now_us)
        return now_us

    def _advance(self, now_us: int) -> None:
        # 1. retention, oldest first.
        expired = [(copy.entered_us, copy.arrival, queue, copy)
                   for queue in self._queues.values() for copy in queue.copies
                   if copy.entered_us + queue.retention_us <= now_us]
        for _, _, queue, copy in sorted(expired, key=lambda item: item[:2]):
            self._remove(queue, copy)
            queue.dropped["retention"] += 1
        # 2. timers, in order of (due time, arming order).
        due = [(copy.due_us, copy.armed, queue, copy)
               for queue in self._queues.values() for copy in queue.copies
               if copy.state != "visible" and copy.due_us <= now_us]
        for _, _, queue, copy in sorted(due, key=lambda item: item[:2]):
            self._make_visible(queue, copy)

    def _arm(self, copy: _Copy, state: str, due_us: int) -> None:
        copy.state = state
        copy.due_us = due_us
        copy.armed = self._next_armed
        self._next_armed += 1

    def _end_lease(self, copy: _Copy) -> None:
        if copy.receipt is not None:
            del self._leases[copy.receipt]
            copy.receipt = None

    def _make_visible(self, queue: _Queue, copy: _Copy) -> None:
        self._end_lease(copy)
        copy.state = "visible"
        queue.visible.append(copy)

    def _remove(self, queue: _Queue, copy: _Copy) -> None:
        """Take a copy out of its queue, whatever its state (counting is the caller's)."""
        self._end_lease(copy)
        if copy.state == "visible":
            queue.visible.remove(copy)
        queue.copies.remove(copy)

    # -- enqueueing, room and dead letters ---------------------------------------------

    def _enqueue(self, queue: _Queue, copy: _Copy, delay_us: int, now_us: int) -> None:
        copy.entered_us = now_us
        copy.arrival = self._next_arrival
        self._next_arrival += 1
        queue.copies.append(copy)
        queue.enqueued += 1
        if delay_us > 0:
            self._arm(copy, "delayed", now_us + delay_us)
        else:
            copy.state = "visible"
            queue.visible.append(copy)

    def _room_plan(self, queue: _Queue, count: int, size: int) -> list[_Copy] | None:
        """Visible copies to evict (head first) so ``count`` copies of ``size`` bytes fit.

        Returns ``[]`` when they fit already, None when the queue must refuse them.
        """
        limit_messages = queue.settings.max_messages
        limit_bytes = queue.settings.max_bytes
        held, held_bytes = len(queue.copies), queue.bytes

        def fits() -> bool:
            return ((limit_messages is None or held + count <= limit_messages)
                    and (limit_bytes is None or held_bytes + size <= limit_bytes))

        if fits():
            return []
        if queue.settings.overflow == "reject":
            return None
        evictions = []
        for copy in queue.visible:
            evictions.append(copy)
            held -= 1
            held_bytes -= copy.size
            if fits():
                return evictions
        return None

    def _evict(self, queue: _Queue, evictions: list[_Copy], now_us: int,
               deferred: list[tuple[_Queue, _Copy]] | None = None) -> None:
        """Remove copies to make room: dropped, or dead-lettered.

        The dead letters move now, or later when ``deferred`` collects them.
        """
        for copy in evictions:
            self._remove(queue, copy)
            if queue.settings.overflow != "dead_letter":
                queue.dropped["overflow"] += 1
            elif deferred is not None:
                deferred.append((queue, copy))
            else:
                self._to_dead_letter_queue(queue, copy, "overflow", now_us)

    def _dead_letter(self, queue: _Queue, copy: _Copy, reason: str, now_us: int) -> None:
        """Move a copy to its queue's DLQ (or drop it, counted, when there is none/no room)."""
        self._remove(queue, copy)
        self._to_dead_letter_queue(queue, copy, reason, now_us)

    def _to_dead_letter_queue(self, queue: _Queue, copy: _Copy, reason: str,
                              now_us: int) -> None:
        dlq_name = queue.settings.dead_letter_queue
        if dlq_name is None:
            queue.dropped[reason] += 1
            return
        dlq = self._queues[dlq_name]
        evictions = self._room_plan(dlq, 1, copy.size)
        if evictions is None:
            queue.dropped["dead_letter_full"] += 1
            dlq.refused_moves += 1
            return
        self._evict(dlq, evictions, now_us)
        info = DeadLetterInfo(
            reason=reason, source_queue=queue.name, receive_count=copy.receive_count,
            first_receive_time=None if copy.first_receive_us is None
            else copy.first_receive_us / _US,
            last_receive_time=None if copy.last_receive_us is None
            else copy.last_receive_us / _US,
            time=now_us / _US)
        moved = _Copy(id=copy.id, body=copy.body, attributes=copy.attributes,
                      timestamp_us=copy.timestamp_us, size=copy.size, entered_us=now_us,
                      arrival=0, dead_letter=info)
        self._enqueue(dlq, moved, 0, now_us)
        queue.dead_lettered += 1

    # -- topics ------------------------------------------------------------------------

    def create_topic(self, name: str) -> None:
        """Create a topic; a no-op if it exists.

        Args:
            name: 1 to 256 characters from ``A-Z a-z 0-9 _ . : -``.
        """
        self._begin()
        _check_name("topic", name)
        self._topics.setdefault(name, {"published": 0, "deliveries": 0, "unrouted": 0})

    def _topic(self, name: object) -> str:
        checked = _check_name("topic", name)
        if checked not in self._topics:
            raise NotFound(f"topic {checked!r} does not exist")
        return checked

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its subscriptions (copies already enqueued stay)."""
        self._begin()
        del self._topics[self._topic(name)]
        for sid in [sid for sid, pair in self._subscriptions.items() if pair[0] == name]:
            del self._subscriptions[sid]

    def list_topics(self) -> list[str]:
        """Names of every topic, sorted."""
        self._begin()
        return sorted(self._topics)

    # -- queues ------------------------------------------------------------------------

    def _queue(self, name: object, kind: str = "queue") -> _Queue:
        queue = self._queues.get(_check_name(kind, name))
        if queue is None:
            raise NotFound(f"queue {name!r} does not exist")
        return queue

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

        Raises:
            InvalidArgument: a setting is out of range or malformed.
            AlreadyExists: the queue exists with other settings.
            NotFound: ``dead_letter_queue`` does not exist.
        """
        self._begin()
        _check_name("queue", name)
        _duration_us("visibility_timeout", visibility_timeout, _MAX_VISIBILITY_US)
        _duration_us("delay", delay, _MAX_DELAY_US)
        _duration_us("retention", retention, _MAX_DELAY_US, minimum_us=_US)
        _optional_count("max_receive_count", max_receive_count)
        _optional_count("max_messages", max_messages)
        _optional_count("max_bytes", max_bytes)
        if (type(max_message_size) is not int
                or not 1 <= max_message_size <= _MAX_MESSAGE_SIZE_LIMIT):
            raise InvalidArgument(
                f"max_message_size={max_message_size!r} must be an int from 1 to "
                f"{_MAX_MESSAGE_SIZE_LIMIT}")
        if overflow not in _OVERFLOW_POLICIES:
            raise InvalidArgument(f"overflow={overflow!r} must be one of {_OVERFLOW_POLICIES}")
        if dead_letter_queue is not None:
            _check_name("dead_letter_queue", dead_letter_queue)
            if dead_letter_queue == name:
                raise InvalidArgument(f"queue {name!r} cannot be its own dead-letter queue")
        elif overflow == "dead_letter":
            raise InvalidArgument("overflow='dead_letter' requires a dead_letter_queue")
        settings = _Settings(visibility_timeout, max_receive_count, dead_letter_queue, delay,
                             max_messages, max_bytes, max_message_size, retention, overflow)
        existing = self._queues.get(name)
        if existing is not None:
            if existing.settings != settings:
                raise AlreadyExists(f"queue {name!r} exists with other settings")
            return
        if dead_letter_queue is not None:
            self._queue(dead_letter_queue, "dead_letter_queue")
        self._queues[name] = _Queue(name, settings)

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
        for sid in [sid for sid, pair in self._subscriptions.items() if pair[1] == name]:
            del self._subscriptions[sid]
        del self._queues[name]

    def list_queues(self) -> list[str]:
        """Names of every queue, sorted."""
        self._begin()
        return sorted(self._queues)

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(self, topic: str, queue: str) -> int:
        """Subscribe a queue to a topic; returns the subscription id (existing if any)."""
        self._begin()
        self._topic(topic)
        self._queue(queue)
        for sid, pair in self._subscriptions.items():
            if pair == (topic, queue):
                return sid
        sid = self._next_subscription_id
        self._next_subscription_id += 1
        self._subscriptions[sid] = (topic, queue)
        return sid

    def unsubscribe(self, subscription_id: int) -> None:
        """Remove a subscription.

        Raises:
            InvalidArgument: the id is not an int.
            NotFound: no subscription has this id.
        """
        self._begin()
        if type(subscription_id) is not int:
            raise InvalidArgument(f"subscription_id {subscription_id!r} must be an int")
        if self._subscriptions.pop(subscription_id, None) is None:
            raise NotFound(f"subscription {subscription_id} does not exist")

    # -- publish and send --------------------------------------------------------------

    def _entry(self, item: object, now_us: int, *, attributes: object = None,
               delay: object = None, deliver_at: object = None) -> _Entry:
        if isinstance(item, PublishEntry):
            if any(value is not None for value in item[4:]):
                raise NotImplementedError("the model has no group_id/dedup_id/priority/ttl")
            item, attributes, delay, deliver_at = item[:4]
        if not isinstance(item, bytes | bytearray | memoryview):
            raise InvalidArgument(f"a body must be bytes-like, got {type(item).__name__}")
        body = bytes(item)
        checked = _check_attributes(attributes)
        delay_us: int | None = None
        if delay is not None and deliver_at is not None:
            raise InvalidArgument("give delay or deliver_at, not both")
        if delay is not None:
            delay_us = _duration_us("delay", delay, _MAX_DELAY_US)
        elif deliver_at is not None:
            if not _is_number(deliver_at) or not math.isfinite(deliver_at):  # type: ignore[arg-type]
                raise InvalidArgument(f"deliver_at={deliver_at!r} must be finite clock seconds")
            delay_us = max(0, _to_us(deliver_at) - now_us)  # type: ignore[arg-type]
            if delay_us > _MAX_DELAY_US:
                raise InvalidArgument(f"deliver_at={deliver_at!r} is more than 365 days ahead")
        return _Entry(body, checked, len(body) + attributes_size(checked), delay_us)

    def _deliver(self, targets: list[_Queue], items: Iterable[object], now_us: int,
                 **single: object) -> list[PublishResult]:
        """Enqueue every entry into every target, all or nothing; returns the results."""
        entries = [self._entry(item, now_us, **single) for item in items]
        for entry in entries:
            for queue in targets:
                if entry.size > queue.settings.max_message_size:
                    raise MessageTooLarge(
                        f"message of {entry.size} bytes exceeds max_message_size "
                        f"{queue.settings.max_message_size} of queue {queue.name!r}")
        batch_bytes = sum(entry.size for entry in entries)
        full = [queue for queue in targets
                if self._room_plan(queue, len(entries), batch_bytes) is None]
        if entries and full:
            # "One per message": the refusal is counted once, on the first full target
            # in subscription order (the queue the error names).
            full[0].rejected += len(entries)
            raise QueueFull(f"queue {full[0].name!r} is full: no room for "
                            f"{len(entries)} message(s) of {batch_bytes} bytes")
        first_id = self._next_message_id
        self._next_message_id += len(entries)
        # The room each target was found to have is promised to this publish: overflow
        # dead letters are moved only once every copy is in, so they cannot take the room
        # of a later target (a DLQ subscribed beside its source) past its bound.
        deferred: list[tuple[_Queue, _Copy]] = []
        for queue in targets:
            evictions = self._room_plan(queue, len(entries), batch_bytes)
            assert evictions is not None, "targets are distinct; only their own evictions ran"
            self._evict(queue, evictions, now_us, deferred)
            for offset, entry in enumerate(entries):
                copy = _Copy(id=first_id + offset, body=entry.body,
                             attributes=entry.attributes, timestamp_us=now_us,
                             size=entry.size, entered_us=now_us, arrival=0, dead_letter=None)
                delay_us = queue.delay_us if entry.delay_us is None else entry.delay_us
                self._enqueue(queue, copy, delay_us, now_us)
        for queue, copy in deferred:
            self._to_dead_letter_queue(queue, copy, "overflow", now_us)
        return [PublishResult(first_id + offset, len(targets)) for offset in range(len(entries))]

    def _publish(self, topic: str, items: Iterable[object], **single: object
                 ) -> list[PublishResult]:
        now_us = self._begin()
        counters = self._topics[self._topic(topic)]
        targets = [self._queues[queue] for sid, (name, queue)
                   in sorted(self._subscriptions.items()) if name == topic]
        results = self._deliver(targets, items, now_us, **single)
        counters["published"] += len(results)
        counters["deliveries"] += len(results) * len(targets)
        if not targets:
            counters["unrouted"] += len(results)
        return results

    def publish(self, topic: str, body: bytes, *, attributes: Attributes | None = None,
                delay: float | None = None, deliver_at: float | None = None) -> PublishResult:
        """Publish one message: a copy into every subscribed queue, in subscription order.

        Args:
            topic: the topic name.
            body: the body (bytes-like; copied).
            attributes: up to 10 attributes (str, int, float, bytes or list[str] values).
            delay: seconds before the copies are visible (overrides the queues' delays).
            deliver_at: absolute clock seconds when the copies become visible.

        Raises:
            MessageTooLarge: the message exceeds a target queue's ``max_message_size``.
            QueueFull: a target queue has no room (nothing is enqueued anywhere).
        """
        return self._publish(topic, [body], attributes=attributes, delay=delay,
                             deliver_at=deliver_at)[0]

    def publish_batch(self, topic: str, entries: Iterable[bytes | PublishEntry]
                      ) -> list[PublishResult]:
        """Publish many messages: every copy of every entry is enqueued, or none."""
        return self._publish(topic, list(entries))

    def send(self, queue: str, body: bytes, *, attributes: Attributes | None = None,
             delay: float | None = None, deliver_at: float | None = None) -> PublishResult:
        """Send one message straight to a queue (arguments as for ``publish``)."""
        now_us = self._begin()
        target = self._queue(queue)
        return self._deliver([target], [body], now_us, attributes=attributes, delay=delay,
                             deliver_at=deliver_at)[0]

    def send_batch(self, queue: str, entries: Iterable[bytes | PublishEntry]
                   ) -> list[PublishResult]:
        """Send many messages straight to a queue: all are enqueued, or none."""
        now_us = self._begin()
        return self._deliver([self._queue(queue)], list(entries), now_us)

    # -- receive and settle ------------------------------------------------------------

    def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                visibility_timeout: float | None = None) -> list[ModelMessage]:
        """Lease up to ``max_messages`` visible messages from the head of the queue.

        Args:
            queue: the queue name.
            max_messages: 1 to 10,000.
            wait: seconds, 0 to 20 (validated only: the model never blocks).
            visibility_timeout: lease in seconds (0 to 43,200), default the queue's.

        Returns:
            The deliveries made, each with a fresh receipt (maybe none).
        """
        now_us = self._begin()
        if type(max_messages) is not int or not 1 <= max_messages <= _MAX_RECEIVE_BATCH:
            raise InvalidArgument(
                f"max_messages={max_messages!r} must be an int from 1 to {_MAX_RECEIVE_BATCH}")
        _duration_us("wait", wait, _MAX_WAIT_US)
        lease_us = None if visibility_timeout is None else _duration_us(
            "visibility_timeout", visibility_timeout, _MAX_VISIBILITY_US)
        target = self._queue(queue)
        if lease_us is None:
            lease_us = target.visibility_us
        limit = target.settings.max_receive_count
        received: list[ModelMessage] = []
        while len(received) < max_messages and target.visible:
            copy = target.visible[0]
            if limit is not None and copy.receive_count + 1 > limit:
                self._dead_letter(target, copy, "max_receives", now_us)
                continue
            target.visible.pop(0)
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
                timestamp=copy.timestamp_us / _US, receive_count=copy.receive_count,
                receipt=copy.receipt, queue=target.name, dead_letter=copy.dead_letter))
        return received

    def _leased(self, receipt: object) -> tuple[_Queue, _Copy]:
        copy = self._leases.get(_check_receipt(receipt))
        if copy is None:
            raise StaleReceipt(f"receipt {receipt} is stale", [receipt])  # type: ignore[list-item]
        return self._queue_of(copy), copy

    def _queue_of(self, copy: _Copy) -> _Queue:
        return next(queue for queue in self._queues.values()
                    if any(held is copy for held in queue.copies))

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
        unique = list(dict.fromkeys(_check_receipt(receipt) for receipt in receipts))
        stale = [receipt for receipt in unique if receipt not in self._leases]
        if stale:
            raise StaleReceipt(f"stale receipts: {stale}", stale)
        for receipt in unique:
            queue, copy = self._leased(receipt)
            self._remove(queue, copy)
            queue.acked += 1

    def nack(self, receipt: int, *, delay: float = 0.0) -> None:
        """End a lease now; the message is visible again (tail) after ``delay`` seconds."""
        now_us = self._begin()
        delay_us = _duration_us("delay", delay, _MAX_DELAY_US)
        queue, copy = self._leased(receipt)
        self._end_lease(copy)
        if delay_us > 0:
            self._arm(copy, "delayed", now_us + delay_us)
        else:
            self._make_visible(queue, copy)

    def extend(self, receipt: int, seconds: float) -> None:
        """Make the lease end ``seconds`` (0 to 43,200) from now; 0 acts as ``nack``."""
        now_us = self._begin()
        lease_us = _duration_us("seconds", seconds, _MAX_VISIBILITY_US)
        queue, copy = self._leased(receipt)
        if lease_us == 0:
            self._make_visible(queue, copy)
        else:
            self._arm(copy, "leased", now_us + lease_us)

    def term(self, receipt: int) -> None:
        """Dead-letter a leased message now, reason ``rejected``."""
        now_us = self._begin()
        queue, copy = self._leased(receipt)
        self._dead_letter(queue, copy, "rejected", now_us)

    # -- dead letters and housekeeping -------------------------------------------------

    def redrive(self, dead_letter_queue: str, *, to: str | None = None,
                max_messages: int | None = None) -> int:
        """Move visible messages of a DLQ, from the head, back to their source queue.

        Args:
            dead_letter_queue: the queue to take messages from.
            to: a queue to move them all to instead, or None.
            max_messages: most messages to move, or None for all.

        Returns:
            The number of messages moved.
        """
        now_us = self._begin()
        limit = _optional_count("max_messages", max_messages)
        source = self._queue(dead_letter_queue)
        target = None if to is None else self._queue(to)
        if target is source:
            raise InvalidArgument(f"cannot redrive {dead_letter_queue!r} into itself")
        moved = 0
        # Only what is visible when the call starts: making room in a destination may
        # dead-letter its messages into this very queue, and those must not cycle.
        for copy in list(source.visible):
            if limit is not None and moved >= limit:
                break
            if not any(held is copy for held in source.visible):
                continue  # evicted by the room made for an earlier move
            destination = target
            if destination is None and copy.dead_letter is not None:
                destination = self._queues.get(copy.dead_letter.source_queue)
            if destination is None:
                continue
            evictions = self._room_plan(destination, 1, copy.size)
            if evictions is None:
                destination.refused_moves += 1
                break
            # A move takes the message out first, so dead letters caused by the room
            # made in the destination find its slot free.
            self._remove(source, copy)
            source.redriven += 1
            self._evict(destination, evictions, now_us)
            self._enqueue(destination, _Copy(
                id=copy.id, body=copy.body, attributes=copy.attributes,
                timestamp_us=copy.timestamp_us, size=copy.size, entered_us=now_us,
                arrival=0, dead_letter=None), 0, now_us)
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
            name: TopicStats(subscriptions=sum(
                1 for pair in self._subscriptions.values() if pair[0] == name), **counters)
            for name, counters in sorted(self._topics.items())}
        queues = {}
        for name, queue in sorted(self._queues.items()):
            states = [copy.state for copy in queue.copies]
            oldest = min((copy.entered_us for copy in queue.copies), default=now_us)
            queues[name] = QueueStats(
                enqueued=queue.enqueued, delivered=queue.delivered,
                redelivered=queue.redelivered, acked=queue.acked,
                dead_lettered=queue.dead_lettered, redriven=queue.redriven,
                rejected=queue.rejected, purged=queue.purged, dropped=dict(queue.dropped),
                visible=states.count("visible"), leased=states.count("leased"),
                delayed=states.count("delayed"), messages=len(states), bytes=queue.bytes,
                oldest_age=(now_us - oldest) / _US)
        return BrokerStats(topics=topics, queues=queues)

    def _check(self) -> None:
        """Assert the model's own invariants (for tests)."""
        live = {}
        for queue in self._queues.values():
            assert len({id(copy) for copy in queue.visible}) == len(queue.visible)
            for copy in queue.copies:
                in_visible = any(held is copy for held in queue.visible)
                assert in_visible == (copy.state == "visible"), copy
                assert (copy.receipt is not None) == (copy.state == "leased"), copy
                if copy.receipt is not None:
                    live[copy.receipt] = copy
            held = (len(queue.copies) + queue.acked + queue.purged + queue.dead_lettered
                    + queue.redriven + sum(queue.dropped.values()))
            assert queue.enqueued == held, queue.name
        assert live.keys() == self._leases.keys()
        assert all(live[receipt] is self._leases[receipt] for receipt in live)

    # -- lifecycle ---------------------------------------------------------------------

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
