"""Settings records and the checks that turn user arguments into native values.

The broker (and the model, the server and the clients) share these: limits with their
names, name and duration checks that raise ``InvalidArgument`` naming the bad value and
the expected form, and the frozen records a topic, queue or subscription was created with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, NamedTuple

from fastfanout.errors import InvalidArgument
from fastfanout.records import ExponentialBackoff
from fastfanout.semantics.filter_policy import CompiledPolicy

__all__ = [
    "CHANGEABLE_QUEUE_SETTINGS",
    "DEFAULT_MAX_QUEUES",
    "DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC",
    "DEFAULT_MAX_TOPICS",
    "MAX_BACKOFF_STEPS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_MESSAGES",
    "MAX_COUNT",
    "MAX_DEDUP_WINDOW",
    "MAX_DELAY",
    "MAX_HIGH_WATER_MARK",
    "MAX_MESSAGE_SIZE_LIMIT",
    "MAX_PRIORITY",
    "MAX_RECEIVE_BATCH",
    "MAX_VISIBILITY_TIMEOUT",
    "MAX_WAIT",
    "OVERFLOW_POLICIES",
    "NativeQueueSettings",
    "QueueSettings",
    "Subscription",
    "TopicSettings",
    "already_exists_problem",
    "backoff_us",
    "changed_queue_settings",
    "check_count",
    "check_flag",
    "check_iterable",
    "check_name",
    "check_producer_topic",
    "check_queue_settings",
    "check_topic_settings",
    "check_wait",
    "finite",
    "optional_count",
    "plain_seconds",
    "seconds_to_us",
]

MAX_VISIBILITY_TIMEOUT: Final = 43_200.0
"""Longest lease, in seconds (12 hours, as SQS)."""
MAX_DELAY: Final = 31_536_000.0
"""Longest delay or retention, in seconds (365 days)."""
MAX_WAIT: Final = 20.0
"""Longest long-poll ``wait`` of one receive, in seconds (as SQS)."""
MAX_RECEIVE_BATCH: Final = 10_000
"""Most messages one receive may return."""
MAX_MESSAGE_SIZE_LIMIT: Final = 256 * 1024 * 1024
"""Largest ``max_message_size`` a queue may set, in bytes."""
MAX_PRIORITY: Final = 255
"""Highest ``max_priority`` a queue may set."""
MAX_DEDUP_WINDOW: Final = 86_400.0
"""Longest deduplication window, in seconds (one day)."""
MAX_BACKOFF_STEPS: Final = 64
"""Most steps a redelivery backoff may list."""
MAX_BATCH_MESSAGES: Final = 1 << 30
"""Most records a client's publish batch may gather (``batch_messages``)."""
MAX_BATCH_BYTES: Final = 1 << 40
"""Most body bytes a client's publish batch may gather (``batch_bytes``)."""
MAX_HIGH_WATER_MARK: Final = 2**31 - 1
"""Largest socket high-water mark, in messages (libzmq takes a C int)."""
MAX_COUNT: Final = 2**62 - 1
"""Largest bound a queue's ``max_messages``, ``max_bytes`` or ``max_receive_count`` (and
``redrive``'s ``max_messages``) may be: the native layer keeps it in a signed 64-bit
integer with room to add to it."""

# Topology limits (``Broker(max_topics=...)``, ``fastfanout serve --max-topics``): far
# above what a deployment reaches by accident, they bound the broker's memory and the
# time of the calls that walk a topology (stats, snapshots, recovery, a pattern's topics).
DEFAULT_MAX_TOPICS: Final = 100_000
"""Default ``max_topics``: most topics a broker holds; one more is ``LimitExceeded``."""
DEFAULT_MAX_QUEUES: Final = 100_000
"""Default ``max_queues``: most queues a broker holds; one more is ``LimitExceeded``."""
DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC: Final = 100_000
"""Default ``max_subscriptions_per_topic``: most subscriptions feeding one topic (its own
and the patterns matching it); a subscribe past it is ``LimitExceeded``."""
DEFAULT_MAX_PATTERN_SUBSCRIPTIONS: Final = 100_000
"""Default ``max_pattern_subscriptions``: most pattern subscriptions a broker holds (one
matching no topic counts toward no topic's limit); a pattern subscribe past it is
``LimitExceeded``."""

_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,256}")
OVERFLOW_POLICIES: Final = ("reject", "drop_oldest", "dead_letter", "hold")


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a valid topic or queue name, else raise InvalidArgument."""
    if type(name) is not str or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{kind} name {name!r} must be 1 to 256 characters from A-Z a-z 0-9 _ . : -")
    return name


def name_type_error(kind: str, name: object) -> InvalidArgument:
    """The error for a topic or queue argument that is no ``str``, as every face words it.

    Args:
        kind: ``"topic"`` or ``"queue"``.
        name: what the caller gave.
    """
    return InvalidArgument(
        f"{kind} must be a {kind} name (str), got {type(name).__name__} {name!r:.80}")


def finite(value: float) -> bool:
    """``math.isfinite(value)``, but False for an int too large for a float.

    ``isfinite(10**400)`` raises ``OverflowError``, which escaped the argument checks.

    Args:
        value: an int or a float (the caller checked its type).
    """
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def encoded_name(kind: str, name: str) -> bytes:
    """``name`` (a ``str``) in UTF-8, as a request carries it.

    InvalidArgument if it is not valid Unicode text (a lone surrogate: the broker's name
    rules would refuse it, but it cannot even be sent).

    Args:
        kind: ``"topic"`` or ``"queue"``.
        name: a topic or queue name (any ``str``).
    """
    try:
        return name.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"{kind} name {name!r} is not valid Unicode text (a lone "
                              f"surrogate?)") from None


def plain_seconds(value: Any) -> Any:
    """A number of seconds as a plain ``float`` or ``int``; anything else as it is.

    A float subclass (``numpy.float64``, a user's) becomes a plain ``float`` and an int
    subclass (but not ``bool``) a plain ``int``, so it can be checked, kept and sent
    (msgpack takes plain numbers only). The exact types are tested first: they are what
    every call passes, and they return at once.
    """
    kind = type(value)
    if kind is float or kind is int:
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int) and kind is not bool:
        return int(value)
    return value


def seconds_to_us(what: str, seconds: object, *, maximum: float, minimum: float = 0.0) -> int:
    """Seconds (int or float, finite, in [minimum, maximum]) as integer microseconds.

    A float or int subclass (``numpy.float64``) counts as its plain value; ``bool`` does
    not.
    """
    if type(seconds) is not float and type(seconds) is not int:
        plain = plain_seconds(seconds)
        if type(plain) is not float and type(plain) is not int:
            raise InvalidArgument(
                f"{what} must be a number of seconds, got {type(seconds).__name__}")
        seconds = plain
    if not finite(seconds) or seconds < minimum or seconds > maximum:
        raise InvalidArgument(
            f"{what}={seconds!r:.40} must be finite and from {minimum:g} to {maximum:g} seconds")
    value = float(seconds)
    if value < minimum or value > maximum:
        raise InvalidArgument(
            f"{what}={seconds!r} must be finite and from {minimum:g} to {maximum:g} seconds")
    return round(value * 1_000_000)


def check_wait(what: str, seconds: object) -> None:
    """A wait of a call in seconds: None (no limit) or an int or float that is not NaN.

    A float or int subclass (``numpy.float64``, not ``bool``) counts as its plain value.

    0 or less does not wait; ``inf`` waits as None does.

    Raises:
        InvalidArgument: anything else (a NaN deadline is never reached: such a wait
            never ended; a str failed inside the wait with a TypeError).
    """
    if type(seconds) is not float and type(seconds) is not int and seconds is not None:
        seconds = plain_seconds(seconds)   # a float or int subclass: its plain value
    if seconds is not None and ((type(seconds) is not float and type(seconds) is not int)
                                or (type(seconds) is float and math.isnan(seconds))):
        raise InvalidArgument(
            f"{what}={seconds!r} must be a number of seconds, or None (no limit)")


def check_count(what: str, value: object, *, maximum: int, minimum: int = 1) -> int:
    """Return ``value`` if it is an int from ``minimum`` to ``maximum``.

    The upper bound keeps the value within what the native layer (a C integer) takes,
    so an option too large is refused here, before anything is opened.

    Raises:
        InvalidArgument: anything else, naming ``what`` and the range.
    """
    if type(value) is not int or not minimum <= value <= maximum:
        raise InvalidArgument(f"{what}={value!r} must be an int from {minimum} to {maximum}")
    return value


def optional_count(what: str, value: object, *, minimum: int = 1) -> int:
    """A bound given as int (``minimum`` to ``MAX_COUNT``) or None; -1 for None (unbounded).

    Raises:
        InvalidArgument: anything else, naming ``what`` and the whole range (a value
            past ``MAX_COUNT`` too: until 2026-12 it said only ">= 1").
    """
    if value is None:
        return -1
    if type(value) is not int or not minimum <= value <= MAX_COUNT:
        raise InvalidArgument(
            f"{what}={value!r} must be None or an int from {minimum:,} to {MAX_COUNT:,}")
    return value


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The settings a queue was created with (all times in seconds, sizes in bytes).

    Attributes:
        visibility_timeout: default lease of a receive.
        max_receive_count: deliveries allowed before dead-lettering, or None.
        dead_letter_queue: name of the dead-letter queue, or None.
        delay: delay applied to every new message without its own.
        max_messages: bound on messages held, or None.
        max_bytes: bound on bytes held, or None.
        max_message_size: bound on one message.
        retention: how long a message may stay in the queue.
        overflow: ``reject``, ``drop_oldest``, ``dead_letter`` or ``hold``.
        max_priority: highest priority level (0: no priorities).
        fifo: strict order per message group, one leased message per group.
        content_dedup: deduplicate messages without a dedup id by a hash of the body.
        dedup_window: seconds a dedup id (or body hash) is remembered.
        redelivery_backoff: waits (seconds) before redelivery after failed delivery
            1, 2, ... (the last repeats), or an ``ExponentialBackoff``; None: none.
        durable: its messages are journaled and survive a restart (a broker with a
            data directory).
    """

    visibility_timeout: float = 30.0
    max_receive_count: int | None = None
    dead_letter_queue: str | None = None
    delay: float = 0.0
    max_messages: int | None = None
    max_bytes: int | None = None
    max_message_size: int = 1_048_576
    retention: float = 345_600.0
    overflow: str = "reject"
    max_priority: int = 0
    fifo: bool = False
    content_dedup: bool = False
    dedup_window: float = 300.0
    redelivery_backoff: tuple[float, ...] | ExponentialBackoff | None = None
    durable: bool = False


@dataclass(frozen=True, slots=True)
class Subscription:
    """One subscription.

    Attributes:
        topic: the topic name or pattern it follows.
        queue: the queue it feeds.
        filter_policy: the filter policy as canonical JSON, or None (everything).
        filter_scope: ``"attributes"`` or ``"body"``.
        compiled: the compiled policy the dispatcher evaluates (None: no filter).
    """

    topic: str
    queue: str
    filter_policy: str | None
    filter_scope: str
    compiled: CompiledPolicy | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """The settings a topic was created with.

    Attributes:
        fifo: FIFO topic: messages need a group id, and it feeds FIFO queues only.
        content_dedup: deduplicate messages without a dedup id by a hash of the body.
        dedup_window: seconds a dedup id (or body hash) is remembered.
    """

    fifo: bool = False
    content_dedup: bool = False
    dedup_window: float = 300.0


def check_producer_topic(topic: str, fifo: bool, content_dedup: bool,
                         group_id: str | None) -> None:
    """Refuse a producer its topic's rules would refuse every message of.

    A producer offers bare bodies: ``group_id`` (the producer's) is the only option its
    messages carry. A FIFO topic needs a group id on each message, and a dedup id too
    unless it has ``content_dedup``: such a producer is refused when it is opened,
    rather than have every frame it sends refused.

    Raises:
        InvalidArgument: ``topic`` is FIFO and ``group_id`` is None, or FIFO without
            ``content_dedup`` (each message would need a ``dedup_id`` of its own).
    """
    if not fifo:
        return
    if group_id is None:
        raise InvalidArgument(
            f"topic {topic!r} is FIFO: every message needs a group_id; open the producer "
            f"with producer({topic!r}, group_id=...) (its messages all get that group)")
    if not content_dedup:
        raise InvalidArgument(
            f"FIFO topic {topic!r} has no content_dedup: every message needs a dedup_id "
            f"of its own, which a producer's offers cannot carry; create the topic with "
            f"content_dedup=True, or publish_batch PublishEntry(..., dedup_id=...)")


def backoff_us(backoff: object) -> list[int] | None:
    """A redelivery backoff (steps or ExponentialBackoff) as microsecond steps, or None."""
    if backoff is None:
        return None
    if isinstance(backoff, ExponentialBackoff):
        if (not all(type(v) in (int, float) and finite(v) for v in backoff)
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
            f"redelivery_backoff must be None, a sequence of seconds or an ExponentialBackoff, "
            f"got {type(backoff).__name__}")
    if not 1 <= len(waits) <= MAX_BACKOFF_STEPS:
        raise InvalidArgument(
            f"redelivery_backoff has {len(waits)} steps; give 1 to {MAX_BACKOFF_STEPS}")
    return [seconds_to_us("redelivery_backoff step", wait, maximum=MAX_VISIBILITY_TIMEOUT)
            for wait in waits]


def attribute_problem(attributes: dict[object, object]) -> str:
    """Why attributes that passed the type checks still cannot be encoded.

    A name or value of a type no attribute has, an int outside 64 bits, or a str (a
    name, a value, a list item) that is not valid Unicode text (a lone surrogate). The
    encoders call it only once encoding failed.
    """
    for name, value in attributes.items():
        if type(name) is not str:
            return f"attribute name {name!r} must be a str"
        kind = type(value)
        if not (kind in (str, int, float, bytes) or (
                isinstance(value, list) and all(type(item) is str for item in value))):
            return attribute_type_problem(name, value)
        if not _encodable(name):
            return f"attribute name {name!r} is not valid Unicode text (a lone surrogate?)"
        if type(value) is int and not -(1 << 63) <= value < (1 << 64):
            return f"attribute {name!r}={value!r} is outside the 64-bit integer range"
        items = value if type(value) is list else [value]
        if not all(_encodable(item) for item in items):
            return f"attribute {name!r} is not valid Unicode text (a lone surrogate?)"
    return "attributes cannot be encoded"


def attribute_type_problem(name: object, value: object) -> str:
    """The message for an attribute value of a type no attribute has.

    A list names its first item that is not a ``str`` (a String.Array holds strings
    only), so the message does not blame the list itself.
    """
    if isinstance(value, list):
        for index, item in enumerate(value):
            if type(item) is not str:
                return (f"attribute {name!r} is a list whose item {index} has type "
                        f"{type(item).__name__}: a list (String.Array) holds only str")
    return (f"attribute {name!r} has type {type(value).__name__}; expected str, int, "
            f"float, bytes or list[str]")


def id_problem(what: str, value: str) -> str:
    """The message for a group or dedup id that is not valid Unicode text."""
    return f"{what} {value!r} is not valid Unicode text (a lone surrogate?)"


def _encodable(value: object) -> bool:
    if type(value) is not str:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_iterable(what: str, value: object) -> None:
    """Raise InvalidArgument (naming ``what``) unless ``value`` can be iterated."""
    if type(value) is not list and not isinstance(value, Iterable):
        raise InvalidArgument(
            f"{what} must be an iterable (a list, say), got {type(value).__name__} "
            f"{value!r:.80}")


def check_flag(what: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise InvalidArgument."""
    if type(value) is not bool:
        raise InvalidArgument(f"{what} must be True or False, got {value!r}")
    return value


class NativeQueueSettings(NamedTuple):
    """A queue's checked settings in the native core's units (µs; -1: unbounded)."""

    visibility_us: int
    delay_us: int
    retention_us: int
    message_limit: int
    byte_limit: int
    max_message_size: int
    receive_limit: int
    overflow: int
    """Index into ``OVERFLOW_POLICIES``."""
    max_priority: int
    fifo: bool
    content_dedup: bool
    window_us: int
    backoff_us: list[int] | None


CHANGEABLE_QUEUE_SETTINGS: Final[tuple[str, ...]] = (
    "visibility_timeout", "max_receive_count", "dead_letter_queue", "delay", "max_messages",
    "max_bytes", "max_message_size", "retention", "overflow", "redelivery_backoff")
"""The settings ``set_queue_settings`` may change. The others (``fifo``,
``max_priority``, ``content_dedup``, ``dedup_window``, ``durable``) shape how a queue
holds its messages and are its own for life, as SQS's ``FifoQueue``."""


def already_exists_problem(name: str, present: QueueSettings, asked: QueueSettings) -> str:
    """The message for ``create_queue`` of queue ``name`` with other settings than it has.

    It names each setting that differs (present and asked), and how to change those that
    may change.
    """
    differ = [field.name for field in fields(QueueSettings)
              if getattr(present, field.name) != getattr(asked, field.name)]
    shown = ", ".join(f"{key}={getattr(present, key)!r} (asked {getattr(asked, key)!r})"
                      for key in differ)
    if all(key in CHANGEABLE_QUEUE_SETTINGS for key in differ):
        remedy = ("set_queue_settings (fastfanout set-queue-settings) changes them in "
                  "place, keeping its messages")
    else:
        remedy = ("fifo, max_priority, content_dedup, dedup_window and durable are a "
                  "queue's for life: use another name, or delete the queue first")
    return f"queue {name!r} exists with other settings: {shown}; {remedy}"


def changed_queue_settings(name: str, present: QueueSettings, changes: Mapping[str, Any]
                           ) -> tuple[QueueSettings, NativeQueueSettings]:
    """Check ``set_queue_settings``'s ``changes`` to queue ``name`` (``present``).

    Returns the settings the queue would have and their native form, as
    ``check_queue_settings``; ``InvalidArgument`` names an unknown setting, one that
    cannot change (given another value than its present one) or a bad value.
    """
    known = {field.name for field in fields(QueueSettings)}
    unknown = [key for key in changes if key not in known]
    if unknown:
        raise InvalidArgument(
            f"set_queue_settings: {', '.join(repr(key) for key in unknown)} is not a queue "
            f"setting; those that may change: {', '.join(CHANGEABLE_QUEUE_SETTINGS)}")
    fixed = [key for key, value in changes.items() if key not in CHANGEABLE_QUEUE_SETTINGS
             and (type(value) is not type(getattr(present, key))
                  or value != getattr(present, key))]
    if fixed:
        raise InvalidArgument(
            f"queue {name!r}: {', '.join(fixed)} cannot change once the queue exists "
            f"(create another queue); those that may change: "
            f"{', '.join(CHANGEABLE_QUEUE_SETTINGS)}")
    return check_queue_settings(name, replace(present, **changes))


def check_topic_settings(settings: TopicSettings) -> int:
    """Check a new topic's settings (``InvalidArgument`` naming the bad one).

    Returns its dedup window in microseconds (what the dispatcher takes).
    """
    check_flag("fifo", settings.fifo)
    check_flag("content_dedup", settings.content_dedup)
    return seconds_to_us("dedup_window", settings.dedup_window, maximum=MAX_DEDUP_WINDOW,
                         minimum=1.0)


_QUEUE_SECONDS: Final = ("visibility_timeout", "delay", "retention", "dedup_window")


def check_queue_settings(name: str, settings: QueueSettings
                         ) -> tuple[QueueSettings, NativeQueueSettings]:
    """Check a new queue's name and settings (``InvalidArgument`` naming the bad one).

    Returns the settings as the queue keeps them (a backoff list made a tuple) and their
    native form.
    """
    check_name("queue", name)
    plain = {key: plain_seconds(value) for key in _QUEUE_SECONDS
             if type(value := getattr(settings, key)) is not float and type(value) is not int}
    if plain:   # a float subclass (numpy.float64) is kept as a plain float
        settings = replace(settings, **plain)
    visibility_us = seconds_to_us(
        "visibility_timeout", settings.visibility_timeout, maximum=MAX_VISIBILITY_TIMEOUT)
    delay_us = seconds_to_us("delay", settings.delay, maximum=MAX_DELAY)
    retention_us = seconds_to_us("retention", settings.retention, maximum=MAX_DELAY,
                                 minimum=1.0)
    if delay_us >= retention_us:
        raise InvalidArgument(
            f"queue {name!r}: delay={settings.delay!r} s is not shorter than "
            f"retention={settings.retention!r} s: every message would be dropped before "
            f"delivery")
    receive_limit = optional_count("max_receive_count", settings.max_receive_count)
    message_limit = optional_count("max_messages", settings.max_messages)
    byte_limit = optional_count("max_bytes", settings.max_bytes)
    size = check_count("max_message_size", settings.max_message_size,
                       maximum=MAX_MESSAGE_SIZE_LIMIT)
    overflow = settings.overflow
    if overflow not in OVERFLOW_POLICIES:
        raise InvalidArgument(
            f"overflow={overflow!r} must be one of {', '.join(OVERFLOW_POLICIES)}")
    priority = check_count("max_priority", settings.max_priority, maximum=MAX_PRIORITY,
                           minimum=0)
    check_flag("fifo", settings.fifo)
    check_flag("content_dedup", settings.content_dedup)
    if settings.fifo and priority:
        raise InvalidArgument(
            f"queue {name!r}: priorities do not apply to FIFO queues (max_priority must be 0)")
    window_us = seconds_to_us(
        "dedup_window", settings.dedup_window, maximum=MAX_DEDUP_WINDOW, minimum=1.0)
    steps_us = backoff_us(settings.redelivery_backoff)
    steps: Any = settings.redelivery_backoff
    if type(steps) is list or type(steps) is tuple:   # not an ExponentialBackoff
        settings = replace(settings, redelivery_backoff=tuple(
            plain_seconds(step) for step in steps))
    dead_letter_queue = settings.dead_letter_queue
    if dead_letter_queue is not None:
        check_name("dead_letter_queue", dead_letter_queue)
        if dead_letter_queue == name:
            raise InvalidArgument(f"queue {name!r} cannot be its own dead-letter queue")
    elif overflow == "dead_letter":
        raise InvalidArgument(
            f"queue {name!r}: overflow='dead_letter' needs a dead_letter_queue")
    return settings, NativeQueueSettings(
        visibility_us, delay_us, retention_us, message_limit, byte_limit, size,
        receive_limit, OVERFLOW_POLICIES.index(overflow), priority, settings.fifo,
        settings.content_dedup, window_us, steps_us)
