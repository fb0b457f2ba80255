"""The broker API, declared once: what ``Broker``, ``Client`` and ``AsyncClient`` offer.

Design
------
Prior art: ``typing.Protocol`` as a structural interface (PEP 544), and trio's habit of
one API with a blocking and an awaitable face. ``BrokerAPI`` is the embedded broker's
API, which the blocking ``Client`` offers over the wire with the same parameters,
defaults and errors; ``AsyncBrokerAPI`` is its awaitable twin (``AsyncClient``).
``ClientAPI`` and ``AsyncClientAPI`` add what only a client has (pipelined publishes,
push consumers, stream listeners, producers with frames in flight, ``close(timeout)``).

Invariants, checked by ``tests/unit/test_api_parity.py``: every operation has the same
parameters, kinds and defaults in each implementation (``session`` and ``owner``, the
server's and the embedded consumer's plumbing, are the parameters only ``Broker`` has);
a parameter added to one implementation only fails the check. Result types differ
where the wire does: a client returns ``RemoteMessage`` and ``RemotePublishBatch`` where
``Broker`` returns ``Message`` and ``PublishBatch`` (the same attributes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

from fastfanout.records import Attributes, Body, ExponentialBackoff, PublishResult, Reply
from fastfanout.settings import QueueSettings, Subscription, TopicSettings
from fastfanout.stats import BrokerStats

__all__ = [
    "BROKER_OPERATIONS",
    "CLIENT_OPERATIONS",
    "SERVER_ONLY_PARAMETERS",
    "AsyncBrokerAPI",
    "AsyncClientAPI",
    "BrokerAPI",
    "ClientAPI",
    "PipelineAPI",
]

BROKER_OPERATIONS: Final = (
    "create_topic", "delete_topic", "list_topics", "topic_settings", "create_queue",
    "delete_queue",
    "list_queues", "queue_settings", "set_queue_settings", "subscribe", "unsubscribe",
    "set_filter_policy", "subscription", "list_subscriptions", "redrive", "purge", "stats",
    "check",
    "publish", "send", "publish_batch", "send_batch", "receive", "ack", "ack_batch",
    "nack", "nack_batch", "extend", "extend_batch", "term", "term_batch", "consume",
    "request", "reply",
)
"""The operations of ``BrokerAPI`` (and ``AsyncBrokerAPI``), in declaration order."""

CLIENT_OPERATIONS: Final = (
    "publish_nowait", "send_nowait", "publish_batch_nowait", "send_batch_nowait", "flush",
    "producer", "consume_batches", "listen", "server_stats", "report_worker",
    "worker_stats", "close",
)
"""The operations only clients have (``ClientAPI`` and ``AsyncClientAPI``)."""

SERVER_ONLY_PARAMETERS: Final = frozenset({"session", "owner"})
"""Parameters of ``Broker``'s operations that only the server (acting for a connection)
or the embedded consumer (tagging its leases) passes; no client offers them."""


class BrokerAPI(Protocol):
    """The broker API: topics, queues, subscriptions, publishing, receiving, settling.

    Times are in seconds, sizes in bytes; see ``fastfanout.Broker`` for each contract.
    """

    def create_topic(self, name: str, *, fifo: bool = False, content_dedup: bool = False,
                     dedup_window: float = 300.0) -> None:
        """Create a topic; a no-op if it exists."""

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its subscriptions."""

    def list_topics(self) -> list[str]:
        """Names of every topic, sorted."""

    def topic_settings(self, name: str) -> TopicSettings:
        """The settings topic ``name`` was created with.

        ``fifo``, ``content_dedup`` and ``dedup_window``, as ``create_topic`` took them.
        """

    def create_queue(self, name: str, *, visibility_timeout: float = 30.0,
                     max_receive_count: int | None = None,
                     dead_letter_queue: str | None = None, delay: float = 0.0,
                     max_messages: int | None = None, max_bytes: int | None = None,
                     max_message_size: int = 1048576, retention: float = 345600.0,
                     overflow: str = "reject", max_priority: int = 0, fifo: bool = False,
                     content_dedup: bool = False, dedup_window: float = 300.0,
                     redelivery_backoff: tuple[float, ...] | ExponentialBackoff | None = None,
                     durable: bool | None = None) -> None:
        """Create a queue (``durable`` None: the broker's default)."""

    def delete_queue(self, name: str) -> None:
        """Delete a queue, its messages and its subscriptions."""

    def list_queues(self) -> list[str]:
        """Names of every queue, sorted."""

    def queue_settings(self, name: str) -> QueueSettings:
        """The settings queue ``name`` has (those it was created with, as changed since)."""

    def set_queue_settings(self, /, name: str, **changes: Any) -> QueueSettings:
        """Change settings of queue ``name`` (SQS's ``SetQueueAttributes``); returns them all.

        ``changes`` are ``create_queue``'s keywords; those in
        ``fastfanout.settings.CHANGEABLE_QUEUE_SETTINGS`` may change, the others only be
        given their present value.
        """

    def subscribe(self, topic: str, queue: str, *,
                  filter_policy: Mapping[str, Any] | str | None = None,
                  filter_scope: str = "attributes") -> int:
        """Subscribe ``queue`` to ``topic``; returns the subscription id."""

    def unsubscribe(self, subscription_id: int) -> None:
        """Remove a subscription."""

    def set_filter_policy(self, subscription_id: int,
                          filter_policy: Mapping[str, Any] | str | None, *,
                          filter_scope: str | None = None) -> None:
        """Replace a subscription's filter policy (``filter_scope`` None: keep its scope)."""

    def subscription(self, subscription_id: int) -> Subscription:
        """One subscription's topic, queue and filter policy."""

    def list_subscriptions(self) -> dict[int, tuple[str, str]]:
        """Every subscription: id -> (topic, queue)."""

    def redrive(self, dead_letter_queue: str, *, to: str | None = None,
                max_messages: int | None = None) -> int:
        """Move dead-lettered messages back; returns how many."""

    def purge(self, queue: str) -> int:
        """Remove every message of a queue; returns how many."""

    def stats(self) -> BrokerStats:
        """Counters of every topic and queue."""

    def check(self) -> bool:
        """Verify the broker core's internal invariants."""

    def publish(self, topic: str, body: Body, *, attributes: Attributes | None = None,
                delay: float | None = None, deliver_at: float | datetime | None = None,
                group_id: str | None = None, dedup_id: str | None = None,
                priority: int | None = None, ttl: float | None = None) -> PublishResult:
        """Publish one message to every queue subscribed to ``topic``.

        A client's ``publish`` joins the current batch of ``topic`` (``publish_nowait``),
        flushes it and waits for the result.

        Args:
            topic: the topic name.
            body: the body (bytes-like).
            attributes: name -> str | int | float | bytes | list[str].
            delay: seconds before the copies become visible.
            deliver_at: absolute clock seconds (or an aware datetime) of visibility.
            group_id: FIFO group.
            dedup_id: deduplication id.
            priority: 0 to 255.
            ttl: seconds the message may wait before it expires.
        """

    def send(self, queue: str, body: Body, *, attributes: Attributes | None = None,
             delay: float | None = None, deliver_at: float | datetime | None = None,
             group_id: str | None = None, dedup_id: str | None = None,
             priority: int | None = None, ttl: float | None = None) -> PublishResult:
        """Send one message straight to a queue."""

    def publish_batch(self, topic: str, entries: Iterable[Any]) -> Sequence[PublishResult]:
        """Publish many messages: all enqueued, or none."""

    def send_batch(self, queue: str, entries: Iterable[Any]) -> Sequence[PublishResult]:
        """Send many messages straight to a queue: all enqueued, or none."""

    def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                visibility_timeout: float | None = None) -> Sequence[Any]:
        """Lease up to ``max_messages`` visible messages.

        A broker server refuses one that finds none and would wait while this
        connection has ``max_long_polls`` receives waiting already (``LimitExceeded``).
        """

    def ack(self, receipt: int) -> None:
        """Delete the message of a delivery."""

    def ack_batch(self, receipts: Iterable[int]) -> None:
        """Ack many deliveries: all, or none."""

    def nack(self, receipt: int, *, delay: float | None = None) -> None:
        """End a lease early."""

    def nack_batch(self, receipts: Iterable[int], *, delay: float | None = None) -> None:
        """End many leases early: all, or none (as ``ack_batch``)."""

    def extend(self, receipt: int, seconds: float) -> None:
        """Make the lease end ``seconds`` from now."""

    def extend_batch(self, receipts: Iterable[int], seconds: float) -> None:
        """Make many leases end ``seconds`` from now: all, or none."""

    def term(self, receipt: int) -> None:
        """Dead-letter a leased message now."""

    def term_batch(self, receipts: Iterable[int]) -> None:
        """Dead-letter many leased messages now: all, or none."""

    def consume(self, queue: str, *, prefetch: int = 100,
                visibility_timeout: float | None = None,
                timeout: float | None = None) -> Iterator[Any]:
        """Messages as the broker pushes them, at most ``prefetch`` unsettled.

        Args:
            queue: the queue to consume.
            prefetch: most unsettled messages the consumer holds: the broker pushes more
                as the ones it holds are settled (any way: through the consumer, by
                receipt, or by their leases ending), as RabbitMQ's ``basic.qos``.
            visibility_timeout: lease of each pushed message, seconds (default: queue's).
            timeout: end the iteration when no message arrives within this many seconds
                of asking for the next one (the consumer is then cancelled), as pika's
                ``inactivity_timeout``; None (the default) waits forever.

        Raises:
            InvalidArgument: ``timeout`` is not None or finite seconds > 0.
            LimitExceeded: (a broker server) this connection has ``max_consumers``
                consumers open already.
        """

    def request(self, topic: str, body: Body, *, attributes: Attributes | None = None,
                timeout: float = 5.0, group_id: str | None = None,
                dedup_id: str | None = None, priority: int | None = None,
                ttl: float | None = None) -> Reply:
        """Publish a message that asks for a reply, and wait for the first reply.

        The message is published to ``topic`` as ``publish`` would, with one more
        attribute, ``fastfanout.reply_to``: the address its responder answers
        (``message.reply(body)``). The reply comes straight back, not through a queue
        (docs/semantics.md, "Requests and replies").

        Args:
            topic: the topic name.
            body: the request's body (bytes-like).
            attributes: name -> value, as ``publish`` takes (not ``fastfanout.reply_to``).
            timeout: seconds to wait for the reply (more than 0, at most an hour).
            group_id: FIFO group (a FIFO topic needs one).
            dedup_id: deduplication id.
            priority: 0 to 255.
            ttl: seconds the request may wait in a queue before it expires, as
                ``publish`` takes it (default none). ``ttl=timeout`` lets a request
                nobody took before its requester gave up expire instead of being worked
                on for nothing (dead-lettered as ``expired`` where its queue has a
                dead-letter queue); it applies to every queue the request reaches (an
                audit queue's copy too). A leased request does not expire under its
                responder.

        Returns:
            The first reply: its body and attributes.

        Raises:
            NoResponders: the request reached no queue (nothing subscribed takes it).
            NoReply: no reply came within ``timeout``.
            InvalidArgument: a bad argument, as ``publish`` says (nothing is published).
        """

    def reply(self, address: str, body: Body, *,
              attributes: Attributes | None = None) -> None:
        """Answer a request: send ``body`` to the requester waiting at ``address``.

        ``message.reply(body)`` calls this with the message's ``fastfanout.reply_to``.
        A reply for a requester that is gone or no longer waits (its timeout passed,
        another reply came first) is dropped (counted in ``replies_dropped`` where the
        broker can tell), as in NATS: replying is not an error then. Replying does not
        settle the request message (ack it as any other).

        Args:
            address: a request's ``fastfanout.reply_to`` attribute.
            body: the reply's body (bytes-like).
            attributes: name -> value, as ``publish`` takes.

        Raises:
            InvalidArgument: ``address`` is not a reply address, or a bad body or
                attributes.
        """


class PipelineAPI(Protocol):
    """What both clients offer as plain calls: pipelined publishes, producers, listeners.

    Their results differ by driver (a ``PublishFuture`` or an ``asyncio.Future``, a
    blocking or an asyncio producer and listener).
    """

    def publish_nowait(self, topic: str, body: Body, *,
                       attributes: Attributes | None = None, delay: float | None = None,
                       deliver_at: float | datetime | None = None,
                       group_id: str | None = None, dedup_id: str | None = None,
                       priority: int | None = None, ttl: float | None = None) -> Any:
        """Add a message to the current batch of ``topic``; a future of its result.

        The batch leaves at ``batch_messages`` records or ``batch_bytes`` bytes, after
        ``linger`` (asyncio: when the event-loop iteration ends), on ``flush()`` and
        before any other request, so order per target holds. A batch is atomic on the
        broker: if it fails (say ``QueueFull``), every future of it raises the error.
        Arguments as ``BrokerAPI.publish``'s. A body over the broker's request limits
        raises ``RequestTooLarge`` here, before it is copied (nothing is queued).
        """

    def send_nowait(self, queue: str, body: Body, *,
                    attributes: Attributes | None = None, delay: float | None = None,
                    deliver_at: float | datetime | None = None, group_id: str | None = None,
                    dedup_id: str | None = None, priority: int | None = None,
                    ttl: float | None = None) -> Any:
        """Add a message to the current batch of ``queue``; a future of its result."""

    def publish_batch_nowait(self, topic: str, entries: Iterable[Any]) -> Any:
        """Send a batch now; a future of its results.

        The entries (bodies or ``PublishEntry``) are encoded into one frame natively (no
        Python object per message); a bad entry raises here and nothing is sent.
        """

    def send_batch_nowait(self, queue: str, entries: Iterable[Any]) -> Any:
        """Send a batch straight to a queue now; a future of its results."""

    def flush(self) -> Any:
        """Send the publish batches being filled (asyncio: a future of their answers)."""

    def producer(self, topic: str, *, group_id: str | None = None,
                 batch_messages: int | None = None, batch_bytes: int | None = None,
                 max_in_flight: int = 8, linger: float | None = None) -> Any:
        """A producer: ``offer()`` fills a frame, full frames are pipelined.

        No future and no lock per message (``fastfanout.client.producers``); ``flush()``
        waits for every answer and raises a refusal (the refused frames are kept and
        sent again, but a frame refused for its size, ``MessageTooLarge`` or
        ``RequestTooLarge``, is dropped once its refusal is raised). The asyncio
        client's is opened by ``await`` or ``async with``.

        Args:
            topic: the topic to publish to (it must exist now).
            group_id: the FIFO group of every message offered (a FIFO topic needs one,
                and ``content_dedup``: a producer's messages carry no dedup id), or
                None.
            batch_messages: messages per frame, 1 to ``settings.MAX_BATCH_MESSAGES``
                (default: the client's).
            batch_bytes: body bytes per frame, 1 to ``settings.MAX_BATCH_BYTES``
                (default: the client's).
            max_in_flight: frames sent and not yet answered before ``offer()`` waits
                (asyncio: queues); 1 keeps strict offer order even when one is refused.
            linger: seconds a frame that is not full waits before it is sent (default:
                the client's ``linger``; asyncio: 0, the end of the loop iteration).

        Raises:
            NotFound: the topic does not exist.
            InvalidArgument: a limit is not a positive int, or a batch limit is above
                its maximum; ``group_id`` is not a non-empty str of at most 128 UTF-8
                bytes; the topic is FIFO and ``group_id`` is None, or it is FIFO
                without ``content_dedup`` (nothing is opened).
        """

    def listen(self, topic_pattern: str, *, high_water_mark: int = 100_000) -> Any:
        """Follow the stream of every topic matching ``topic_pattern`` (at most once).

        Once the broker applies the subscription (the blocking listener when it is
        made, the asyncio one when awaited or entered), every message published after
        reaches the listener, unless its queue overflows. The listener is closed with
        the client: a read then raises ``Closed`` (a blocking read waiting in another
        thread within a second).

        Args:
            topic_pattern: a topic name or pattern (``orders.*``, ``orders.>``).
            high_water_mark: stream batches the listener's socket queues (1 to
                ``settings.MAX_HIGH_WATER_MARK``); beyond them the broker drops batches
                for this listener only (counted in its ``gaps``).

        Raises:
            Closed: the client is closed.
            InvalidArgument: ``high_water_mark`` is not an int from 1 to
                ``settings.MAX_HIGH_WATER_MARK`` (nothing is opened).
            BrokenConnection: the broker did not apply the subscription within the
                client's ``timeout``.
        """


class ClientAPI(BrokerAPI, PipelineAPI, Protocol):
    """The blocking client: the broker API and what only a client has."""

    def consume_batches(self, queue: str, *, prefetch: int = 1000,
                        visibility_timeout: float | None = None,
                        timeout: float | None = None) -> Iterator[Any]:
        """Batches pushed by the broker."""

    def server_stats(self) -> dict[str, Any]:
        """The server's own counters: connections, consumers, errors by code, streams.

        ``connection_stats`` maps each open connection to its own counters (published,
        delivered, acked, bytes in and out, consumers: SERVER_STATS in docs/protocol.md).
        """

    def report_worker(self, report: dict[str, Any]) -> None:
        """Tell the server this connection's worker report (REPORT; ``Worker`` sends it).

        The server keeps the last one while this connection is open and shows it in
        ``worker_stats()`` (``fastfanout stats``).

        Args:
            report: ``{worker: name, pid: int, handlers: {name: {queue, processed,
                failed, retried, dead_lettered, timed_out, in_flight, extended, processes,
                p50, p99}}}`` (counters are integers, p50/p99 seconds or None).

        Raises:
            InvalidArgument: the report is not one (see ``fastfanout.stats``'s
                ``check_worker_report``).
        """

    def worker_stats(self) -> list[dict[str, Any]]:
        """The last worker report of every open connection that sent one (WORKERS)."""

    def close(self, timeout: float = 5.0) -> None:
        """Flush, wait for the answers (``timeout`` seconds at most) and disconnect.

        ``timeout``: seconds (``inf``: no limit); a NaN or a str raises
        ``InvalidArgument`` and closes nothing.

        Once the broker said goodbye (it stopped, or ended the session), nothing is
        waited for: close returns at once.
        """


class AsyncBrokerAPI(Protocol):
    """The awaitable twin of ``BrokerAPI`` (``AsyncClient``)."""

    async def create_topic(self, name: str, *, fifo: bool = False,
                           content_dedup: bool = False, dedup_window: float = 300.0) -> None:
        """Create a topic; a no-op if it exists."""

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and its subscriptions."""

    async def list_topics(self) -> list[str]:
        """Names of every topic, sorted."""

    async def topic_settings(self, name: str) -> TopicSettings:
        """The settings topic ``name`` was created with."""

    async def create_queue(self, name: str, *, visibility_timeout: float = 30.0,
                           max_receive_count: int | None = None,
                           dead_letter_queue: str | None = None, delay: float = 0.0,
                           max_messages: int | None = None, max_bytes: int | None = None,
                           max_message_size: int = 1048576, retention: float = 345600.0,
                           overflow: str = "reject", max_priority: int = 0,
                           fifo: bool = False, content_dedup: bool = False,
                           dedup_window: float = 300.0,
                           redelivery_backoff: tuple[float, ...] | ExponentialBackoff | None
                           = None, durable: bool | None = None) -> None:
        """Create a queue (``durable`` None: the broker's default)."""

    async def delete_queue(self, name: str) -> None:
        """Delete a queue, its messages and its subscriptions."""

    async def list_queues(self) -> list[str]:
        """Names of every queue, sorted."""

    async def queue_settings(self, name: str) -> QueueSettings:
        """The settings queue ``name`` has (those it was created with, as changed since)."""

    async def set_queue_settings(self, /, name: str, **changes: Any) -> QueueSettings:
        """Change settings of queue ``name`` (SQS's ``SetQueueAttributes``); returns them all.

        ``changes`` are ``create_queue``'s keywords; those in
        ``fastfanout.settings.CHANGEABLE_QUEUE_SETTINGS`` may change, the others only be
        given their present value.
        """

    async def subscribe(self, topic: str, queue: str, *,
                        filter_policy: Mapping[str, Any] | str | None = None,
                        filter_scope: str = "attributes") -> int:
        """Subscribe ``queue`` to ``topic``; returns the subscription id."""

    async def unsubscribe(self, subscription_id: int) -> None:
        """Remove a subscription."""

    async def set_filter_policy(self, subscription_id: int,
                                filter_policy: Mapping[str, Any] | str | None, *,
                                filter_scope: str | None = None) -> None:
        """Replace a subscription's filter policy (``filter_scope`` None: keep its scope)."""

    async def subscription(self, subscription_id: int) -> Subscription:
        """One subscription's topic, queue and filter policy."""

    async def list_subscriptions(self) -> dict[int, tuple[str, str]]:
        """Every subscription: id -> (topic, queue)."""

    async def redrive(self, dead_letter_queue: str, *, to: str | None = None,
                      max_messages: int | None = None) -> int:
        """Move dead-lettered messages back; returns how many."""

    async def purge(self, queue: str) -> int:
        """Remove every message of a queue; returns how many."""

    async def stats(self) -> BrokerStats:
        """Counters of every topic and queue."""

    async def check(self) -> bool:
        """Verify the broker core's internal invariants."""

    async def publish(self, topic: str, body: Body, *, attributes: Attributes | None = None,
                      delay: float | None = None, deliver_at: float | datetime | None = None,
                      group_id: str | None = None, dedup_id: str | None = None,
                      priority: int | None = None, ttl: float | None = None
                      ) -> PublishResult:
        """Publish one message to every queue subscribed to ``topic``."""

    async def send(self, queue: str, body: Body, *, attributes: Attributes | None = None,
                   delay: float | None = None, deliver_at: float | datetime | None = None,
                   group_id: str | None = None, dedup_id: str | None = None,
                   priority: int | None = None, ttl: float | None = None) -> PublishResult:
        """Send one message straight to a queue."""

    async def publish_batch(self, topic: str, entries: Iterable[Any]
                            ) -> Sequence[PublishResult]:
        """Publish many messages: all enqueued, or none."""

    async def send_batch(self, queue: str, entries: Iterable[Any]) -> Sequence[PublishResult]:
        """Send many messages straight to a queue: all enqueued, or none."""

    async def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                      visibility_timeout: float | None = None) -> Sequence[Any]:
        """Lease up to ``max_messages`` visible messages."""

    async def ack(self, receipt: int) -> None:
        """Delete the message of a delivery."""

    async def ack_batch(self, receipts: Iterable[int]) -> None:
        """Ack many deliveries: all, or none."""

    async def nack(self, receipt: int, *, delay: float | None = None) -> None:
        """End a lease early."""

    async def nack_batch(self, receipts: Iterable[int], *, delay: float | None = None) -> None:
        """End many leases early: all, or none (as ``ack_batch``)."""

    async def extend(self, receipt: int, seconds: float) -> None:
        """Make the lease end ``seconds`` from now."""

    async def extend_batch(self, receipts: Iterable[int], seconds: float) -> None:
        """Make many leases end ``seconds`` from now: all, or none."""

    async def term(self, receipt: int) -> None:
        """Dead-letter a leased message now."""

    async def term_batch(self, receipts: Iterable[int]) -> None:
        """Dead-letter many leased messages now: all, or none."""

    def consume(self, queue: str, *, prefetch: int = 100,
                visibility_timeout: float | None = None,
                timeout: float | None = None) -> AsyncIterator[Any]:
        """Messages pushed by the broker (``async for``)."""

    async def request(self, topic: str, body: Body, *, attributes: Attributes | None = None,
                      timeout: float = 5.0, group_id: str | None = None,
                      dedup_id: str | None = None, priority: int | None = None,
                      ttl: float | None = None) -> Reply:
        """Publish a message that asks for a reply, and wait for the first reply."""

    async def reply(self, address: str, body: Body, *,
                    attributes: Attributes | None = None) -> None:
        """Answer a request: send ``body`` to the requester waiting at ``address``."""


class AsyncClientAPI(AsyncBrokerAPI, PipelineAPI, Protocol):
    """The asyncio client: the awaitable broker API and what only a client has.

    The pipelined calls are plain calls returning futures, the consumers async
    iterators (``async for``), as ``ClientAPI``'s are blocking ones.
    """

    def consume_batches(self, queue: str, *, prefetch: int = 1000,
                        visibility_timeout: float | None = None,
                        timeout: float | None = None) -> AsyncIterator[Any]:
        """Batches pushed by the broker (``async for``)."""

    async def server_stats(self) -> dict[str, Any]:
        """The server's own counters: connections, consumers, errors by code, streams.

        ``connection_stats`` maps each open connection to its own counters (published,
        delivered, acked, bytes in and out, consumers: SERVER_STATS in docs/protocol.md).
        """

    async def report_worker(self, report: dict[str, Any]) -> None:
        """Tell the server this connection's worker report (REPORT; ``Worker`` sends it).

        The server keeps the last one while this connection is open and shows it in
        ``worker_stats()`` (``fastfanout stats``).

        Args:
            report: ``{worker: name, pid: int, handlers: {name: {queue, processed,
                failed, retried, dead_lettered, timed_out, in_flight, extended, processes,
                p50, p99}}}`` (counters are integers, p50/p99 seconds or None).

        Raises:
            InvalidArgument: the report is not one (see ``fastfanout.stats``'s
                ``check_worker_report``).
        """

    async def worker_stats(self) -> list[dict[str, Any]]:
        """The last worker report of every open connection that sent one (WORKERS)."""

    async def close(self, timeout: float = 5.0) -> None:
        """Flush, wait for the answers (``timeout`` seconds at most) and disconnect.

        Once the broker said goodbye (it stopped, or ended the session), nothing is
        waited for: close returns at once.
        """
