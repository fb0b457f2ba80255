"""The connection core: a client connection's whole protocol state, with no I/O.

Design
------
Prior art: h11 and wsproto (a protocol is a state machine fed events, tested with no
socket; the blocking and async faces are small drivers over it) and asyncpg's
``CoreProtocol`` under its I/O layer.

``ConnectionCore`` turns API calls into request frames (``outbox``) and received frames
into results (``Request``), consumer pushes (``ConsumerState``) and session events. It
holds no socket, thread, lock or event loop: time is passed in (``now``, monotonic
seconds), and the driver sends what the outbox holds and feeds in what arrives. The
blocking ``Client`` (``fastfanout.client.blocking``) and the asyncio ``AsyncClient``
(``fastfanout.client.asyncio``) are drivers over it: they differ in how they wait, never
in a rule of the protocol.

Rules kept here, once:

- Request ids grow from 1; a request's size is checked against the broker's limits (told
  in its HELLO reply) before anything is queued (``RequestTooLarge``, nothing sent).
- Publishes of ``publish_nowait``/``send_nowait`` join the batch of their target (opcode,
  name), which leaves at ``batch_messages`` records or ``batch_bytes`` bytes, on
  ``flush``, and before any other request (``flush=True``): a request never overtakes an
  earlier publish, so order per target and FIFO groups hold.
- Prefetch is the broker's own count of unsettled pushed messages (``CONSUME``); a
  client keeps no credit. Pipelined acks of a consumer's pushes queue in its settle queue
  and leave as one ``SETTLE`` (a receipts frame per batch or message, ``NO_CREDIT``
  last) within ``linger``, at half the prefetch, at ``SETTLE_MAX_RECEIPTS`` receipts or
  ``protocol.SETTLE_MAX_FRAMES`` frames.
- A ``GOODBYE`` fails every waiter: without a payload the broker stops, with an error it
  ended the session (``SessionExpired``); ``ended`` tells the driver which.
- Heartbeats are due every ``heartbeat_interval`` (the broker's); a broker silent past
  1.5 times its ``heartbeat_timeout`` while calls wait breaks the connection.
"""

from __future__ import annotations

import inspect
import operator
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Final, TypeVar

import msgspec

from fastfanout._ext.offers import PendingBatch
from fastfanout._ext.received import AckBuffer
from fastfanout._ext.wire import FrameBuilder, pack_receipts, publish_frame_of, receipts_of
from fastfanout.client import forks
from fastfanout.errors import (
    BrokenConnection,
    Closed,
    FastFanoutError,
    InvalidArgument,
    InvalidFilterPolicy,
    MalformedFrame,
    RequestTooLarge,
    ServerStopping,
    SessionExpired,
)
from fastfanout.semantics.filter_policy import MAX_DEPTH, parse_policy
from fastfanout.semantics.replies import new_inbox, reply_address
from fastfanout.settings import (
    MAX_DELAY,
    MAX_MESSAGE_SIZE_LIMIT,
    MAX_PRIORITY,
    MAX_RECEIVE_BATCH,
    MAX_VISIBILITY_TIMEOUT,
    QueueSettings,
    Subscription,
    TopicSettings,
    check_count,
    check_iterable,
    encoded_name,
    finite,
    name_type_error,
    optional_count,
    plain_seconds,
    seconds_to_us,
)
from fastfanout.stats import BrokerStats
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status

__all__ = [
    "CONTROL_CALLS",
    "PLAIN_CALLS",
    "SETTLE_MAX_RECEIPTS",
    "ConnectionCore",
    "ConsumerState",
    "ControlCall",
    "PendingBatch",
    "Request",
    "check_inactivity_timeout",
    "check_policy_types",
    "decode_queue_settings",
    "decode_subscriptions",
    "decode_value",
    "encode_call",
    "queue_settings_payload",
    "queue_settings_to_wire",
    "stream_endpoint_hint",
]

F = TypeVar("F")

SETTLE_MAX_RECEIPTS: Final = 65_536
"""Most receipts one SETTLE request carries (512 KiB): queued batch acks go at this many."""

PIPELINE_READ: Final = 32
"""Requests in flight past which a driver reads the replies that have arrived before it
sends more (a pipelining caller never waits, so its replies would pile up)."""


def check_inactivity_timeout(timeout: object) -> float | None:
    """A consumer's ``timeout`` (seconds > 0, or None), or ``InvalidArgument``."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not (
            finite(timeout) and timeout > 0):
        raise InvalidArgument(f"timeout={timeout!r} must be finite seconds > 0, or None")
    return float(timeout)


_UNENCODABLE: Final = (TypeError, ValueError, OverflowError, msgspec.EncodeError)
"""What msgspec raises for a value it cannot encode."""


def _count_checks() -> dict[tuple[int, str], Callable[[str, Any], object]]:
    queue_counts: dict[str, Callable[[str, Any], object]] = {
        "max_receive_count": optional_count, "max_messages": optional_count,
        "max_bytes": optional_count,
        "max_message_size": partial(check_count, maximum=MAX_MESSAGE_SIZE_LIMIT)}
    return {**{(Opcode.CREATE_QUEUE, name): check for name, check in queue_counts.items()},
            **{(Opcode.SET_QUEUE_SETTINGS, name): check
               for name, check in queue_counts.items()},
            (Opcode.CREATE_QUEUE, "max_priority"): partial(check_count, maximum=MAX_PRIORITY,
                                                           minimum=0),
            (Opcode.REDRIVE, "max_messages"): optional_count,
            (Opcode.RECEIVE, "max_messages"): partial(check_count, maximum=MAX_RECEIVE_BATCH)}


_COUNT_CHECKS: Final = _count_checks()
"""The broker's own check of each count argument a call may carry, by (opcode, name):
an int past 64 bits (which msgpack cannot carry) is refused in the broker's words, with
the count's range, as one the broker refused itself (until 2026-12 it was "outside the
64-bit integer range" here but "must be ... >= 1" from the broker)."""


def _unencodable(opcode: int, args: list[Any], kwargs: dict[str, Any]) -> str:
    """The first argument of a call that cannot be encoded, as ``name=value``.

    Until 2026-12-05 the error said only "an argument", so ``receive(q, wait=2**70)``
    did not say which one was beyond 64 bits. A count the broker checks (``_COUNT_CHECKS``)
    raises the broker's own ``InvalidArgument`` instead.
    """
    named = [*((f"argument {index + 1}", value) for index, value in enumerate(args)),
             *kwargs.items()]
    for name, value in named:
        try:
            protocol.encode_payload(value)
        except _UNENCODABLE:
            check = _COUNT_CHECKS.get((opcode, name))
            if check is not None and type(value) is int:
                try:
                    check(name, value)   # raises: the value is past 64 bits
                except InvalidArgument as refused:
                    raise refused from None
            return f"{name}={value!r:.80}"
        except RecursionError:
            return f"{name} (nested too deeply)"
    return "an argument"


def check_policy_types(policy: Any, scope: Any) -> None:
    """Refuse a filter policy given as a map that the embedded broker refuses, alike.

    msgpack would send a set or tuple as an array and a date as text, and the broker
    would take them: the embedded broker refuses them (a policy is JSON). So a map is
    validated here as the broker does (``parse_policy``, in its scope; with none given,
    ``set_filter_policy`` keeping the subscription's, in body scope, which refuses no
    type that attribute scope takes). JSON text is left to the broker.

    Raises:
        InvalidFilterPolicy: what the embedded broker raises for the policy.
        InvalidArgument: ``scope`` is not a scope.
    """
    if policy is None or isinstance(policy, str | bytes):
        return
    parse_policy(policy, "body" if scope is None else scope)


def encode_call(opcode: int, args: Iterable[Any], kwargs: dict[str, Any]) -> bytes:
    """The payload of a control call, or ``InvalidArgument`` if it cannot be encoded.

    msgspec refuses what it cannot encode (an int beyond 64 bits, an object); the
    embedded broker would have refused it as a bad argument too.
    """
    args = list(args)
    try:
        return protocol.encode_payload([args, kwargs])
    except _UNENCODABLE as exc:
        if isinstance(exc, OverflowError):   # msgspec's words are of its own internals
            why = "is outside the 64-bit integer range"
        elif isinstance(exc, UnicodeError):
            why = "is not valid Unicode text (a lone surrogate?)"
        else:
            why = f"cannot be sent to the broker: {exc}"
        raise InvalidArgument(f"{Opcode(opcode).name.lower()}: "
                              f"{_unencodable(opcode, args, kwargs)} {why}") from None
    except RecursionError:
        # nested deeper than msgspec recurses; only a filter policy (or a worker report)
        # nests, and the embedded broker refuses such a policy as too deep
        if opcode in (Opcode.SUBSCRIBE, Opcode.SET_FILTER_POLICY):
            raise InvalidFilterPolicy(
                f"filter policy at <policy>: policy nests deeper than {MAX_DEPTH} levels"
            ) from None
        raise InvalidArgument(f"{Opcode(opcode).name.lower()}: an argument nests too deeply "
                              f"to be sent to the broker") from None


_DIRECT_SETTLES: Final = frozenset({Opcode.ACK, Opcode.NACK, Opcode.EXTEND, Opcode.TERM,
                                    Opcode.NACK_BATCH, Opcode.EXTEND_BATCH,
                                    Opcode.TERM_BATCH})
"""The requests that settle a delivery by receipt: the pipelined acks go before them."""


def receipt_argument(value: Any) -> Any:
    """A receipt as a control call sends it (nack, extend, term).

    An integer of another type than int (``__index__``: a numpy ``uint64`` taken from a
    batch's ``receipts``) goes as its int, as ``ack`` and the embedded broker take it
    (msgpack cannot encode it); anything else goes as it is, for the broker to judge.
    """
    if type(value) is not int and type(value) is not bool and \
            hasattr(type(value), "__index__"):
        return operator.index(value)
    return value


def decode_value(frames: list[bytes]) -> Any:
    """The result of a control call: its msgpack payload, or None."""
    return protocol.decode_payload(frames[0]) if frames else None


def queue_settings_payload(settings: dict[str, Any], defaults: Mapping[str, Any]
                           ) -> dict[str, Any]:
    """``create_queue``'s settings as sent: those that differ from their ``defaults``.

    The broker applies its own defaults to the others (a value of another type than its
    default is sent, so the broker refuses it).
    """
    return queue_settings_to_wire({
        name: value for name, value in settings.items()
        if type(value) is not type(defaults[name]) or value != defaults[name]})


def queue_settings_to_wire(settings: dict[str, Any]) -> dict[str, Any]:
    """Queue settings as msgpack takes them (``create_queue``'s, ``set_queue_settings``')."""
    if "redelivery_backoff" in settings:
        settings["redelivery_backoff"] = protocol.backoff_to_wire(settings["redelivery_backoff"])
    return settings


def decode_queue_settings(raw: Mapping[str, Any]) -> QueueSettings:
    """A QUEUE_SETTINGS answer."""
    settings = dict(raw)
    settings["redelivery_backoff"] = protocol.backoff_from_wire(
        settings.get("redelivery_backoff"))
    return QueueSettings(**settings)


def decode_subscriptions(raw: Mapping[Any, Any]) -> dict[int, tuple[str, str]]:
    """A LIST_SUBSCRIPTIONS answer."""
    return {int(key): (value[0], value[1]) for key, value in raw.items()}


def _value(convert: Callable[[Any], Any]) -> Callable[[list[bytes]], Any]:
    return lambda frames: convert(decode_value(frames))


def _nothing(frames: list[bytes]) -> None:
    return None


CONTROL_CALLS: Final[dict[str, tuple[int, Callable[[list[bytes]], Any]]]] = {
    "create_topic": (Opcode.CREATE_TOPIC, _nothing),
    "delete_topic": (Opcode.DELETE_TOPIC, _nothing),
    "list_topics": (Opcode.LIST_TOPICS, _value(list)),
    "topic_settings": (Opcode.TOPIC_SETTINGS, _value(lambda raw: TopicSettings(**raw))),
    "create_queue": (Opcode.CREATE_QUEUE, _nothing),
    "delete_queue": (Opcode.DELETE_QUEUE, _nothing),
    "list_queues": (Opcode.LIST_QUEUES, _value(list)),
    "queue_settings": (Opcode.QUEUE_SETTINGS, _value(decode_queue_settings)),
    "set_queue_settings": (Opcode.SET_QUEUE_SETTINGS, _value(decode_queue_settings)),
    "subscribe": (Opcode.SUBSCRIBE, _value(int)),
    "unsubscribe": (Opcode.UNSUBSCRIBE, _nothing),
    "set_filter_policy": (Opcode.SET_FILTER_POLICY, _nothing),
    "subscription": (Opcode.SUBSCRIPTION, _value(lambda raw: Subscription(**raw))),
    "list_subscriptions": (Opcode.LIST_SUBSCRIPTIONS, _value(decode_subscriptions)),
    "redrive": (Opcode.REDRIVE, _value(int)),
    "purge": (Opcode.PURGE, _value(int)),
    "stats": (Opcode.STATS, lambda frames: msgspec.msgpack.decode(frames[0],
                                                                  type=BrokerStats)),
    "check": (Opcode.CHECK, _value(bool)),
    "nack": (Opcode.NACK, _nothing),
    "extend": (Opcode.EXTEND, _nothing),
    "term": (Opcode.TERM, _nothing),
}
"""The API operations that travel as control calls (msgpack ``[args, kwargs]``): each
one's opcode and how its answer reads."""

PLAIN_CALLS: Final[dict[str, tuple[int, Callable[[list[bytes]], Any]]]] = {
    "server_stats": (Opcode.SERVER_STATS, decode_value),
    "report_worker": (Opcode.REPORT, _nothing),
    "worker_stats": (Opcode.WORKERS, decode_value),
}
"""The client-only operations whose arguments travel as one msgpack frame each (no
``[args, kwargs]``): each one's opcode and how its answer reads."""


class ControlCall:
    """One API operation as a control call: opcode, answer decoder, declared signature.

    The signature (``fastfanout.api``'s) maps a call's arguments to the request's args
    (positional parameters) and kwargs (keyword-only ones); a ``PLAIN_CALLS`` operation
    sends each argument as a msgpack frame of its own.

    Args:
        declared: the operation as ``fastfanout.api`` declares it.
    """

    __slots__ = ("decode", "defaults", "opcode", "plain", "signature")

    def __init__(self, declared: Callable[..., Any]) -> None:
        self.plain = declared.__name__ in PLAIN_CALLS
        self.opcode, self.decode = (PLAIN_CALLS if self.plain
                                    else CONTROL_CALLS)[declared.__name__]
        self.signature = inspect.signature(declared)
        self.defaults = {name: parameter.default
                         for name, parameter in self.signature.parameters.items()}

    def request(self, core: ConnectionCore, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Request:
        """Queue the call on ``core`` (``TypeError`` for arguments the API does not take)."""
        bound = self.signature.bind(None, *args, **kwargs)   # None: the API's ``self``
        bound.apply_defaults()
        positional: list[Any] = []
        keywords: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            if name == "receipt":
                value = receipt_argument(value)
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.KEYWORD_ONLY:
                keywords[name] = value
            elif kind is inspect.Parameter.VAR_KEYWORD:   # set_queue_settings' changes
                keywords.update(value)
            else:
                positional.append(value)
        if self.opcode in (Opcode.SUBSCRIBE, Opcode.SET_FILTER_POLICY):
            check_policy_types(bound.arguments.get("filter_policy"),
                               bound.arguments.get("filter_scope"))
        if self.plain:
            return core.request(self.opcode, [protocol.encode_payload(value)
                                              for value in positional])
        if self.opcode == Opcode.CREATE_QUEUE:
            keywords = queue_settings_payload(keywords, self.defaults)
        elif self.opcode == Opcode.SET_QUEUE_SETTINGS:
            keywords = queue_settings_to_wire(keywords)
        return core.request(self.opcode, [encode_call(self.opcode, positional, keywords)])


class Request:
    """One request in flight; ``answer`` or ``fail`` completes it once.

    ``watchers`` run at completion, in the driver's context (the thread or task that fed
    the reply in): the driver serialises ``watch`` with completion.
    """

    __slots__ = ("error", "frames", "publish", "request_id", "watchers")

    def __init__(self, request_id: int, publish: bool = False) -> None:
        self.request_id = request_id
        self.publish = publish   # a PUBLISH/SEND: close() and flush() wait for its answer
        self.frames: list[bytes] | None = None
        self.error: FastFanoutError | None = None
        self.watchers: list[Callable[[], None]] | None = None

    @property
    def done(self) -> bool:
        """True once answered or failed."""
        return self.frames is not None or self.error is not None

    def answer(self, frames: list[bytes]) -> None:
        """The broker answered: complete with its payload frames."""
        self.frames = frames
        if self.watchers is not None:
            self._notify()

    def fail(self, error: FastFanoutError) -> None:
        """The request failed (error reply, broken connection): complete with ``error``."""
        self.error = error
        if self.watchers is not None:
            self._notify()

    def _notify(self) -> None:
        watchers, self.watchers = self.watchers, None
        for watcher in watchers or ():
            watcher()

    def watch(self, watcher: Callable[[], None]) -> None:
        """Call ``watcher()`` once done (now, if it is)."""
        if self.done:
            watcher()
            return
        if self.watchers is None:
            self.watchers = []
        self.watchers.append(watcher)

    def value(self) -> list[bytes]:
        """The answer's payload frames, or the request's error raised."""
        if self.error is not None:
            raise self.error
        assert self.frames is not None
        return self.frames


def failed(error: FastFanoutError) -> Request:
    """A request that never left (say, too large), completed with ``error``."""
    request = Request(0)
    request.fail(error)
    return request


def stream_endpoint_hint(endpoint: str) -> str:
    """What a handshake timeout adds when ``endpoint`` is a broker's stream endpoint.

    ``ipc://PATH.stream`` is where a broker at ``ipc://PATH`` publishes its streams (a
    PUB socket: it never answers a HELLO); "" for any other endpoint.
    """
    if endpoint.startswith("ipc://") and endpoint.endswith(".stream"):
        return (f" ({endpoint} is the stream endpoint of a broker at "
                f"{endpoint.removesuffix('.stream')}: connect to that one)")
    return ""


class ConsumerState:
    """One push consumer's state: received batches, its error, its settle queue.

    Attributes:
        consumer_id: the CONSUME request's id (the broker's name for the consumer).
        queue: the queue consumed.
        prefetch: most unsettled pushed messages the broker lets it hold.
        timeout: seconds an iteration waits for a push before it ends; None: forever.
        batches: pushed payloads not yet taken by the consumer.
        error: why the consumer ended (END, a broken connection), or None.
        closed: cancelled (or its client closed).
        cursor: a weak reference to the blocking consumer's native cursor, or None: its
            client's ``close()`` drops the frame it is reading.
    """

    __slots__ = ("acks", "batches", "closed", "consumer_id", "cursor", "error", "prefetch",
                 "queue", "timeout", "unsent", "unsent_receipts", "unsent_since")

    def __init__(self, consumer_id: int, queue: str, prefetch: int,
                 timeout: float | None) -> None:
        self.consumer_id = consumer_id
        self.queue = queue
        self.prefetch = prefetch
        self.timeout = timeout
        self.batches: deque[list[bytes]] = deque()
        self.error: FastFanoutError | None = None
        self.closed = False
        self.cursor: Callable[[], Any] | None = None
        # pipelined acks not sent yet: a receipts frame each, sent together within linger
        self.unsent: list[bytes] = []
        self.unsent_receipts = 0
        self.unsent_since = 0.0
        # pipelined acks of single messages (``message.ack()``), packed natively by its
        # consumer (``fastfanout._ext.received.AckBuffer``): sent with the others
        self.acks: AckBuffer | None = None


class ConnectionCore:
    """The protocol state of one client connection (see the module's essay).

    Args:
        endpoint: the broker's endpoint (for error messages).
        linger: seconds a pipelined publish batch or a queued ack may wait.
        batch_messages: records per publish batch before it is sent.
        batch_bytes: body bytes per publish batch before it is sent.
        bind: ties the futures of a sent batch (a ``PendingBatch``) to its request (the
            driver's futures).
        pid: the process that owns the connection: a forked child must not use it.
        max_in_flight: publish batches sent and not answered past which the driver makes
            the caller that sent one wait for the oldest answer (``batch_to_wait``);
            0: no limit.

    Attributes:
        outbox: requests queued to send (header first), in order; the driver sends and
            clears it.
        info: the broker's HELLO reply (empty until the handshake).
        pending: requests in flight by id.
        consumers: consumers by id.
        batches: publish batches being filled, by (opcode, target name).
        batches_in_flight: the requests of the publish batches sent (with
            ``max_in_flight``), oldest first; answered ones are dropped as more leave.
        ended: why the session ended (GOODBYE or a broken connection), until the driver
            reconnects (``start``); None while it lives.
        replies_dropped: replies to this client's requests that came when no request
            waited for them (its timeout had passed, or another reply had come first).
        on_request: a test and tracing hook: called with ``(opcode, payload)`` of every
            request queued.
    """

    def __init__(self, endpoint: str, *, linger: float, batch_messages: int,
                 batch_bytes: int, bind: Callable[[PendingBatch, Request], None],
                 pid: int = 0, max_in_flight: int = 0) -> None:
        self.endpoint = endpoint
        self.linger = linger
        self.batch_messages = batch_messages
        self.batch_bytes = batch_bytes
        self.bind = bind
        self.outbox: list[list[bytes]] = []
        self.info: dict[str, Any] = {}
        self.limits: tuple[int, int] | None = None
        self.max_body = protocol.max_body(None)   # bytes: a larger body is never sent
        self.frame_room = protocol.frame_room(None)   # bytes a publish batch may hold
        self.next_id = 1
        # the reply inbox of this client's requests (random; kept over reconnects, as
        # request numbers keep growing: a reply to a request of an ended session finds
        # no one waiting)
        self.inbox = new_inbox()
        self.pending: dict[int, Request] = {}
        # request() numbers whose reply (Status.REPLY) is waited for: not requests the
        # broker answers, so kept out of ``pending`` (close and flush do not wait on them)
        self.awaiting_replies: dict[int, Request] = {}
        self.replies_dropped = 0   # replies that came when nobody waited (late, second)
        self.consumers: dict[int, ConsumerState] = {}
        self.batches: dict[tuple[int, str], PendingBatch] = {}
        # the frame builder of the last batch sent, empty, its memory kept for the next:
        # a new one per batch grew from 16 KiB by doubling, copying what it held each
        # time (a copy of every batch more in a publish_nowait loop)
        self._spare_builder: FrameBuilder | None = None
        self.max_in_flight = max_in_flight
        self.batches_in_flight: deque[Request] = deque()
        self.oldest_batch = 0.0
        self.publishes: set[Request] = set()   # PUBLISH/SEND requests not answered yet
        self.loose_acks: list[bytes] = []      # acks of messages of no consumer (asyncio)
        # the asyncio driver's buffer of single messages' acks (``settle_all`` empties it)
        self.message_acks: AckBuffer | None = None
        self.last_heard = 0.0
        self.last_sent_heartbeat = 0.0
        # BYE is queued: nothing more for this session (a heartbeat after it reached an
        # ended session: counted in the broker's ``ended_session_requests``)
        self.said_bye = False
        self.ended: FastFanoutError | None = None
        self.closed = False
        self.pid = pid   # the process that owns the connection (fastfanout.client.forks)
        self.forked = False
        self.on_request: Callable[[int, list[bytes]], None] | None = None
        # consumers cancelled in this session: what the broker pushes to one of them
        # after (crossing its CANCEL) is released, as nobody will read it
        self.cancelled: set[int] = set()
        # CANCEL request id -> its consumer: once the broker answers the CANCEL nothing
        # more is pushed to that consumer (replies and pushes keep their order), so its
        # id leaves ``cancelled`` (else the set grows by one per consumer, session-long)
        self.cancelling: dict[int, int] = {}

    # -- session -------------------------------------------------------------------------

    def start(self, now: float) -> Request:
        """A new connection (a new session): queue HELLO; returns its request."""
        self.info = {}
        self.limits = None
        self.max_body = protocol.max_body(None)
        self.frame_room = protocol.frame_room(None)
        self.cancelled.clear()
        self.cancelling.clear()
        self.ended = None
        self.said_bye = False
        self.last_heard = now
        # HELLO tells the broker this client lives: the first heartbeat is due an
        # interval later. (Due at once, it left during a local channel's ATTACH, on the
        # socket, and could reach the broker after the BYE of a short-lived client,
        # which went through the channel's ring.)
        self.last_sent_heartbeat = now
        # the client's reply inbox, named in every session's HELLO: a request() made
        # while a reconnect's handshake runs names it before the HELLO reply is in
        return self.request(Opcode.HELLO, [protocol.encode_payload(
            {"heartbeat": True, "inbox": self.inbox})], flush=False)

    def hello(self, frames: list[bytes]) -> None:
        """The HELLO reply: the broker's settings and request limits."""
        self.info = protocol.decode_payload(frames[0])
        if isinstance(self.info, dict) and type(self.info.get("inbox")) is str:
            self.inbox = self.info["inbox"]   # the broker's choice, if it refused ours
        self.limits = protocol.request_limits(self.info)
        self.max_body = protocol.max_body(self.limits)
        self.frame_room = protocol.frame_room(self.limits)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats (the broker's, 0.25 before the handshake)."""
        return float(self.info.get("heartbeat_interval", 0.25))

    @property
    def hold_timeout(self) -> float:
        """Extra seconds a publish may wait for its answer (the broker's ``hold_timeout``).

        A full ``hold`` queue answers only when there is room, or after that long.
        """
        return float(self.info.get("hold_timeout", 0.0))

    def check_open(self) -> None:
        """Raise ``UsedAfterFork`` in a forked child, ``Closed`` after ``close()``."""
        if self.forked:
            raise forks.used_after_fork("client", self.pid)
        if self.closed:
            raise Closed("the client is closed")

    def left_to_parent(self, pid: int) -> bool:
        """True, and closed, in a forked child (``pid`` is not the owner's).

        Nothing of the connection is then sent, flushed or closed: it is the parent's.
        """
        if self.forked or pid != self.pid:
            self.forked = self.closed = True
            return True
        return False

    # -- requests ------------------------------------------------------------------------

    def request(self, opcode: int, payload: list[bytes], *, flush: bool = True) -> Request:
        """Queue a request; the publish batches being filled leave before it (``flush``).

        Raises:
            RequestTooLarge: it exceeds the broker's ``max_request_bytes`` or
                ``max_frame_bytes`` (told in its HELLO reply); it was not queued.
        """
        request_id = self.queue_frames(opcode, payload, flush)
        request = self.pending[request_id] = Request(
            request_id, opcode == Opcode.PUBLISH or opcode == Opcode.SEND)
        if request.publish:
            self.publishes.add(request)
        return request

    def queue_frames(self, opcode: int, payload: list[bytes], flush: bool) -> int:
        """Queue a request with no ``Request`` to wait on (its reply is dropped).

        A direct settle call (ACK, NACK, EXTEND, TERM) queues the pipelined acks first
        (``settle_all``).
        """
        if flush and self.batches:
            self.flush_batches()
        if opcode in _DIRECT_SETTLES:
            self.settle_all()
        request_id = self.next_id
        frames = [protocol.encode_header(opcode, request_id), *payload]
        if self.limits is not None:
            too_large = protocol.request_size_error(frames, *self.limits)
            if too_large is not None:
                raise too_large
        self.next_id = request_id + 1
        if opcode == Opcode.BYE:
            self.said_bye = True
        if opcode == Opcode.CANCEL and self.cancelled:
            args = protocol.decode_payload(payload[0])[0] if payload else None
            if args and args[0] in self.cancelled:
                self.cancelling[request_id] = args[0]
        self.outbox.append(frames)
        if self.on_request is not None:
            self.on_request(opcode, payload)
        return request_id

    def reply_waiter(self) -> tuple[Request, str]:
        """A number for a ``request()`` to wait on, and the reply address naming it.

        The address is in this session's inbox: a reply arrives as ``Status.REPLY`` with
        the number as its request id.
        """
        number = self.next_id
        self.next_id = number + 1
        waiter = self.awaiting_replies[number] = Request(number)
        return waiter, reply_address(self.inbox, number)

    def forget_reply(self, waiter: Request) -> None:
        """Stop waiting for the reply of ``waiter`` (a later one is dropped)."""
        self.awaiting_replies.pop(waiter.request_id, None)

    def call(self, opcode: int, *args: Any, **kwargs: Any) -> Request:
        """Queue a control call (msgpack ``[args, kwargs]``); ``decode_value`` its answer."""
        return self.request(opcode, [encode_call(opcode, args, kwargs)])

    def publish_frame(self, opcode: int, name: str, frame: bytes, *,
                      flush: bool = True) -> Request:
        """Queue a PUBLISH/SEND of one record frame."""
        kind = "topic" if opcode == Opcode.PUBLISH else "queue"
        if type(name) is not str:
            raise name_type_error(kind, name)
        return self.request(opcode, [encoded_name(kind, name), frame], flush=flush)

    def publish_entries(self, opcode: int, name: str, entries: Iterable[Any]) -> Request:
        """Queue a whole batch (bodies or ``PublishEntry``), encoded natively in one frame.

        An entry whose body is over ``max_body`` raises (``body_too_large``) before it is
        copied; nothing is queued.

        An array batch's frame is a ``RowsFrame``: the transport writes it in place (a
        local channel's ring) or reads its buffer when it sends it.
        """
        if type(name) is not str:
            raise name_type_error("topic" if opcode == Opcode.PUBLISH else "queue", name)
        check_iterable("entries", entries)   # as the embedded broker does, not a TypeError
        # an entry over the limits is refused before it is copied (body_too_large)
        frame: Any = publish_frame_of(entries, self.max_body, self.body_too_large)
        return self.publish_frame(opcode, name, frame)

    def receive_request(self, queue: str, max_messages: int, wait: float,
                        visibility_timeout: float | None) -> Request:
        """Queue a RECEIVE (its answer may take ``receive_allowance(wait)`` more)."""
        return self.request(Opcode.RECEIVE, [encode_call(Opcode.RECEIVE, [], {
            "queue": queue, "max_messages": max_messages, "wait": wait,
            "visibility_timeout": visibility_timeout})])

    @staticmethod
    def receive_allowance(wait: Any) -> float:
        """Extra seconds a RECEIVE's answer may take: its long-poll ``wait``."""
        wait = plain_seconds(wait)   # numpy.float64: its plain value
        return float(wait) if type(wait) in (int, float) and finite(wait) else 0.0

    def ack_request(self, receipts: Iterable[int]) -> Request:
        """Queue an ACK of receipts (all, or none if one is stale)."""
        return self.request(Opcode.ACK, [pack_receipts(receipts)])

    def nack_batch_request(self, receipts: Iterable[int], delay: float | None) -> Request:
        """Queue a NACK_BATCH (all, or none if one is stale).

        ``delay`` is checked first, as the embedded broker checks it: a bad one raises
        ``InvalidArgument`` and nothing is sent.
        """
        if delay is not None:
            seconds_to_us("delay", delay, maximum=MAX_DELAY)
        check_iterable("receipts", receipts)
        return self.request(Opcode.NACK_BATCH, [pack_receipts(receipts),
                                                protocol.encode_payload(delay)])

    def extend_batch_request(self, receipts: Iterable[int], seconds: float) -> Request:
        """Queue an EXTEND_BATCH (all, or none if one is stale); ``seconds`` checked first."""
        seconds_to_us("seconds", seconds, maximum=MAX_VISIBILITY_TIMEOUT)
        check_iterable("receipts", receipts)
        return self.request(Opcode.EXTEND_BATCH, [
            pack_receipts(receipts), protocol.encode_payload(seconds)])

    def term_batch_request(self, receipts: Iterable[int]) -> Request:
        """Queue a TERM_BATCH (all, or none if one is stale)."""
        check_iterable("receipts", receipts)
        return self.request(Opcode.TERM_BATCH, [pack_receipts(receipts)])

    # -- publish batches -----------------------------------------------------------------

    def enqueue(self, opcode: int, name: str, body: Any, options: tuple[Any, ...] | None,
                make_future: Callable[[PendingBatch, int], F], now: float) -> F:
        """Add one message to the batch of (opcode, name); returns its future.

        ``options`` are ``FrameBuilder.append``'s (None: the body alone, the fast path);
        ``make_future(batch, index)`` makes the future of the message at ``index`` of
        ``batch``; a full batch is queued at once.
        """
        if type(name) is not str:
            raise name_type_error("topic" if opcode == Opcode.PUBLISH else "queue", name)
        if type(body) is not bytes or len(body) > self.max_body:   # bytes within: no call
            self.check_body_size(body)
        key = (opcode, name)
        batch = self.batches.get(key)
        if batch is None:
            # checked once a batch: a name that cannot be sent fails its caller here, not
            # the flush (a background thread's, or the event loop's: a future never done)
            encoded_name("topic" if opcode == Opcode.PUBLISH else "queue", name)
            if not self.batches:
                self.oldest_batch = now
            batch = self.batches[key] = PendingBatch(self._spare_builder)
            self._spare_builder = None
        builder = batch.builder
        mark = builder.mark()
        index = (builder.append_body(body) if options is None
                 else builder.append(body, *options))
        if index and builder.nbytes > self.frame_room:
            # past the broker's request limit: the batch leaves without it, and the
            # message opens the next one
            builder.rewind(mark)
            self.send_batch(key, self.batches.pop(key))
            return self.enqueue(opcode, name, body, options, make_future, now)
        future = make_future(batch, index)
        if index + 1 >= self.batch_messages or builder.nbytes >= self.batch_bytes:
            self.send_batch(key, self.batches.pop(key))
        return future

    def check_body_size(self, body: Any) -> None:
        """Raise for a body larger than ``max_body``, before anything of it is copied.

        Raises:
            RequestTooLarge: over the broker's ``max_request_bytes`` / ``max_frame_bytes``.
            MessageTooLarge: over the 256 MiB no queue accepts.
        """
        if type(body) is bytes:
            size = len(body)
        else:
            try:
                with memoryview(body) as view:
                    size = view.nbytes
            except (TypeError, ValueError):
                return   # not a body: the frame builder says so
        if size > self.max_body:
            self.body_too_large(size)

    def body_too_large(self, size: int) -> None:
        """Raise the error for a body of ``size`` bytes (over ``max_body``)."""
        raise protocol.body_size_error(size, self.limits)

    def send_batch(self, key: tuple[int, str], batch: PendingBatch) -> None:
        """Queue one batch; ``bind`` ties its futures to the request (or to its refusal).

        The batch is no longer open (``left``: a nowait gate stops appending to it).
        """
        batch.left = True
        if not len(batch.builder):   # its only message was refused by the frame builder
            return
        builder = batch.builder
        frame = builder.take()
        self._spare_builder = builder   # the batch has left: nothing appends to it
        try:
            request = self.request(key[0], [key[1].encode(), frame], flush=False)
        except RequestTooLarge as exc:   # never sent: each future of the batch raises it
            request = failed(exc)
        else:
            if self.max_in_flight:
                self._unanswered_batches().append(request)
        self.bind(batch, request)

    def _unanswered_batches(self) -> deque[Request]:
        """``batches_in_flight`` with the answered ones at its head dropped."""
        flying = self.batches_in_flight
        while flying and flying[0].done:
            flying.popleft()
        return flying

    def batch_to_wait(self) -> Request | None:
        """The request to wait for before a caller that sent a publish batch goes on.

        The oldest unanswered one while more than ``max_in_flight`` are in flight, else
        None: a caller that keeps filling batches (``publish_nowait``) is paced to the
        broker's answers, as a producer is by its ``max_in_flight``.
        """
        flying = self._unanswered_batches()
        if self.max_in_flight and len(flying) > self.max_in_flight:
            return flying[0]
        return None

    def flush_batches(self) -> None:
        """Queue every batch being filled."""
        batches, self.batches = self.batches, {}
        for key, batch in batches.items():
            self.send_batch(key, batch)

    def batch_due(self, now: float) -> bool:
        """True when the oldest batch being filled has waited ``linger``."""
        return bool(self.batches) and now - self.oldest_batch >= self.linger

    # -- consumers and settling ----------------------------------------------------------

    def consume(self, queue: str, prefetch: int, visibility_timeout: float | None,
                timeout: object) -> Request:
        """Queue a CONSUME; the consumer is registered at once (pushes may come first).

        A refusal of the CONSUME drops the consumer (closed: nothing to cancel).
        """
        inactivity = check_inactivity_timeout(timeout)
        request = self.request(Opcode.CONSUME, [encode_call(Opcode.CONSUME, [], {
            "queue": queue, "prefetch": prefetch,
            "visibility_timeout": visibility_timeout})])
        self.consumers[request.request_id] = ConsumerState(
            request.request_id, queue, prefetch, inactivity)
        return request

    def cancel(self, consumer: ConsumerState) -> bool:
        """Close a consumer, its queued acks first; True if a CANCEL should be awaited.

        What was pushed to it and will not be read is released (``release``): the
        frames it holds not yet taken, and what the broker pushes to it until the
        CANCEL reaches it. (The rest of the frame its iteration was in is released by
        the iteration's cursor, ``MessageCursor.release_unread``.) They are visible
        again at once rather than after their visibility timeout; the delivery stays
        counted in their ``receive_count``.
        """
        self.settle(consumer)
        if consumer.closed:
            return False
        consumer.closed = True
        self.consumers.pop(consumer.consumer_id, None)
        # one the broker ended (END, or the session's end: its ``error`` is set) is gone
        # there: a CANCEL would be answered by nobody, or reconnect to a broker that
        # stopped just to say it
        live = consumer.error is None and self.ended is None and not self.closed
        if live:
            self.cancelled.add(consumer.consumer_id)
            batches = consumer.batches
            while batches:
                self.release(receipts_of(batches.popleft()[0]))
        return live

    def release(self, receipts: bytes) -> None:
        """Queue the release of leased messages nobody will read (NACK_BATCH, no delay).

        ``receipts``: packed (8 bytes little-endian each), as ``receipts_of`` gives them.
        The answer is dropped: a receipt gone stale meanwhile (its lease ended) fails the
        request, and the broker counts it. Nothing is queued once the session ended (the
        broker released its leases).
        """
        if receipts and self.ended is None and not self.closed:
            self.queue_frames(Opcode.NACK_BATCH, [receipts, protocol.NO_DELAY], False)

    def defer_settle(self, consumer: ConsumerState, receipts: bytes, now: float) -> None:
        """Queue a pipelined ack of a receipts frame (queued at once when due).

        It goes at once when the queued acks hold half the prefetch (the broker counts
        them as unsettled until they arrive: it must not run out of credit), hold
        ``SETTLE_MAX_RECEIPTS`` receipts or ``protocol.SETTLE_MAX_FRAMES`` frames, or
        linger is 0; otherwise within ``linger`` (``settle_wait``).
        """
        if not consumer.unsent:
            consumer.unsent_since = now
        consumer.unsent.append(receipts)
        consumer.unsent_receipts += len(receipts) >> 3
        if (consumer.unsent_receipts >= max(1, consumer.prefetch // 2)
                or consumer.unsent_receipts >= SETTLE_MAX_RECEIPTS
                or len(consumer.unsent) >= protocol.SETTLE_MAX_FRAMES or self.linger <= 0):
            self.settle(consumer)

    def settle(self, consumer: ConsumerState) -> None:
        """Queue the consumer's queued acks now, in one SETTLE.

        One receipts frame per batch: the broker acks each frame all or none, so a stale
        receipt fails its own batch only, as a SETTLE per batch would. Nothing is queued
        once the session ended: the broker released its leases.
        """
        acks = consumer.acks
        if acks is not None and acks.count:
            self.settle_each(acks.take())
        if not consumer.unsent:
            return
        unsent = consumer.unsent
        consumer.unsent, consumer.unsent_receipts = [], 0
        if self.ended is None:
            self.queue_frames(Opcode.SETTLE, [*unsent, protocol.NO_CREDIT], False)

    def settle_each(self, frames: list[bytes]) -> None:
        """Queue SETTLEs of single messages' acks (``AckBuffer.take``'s frames).

        They end with ``protocol.SETTLE_EACH``: a stale receipt fails alone.
        """
        if self.ended is None:
            self._settle_frames(frames, protocol.SETTLE_EACH)

    def _settle_frames(self, frames: list[bytes], last: bytes) -> None:
        """Queue SETTLEs of ``frames`` (``SETTLE_MAX_FRAMES`` each), ``last`` ending each."""
        for start in range(0, len(frames), protocol.SETTLE_MAX_FRAMES):
            self.queue_frames(Opcode.SETTLE, [*frames[start:start + protocol.SETTLE_MAX_FRAMES],
                                              last], False)

    def settle_wait(self, consumer: ConsumerState, now: float) -> float | None:
        """Seconds until the consumer's queued acks are due (queuing them if they are)."""
        acks = consumer.acks
        if acks is not None and acks.count:
            since = acks.since if not consumer.unsent else min(acks.since,
                                                                consumer.unsent_since)
        elif consumer.unsent:
            since = consumer.unsent_since
        else:
            return None
        left = since + self.linger - now
        if left > 0:
            return left
        self.settle(consumer)
        return None

    def closing(self) -> list[Request]:
        """Queue what must leave before BYE: the batches, the queued acks (consumers closed).

        Returns the publishes to wait for (their answers may come after BYE's).
        """
        self.settle_loose()
        self.flush_batches()
        for consumer in list(self.consumers.values()):
            self.settle(consumer)
            consumer.closed = True
            # what was pushed and not yet taken is released by BYE: an iteration resumed
            # after close() raises Closed rather than yield what nothing can settle
            consumer.batches.clear()
            cursor = consumer.cursor() if consumer.cursor is not None else None
            if cursor is not None:
                cursor.drop()
        self.consumers.clear()
        return list(self.publishes)

    def settle_all(self) -> None:
        """Queue every pipelined ack now, of every consumer and of single messages.

        Called before a direct settle call is queued: ``message.ack()`` (or
        ``batch.ack()``) only queues its receipt, and a ``nack``, ``term``, ``extend`` or
        ``ack`` of the same delivery made after it must reach the broker after it, as in
        the embedded broker (sent first, a nack would make the queued ack stale and the
        message come back).
        """
        acks = self.message_acks
        if acks is not None and acks.count:
            self.settle_each(acks.take())
        if self.loose_acks:
            self.settle_loose()
        for consumer in list(self.consumers.values()):
            self.settle(consumer)

    def settle_loose(self) -> None:
        """Queue the acks of messages of no consumer: SETTLEs of one frame per receipt."""
        acks, self.loose_acks = self.loose_acks, []
        self._settle_frames(acks, protocol.NO_CREDIT)

    # -- heartbeats ----------------------------------------------------------------------

    def heartbeat(self, now: float) -> None:
        """Queue a heartbeat if one is due (its reply is dropped); none after BYE.

        After BYE the broker has ended the session: a heartbeat then would be a request
        of an ended session (until 2026-12-06 the blocking client's close, waiting for
        BYE's answer, sent one when the client had been idle a heartbeat interval).
        """
        if self.said_bye:
            return
        if now - self.last_sent_heartbeat >= self.heartbeat_interval:
            self.last_sent_heartbeat = now
            self.request(Opcode.HEARTBEAT, [], flush=False)

    def listener_heartbeat(self) -> tuple[float, float]:
        """A stream listener's heartbeats, as this connection's own.

        (the broker's interval, the silence rule's limit: 1.5 times its heartbeat timeout)
        """
        return (self.heartbeat_interval,
                1.5 * float(self.info.get("heartbeat_timeout", 2.0)))

    def silence(self, now: float, hint: str = "") -> BrokenConnection | None:
        """The broken connection, if the broker was silent too long; else None.

        Too long: past 1.5 times its heartbeat timeout while requests or consumers wait.
        Before the HELLO reply (``info`` empty) no broker has answered yet: the error
        says so, rather than speak of a silence of a broker that may not be there.
        ``hint``: what the transport knows of why (``local_channel.pinned_hint``), said
        instead of asking whether the broker runs.
        """
        silence = now - self.last_heard
        timeout = float(self.info.get("heartbeat_timeout", 2.0))
        limit = timeout * 1.5
        if silence > limit and (self.pending or self.consumers):
            if not self.info:
                return BrokenConnection(
                    f"no reply to the handshake (HELLO) from {self.endpoint} within "
                    f"{silence:.1f} s; is a broker running there?"
                    f"{stream_endpoint_hint(self.endpoint)}")
            return BrokenConnection(
                f"the broker at {self.endpoint} sent nothing for {silence:.1f} s "
                f"(1.5 times its heartbeat timeout of {timeout:.1f} s); "
                + (hint or "is it running?"))
        return None

    # -- what arrives --------------------------------------------------------------------

    def receive(self, frames: list[bytes], now: float) -> ConsumerState | None:
        """Feed one message from the broker in; returns the consumer it was for, if any.

        A GOODBYE ends the session: every waiter fails and ``ended`` says why.
        """
        self.last_heard = now
        try:
            _, status, request_id = protocol.decode_header(frames[0])
        except MalformedFrame:
            return None
        if status == Status.OK or status == Status.ERROR:
            if len(frames) > 1 and type(frames[-1]) is not bytes:
                # a large answer read in place from a local channel's ring: copied here,
                # so only pushes (delivery batches) keep ring room (see local_channel.py)
                frames = [bytes(part) for part in frames]
            if self.cancelling and request_id in self.cancelling:
                self.cancelled.discard(self.cancelling.pop(request_id))
            request = self.pending.pop(request_id, None)
            if request is not None:
                if request.publish:
                    self.publishes.discard(request)
                if status == Status.OK:
                    request.answer(frames[1:])
                else:
                    request.fail(protocol.decode_error(frames[1] if len(frames) > 1 else b""))
                    consumer = self.consumers.pop(request_id, None)
                    if consumer is not None:   # a refused CONSUME: its consumer never was
                        consumer.closed = True
        elif status == Status.PUSH:
            consumer = self.consumers.get(request_id)
            if consumer is not None:
                consumer.batches.append(frames[1:])
                return consumer
            if request_id in self.cancelled and len(frames) > 1:   # crossed its CANCEL
                self.release(receipts_of(frames[1]))
        elif status == Status.END:
            consumer = self.consumers.pop(request_id, None)
            if consumer is not None:
                consumer.error = protocol.decode_error(frames[1] if len(frames) > 1 else b"")
                if isinstance(consumer.error, SessionExpired):
                    # the broker ended the whole session, not only this consumer (its
                    # GOODBYE may come later, or not at all over a closed local
                    # channel): every waiter fails now and the next call connects anew
                    self.broken(consumer.error)
                return consumer
        elif status == Status.REPLY:
            if len(frames) > 1:
                waiter = self.awaiting_replies.pop(request_id, None)
                if waiter is None:   # too late (its request gave up), or a second reply
                    self.replies_dropped += 1
                else:
                    waiter.answer([bytes(frames[1])])
        elif status == Status.GOODBYE:
            # no payload: the broker stops; an error: it ended this session (say, this
            # client read nothing for too long). A new connection is a new session.
            self.broken(protocol.decode_error(frames[1]) if len(frames) > 1
                        else ServerStopping(f"the broker at {self.endpoint} is stopping; "
                                            f"the next call reconnects"))
        return None

    def broken(self, error: FastFanoutError) -> list[ConsumerState]:
        """The session ended: fail every request, consumer and batch; returns the consumers."""
        self.ended = error
        self.outbox.clear()
        pending, self.pending = self.pending, {}
        # requests waiting for replies fail too, as every call of the session does (a
        # reply that comes later, to the next session, finds no one waiting)
        pending.update(self.awaiting_replies)
        self.awaiting_replies = {}
        self.publishes.clear()
        for request in pending.values():
            request.fail(error)
        consumers = list(self.consumers.values())
        self.consumers.clear()
        for consumer in consumers:
            consumer.error = error
            consumer.unsent, consumer.unsent_receipts = [], 0
            if consumer.acks is not None:
                consumer.acks.clear()
        self.loose_acks.clear()
        self.batches_in_flight.clear()
        batches, self.batches = self.batches, {}
        for batch in batches.values():
            batch.left = True
            self.bind(batch, failed(error))
        return consumers
