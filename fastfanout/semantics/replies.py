"""Requests and replies: a message that asks for an answer, and the answer's way back.

Design
------
Prior art: NATS request-reply (a request carries a reply subject, an *inbox* only its
requester listens on; the first reply wins; "no responders" when nobody could answer),
and RabbitMQ's RPC pattern (``reply_to`` and ``correlation_id`` properties, direct
reply-to). ``request(topic, body)`` publishes like ``publish`` with one more attribute,
``fastfanout.reply_to`` (``REPLY_TO``), naming an address; a responder receives the
request from its queue as any message (leases, redelivery and dead-lettering as usual)
and answers with ``message.reply(body)`` (or ``reply(address, body)``). The reply does
not go through a queue: the broker hands it straight to the waiting requester, at most
once, like a NATS reply. So it costs no queue, and nothing is left behind when a
requester goes away: a reply for a requester that is gone, or that no longer waits
(its timeout passed, another reply came first), is dropped and counted.

An address is ``<inbox>.<number>``: the inbox (``_INBOX.`` and 16 hex digits, random)
names one client (picked when it is made, named in the HELLO of each of its sessions, so
kept over reconnects: the newest session naming it holds it) or one embedded broker; the
number names the request within it, and numbers never repeat within an inbox. So a
reply that comes after its requester gave up (a timeout, a reconnect, a broker restart:
the request was durable) finds no one waiting and is dropped, never taken for another
call's answer.

A reply is a body and attributes (``Reply``), checked and encoded as a publish's
(``FrameBuilder``: one record), so every body and attribute a publish takes, a reply
takes too, with the same errors.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Final

import msgspec

from fastfanout._ext.batches import encode_attributes
from fastfanout._ext.codec import decode_batch
from fastfanout._ext.wire import FrameBuilder
from fastfanout.errors import InvalidArgument, MalformedFrame, NoReply, NoResponders
from fastfanout.records import REPLY_TO, Attributes, Body, PublishResult, Reply
from fastfanout.settings import finite

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_REQUEST_TIMEOUT",
    "check_request_timeout",
    "decode_reply",
    "encode_reply",
    "is_inbox",
    "new_inbox",
    "no_reply",
    "no_responders",
    "parse_address",
    "reply_address",
    "reply_frames",
    "request_attributes",
]

DEFAULT_REQUEST_TIMEOUT: Final = 5.0
"""Seconds a ``request`` waits for its reply unless told otherwise."""

MAX_REQUEST_TIMEOUT: Final = 3600.0
"""The longest ``timeout`` a ``request`` takes (an hour)."""

_INBOX_PREFIX: Final = "_INBOX."
_INBOX: Final = re.compile(r"_INBOX\.[0-9a-f]{16}")
_ADDRESS: Final = re.compile(rf"({_INBOX.pattern})\.([1-9][0-9]{{0,18}})")


def new_inbox() -> str:
    """A fresh inbox name: ``_INBOX.`` and 64 random bits in hex."""
    return _INBOX_PREFIX + secrets.token_hex(8)


def is_inbox(name: object) -> bool:
    """Whether ``name`` is an inbox name (``_INBOX.`` and 16 hex digits)."""
    return type(name) is str and _INBOX.fullmatch(name) is not None


def reply_address(inbox: str, number: int) -> str:
    """The address of request ``number`` of ``inbox``."""
    return f"{inbox}.{number}"


def parse_address(address: object) -> tuple[str, int]:
    """``(inbox, number)`` of a reply address.

    Raises:
        InvalidArgument: ``address`` is not one (``_INBOX.<16 hex digits>.<number>``).
    """
    if type(address) is not str:
        raise InvalidArgument(
            f"a reply address must be a str, got {type(address).__name__} {address!r:.80}")
    matched = _ADDRESS.fullmatch(address)
    if matched is None or int(matched.group(2)) >= 1 << 63:
        raise InvalidArgument(
            f"{address!r:.120} is not a reply address (_INBOX.<16 hex digits>.<number>, "
            f"what a request's {REPLY_TO} attribute holds)")
    return matched.group(1), int(matched.group(2))


def check_request_timeout(timeout: object) -> float:
    """A request's ``timeout``: seconds, more than 0 and at most ``MAX_REQUEST_TIMEOUT``."""
    if (type(timeout) is not float and type(timeout) is not int) or not (
            finite(timeout) and 0 < timeout <= MAX_REQUEST_TIMEOUT):
        raise InvalidArgument(
            f"timeout={timeout!r} must be a number of seconds, more than 0 and at most "
            f"{MAX_REQUEST_TIMEOUT:g}")
    return float(timeout)


def request_attributes(attributes: Attributes | None, address: str) -> Attributes:
    """A request's attributes: the caller's (a dict or None) with ``REPLY_TO`` added.

    Raises:
        InvalidArgument: the caller set ``REPLY_TO`` itself (the request sets it), or
            ``attributes`` is not a dict (the publish checks the rest).
    """
    if attributes is None:
        return {REPLY_TO: address}
    if not isinstance(attributes, dict):
        raise InvalidArgument(
            f"attributes must be a dict, got {type(attributes).__name__}")
    if REPLY_TO in attributes:
        raise InvalidArgument(f"attribute {REPLY_TO!r} is set by request() itself")
    return {**attributes, REPLY_TO: address}


def encode_reply(body: Body, attributes: Attributes | None) -> bytes:
    """A reply as one publish record in a batch frame (checked as a publish's).

    Raises:
        InvalidArgument: a body or attributes a publish would refuse.
        MessageTooLarge: a body over the largest message a broker takes.
    """
    encode_attributes(attributes)   # as strict as a publish (the frame's encoder is not)
    builder = FrameBuilder()
    builder.append(body, attributes=attributes)
    return builder.take()


def decode_reply(frame: Any) -> Reply:
    """The ``Reply`` in a frame ``encode_reply`` made.

    Raises:
        MalformedFrame: the frame is not one record.
    """
    try:
        records = decode_batch(frame)
    except InvalidArgument as exc:
        raise MalformedFrame(f"a reply frame does not decode: {exc}") from None
    if len(records) != 1:
        raise MalformedFrame(f"a reply frame holds {len(records)} records, not 1")
    record = records[0]
    encoded = record.attributes
    attributes = msgspec.msgpack.decode(encoded) if encoded else {}
    return Reply(record.body, attributes)


def reply_frames(address: str, body: Body, attributes: Attributes | None) -> list[bytes]:
    """A REPLY request's payload: the address and the reply frame (docs/protocol.md).

    Raises:
        InvalidArgument: ``address`` is not a reply address, or a bad body or attributes.
    """
    parse_address(address)
    return [address.encode(), encode_reply(body, attributes)]


def no_responders(topic: str, result: PublishResult) -> NoResponders:
    """The error of a request that reached no queue (``result``: its publish's)."""
    why = (" (a duplicate of an earlier message)" if result.duplicate else
           ": no subscription takes it (none, or their filter policies let it through "
           "nowhere)")
    return NoResponders(f"the request to topic {topic!r} reached no queue{why}")


def no_reply(topic: str, result: PublishResult, timeout: float) -> NoReply:
    """The error of a request whose reply did not come within ``timeout`` seconds."""
    return NoReply(f"no reply to the request on topic {topic!r} (message "
                   f"{result.message_id}, {result.deliveries} queue(s) reached) within "
                   f"{timeout:g} s")
