"""A broker's topology as data: export it, import it into a broker (RabbitMQ's definitions).

``export_definitions(broker)`` reads every topic's, queue's and subscription's settings
into one JSON-ready map; ``import_definitions(broker, definitions)`` makes a broker hold
them: what is missing is created, what is there with the same settings is left as it is,
and what is there with other settings is a conflict (``AlreadyExists``) unless
``update=True`` changes it in place (queue settings that may change, and filter
policies). Both take an embedded ``Broker`` or a blocking ``Client``;
``fastfanout definitions export|import`` runs them on a broker server (docs/semantics.md,
"Definitions").

Design
------
Prior art: RabbitMQ's definitions (``rabbitmqctl export_definitions`` /
``import_definitions``: the topology of a broker as one JSON document, imported
idempotently) and Terraform's plan-then-apply. The whole document is decoded and checked
(msgspec, every name, setting and filter policy, every reference to a queue or topic)
and planned against the broker before the first change: bad input and conflicts change
nothing. Messages are not definitions: neither is exported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, Literal, get_type_hints

import msgspec

from fastfanout.errors import AlreadyExists, InvalidArgument, NotFound
from fastfanout.records import ExponentialBackoff
from fastfanout.semantics.routing import compile_policy
from fastfanout.semantics.topic_pattern import is_pattern, validate_pattern
from fastfanout.settings import (
    CHANGEABLE_QUEUE_SETTINGS,
    QueueSettings,
    TopicSettings,
    check_name,
    check_queue_settings,
    check_topic_settings,
)

__all__ = ["DEFINITIONS_FORMAT", "EXPORT_ATTEMPTS", "ImportResult", "check_definitions",
           "export_definitions", "import_definitions"]

DEFINITIONS_FORMAT: Final = 1
"""The version of the document (its ``fastfanout_definitions`` key)."""


def _document_form(settings: type, name: str, **overrides: tuple[Any, Any]) -> Any:
    """A strict msgspec Struct of the fields of dataclass ``settings``.

    Their types and defaults come from the dataclass itself, so a new setting is in the
    document at once; ``overrides`` give a field another (type, default).
    """
    hints = get_type_hints(settings)
    return msgspec.defstruct(
        name, [(item.name, *overrides.get(item.name, (hints[item.name], item.default)))
               for item in fields(settings)], forbid_unknown_fields=True)


class _Backoff(msgspec.Struct, forbid_unknown_fields=True):
    initial: float = 1.0
    multiplier: float = 2.0
    maximum: float = 300.0


_Topic = _document_form(TopicSettings, "_Topic")
# A backoff is a list of seconds or a map (msgspec takes one array-like type of a
# union). A queue without "durable" is as its broker makes queues by default: durable on
# a broker with a data directory, in memory on one without (the document moves between
# the two as it is).
_Queue = _document_form(QueueSettings, "_Queue",
                        redelivery_backoff=(list[float] | _Backoff | None, None),
                        durable=(bool | None, None))


class _Subscription(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    queue: str
    filter_policy: dict[str, Any] | None = None
    filter_scope: Literal["attributes", "body"] = "attributes"


_Document = msgspec.defstruct("_Document", [
    ("fastfanout_definitions", int),
    # made at run time from the settings classes: types to msgspec, values to mypy
    ("topics", dict[str, _Topic], msgspec.field(default_factory=dict)),  # type: ignore[valid-type]
    ("queues", dict[str, _Queue], msgspec.field(default_factory=dict)),  # type: ignore[valid-type]
    ("subscriptions", list[_Subscription], msgspec.field(default_factory=list)),
], forbid_unknown_fields=True)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What ``import_definitions`` did (or, with ``dry_run``, would do).

    Attributes:
        created: what it created, in order: ``topic NAME``, ``queue NAME``,
            ``subscription TOPIC -> QUEUE``.
        updated: what it changed in place: ``queue NAME: SETTING, ...``,
            ``subscription TOPIC -> QUEUE: filter policy``.
        unchanged: definitions the broker held already, as they are.
    """

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0


def _settings_map(settings: QueueSettings) -> dict[str, Any]:
    values = asdict(settings)
    backoff = settings.redelivery_backoff
    if isinstance(backoff, ExponentialBackoff):
        values["redelivery_backoff"] = backoff._asdict()
    elif backoff is not None:
        values["redelivery_backoff"] = list(backoff)
    return values


def _durable_by_default(broker: Any) -> bool:
    """Whether ``broker`` makes a queue durable unless told (it has a data directory)."""
    return broker.stats().storage is not None


def _without_defaults(values: dict[str, Any], kind: Any) -> dict[str, Any]:
    """``values`` in the document's own types, without those at their defaults.

    Seconds are floats whatever the broker was given, so the text of an export survives
    an import and an export again.
    """
    values = msgspec.to_builtins(msgspec.convert(values, kind))
    defaults = msgspec.to_builtins(kind())
    return {key: value for key, value in values.items() if value != defaults[key]}


EXPORT_ATTEMPTS: Final = 5
"""Reads of the topology ``export_definitions`` makes before it gives up on one that
keeps changing under it."""


def export_definitions(source: Any) -> dict[str, Any]:
    """Every topic's, queue's and subscription's settings, as a JSON-ready map.

    ``source`` is an embedded ``Broker`` or a blocking ``Client``. Settings at their
    defaults are left out; subscriptions come in id order. The map is read call by call,
    then the names are listed again: a topology that changed meanwhile (a queue deleted
    before its settings were read, a topic created) is read again, up to
    ``EXPORT_ATTEMPTS`` times, so the export holds the topics, queues and subscriptions
    of one moment (until 2026-12-07 a queue deleted during an export failed it with
    ``NotFound``). A setting changed in place meanwhile may be caught either way.

    Raises:
        NotFound: the topology changed during each of the ``EXPORT_ATTEMPTS`` reads.
        FastFanoutError: the broker's own errors (a ``BrokenConnection``, say).
    """
    for _ in range(EXPORT_ATTEMPTS):
        try:
            document = _read_definitions(source)
        except NotFound:   # listed, then deleted before it was read: read again
            continue
        if _names(source) == (list(document["topics"]), list(document["queues"]),
                              document.pop("_ids")):
            return document
    raise NotFound(f"the topology changed during each of {EXPORT_ATTEMPTS} reads of it: "
                   f"export a quieter broker")


def _names(source: Any) -> tuple[list[str], list[str], list[int]]:
    """The topics, queues and subscription ids ``source`` holds now."""
    return (list(source.list_topics()), list(source.list_queues()),
            sorted(source.list_subscriptions()))


def _read_definitions(source: Any) -> dict[str, Any]:
    """One read of the topology (``export_definitions``), its subscription ids in ``_ids``."""
    topics = {name: _without_defaults(asdict(source.topic_settings(name)), _Topic)
              for name in source.list_topics()}
    durable_by_default = _durable_by_default(source)
    queues = {}
    for name in source.list_queues():
        values = _settings_map(source.queue_settings(name))
        if values["durable"] == durable_by_default:
            values["durable"] = None
        queues[name] = _without_defaults(values, _Queue)
    subscriptions = []
    ids = sorted(source.list_subscriptions())
    for sid in ids:
        sub = source.subscription(sid)
        entry: dict[str, Any] = {"topic": sub.topic, "queue": sub.queue}
        if sub.filter_policy is not None:
            entry["filter_policy"] = json.loads(sub.filter_policy)
        if sub.filter_scope != "attributes":
            entry["filter_scope"] = sub.filter_scope
        subscriptions.append(entry)
    return {"fastfanout_definitions": DEFINITIONS_FORMAT, "topics": topics,
            "queues": queues, "subscriptions": subscriptions, "_ids": ids}


def _decode(definitions: Mapping[str, Any] | str | bytes) -> Any:
    document: Any
    try:
        if isinstance(definitions, str | bytes):
            document = msgspec.json.decode(definitions, type=_Document)
        else:
            document = msgspec.convert(definitions, _Document)
    except msgspec.ValidationError as error:
        raise InvalidArgument(f"definitions: {_named(error, definitions)}") from None
    except msgspec.DecodeError as error:
        raise InvalidArgument(f"definitions: not JSON: {error}") from None
    if document.fastfanout_definitions != DEFINITIONS_FORMAT:
        raise InvalidArgument(f"definitions: fastfanout_definitions is "
                              f"{document.fastfanout_definitions}; this fastfanout reads "
                              f"format {DEFINITIONS_FORMAT}")
    return document


_ENTRY_FORMS: Final = (("topics", _Topic), ("queues", _Queue))
"""The document's maps of named entries, and the form of an entry of each."""


def _named(error: msgspec.ValidationError, definitions: Mapping[str, Any] | str | bytes
           ) -> str:
    """``error``'s text, with the name of the topic or queue it is about.

    msgspec writes a map's key as ``[...]`` (``$.queues[...].visibility_timeout``): the
    entries are checked again one by one to find which one it was.
    """
    text = str(error)
    if "[...]" not in text:
        return text
    try:
        plain = (msgspec.json.decode(definitions) if isinstance(definitions, str | bytes)
                 else definitions)
    except msgspec.DecodeError:
        return text
    for section, form in _ENTRY_FORMS:
        entries = plain.get(section) if isinstance(plain, Mapping) else None
        if not isinstance(entries, Mapping):
            continue
        for name, entry in entries.items():
            try:
                msgspec.convert(entry, form)
            except msgspec.ValidationError as found:
                where = f"$.{section}[{name!r}]"
                found_text = str(found)   # "... - at `$.field`", or no place: the entry
                return (found_text.replace("`$", f"`{where}", 1) if "`$" in found_text
                        else f"{found_text} - at `{where}`")
    return text


def _queue_settings(name: str, queue: Any, durable: bool | None) -> QueueSettings:
    values = msgspec.structs.asdict(queue)
    backoff = values["redelivery_backoff"]
    if isinstance(backoff, _Backoff):
        values["redelivery_backoff"] = ExponentialBackoff(**msgspec.structs.asdict(backoff))
    elif backoff is not None:
        values["redelivery_backoff"] = tuple(backoff)
    if durable is not None:
        values["durable"] = durable
    elif values["durable"] is None:   # the broker's default: settled by _plan
        values["durable"] = False
    try:
        settings, _ = check_queue_settings(name, QueueSettings(**values))
    except InvalidArgument as error:
        raise InvalidArgument(f"definitions: queue {name!r}: {error}") from None
    return settings


def _create_keywords(settings: QueueSettings) -> dict[str, Any]:
    return {item.name: getattr(settings, item.name) for item in fields(settings)}


class _Plan:
    """The changes an import makes, worked out before the first one."""

    def __init__(self) -> None:
        self.unchanged = 0
        self.conflicts: list[str] = []
        self.topics: list[tuple[str, TopicSettings]] = []
        self.queues: list[tuple[str, QueueSettings]] = []
        self.queue_changes: list[tuple[str, dict[str, Any]]] = []
        self.subscriptions: list[tuple[str, str, str | None, str]] = []
        self.policy_changes: list[tuple[int, str, str | None, str]] = []


@dataclass(frozen=True, slots=True)
class _Checked:
    """A document's definitions, each checked as the broker would check it."""

    topics: dict[str, TopicSettings]
    queues: dict[str, QueueSettings]
    subscriptions: list[tuple[str, str, str | None, str]]   # topic, queue, policy, scope
    default_durable: frozenset[str]   # queues durable as their broker makes them


def _check(document: Any, durable: bool | None) -> _Checked:
    """Every name, setting and filter policy of ``document`` (no broker needed)."""
    topics = {}
    for name, topic in document.topics.items():
        settings = TopicSettings(**msgspec.structs.asdict(topic))
        try:
            check_name("topic", name)
            check_topic_settings(settings)
        except InvalidArgument as error:
            raise InvalidArgument(f"definitions: topic {name!r}: {error}") from None
        topics[name] = settings
    queues = {name: _queue_settings(name, queue, durable)
              for name, queue in document.queues.items()}
    default_durable = frozenset(name for name, queue in document.queues.items()
                                if durable is None and queue.durable is None)
    subscriptions: list[tuple[str, str, str | None, str]] = []
    pairs: set[tuple[str, str]] = set()
    for sub in document.subscriptions:
        if (sub.topic, sub.queue) in pairs:
            raise InvalidArgument(f"definitions: subscription {sub.topic} -> {sub.queue} is "
                                  f"defined twice (a queue subscribes to a topic once)")
        pairs.add((sub.topic, sub.queue))
        try:
            check_name("queue", sub.queue)
            if is_pattern(sub.topic):
                validate_pattern(sub.topic)
            else:
                check_name("topic", sub.topic)
            _, policy = compile_policy(sub.filter_policy, sub.filter_scope)
        except InvalidArgument as error:
            raise InvalidArgument(f"definitions: subscription {sub.topic} -> {sub.queue}: "
                                  f"{error}") from None
        subscriptions.append((sub.topic, sub.queue, policy, sub.filter_scope))
    return _Checked(topics, queues, subscriptions, default_durable)


def check_definitions(definitions: Mapping[str, Any] | str | bytes, *,
                      durable: bool | None = None) -> None:
    """Check a document on its own: its form, and every name, setting and filter policy.

    What ``import_definitions`` checks before it looks at a broker (``fastfanout serve
    --definitions`` runs it before it binds); the references to queues and topics a
    broker may hold are left to the import.

    Raises:
        InvalidArgument: the first problem, named.
    """
    _check(_decode(definitions), durable)


def _refuse_dead_letter_loops(target: Any, held: set[str],
                              wanted: dict[str, QueueSettings]) -> None:
    """Refuse dead-letter queues that would lead back to their queue once imported.

    The broker refuses such a loop too, but only when the import reaches its queue,
    with what came before already made; the loop may run through queues the broker
    holds, so their dead-letter queues are read as well (only when there is any).
    """
    if not any(settings.dead_letter_queue for settings in wanted.values()):
        return
    dead_of = {name: target.queue_settings(name).dead_letter_queue
               for name in held if name not in wanted}
    dead_of.update({name: settings.dead_letter_queue for name, settings in wanted.items()})
    for start in wanted:
        path = [start]
        following = dead_of.get(start)
        while following is not None:
            if following in path:
                loop = " -> ".join([*path[path.index(following):], following])
                raise InvalidArgument(f"definitions: queue {start!r}: its dead-letter "
                                      f"queues lead back round ({loop}): a dead letter "
                                      f"would go round for ever")
            path.append(following)
            following = dead_of.get(following)


def _plan(target: Any, checked: _Checked, update: bool) -> _Plan:
    plan = _Plan()
    topics = set(target.list_topics())
    queues = set(target.list_queues())
    durable_by_default = _durable_by_default(target)
    wanted_queues = {name: replace(settings, durable=durable_by_default)
                     if name in checked.default_durable else settings
                     for name, settings in checked.queues.items()}
    for name, wanted in checked.topics.items():
        if name not in topics:
            plan.topics.append((name, wanted))
        elif target.topic_settings(name) == wanted:
            plan.unchanged += 1
        else:
            plan.conflicts.append(f"topic {name!r} exists with other settings "
                                  f"({target.topic_settings(name)}; a topic's never change)")
    for name, wanted_queue in wanted_queues.items():
        dead = wanted_queue.dead_letter_queue
        if dead is not None and dead not in checked.queues and dead not in queues:
            raise NotFound(f"definitions: queue {name!r}: its dead_letter_queue {dead!r} is "
                           f"neither defined nor on the broker")
        if name not in queues:
            plan.queues.append((name, wanted_queue))
            continue
        held = target.queue_settings(name)
        changed = {item.name: getattr(wanted_queue, item.name) for item in fields(held)
                   if getattr(held, item.name) != getattr(wanted_queue, item.name)}
        if not changed:
            plan.unchanged += 1
        elif update and all(key in CHANGEABLE_QUEUE_SETTINGS for key in changed):
            plan.queue_changes.append((name, changed))
        else:
            fixed = [key for key in changed if key not in CHANGEABLE_QUEUE_SETTINGS]
            plan.conflicts.append(
                f"queue {name!r} exists with other settings: {', '.join(changed)}"
                + (f" ({', '.join(fixed)} can never change)" if fixed and update else ""))
    _refuse_dead_letter_loops(target, queues, wanted_queues)
    durable_queues = [name for name, settings in plan.queues if settings.durable]
    if durable_queues and not durable_by_default:
        raise InvalidArgument(
            f"definitions: queue {durable_queues[0]!r} is durable and this broker keeps "
            f"nothing on disk; import with durable=False (--not-durable) to make every "
            f"queue an in-memory one")
    held_pairs = {pair: sid for sid, pair in target.list_subscriptions().items()}
    for topic, queue, policy, scope in checked.subscriptions:
        pair = f"{topic} -> {queue}"
        if not is_pattern(topic) and topic not in checked.topics and topic not in topics:
            raise NotFound(f"definitions: subscription {pair}: topic {topic!r} is neither "
                           f"defined nor on the broker")
        if queue not in checked.queues and queue not in queues:
            raise NotFound(f"definitions: subscription {pair}: queue {queue!r} is neither "
                           f"defined nor on the broker")
        if not is_pattern(topic):
            topic_fifo = (checked.topics[topic] if topic in checked.topics
                          else target.topic_settings(topic)).fifo
            queue_fifo = (checked.queues[queue] if queue in checked.queues
                          else target.queue_settings(queue)).fifo
            if topic_fifo != queue_fifo:
                raise InvalidArgument(
                    f"definitions: subscription {pair}: the topic is "
                    f"{'FIFO' if topic_fifo else 'standard'} and the queue is not (a FIFO "
                    f"topic feeds FIFO queues only, and FIFO queues subscribe to FIFO "
                    f"topics only)")
        sid = held_pairs.get((topic, queue))
        if sid is None:
            plan.subscriptions.append((topic, queue, policy, scope))
            continue
        held_sub = target.subscription(sid)
        if (held_sub.filter_policy, held_sub.filter_scope) == (policy, scope):
            plan.unchanged += 1
        elif update:
            plan.policy_changes.append((sid, pair, policy, scope))
        else:
            plan.conflicts.append(f"subscription {pair} exists with another filter policy")
    return plan


def import_definitions(target: Any, definitions: Mapping[str, Any] | str | bytes, *,
                       update: bool = False, durable: bool | None = None,
                       dry_run: bool = False) -> ImportResult:
    """Make ``target`` hold ``definitions`` (``export_definitions``' map, or its JSON).

    Missing topics, queues and subscriptions are created (queues with a dead-letter
    queue after it, in any order the document gives); those held with the same settings
    are left alone. One held with other settings is a conflict, unless ``update``
    changes it in place: queue settings that may change (``CHANGEABLE_QUEUE_SETTINGS``)
    and filter policies; a topic's settings, and a queue's ``fifo``, ``max_priority``,
    ``content_dedup``, ``dedup_window`` and ``durable``, never change. Nothing is
    deleted.

    Args:
        target: an embedded ``Broker`` or a blocking ``Client``.
        definitions: the document: a map, or JSON text.
        update: change what is held with other settings, where it may change.
        durable: make every queue durable (True) or not (False), whatever the document
            says (None: as it says; a queue it gives no ``durable`` is as the broker
            makes queues by default). A broker in memory takes no durable queue.
        dry_run: plan only: what would be created and updated, nothing changed.

    Returns:
        What was created, updated and left unchanged.

    Raises:
        InvalidArgument: the document is malformed (its path and the expected form
            named), or a name, setting or filter policy is bad. Nothing changed.
        NotFound: a queue or topic the document refers to is neither in it nor held.
            Nothing changed.
        AlreadyExists: conflicts (each named), without ``update``, or ones ``update``
            cannot change. Nothing changed.
        FastFanoutError: the broker refused a change on the way (a limit, say): what
            came before it stays; importing again after the fix completes the rest.
    """
    plan = _plan(target, _check(_decode(definitions), durable), update)
    if plan.conflicts:
        shown = "; ".join(plan.conflicts[:5])
        more = len(plan.conflicts) - 5
        count = len(plan.conflicts)
        raise AlreadyExists(f"definitions: {count} conflict{'' if count == 1 else 's'}, nothing "
                            f"changed: {shown}" + (f"; and {more} more" if more > 0 else "")
                            + ("" if update else "; update=True (--update) changes what "
                               "may change"))
    created = [f"topic {name}" for name, _ in plan.topics]
    created += [f"queue {name}" for name, _ in plan.queues]
    created += [f"subscription {topic} -> {queue}" for topic, queue, _, _ in plan.subscriptions]
    updated = [f"queue {name}: {', '.join(changes)}" for name, changes in plan.queue_changes]
    updated += [f"subscription {pair}: filter policy" for _, pair, _, _ in plan.policy_changes]
    if dry_run:
        return ImportResult(created, updated, plan.unchanged)
    for name, topic_settings in plan.topics:
        target.create_topic(name, **asdict(topic_settings))
    later: list[tuple[str, dict[str, Any]]] = []
    for name, queue_settings in plan.queues:
        keywords = _create_keywords(queue_settings)
        if keywords["dead_letter_queue"] is not None:   # set once every queue exists
            later.append((name, {"dead_letter_queue": keywords["dead_letter_queue"],
                                 "overflow": keywords["overflow"]}))
            keywords.update(dead_letter_queue=None, overflow="reject")
        target.create_queue(name, **keywords)
    for name, changes in later + plan.queue_changes:
        target.set_queue_settings(name, **changes)
    for topic, queue, policy, scope in plan.subscriptions:
        target.subscribe(topic, queue, filter_policy=policy, filter_scope=scope)
    for sid, _, policy, scope in plan.policy_changes:
        target.set_filter_policy(sid, policy, filter_scope=scope)
    return ImportResult(created, updated, plan.unchanged)
