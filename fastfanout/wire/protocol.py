"""The wire protocol of server mode: headers, opcodes, statuses, error codes, payloads.

Design
------
Prior art: the ZeroMQ Guide's "Majordomo" and "Clone" patterns (a DEALER/ROUTER request
envelope with a small binary header), Kafka's request header (api key, version,
correlation id) and NATS' "many requests in flight, matched by id". ``docs/protocol.md``
is the normative text; this module is its executable half and holds no socket code.

Invariants:

- Every message from a client is ``[header, *payload]``; every message from the broker is
  ``[header, *payload]`` (ROUTER adds and strips the routing id). A header is 12 bytes:
  ``b"FF"``, the protocol version (u8), the opcode (requests) or the status (replies and
  pushes) (u8), and a request id (u64, little endian) that the reply echoes.
- Control payloads are one msgpack frame; hot payloads (publish, deliveries, acks) are
  binary: a record batch in the native codec layout (``FFB1``), or packed u64 arrays.
- A failure is a reply with status ``ERROR`` and one msgpack frame
  ``[code, message, receipts]``: ``code`` is the stable string of an error class, so the
  client re-raises the very class the embedded broker raises.
- Nothing here depends on ZeroMQ: the same bytes could travel over any framed transport.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable
from enum import IntEnum
from typing import Any, Final

import msgspec

from fastfanout.errors import (
    FastFanoutError,
    InvalidArgument,
    MalformedFrame,
    MessageTooLarge,
    QueueFull,
    RequestTooLarge,
    StaleReceipt,
    error_for_code,
)
from fastfanout.settings import MAX_MESSAGE_SIZE_LIMIT

__all__ = [
    "BODY_LIMIT",
    "HEADER",
    "MAGIC",
    "MAX_REQUEST_FRAMES",
    "NO_CREDIT",
    "NO_DELAY",
    "PROTOCOL_VERSION",
    "REQUEST_HEADROOM",
    "SETTLE_EACH",
    "SETTLE_MAX_FRAMES",
    "Opcode",
    "Status",
    "body_size_error",
    "decode_error",
    "decode_header",
    "decode_payload",
    "decode_receipts",
    "decode_results",
    "encode_error",
    "encode_header",
    "encode_payload",
    "encode_receipt",
    "encode_receipts",
    "encode_results",
    "frame_room",
    "max_body",
    "request_limits",
    "request_size_error",
    "result_at",
    "results_count",
]

MAGIC: Final = b"FF"
"""First two bytes of every header."""
PROTOCOL_VERSION: Final = 1
"""The version this implementation speaks; a header with another is refused."""
HEADER: Final = struct.Struct("<2sBBQ")
"""magic (2 bytes), version (u8), opcode or status (u8), request id (u64): 12 bytes."""

DEFAULT_MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024
"""Largest request a broker answers by default (bytes, all frames together)."""
MAX_REQUEST_FRAMES: Final = 4096
"""Most payload frames a request may carry (a SETTLE carries one per batch or message it
acks; the Python clients send at most ``SETTLE_MAX_FRAMES``): the broker handles each in
Python, so more would stall its loop. More are refused with ``request_too_large``."""
SETTLE_MAX_FRAMES: Final = 1024
"""Most receipts frames the Python clients put in one SETTLE (then they send it)."""
NO_CREDIT: Final = b"\x92\x00\x00"
"""SETTLE's last frame as the Python clients send it: msgpack ``[0, 0]``. The broker counts
each consumer's credit itself and ignores that frame (older clients put credit there)."""
NO_DELAY: Final = b"\xc0"
"""NACK_BATCH's delay frame for none: msgpack nil (visible again at once)."""
SETTLE_EACH: Final = b"\x93\x00\x00\x01"
"""SETTLE's last frame when its receipts frames are acks of single messages, msgpack
``[0, 0, 1]``: each frame is acked whole when it can be; a frame refused for a stale
receipt then has its other receipts acked one by one (a stale receipt fails alone)."""
DEFAULT_MAX_FRAME_BYTES: Final = 256 * 1024 * 1024
"""Default ``ZMQ_MAXMSGSIZE``: a bigger frame makes libzmq drop the connection."""
MAX_FRAME_BYTES_LIMIT: Final = (1 << 63) - 1
"""Largest ``max_frame_bytes`` and ``max_request_bytes`` a broker takes: libzmq's
``ZMQ_MAXMSGSIZE`` is a signed 64-bit number (a larger one failed at bind with an
``OverflowError`` until 2026-12-07)."""
MIN_FRAME_BYTES: Final = 64 * 1024
"""Smallest ``max_frame_bytes`` a broker takes: any control request fits (below it a
client's HELLO or a SETTLE could be cut off, and it would look like a dead broker)."""


class Opcode(IntEnum):
    """Request opcodes (client -> broker). See docs/protocol.md for each payload."""

    HELLO = 0x01
    HEARTBEAT = 0x02
    BYE = 0x03
    ATTACH = 0x04
    REPORT = 0x05
    CREATE_TOPIC = 0x10
    DELETE_TOPIC = 0x11
    LIST_TOPICS = 0x12
    CREATE_QUEUE = 0x13
    DELETE_QUEUE = 0x14
    LIST_QUEUES = 0x15
    QUEUE_SETTINGS = 0x16
    SUBSCRIBE = 0x17
    UNSUBSCRIBE = 0x18
    LIST_SUBSCRIPTIONS = 0x19
    SET_FILTER_POLICY = 0x1A
    SUBSCRIPTION = 0x1B
    SET_QUEUE_SETTINGS = 0x1C
    TOPIC_SETTINGS = 0x1D
    PUBLISH = 0x20
    SEND = 0x21
    REPLY = 0x22
    RECEIVE = 0x30
    ACK = 0x31
    NACK = 0x32
    EXTEND = 0x33
    TERM = 0x34
    NACK_BATCH = 0x35
    EXTEND_BATCH = 0x36
    TERM_BATCH = 0x37
    CONSUME = 0x40
    CREDIT = 0x41
    CANCEL = 0x42
    SETTLE = 0x43
    REDRIVE = 0x50
    PURGE = 0x51
    STATS = 0x52
    CHECK = 0x53
    SERVER_STATS = 0x54
    WORKERS = 0x55


class Status(IntEnum):
    """The status byte of a broker -> client message."""

    OK = 0
    """The request succeeded; the payload is its result."""
    ERROR = 1
    """The request failed; the payload is ``[code, message, receipts]``."""
    PUSH = 2
    """A delivery batch for the consumer whose CONSUME request had this request id."""
    END = 3
    """The consumer with this request id ended; the payload is an error triple."""
    PING = 4
    """A liveness probe from the broker; clients ignore it."""
    GOODBYE = 5
    """The broker is done with this session: every request still unanswered will not be
    answered. No payload: the broker is stopping. One error frame (``session_expired``):
    the broker ended this session; it serves no more requests of this connection."""
    REPLY = 6
    """A reply to this session's request (``request()``) whose reply address held this
    number; the payload is the reply frame (one publish record)."""


def request_limits(hello: Any) -> tuple[int, int] | None:
    """``(max_request_bytes, max_frame_bytes)`` from a HELLO reply, or None if absent."""
    if not isinstance(hello, dict):
        return None
    request, frame = hello.get("max_request_bytes"), hello.get("max_frame_bytes")
    if type(request) is not int or type(frame) is not int:
        return None
    return request, frame


BODY_LIMIT: Final = MAX_MESSAGE_SIZE_LIMIT
"""Largest body any queue accepts, in bytes (the largest ``max_message_size``)."""


def max_body(limits: tuple[int, int] | None) -> int:
    """The largest body a broker with request ``limits`` can ever accept, in bytes.

    A larger body can never be published, whatever the queue: ``body_size_error`` says
    why before any copy of it is made.
    """
    if limits is None:
        return BODY_LIMIT
    return min(BODY_LIMIT, *limits)


REQUEST_HEADROOM: Final = 4096
"""Bytes of a publish request kept for its other frames (header, topic or queue name)."""


def frame_room(limits: tuple[int, int] | None) -> int:
    """The most bytes a publish frame may hold under a broker's request ``limits``.

    The clients send a batch or a producer's frame before a message would take it past
    this (the request would be refused whole), so a frame is only ever refused for a
    body no request can carry.
    """
    if limits is None:
        return sys.maxsize
    request, frame = limits
    return max(1, min(request - REQUEST_HEADROOM, frame))


def body_size_error(size: int, limits: tuple[int, int] | None
                    ) -> MessageTooLarge | RequestTooLarge:
    """The error for a body of ``size`` bytes over ``max_body(limits)``.

    ``RequestTooLarge`` past the broker's ``max_request_bytes`` or ``max_frame_bytes``
    (from its HELLO), else ``MessageTooLarge`` (past the 256 MiB no queue accepts).
    """
    if limits is None or size <= min(limits):
        return MessageTooLarge(
            f"a body of {size} bytes exceeds {BODY_LIMIT} bytes, the largest "
            f"max_message_size a queue may have; nothing was sent")
    request, frame = limits
    if size > request:
        return RequestTooLarge(
            f"a body of {size} bytes exceeds the broker's max_request_bytes={request}; "
            f"send smaller bodies or raise the broker's (serve --max-request-bytes); "
            f"nothing was sent")
    return RequestTooLarge(
        f"a body of {size} bytes exceeds the broker's max_frame_bytes={frame}; send "
        f"smaller bodies or raise the broker's max_frame_bytes; nothing was sent")


def request_size_error(frames: list[bytes], max_request_bytes: int,
                       max_frame_bytes: int) -> RequestTooLarge | None:
    """Why a request ``[header, *payload]`` is too large for the broker, or None.

    A client checks before sending: a frame above ``max_frame_bytes`` would make libzmq
    drop the connection (seen as the broker going away), and a request above
    ``max_request_bytes`` (all its frames, header included) would be refused anyway.

    Args:
        frames: the request's frames, header first.
        max_request_bytes: the broker's limit (bytes, from its HELLO reply).
        max_frame_bytes: the broker's per-frame limit (bytes, from its HELLO reply).
    """
    size = sum(map(len, frames))
    if size <= max_request_bytes and size <= max_frame_bytes:
        return None   # the usual case: no frame can be larger than the whole
    if size > max_request_bytes:
        return RequestTooLarge(
            f"request of {size} bytes exceeds the broker's max_request_bytes="
            f"{max_request_bytes}; send less per request (smaller batches or bodies) or "
            f"raise the broker's (serve --max-request-bytes); nothing was sent")
    largest = max(map(len, frames))
    if largest > max_frame_bytes:
        return RequestTooLarge(
            f"a frame of {largest} bytes exceeds the broker's max_frame_bytes="
            f"{max_frame_bytes}; send less per request or raise the broker's "
            f"max_frame_bytes; nothing was sent")
    return None


# -- headers ---------------------------------------------------------------------------


def encode_header(kind: int, request_id: int, version: int = PROTOCOL_VERSION) -> bytes:
    """Pack a header: ``kind`` is an ``Opcode`` (requests) or a ``Status`` (replies)."""
    return HEADER.pack(MAGIC, version, kind, request_id)


def decode_header(frame: bytes) -> tuple[int, int, int]:
    """Unpack a header into ``(version, kind, request_id)``.

    Raises:
        MalformedFrame: the frame is not 12 bytes or lacks the ``FF`` magic.
    """
    if len(frame) != HEADER.size:
        raise MalformedFrame(f"header is {len(frame)} bytes; expected {HEADER.size}")
    magic, version, kind, request_id = HEADER.unpack(frame)
    if magic != MAGIC:
        raise MalformedFrame(f"header magic is {magic!r}; expected {MAGIC!r}")
    return version, kind, request_id


# -- payloads --------------------------------------------------------------------------

def _plain_number(value: Any) -> float | int:
    """The encoder's hook for a type msgspec does not encode.

    A float or int subclass (``numpy.float64``, a user's own; seconds of a call) goes as
    its plain number, as the embedded broker takes it; anything else stays unsupported.
    """
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"Encoding objects of type {type(value).__name__} is unsupported")


_encoder = msgspec.msgpack.Encoder(enc_hook=_plain_number)
_decoder = msgspec.msgpack.Decoder()


def encode_payload(value: Any) -> bytes:
    """Encode a control payload (msgpack)."""
    return _encoder.encode(value)


def decode_payload(frame: bytes | memoryview) -> Any:
    """Decode a control payload.

    Raises:
        MalformedFrame: the frame is not valid msgpack, or nests too deeply to decode.
    """
    try:
        return _decoder.decode(frame)
    except msgspec.DecodeError as exc:
        raise MalformedFrame(f"payload is not valid msgpack: {exc}") from None
    except RecursionError:
        # msgspec recurses per level: no call's arguments nest this deep
        raise MalformedFrame("payload nests its arrays or maps too deeply to decode") from None


def encode_error(error: BaseException) -> bytes:
    """Encode an error reply payload: ``[code, message, receipts or None]``.

    A ``queue_full`` error has a fourth element, ``{"hold": bool}``.
    """
    code = getattr(error, "code", "internal")
    receipts = getattr(error, "receipts", None)
    parts: list[Any] = [code, str(error), list(receipts) if receipts else None]
    if isinstance(error, QueueFull):
        parts.append({"hold": bool(error.hold)})
    return _encoder.encode(parts)


def decode_error(frame: bytes) -> FastFanoutError:
    """Turn an error payload back into the typed exception it names."""
    try:
        parts = _decoder.decode(frame)
        if not isinstance(parts, list) or len(parts) not in (3, 4) or (
                len(parts) == 4 and not isinstance(parts[3], dict)):
            raise ValueError("not [code, message, receipts] or [..., details]")
        code, message, receipts = parts[:3]
        details: dict[str, Any] = parts[3] if len(parts) == 4 else {}
    except (msgspec.DecodeError, ValueError, TypeError):
        return MalformedFrame(f"undecodable error payload {bytes(frame[:64])!r}")
    cls = error_for_code(str(code))
    if issubclass(cls, StaleReceipt):
        return cls(str(message), list(receipts or []))
    error = cls(str(message))
    if isinstance(error, QueueFull):
        error.hold = details.get("hold") is True
    return error


_U64 = struct.Struct("<Q")


def encode_receipts(receipts: list[int]) -> bytes:
    """Pack receipts as little-endian u64s."""
    try:
        return struct.pack(f"<{len(receipts)}Q", *receipts)
    except struct.error:
        raise InvalidArgument(
            f"receipts must be ints in [0, 2**64), got {receipts[:5]!r}...") from None


def encode_receipt(receipt: int) -> bytes:
    """Pack one receipt (a receipts frame of one), for a receipt a message carries."""
    return _U64.pack(receipt)


def decode_receipts(frame: bytes) -> list[int]:
    """Unpack a receipts frame.

    Raises:
        MalformedFrame: its length is not a multiple of 8.
    """
    if len(frame) % 8:
        raise MalformedFrame(f"receipts frame of {len(frame)} bytes is not a multiple of 8")
    return list(struct.unpack(f"<{len(frame) // 8}Q", frame))


def encode_results(message_ids: list[int], deliveries: list[int], duplicates: list[bool]
                   ) -> bytes:
    """Pack publish results column-wise: n u64 ids, n u32 deliveries, n u8 flags."""
    count = len(message_ids)
    return (struct.pack(f"<I{count}Q{count}I", count, *message_ids, *deliveries)
            + bytes(duplicates))


def results_count(frame: bytes) -> int:
    """The number of entries of a results frame, its length checked.

    Raises:
        MalformedFrame: the lengths do not add up.
    """
    if len(frame) < 4:
        raise MalformedFrame("results frame shorter than its count")
    (count,) = struct.unpack_from("<I", frame)
    if len(frame) != 4 + count * 13:
        raise MalformedFrame(f"results frame of {len(frame)} bytes for {count} entries")
    return int(count)


def result_at(frame: bytes, count: int, index: int) -> tuple[int, int, bool]:
    """One entry of a results frame: ``(message_id, deliveries, duplicate)``.

    Args:
        frame: the results frame.
        count: its number of entries (as ``results_count`` read it).
        index: the entry, 0 to ``count`` - 1.
    """
    (message_id,) = struct.unpack_from("<Q", frame, 4 + 8 * index)
    (deliveries,) = struct.unpack_from("<I", frame, 4 + 8 * count + 4 * index)
    return message_id, deliveries, frame[4 + 12 * count + index] != 0


def decode_results(frame: bytes) -> tuple[list[int], list[int], list[bool]]:
    """Unpack a results frame into ``(message_ids, deliveries, duplicate flags)``.

    Raises:
        MalformedFrame: the lengths do not add up.
    """
    count = results_count(frame)
    values = struct.unpack_from(f"<{count}Q{count}I", frame, 4)
    flags = frame[4 + count * 12:]
    return list(values[:count]), list(values[count:]), [bool(flag) for flag in flags]


# -- record batches (the native codec layout, docs/protocol.md "Record batch") ----------

_codec: Any
try:
    from fastfanout._ext import codec as _codec
except ImportError:  # pragma: no cover - a core built without the codec
    _codec = None


def codec_module() -> Any:
    """The native codec module (``fastfanout._ext.codec``).

    Raises:
        ImportError: the native core was built without it.
    """
    if _codec is None:
        raise ImportError("fastfanout._ext.codec is not built; run setup.py build_ext")
    return _codec


# -- control payloads: the generic [args, kwargs] call and its typed results ------------

CALLS: Final[dict[int, str]] = {
    Opcode.CREATE_TOPIC: "create_topic",
    Opcode.DELETE_TOPIC: "delete_topic",
    Opcode.LIST_TOPICS: "list_topics",
    Opcode.CREATE_QUEUE: "create_queue",
    Opcode.DELETE_QUEUE: "delete_queue",
    Opcode.LIST_QUEUES: "list_queues",
    Opcode.QUEUE_SETTINGS: "queue_settings",
    Opcode.SET_QUEUE_SETTINGS: "set_queue_settings",
    Opcode.TOPIC_SETTINGS: "topic_settings",
    Opcode.SUBSCRIBE: "subscribe",
    Opcode.UNSUBSCRIBE: "unsubscribe",
    Opcode.LIST_SUBSCRIPTIONS: "list_subscriptions",
    Opcode.SET_FILTER_POLICY: "set_filter_policy",
    Opcode.SUBSCRIPTION: "subscription",
    Opcode.NACK: "nack",
    Opcode.EXTEND: "extend",
    Opcode.TERM: "term",
    Opcode.REDRIVE: "redrive",
    Opcode.PURGE: "purge",
    Opcode.STATS: "stats",
    Opcode.CHECK: "check",
}
"""Opcodes whose payload is ``[args, kwargs]`` for the ``Broker`` method of this name."""


def backoff_to_wire(backoff: Any) -> Any:
    """``redelivery_backoff`` as msgpack: None, a list of seconds, or a map (exponential)."""
    if backoff is None:
        return None
    if hasattr(backoff, "_asdict"):
        return dict(backoff._asdict())
    if not isinstance(backoff, Iterable):
        return backoff   # a number, say: sent as it is, for the broker to refuse
    return list(backoff)


def backoff_from_wire(value: Any) -> Any:
    """The inverse of ``backoff_to_wire``.

    A map becomes an ``ExponentialBackoff`` and a list a tuple of seconds; any other value
    is returned as it is, for the broker to refuse (the values are checked there).

    Raises:
        InvalidArgument: a map has a key that is not a field of ``ExponentialBackoff``.
    """
    from fastfanout.records import ExponentialBackoff

    if isinstance(value, dict):
        unknown = [key for key in value if key not in ExponentialBackoff._fields]
        if unknown:
            raise InvalidArgument(
                f"redelivery_backoff map has unknown keys {unknown!r:.80}; its keys are "
                f"{', '.join(ExponentialBackoff._fields)} (numbers of seconds and a factor)")
        return ExponentialBackoff(**value)
    if isinstance(value, list):
        return tuple(value)
    return value


def settings_to_wire(settings: Any) -> dict[str, Any]:
    """A ``QueueSettings`` / ``TopicSettings`` / ``Subscription`` as a msgpack map."""
    result: dict[str, Any] = {}
    for name in settings.__dataclass_fields__:
        if name == "compiled":
            continue  # the compiled filter is the broker's private form of filter_policy
        value = getattr(settings, name)
        result[name] = backoff_to_wire(value) if name == "redelivery_backoff" else value
    return result


def call_result_to_wire(value: Any) -> Any:
    """The result of a generic call in msgpack-ready form."""
    if hasattr(value, "__dataclass_fields__") and not hasattr(value, "queues"):
        return settings_to_wire(value)
    return value
