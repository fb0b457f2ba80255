"""Argument checks of the reference model: every refusal the API owes its callers.

The model checks arguments with its own code (not ``fastfanout.settings``), so that a
wrong limit in the broker's shared helpers shows up as a divergence instead of being
copied into the oracle. Every check raises ``InvalidArgument`` naming the bad value and
the expected form; the ranges apply to the seconds given, before the conversion to
microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import msgspec

from fastfanout.errors import InvalidArgument
from fastfanout.records import Attributes, ExponentialBackoff, PublishEntry
from fastfanout.semantics.filter_policy import MAX_ATTRIBUTE_NAME
from fastfanout.settings import finite

__all__ = [
    "MAX_DEDUP_WINDOW_US",
    "MAX_DELAY_US",
    "MAX_MESSAGE_SIZE_LIMIT",
    "MAX_PRIORITY",
    "MAX_RECEIVE_BATCH",
    "MAX_VISIBILITY_US",
    "MAX_WAIT_US",
    "OVERFLOW_POLICIES",
    "US",
    "Entry",
    "attributes_size",
    "backoff_steps_us",
    "check_attributes",
    "check_flag",
    "check_iterable",
    "check_name",
    "check_receipt",
    "duration_us",
    "is_number",
    "optional_count",
    "parse_entry",
    "to_us",
]

US = 1_000_000
MAX_VISIBILITY_US = 43_200 * US
MAX_DELAY_US = 31_536_000 * US
MAX_WAIT_US = 20 * US
MAX_DEDUP_WINDOW_US = 86_400 * US
MAX_RECEIVE_BATCH = 10_000
MAX_MESSAGE_SIZE_LIMIT = 256 * 1024 * 1024
MAX_ATTRIBUTES = 10
MAX_ID_BYTES = 128
MAX_PRIORITY = 255
MAX_BACKOFF_STEPS = 64
MAX_COUNT = 2**62 - 1   # a queue's max_messages, max_bytes, max_receive_count
OVERFLOW_POLICIES = ("reject", "drop_oldest", "dead_letter", "hold")
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,256}")


def to_us(seconds: float) -> int:
    """Seconds as integer microseconds, rounded as the broker rounds (ties to even)."""
    return round(seconds * 1e6)


def is_number(value: object) -> bool:
    """True for an int or a float, or a subclass of one (``numpy.float64``; never a bool)."""
    return type(value) is int or type(value) is float or (
        isinstance(value, int | float) and type(value) is not bool)


def check_name(kind: str, name: object) -> str:
    """Return a valid topic or queue name, else raise ``InvalidArgument``."""
    if type(name) is not str or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{kind} name {name!r} must be 1 to 256 characters from A-Z a-z 0-9 _ . : -")
    return name


def duration_us(what: str, seconds: object, maximum_us: int, minimum_us: int = 0) -> int:
    """Check a duration in seconds (finite, within the range) and return microseconds."""
    if not is_number(seconds) or not finite(seconds):  # type: ignore[arg-type]
        raise InvalidArgument(f"{what}={seconds!r} must be a finite number of seconds")
    if not minimum_us / US <= seconds <= maximum_us / US:  # type: ignore[operator]
        raise InvalidArgument(
            f"{what}={seconds!r} must be from {minimum_us / US:g} to {maximum_us / US:g} s")
    return to_us(float(seconds))  # type: ignore[arg-type]


def optional_count(what: str, value: object) -> int | None:
    """A bound given as None or an int from 1 to ``MAX_COUNT``."""
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= MAX_COUNT:
        raise InvalidArgument(f"{what}={value!r} must be None or an int from 1 to {MAX_COUNT:,}")
    return value


def check_iterable(what: str, value: object) -> None:
    """An argument that must be iterable (a batch's entries or receipts)."""
    if not isinstance(value, Iterable):
        raise InvalidArgument(f"{what} must be an iterable, got {type(value).__name__}")


def check_flag(what: str, value: object) -> bool:
    """A setting that must be a bool."""
    if type(value) is not bool:
        raise InvalidArgument(f"{what} must be True or False, got {value!r}")
    return value


def check_receipt(receipt: object) -> int:
    """A receipt: an int in ``[0, 2**64)`` (a numpy integer reads as its int; no bool)."""
    index = getattr(type(receipt), "__index__", None)
    if type(receipt) is not int and type(receipt) is not bool and index is not None:
        receipt = index(receipt)
    if type(receipt) is not int or not 0 <= receipt < 2**64:
        raise InvalidArgument(f"receipt {receipt!r} must be an int in [0, 2**64)")
    return receipt


def attributes_size(attributes: Attributes) -> int:
    """The encoded size of attributes in bytes: msgpack length, 0 for none."""
    if not attributes:
        return 0
    return len(msgspec.msgpack.encode(attributes))


def check_attributes(attributes: object) -> Attributes:
    """Attributes as SNS types (str, finite int/float, bytes, list[str]); None is ``{}``."""
    if attributes is None:
        return {}
    if type(attributes) is not dict:
        raise InvalidArgument(f"attributes must be a dict or None, got {attributes!r}")
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"{len(attributes)} attributes; at most {MAX_ATTRIBUTES}")
    checked: Attributes = {}
    for name, value in attributes.items():
        if type(name) is not str or not 1 <= len(name) <= MAX_ATTRIBUTE_NAME:
            raise InvalidArgument(
                f"attribute name {name!r} must be a str of 1 to {MAX_ATTRIBUTE_NAME} chars")
        if type(value) is float and not finite(value):
            raise InvalidArgument(f"attribute {name!r}={value!r}: numbers must be finite")
        if type(value) in (str, int, float, bytes):
            checked[name] = value
        elif type(value) is list and all(type(item) is str for item in value):
            checked[name] = list(value)
        else:
            raise InvalidArgument(
                f"attribute {name!r}={value!r} must be str, int, float, bytes or list[str]")
    try:
        attributes_size(checked)
    except (OverflowError, msgspec.EncodeError) as error:
        raise InvalidArgument(f"attributes cannot be encoded: {error}") from None
    return checked


def backoff_steps_us(backoff: object) -> tuple[int, ...]:
    """A redelivery backoff as microsecond waits after failed delivery 1, 2, ...

    ``None`` is no backoff (``()``); a sequence lists the waits in seconds (1 to 64 of
    them, each 0 to 43,200 s; the last repeats); an ``ExponentialBackoff`` needs
    ``initial > 0``, ``multiplier >= 1`` and ``maximum >= initial``.
    """
    if backoff is None:
        return ()
    if isinstance(backoff, ExponentialBackoff):
        if (not all(is_number(value) and finite(value) for value in backoff)
                or backoff.initial <= 0 or backoff.multiplier < 1
                or backoff.maximum < backoff.initial):
            raise InvalidArgument(
                f"redelivery_backoff={backoff!r} needs initial > 0, multiplier >= 1 and "
                f"maximum >= initial")
        waits: tuple[object, ...] = backoff.steps(MAX_BACKOFF_STEPS)
    elif isinstance(backoff, tuple | list):
        waits = tuple(backoff)
    else:
        raise InvalidArgument(
            f"redelivery_backoff must be None, a sequence of seconds or an "
            f"ExponentialBackoff, got {backoff!r}")
    if not 1 <= len(waits) <= MAX_BACKOFF_STEPS:
        raise InvalidArgument(
            f"redelivery_backoff has {len(waits)} steps; give 1 to {MAX_BACKOFF_STEPS}")
    return tuple(duration_us("redelivery_backoff step", wait, MAX_VISIBILITY_US)
                 for wait in waits)


@dataclass
class Entry:
    """One validated entry of a publish or send.

    Attributes:
        body: the body bytes.
        attributes: the checked attributes.
        size: body + encoded attribute bytes.
        due_us: explicit due time (microseconds), or None for the queue's delay.
        expires_us: end of the time-to-live, or None.
        group_id: the FIFO group, or None.
        dedup_id: the deduplication id, or None.
        priority: 0 to 255.
    """

    body: bytes
    attributes: Attributes
    size: int
    due_us: int | None
    expires_us: int | None
    group_id: str | None
    dedup_id: str | None
    priority: int


def _check_id(what: str, value: object) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise InvalidArgument(f"{what} must be a str, got {value!r}")
    if not 1 <= len(value.encode("utf-8")) <= MAX_ID_BYTES:
        raise InvalidArgument(f"{what} {value!r} must be 1 to {MAX_ID_BYTES} UTF-8 bytes")
    return value


def _deliver_at_us(deliver_at: object, now_us: int) -> int:
    """The due time of a ``deliver_at`` (clock seconds or an aware datetime)."""
    if isinstance(deliver_at, datetime):
        if deliver_at.tzinfo is None or deliver_at.utcoffset() is None:
            raise InvalidArgument(f"deliver_at {deliver_at!r} must be timezone-aware")
        deliver_at = deliver_at.timestamp()
    if not is_number(deliver_at) or not finite(deliver_at):  # type: ignore[arg-type]
        raise InvalidArgument(f"deliver_at={deliver_at!r} must be finite clock seconds")
    due_us = to_us(deliver_at)  # type: ignore[arg-type]
    if due_us - now_us > MAX_DELAY_US:
        raise InvalidArgument(f"deliver_at={deliver_at!r} is more than 365 days ahead")
    return max(due_us, now_us)  # in the past means now


def parse_entry(item: object, now_us: int, *, attributes: object = None,
                delay: object = None, deliver_at: object = None, group_id: object = None,
                dedup_id: object = None, priority: object = None, ttl: object = None
                ) -> Entry:
    """Validate one entry: a bytes-like body (keywords give the rest) or a PublishEntry."""
    if isinstance(item, PublishEntry):
        item, attributes, delay, deliver_at, group_id, dedup_id, priority, ttl = item
    if delay is not None and deliver_at is not None:
        raise InvalidArgument("give delay or deliver_at, not both")
    due_us: int | None = None
    if delay is not None:
        due_us = now_us + duration_us("delay", delay, MAX_DELAY_US)
    elif deliver_at is not None:
        due_us = _deliver_at_us(deliver_at, now_us)
    expires_us: int | None = None
    if ttl is not None:
        expires_us = now_us + duration_us("ttl", ttl, MAX_DELAY_US)
        if expires_us == now_us:
            raise InvalidArgument(f"ttl={ttl!r} must be > 0 seconds")
    checked_group = _check_id("group_id", group_id)
    checked_dedup = _check_id("dedup_id", dedup_id)
    level = 0
    if priority is not None:
        if type(priority) is not int or not 0 <= priority <= MAX_PRIORITY:
            raise InvalidArgument(f"priority={priority!r} must be an int from 0 to 255")
        level = priority
    body = _body_bytes(item)
    checked = check_attributes(attributes)
    return Entry(body, checked, len(body) + attributes_size(checked), due_us, expires_us,
                 checked_group, checked_dedup, level)


def _body_bytes(item: object) -> bytes:
    """A body's bytes: any C-contiguous buffer, whatever its item format."""
    if type(item) is bytes:
        return item
    try:
        view = memoryview(item)   # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"a body must be bytes-like, got {type(item).__name__}") from None
    except (ValueError, BufferError) as exc:   # numpy datetime64: a buffer slot, no buffer
        raise InvalidArgument(
            f"a body must be bytes-like; this {type(item).__name__} exports no buffer "
            f"({exc})") from None
    with view:
        if not view.c_contiguous:
            raise InvalidArgument(
                f"a body must be a C-contiguous buffer; this {type(item).__name__} is not")
        if any("O" in part for part in view.format.split(":")[::2]):   # names between colons
            raise InvalidArgument(
                f"a body must hold plain data; this {type(item).__name__} holds Python objects")
        return view.tobytes()
