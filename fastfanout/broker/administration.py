"""The broker's state and its name tables: topics, queues, subscriptions.

``Administration`` is a part that ``fastfanout.broker.embedded.Broker`` holds (composed,
not inherited): it owns what a broker is made of (the native store and dispatcher, the
lock, the clock, the name tables, the durable storage) and the calls that change its
shape — creating and deleting topics and queues, subscribing, filter policies — which
keep the name tables and hand the dispatcher its targets. ``Broker`` offers those calls
by delegation and adds the message path (publish, receive, settle, stats), working on
the parts this class exposes as public attributes (``store``, ``lock``, ``queues``...):
the very objects, never rebound after construction, so the broker may keep references
to them for its hot paths. One broker, one lock; every rule of
``fastfanout.broker.embedded``'s module essay holds here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastfanout._ext import queues as queue_ops
from fastfanout._ext.fanout import Dispatcher
from fastfanout._ext.invariants import check as check_store
from fastfanout._ext.locks import FastCondition, FastRLock
from fastfanout._ext.store import DEBUG as STORE_DEBUG
from fastfanout._ext.store import Store
from fastfanout.errors import (
    AlreadyExists,
    Closed,
    InvalidArgument,
    InvalidFilterPolicy,
    LimitExceeded,
    NotFound,
    StoreFull,
)
from fastfanout.records import ExponentialBackoff
from fastfanout.semantics.routing import (
    TargetPositions,
    compile_policy,
    dispatch_targets,
    target_policies,
)
from fastfanout.semantics.topic_pattern import (
    PatternIndex,
    TopicNames,
    is_pattern,
    validate_pattern,
)
from fastfanout.settings import (
    DEFAULT_MAX_PATTERN_SUBSCRIPTIONS,
    DEFAULT_MAX_QUEUES,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC,
    DEFAULT_MAX_TOPICS,
    QueueSettings,
    Subscription,
    TopicSettings,
    already_exists_problem,
    changed_queue_settings,
    check_count,
    check_name,
    check_queue_settings,
    check_topic_settings,
    plain_seconds,
)
from fastfanout.stats import TopologyStats
from fastfanout.storage.durability import Durability, QueueState, TopicState, Topology

__all__ = ["Administration", "StorageView"]

_MAX_TOPOLOGY_LIMIT = 2**31 - 1   # a limit's largest value (ids are 32-bit in the core)

log = logging.getLogger(__name__)


def _look_up(kind: str, ids: dict[str, int], name: object, argument: str) -> int:
    """The id of the ``kind`` named ``name``: InvalidArgument for a bad name, else NotFound.

    ``argument`` is the name of the caller's argument, for the message.
    """
    found = ids.get(name) if type(name) is str else None
    if found is None:
        _check_text(argument, name, f"a {kind} name")
        check_name(kind, name)
        raise NotFound(f"{kind} {name!r} does not exist")
    return found


def _check_text(argument: str, value: object, expected: str) -> str:
    """Return ``value`` if it is a ``str``, else raise InvalidArgument naming ``argument``.

    Args:
        argument: the argument's name, for the message.
        value: what the caller gave.
        expected: what a good value is, e.g. ``"a queue name"``.
    """
    if type(value) is not str:
        raise InvalidArgument(
            f"{argument} must be {expected} (str), got {type(value).__name__} {value!r:.80}")
    return value


def _check_filter_policy(filter_policy: object) -> None:
    """InvalidFilterPolicy (naming the argument) for a policy of a type no policy has."""
    if filter_policy is not None and not isinstance(filter_policy, Mapping | str | bytes):
        raise InvalidFilterPolicy(
            f"filter_policy must be None, a map (dict) or JSON text (str), got "
            f"{type(filter_policy).__name__} {filter_policy!r:.80}")


class Administration:
    """A broker's state and its administration calls (a part ``Broker`` holds).

    The attributes are the broker's parts, shared with the message path of ``Broker``
    (which takes the lock before using any of them); none is rebound after ``__init__``.

    Attributes:
        clock: the clock, seconds (``time.time`` unless a test's fake clock).
        store: the native store (queues, copies, leases, timers).
        dispatcher: the native fan-out of topics to their queues.
        lock: the broker's one lock (re-entrant); every call holds it throughout.
        arrivals: a condition of ``lock`` (a ``FastCondition``), notified when messages may
            have arrived or a queue was deleted; its ``sleeping`` counts the receivers
            parked on it.
        queues: queue name -> id.
        queue_names: queue id -> name.
        visibility_us: queue id -> its default lease, microseconds.
        topics: topic name -> id.
        topic_subscriptions: topic name -> ids of the subscriptions feeding it, ascending
            (a dict used as an ordered set).
        durable: the journal and its policies of a durable broker (None in memory).
        closed: True once ``close()`` was called.

    Args:
        clock: a callable returning the time in seconds (float); ``time.time`` if None.
        data_dir: None keeps everything in memory; else the data directory of a durable
            broker (see ``fastfanout.broker.embedded.Broker``).
        fsync: ``always``, ``interval`` or ``never`` (a durable broker's fsync policy).
        fsync_interval: seconds between fdatasyncs with ``interval``.
        max_disk_bytes: most journal bytes on disk before publishes are refused with
            ``StoreFull`` (None: no limit).
        max_topics: most topics; ``create_topic`` past it raises ``LimitExceeded``.
        max_queues: most queues; ``create_queue`` past it raises ``LimitExceeded``.
        max_subscriptions_per_topic: most subscriptions feeding one topic (its own and
            the patterns matching it); ``subscribe`` past it raises ``LimitExceeded``.
        max_pattern_subscriptions: most pattern subscriptions; a pattern ``subscribe``
            past it raises ``LimitExceeded``.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None,
                 data_dir: str | os.PathLike[str] | None = None, fsync: str = "always",
                 fsync_interval: float = 1.0, max_disk_bytes: int | None = None,
                 max_topics: int = DEFAULT_MAX_TOPICS, max_queues: int = DEFAULT_MAX_QUEUES,
                 max_subscriptions_per_topic: int = DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC,
                 max_pattern_subscriptions: int = DEFAULT_MAX_PATTERN_SUBSCRIPTIONS
                 ) -> None:
        self.max_topics = check_count("max_topics", max_topics, maximum=_MAX_TOPOLOGY_LIMIT)
        self.max_queues = check_count("max_queues", max_queues, maximum=_MAX_TOPOLOGY_LIMIT)
        self.max_subscriptions_per_topic = check_count(
            "max_subscriptions_per_topic", max_subscriptions_per_topic,
            maximum=_MAX_TOPOLOGY_LIMIT)
        self.max_pattern_subscriptions = check_count(
            "max_pattern_subscriptions", max_pattern_subscriptions,
            maximum=_MAX_TOPOLOGY_LIMIT)
        # calls refused by each limit (TopologyStats)
        self.topics_refused = 0
        self.queues_refused = 0
        self.subscriptions_refused = 0
        self.pattern_subscriptions_refused = 0
        if clock is not None and not callable(clock):
            raise InvalidArgument(f"clock must be a callable returning seconds, got {clock!r}")
        durable: Durability | None = None
        if data_dir is not None:
            path = os.fspath(data_dir) if isinstance(data_dir, str | os.PathLike) else None
            if type(path) is not str or "\0" in path:
                raise InvalidArgument(f"data_dir must be a path (str, no NUL character), "
                                      f"got {data_dir!r:.80}")
            if not path:
                raise InvalidArgument("data_dir must not be empty: give a directory ('.' "
                                      "for the current one)")
            durable = Durability(data_dir, fsync, fsync_interval, max_disk_bytes)
        elif fsync != "always" or fsync_interval != 1.0 or max_disk_bytes is not None:
            raise InvalidArgument("fsync, fsync_interval and max_disk_bytes need a data_dir")
        self.clock: Callable[[], float] = clock if clock is not None else time.time
        self.store = Store()
        self.dispatcher = Dispatcher(self.store)
        self.lock = FastRLock()   # an RLock's face; free of OS calls when uncontended
        # threading.Condition's face, waits and notifies in C (locks.pyx)
        self.arrivals = FastCondition(self.lock)
        self.closed = False
        self.queues: dict[str, int] = {}
        self._queue_settings: dict[str, QueueSettings] = {}
        self.queue_names: dict[int, str] = {}
        self.visibility_us: dict[int, int] = {}   # queue id -> default lease, µs
        self.topics: dict[str, int] = {}
        self._topic_settings: dict[str, TopicSettings] = {}
        # subscription id -> Subscription; per topic the ids that feed it, in id order
        # (derived from the subscriptions: direct ones and matching patterns).
        self._subscriptions: dict[int, Subscription] = {}
        self.topic_subscriptions: dict[str, dict[int, None]] = {}
        # Indexes that keep each topology change proportional to what it touches, never to
        # the broker's size (5,000 subscribes to one topic took 20 s when each one scanned
        # every subscription and handed the dispatcher every target again):
        self._pairs: dict[tuple[str, str], int] = {}   # (topic or pattern, queue) -> id
        self._queue_subscriptions: dict[str, dict[int, None]] = {}   # queue -> its ids
        self._queue_patterns: dict[str, int] = {}   # queue -> how many are patterns
        self._patterns: dict[int, None] = {}   # ids of the pattern subscriptions
        # The same, by their patterns' tokens, and the topic names by theirs: a new topic
        # meets only the patterns that can match it, a new pattern only such topics.
        self._pattern_index = PatternIndex()
        self._topic_names = TopicNames()
        self._feeds: dict[int, set[str]] = {}   # id -> the topics it feeds now
        # topic -> queue -> the ids feeding it: the dispatcher's targets of the topic; and
        # topic -> their positions there (O(log n) as targets come and go)
        self._routes: dict[str, dict[str, list[int]]] = {}
        self._target_order: dict[str, TargetPositions] = {}
        self._dead_letter_users: dict[str, dict[str, None]] = {}   # DLQ -> queues using it
        self._next_subscription = 1
        self.durable = durable
        if durable is not None:
            try:
                durable.recover(StorageView(self))
            except BaseException:
                durable.close()
                raise

    # -- plumbing ----------------------------------------------------------------------

    def refuse_topology_if_store_failed(self) -> None:
        """Before a topology change: refuse it, changing nothing, once the store failed.

        A change it could not journal would hold until the restart the failure calls
        for, then be gone (a queue deleted here would come back with its messages).
        For the same reason a change that removes or alters something journals its
        record (and commits it) before it makes the change, and one that creates
        something takes it out again when its record is refused (a full disk): either
        way ``StoreFull`` leaves nothing changed. (Until 2026-12-07 a ``delete_queue``
        refused so had deleted the queue and its messages all the same.)

        Raises:
            StoreFailed: the journal failed closed.
        """
        if self.durable is not None:
            self.durable.before_topology()

    def ensure_open(self) -> None:
        """Raise ``Closed`` after ``close()`` (before any argument is looked at).

        Raises:
            Closed: the broker is closed.
        """
        if self.closed:
            raise Closed("the broker is closed")

    def now_us(self) -> int:
        """Read the clock, check the broker is open and apply everything due.

        The caller holds ``lock``. Returns the clock in microseconds.

        Raises:
            Closed: the broker is closed.
        """
        if self.closed:
            raise Closed("the broker is closed")
        if STORE_DEBUG:
            check_store(self.store)   # debug build: every invariant, before every call
        if self.durable is not None:
            self.durable.after_call()   # records of the last call: flushed when many
        now_us: int = self.store.tick(self.clock)
        return now_us

    def queue_id(self, name: object, argument: str = "queue") -> int:
        """The id of queue ``name`` (given as the caller's ``argument``).

        Raises:
            InvalidArgument: ``name`` is not a valid queue name.
            NotFound: no queue has that name.
        """
        return _look_up("queue", self.queues, name, argument)

    def topic_id(self, name: object, argument: str = "topic") -> int:
        """The id of topic ``name`` (given as the caller's ``argument``).

        Raises:
            InvalidArgument: ``name`` is not a valid topic name.
            NotFound: no topic has that name.
        """
        return _look_up("topic", self.topics, name, argument)

    def close(self) -> None:
        """Close the broker's storage and let go of its messages; later calls raise ``Closed``.

        Once: a durable broker's journal is closed (its messages stay there for the next
        start), then every message held in memory is freed.
        """
        with self.lock:
            if self.closed:
                return
            try:
                if self.durable is not None:
                    self.durable.close()
            finally:
                self.closed = True
                queue_ops.release_all(self.store)

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
        self.ensure_open()
        check_name("topic", name)
        settings = TopicSettings(fifo=fifo, content_dedup=content_dedup,
                                 dedup_window=plain_seconds(dedup_window))
        window_us = check_topic_settings(settings)
        with self.lock:
            self.now_us()
            existing = self._topic_settings.get(name)
            if existing is not None:
                if existing != settings:
                    raise AlreadyExists(f"topic {name!r} exists with other settings: {existing}")
                return
            if len(self.topics) >= self.max_topics:
                self.topics_refused += 1
                raise LimitExceeded(
                    f"topic {name!r} is not created: the broker holds max_topics="
                    f"{self.max_topics} topics; delete one first or raise the limit")
            self.refuse_topology_if_store_failed()
            self.topics[name] = self.dispatcher.add_topic(
                fifo, content_dedup, window_us, name.encode("ascii"))
            self._topic_settings[name] = settings
            self.topic_subscriptions[name] = {}
            self._routes[name] = {}
            self._target_order[name] = TargetPositions()
            self._topic_names.add(name)
            # Only patterns can feed a new topic, and only those whose tokens fit its name.
            for sid in self._pattern_index.matching(name):
                sub = self._subscriptions[sid]
                if self._queue_settings[sub.queue].fifo == settings.fifo:
                    self.topic_subscriptions[name][sid] = None
                    self._feeds[sid].add(name)
            if self.topic_subscriptions[name]:
                self._refresh_targets(name)
            if self.durable is not None:
                try:
                    self.durable.topic_created(name, self.topics[name], settings)
                except StoreFull:
                    self._remove_topic(name)   # (nothing else knows it yet)
                    raise

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its subscriptions (messages already enqueued stay)."""
        with self.lock:
            self.now_us()
            topic_id = self.topic_id(name, "name")
            self.refuse_topology_if_store_failed()
            if self.durable is not None:   # record first: refuse_topology_if_store_failed
                self.durable.topic_deleted(name, topic_id)
            self._remove_topic(name)

    def _remove_topic(self, name: str) -> None:
        """Take topic ``name`` and its subscriptions out of memory (journaling nothing)."""
        topic_id = self.topics[name]
        feeding = self.topic_subscriptions.pop(name)
        del self._routes[name], self._target_order[name]
        removed = [sid for sid in feeding if self._subscriptions[sid].topic == name]
        for subscription_id in feeding:
            self._feeds[subscription_id].discard(name)
        for subscription_id in removed:
            self._drop(subscription_id)
        self.dispatcher.remove_topic(topic_id)
        for subscription_id in removed:
            self.dispatcher.forget_subscription(subscription_id)
        del self.topics[name], self._topic_settings[name]
        self._topic_names.remove(name)

    def list_topics(self) -> list[str]:
        """Names of every topic, sorted."""
        with self.lock:
            self.now_us()
            return sorted(self.topics)

    def topic_settings(self, name: str) -> TopicSettings:
        """The settings topic ``name`` was created with (``fifo``, ``content_dedup``...).

        Raises:
            NotFound: the topic does not exist.
        """
        with self.lock:
            self.topic_id(name)   # raises NotFound
            return self._topic_settings[name]

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
        durable: bool | None = None,
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
            durable: its messages are journaled and survive a restart. None: True on a
                broker with a data directory, else False (True there is InvalidArgument).

        Raises:
            AlreadyExists: the queue exists with other settings.
            NotFound: ``dead_letter_queue`` does not exist.
            InvalidArgument: a setting is out of range or malformed.
        """
        self.ensure_open()
        if durable is None:
            durable = self.durable is not None
        elif type(durable) is not bool:
            raise InvalidArgument(f"durable must be None, True or False, got {durable!r:.80}")
        elif durable and self.durable is None:
            raise InvalidArgument(
                "durable=True needs a broker with a data_dir (this one is in memory)")
        settings, native = check_queue_settings(name, QueueSettings(
            visibility_timeout=visibility_timeout, max_receive_count=max_receive_count,
            dead_letter_queue=dead_letter_queue, delay=delay, max_messages=max_messages,
            max_bytes=max_bytes, max_message_size=max_message_size, retention=retention,
            overflow=overflow, max_priority=max_priority, fifo=fifo,
            content_dedup=content_dedup, dedup_window=dedup_window,
            redelivery_backoff=redelivery_backoff, durable=durable))
        with self.lock:
            self.now_us()
            existing = self._queue_settings.get(name)
            if existing is not None:
                if existing != settings:
                    raise AlreadyExists(already_exists_problem(name, existing, settings))
                return
            dlq_id = (-1 if settings.dead_letter_queue is None
                      else self.queue_id(settings.dead_letter_queue, "dead_letter_queue"))
            if len(self.queues) >= self.max_queues:
                self.queues_refused += 1
                raise LimitExceeded(
                    f"queue {name!r} is not created: the broker holds max_queues="
                    f"{self.max_queues} queues; delete one first or raise the limit")
            self.refuse_topology_if_store_failed()
            queue_id = queue_ops.add_queue(
                self.store, name, native.visibility_us, native.delay_us, native.retention_us,
                native.message_limit, native.byte_limit, native.max_message_size,
                native.receive_limit, dlq_id, native.overflow, native.max_priority,
                native.fifo, native.content_dedup, native.window_us, native.backoff_us)
            self.queues[name] = queue_id
            self.queue_names[queue_id] = name
            self.visibility_us[queue_id] = native.visibility_us
            self._queue_settings[name] = settings
            self._queue_subscriptions[name] = {}
            self._queue_patterns[name] = 0
            self._dead_letter_users[name] = {}
            if settings.dead_letter_queue is not None:
                self._dead_letter_users[settings.dead_letter_queue][name] = None
            if self.durable is not None:
                self.store.set_durable(queue_id, durable)
                try:
                    self.durable.queue_created(name, queue_id, settings)
                except StoreFull:
                    self._remove_queue(name)   # (empty: nothing else knows it yet)
                    raise

    def delete_queue(self, name: str) -> None:
        """Delete a queue, its messages and its subscriptions.

        Raises:
            InvalidArgument: the queue is the dead-letter queue of another queue.
        """
        with self.lock:
            self.now_us()
            queue_id = self.queue_id(name, "name")
            users = sorted(self._dead_letter_users[name])
            if users:
                raise InvalidArgument(
                    f"queue {name!r} is the dead-letter queue of {', '.join(users)}; "
                    f"delete those first")
            self.refuse_topology_if_store_failed()
            if self.durable is not None:   # record first: refuse_topology_if_store_failed
                self.durable.queue_deleted(name, queue_id)
            self._remove_queue(name)
            # A receive waiting on this queue (an embedded consumer's too) learns of the
            # deletion now (NotFound), as a client's long poll does, not when its wait ends.
            self.arrivals.notify_all()

    def _remove_queue(self, name: str) -> None:
        """Take queue ``name``, its messages and subscriptions out of memory (no record)."""
        queue_id = self.queues[name]
        removed = list(self._queue_subscriptions[name])
        for sid in removed:   # only the topics it fed change, each by one target
            for topic in list(self._feeds[sid]):
                self._detach(sid, name, topic)
            self._drop(sid)
        for sid in removed:
            self.dispatcher.forget_subscription(sid)
        queue_ops.remove_queue(self.store, queue_id)
        dead_letter_queue = self._queue_settings[name].dead_letter_queue
        if dead_letter_queue is not None:
            del self._dead_letter_users[dead_letter_queue][name]
        del self.queues[name], self._queue_settings[name], self.queue_names[queue_id]
        del self.visibility_us[queue_id]
        del self._queue_subscriptions[name], self._queue_patterns[name]
        del self._dead_letter_users[name]

    def list_queues(self) -> list[str]:
        """Names of every queue, sorted."""
        with self.lock:
            self.now_us()
            return sorted(self.queues)

    def queue_settings(self, name: str) -> QueueSettings:
        """The settings queue ``name`` has (those it was created with, as changed since)."""
        with self.lock:
            self.now_us()
            self.queue_id(name, "name")
            return self._queue_settings[name]

    def set_queue_settings(self, /, name: str, **changes: Any) -> QueueSettings:
        """Change settings of queue ``name``, as SQS's ``SetQueueAttributes``; returns them.

        ``changes`` are ``create_queue``'s keywords. Those of
        ``CHANGEABLE_QUEUE_SETTINGS`` may change; each applies from the next operation
        that reads it (a new lease, a publish's delay and limits, the next delivery's
        receive-count check, the next failure's backoff, the next dead letter), and
        ``retention`` to the messages already held too. A limit lowered below what the
        queue holds keeps those messages and applies its overflow policy to the next
        publish. The change is journaled (a durable broker keeps it over a restart).

        Raises:
            NotFound: the queue (or the new ``dead_letter_queue``) does not exist.
            InvalidArgument: an unknown setting, one that cannot change, a bad value, or
                a dead-letter queue that would lead back to this queue.
        """
        self.ensure_open()
        with self.lock:
            self.now_us()
            queue_id = self.queue_id(name, "name")
            present = self._queue_settings[name]
            settings, native = changed_queue_settings(name, present, changes)
            if settings == present:
                return present
            dead_letter_queue = settings.dead_letter_queue
            dlq_id = (-1 if dead_letter_queue is None
                      else self.queue_id(dead_letter_queue, "dead_letter_queue"))
            hop = dead_letter_queue
            while hop is not None:   # refuse a cycle: a dead letter would never rest
                if hop == name:
                    raise InvalidArgument(
                        f"queue {name!r}: dead_letter_queue={dead_letter_queue!r} leads "
                        f"back to {name!r} (a dead letter would go round for ever)")
                hop = self._queue_settings[hop].dead_letter_queue
            self.refuse_topology_if_store_failed()
            if self.durable is not None:   # record first: refuse_topology_if_store_failed
                self.durable.queue_settings_set(name, queue_id, settings)
            queue_ops.set_queue_settings(
                self.store, queue_id, native.visibility_us, native.delay_us,
                native.retention_us, native.message_limit, native.byte_limit,
                native.max_message_size, native.receive_limit, dlq_id, native.overflow,
                native.backoff_us)
            self.visibility_us[queue_id] = native.visibility_us
            self._queue_settings[name] = settings
            if present.dead_letter_queue != dead_letter_queue:
                if present.dead_letter_queue is not None:
                    del self._dead_letter_users[present.dead_letter_queue][name]
                if dead_letter_queue is not None:
                    self._dead_letter_users[dead_letter_queue][name] = None
            # A receive or a held publish waiting on this queue looks again (a limit
            # raised may have made room; the waits of a receive do not depend on it).
            self.arrivals.notify_all()
            return settings

    # -- subscriptions -----------------------------------------------------------------

    def _refresh_targets(self, topic: str) -> None:
        """Hand the dispatcher every target of ``topic`` again, from the ids feeding it.

        O(subscriptions of the topic): for the one change that moves a target (the
        first of the subscriptions feeding a queue fed twice goes: the queue's place is
        then its next one's), and after a failed in-place change (``_refeed``).
        """
        feeding = list(self.topic_subscriptions[topic])
        targets, policies, feeders = dispatch_targets(self._subscriptions, feeding, self.queues)
        self.dispatcher.set_targets(self.topics[topic], targets, policies, feeders)
        order = [self.queue_names[queue_id] for queue_id in targets]
        self._routes[topic] = dict(zip(order, feeders, strict=True))
        self._target_order[topic] = TargetPositions(order)

    def _attach(self, sid: int, topic: str) -> None:
        """Subscription ``sid`` (the newest) feeds ``topic`` from now on."""
        sub = self._subscriptions[sid]
        self.topic_subscriptions[topic][sid] = None
        self._feeds[sid].add(topic)
        route = self._routes[topic]
        if sub.queue in route:   # a queue fed twice: its policies become alternatives
            route[sub.queue].append(sid)   # the newest feeds last, as in feeding order
            self._refeed(topic, sub.queue)
            return
        # The newest id feeds last: its target goes after the others, where
        # dispatch_targets would put it, in amortised O(1).
        route[sub.queue] = [sid]
        self._target_order[topic].append(sub.queue)
        self.dispatcher.add_target(
            self.topics[topic], self.queues[sub.queue],
            None if sub.compiled is None else sub.compiled.plain, sid)

    def _detach(self, sid: int, queue: str, topic: str) -> None:
        """Subscription ``sid`` (of ``queue``) feeds ``topic`` no more."""
        del self.topic_subscriptions[topic][sid]
        route = self._routes[topic]
        if route[queue] != [sid]:   # the queue stays, fed by its other subscriptions
            if route[queue][0] == sid:   # its first goes: its place may move
                self._refresh_targets(topic)
            else:
                route[queue].remove(sid)
                self._refeed(topic, queue)
            return
        del route[queue]
        position = self._target_order[topic].remove(queue)
        self.dispatcher.remove_target(self.topics[topic], position)

    def _refeed(self, topic: str, queue: str) -> None:
        """Give ``queue``'s target of ``topic`` its feeders and filters again, in place.

        A queue fed twice by one topic (a direct subscription and a pattern, say): one of
        its subscriptions came, went (not the first) or changed its filter policy, so the
        target keeps its place. O(its subscriptions): until 2026-12-06 every such change
        rebuilt the topic's targets in full (8.6 ms a change beside 3,000 filtered
        subscriptions; bench/e2e_topology.py).
        """
        feeders = self._routes[topic][queue]
        try:
            self.dispatcher.replace_target(
                self.topics[topic], self._target_order[topic].position(queue),
                target_policies(self._subscriptions, feeders), list(feeders))
        except Exception:
            # half done (a policy refused, no memory): every target anew, from the ids
            self._refresh_targets(topic)
            raise

    def _drop(self, sid: int) -> Subscription:
        """Forget subscription ``sid`` in the name tables (not in the dispatcher)."""
        sub = self._subscriptions.pop(sid)
        del self._pairs[(sub.topic, sub.queue)]
        del self._queue_subscriptions[sub.queue][sid]
        del self._feeds[sid]
        if sid in self._patterns:
            del self._patterns[sid]
            self._pattern_index.remove(sub.topic, sid)
            self._queue_patterns[sub.queue] -= 1
        return sub

    def _keep_topics(self, queue: str) -> None:
        """Set whether ``queue`` keeps topics: it does while it holds a pattern subscription.

        Each message published to a queue keeping topics carries the topic it was
        published on (``message.topic``); other messages do not pay for it.
        """
        queue_ops.set_keeps_topics(self.store, self.queues[queue],
                                   self._queue_patterns[queue] > 0)

    def _refuse_subscription(self, topic: str, queue: str, fed: list[str]) -> None:
        """LimitExceeded (counted) if one of the topics ``fed`` is at its subscription limit."""
        limit = self.max_subscriptions_per_topic
        for name in fed:
            if len(self.topic_subscriptions[name]) >= limit:
                self.subscriptions_refused += 1
                raise LimitExceeded(
                    f"queue {queue!r} is not subscribed to {topic!r}: topic {name!r} has "
                    f"max_subscriptions_per_topic={limit} subscriptions; unsubscribe one "
                    f"first or raise the limit")

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
        self.ensure_open()
        _check_text("topic", topic, "a topic name or pattern")
        _check_text("queue", queue, "a queue name")
        _check_filter_policy(filter_policy)
        compiled, normalized = compile_policy(filter_policy, filter_scope)
        with self.lock:
            self.now_us()
            if is_pattern(topic):
                validate_pattern(topic)
            else:
                self.topic_id(topic)
                topic_fifo = self._topic_settings[topic].fifo
                if topic_fifo != self._queue_settings.get(queue, QueueSettings()).fifo:
                    self.queue_id(queue)
                    raise InvalidArgument(
                        f"topic {topic!r} is {'FIFO' if topic_fifo else 'standard'} and queue "
                        f"{queue!r} is not: a FIFO topic feeds FIFO queues only, and FIFO "
                        f"queues subscribe to FIFO topics only")
            self.queue_id(queue)
            sid = self._pairs.get((topic, queue), 0)
            if sid:
                sub = self._subscriptions[sid]
                if (sub.filter_policy, sub.filter_scope) != (normalized, filter_scope):
                    raise AlreadyExists(
                        f"queue {queue!r} is subscribed to {topic!r} already (subscription "
                        f"{sid}) with another filter policy; change it with set_filter_policy "
                        f"(fastfanout set-filter-policy {sid} POLICY)")
                return sid
            sub = Subscription(topic, queue, normalized, filter_scope, compiled)
            pattern = is_pattern(topic)
            if pattern and len(self._patterns) >= self.max_pattern_subscriptions:
                # A pattern that matches no topic counts toward no topic's limit.
                self.pattern_subscriptions_refused += 1
                raise LimitExceeded(
                    f"queue {queue!r} is not subscribed to {topic!r}: the broker holds "
                    f"max_pattern_subscriptions={self.max_pattern_subscriptions} pattern "
                    f"subscriptions; unsubscribe one first or raise the limit")
            if pattern:   # O(topics under its literal tokens), not O(topics)
                queue_fifo = self._queue_settings[queue].fifo
                fed = [name for name in self._topic_names.matching(topic)
                       if self._topic_settings[name].fifo == queue_fifo]
            else:
                fed = [topic]
            self._refuse_subscription(topic, queue, fed)
            self.refuse_topology_if_store_failed()
            sid = self._next_subscription
            self._next_subscription += 1
            self._subscriptions[sid] = sub
            self._pairs[(topic, queue)] = sid
            self._queue_subscriptions[queue][sid] = None
            self._feeds[sid] = set()
            if pattern:
                self._patterns[sid] = None
                self._pattern_index.add(topic, sid)
                self._queue_patterns[queue] += 1
            for name in fed:
                self._attach(sid, name)
            if pattern:
                self._keep_topics(queue)
            if self.durable is not None:
                try:
                    self.durable.subscribed(sid, self._subscriptions[sid])
                except StoreFull:
                    self._remove_subscription(sid)   # (nothing was routed through it)
                    raise
            return sid

    def set_filter_policy(
        self,
        subscription_id: int,
        filter_policy: Mapping[str, Any] | str | None,
        *,
        filter_scope: str | None = None,
    ) -> None:
        """Replace a subscription's filter policy; it applies from the next publish on.

        Args:
            subscription_id: the subscription.
            filter_policy: the new policy, or None to deliver everything.
            filter_scope: ``"attributes"`` or ``"body"``; None (the default) keeps the
                subscription's scope, as SNS keeps ``FilterPolicyScope`` when only
                ``FilterPolicy`` is set.

        Raises:
            NotFound: no subscription has this id.
            InvalidFilterPolicy: the policy is malformed or over a limit (for the scope it
                would have); nothing changed.
            InvalidArgument: ``filter_scope`` is not None, "attributes" or "body".
        """
        self.ensure_open()
        _check_filter_policy(filter_policy)
        if filter_scope is not None:
            compiled, normalized = compile_policy(filter_policy, filter_scope)
        with self.lock:
            self.now_us()
            sub = self._subscription(subscription_id)
            if filter_scope is None:
                filter_scope = sub.filter_scope
                compiled, normalized = compile_policy(filter_policy, filter_scope)
            self.refuse_topology_if_store_failed()
            changed = Subscription(sub.topic, sub.queue, normalized, filter_scope, compiled)
            if self.durable is not None:   # record first: refuse_topology_if_store_failed
                self.durable.filter_policy_set(subscription_id, changed)
            self._subscriptions[subscription_id] = changed
            for topic in self._feeds[subscription_id]:
                if len(self._routes[topic][sub.queue]) == 1:   # its own target: O(1)
                    self.dispatcher.set_target_policy(
                        self.topics[topic], self._target_order[topic].position(sub.queue),
                        None if compiled is None else compiled.plain)
                else:   # a queue fed twice: its alternatives change, not its place
                    self._refeed(topic, sub.queue)

    def _subscription(self, subscription_id: object) -> Subscription:
        if type(subscription_id) is not int:
            raise InvalidArgument(
                f"subscription_id must be an int, got {type(subscription_id).__name__}")
        if not -(1 << 63) <= subscription_id < (1 << 64):   # as a client can send it
            raise InvalidArgument(f"subscription_id={subscription_id!r:.40} is outside the "
                                  f"64-bit integer range")
        sub = self._subscriptions.get(subscription_id)
        if sub is None:
            raise NotFound(f"subscription {subscription_id} does not exist")
        return sub

    def unsubscribe(self, subscription_id: int) -> None:
        """Remove a subscription.

        Raises:
            NotFound: no subscription has this id.
        """
        with self.lock:
            self.now_us()
            self._subscription(subscription_id)
            self.refuse_topology_if_store_failed()
            if self.durable is not None:   # record first: refuse_topology_if_store_failed
                self.durable.unsubscribed(subscription_id)
            self._remove_subscription(subscription_id)

    def _remove_subscription(self, subscription_id: int) -> None:
        """Take a subscription out of memory (journaling nothing)."""
        sub = self._subscriptions[subscription_id]
        fed = self._feeds[subscription_id]
        self._drop(subscription_id)
        for topic in fed:
            self._detach(subscription_id, sub.queue, topic)
        self.dispatcher.forget_subscription(subscription_id)
        if is_pattern(sub.topic):
            self._keep_topics(sub.queue)

    def topology_stats(self) -> TopologyStats:
        """The topology's size, its limits and the calls they refused."""
        with self.lock:
            return TopologyStats(
                topics=len(self.topics), queues=len(self.queues),
                subscriptions=len(self._subscriptions), max_topics=self.max_topics,
                max_queues=self.max_queues,
                max_subscriptions_per_topic=self.max_subscriptions_per_topic,
                topics_refused=self.topics_refused, queues_refused=self.queues_refused,
                subscriptions_refused=self.subscriptions_refused,
                pattern_subscriptions=len(self._patterns),
                max_pattern_subscriptions=self.max_pattern_subscriptions,
                pattern_subscriptions_refused=self.pattern_subscriptions_refused)

    def list_subscriptions(self) -> dict[int, tuple[str, str]]:
        """Every subscription: id -> (topic or pattern, queue)."""
        with self.lock:
            self.now_us()
            return {sid: (sub.topic, sub.queue) for sid, sub in self._subscriptions.items()}

    def subscription(self, subscription_id: int) -> Subscription:
        """The record of one subscription (topic or pattern, queue, filter policy)."""
        with self.lock:
            self.now_us()
            return self._subscription(subscription_id)


class StorageView:
    """The broker's side of the interface to its storage (``durability.BrokerState``).

    A durable broker's storage (``fastfanout.storage.durability.Durability``) reads and restores
    the broker's state through this view only: the native store, the clock, the
    topology with its ids and dedup windows, and ``restore_topology`` for recovery.
    The broker reports its changes to storage through ``Durability``'s
    ``topic_created`` ... ``unsubscribed``; the store journals per-message changes
    itself. Nothing here takes the broker's lock: storage calls it from the broker's
    own calls (which hold it) or while the broker is being built.

    Args:
        broker: the broker whose state it shows.
    """

    def __init__(self, broker: Administration) -> None:
        self._broker = broker

    @property
    def store(self) -> Store:
        """The broker's native store (journal, copies, live segments)."""
        return self._broker.store

    def now_us(self) -> int:
        """The broker's clock, microseconds, after applying everything due."""
        now_us: int = self._broker.store.tick(self._broker.clock)
        return now_us

    def topology(self) -> Topology:
        """Topics, queues (in creation order) and subscriptions, with ids and windows."""
        broker = self._broker
        return Topology(
            topics=[TopicState(name, topic_id, broker._topic_settings[name],
                               broker.dispatcher.dedup_window(topic_id))
                    for name, topic_id in broker.topics.items()],
            queues=[QueueState(name, queue_id, broker._queue_settings[name],
                               broker.store.dedup_window(queue_id))
                    for name, queue_id in broker.queues.items()],
            subscriptions=dict(broker._subscriptions),
            next_subscription=broker._next_subscription)

    def restore_topology(self, topology: Topology) -> None:
        """Create ``topology`` in this (new, empty) broker; see ``BrokerState``.

        The topology limits do not apply to what was accepted before the restart (a
        broker restarted with lower limits opens with all of it, and refuses more).
        """
        broker = self._broker
        limits = (broker.max_topics, broker.max_queues, broker.max_subscriptions_per_topic,
                  broker.max_pattern_subscriptions)
        broker.max_topics = broker.max_queues = _MAX_TOPOLOGY_LIMIT
        broker.max_subscriptions_per_topic = _MAX_TOPOLOGY_LIMIT
        broker.max_pattern_subscriptions = _MAX_TOPOLOGY_LIMIT
        try:
            self._restore(topology)
        finally:
            (broker.max_topics, broker.max_queues, broker.max_subscriptions_per_topic,
             broker.max_pattern_subscriptions) = limits
        if len(broker.topics) > broker.max_topics or len(broker.queues) > broker.max_queues:
            log.warning("the recovered broker holds %d topics and %d queues, over its "
                        "max_topics=%d or max_queues=%d: it refuses more until some are "
                        "deleted", len(broker.topics), len(broker.queues),
                        broker.max_topics, broker.max_queues)

    def _restore(self, topology: Topology) -> None:
        broker = self._broker
        for topic in topology.topics:
            settings = topic.settings
            broker.create_topic(topic.name, fifo=settings.fifo,
                                content_dedup=settings.content_dedup,
                                dedup_window=settings.dedup_window)
        for queue in topology.queues:
            arguments = {field: getattr(queue.settings, field)
                         for field in QueueSettings.__dataclass_fields__}
            broker.create_queue(queue.name, **arguments)
        for sid, sub in sorted(topology.subscriptions.items()):
            if sub.queue not in broker.queues or (
                    sub.topic not in broker.topics and not is_pattern(sub.topic)):
                continue
            broker._next_subscription = sid
            try:
                broker.subscribe(sub.topic, sub.queue, filter_policy=sub.filter_policy,
                                 filter_scope=sub.filter_scope)
            except InvalidArgument as error:   # accepted by an older version, refused now
                log.warning("subscription %d (%s -> %s) is not restored: %s", sid,
                            sub.topic, sub.queue, error)
        broker._next_subscription = max(broker._next_subscription, topology.next_subscription)
