"""The bridge's rule file: export and import rules, checked whole before anything starts.

Design
------
Prior art: RabbitMQ's Shovel definitions (a source, a destination, an ack mode, one per
named rule) and the broker's own config file (``fastfanout.config``: msgspec structs
with ``forbid_unknown_fields``, one ``InvalidArgument`` line naming the file and the key).

Invariants:

- Every key a rule file may hold is a field below, with a type, a default and a line in
  docs/bridge.md. A syntax error, an unknown key, a value of the wrong type or out of
  range, two rules of one name, an import rule with both or neither of ``topic`` and
  ``queue``, a name that is not a valid local name or NATS token, a file named by the
  rules (``credentials``, ``tls_*``) that cannot be read or used, rules that would share
  a queue or a durable consumer, or an import feeding an export of the same file (a
  loop) is refused before the broker binds, with one ``InvalidArgument`` line naming
  the file and the key: anything a connect or a rule's run would fail on for ever.
- Every limit the bridge keeps has a name and a default here (``max_in_flight``,
  ``batch``, ``publish_timeout``, ``max_messages`` of the export queue, ...).
"""

from __future__ import annotations

import re
import ssl
import tomllib
from typing import Annotated, Any, Final, Literal

import msgspec

from fastfanout.errors import InvalidArgument

__all__ = ["EXPORT_QUEUE_PREFIX", "BridgeRules", "ExportRule", "ImportRule", "load_rules",
           "subjects_overlap", "tls_context"]

EXPORT_QUEUE_PREFIX: Final = "bridge.export."
"""An export rule's local queue is named this prefix and the rule's name (unless set)."""

_HELP: Final = "see docs/bridge.md"
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,128}")
_SUBJECT = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_FILTER = re.compile(r"([A-Za-z0-9_\-]+|\*)(\.([A-Za-z0-9_\-]+|\*))*(\.>)?|>")
_LOCAL = re.compile(r"[A-Za-z0-9_.:\-]{1,256}")
_TOPIC = re.compile(r"[A-Za-z0-9_:\-]+|\*|>")
# A local topic name that is a NATS subject's tail (no empty token).
_TOPIC_SUBJECT = re.compile(r"[A-Za-z0-9_:\-]+(\.[A-Za-z0-9_:\-]+)*")

_Seconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
_Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class ExportRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A local topic (or pattern) copied into a JetStream stream (RabbitMQ Shovel's contract).

    Attributes:
        name: the rule's name (a NATS token: letters, digits, ``_``, ``-``), unique.
        topic: the local topic name or NATS-style pattern (``orders.*``, ``orders.>``).
        stream: the JetStream stream the messages are stored in.
        subject: for a plain topic name, the subject each message is published on
            (default: ``fastfanout.`` and the topic); for a pattern, the subject
            *prefix*: each message is published on ``<prefix>.<its topic>`` (default:
            the stream's name). It must be one the stream takes.
        create_stream: create the stream (file storage, subject ``subject``, or
            ``<prefix>.>`` for a pattern rule) when it does not exist.
        replicas: the created stream's replicas (1, or 3 on a cluster).
        duplicate_window: the created stream's dedup window, seconds (JetStream's
            default is 120).
        queue: the durable local queue that buffers the topic for the bridge (default:
            ``bridge.export.`` and the rule's name); its dead-letter queue, for messages
            over NATS's ``max_payload``, is its name and ``.dlq``.
        fifo: make that queue FIFO (needed for a FIFO topic; one message of a group in
            flight at a time).
        max_messages: most messages the queue buffers while NATS is away (None: no
            bound but the disk); past it ``overflow`` applies and drops are counted.
        max_bytes: most body bytes the queue buffers (None: no bound).
        overflow: the queue's overflow policy: ``reject`` (the local publish fails),
            ``drop_oldest``, ``dead_letter`` or ``hold`` (back pressure on publishers).
        max_in_flight: most messages published to JetStream and not yet acknowledged.
        publish_timeout: seconds a publish waits for its PubAck before it is retried.
        lease: seconds the bridge leases a local message (its visibility timeout).
    """

    name: str
    topic: str
    stream: str
    subject: str | None = None
    create_stream: bool = True
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    duplicate_window: _Seconds = 120.0
    queue: str | None = None
    fifo: bool = False
    max_messages: _Count | None = None
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None
    overflow: Literal["reject", "drop_oldest", "dead_letter", "hold"] = "reject"
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 4096
    publish_timeout: _Seconds = 5.0
    lease: _Seconds = 60.0

    @property
    def queue_name(self) -> str:
        """The local queue that buffers this rule's messages."""
        return self.queue or EXPORT_QUEUE_PREFIX + self.name

    @property
    def pattern(self) -> bool:
        """True when ``topic`` is a pattern (``*`` or ``>`` tokens)."""
        tokens = self.topic.split(".")
        return "*" in tokens or ">" in tokens

    @property
    def subject_name(self) -> str:
        """The subject this rule publishes on (a plain rule), or its prefix (a pattern)."""
        if self.pattern:
            return self.subject or self.stream
        return self.subject or "fastfanout." + self.topic

    @property
    def stream_subject(self) -> str:
        """The subject (filter) of the stream this rule creates."""
        return self.subject_name + ".>" if self.pattern else self.subject_name

    def subject_for(self, topic: str | None) -> str | None:
        """The subject a message published on ``topic`` goes to, or None.

        None: a pattern rule's message without a topic, or with one that ends no NATS
        subject (an empty token).
        """
        if not self.pattern:
            return self.subject_name
        if topic is None or not _TOPIC_SUBJECT.fullmatch(topic):
            return None
        return self.subject_name + "." + topic


class ImportRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A durable JetStream pull consumer feeding a local topic or queue.

    Attributes:
        name: the rule's name (a NATS token), unique.
        stream: the JetStream stream read.
        durable: the durable consumer's name (default: the rule's name); a restart
            resumes from it.
        filter_subject: only the stream's messages on this subject (None: all).
        topic: the local topic the messages are published to (or ``queue``).
        queue: the local queue the messages are sent to (or ``topic``).
        dead_letter_queue: the local queue a message refused for good goes to (None:
            ``bridge.import.`` and the rule's name and ``.dlq``); created if missing.
        batch: most messages fetched and enqueued locally at once.
        max_in_flight: most messages fetched and not yet acknowledged to JetStream
            (the consumer's ``max_ack_pending``).
        ack_wait: seconds JetStream waits for an ack before it redelivers.
        nak_delay: seconds before JetStream redelivers a message the broker could not
            take for now (a full queue, a full disk).
    """

    name: str
    stream: str
    durable: str | None = None
    filter_subject: str | None = None
    topic: str | None = None
    queue: str | None = None
    dead_letter_queue: str | None = None
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 20_000
    ack_wait: _Seconds = 30.0
    nak_delay: _Seconds = 1.0

    @property
    def durable_name(self) -> str:
        """The JetStream durable consumer's name."""
        return self.durable or self.name

    @property
    def dead_letter_name(self) -> str:
        """The local dead-letter queue of this rule."""
        return self.dead_letter_queue or f"bridge.import.{self.name}.dlq"


class BridgeRules(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A whole rule file: the NATS servers, the broker's identity, the rules.

    Attributes:
        servers: NATS URLs (``nats://HOST:PORT``), any node of a cluster.
        identity: this broker's name in ``Nats-Msg-Id`` (``IDENTITY:MESSAGE_ID``):
            unique among the brokers exporting into one stream and kept across
            restarts (None: the host name and the broker's endpoint).
        user: NATS user name (with ``password``), or None.
        password: NATS password, or None.
        token: NATS token, or None.
        credentials: path of a NATS ``.creds`` file, or None.
        tls_ca: path of the PEM file of the certificate authorities that sign the NATS
            servers' certificates (None: the system's).
        tls_cert: path of this client's PEM certificate, for servers that verify
            clients (with ``tls_key``), or None.
        tls_key: path of the PEM private key of ``tls_cert``, or None.
        connect_timeout: seconds one attempt to reach a server may take (a connect
            gives up after ``connect_timeout * (len(servers) + 1)``).
        max_backoff: longest wait between attempts while NATS is away (seconds).
        stats_interval: seconds between lag and rate samples.
        export: the export rules (``[[export]]`` tables).
        import_: the import rules (``[[import]]`` tables).
    """

    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    identity: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    credentials: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: _Seconds = 2.0
    max_backoff: _Seconds = 5.0
    stats_interval: _Seconds = 1.0
    export: list[ExportRule] = msgspec.field(default_factory=list)
    import_: list[ImportRule] = msgspec.field(default_factory=list, name="import")


def _problem(source: str, where: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"{source}: {where}: {what}; {_HELP}")


def subjects_overlap(first: str, second: str) -> bool:
    """True when some subject (or local topic) matches both filters.

    A filter's tokens split on ``.``: ``*`` matches one token, ``>`` (the last) one or
    more; a plain name matches itself only (the rules of NATS and of local patterns).
    """
    a, b = first.split("."), second.split(".")
    for x, y in zip(a, b, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return len(a) == len(b)


def _check_servers(source: str, rules: BridgeRules) -> None:
    if not rules.servers:
        raise _problem(source, "servers", "give at least one nats://HOST:PORT")
    for url in rules.servers:
        # nats://[USER[:PASSWORD]@]HOST[:PORT], HOST a name, an IPv4 or a bracketed IPv6
        matched = re.fullmatch(
            r"(nats|tls)://([^\s/@]+@)?(\[[0-9A-Fa-f:.]+\]|[^\s/:@\[\]]+)(:(\d{1,5}))?", url)
        if not matched or (matched[5] is not None and not 0 < int(matched[5]) < 65536):
            raise _problem(source, "servers", f"{url!r} is not nats://HOST[:PORT] (a port "
                           f"from 1 to 65535; none: 4222)")
    if (rules.user is None) != (rules.password is None):
        raise _problem(source, "user" if rules.user is None else "password",
                       "user and password go together: give both or neither")
    ways = [key for key in ("user", "token", "credentials") if getattr(rules, key) is not None]
    if len(ways) > 1:
        raise _problem(source, ways[1], f"give one way to authenticate: "
                       f"{' and '.join(ways)} are both set")
    if rules.credentials is not None:
        # nats-py opens it only when it connects: a rule would retry it for ever
        try:
            with open(rules.credentials, "rb"):
                pass
        except OSError as error:
            raise _problem(source, "credentials", f"cannot read {rules.credentials!r}: "
                           f"{error.strerror}") from None
    _check_tls(source, rules)


def tls_context(rules: BridgeRules) -> ssl.SSLContext | None:
    """The TLS context of ``tls_ca``, ``tls_cert`` and ``tls_key`` (None when none is set).

    Raises:
        OSError, ssl.SSLError, ValueError: a file cannot be read or is not what it
            should be (``load_rules`` turns these into one line).
    """
    if rules.tls_ca is None and rules.tls_cert is None:
        return None
    context = ssl.create_default_context(cafile=rules.tls_ca)
    if rules.tls_cert is not None:
        context.load_cert_chain(rules.tls_cert, rules.tls_key)
    return context


def _check_tls(source: str, rules: BridgeRules) -> None:
    if (rules.tls_cert is None) != (rules.tls_key is None):
        raise _problem(source, "tls_cert" if rules.tls_cert is None else "tls_key",
                       "tls_cert and tls_key go together: give both or neither")
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(rules, key)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise _problem(source, key, f"cannot read {path!r}: {error.strerror}") from None
    try:
        tls_context(rules)
    except (OSError, ssl.SSLError, ValueError) as error:
        keys = "tls_ca" if rules.tls_cert is None else "tls_ca, tls_cert, tls_key"
        raise _problem(source, keys, f"not a usable PEM certificate or key: "
                       f"{getattr(error, 'reason', None) or error}") from None


def _check_loops(source: str, rules: BridgeRules) -> None:
    """Refuse rules that share what must be a rule's own, or feed each other for ever."""
    queues: dict[str, str] = {}
    for exported in rules.export:
        for queue in (exported.queue_name, exported.queue_name + ".dlq"):
            if queue in queues:
                raise _problem(source, f"[[export]] {exported.name!r} queue", f"{queue!r} is "
                               f"also the queue of {queues[queue]}: each export rule needs "
                               f"its own")
            queues[queue] = f"[[export]] {exported.name!r}"
    durables: dict[tuple[str, str], str] = {}
    for rule in rules.import_:
        where = f"[[import]] {rule.name!r}"
        key = (rule.stream, rule.durable_name)
        if key in durables:
            raise _problem(source, f"{where} durable", f"{rule.durable_name!r} on stream "
                           f"{rule.stream!r} is also the consumer of {durables[key]}: two "
                           f"rules would share its messages; give each its own durable")
        durables[key] = where
        if rule.dead_letter_name == rule.queue:
            raise _problem(source, f"{where} dead_letter_queue", f"{rule.dead_letter_name!r}"
                           f" is the rule's target: name another queue")
        if rule.dead_letter_name in queues:
            raise _problem(source, f"{where} dead_letter_queue", f"{rule.dead_letter_name!r}"
                           f" is a queue of {queues[rule.dead_letter_name]}")
        for export in rules.export:
            if export.stream != rule.stream:
                continue
            published = (export.subject_name + "." + export.topic if export.pattern
                         else export.subject_name)   # the subjects the export uses
            if rule.filter_subject is not None and not subjects_overlap(
                    rule.filter_subject, published):
                continue
            fed = (rule.queue == export.queue_name if rule.queue is not None
                   else subjects_overlap(export.topic, rule.topic or ""))
            if fed:
                target = "queue" if rule.queue is not None else "topic"
                raise _problem(source, f"{where} {target}", f"{getattr(rule, target)!r} "
                               f"is exported by [[export]] {export.name!r} into stream "
                               f"{export.stream!r}, which this rule imports: every message "
                               f"would go round for ever; import into another {target}, or "
                               f"give filter_subject = ... a subject the export does not "
                               f"publish on")


def _check_rules(source: str, rules: BridgeRules) -> None:
    if not rules.export and not rules.import_:
        raise _problem(source, "the file", "no [[export]] or [[import]] rule")
    _check_servers(source, rules)
    if rules.identity is not None and not re.fullmatch(r"[^\s:]{1,128}", rules.identity):
        raise _problem(source, "identity", f"{rules.identity!r} must be 1 to 128 characters, "
                       f"no space or ':'")
    seen: set[str] = set()
    for kind, rule in [("export", r) for r in rules.export] + [
            ("import", r) for r in rules.import_]:
        where = f"[[{kind}]] {rule.name!r}"
        if not _TOKEN.fullmatch(rule.name):
            raise _problem(source, f"[[{kind}]] name", f"{rule.name!r} must be 1 to 128 "
                           f"characters from A-Z a-z 0-9 _ -")
        if rule.name in seen:
            raise _problem(source, where, "two rules have this name")
        seen.add(rule.name)
        if not _TOKEN.fullmatch(rule.stream):
            raise _problem(source, f"{where} stream", f"{rule.stream!r} must be 1 to 128 "
                           f"characters from A-Z a-z 0-9 _ -")
        if isinstance(rule, ExportRule):
            _check_export(source, where, rule)
        else:
            _check_import(source, where, rule)
    _check_loops(source, rules)


def _check_export(source: str, where: str, rule: ExportRule) -> None:
    tokens = rule.topic.split(".")
    if not all(_TOPIC.fullmatch(token) for token in tokens) or ">" in tokens[:-1]:
        raise _problem(source, f"{where} topic", f"{rule.topic!r} is not a topic name or "
                       f"pattern (tokens split on '.', '*' one token, '>' the last)")
    if not _SUBJECT.fullmatch(rule.subject_name):
        what = "subject prefix" if rule.pattern else "subject"
        raise _problem(source, f"{where} subject", f"{rule.subject_name!r} is not a NATS "
                       f"{what} (tokens of A-Z a-z 0-9 _ - split on '.', no wildcard)")
    if not _LOCAL.fullmatch(rule.queue_name) or len(rule.queue_name) > 252:
        raise _problem(source, f"{where} queue", f"{rule.queue_name!r} must be 1 to 252 "
                       f"characters from A-Z a-z 0-9 _ . : - (its dead-letter queue "
                       f"adds .dlq)")


def _check_import(source: str, where: str, rule: ImportRule) -> None:
    if (rule.topic is None) == (rule.queue is None):
        raise _problem(source, where, "give exactly one of topic = ... and queue = ...")
    for key in ("topic", "queue", "dead_letter_queue"):
        value = getattr(rule, key)
        if value is not None and not _LOCAL.fullmatch(value):
            raise _problem(source, f"{where} {key}", f"{value!r} must be 1 to 256 "
                           f"characters from A-Z a-z 0-9 _ . : -")
    if not _LOCAL.fullmatch(rule.dead_letter_name):
        raise _problem(source, f"{where} dead_letter_queue",
                       f"{rule.dead_letter_name!r} is too long: name one")
    if not _TOKEN.fullmatch(rule.durable_name):
        raise _problem(source, f"{where} durable", f"{rule.durable_name!r} must be 1 to 128 "
                       f"characters from A-Z a-z 0-9 _ -")
    if rule.filter_subject is not None and not _FILTER.fullmatch(rule.filter_subject):
        raise _problem(source, f"{where} filter_subject",
                       f"{rule.filter_subject!r} is not a NATS subject filter")


def parse_rules(data: dict[str, Any], source: str) -> BridgeRules:
    """Check the decoded TOML ``data`` of a rule file (``source`` names it in errors).

    Raises:
        InvalidArgument: an unknown key, a wrong type or range, or a rule that does not
            hold together; one line naming ``source`` and the key.
    """
    try:
        rules = msgspec.convert(data, BridgeRules)
    except msgspec.ValidationError as error:
        detail, _, where = str(error).partition(" - at `")
        raise _problem(source, where.rstrip("`").removeprefix("$.") or "the file", detail
                       ) from None
    _check_rules(source, rules)
    return rules


def load_rules(path: str) -> BridgeRules:
    """Read and check the bridge rule file at ``path`` (TOML; see docs/bridge.md).

    Raises:
        InvalidArgument: the file cannot be read, is not TOML, or its rules are wrong;
            one line naming the file and the key.
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise InvalidArgument(f"{path}: cannot read the bridge rule file: {error.strerror}"
                              ) from None
    except UnicodeDecodeError as error:
        raise InvalidArgument(f"{path}: not UTF-8 text ({error.reason}); {_HELP}") from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidArgument(f"{path}: not valid TOML: {error}; {_HELP}") from None
    return parse_rules(data, path)
