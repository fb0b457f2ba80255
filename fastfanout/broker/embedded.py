"""The embedded broker: SNS-style topics fanning out to SQS-style queues, in process.

``Broker`` is the thin, typed face of the native core (``fastfanout._ext``): it checks
arguments, keeps the name tables, reads the clock and serialises calls; the core does
everything per message. The server (``fastfanout.server.loop``) wraps one ``Broker``, and the
client offers the very same methods, so code written against one runs against the other.

The broker's state and its administration (topics, queues, subscriptions) live in a part
the broker holds, ``fastfanout.broker.administration.Administration`` (composed, not
inherited): ``Broker``'s administration calls are that part's, delegated with the same
signatures and docstrings, and the broker's message path works on the parts it exposes.
This module holds the message path: publish and send, receive, the settle calls, stats.
The server's calls (encoded fast paths, settling by packed receipts, owner tags) are no
part of the broker API: they live on ``ServerPort``, which the server gets through one
documented internal handle, ``Broker.server_port()``, so ``Broker``'s public surface is
the declared API (``fastfanout.api``) and a few extras of the embedded broker.

Thread safety: every call holds one lock for its whole duration (the core is not
re-entrant). ``receive(wait=...)`` waits on a condition of that lock (a native
``FastCondition``), woken by every publish or send while a receiver waits, and by the
next timer due time.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

from fastfanout._ext import queues as queue_ops
from fastfanout._ext import receipts as by_receipt
from fastfanout._ext.batches import EncodedBatch, PublishBatch, RingBatch
from fastfanout._ext.blobs import BodySource
from fastfanout._ext.deliveries import receive, receive_push
from fastfanout._ext.invariants import check as check_store
from fastfanout._ext.message import Message
from fastfanout._ext.single import SingleCalls
from fastfanout._ext.sinks import FrameSink
from fastfanout._ext.store import DEBUG as STORE_DEBUG
from fastfanout._ext.wire import pack_receipts
from fastfanout.broker.administration import Administration
from fastfanout.broker.consumer import BrokerConsumer
from fastfanout.broker.producer import DEFAULT_CAPACITY, DEFAULT_MAX_BYTES, Producer
from fastfanout.broker.replies import Inbox
from fastfanout.errors import Closed, FastFanoutError, InvalidArgument, NotFound
from fastfanout.records import Attributes, Body, PublishEntry, PublishResult, Reply
from fastfanout.semantics.replies import (
    DEFAULT_REQUEST_TIMEOUT,
    check_request_timeout,
    decode_reply,
    encode_reply,
    no_reply,
    no_responders,
    parse_address,
    reply_address,
    request_attributes,
)
from fastfanout.settings import (
    DEFAULT_MAX_PATTERN_SUBSCRIPTIONS,
    DEFAULT_MAX_QUEUES,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC,
    DEFAULT_MAX_TOPICS,
    MAX_DELAY,
    MAX_RECEIVE_BATCH,
    MAX_VISIBILITY_TIMEOUT,
    MAX_WAIT,
    QueueSettings,
    Subscription,
    TopicSettings,
    check_iterable,
    check_producer_topic,
    optional_count,
    seconds_to_us,
)
from fastfanout.stats import (
    DROP_REASONS,
    SUBSCRIPTION_DROP_REASONS,
    BrokerStats,
    QueueStats,
    SubscriptionStats,
    TopicStats,
)

if TYPE_CHECKING:
    from fastfanout.storage.durability import CommitTicket

_Taken = TypeVar("_Taken")
_Arguments = ParamSpec("_Arguments")
_Result = TypeVar("_Result")
_EMPTY_FRAME = b"FFB1" + bytes(4)   # a delivery frame of no record

__all__ = [
    "MAX_DELAY",
    "MAX_VISIBILITY_TIMEOUT",
    "Broker",
    "QueueSettings",
    "ServerPort",
    "Subscription",
    "TopicSettings",
]


def _entry(
    body: Body,
    attributes: Attributes | None,
    delay: float | None,
    deliver_at: float | datetime | None,
    group_id: str | None,
    dedup_id: str | None,
    priority: int | None,
    ttl: float | None,
) -> Body | PublishEntry:
    """A bare body when nothing else is given (the fast path), else a PublishEntry."""
    if (attributes is None and delay is None and deliver_at is None and group_id is None
            and dedup_id is None and priority is None and ttl is None):
        return body
    return PublishEntry(body, attributes, delay, deliver_at, group_id, dedup_id, priority, ttl)  # type: ignore[arg-type]


def _administration(
    method: Callable[Concatenate[Administration, _Arguments], _Result],
) -> Callable[Concatenate[Broker, _Arguments], _Result]:
    """``Broker``'s twin of an ``Administration`` call: the call of the part it holds.

    The twin keeps the call's name, docstring and signature (``inspect.signature`` reads
    it through ``__wrapped__``), so the API parity check and ``help()`` see the call
    itself; it costs one Python call more (these calls are not on a hot path).
    """
    @functools.wraps(method)
    def delegated(broker: Broker, /, *args: _Arguments.args,
                  **kwargs: _Arguments.kwargs) -> _Result:
        try:
            return method(broker._admin, *args, **kwargs)
        except TypeError:
            # Python names the part's method in a wrong call's error
            # ("Administration.create_queue() got an unexpected keyword argument"): the
            # user called Broker's. A TypeError from within the call is left as it is.
            try:
                inspect.signature(method).bind(broker._admin, *args, **kwargs)
            except TypeError as wrong:
                raise TypeError(f"Broker.{method.__name__}() {wrong}") from None
            raise

    delegated.__qualname__ = f"Broker.{method.__name__}"
    return delegated


class Broker:
    """An in-process broker: topics, subscriptions and queues, no sockets.

    Args:
        clock: a callable returning the time in seconds (float). Defaults to
            ``time.time``. Tests pass a fake clock to move time by hand; every lease,
            delay and retention is measured on it.
        data_dir: None (the default) keeps everything in memory. A directory makes the
            broker durable: it locks ``DATA_DIR/lock`` (``BrokerRunning`` if another
            broker holds it), recovers topology and messages from the journal before
            returning, and journals every change from then on (docs/storage.md).
            ``InvalidArgument`` if it is a file (or below one), not a str path.
        fsync: ``always`` (default: a publish or send returns once it is on disk),
            ``interval`` (fdatasync at most every ``fsync_interval``) or ``never``.
            Under every policy a returned publish is in the file (survives kill -9).
        fsync_interval: seconds between fdatasyncs with ``interval`` (default 1.0).
        max_disk_bytes: journal bytes on disk beyond which publishes and sends are
            refused with ``StoreFull`` (settles are always allowed); None: no limit.
        max_topics: most topics (default ``DEFAULT_MAX_TOPICS``, 100,000); one more
            is ``LimitExceeded`` (counted in ``stats().topology``).
        max_queues: most queues (default 100,000); one more is ``LimitExceeded``.
        max_subscriptions_per_topic: most subscriptions feeding one topic, its own and
            the patterns matching it (default 100,000); one more is ``LimitExceeded``.
        max_pattern_subscriptions: most pattern subscriptions (``orders.*``), matching
            topics or not (default 100,000); one more is ``LimitExceeded``.

    Every method raises ``Closed`` after ``close()``. Bad arguments raise a subclass of
    ``FastFanoutError`` and change nothing.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None,
                 data_dir: str | os.PathLike[str] | None = None, fsync: str = "always",
                 fsync_interval: float = 1.0, max_disk_bytes: int | None = None,
                 max_topics: int = DEFAULT_MAX_TOPICS, max_queues: int = DEFAULT_MAX_QUEUES,
                 max_subscriptions_per_topic: int = DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC,
                 max_pattern_subscriptions: int = DEFAULT_MAX_PATTERN_SUBSCRIPTIONS
                 ) -> None:
        admin = Administration(clock=clock, data_dir=data_dir, fsync=fsync,
                               fsync_interval=fsync_interval, max_disk_bytes=max_disk_bytes,
                               max_topics=max_topics, max_queues=max_queues,
                               max_subscriptions_per_topic=max_subscriptions_per_topic,
                               max_pattern_subscriptions=max_pattern_subscriptions)
        self._admin = admin
        self._inbox = Inbox()   # where the replies to this broker's requests arrive
        # a server serving this broker: where replies to other inboxes go (its sessions')
        self._reply_router: Callable[[str, int, bytes], None] | None = None
        # the producers still open: close() flushes them first, as a client's close does
        self._producers: weakref.WeakSet[Producer] = weakref.WeakSet()
        # the consumers: close() empties what their iterations took and did not yield
        self._consumers: weakref.WeakSet[BrokerConsumer] = weakref.WeakSet()
        # The parts the message path works on: the administration's own objects (never
        # rebound), held here so that the hot paths look them up on ``self`` alone.
        self._clock = admin.clock
        self._store = admin.store
        self._dispatcher = admin.dispatcher
        self._lock = admin.lock
        self._arrivals = admin.arrivals
        self._queues = admin.queues
        self._queue_names = admin.queue_names
        self._visibility_us = admin.visibility_us
        self._topics = admin.topics
        self._topic_subscriptions = admin.topic_subscriptions
        self._durable = admin.durable
        self._ensure_open = admin.ensure_open
        self._now_us = admin.now_us
        self._queue_id = admin.queue_id
        self._topic_id = admin.topic_id
        # One-message publish, send, receive and ack in one C call each (not durable,
        # not the debug build: those take the Python path, which journals and checks).
        self._single: SingleCalls | None = None
        if self._durable is None and not STORE_DEBUG:
            # A per-message publish, send, receive or ack is one C call from the caller's
            # loop: the instance's methods are SingleCalls' (the same signatures; other
            # forms go back to the class's methods). A subclass's own methods stay in
            # charge (its own ack: of the messages received one at a time too).
            cls = type(self)
            single = self._single = SingleCalls(
                self, self._lock, self._arrivals, self._store, self._dispatcher,
                self._topics, self._queues, self._queue_names, self._clock,
                self._topic_id, self._queue_id,
                Broker.publish.__get__(self), Broker.send.__get__(self),
                Broker.receive.__get__(self), Broker.ack.__get__(self),
                settles=cls.ack is Broker.ack)
            if cls.publish is Broker.publish:
                self.publish = single.publish  # type: ignore[method-assign]
            if cls.send is Broker.send:
                self.send = single.send  # type: ignore[method-assign]
            if cls.receive is Broker.receive:
                self.receive = single.receive  # type: ignore[method-assign]
            if cls.ack is Broker.ack:
                self.ack = single.ack  # type: ignore[method-assign]

    # -- administration (the part the broker holds) -------------------------------------

    create_topic = _administration(Administration.create_topic)
    delete_topic = _administration(Administration.delete_topic)
    list_topics = _administration(Administration.list_topics)
    create_queue = _administration(Administration.create_queue)
    delete_queue = _administration(Administration.delete_queue)
    list_queues = _administration(Administration.list_queues)
    topic_settings = _administration(Administration.topic_settings)
    queue_settings = _administration(Administration.queue_settings)
    set_queue_settings = _administration(Administration.set_queue_settings)
    subscribe = _administration(Administration.subscribe)
    set_filter_policy = _administration(Administration.set_filter_policy)
    unsubscribe = _administration(Administration.unsubscribe)
    list_subscriptions = _administration(Administration.list_subscriptions)
    subscription = _administration(Administration.subscription)

    def _wake_receivers(self) -> None:
        self._arrivals.notify_all()   # one test in C when nobody waits

    # -- publish and send --------------------------------------------------------------

    def _enqueue(self, topic: str | None, queue: str | None,
                 entries: Iterable[Any] | EncodedBatch | RingBatch,
                 commit: bool = True) -> PublishBatch:
        """Run one batch through the dispatcher: to a topic's queues, or to one queue.

        A durable broker refuses it when its store is full or failed, and (``commit``)
        commits before returning, so the result is a confirm.
        """
        # The hot path of every publish and send: lookups inlined, no helper calls.
        durable = self._durable
        with self._lock:
            now_us = self._now_us()
            if durable is not None:
                durable.before_publish()
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
            self._arrivals.notify_all()   # one test in C when nobody waits
            if durable is not None:
                if commit:
                    durable.commit()
                else:
                    durable.after_call()
            return batch

    def _enqueue_one(self, topic: str | None, queue: str | None,
                     entry: Body | PublishEntry) -> PublishResult:
        """``publish``/``send`` of one message: a batch of one.

        Its refusals, as every batch of one's, name no place in it (no "entry 0: ...").
        """
        result: PublishResult = self._enqueue(topic, queue, [entry])[0]
        return result

    def publish(
        self,
        topic: str,
        body: Body,
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
        single = self._single
        if (single is not None and attributes is None and delay is None
                and deliver_at is None and group_id is None and dedup_id is None
                and priority is None and ttl is None):
            result: PublishResult = single.publish(topic, body)   # one C call
            return result
        self._ensure_open()
        return self._enqueue_one(topic, None, _entry(
            body, attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))

    def publish_batch(
        self, topic: str, entries: Iterable[Body | PublishEntry]
    ) -> PublishBatch:
        """Publish many messages at once: all are enqueued, or none.

        Args:
            topic: the topic name.
            entries: bodies, or ``PublishEntry`` tuples for attributes and delays; or an
                array batch, read natively: a 2-D or structured numpy array (one row =
                one body) or a ``(buffer, offsets)`` pair (docs/arrays.md).

        Returns:
            A sequence of ``PublishResult``, one per entry, in order.
        """
        check_iterable("entries", entries)
        return self._enqueue(topic, None, entries)

    def send(
        self,
        queue: str,
        body: Body,
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
        single = self._single
        if (single is not None and attributes is None and delay is None
                and deliver_at is None and group_id is None and dedup_id is None
                and priority is None and ttl is None):
            result: PublishResult = single.send(queue, body)   # one C call
            return result
        self._ensure_open()
        return self._enqueue_one(None, queue, _entry(
            body, attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))

    def send_batch(
        self, queue: str, entries: Iterable[Body | PublishEntry]
    ) -> PublishBatch:
        """Send many messages straight to a queue: all are enqueued, or none."""
        check_iterable("entries", entries)
        return self._enqueue(None, queue, entries)

    # -- lock-free producers ------------------------------------------------------------

    def producer(
        self, topic: str, *, group_id: str | None = None, capacity: int = DEFAULT_CAPACITY,
        max_bytes: int = DEFAULT_MAX_BYTES
    ) -> Producer:
        """A producer for one thread: ``offer()`` copies into a ring, ``flush()`` publishes.

        Args:
            topic: the topic to publish to (it must exist now; it is looked up again at
                each flush).
            group_id: the FIFO group of every message offered (a FIFO topic needs one,
                and ``content_dedup``: a producer's messages carry no dedup id), or None.
            capacity: messages the ring holds (rounded up to a power of two).
            max_bytes: body bytes the ring holds.

        Returns:
            A ``Producer`` (see ``fastfanout.broker.producer``); use it as a context manager or
            close it, which flushes.

        Raises:
            NotFound: the topic does not exist.
            InvalidArgument: ``group_id`` is not a non-empty str of at most 128 UTF-8
                bytes; the topic is FIFO and ``group_id`` is None, or FIFO without
                ``content_dedup`` (nothing is opened).
        """
        self._ensure_open()
        with self._lock:
            self._now_us()
            self._topic_id(topic)
            settings = self._admin.topic_settings(topic)
        check_producer_topic(topic, settings.fifo, settings.content_dedup, group_id)
        producer = Producer(self._publish_ring, topic, capacity, max_bytes, group_id=group_id)
        self._producers.add(producer)
        return producer

    def _publish_ring(self, topic: str, batch: RingBatch | Any) -> PublishBatch:
        return self._enqueue(topic, None, batch)

    # -- the server's port -------------------------------------------------------------

    def server_port(self) -> ServerPort:
        """The broker's internal port: the server's encoded fast paths and owner tags.

        The one documented internal handle (see ``ServerPort``): what the server and the
        embedded consumer call besides the broker API. Not part of that API; a client
        has no such calls.
        """
        return ServerPort(self)

    # -- timers ------------------------------------------------------------------------

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
        owner: int = 0,
    ) -> list[Message]:
        """Lease up to ``max_messages`` visible messages.

        Args:
            queue: the queue name.
            max_messages: 1 to 10,000.
            wait: seconds (real time, 0 to 20) to wait for a message when none is visible.
            visibility_timeout: lease length in seconds (default: the queue's).
            owner: an open owner tag (``ServerPort.open_owner``) whose leases these are:
                at most its credit of them (its prefetch less the leases it holds); 0: none.

        Returns:
            The leased messages, each with a fresh receipt (maybe none).
        """
        single = self._single
        if (single is not None and max_messages == 1 and type(max_messages) is int
                and type(wait) is float and 0.0 <= wait <= MAX_WAIT
                and visibility_timeout is None and owner == 0 and type(owner) is int):
            received: list[Message] = single.receive(queue, wait=wait)   # one C call
            return received
        store = self._store
        durable = self._durable

        def take(queue_id: int, lease_us: int, now_us: int) -> list[Message] | None:
            leased = receive(store, queue_id, max_messages, lease_us, now_us, self, owner)
            if leased and durable is not None:
                durable.write_leases()   # their receive counts survive a crash
            return leased or None

        return self._receive_waiting(queue, max_messages, wait, visibility_timeout, take) or []

    def _receive_waiting(self, queue: str, max_messages: int, wait: float,
                         visibility_timeout: float | None,
                         take: Callable[[int, int, int], _Taken | None]) -> _Taken | None:
        """``receive``'s checks and wait for another form of result (``receive_frame``).

        Calls ``take(queue_id, lease_us, now_us)`` under the lock until it finds
        something or ``wait`` seconds pass (None then).
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
            found = take(queue_id, lease_us, now_us)
            if found is not None or not wait_us:
                return found
            deadline = time.monotonic() + wait_us / 1_000_000
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                next_due = self._store.next_due_us()
                if next_due is not None:
                    # Wake at the due time itself (a 20 µs floor keeps it from spinning).
                    remaining = min(remaining, max(next_due - now_us, 20) / 1_000_000)
                self._arrivals.wait(remaining)
                now_us = self._now_us()
                if queue not in self._queues or self._queues[queue] != queue_id:
                    raise NotFound(f"queue {queue!r} was deleted while waiting")
                found = take(queue_id, lease_us, now_us)
                if found is not None:
                    return found

    def consume(self, queue: str, *, prefetch: int = 100,
                visibility_timeout: float | None = None,
                timeout: float | None = None) -> BrokerConsumer:
        """Consume a queue in process: iterate for messages as they become visible.

        The embedded twin of ``Client.consume`` (``fastfanout.broker.consumer``): no
        polling (each wait is woken by publishes and settles), and never more than
        ``prefetch`` unsettled messages, however they are settled.

        Args:
            queue: the queue to consume.
            prefetch: most unsettled messages the consumer holds (1 to 1,000,000).
            visibility_timeout: lease of each message, seconds (default: the queue's).
            timeout: end the iteration when no message comes within this many seconds
                (None: wait forever).

        Raises:
            NotFound: the queue does not exist.
            InvalidArgument: ``prefetch``, ``visibility_timeout`` or ``timeout`` is out of
                range.
        """
        self._ensure_open()
        if visibility_timeout is not None:
            seconds_to_us("visibility_timeout", visibility_timeout,
                          maximum=MAX_VISIBILITY_TIMEOUT)
        with self._lock:
            self._queue_id(queue)
        consumer = BrokerConsumer(self, ServerPort(self), queue, prefetch,
                                  visibility_timeout, timeout)
        self._consumers.add(consumer)
        return consumer

    # -- requests and replies (fastfanout.semantics.replies) ---------------------------

    def request(self, topic: str, body: Body, *, attributes: Attributes | None = None,
                timeout: float = DEFAULT_REQUEST_TIMEOUT, group_id: str | None = None,
                dedup_id: str | None = None, priority: int | None = None,
                ttl: float | None = None) -> Reply:
        """Publish a message that asks for a reply, and wait for the first reply.

        The arguments, result and errors are ``fastfanout.api.BrokerAPI.request``'s. The
        reply address is in this broker's inbox, which ``message.reply(body)`` answers
        from any thread; the wait holds no lock of the broker, and ``close()`` ends it
        (``Closed``).
        """
        timeout = check_request_timeout(timeout)
        inbox = self._inbox
        number = inbox.open()
        try:
            result = self.publish(
                topic, body, attributes=request_attributes(
                    attributes, reply_address(inbox.name, number)),
                group_id=group_id, dedup_id=dedup_id, priority=priority,
                ttl=ttl)
        except BaseException:
            inbox.forget(number)
            raise
        inbox.published()
        if result.deliveries == 0:
            inbox.forget(number)
            raise no_responders(topic, result)
        frame = inbox.take(number, timeout)
        if frame is None:
            raise no_reply(topic, result, timeout)
        return decode_reply(frame)

    def reply(self, address: str, body: Body, *,
              attributes: Attributes | None = None) -> None:
        """Answer a request: hand ``body`` to the requester waiting at ``address``.

        ``message.reply(body)`` calls this with the message's ``fastfanout.reply_to``.
        A reply to another inbox goes to the server serving this broker, if one does (a
        client's request); one that finds no requester waiting (timed out, answered
        already, gone) is dropped and counted (``stats().replies.replies_dropped``, or the
        server's ``replies_dropped``); that is not an error, as in NATS.

        Args:
            address: a request's ``fastfanout.reply_to`` attribute.
            body: the reply's body (bytes-like).
            attributes: name -> value, as ``publish`` takes.

        Raises:
            InvalidArgument: ``address`` is not a reply address, or a bad body or
                attributes.
            Closed: the broker is closed.
        """
        self._ensure_open()
        inbox_name, number = parse_address(address)
        frame = encode_reply(body, attributes)
        if inbox_name == self._inbox.name:
            self._inbox.deliver(number, frame)
            return
        router = self._reply_router
        if router is not None:
            router(inbox_name, number, frame)
        else:
            self._inbox.drop()

    # -- settle ------------------------------------------------------------------------

    def ack(self, receipt: int, *, session: int = 0) -> None:
        """Delete the message of a delivery.

        Every settle call takes ``session``: 0 (the default, in-process code) may settle
        any delivery; the server passes the tag of the session a request came from
        (``ServerPort.open_owner``), and a delivery made for another session is stale to
        it.

        Raises:
            StaleReceipt: the lease of that delivery has ended (or is another session's).
        """
        with self._lock:
            self._now_us()
            by_receipt.ack(self._store, receipt, session)
            self._arrivals.notify_all()   # a consumer out of credit may take more now

    def ack_batch(self, receipts: Iterable[int], *, session: int = 0) -> None:
        """Ack many deliveries: all of them, or (if any receipt is stale) none.

        Args:
            receipts: ints, or a 1-D ``uint64`` array (read natively, no Python object
                per receipt).
            session: the server's session tag (see ``ack``).

        Raises:
            StaleReceipt: with ``receipts`` listing the stale ones; nothing was acked.
            InvalidArgument: a receipt is not an int in [0, 2**64).
        """
        self._ensure_open()
        check_iterable("receipts", receipts)
        packed = None if type(receipts) is list else pack_receipts(receipts)
        with self._lock:
            self._now_us()
            if packed is None:
                by_receipt.ack_batch(self._store, cast("list[int]", receipts), session)
            else:
                by_receipt.ack_packed(self._store, packed, session)
            self._arrivals.notify_all()

    def nack(self, receipt: int, *, delay: float | None = None, session: int = 0) -> None:
        """End a lease early; the message is visible again after ``delay`` seconds.

        Args:
            receipt: the delivery's receipt.
            delay: seconds before redelivery; None: the queue's redelivery backoff
                (no wait without one).
            session: the caller's session tag (see ``ack``).
        """
        self._ensure_open()
        delay_us = -1 if delay is None else seconds_to_us("delay", delay, maximum=MAX_DELAY)
        with self._lock:
            now_us = self._now_us()
            by_receipt.nack(self._store, receipt, delay_us, now_us, session)
            self._wake_receivers()

    def extend(self, receipt: int, seconds: float, *, session: int = 0) -> None:
        """Make the lease end ``seconds`` from now (0: return the message at once)."""
        self._ensure_open()
        lease_us = seconds_to_us("seconds", seconds, maximum=MAX_VISIBILITY_TIMEOUT)
        with self._lock:
            now_us = self._now_us()
            by_receipt.extend(self._store, receipt, lease_us, now_us, session)
            if lease_us == 0:
                self._wake_receivers()

    def term(self, receipt: int, *, session: int = 0) -> None:
        """Dead-letter a leased message now (reason ``rejected``)."""
        with self._lock:
            now_us = self._now_us()
            by_receipt.term(self._store, receipt, now_us, session)
            self._wake_receivers()

    def nack_batch(self, receipts: Iterable[int], *, delay: float | None = None,
                   session: int = 0) -> None:
        """``nack`` many deliveries: all of them, or (if any receipt is stale) none.

        Each receipt is nacked as ``nack(receipt, delay=delay)`` would, in order; a
        receipt repeated in the batch is nacked once.

        Args:
            receipts: ints, or a 1-D ``uint64`` array (read natively, no Python object
                per receipt), as ``ack_batch`` takes them.
            delay: seconds before redelivery (0 to 31,536,000); None: each queue's
                redelivery backoff (no wait without one).
            session: the caller's session tag (see ``ack``).

        Raises:
            StaleReceipt: with ``receipts`` listing the stale ones; nothing was nacked.
            InvalidArgument: ``delay`` is out of range, or a receipt is not an int in
                [0, 2**64); nothing was nacked.
        """
        self._ensure_open()
        delay_us = -1 if delay is None else seconds_to_us("delay", delay, maximum=MAX_DELAY)
        self._settle_many(by_receipt.nack_batch, self._receipts_argument(receipts),
                          (delay_us,), session)

    def extend_batch(self, receipts: Iterable[int], seconds: float, *,
                     session: int = 0) -> None:
        """``extend`` many deliveries: all of them, or (if any receipt is stale) none.

        Args:
            receipts: ints, or a 1-D ``uint64`` array, as ``ack_batch`` takes them.
            seconds: each lease now ends this many seconds from now (0 to 43,200; 0
                returns every message at once, as ``nack(delay=0)``).
            session: the caller's session tag (see ``ack``).

        Raises:
            StaleReceipt: with ``receipts`` listing the stale ones; nothing was extended.
            InvalidArgument: ``seconds`` is out of range, or a receipt is not an int in
                [0, 2**64); nothing was extended.
        """
        self._ensure_open()
        lease_us = seconds_to_us("seconds", seconds, maximum=MAX_VISIBILITY_TIMEOUT)
        self._settle_many(by_receipt.extend_batch, self._receipts_argument(receipts),
                          (lease_us,), session, wake=lease_us == 0)

    def term_batch(self, receipts: Iterable[int], *, session: int = 0) -> None:
        """``term`` many deliveries (dead-letter them now): all, or (if any is stale) none.

        Args:
            receipts: ints, or a 1-D ``uint64`` array, as ``ack_batch`` takes them.
            session: the caller's session tag (see ``ack``).

        Raises:
            StaleReceipt: with ``receipts`` listing the stale ones; nothing was changed.
            InvalidArgument: a receipt is not an int in [0, 2**64); nothing was changed.
        """
        self._ensure_open()
        self._settle_many(by_receipt.term_batch, self._receipts_argument(receipts), (),
                          session)

    @staticmethod
    def _receipts_argument(receipts: Iterable[int]) -> list[int] | bytes:
        """A batch's receipts as the native batch calls take them: a list, or packed."""
        check_iterable("receipts", receipts)
        return cast("list[int]", receipts) if type(receipts) is list else pack_receipts(receipts)

    def _settle_many(self, settle: Callable[..., int],
                     receipts: list[int] | bytes | bytearray | memoryview,
                     arguments: tuple[int, ...], session: int, *, wake: bool = True) -> int:
        """Run a native batch settle (``by_receipt.nack_batch`` and its kin) locked.

        It is called as ``settle(store, receipts, *arguments, now_us, session)``; its count
        is returned. ``wake``: the settle may make messages visible (waiting receivers are woken).
        """
        with self._lock:
            count = settle(self._store, receipts, *arguments, self._now_us(), session)
            if wake:
                self._wake_receivers()
            return count

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
            source_id = self._queue_id(dead_letter_queue, "dead_letter_queue")
            target_id = -1 if to is None else self._queue_id(to, "to")
            if target_id == source_id:
                raise InvalidArgument(f"redrive of {dead_letter_queue!r} into itself")
            moved: int = queue_ops.redrive(
                self._store, source_id, target_id, limit, now_us, self._queues)
            if moved:
                self._wake_receivers()
            return moved

    def purge(self, queue: str) -> int:
        """Remove every message of a queue (visible, leased and delayed); returns how many."""
        with self._lock:
            self._now_us()
            removed: int = queue_ops.purge(self._store, self._queue_id(queue))
            return removed

    def stats(self) -> BrokerStats:
        """Counters of every topic and queue (see ``TopicStats`` and ``QueueStats``)."""
        with self._lock:
            now_us = self._now_us()
            topics = {}
            for name, topic_id in sorted(self._topics.items()):
                (published, deliveries, unrouted, duplicates, filtered_out, dedup_entries,
                 dedup_evicted) = self._dispatcher.topic_counters(topic_id, now_us)
                settings = self._admin.topic_settings(name)
                topics[name] = TopicStats(
                    published=published, deliveries=deliveries, unrouted=unrouted,
                    subscriptions=len(self._topic_subscriptions[name]), duplicates=duplicates,
                    filtered_out=filtered_out, dedup_entries=dedup_entries,
                    dedup_evicted=dedup_evicted, fifo=settings.fifo,
                    content_dedup=settings.content_dedup)
            queues = {}
            for name, queue_id in sorted(self._queues.items()):
                (enqueued, delivered, redelivered, acked, dead_lettered, redriven, rejected,
                 purged, duplicates, oversized, dedup_entries, dedup_evicted, groups, dropped,
                 visible, leased, delayed,
                 messages, held_bytes, oldest_age) = queue_ops.counters(
                    self._store, queue_id, now_us)
                queues[name] = QueueStats(
                    enqueued=enqueued, delivered=delivered, redelivered=redelivered,
                    acked=acked, dead_lettered=dead_lettered, redriven=redriven,
                    rejected=rejected, purged=purged, duplicates=duplicates,
                    oversized=oversized, dedup_entries=dedup_entries,
                    dedup_evicted=dedup_evicted, groups=groups,
                    dropped=dict(zip(DROP_REASONS, dropped, strict=True)), visible=visible,
                    leased=leased, delayed=delayed, messages=messages, bytes=held_bytes,
                    oldest_age=oldest_age)
            subscriptions = {}
            counters = self._dispatcher.subscription_counters()
            for sid, (topic, queue) in sorted(self._admin.list_subscriptions().items()):
                (delivered, filtered_out, *dropped) = counters.get(sid, (0, 0, 0, 0, 0))
                subscriptions[sid] = SubscriptionStats(
                    topic=topic, queue=queue, delivered=delivered, filtered_out=filtered_out,
                    dropped=dict(zip(SUBSCRIPTION_DROP_REASONS, dropped, strict=True)))
            storage = None if self._durable is None else self._durable.stats()
            return BrokerStats(topics=topics, queues=queues, storage=storage,
                               subscriptions=subscriptions,
                               topology=self._admin.topology_stats(),
                               replies=self._inbox.stats())

    def check(self) -> bool:
        """Verify the core's internal invariants (slow; for tests).

        Raises:
            Closed: the broker is closed (as every call then does).
        """
        if self._admin.closed:
            raise Closed("the broker is closed")
        with self._lock:
            return bool(check_store(self._store))

    # -- durability --------------------------------------------------------------------

    def commit(self) -> None:
        """Make everything done so far as durable as the fsync policy promises.

        Flushes the journal (then it survives ``kill -9``) and, with ``fsync="always"``,
        fdatasyncs it (then it survives power loss); with ``interval`` a sync happens at
        most every ``fsync_interval`` seconds. The embedded publish and send calls commit
        before returning; the server calls this once per round before its publish and
        send replies (group commit). A no-op in memory.

        Raises:
            StoreFull: the disk is full: what was done since the last commit is not
                stored (and was not confirmed).
            StoreFailed: a write or fsync error: the store failed closed.
        """
        if self._durable is None:
            return
        with self._lock:
            self._ensure_open()
            self._durable.commit()

    def sync_due(self) -> None:
        """Housekeeping of a durable broker: flush, and sync when ``fsync_interval`` is up.

        With ``fsync="interval"`` the fdatasync happens once ``fsync_interval`` has
        passed since the last one. A no-op in memory.
        """
        if self._durable is None:
            return
        with self._lock:
            if not self._admin.closed:
                self._durable.sync_due()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._admin.closed

    @property
    def waiting_receivers(self) -> int:
        """How many calls wait for messages now: a gauge, for tests and monitoring.

        Counts ``receive(wait=...)`` calls and embedded consumers parked until a message
        arrives or their wait ends (they hold no lock while parked).
        """
        sleeping: int = self._arrivals.sleeping
        return sleeping

    @property
    def receiver_parks(self) -> int:
        """How many times a call parked to wait for messages: a counter, for tests.

        Each wait of a ``receive(wait=...)`` or an embedded consumer that found nothing
        counts one (a receiver keeping up with its producers finds messages without
        parking; a parked one is woken once by the next publish, send or settle).
        """
        waits: int = self._arrivals.waits
        return waits

    def close(self) -> None:
        """Close the broker: later calls, and receives still waiting, raise ``Closed``.

        Its producers still open are closed (flushed) first, as a client's ``close()``
        closes its producers; their later offers raise ``Closed``. Its consumers drop what
        their iterations took and did not yield: their next step raises ``Closed``. The
        messages its queues hold are let go at once (a durable broker's stay in its
        journal for the next start), and with them the memory of their bodies.

        Raises:
            FastFanoutError: a producer's flush was refused; the broker is closed anyway
                and that producer's refused messages are not published.
        """
        if self._admin.closed:
            return
        refusal: FastFanoutError | None = None
        for producer in list(self._producers):
            try:
                producer.close()
            except FastFanoutError as exc:
                refusal = refusal or exc
            finally:
                producer.detach()
        self._inbox.close()   # waiting requests raise Closed
        with self._lock:
            self._admin.close()
            if self._single is not None:
                self._single.closed = True
            self._arrivals.notify_all()
        for consumer in list(self._consumers):
            consumer.drain()   # its next step raises Closed, as every call now does
        if refusal is not None:
            raise refusal

    def __enter__(self) -> Broker:
        if self._admin.closed:
            raise Closed("the broker is closed")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class ServerPort:
    """The broker's internal port: the calls a server makes for its sessions and consumers.

    Obtained with ``Broker.server_port()``. These calls are no part of the broker API
    (``fastfanout.api``): they take and give encoded frames and packed receipts (the
    wire's forms, so that no Python object is made per message), and owner tags (the
    store's count of each session's and consumer's leases). The server calls them, and
    the embedded consumer takes its owner tag here. Each call holds the broker's lock,
    as the broker's own calls do.

    Args:
        broker: the broker this port serves.
    """

    __slots__ = ("_broker",)

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    # -- encoded fast paths ------------------------------------------------------------

    def publish_frame(self, topic: str, frame: bytes | bytearray | memoryview | BodySource
                      ) -> PublishBatch:
        """Publish a batch given as one codec frame (see docs/protocol.md): all or none.

        A frame read in place from a client's ring (a ``BodySource``) may keep its large
        bodies there (blobs.pyx, "Bodies left in place").

        The records' body, attributes (msgpack), group and dedup ids, priority,
        ``deliver_at_us`` (flag) and expiry (flag) are used; ids and timestamps are
        assigned by the broker. No Python object is made per message. A durable broker
        journals it without committing: the server commits once per round
        (``Broker.commit``).

        Raises:
            InvalidArgument: the frame or one of its records is malformed.
        """
        broker = self._broker
        broker._ensure_open()
        return broker._enqueue(topic, None, EncodedBatch(frame), commit=False)

    def has_room(self, queue: str, messages: int, size: int) -> bool:
        """Whether ``messages`` messages of ``size`` bytes in all would enter ``queue`` now.

        A held publish's ``QueueFull.room`` is checked so; True for a queue that is gone
        (a retry then meets the real outcome).
        """
        broker = self._broker
        with broker._lock:
            queue_id = broker._queues.get(queue)
            if queue_id is None:
                return True
            return bool(broker._dispatcher.has_room(queue_id, messages, size))

    def withdraw_refusal(self, room: tuple[str, int, int] | None) -> None:
        """A refusal by a full ``hold`` queue became a hold: not counted as ``rejected``.

        ``room`` is the refusal's ``QueueFull.room`` (queue, messages, bytes).
        """
        if room is None:
            return
        broker = self._broker
        with broker._lock:
            queue_id = broker._queues.get(room[0])
            if queue_id is not None:
                broker._dispatcher.withdraw_refusal(queue_id, room[1])

    def send_frame(self, queue: str, frame: bytes | bytearray | memoryview | BodySource
                   ) -> PublishBatch:
        """Send a batch given as one codec frame straight to a queue: all or none."""
        broker = self._broker
        broker._ensure_open()
        return broker._enqueue(None, queue, EncodedBatch(frame), commit=False)

    def receive_frame(
        self, queue: str, max_messages: int = 1, visibility_timeout: float | None = None,
        *, wait: float = 0.0, owner: int = 0,
    ) -> tuple[bytes, int]:
        """Lease like ``Broker.receive`` and return one codec frame.

        The embedded consumer's batches: no Python object per message.

        Args:
            queue: the queue name.
            max_messages: 1 to 10,000.
            visibility_timeout: lease length in seconds (default: the queue's).
            wait: seconds (0 to 20) to wait for a message when none is visible.
            owner: an open owner tag whose leases these are (0: none).

        Returns:
            ``(frame, count)``: delivery records with receipt and receive count set
            (``count`` 0: nothing came within ``wait``).
        """
        broker = self._broker
        durable = broker._durable
        if not wait:
            frame, count, *_ = self.receive_push(queue, max_messages, visibility_timeout,
                                                 None, b"", owner=owner)
            assert frame is not None   # no sink: always a frame
            if count and durable is not None:
                with broker._lock:
                    durable.write_leases()   # their receive counts survive a crash
            return frame, count

        def take(queue_id: int, lease_us: int, now_us: int) -> tuple[bytes, int] | None:
            frame, count, *_ = receive_push(broker._store, queue_id, max_messages, lease_us,
                                            now_us, None, b"", owner)
            if count and durable is not None:
                durable.write_leases()
            return (frame, count) if count and frame is not None else None

        found = broker._receive_waiting(queue, max_messages, wait, visibility_timeout, take)
        return found if found is not None else (_EMPTY_FRAME, 0)

    def receive_push(
        self, queue: str, max_messages: int, visibility_timeout: float | None,
        sink: FrameSink | None, header: bytes, *, owner: int = 0,
        max_bytes: int | None = None,
    ) -> tuple[bytes | None, int, bytes, int, bool]:
        """The server's push: lease like ``receive_frame``, into ``sink`` when it has room.

        With a ``sink`` (a local channel's shared ring), the message ``[header, frame]``
        is written in place into it (``fastfanout._ext.deliveries.receive_push``). The
        leases are ``owner``'s (``open_owner``): at most its credit of them, its
        ``prefetch`` minus the leases it holds.

        Args:
            queue: the queue name.
            max_messages: 1 to 10,000.
            visibility_timeout: lease length in seconds (None: the queue's).
            sink: where to write the push in place, or None (return a frame).
            header: the push's first frame, written before the delivery frame.
            owner: an open owner tag (0: none).
            max_bytes: most bytes of the delivery frame (None: no bound); the first
                record goes whatever its size.

        Returns:
            ``(frame, count, receipts, status, more)``: ``frame`` None when the push is
            in the sink (``status`` WROTE_WAKE: ring the reader's bell), else the frame to
            send; ``receipts`` packed little-endian u64s; ``more`` True when the push
            stopped at ``max_messages`` or ``max_bytes`` with credit left (push again).
        """
        broker = self._broker
        broker._ensure_open()
        if type(max_messages) is not int or not 1 <= max_messages <= MAX_RECEIVE_BATCH:
            raise InvalidArgument(
                f"max_messages={max_messages!r} must be an int from 1 to {MAX_RECEIVE_BATCH}")
        lease_us = None if visibility_timeout is None else seconds_to_us(
            "visibility_timeout", visibility_timeout, maximum=MAX_VISIBILITY_TIMEOUT)
        with broker._lock:
            now_us = broker._now_us()
            queue_id = broker._queue_id(queue)
            if lease_us is None:
                lease_us = broker._visibility_us[queue_id]
            result: tuple[bytes | None, int, bytes, int, bool] = receive_push(
                broker._store, queue_id, max_messages, lease_us, now_us, sink, header, owner,
                max_bytes)
            return result

    # -- settling by packed receipts ---------------------------------------------------

    def ack_packed(self, receipts: bytes | bytearray | memoryview, *, session: int = 0
                   ) -> int:
        """Ack receipts packed as little-endian u64s (the wire's ACK payload): all or none.

        Args:
            receipts: the packed receipts.
            session: the caller's session tag (see ``Broker.ack``).

        Returns:
            The number of receipts acked.

        Raises:
            InvalidArgument: the length is not a multiple of 8.
            StaleReceipt: with ``receipts`` listing the stale ones; nothing was acked.
        """
        broker = self._broker
        with broker._lock:
            broker._now_us()
            count: int = by_receipt.ack_packed(broker._store, receipts, session)
            broker._arrivals.notify_all()   # a consumer out of credit may take more now
            return count

    def ack_frames(self, frames: list[bytes], *, session: int = 0) -> list[int]:
        """Ack each receipts frame on its own, all of it or none (a SETTLE's frames).

        Returns:
            The stale receipts of the frames that were refused (empty: all acked).

        Raises:
            InvalidArgument: a frame's length is not a multiple of 8 (nothing acked).
        """
        broker = self._broker
        with broker._lock:
            broker._now_us()
            stale: list[int] = by_receipt.ack_frames(broker._store, frames, session)
            return stale

    def nack_packed(self, receipts: bytes | bytearray | memoryview, delay: float | None, *,
                    session: int = 0) -> int:
        """``Broker.nack_batch`` of packed little-endian u64s (the wire's NACK_BATCH).

        Returns:
            The number of receipts.

        Raises:
            InvalidArgument: ``delay`` is out of range, or the length is not a multiple
                of 8 (nothing nacked).
            StaleReceipt: with ``receipts`` listing the stale ones; nothing was nacked.
        """
        delay_us = -1 if delay is None else seconds_to_us("delay", delay, maximum=MAX_DELAY)
        return self._broker._settle_many(by_receipt.nack_batch, receipts, (delay_us,), session)

    def extend_packed(self, receipts: bytes | bytearray | memoryview, seconds: float, *,
                      session: int = 0) -> int:
        """``Broker.extend_batch`` of packed little-endian u64s (the wire's EXTEND_BATCH).

        Returns and raises as ``nack_packed`` (``seconds`` 0 to 43,200).
        """
        lease_us = seconds_to_us("seconds", seconds, maximum=MAX_VISIBILITY_TIMEOUT)
        return self._broker._settle_many(by_receipt.extend_batch, receipts, (lease_us,),
                                         session, wake=lease_us == 0)

    def term_packed(self, receipts: bytes | bytearray | memoryview, *, session: int = 0
                    ) -> int:
        """``Broker.term_batch`` of packed little-endian u64s (the wire's TERM_BATCH).

        Returns and raises as ``nack_packed``.
        """
        return self._broker._settle_many(by_receipt.term_batch, receipts, (), session)

    def release_packed(self, receipts: bytes | bytearray | memoryview, *, session: int = 0
                       ) -> int:
        """Return every still-leased delivery among packed u64 receipts at once.

        Stale receipts are skipped (not an error): this is how a server gives back what a
        vanished client held. Returns how many deliveries were released.
        """
        broker = self._broker
        with broker._lock:
            now_us = broker._now_us()
            released: int = by_receipt.release_packed(broker._store, receipts, now_us,
                                                      session)
            if released:
                broker._wake_receivers()
            return released

    def live_mask(self, receipts: bytes | bytearray | memoryview, *, session: int = 0
                  ) -> bytes:
        """One byte per packed u64 receipt: 1 for a live lease of ``session``, else 0.

        0 once that lease ended, however it ended. Changes nothing.

        The server prunes the receipts it holds for a session with it.
        """
        broker = self._broker
        with broker._lock:
            broker._now_us()   # leases due to end by now have ended
            mask: bytes = by_receipt.live_mask(broker._store, receipts, session)
            return mask

    # -- owners (the server's sessions and push consumers) -----------------------------

    def open_owner(self, session: int | None = None, prefetch: int = 0) -> int:
        """A new owner tag for the leases the server makes (RabbitMQ's ``basic.qos``).

        Every lease carries the tag of its owner, and the store counts each owner's
        leases until they end, however they end (ack, nack, extend to 0, term, expiry,
        purge, queue deletion, release). A push (``receive_push``) never leaves an owner
        holding more than its ``prefetch``; a settle call with ``session=S`` works only
        on leases whose owner belongs to session S (others are stale to it).

        Args:
            session: None for a new session's tag; else the open session whose push
                consumer this tag is.
            prefetch: most leases a push may leave this owner holding (0: no limit),
                at most 1,000,000.

        Raises:
            InvalidArgument: ``session`` is not an open session tag, or ``prefetch`` is out
                of range.
        """
        if type(prefetch) is not int or not 0 <= prefetch <= 1_000_000:
            raise InvalidArgument(f"prefetch={prefetch!r} must be an int from 0 to 1,000,000")
        broker = self._broker
        with broker._lock:
            owner: int = broker._store.open_owner(session, prefetch)
            return owner

    @property
    def reply_inbox(self) -> str:
        """The name of the broker's own reply inbox (its ``request``s' addresses)."""
        return self._broker._inbox.name

    def route_replies(self, router: Callable[[str, int, bytes], None] | None) -> None:
        """Set where the broker's ``reply`` sends a reply to an inbox not its own.

        ``router(inbox, number, frame)`` is called in the replying thread (the server's
        hands the reply to its loop); None: such replies are dropped and counted.
        """
        self._broker._reply_router = router

    def deliver_reply(self, number: int, frame: bytes) -> bool:
        """Hand a client's reply (an encoded frame) to the broker's request ``number``.

        False (counted as dropped) when that request no longer waits.
        """
        return self._broker._inbox.deliver(number, frame)

    def close_owner(self, owner: int) -> None:
        """Close an owner tag: it takes no more leases.

        Those it holds run on, and can still be settled by its session; the tag is reused
        once they have all ended.
        """
        broker = self._broker
        with broker._lock:
            broker._store.close_owner(owner)

    def outstanding(self, owner: int) -> int:
        """How many leases an open owner holds now."""
        broker = self._broker
        with broker._lock:
            broker._now_us()   # leases due to end by now have ended
            count: int = broker._store.outstanding(owner)
            return count

    # -- pipelined commits (a durable broker's group commit, the server's) ------------

    def start_commit_writer(self) -> int:
        """Start the journal's writer thread, for pipelined commits (the server's).

        Returns a descriptor readable when a batch begun by ``commit_begin`` is done;
        -1 in memory (nothing to wait for).
        """
        broker = self._broker
        if broker._durable is None:
            return -1
        with broker._lock:
            broker._ensure_open()
            return broker._durable.start_writer()

    def commit_begin(self, confirms: bool = True) -> CommitTicket | None:
        """Begin a commit of everything done so far without waiting for the disk.

        The journal's writer thread writes the records (and, when ``confirms`` and the
        fsync policy ask, fdatasyncs them) while the caller goes on; ``commit_end``
        says when it is done. One commit at a time: begin the next after ``commit_end``
        returned True. None in memory.

        Args:
            confirms: the batch holds records that a reply will confirm (a publish or a
                send): sync it by the policy. Settles alone are only written.

        Raises:
            StoreFull: the disk is full: what was done since the last commit is not
                stored (and must not be confirmed).
            StoreFailed: a write or fsync error: the store failed closed.
        """
        broker = self._broker
        if broker._durable is None:
            return None
        with broker._lock:
            broker._ensure_open()
            return broker._durable.commit_begin(confirms)

    def commit_end(self, ticket: CommitTicket | None, wait: bool = False) -> bool:
        """Whether the commit ``ticket`` began is done (``wait``: block until it is).

        True: its records are written, and synced when the policy asked (the replies
        it covers may go). Always True for None (in memory).

        Raises:
            StoreFull: the disk was full: the commit's records are not stored.
            StoreFailed: a write or fsync error: the store failed closed.
        """
        broker = self._broker
        if ticket is None or broker._durable is None:
            return True
        with broker._lock:
            broker._ensure_open()
            return broker._durable.commit_end(ticket, wait)
