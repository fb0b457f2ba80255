"""What a client receives: remote messages, delivery and stream batches, publish results.

These are the client-side edges of the wire format (docs/protocol.md): records stay in
their codec frame until user code looks at them, and each object here mirrors its
embedded twin (``RemoteMessage``, made in C from the delivery frame by
``fastfanout._ext.received``, has the attributes of ``fastfanout.Message``,
``RemotePublishBatch`` behaves like ``PublishBatch``). Both drivers (the blocking
``Client`` and the asyncio ``AsyncClient``) share them: a message settles through its
``Settler`` (a consumer's pipelined acks) or its ``Owner`` (the client's calls).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, overload

from fastfanout._ext.received import DONE, Done, RemoteMessage, messages_of
from fastfanout.errors import blocking_misused
from fastfanout.records import Attributes, Body, DeadLetterInfo, PublishResult
from fastfanout.wire import protocol

__all__ = [
    "DONE",
    "Done",
    "Owner",
    "RemoteMessage",
    "RemotePublishBatch",
    "Settler",
    "dead_letters",
    "messages_of",
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

    def reply(self, address: str, body: Body, *, attributes: Attributes | None = None
              ) -> Any:
        """Answer a request (``message.reply``)."""


def publish_options(attributes: Attributes | None, delay: float | None,
             deliver_at: float | datetime | None, group_id: str | None, dedup_id: str | None,
             priority: int | None, ttl: float | None) -> tuple[Any, ...] | None:
    """FrameBuilder.append's options, or None when the body is all there is (fast path)."""
    if (attributes is None and delay is None and deliver_at is None and group_id is None
            and dedup_id is None and priority is None and ttl is None):
        return None
    return (attributes, delay, deliver_at, group_id, dedup_id, priority, ttl)


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


class RemotePublishBatch(Sequence[PublishResult]):
    """The results of a publish or send batch: a sequence of ``PublishResult``.

    It keeps the broker's results frame and reads it when asked: a pipeline that only
    waits for its batches (``publish_batch_nowait(...).result()``, a producer's frames)
    makes no Python object per message.
    """

    __slots__ = ("_count", "_frame")

    def __init__(self, frame: bytes) -> None:
        # (13 bytes a message; a view of a local channel's ring would hold the ring)
        self._frame = frame if type(frame) is bytes else bytes(frame)
        self._count = protocol.results_count(self._frame)

    @property
    def message_ids(self) -> list[int]:
        """The message id of every entry, in order."""
        return protocol.decode_results(self._frame)[0]

    def __len__(self) -> int:
        return self._count

    if not TYPE_CHECKING:   # type checkers keep reporting the await themselves
        def __await__(self):
            raise blocking_misused(
                "a RemotePublishBatch (what publish_batch or send_batch returns: the "
                "broker's answers already)", "awaited", "use it as it is")

    def __iter__(self) -> Iterator[PublishResult]:
        # all of them: one decode of the frame, not one per entry as indexing does
        return map(PublishResult, *protocol.decode_results(self._frame))

    @overload
    def __getitem__(self, index: int) -> PublishResult: ...
    @overload
    def __getitem__(self, index: slice) -> list[PublishResult]: ...

    def __getitem__(self, index: int | slice) -> PublishResult | list[PublishResult]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        position = index.__index__()
        if position < 0:
            position += self._count
        if not 0 <= position < self._count:
            raise IndexError(f"result index {index} out of range for {self._count} entries")
        return PublishResult(*protocol.result_at(self._frame, self._count, position))
