"""Small immutable records the API takes and returns (besides ``Message``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple, TypeAlias

from fastfanout.errors import InvalidArgument, blocking_misused

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "REPLY_TO",
    "AttributeValue",
    "Attributes",
    "Body",
    "DeadLetterInfo",
    "ExponentialBackoff",
    "PublishEntry",
    "PublishResult",
    "Reply",
    "reply_address_of",
]

AttributeValue = str | int | float | bytes | list[str]
"""An attribute value: SNS String, Number (int or float), Binary, or String.Array."""

Attributes = dict[str, AttributeValue]
"""Message attributes: name -> value."""

Body: TypeAlias = "Buffer"
"""A message body: bytes, or any C-contiguous buffer read as its bytes (bytearray, a
memoryview of any format, ``array.array``, numpy arrays, but not a buffer of Python
objects: a numpy object array is refused); copied when published."""


class PublishEntry(NamedTuple):
    """One entry of ``publish_batch`` / ``send_batch`` when a bare body is not enough.

    Attributes:
        body: the message body (bytes or any C-contiguous buffer, see ``Body``).
        attributes: message attributes, or None.
        delay: seconds to hold the message before it becomes visible, or None for the
            queue's default delay.
        deliver_at: absolute due time in clock seconds (epoch by default), or None.
        group_id: FIFO message group (FIFO queues and topics).
        dedup_id: deduplication id.
        priority: priority 0..255 (queues with ``max_priority``).
        ttl: seconds the message may wait before it expires, or None.
    """

    body: Body
    attributes: Attributes | None = None
    delay: float | None = None
    deliver_at: float | None = None
    group_id: str | None = None
    dedup_id: str | None = None
    priority: int | None = None
    ttl: float | None = None


class PublishResult(NamedTuple):
    """What a publish or send returns.

    Attributes:
        message_id: the broker-unique, increasing id of the message (for a duplicate,
            the id of the original).
        deliveries: copies enqueued (queues reached); 0 for a duplicate.
        duplicate: True when deduplication recognised the message and did not deliver it.
    """

    message_id: int
    deliveries: int
    duplicate: bool = False


if not TYPE_CHECKING:   # type checkers keep reporting the await themselves
    def _await_result(self):
        raise blocking_misused(
            "a PublishResult (what a blocking publish or send returns: the broker's "
            "answer already)", "awaited", "use it as it is")

    # (set here: a NamedTuple's body holds its fields only)
    PublishResult.__await__ = _await_result


REPLY_TO: Final = "fastfanout.reply_to"
"""The attribute a request carries: the address its reply goes to
(``fastfanout.semantics.replies``)."""


def reply_address_of(attributes: Attributes) -> str:
    """The address a received message's reply goes to (``message.reply``).

    Raises:
        InvalidArgument: the message asked for no reply (it has no ``REPLY_TO``).
    """
    address = attributes.get(REPLY_TO)
    if address is None:
        raise InvalidArgument(
            f"this message asked for no reply (no {REPLY_TO!r} attribute: it was "
            f"published, not requested)")
    return address   # type: ignore[return-value]   # the reply checks it


class Reply(NamedTuple):
    """What a ``request`` returns: the first reply to it.

    Attributes:
        body: the reply's body.
        attributes: the reply's attributes (name -> value; empty when it had none).
    """

    body: bytes
    attributes: Attributes


class DeadLetterInfo(NamedTuple):
    """Why and from where a message reached a dead-letter queue.

    Attributes:
        reason: ``max_receives``, ``rejected``, ``expired`` or ``overflow``.
        source_queue: the queue it was dead-lettered from.
        receive_count: deliveries it had in the source queue.
        first_receive_time: clock seconds of its first delivery there, or None.
        last_receive_time: clock seconds of its last delivery there, or None.
        time: clock seconds when it was dead-lettered.
    """

    reason: str
    source_queue: str
    receive_count: int
    first_receive_time: float | None
    last_receive_time: float | None
    time: float


class ExponentialBackoff(NamedTuple):
    """A redelivery backoff that grows geometrically: ``initial * multiplier**n``, capped.

    Attributes:
        initial: seconds before the first redelivery.
        multiplier: growth factor per failed delivery (>= 1).
        maximum: longest wait, seconds.
    """

    initial: float = 1.0
    multiplier: float = 2.0
    maximum: float = 300.0

    def steps(self, limit: int = 64) -> tuple[float, ...]:
        """The waits after failed delivery 1, 2, ... until the cap (the last one repeats)."""
        waits: list[float] = []
        wait = self.initial
        while len(waits) < limit:
            waits.append(min(wait, self.maximum))
            if wait >= self.maximum:
                break
            wait *= self.multiplier
        return tuple(waits)
