"""The typed errors of fastfanout.

Every error is a :class:`FastFanoutError`. Each carries a stable ``code`` string, the
same one the wire protocol sends, so that a client re-raises a remote failure as the
very class the embedded broker would have raised. Messages name the bad value and the
limit or the form that was expected.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "Closed",
    "FastFanoutError",
    "InvalidArgument",
    "InvalidFilterPolicy",
    "MalformedBatch",
    "MessageTooLarge",
    "NotFound",
    "QueueFull",
    "StaleReceipt",
    "StoreFailed",
    "StoreFull",
    "error_for_code",
]


class FastFanoutError(Exception):
    """Base class of every error fastfanout raises on purpose."""

    code: str = "error"


class NotFound(FastFanoutError):
    """A topic, queue or subscription named in a call does not exist."""

    code = "not_found"


class AlreadyExists(FastFanoutError):
    """A topic or queue exists already with different settings."""

    code = "already_exists"


class InvalidArgument(FastFanoutError, ValueError):
    """An argument has the wrong type, is out of range, or is malformed."""

    code = "invalid_argument"


class InvalidFilterPolicy(InvalidArgument):
    """A subscription filter policy is malformed or exceeds a limit."""

    code = "invalid_filter_policy"


class MalformedBatch(InvalidArgument):
    """A batch frame (the codec layout) does not decode: its bytes, not its values, are bad.

    The server answers it with the wire code ``malformed_frame``.
    """


class MessageTooLarge(InvalidArgument):
    """A message body (with its attributes) exceeds the queue's ``max_message_size``."""

    code = "message_too_large"


class QueueFull(FastFanoutError):
    """A queue with the ``reject`` or ``hold`` overflow policy has no room: back pressure.

    Attributes:
        hold: the full queue has the ``hold`` policy: a broker server keeps such a
            publish and answers it once there is room (or after its ``hold_timeout``);
            an embedded broker raises at once, like ``reject``.
    """

    code = "queue_full"
    hold: bool = False


class StaleReceipt(FastFanoutError):
    """A receipt no longer names a leased delivery (acked, expired or redelivered).

    Attributes:
        receipts: the stale receipts of the call.
    """

    code = "stale_receipt"

    def __init__(self, message: str, receipts: list[int] | None = None) -> None:
        super().__init__(message)
        self.receipts: list[int] = list(receipts or [])


class Closed(FastFanoutError):
    """The broker or client was closed by its owner; no further calls are accepted."""

    code = "closed"


class StoreFull(FastFanoutError):
    """The disk of a durable broker is full: nothing of the refused request was stored.

    Consumers keep draining; publishing works again once space returns.
    """

    code = "store_full"


class StoreFailed(FastFanoutError):
    """A durable broker's storage failed (a write or fsync error) and closed itself.

    Nothing is confirmed any more until the broker is restarted and recovers.
    """

    code = "store_failed"


_BY_CODE: dict[str, type[FastFanoutError]] = {
    cls.code: cls
    for cls in (
        FastFanoutError,
        NotFound,
        AlreadyExists,
        InvalidArgument,
        InvalidFilterPolicy,
        MessageTooLarge,
        QueueFull,
        StaleReceipt,
        Closed,
        StoreFull,
        StoreFailed,
    )
}


def error_for_code(code: str) -> type[FastFanoutError]:
    """Return the error class for a stable wire ``code`` (the base class if unknown)."""
    return _BY_CODE.get(code, FastFanoutError)
