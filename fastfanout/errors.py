"""The typed errors of fastfanout: every exception class the package defines is here.

Every error is a :class:`FastFanoutError`. Each carries a stable ``code`` string, the
same one the wire protocol sends, so that a client re-raises a remote failure as the
very class the embedded broker would have raised (the transport's own errors have a code
too, though they never cross the wire). Messages name the bad value and the limit or the
form that was expected. ``docs/errors.md`` lists them all: code, cause, remedy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn

__all__ = [
    "ASYNCIO_CLIENT",
    "AlreadyExists",
    "BlockingOnly",
    "BridgeUnavailable",
    "BrokenConnection",
    "BrokerRunning",
    "CallTimeout",
    "Closed",
    "FastFanoutError",
    "InvalidArgument",
    "InvalidFilterPolicy",
    "LimitExceeded",
    "MalformedBatch",
    "MalformedFrame",
    "MessageTooLarge",
    "NoReply",
    "NoResponders",
    "NotFound",
    "PeerGone",
    "PeerLost",
    "PeerUnavailable",
    "ProtocolError",
    "QueueFull",
    "RequestTooLarge",
    "ServerStopping",
    "SessionExpired",
    "StaleReceipt",
    "StoreFailed",
    "StoreFull",
    "TransportError",
    "UnknownOpcode",
    "Unroutable",
    "UnsafeDirectory",
    "UnsafeLockFile",
    "UnsupportedVersion",
    "UsedAfterFork",
    "WouldBlock",
    "WrongClient",
    "WrongEventLoop",
    "blocking_misused",
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
        room: ``(queue, messages, bytes)``: the queue that had no room and what the
            refused batch needed in it, or None (a refusal read off the wire).
    """

    code = "queue_full"
    hold: bool = False
    room: tuple[str, int, int] | None = None


class LimitExceeded(FastFanoutError):
    """A broker's topology limit or one of a broker server's per-connection limits.

    The message names the limit and its value; the refused call changed nothing.
    Topology limits (``max_topics``, ``max_queues``, ``max_subscriptions_per_topic``,
    ``max_pattern_subscriptions``, counted in ``stats().topology``): delete something
    first, or raise the limit.
    Per-connection limits (``max_consumers``, ``max_long_polls``): wait for answers, or
    close what the connection holds (cancel a consumer), before asking for more.
    """

    code = "limit_exceeded"


class StaleReceipt(FastFanoutError):
    """A receipt no longer names a leased delivery (acked, expired or redelivered).

    From a client, a receipt of a delivery made for another session is stale too.

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


# -- errors that exist only because there is a wire ------------------------------------


class ProtocolError(FastFanoutError):
    """A message broke the wire protocol (the broker says which rule)."""

    code = "protocol_error"


class MalformedFrame(ProtocolError):
    """A frame is missing, too short, or does not decode as its opcode requires."""

    code = "malformed_frame"


class UnknownOpcode(ProtocolError):
    """The request's opcode is not one this broker knows."""

    code = "unknown_opcode"


class UnsupportedVersion(ProtocolError):
    """The request's protocol version is not the broker's."""

    code = "unsupported_version"


class RequestTooLarge(ProtocolError):
    """The request exceeds ``max_request_bytes`` or ``MAX_REQUEST_FRAMES`` payload frames."""

    code = "request_too_large"


class BrokenConnection(FastFanoutError):
    """The peer vanished: the broker stopped answering (or said goodbye) mid-call.

    Unlike ``Closed`` (you closed the client), this is not your doing; the next call
    reconnects.
    """

    code = "broken"


class CallTimeout(FastFanoutError, TimeoutError):
    """A wait with a caller's timeout (``future.result(timeout)``) ended unanswered.

    Only that wait ended: the connection and the future are left alone (the publish may
    still complete; wait again). The connection is judged broken by the client's own
    ``timeout`` and heartbeats (``BrokenConnection``), not by a caller's poll. Also a
    builtin ``TimeoutError``, as ``concurrent.futures`` raises.
    """

    code = "call_timeout"


class NoResponders(FastFanoutError):
    """A ``request`` reached no queue: no subscription of its topic took the message.

    NATS's "no responders": the requester learns at once that nobody will answer,
    instead of waiting out its timeout. Nothing was enqueued (a filter policy that let
    the message through nowhere, or a duplicate, counts as no queue too).
    """

    code = "no_responders"


class NoReply(FastFanoutError, TimeoutError):
    """A ``request`` reached its queues but no reply came within its ``timeout``.

    The request message stays where it went (a responder may still take it; a reply
    that comes later is dropped by the requester, which no longer waits). Also a
    builtin ``TimeoutError``.
    """

    code = "no_reply"


class SessionExpired(BrokenConnection):
    """The broker ended this client's session and released its leases.

    Why: it missed its heartbeats, it read nothing while ``max_queued_replies`` messages
    waited for it, or it sent nothing for ``idle_session_timeout`` without heartbeats.
    The broker serves no more requests of that connection; the clients connect anew.
    """

    code = "session_expired"


class ServerStopping(BrokenConnection):
    """The broker is shutting down and ended this consumer or request."""

    code = "server_stopping"


# -- errors of the process and its transports (never sent on the wire) ------------------


class BrokerRunning(FastFanoutError):
    """Another broker already serves this endpoint (it holds the endpoint's lock)."""

    code = "broker_running"


class UnsafeLockFile(FastFanoutError):
    """The endpoint's lock file, or its directory, could be someone else's to control.

    A symbolic link, another user's file, or a directory others may write to (without
    the sticky bit) is refused rather than followed or written to.
    """

    code = "unsafe_lock_file"


class UnsafeDirectory(FastFanoutError):
    """A directory fastfanout keeps its files in is not private to this user.

    The per-user runtime or state directory (or the data directory made in it) exists
    but is not a directory owned by this user, or its mode is not 0700: others could
    read or change what is kept there, so it is refused rather than used.
    """

    code = "unsafe_directory"


class TransportError(FastFanoutError, OSError):
    """A socket operation failed (bind refused, endpoint malformed, keys unreadable, ...).

    An ``OSError`` too. The clients turn it into ``BrokenConnection`` when it happens
    while connecting; a server or a ``load_curve_keys`` call raises it as it is.
    """

    code = "transport_error"


class PeerLost(TransportError, ConnectionError):
    """The broker behind a local channel is gone (or stopped reading), or took no request.

    Raised by the local transports, and by a blocking client's socket that had no room
    for a request within its send timeout; the clients turn it into ``BrokenConnection``.
    """

    code = "peer_lost"


class WouldBlock(TransportError):
    """The peer's queue is full; the message was not sent (the server's own signal)."""

    code = "would_block"


class Unroutable(TransportError):
    """The peer is not connected (any more); the message was not sent (the server's)."""

    code = "unroutable"


class PeerGone(FastFanoutError, ConnectionError):
    """The other side of a local channel hung up its bell (its process ended).

    Only a side's own bell tells: ringing the peer's bell never fails (it is opened
    read-write, see ``fastfanout.transport.local_channel.Bell``). The transports turn it into
    ``PeerLost`` (clients) or end the session (broker).
    """

    code = "peer_gone"


class UsedAfterFork(FastFanoutError):
    """A client was used in a child process of the process that connected it (``fork()``).

    A connection (its ZeroMQ socket, its local channel's rings, its lock and background
    thread) belongs to the process that made it; the child must connect a client of its
    own. Raised by the child's first call; nothing of the parent's connection is touched.
    """

    code = "used_after_fork"


class WrongClient(FastFanoutError, TypeError):
    """A blocking object was used as an asyncio one, or an asyncio one as a blocking one.

    ``async with fastfanout.connect()``, ``async for`` over a blocking consumer;
    ``with fastfanout.aio.connect()``, a method of what ``fastfanout.aio.connect()``
    returns used without ``await``, ``with`` on an ``AsyncClient``, ``for`` over its
    consumer. The message names the form that works. Also a ``TypeError`` (what Python
    raises for such a misuse of its protocols). Raised at once; nothing is opened or sent.
    """

    code = "wrong_client"


ASYNCIO_CLIENT: Final = ("the asyncio client ('client = await fastfanout.aio.connect()', or "
                         "'async with fastfanout.aio.connect() as client:'), whose calls "
                         "are awaited")
"""How a ``WrongClient`` about a blocking object names the asyncio client to use."""


def blocking_misused(what: str, how: str, instead: str) -> WrongClient:
    """The ``WrongClient`` of a blocking client's object used as an asyncio one.

    Args:
        what: the object, as the user knows it, and whence ("a PublishResult (what a
            blocking publish returns)").
        how: the misuse ("awaited", "entered with 'async with'").
        instead: what works in synchronous code.

    ``__await__``, ``__aenter__`` and ``__aiter__`` of such objects raise it (until
    2026-12-06 Python's own TypeError said only that the object "can't be used in
    'await' expression").
    """
    return WrongClient(f"{what} is not {how}: {instead}; in asyncio code use "
                       f"{ASYNCIO_CLIENT}")


class BlockingOnly:
    """Mixin of a blocking client's ``with`` objects: ``async with`` or ``await`` raises.

    Both raise ``WrongClient`` (``blocking_misused``) instead of Python's own words.

    A subclass names itself and what works instead of ``await`` in its class line:
    ``class Consumer(BlockingOnly, what="a Consumer (...)", await_instead="...")``.
    """

    __slots__ = ()
    _what: ClassVar[str] = "this object"
    _await_instead: ClassVar[str] = "use it as it is"

    def __init_subclass__(cls, *, what: str = "", await_instead: str = "",
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if what:
            cls._what = what
        if await_instead:
            cls._await_instead = await_instead

    def misused(self, how: str, instead: str) -> WrongClient:
        """The ``WrongClient`` of this object used ``how``; ``instead`` works."""
        return blocking_misused(self._what, how, instead)

    async def __aenter__(self) -> NoReturn:
        raise self.misused("entered with 'async with'", "enter it with 'with'")

    async def __aexit__(self, *exc: object) -> None:   # pragma: no cover - __aenter__ raised
        pass

    if not TYPE_CHECKING:   # type checkers keep reporting the await themselves
        def __await__(self):
            raise self.misused("awaited", self._await_instead)


class WrongEventLoop(FastFanoutError, RuntimeError):
    """An asyncio client was used outside the event loop that connected it.

    Its reader and heartbeat tasks, its futures and its socket belong to that loop: a
    call from another loop, or from another thread, would wait for answers no task of
    its own reads. Raised at once; nothing is sent. Connect a client in each loop (or
    use the blocking ``Client`` from threads).
    """

    code = "wrong_event_loop"


class BridgeUnavailable(FastFanoutError, RuntimeError):
    """The NATS bridge cannot run or cannot reach JetStream now.

    Raised before the broker starts when the nats-py client (or, for ``credentials``, its
    ``nkeys`` extra) is missing (``str()`` says what to install); inside a running
    bridge, a JetStream publish that was refused or not acknowledged in time, a stream or
    consumer the rule cannot use (``str()`` names it and the way out), or a consumer or
    dead-letter queue gone (the rule backs off and retries, counted in its stats).
    """

    code = "bridge_unavailable"


class PeerUnavailable(FastFanoutError, RuntimeError):
    """A benchmark peer server cannot run here: its binary or client library is missing.

    Raised by ``fastfanout.bench.servers`` before anything starts; ``str()`` is the one-line
    reason, with what to install.
    """

    code = "peer_unavailable"


_BY_CODE: dict[str, type[FastFanoutError]] = {
    cls.code: cls
    for cls in (
        FastFanoutError,
        NotFound,
        AlreadyExists,
        InvalidArgument,
        InvalidFilterPolicy,
        MessageTooLarge,
        NoResponders,
        NoReply,
        QueueFull,
        LimitExceeded,
        StaleReceipt,
        Closed,
        StoreFull,
        StoreFailed,
        BrokenConnection,
        MalformedFrame,
        ProtocolError,
        RequestTooLarge,
        ServerStopping,
        SessionExpired,
        UnknownOpcode,
        UnsupportedVersion,
        UsedAfterFork,
    )
}
"""The classes of the codes a broker sends (``internal`` is the base class)."""


def error_for_code(code: str) -> type[FastFanoutError]:
    """Return the error class for a stable wire ``code`` (the base class if unknown)."""
    return _BY_CODE.get(code, FastFanoutError)
