"""What a client receives: remote messages, delivery and stream batches, publish results.

These are the client-side edges of the wire format (docs/protocol.md): records stay in
their codec frame until user code looks at them, and each object here mirrors its
embedded twin (``RemoteMessage`` has the attributes of ``fastfanout.Message``,
``RemotePublishBatch`` behaves like ``PublishBatch``). Both drivers (the blocking
``Client`` and the asyncio ``AsyncClient``) share them: a message settles through its
``Settler`` (a consumer's pipelined acks) or its ``Owner`` (the client's calls).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from datetime import datetime
from typing import Any, Final, Protocol, overload

from fastfanout.records import Attributes, DeadLetterInfo, PublishResult
from fastfanout.wire import protocol

__all__ = [
    "DONE",
    "Done",
    "Owner",
    "RemoteMessage",
    "RemotePublishBatch",
    "Settler",
    "dead_letters",
    "decode_delivery",
    "publish_options",
]


class Settler(Protocol):
    """Where a consumer's pushed messages queue their pipelined acks (``defer_settle``)."""

    @property
    def closed(self) -> bool:
        """True once the consumer is cancelled: acks then go through the ``Owner``."""

    def defer_settle(self, receipts: bytes) -> None:
        """Queue a pipelined ack of a receipts frame (sent with the consumer's others)."""


class Owner(Protocol):
    """What settles a message by receipt: the client (or the asyncio client's settler)."""

    def ack(self, receipt: int) -> Any:
        """Delete the message of a delivery."""

    def nack(self, receipt: int, *, delay: float | None = None) -> Any:
        """End a lease early."""

    def extend(self, receipt: int, seconds: float) -> Any:
        """Make the lease end ``seconds`` from now."""

    def term(self, receipt: int) -> Any:
        """Dead-letter a leased message now."""


class Done:
    """An awaitable that is already complete (``await`` it: None at once).

    What the plain calls that code may await return: ``message.ack()`` and its kind, and
    the asyncio listener's ``close()``. They act at once (an asyncio message's ack is
    queued for this loop iteration's SETTLE); ``await message.ack()`` then works as it
    reads, in asyncio code, and a blocking caller just ignores the value.
    """

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield   # a generator that ends at once: ``await DONE`` is None, without suspending

    def __repr__(self) -> str:
        return "DONE"


DONE: Final = Done()
"""The one ``Done`` instance."""


def publish_options(attributes: Attributes | None, delay: float | None,
             deliver_at: float | datetime | None, group_id: str | None, dedup_id: str | None,
             priority: int | None, ttl: float | None) -> tuple[Any, ...] | None:
    """FrameBuilder.append's options, or None when the body is all there is (fast path)."""
    if (attributes is None and delay is None and deliver_at is None and group_id is None
            and dedup_id is None and priority is None and ttl is None):
        return None
    return (attributes, delay, deliver_at, group_id, dedup_id, priority, ttl)


class RemoteMessage:
    """A message received over the wire; the same attributes as ``fastfanout.Message``.

    Attributes:
        id: broker-unique, increasing message id.
        body: the body bytes.
        timestamp: clock seconds when it was published or sent.
        receive_count: deliveries of this message by this queue, this one included.
        receipt: the receipt of this delivery, for ack/nack/extend/term.
        queue: the queue it was received from.
        group_id: FIFO group, or None.
        dedup_id: deduplication id, or None.
        priority: priority (0 when the queue has none).
        dead_letter: a DeadLetterInfo when it was dead-lettered into this queue, else None.
    """

    __slots__ = ("_attributes", "_consumer", "_encoded", "_owner", "body", "dead_letter",
                 "dedup_id", "group_id", "id", "priority", "queue", "receipt",
                 "receive_count", "timestamp")

    def __init__(self, record: Any, owner: Owner, consumer: Settler | None,
                 dead_letter: DeadLetterInfo | None = None, queue: str = "") -> None:
        self.id: int = record.id
        self.body: bytes = record.body
        self._encoded: bytes = record.attributes
        self._attributes: Attributes | None = None
        self.timestamp: float = record.timestamp_us / 1e6
        self.receive_count: int = record.receive_count
        self.receipt: int = record.receipt
        self.queue: str = queue or ("" if record.dead_letter else record.name or "")
        self.group_id: str | None = record.group_id
        self.dedup_id: str | None = record.dedup_id
        self.priority: int = record.priority or 0
        self.dead_letter = dead_letter
        self._owner = owner
        self._consumer = consumer

    @property
    def attributes(self) -> Attributes:
        """Message attributes: name -> str | int | float | bytes | list[str]."""
        if self._attributes is None:
            self._attributes = protocol.decode_payload(self._encoded) if self._encoded else {}
        return self._attributes

    def _settled(self) -> None:
        # settled apart from its batch: a later DeliveryBatch.ack() leaves it out
        self._consumer = None

    def detach(self) -> bool:
        """For its batch's ack: True (and now settled) unless settled on its own before."""
        live = self._consumer is not None
        self._consumer = None
        return live

    def ack(self) -> Done:
        """Delete the message (its lease must still run); returns ``DONE`` (awaitable).

        A message pushed to a blocking client's consumer (``consume``) is acked
        pipelined, with that consumer's other acks in one SETTLE within the
        client's linger, as ``DeliveryBatch.ack()`` does: a stale receipt is then counted
        by the broker (``error.stale_receipt``), not raised. Otherwise (``receive``, a
        cancelled consumer) the call waits and raises ``StaleReceipt``; the asyncio client
        queues it for its loop iteration (``await message.ack()`` works too, and does not
        wait for the broker). ``await client.ack(message.receipt)`` always waits.
        """
        consumer = self._consumer
        if consumer is not None and not consumer.closed:
            self._consumer = None
            consumer.defer_settle(protocol.encode_receipt(self.receipt))
            return DONE
        try:
            self._owner.ack(self.receipt)
        finally:
            self._settled()
        return DONE

    def nack(self, delay: float | None = None) -> Done:
        """End the lease; visible again after ``delay`` seconds (None: queue backoff).

        Returns ``DONE`` (awaitable; the asyncio client sends the request at once).
        """
        try:
            self._owner.nack(self.receipt, delay=delay)
        finally:
            self._settled()
        return DONE

    def extend(self, seconds: float) -> Done:
        """Make the lease end ``seconds`` from now (0: give the message back); ``DONE``."""
        self._owner.extend(self.receipt, seconds)
        if seconds == 0:
            self._settled()
        return DONE

    def term(self) -> Done:
        """Dead-letter the message at once (reason ``rejected``); returns ``DONE``."""
        try:
            self._owner.term(self.receipt)
        finally:
            self._settled()
        return DONE

    def __repr__(self) -> str:
        return (f"RemoteMessage(id={self.id}, queue={self.queue!r}, "
                f"receive_count={self.receive_count}, body={self.body[:32]!r})")


def _seconds(microseconds: int | None) -> float | None:
    return None if microseconds is None else microseconds / 1e6


def dead_letters(records: list[Any]) -> dict[int, DeadLetterInfo]:
    """Dead-letter records of a delivery, by record index.

    A record with the dead-letter flag holds ``[reason, source, receive_count, first_us,
    last_us, time_us]`` as JSON in its name part (docs/protocol.md).
    """
    dead: dict[int, DeadLetterInfo] = {}
    for index, record in enumerate(records):
        if record.dead_letter:
            reason, source, count, first, last, when = json.loads(record.name)
            dead[index] = DeadLetterInfo(reason, source, count, _seconds(first),
                                         _seconds(last), when / 1e6)
    return dead


def decode_delivery(frames: list[bytes], owner: Owner, consumer: Settler | None = None,
                    queue: str = "") -> list[RemoteMessage]:
    """Turn a delivery payload (one record frame) into messages."""
    records = protocol.codec_module().decode_batch(frames[0])
    dead = dead_letters(records)
    return [RemoteMessage(record, owner, consumer, dead.get(index), queue)
            for index, record in enumerate(records)]


class RemotePublishBatch(Sequence[PublishResult]):
    """The results of a publish or send batch: a sequence of ``PublishResult``."""

    def __init__(self, frame: bytes) -> None:
        self._ids, self._deliveries, self._duplicates = protocol.decode_results(frame)

    @property
    def message_ids(self) -> list[int]:
        """The message id of every entry, in order."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> PublishResult: ...
    @overload
    def __getitem__(self, index: slice) -> list[PublishResult]: ...

    def __getitem__(self, index: int | slice) -> PublishResult | list[PublishResult]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return PublishResult(self._ids[index], self._deliveries[index], self._duplicates[index])
