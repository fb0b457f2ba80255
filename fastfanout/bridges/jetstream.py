"""The NATS JetStream bridge: export and import rules, run in the broker's process.

Design
------
Prior art: RabbitMQ's Shovel (a source queue, a destination, acks only after the
destination confirmed: ``on-confirm``), Kafka MirrorMaker 2 (the source broker's id in
each copied record), and JetStream's own contracts: ``Nats-Msg-Id`` dedup inside a
stream's ``duplicate_window``, durable pull consumers with explicit acks, ``nak`` and
``term``.

The bridge is one thread with its own asyncio loop inside ``fastfanout serve``. It talks
to the local broker through the ordinary asyncio client (``fastfanout.aio``), over the
broker's own endpoint: the server thread alone owns the ``Broker`` (a second thread
calling it would race the server's rounds), and the client path brings every local
guarantee with it at no extra cost — a send is confirmed after the broker's group
commit (on disk for a durable queue with ``fsync = "always"``), pushes are credit-based,
and a session that ends releases its leases at once. On an ipc endpoint the client
moves to a shared-memory channel, so the hop costs microseconds.

Invariants:

- Export: a rule owns a durable local queue subscribed to its topic or pattern; the
  bridge consumes it (credit ``max_in_flight``) and publishes each message to
  JetStream, pipelined, with ``Nats-Msg-Id = IDENTITY:MESSAGE_ID``. A local message is
  acked only after JetStream's PubAck for it. A publish that fails or waits past
  ``publish_timeout`` ends the rule's broker session, so every unacked message is
  leased again at once and published again later with the same ``Nats-Msg-Id``:
  JetStream's dedup window absorbs what had been stored (counted in ``duplicates``).
- Import: a rule reads a durable pull consumer; each fetched batch is sent (queue) or
  published (topic) locally in one call with each message's ``Nats-Msg-Id`` (else
  ``STREAM:SEQUENCE``) as its dedup id, and acked to JetStream only after the broker
  confirmed it. A batch the broker refuses is retried one message at a time: a message
  refused for good (too large, invalid) goes to the rule's local dead-letter queue and
  is terminated on JetStream; from the first one refused for now (a full queue, a full
  disk), the rest is nacked with ``nak_delay``, in order (counted in ``retries``).
- Failures: an unreachable NATS or broker makes a rule back off (doubling up to
  ``max_backoff``) and retry, counted in ``retries`` and ``errors``; meanwhile an export
  queue buffers, bounded by its own ``max_messages``/``max_bytes`` and ``overflow``
  (its drops counted in the queue's stats). Nothing is acked on either side before the
  other side confirmed, so nothing confirmed is lost; duplicates are suppressed by the
  two dedup windows.
- Order: messages go out in queue order, and JetStream and the import keep it; after a
  failure, released messages are published again after those still queued unless the
  export queue is FIFO (``fifo = true``: a group's message returns to its group's head).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import json
import logging
import random
import socket
import sys
import threading
import time
from base64 import b64decode, b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from fastfanout.bridges.rules import (
    BridgeRules,
    ExportRule,
    ImportRule,
    subjects_overlap,
    tls_context,
)
from fastfanout.errors import (
    BridgeUnavailable,
    FastFanoutError,
    InvalidArgument,
    NotFound,
    QueueFull,
    RequestTooLarge,
    StoreFailed,
    StoreFull,
)
from fastfanout.model.checks import MAX_ID_BYTES
from fastfanout.records import Attributes, PublishEntry
from fastfanout.server.guests import Host, SteppedLoop

__all__ = ["HEADER_ATTRIBUTES", "HEADER_DEDUP_ID", "HEADER_GROUP_ID", "HEADER_MESSAGE_ID",
           "HEADER_PRIORITY", "Bridge", "bridge_unavailable", "decode_attributes",
           "encode_attributes", "import_dedup_id", "message_headers", "subject_covers"]

log = logging.getLogger("fastfanout.bridge")

HEADER_MESSAGE_ID: Final = "Nats-Msg-Id"
"""JetStream's dedup header: ``IDENTITY:MESSAGE_ID`` on export."""
HEADER_ATTRIBUTES: Final = "Fastfanout-Attributes"
"""The message's attributes as a JSON object (bytes values as ``{"base64": ...}``)."""
HEADER_GROUP_ID: Final = "Fastfanout-Group-Id"
"""The message's FIFO group id."""
HEADER_PRIORITY: Final = "Fastfanout-Priority"
"""The message's priority (decimal), when not 0."""
HEADER_DEDUP_ID: Final = "Fastfanout-Dedup-Id"
"""The dedup id the message was published with on its source broker."""
STOP_DEADLINE: Final = 5.0
"""Seconds ``Bridge.stop`` waits for the rules to end and the connections to close."""
SWITCH_INTERVAL: Final = 0.0005
"""Seconds one thread of the broker's process may keep the GIL while another waits for
it (``sys.setswitchinterval``), once a bridge runs there: Python's default, 5 ms, is
what a message waited at each hand-off between the server thread and the bridge's
(measured: the bridge's p99 from a publish on A to the local send on B fell from
27-73 ms to 15-17 ms on a loaded 2-core host; see docs/bridge.md "Speed")."""
FETCH_WAIT: Final = 1.0
"""Seconds an import's fetch waits for messages before it asks again."""
SEND_BATCH_BYTES: Final = 8 * 1024 * 1024
"""Most body bytes (with ``SEND_ENTRY_BYTES`` for each message) of one local request of
an import: a fetched batch of large messages goes in several (a broker refuses a request
over its ``max_request_bytes``, 64 MiB by default; a broker with a smaller one refuses a
part, which then goes one message at a time)."""
SEND_ENTRY_BYTES: Final = 1024
"""What one message is counted for, past its body, against ``SEND_BATCH_BYTES``."""
UNROUTED_TELL: Final = 60.0
"""Seconds between two warnings that an import's topic has no subscription."""
PULL_REFUSALS: Final = 3
"""Pull requests in a row JetStream may end at once, without a message and before their
wait (a status such as ``409 Consumer is push based``), before the import rule takes it
for a failure and backs off (each request sent again at once spun a core for ever)."""
PERMANENT: Final = (InvalidArgument,)
"""Refusals for good: retrying cannot help (``MessageTooLarge`` and ``MalformedBatch``
are ``InvalidArgument``s). A target deleted under the rule (``NotFound``) is not one:
the rule's next run creates it again."""
FOR_NOW: Final = (QueueFull, StoreFull, StoreFailed)
"""Refusals for now: the broker may take the message later."""
COUNTERS: Final = ("messages", "rate", "lag", "in_flight", "retries", "errors",
                   "duplicates", "dead_lettered", "connected")
"""Every rule's stats keys (``fastfanout stats``, table ``bridge``)."""


def bridge_unavailable(rules: BridgeRules | None = None) -> str | None:
    """Why the bridge (of ``rules``) cannot run here (one line: what to install), or None.

    A rule file with ``credentials`` needs nats-py's ``nkeys`` extra too: nats-py imports
    it only when it connects, so without it every connect would fail, for ever.
    """
    try:
        import nats  # noqa: F401
    except ImportError:
        return ("the bridge needs the nats-py client: pip install 'fastfanout[bridge]' "
                "(or pip install 'nats-py>=2.6')")
    if rules is not None and rules.credentials is not None:
        try:
            importlib.import_module("nkeys")
        except ImportError:
            return ("credentials (a .creds file) need the nkeys package: "
                    "pip install 'nats-py[nkeys]'")
    return None


def encode_attributes(attributes: Attributes) -> str:
    """Attributes as the JSON of ``HEADER_ATTRIBUTES`` (bytes as ``{"base64": ...}``)."""
    return json.dumps({name: {"base64": b64encode(value).decode()} if isinstance(value, bytes)
                       else value for name, value in attributes.items()},
                      separators=(",", ":"))


def decode_attributes(text: str) -> Attributes:
    """The attributes of a ``HEADER_ATTRIBUTES`` JSON text.

    Raises:
        InvalidArgument: the text is not a JSON object of attribute values.
    """
    try:
        data = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"{HEADER_ATTRIBUTES} is not JSON: {text[:64]!r}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{HEADER_ATTRIBUTES} is not a JSON object: {text[:64]!r}")
    attributes: Attributes = {}
    for name, value in data.items():
        if isinstance(value, dict) and isinstance(value.get("base64"), str):
            try:
                attributes[name] = b64decode(value["base64"], validate=True)
            except ValueError:
                raise InvalidArgument(f"attribute {name!r}: bad base64") from None
        else:
            attributes[name] = value
    return attributes


def message_headers(identity: str, message: Any) -> dict[str, str]:
    """The NATS headers of a local message exported by broker ``identity``."""
    headers = {HEADER_MESSAGE_ID: f"{identity}:{message.id}"}
    attributes = message.attributes
    if attributes:
        headers[HEADER_ATTRIBUTES] = encode_attributes(attributes)
    if message.group_id is not None:
        headers[HEADER_GROUP_ID] = message.group_id
    if message.priority:
        headers[HEADER_PRIORITY] = str(message.priority)
    if message.dedup_id is not None:
        headers[HEADER_DEDUP_ID] = message.dedup_id
    return headers


def import_dedup_id(msg: Any, stream: str) -> str:
    """The local dedup id of an imported JetStream message.

    Its ``Nats-Msg-Id`` (else ``STREAM:SEQUENCE``); one over the ``MAX_ID_BYTES`` of a
    local dedup id (a third-party publisher's, or an exporter's long identity) is
    ``sha256:`` and the hex digest of it: the same id always gives the same digest, so a
    redelivery is still absorbed. (Taken as it was, it was refused, and so was its
    dead-lettering: the message was nacked for ever and held every later one back.)
    """
    headers = msg.headers or {}
    dedup_id = headers.get(HEADER_MESSAGE_ID) or f"{stream}:{msg.metadata.sequence.stream}"
    encoded = dedup_id.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_ID_BYTES:
        return "sha256:" + hashlib.sha256(encoded).hexdigest()
    return dedup_id


def _entry(msg: Any, stream: str) -> PublishEntry:
    """The local entry of a JetStream message: its body, attributes, group, priority."""
    headers = msg.headers or {}
    dedup_id = import_dedup_id(msg, stream)
    text = headers.get(HEADER_ATTRIBUTES)
    priority = headers.get(HEADER_PRIORITY)
    try:
        priority_value = None if priority is None else int(priority)
    except ValueError:
        raise InvalidArgument(f"{HEADER_PRIORITY} {priority!r} is not an integer") from None
    return PublishEntry(msg.data, decode_attributes(text) if text else None, None, None,
                        headers.get(HEADER_GROUP_ID), dedup_id, priority_value, None)


@dataclass
class RuleStats:
    """One rule's counters, read by the server thread (``Bridge.stats``).

    Attributes:
        values: ``COUNTERS`` -> number: ``messages`` copied, ``rate`` (messages a second
            over the last ``stats_interval``), ``lag`` (messages waiting: the export
            queue's, or the import consumer's pending ones), ``in_flight`` (sent, not yet
            confirmed), ``retries``, ``errors``, ``duplicates`` (copies a dedup window
            absorbed), ``dead_lettered`` (imports refused for good), ``connected`` (1
            while the rule runs).
    """

    values: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    last_messages: float = 0.0
    last_time: float = field(default_factory=time.monotonic)

    def sample(self) -> None:
        """Update ``rate`` from the messages copied since the last sample."""
        now = time.monotonic()
        elapsed = now - self.last_time
        if elapsed > 0:
            messages = self.values["messages"]
            self.values["rate"] = round((messages - self.last_messages) / elapsed, 1)
            self.last_messages, self.last_time = messages, now


class _Backoff:
    """Doubling waits with jitter: 0.1 s, 0.2 s, ... up to ``maximum`` seconds."""

    def __init__(self, maximum: float) -> None:
        self.maximum = maximum
        self.wait = 0.1

    def reset(self) -> None:
        self.wait = 0.1

    def next(self) -> float:
        wait = self.wait
        self.wait = min(self.wait * 2, self.maximum)
        return wait * random.uniform(0.5, 1.0)


class _Ticket:
    """The PubAcks one export batch waits for (its publishes have consecutive tokens).

    ``done(ticket, error)`` is called once, from the callback that read the last PubAck
    (``error`` None) or from the first failure: no future, no task, so the batch is
    settled in the loop iteration that read its last PubAck.
    """

    __slots__ = ("done", "duplicates", "first", "refused", "remaining", "timer")

    def __init__(self, count: int, first: int,
                 done: Callable[[_Ticket, BaseException | None], None]) -> None:
        self.remaining = count
        self.first = first          # the token of the batch's first message
        self.duplicates = 0
        self.refused: list[int] = []   # indexes JetStream refused for good
        self.done: Callable[[_Ticket, BaseException | None], None] | None = done
        self.timer: asyncio.TimerHandle | None = None   # the publish_timeout

    def _end(self, error: BaseException | None) -> None:
        done, self.done = self.done, None
        if done is not None:
            if self.timer is not None:
                self.timer.cancel()
            done(self, error)

    def fail(self, error: BaseException) -> None:
        self._end(error)

    def answered(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self._end(None)


REFUSED_FOR_GOOD: Final = frozenset({10054})
"""JetStream error codes a publish cannot recover from by retrying: 10054, the message
is over the stream's ``max_msg_size``."""


def _pub_ack(data: bytes) -> dict[str, Any] | None:
    """A PubAck's JSON object; an answer that is none is an error of its own."""
    if not data:
        return None
    try:
        answer = json.loads(data)
    except ValueError:
        return {"error": {"description": "not JSON"}}
    return answer if isinstance(answer, dict) else {"error": {"description": "not an object"}}


class _Publisher:
    """Pipelined JetStream publishes on one NATS connection, PubAcks matched by token.

    ``js.publish_async`` makes a future, a semaphore slot and a random token per message;
    a batch needs one callback: each publish's reply subject is this publisher's inbox
    and a counter, and the reply handler counts the batch down.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.prefix = ""
        self.next_token = 0
        self.waiting: dict[str, _Ticket] = {}

    async def start(self) -> None:
        self.prefix = self.connection.new_inbox() + "."
        await self.connection.subscribe(self.prefix + "*", cb=self._on_reply,
                                        pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def _on_reply(self, msg: Any) -> None:
        token = msg.subject[len(self.prefix):]
        ticket = self.waiting.pop(token, None)
        if ticket is None:
            return
        data = msg.data
        # The bytes are looked at first, and the JSON read only when they may say more
        # than "stored": a PubAck of a stream named "error" is no refusal, and JetStream
        # writes "duplicate": true with a space (the counter never counted one).
        answer = _pub_ack(data) if not data or b'"error"' in data or \
            b'"duplicate"' in data else None
        if not data or (answer is not None and "error" in answer):
            if answer is not None and self._refused_for_good(answer):
                ticket.refused.append(int(token) - ticket.first)
                ticket.answered()
                return
            status = (msg.headers or {}).get("Status", "")
            ticket.fail(BridgeUnavailable(
                f"JetStream refused a publish: {data[:200]!r}" if data else
                f"no JetStream stream answered (status {status or 'none'})"))
            return
        if answer is not None and answer.get("duplicate") is True:
            ticket.duplicates += 1
        ticket.answered()

    @staticmethod
    def _refused_for_good(answer: dict[str, Any]) -> bool:
        error = answer.get("error")
        return isinstance(error, dict) and error.get("err_code") in REFUSED_FOR_GOOD

    async def publish(self, subject: str | list[str],
                      items: list[tuple[bytes, dict[str, str]]],
                      done: Callable[[_Ticket, BaseException | None], None]) -> _Ticket:
        """Publish every ``(body, headers)``; ``done(ticket, error)`` follows the last ack.

        ``subject`` is one subject for all, or a list of one per item. ``done`` may run
        before this returns (a PubAck read while a publish waited to be flushed).
        """
        ticket = _Ticket(len(items), self.next_token, done)
        publish = self.connection.publish
        prefix = self.prefix
        subjects = subject if isinstance(subject, list) else None
        for index, (body, headers) in enumerate(items):
            token = str(self.next_token)
            self.next_token += 1
            self.waiting[token] = ticket
            await publish(subject if subjects is None else subjects[index], body,
                          reply=prefix + token, headers=headers)
        return ticket

    def forget(self, tickets: set[_Ticket]) -> None:
        """Drop the waiting tokens of ``tickets`` (timed out, failed, or abandoned)."""
        for token in [t for t, held in self.waiting.items() if held in tickets]:
            del self.waiting[token]


class _Puller:
    """A durable pull consumer's messages, pulled in batches and taken in by a callback.

    nats-py's ``fetch`` waits for each message of a batch with a timeout of its own (a
    task per message); here one pull request asks for a batch, the subscription's
    callback appends what arrives, and ``fetch`` hands over what has arrived, at most one
    wait per batch. The next request leaves as soon as the previous one is used up or
    ended (JetStream's 404/408/409 status messages end a request).
    """

    def __init__(self, connection: Any, stream: str, consumer: str) -> None:
        self.connection = connection
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = ""
        self.messages: list[Any] = []
        self.outstanding = 0   # messages the current request may still bring
        self.waiter: asyncio.Future[bool] | None = None   # fetch's wait, while it waits
        self.subscription: Any = None
        self.failure: str | None = None
        self.refusals = 0   # requests in a row ended by a status at once, no message

    async def start(self) -> None:
        self.inbox = self.connection.new_inbox()
        self.subscription = await self.connection.subscribe(
            self.inbox, cb=self._on_message, pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def close(self) -> None:
        """Give back what was pulled and not handed over, then stop pulling.

        What arrived and was not fetched, and what the current request still brings
        until it ends (it expires after its wait, ``FETCH_WAIT``), is nacked at once:
        JetStream redelivers it now, not after the consumer's ``ack_wait`` (30 s by
        default; until 2026-12-05 a run that ended left such messages waiting that long).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FETCH_WAIT + 0.5
        try:
            while True:
                taken, self.messages = self.messages, []
                for msg in taken:
                    await msg.nak()
                remaining = deadline - loop.time()
                if self.outstanding <= 0 or remaining <= 0 \
                        or not self.connection.is_connected:
                    break
                waiter = self.waiter = loop.create_future()
                timer = loop.call_later(remaining, _resolve, waiter, False)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self.waiter = None
        except Exception as error:   # the connection is gone: JetStream's ack_wait it is
            log.debug("giving back pulled messages: %s", error)
        if self.subscription is not None:
            try:
                await self.subscription.unsubscribe()
            except Exception as error:   # the connection is gone: nothing to undo
                log.debug("unsubscribing the pull inbox: %s", error)

    async def _on_message(self, msg: Any) -> None:
        headers = msg.headers
        if headers and not msg.data and "Status" in headers:
            status = headers["Status"]
            if status == "100":   # idle heartbeat
                return
            description = headers.get("Description", "")
            if status == "409" and "Deleted" in description:
                self.failure = f"the JetStream consumer was deleted ({description})"
            elif status == "503":
                # nobody serves the consumer: it (or its stream) is gone, say deleted
                # while this connection was away; asking again at once would spin for
                # ever (a request and its refusal per loop iteration), with the rule
                # shown connected and never creating the consumer again
                self.failure = (f"no JetStream consumer answered on {self.subject} (status "
                                f"503: the stream or its consumer does not exist)")
            elif status != "408":   # 408: the request expired after its wait
                # 404, 409 (a leadership change, a push consumer, a limit), 400: ended at
                # once; one such end is a request to send again, a few in a row a
                # refusal that asking again would only repeat, as fast as it answers
                self.refusals += 1
                if self.refusals >= PULL_REFUSALS:
                    self.failure = (f"JetStream refused {self.refusals} pulls in a row on "
                                    f"{self.subject}: status {status} {description}".rstrip())
            self.outstanding = 0   # 404 no messages, 408 expired, 409: the request ended
        else:
            self.messages.append(msg)
            self.outstanding -= 1
            self.refusals = 0
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def fetch(self, batch: int, wait: float) -> list[Any]:
        """What has arrived (at most ``wait`` seconds for the first message)."""
        if self.failure is not None:
            raise BridgeUnavailable(self.failure)
        if self.outstanding <= 0:
            self.outstanding = batch
            await self.connection.publish(self.subject, json.dumps(
                {"batch": batch, "expires": int(wait * 1e9)}).encode(), reply=self.inbox)
        if not self.messages:
            # one future and one timer: ``wait_for`` would wrap a wait in a task of its
            # own, and cost the loop more iterations for each batch
            loop = asyncio.get_running_loop()
            waiter = self.waiter = loop.create_future()
            timer = loop.call_later(wait + 1.0, _resolve, waiter, False)
            try:
                if not await waiter:   # the request was lost (a reconnect): ask again
                    self.outstanding = 0
            finally:
                timer.cancel()
                self.waiter = None
        taken, self.messages = self.messages, []
        return taken


def subject_covers(taken: str, published: str) -> bool:
    """True when every subject matching ``published`` matches the filter ``taken``."""
    a, b = taken.split("."), published.split(".")
    for index, token in enumerate(a):
        if token == ">":
            return len(b) > index
        if index >= len(b) or b[index] == ">" or (token != "*" and token != b[index]) or (
                token == "*" and b[index] == ">"):
            return False
    return len(a) == len(b)


def _check_consumer(rule: ImportRule, config: Any) -> None:
    """Refuse a durable consumer made (or changed) outside the bridge that it cannot use.

    A push consumer answers no pull; one without explicit acks settles a message when it
    is delivered, before the broker confirmed it (lost if the bridge fails in between).

    Raises:
        BridgeUnavailable: naming the consumer, what is wrong and the way out.
    """
    from nats.js.api import AckPolicy

    if config.deliver_subject:
        problem = f"is a push consumer (deliver_subject {config.deliver_subject!r})"
    elif config.ack_policy not in (None, AckPolicy.EXPLICIT):
        problem = f"acks with policy {getattr(config.ack_policy, 'value', config.ack_policy)!r}"
    else:
        return
    raise BridgeUnavailable(
        f"JetStream consumer {rule.durable_name!r} of stream {rule.stream!r} {problem}, made "
        f"outside the bridge: the import needs a pull consumer with explicit acks; delete it "
        f"(the rule makes its own) or give the rule another durable = ...")


async def _update_consumer(connection: Any, rule: ImportRule, config: Any) -> None:
    """Give an existing durable consumer the rule's filter, ack wait and in-flight bound.

    The rule file is what the import runs by: a consumer made by an earlier run (or
    outside) keeps its position, and takes what the file says now (JetStream edits these
    three in place). Without this, a file edited to import one subject went on importing
    them all. The update sends the consumer's own configuration back as JetStream gave
    it, with those three changed: what nats-py does not model (``max_batch``, say) stays.

    Raises:
        BridgeUnavailable: JetStream refused the update (naming the way out).
    """
    wanted = {"filter_subject": rule.filter_subject, "ack_wait": rule.ack_wait,
              "max_ack_pending": rule.max_in_flight}
    current = {"filter_subject": config.filter_subject or None,
               "ack_wait": config.ack_wait, "max_ack_pending": config.max_ack_pending}
    several = getattr(config, "filter_subjects", None)
    if several and rule.filter_subject is None:
        # filters of a consumer made outside the bridge (NATS 2.10's several): kept,
        # a rule without filter_subject does not ask for them to go
        del wanted["filter_subject"], current["filter_subject"]
    differ = [key for key, value in wanted.items() if current[key] != value and not (
        key == "ack_wait" and current[key] is not None and abs(current[key] - value) < 1e-3)]
    if not differ:
        return
    told = ", ".join(f"{key} {current[key]!r} -> {wanted[key]!r}" for key in differ)
    name = f"{rule.stream}.{rule.durable_name}"
    reply = await connection.request(f"$JS.API.CONSUMER.INFO.{name}", b"", timeout=5.0)
    raw = json.loads(reply.data).get("config") or {}
    if "filter_subject" in wanted:
        raw.pop("filter_subjects", None)
        raw.pop("filter_subject", None)
        if rule.filter_subject is not None:
            raw["filter_subject"] = rule.filter_subject
    raw["ack_wait"] = round(rule.ack_wait * 1e9)
    raw["max_ack_pending"] = rule.max_in_flight
    reply = await connection.request(
        f"$JS.API.CONSUMER.CREATE.{name}", json.dumps(
            {"stream_name": rule.stream, "config": raw, "action": "update"}).encode(),
        timeout=5.0)
    error = json.loads(reply.data).get("error")
    if error:
        raise BridgeUnavailable(
            f"JetStream consumer {rule.durable_name!r} of stream {rule.stream!r} has other "
            f"settings than the rule's ({told}) and JetStream refused to update it: "
            f"{error.get('description', error)}; delete it (the rule makes its own) or give "
            f"the rule another durable = ...")
    log.warning("bridge import %s: JetStream consumer %s of stream %s updated to the rule's "
                "settings: %s", rule.name, rule.durable_name, rule.stream, told)


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


class Bridge:
    """The rules of one rule file, run beside a broker server.

    ``host(server)`` runs them in the server's own thread (what ``fastfanout serve
    --bridge`` does: no thread switch between the server and the bridge, see
    ``fastfanout.server.guests``); ``start()`` in a thread of their own.

    Args:
        rules: the checked rule file (``load_rules``).
        endpoint: the local broker's command endpoint.
        identity: this broker's name in ``Nats-Msg-Id`` when the rules give none.
        client_options: keyword arguments of every local ``fastfanout.aio`` client.
        switch_interval: the GIL switch interval (seconds) ``start`` sets for the whole
            process when it is longer (``SWITCH_INTERVAL``); None leaves it alone.
        durable: create the bridge's own queues (export queues, dead-letter queues)
            durable; False for a broker without a data directory, which has no durable
            queue (and keeps nothing across a restart anyway).
    """

    def __init__(self, rules: BridgeRules, endpoint: str, *, identity: str | None = None,
                 client_options: dict[str, Any] | None = None,
                 switch_interval: float | None = SWITCH_INTERVAL, durable: bool = True
                 ) -> None:
        reason = bridge_unavailable(rules)
        if reason:
            raise BridgeUnavailable(reason)
        self.rules = rules
        self.endpoint = endpoint
        self.identity = rules.identity or identity or socket.gethostname()
        self.client_options = {"timeout": 10.0, **(client_options or {})}
        self.switch_interval = switch_interval
        self.durable = durable
        self._stats = {f"export:{rule.name}": RuleStats() for rule in rules.export}
        self._stats.update({f"import:{rule.name}": RuleStats() for rule in rules.import_})
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._nats: Any = None
        self._publisher: _Publisher | None = None
        self._nats_lock: asyncio.Lock | None = None
        # the last connect that failed: (monotonic time, its error), shared by the rules
        self._connect_failed: tuple[float, Exception] | None = None
        # import rule -> (JetStream context, stream, durable consumer, the stream's
        # creation time), for the lag and the ack floor
        self._consumers: dict[str, tuple[Any, str, str, Any]] = {}
        # import rule -> (its stream's creation time, the consumer's ack floor): where a
        # consumer deleted under the rule is made again from
        self._floors: dict[str, tuple[Any, int]] = {}
        self._settings_told: set[str] = set()   # export rules warned of their queue's
        self._unrouted_told: dict[str, float] = {}   # import rule -> next warning, monotonic
        self._hosted: SteppedLoop | None = None   # host(): the loop the server steps
        self._done = threading.Event()            # host(): the rules have stopped
        self._task: asyncio.Task[None] | None = None   # host(): the rules' main task

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Bridge:
        """Run the rules in a new thread (``fastfanout-bridge``); returns self.

        With ``switch_interval`` set, the process's GIL switch interval is lowered to it
        (never raised): the bridge's thread and the server's hand every message to each
        other, and each hand-off may otherwise wait for the holder's whole interval.
        """
        if self.switch_interval is not None and \
                sys.getswitchinterval() > self.switch_interval:
            sys.setswitchinterval(self.switch_interval)
        self._thread = threading.Thread(target=self._run, name="fastfanout-bridge",
                                        daemon=True)
        self._thread.start()
        self._started.wait(STOP_DEADLINE)
        return self

    def host(self, server: Host) -> Bridge:
        """Run the rules in ``server``'s thread, a guest of its loop; returns self.

        Call it before the server's loop runs (``Server.host``). The rules start with
        the loop's first round.
        """
        loop = SteppedLoop()
        self._hosted = self._loop = loop
        self._stopping = asyncio.Event()
        self._task = loop.create_task(self._main(), name="fastfanout-bridge")
        self._task.add_done_callback(lambda _: self._done.set())
        server.host(loop)
        return self

    def stop(self, timeout: float = STOP_DEADLINE) -> None:
        """Stop every rule, close the connections, join the thread (``timeout`` seconds).

        Unacked messages are safe: local leases are released when the bridge's sessions
        end, and JetStream redelivers what was not acked after ``ack_wait``. A hosted
        bridge stops while its server still steps it (from another thread: this waits
        for it); once the server's loop has ended, this runs what is left of it here.
        """
        if self._hosted is not None:
            self._stop_hosted(self._hosted, timeout)
            return
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:   # the loop closed meanwhile
                pass
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the bridge thread did not stop within %.1f s", timeout)
            self._thread = None

    def _stop_hosted(self, loop: SteppedLoop, timeout: float) -> None:
        """``stop`` of a bridge that ``host`` gave to a server's loop."""
        if loop.is_closed():
            return
        stopping = self._stopping
        assert stopping is not None
        here = loop.stepper is None or loop.stepper == threading.get_ident()
        if not self._done.is_set():
            if not here:   # the server steps it: ask, and wait for the rules to end
                loop.call_soon_threadsafe(stopping.set)
                if not self._done.wait(timeout):
                    log.warning("the bridge did not stop within %.1f s", timeout)
                return     # the loop's thread closes it (its own stop() call)
            stopping.set()
            assert self._task is not None
            loop.run_until_complete(asyncio.wait({self._task}, timeout=timeout))
        if here:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stats(self) -> dict[str, dict[str, float]]:
        """Each rule's counters (``export:NAME`` / ``import:NAME`` -> ``COUNTERS``).

        ``connected`` is 0 while the NATS connection is away (nats-py reconnecting): an
        idle rule sees no failure of its own then, and would be shown connected.
        """
        connection = self._nats
        away = connection is None or not connection.is_connected
        stats = {name: dict(rule.values) for name, rule in self._stats.items()}
        if away:
            for values in stats.values():
                values["connected"] = 0
        return stats

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:   # logged, never raised into the server
            log.exception("the bridge stopped on an unexpected error")
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._hosted is None:
            self._stopping = asyncio.Event()
        assert self._stopping is not None
        self._nats_lock = asyncio.Lock()
        self._started.set()
        tasks = [asyncio.create_task(self._keep(self._export, rule),
                                     name=f"bridge-export-{rule.name}")
                 for rule in self.rules.export]
        tasks += [asyncio.create_task(self._keep(self._import, rule),
                                      name=f"bridge-import-{rule.name}")
                  for rule in self.rules.import_]
        tasks.append(asyncio.create_task(self._sampler(), name="bridge-stats"))
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_DEADLINE)
        if self._nats is not None:
            try:
                await asyncio.wait_for(self._nats.close(), STOP_DEADLINE)
            except Exception as error:   # closing: nothing left to save
                log.debug("closing the NATS connection: %s", error)

    # -- NATS --------------------------------------------------------------------------

    async def _connection(self) -> tuple[Any, _Publisher]:
        """The shared NATS connection and publisher, connecting (once) when needed."""
        import nats

        assert self._nats_lock is not None
        asked = time.monotonic()
        async with self._nats_lock:
            if self._nats is not None and not self._nats.is_closed:
                assert self._publisher is not None
                return self._nats, self._publisher
            failed = self._connect_failed
            if failed is not None and failed[0] >= asked:
                # another rule's connect failed while this one waited for it: the same
                # answer now, rather than a second wait in turn (each rule backs off)
                raise failed[1]
            rules = self.rules
            options: dict[str, Any] = {}
            if rules.user is not None:
                options.update(user=rules.user, password=rules.password)
            if rules.token is not None:
                options["token"] = rules.token
            if rules.credentials is not None:
                options["user_credentials"] = rules.credentials
            context = tls_context(rules)
            if context is not None:
                options["tls"] = context

            async def quiet(error: Exception) -> None:
                log.debug("NATS: %s", error)

            async def disconnected() -> None:
                stopping = self._stopping
                if stopping is not None and stopping.is_set():
                    return   # the bridge's own close at its stop
                # counted for every rule: an idle one sees no failure of its own
                for stats in self._stats.values():
                    stats.values["errors"] += 1
                log.warning("NATS disconnected; the bridge buffers and retries")

            async def reconnected() -> None:
                log.info("NATS reconnected")

            # Unlimited reconnects make nats-py's first connect wait forever for a server:
            # bounded here, so a rule counts the failure and backs off.
            try:
                connection = await asyncio.wait_for(nats.connect(
                    rules.servers, connect_timeout=rules.connect_timeout,
                    allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25, error_cb=quiet, disconnected_cb=disconnected,
                    reconnected_cb=reconnected, name=f"fastfanout-bridge {self.identity}",
                    **options), rules.connect_timeout * (len(rules.servers) + 1))
            except TimeoutError:
                error = BridgeUnavailable(
                    f"no NATS server of {', '.join(rules.servers)} answered within "
                    f"{rules.connect_timeout * (len(rules.servers) + 1):g} s")
                self._connect_failed = (time.monotonic(), error)
                raise error from None
            except Exception as error:
                self._connect_failed = (time.monotonic(), error)
                raise
            self._connect_failed = None
            publisher = _Publisher(connection)
            await publisher.start()
            self._nats, self._publisher = connection, publisher
            return connection, publisher

    # -- the rules ---------------------------------------------------------------------

    async def _keep(self, run: Callable[[Any, RuleStats, _Backoff], Any], rule: Any) -> None:
        """Run a rule until the bridge stops, backing off and retrying after failures."""
        kind = "export" if isinstance(rule, ExportRule) else "import"
        stats = self._stats[f"{kind}:{rule.name}"]
        backoff = _Backoff(self.rules.max_backoff)
        while True:
            try:
                await run(rule, stats, backoff)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                stats.values["errors"] += 1
                stats.values["retries"] += 1
                log.warning("bridge %s %s: %s: %s (retrying)", kind, rule.name,
                            type(error).__name__, error)
            finally:
                stats.values["connected"] = 0
                stats.values["in_flight"] = 0
            await asyncio.sleep(backoff.next())

    async def _client(self) -> Any:
        from fastfanout.aio import connect

        return await connect(self.endpoint, **self.client_options)

    async def _export(self, rule: ExportRule, stats: RuleStats, backoff: _Backoff) -> None:
        """One run of an export rule: until a failure ends it (the caller retries)."""
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        client = await self._client()
        try:
            await self._export_queue(client, rule, self.durable)
            connection, publisher = await self._connection()
            # create_stream = false: no stream request at all (a user allowed to publish
            # only may have no right to them)
            js = connection.jetstream(timeout=rule.publish_timeout)
            try:
                info = await js.stream_info(rule.stream) if rule.create_stream else None
            except NotFoundError:
                await js.add_stream(StreamConfig(
                    name=rule.stream, subjects=[rule.stream_subject],
                    storage=StorageType.FILE, num_replicas=rule.replicas,
                    duplicate_window=rule.duplicate_window))
            else:
                subjects = [] if info is None else list(info.config.subjects or [])
                if info is not None and not any(
                        subject_covers(taken, rule.stream_subject) for taken in subjects):
                    # each publish would be refused with a bare 503, for ever
                    raise BridgeUnavailable(
                        f"JetStream stream {rule.stream!r} takes subjects {subjects}, not "
                        f"{rule.stream_subject!r} that the rule publishes on (changed "
                        f"outside the bridge?): add it to the stream, or give the rule a "
                        f"subject = ... the stream takes")
            stats.values["connected"] = 1
            await self._pump(client, publisher, rule, stats, backoff)
        finally:
            # Ending the session releases every lease not acked: those messages are
            # published again by the next run (same Nats-Msg-Id).
            await client.close(timeout=2.0)

    async def _export_queue(self, client: Any, rule: ExportRule, durable: bool) -> None:
        """Create the rule's durable queue, its subscription and a plain topic if missing.

        A queue there already keeps its settings (there is no changing them); when the
        rule's say otherwise (its file edited since the queue was made), a warning names
        each, once per start of the bridge.
        """
        queue = rule.queue_name
        if not rule.pattern and rule.topic not in await client.list_topics():
            await client.create_topic(rule.topic, fifo=rule.fifo)
        queues = await client.list_queues()
        if queue + ".dlq" not in queues:
            await client.create_queue(queue + ".dlq", durable=durable, fifo=rule.fifo,
                                      max_message_size=256 * 1024 * 1024)
        settings: dict[str, Any] = {
            "fifo": rule.fifo, "visibility_timeout": rule.lease,
            "dead_letter_queue": queue + ".dlq", "max_messages": rule.max_messages,
            "max_bytes": rule.max_bytes, "overflow": rule.overflow,
            "max_priority": 0 if rule.fifo else 255, "max_message_size": 256 * 1024 * 1024}
        if queue not in queues:
            await client.create_queue(queue, durable=durable, **settings)
        elif rule.name not in self._settings_told:
            current = await client.queue_settings(queue)
            differ = [f"{key} {getattr(current, key)!r} (the rule: {value!r})"
                      for key, value in settings.items() if getattr(current, key) != value]
            if differ:
                log.warning("bridge export %s: its queue %s exists with other settings than "
                            "the rule's, and keeps them: %s; to apply the rule's, stop the "
                            "broker's publishers, let the queue drain, delete it (fastfanout "
                            "delete-queue %s) and restart the broker", rule.name, queue,
                            ", ".join(differ), queue)
            self._settings_told.add(rule.name)
        if (rule.topic, queue) not in (await client.list_subscriptions()).values():
            await client.subscribe(rule.topic, queue)

    async def _pump(self, client: Any, publisher: _Publisher, rule: ExportRule,
                    stats: RuleStats, backoff: _Backoff) -> None:
        values = stats.values
        identity = self.identity
        subject = rule.subject_name
        pattern = rule.pattern
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[None] = loop.create_future()
        pending: set[_Ticket] = set()   # published, not yet settled
        timeout = rule.publish_timeout

        def settle(ticket: _Ticket, error: BaseException | None, batch: list[Any]) -> None:
            # Called by the PubAck callback that answered the batch's last publish (or
            # by a failure, or the timer): settles the batch in that same iteration.
            pending.discard(ticket)
            if error is not None:
                publisher.forget({ticket})
                if not failed.done():
                    failed.set_exception(error)
                return
            refused = set(ticket.refused)
            for index, message in enumerate(batch):
                if index in refused:   # over the stream's max_msg_size: dead-lettered
                    message.term()
                else:
                    message.ack()
            if refused:
                values["dead_lettered"] += len(refused)
                log.warning("bridge export %s: JetStream refused %d messages for good (over "
                            "the stream's max_msg_size): dead-lettered to %s.dlq",
                            rule.name, len(refused), rule.queue_name)
            values["messages"] += len(batch) - len(refused)
            values["duplicates"] += ticket.duplicates
            values["in_flight"] -= len(batch)
            backoff.reset()

        def expire(ticket: _Ticket) -> None:
            ticket.timer = None
            ticket.fail(BridgeUnavailable(f"no PubAck within {timeout} s"))

        limit = publisher.connection.max_payload
        room = limit - 65536   # below this a body fits with any headers: no sum needed

        async def feed() -> None:
            async for batch in client.consume_batches(
                    rule.queue_name, prefetch=rule.max_in_flight,
                    visibility_timeout=rule.lease):
                if failed.done():
                    return
                items = [(message.body, message_headers(identity, message))
                         for message in batch]
                if any(len(body) > room for body, _ in items):
                    batch, items = self._too_large(rule, values, batch, items, limit)
                    if not batch:
                        continue
                subjects: list[str] = []
                if pattern:
                    # each on <prefix>.<the topic it was published on>
                    batch, items, subjects = self._subjects(rule, values, batch, items)
                    if not batch:
                        continue
                values["in_flight"] += len(batch)
                ticket = await publisher.publish(subjects if pattern else subject, items,
                                                 functools.partial(settle, batch=batch))
                if ticket.done is not None:   # not answered yet
                    pending.add(ticket)
                    ticket.timer = loop.call_later(timeout, expire, ticket)

        feeder = asyncio.create_task(feed())
        try:
            await asyncio.wait([feeder, failed], return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                failed.result()
            feeder.result()   # the consumer ended: the broker went away
            raise BridgeUnavailable(f"the local consumer of {rule.queue_name} ended")
        finally:
            feeder.cancel()
            for ticket in pending:   # late PubAcks settle nothing: the session ends
                ticket.done = None
                if ticket.timer is not None:
                    ticket.timer.cancel()
            publisher.forget(pending)
            if not failed.done():
                failed.cancel()

    @staticmethod
    def _too_large(rule: ExportRule, values: dict[str, float], batch: list[Any],
                   items: list[tuple[bytes, dict[str, str]]], limit: int
                   ) -> tuple[list[Any], list[tuple[bytes, dict[str, str]]]]:
        """Dead-letter the messages NATS cannot carry (over its ``max_payload``)."""
        kept: list[Any] = []
        kept_items: list[tuple[bytes, dict[str, str]]] = []
        for message, (body, headers) in zip(batch, items, strict=True):
            size = len(body) + 12 + sum(len(k) + len(v) + 4 for k, v in headers.items())
            if size <= limit:
                kept.append(message)
                kept_items.append((body, headers))
                continue
            message.term()   # to the export queue's dead-letter queue, reason rejected
            values["dead_lettered"] += 1
            log.warning("bridge export %s: message %d is %d bytes with its headers, over "
                        "the NATS server's max_payload %d: dead-lettered to %s.dlq",
                        rule.name, message.id, size, limit, rule.queue_name)
        return kept, kept_items

    @staticmethod
    def _subjects(rule: ExportRule, values: dict[str, float], batch: list[Any],
                  items: list[tuple[bytes, dict[str, str]]]
                  ) -> tuple[list[Any], list[tuple[bytes, dict[str, str]]], list[str]]:
        """A pattern rule's subject per message; dead-letter a message that has none.

        A message has none when its topic is not known (it was sent to the queue, not
        published) or has an empty token, which no NATS subject has.
        """
        kept: list[Any] = []
        kept_items: list[tuple[bytes, dict[str, str]]] = []
        subjects: list[str] = []
        for message, item in zip(batch, items, strict=True):
            subject = rule.subject_for(message.topic)
            if subject is not None:
                kept.append(message)
                kept_items.append(item)
                subjects.append(subject)
                continue
            message.term()   # to the export queue's dead-letter queue, reason rejected
            values["dead_lettered"] += 1
            log.warning("bridge export %s: message %d has no topic to publish on (topic %r): "
                        "dead-lettered to %s.dlq", rule.name, message.id, message.topic,
                        rule.queue_name)
        return kept, kept_items, subjects

    async def _import(self, rule: ImportRule, stats: RuleStats, backoff: _Backoff) -> None:
        """One run of an import rule: until a failure ends it (the caller retries)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        values = stats.values
        client = await self._client()
        puller = None
        try:
            await self._import_targets(client, rule, self.durable)
            connection, _ = await self._connection()
            js = connection.jetstream(timeout=5.0)
            # the stream's creation time tells a stream deleted and made again (its
            # sequences start over) from the one whose acked sequences the rule knows
            created = (await js.stream_info(rule.stream)).created
            try:
                info = await js.consumer_info(rule.stream, rule.durable_name)
            except NotFoundError:
                known = self._floors.get(rule.name)
                start = known[1] + 1 if known is not None and known[0] == created and \
                    known[1] > 0 else None
                await js.add_consumer(rule.stream, ConsumerConfig(
                    durable_name=rule.durable_name, ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL if start is None else
                    DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                    ack_wait=rule.ack_wait, max_ack_pending=rule.max_in_flight,
                    filter_subject=rule.filter_subject))
                if start is not None:
                    # not from the stream's start: everything up to the ack floor was
                    # confirmed here, and past the dedup window would come in again
                    log.warning("bridge import %s: JetStream consumer %s of stream %s was "
                                "gone; made again from stream sequence %d, after the last "
                                "one acked", rule.name, rule.durable_name, rule.stream, start)
            else:
                _check_consumer(rule, info.config)
                await _update_consumer(connection, rule, info.config)
                if info.ack_floor is not None:
                    self._floors[rule.name] = (created, info.ack_floor.stream_seq)
            puller = _Puller(connection, rule.stream, rule.durable_name)
            await puller.start()
            self._consumers[rule.name] = (js, rule.stream, rule.durable_name, created)
            values["connected"] = 1
            while True:
                msgs = await puller.fetch(rule.batch, FETCH_WAIT)
                if not msgs:
                    continue
                values["in_flight"] = len(msgs)
                await self._deliver(client, rule, values, msgs)
                values["in_flight"] = 0
                backoff.reset()
        finally:
            self._consumers.pop(rule.name, None)
            if puller is not None:
                await puller.close()
            await client.close(timeout=2.0)

    @staticmethod
    async def _import_targets(client: Any, rule: ImportRule, durable: bool) -> None:
        """Create the rule's target and dead-letter queue when missing (default settings)."""
        queues = await client.list_queues()
        if rule.topic is not None and rule.topic not in await client.list_topics():
            await client.create_topic(rule.topic)
        if rule.queue is not None and rule.queue not in queues:
            await client.create_queue(rule.queue)
        if rule.dead_letter_name not in queues:
            await client.create_queue(rule.dead_letter_name, durable=durable,
                                      max_message_size=256 * 1024 * 1024)

    async def _tell_unrouted(self, client: Any, rule: ImportRule, count: int) -> None:
        """Warn when an import's topic has no subscription (at most every ``UNROUTED_TELL``).

        A topic publish that reaches no queue is confirmed (and so acked on JetStream) as
        any publish to such a topic is: the messages reach only the topic's stream
        listeners. Starting the import before subscribing B's queues lost the stream's
        backlog without a word; a batch that reached no queue makes the rule look at the
        topic's subscriptions (never per message).
        """
        now = time.monotonic()
        if now < self._unrouted_told.get(rule.name, 0.0):
            return
        self._unrouted_told[rule.name] = now + UNROUTED_TELL
        topic = rule.topic or ""
        subscribed = [queue for pattern, queue in (await client.list_subscriptions()).values()
                      if subjects_overlap(pattern, topic)]
        if not subscribed:
            log.warning("bridge import %s: topic %s has no subscription: the %d messages "
                        "just imported (acked on JetStream) reached no queue; subscribe a "
                        "queue to %s (fastfanout subscribe %s QUEUE) before the import "
                        "runs to keep them", rule.name, topic, count, topic, topic)

    async def _enqueue(self, client: Any, rule: ImportRule, entries: list[PublishEntry]
                       ) -> Any:
        if rule.queue is not None:
            return await client.send_batch(rule.queue, entries)
        return await client.publish_batch(rule.topic, entries)

    async def _deliver(self, client: Any, rule: ImportRule, values: dict[str, float],
                       msgs: list[Any]) -> None:
        """Enqueue a fetched batch locally, in requests of ``SEND_BATCH_BYTES`` at most.

        A batch of large messages (500 of 150 KB) made one request over the broker's
        ``max_request_bytes``, refused whole, nacked and fetched again the same way, for
        ever. A part that ends with messages nacked for now has the rest nacked after it,
        so that order is kept.
        """
        part: list[Any] = []
        size = 0
        parts: list[list[Any]] = []
        for msg in msgs:
            weight = len(msg.data) + SEND_ENTRY_BYTES
            if part and size + weight > SEND_BATCH_BYTES:
                parts.append(part)
                part, size = [], 0
            part.append(msg)
            size += weight
        parts.append(part)
        for index, part in enumerate(parts):
            try:
                whole = await self._deliver_part(client, rule, values, part)
            except Exception as error:
                rest = [msg for later in parts[index + 1:] for msg in later]
                if rest:
                    await self._nak(rule, values, rest, error)
                raise
            if not whole:
                rest = [msg for later in parts[index + 1:] for msg in later]
                if rest:
                    await self._nak(rule, values, rest, BridgeUnavailable(
                        "an earlier message of the batch was refused for now"))
                return

    async def _deliver_part(self, client: Any, rule: ImportRule, values: dict[str, float],
                            msgs: list[Any]) -> bool:
        """Enqueue messages locally, then settle each on JetStream (False: some nacked)."""
        entries: list[PublishEntry | None] = []
        for msg in msgs:
            try:
                entries.append(_entry(msg, rule.stream))
            except InvalidArgument:
                entries.append(None)
        if all(entry is not None for entry in entries):
            try:
                results = await self._enqueue(client, rule, entries)  # type: ignore[arg-type]
            except FOR_NOW as error:
                if len(msgs) == 1:
                    await self._nak(rule, values, msgs, error)
                    return False
                # One at a time below: what fits goes in (a batch larger than the
                # room left would never fit whole), the rest is nacked in order.
            except PERMANENT:
                pass   # one at a time below: only the bad ones go to the DLQ
            except RequestTooLarge:
                pass   # a broker with a small max_request_bytes: one at a time below
            except Exception as error:   # the broker went away, the target was deleted
                await self._nak(rule, values, msgs, error)
                raise
            else:
                values["duplicates"] += sum(1 for result in results if result.duplicate)
                for msg in msgs:
                    await msg.ack()
                values["messages"] += len(msgs)
                if rule.topic is not None and not any(r.deliveries for r in results):
                    await self._tell_unrouted(client, rule, len(msgs))
                return True
        for index, (msg, entry) in enumerate(zip(msgs, entries, strict=True)):
            refusal = await self._deliver_one(client, rule, values, msg, entry)
            if refusal is not None:   # the rest waits too, so that order is kept
                await self._nak(rule, values, msgs[index:], refusal)
                if isinstance(refusal, NotFound):
                    # the dead-letter queue was deleted: the rule's next run makes it
                    # again (nacking alone would refuse the message the same way for ever)
                    raise BridgeUnavailable(f"the dead-letter queue {rule.dead_letter_name}"
                                            f" is gone: {refusal}") from refusal
                return False
        return True

    async def _deliver_one(self, client: Any, rule: ImportRule, values: dict[str, float],
                           msg: Any, entry: PublishEntry | None) -> BaseException | None:
        """Enqueue one message, or dead-letter it; the refusal for now, if any."""
        reason = "its headers are malformed"
        if entry is not None:
            try:
                results = await self._enqueue(client, rule, [entry])
            except FOR_NOW as error:
                return error
            except (*PERMANENT, RequestTooLarge) as error:
                reason = f"{error.code}: {error}"
            except Exception as error:
                await self._nak(rule, values, [msg], error)
                raise
            else:
                values["duplicates"] += results[0].duplicate
                await msg.ack()
                values["messages"] += 1
                return None
        dedup_id = import_dedup_id(msg, rule.stream)
        try:
            await client.send(rule.dead_letter_name, msg.data, dedup_id=dedup_id, attributes={
                "bridge_rule": rule.name, "bridge_error": reason[:1000],
                "nats_subject": msg.subject, "nats_stream": rule.stream,
                "nats_sequence": msg.metadata.sequence.stream})
        except FastFanoutError as error:
            return error   # not even the dead-letter queue takes it: JetStream keeps it
        await msg.term()
        values["dead_lettered"] += 1
        log.warning("bridge import %s: message %s refused for good (%s): dead-lettered to "
                    "%s", rule.name, dedup_id, reason, rule.dead_letter_name)
        return None

    @staticmethod
    async def _nak(rule: ImportRule, values: dict[str, float], msgs: list[Any],
                   error: BaseException) -> None:
        values["retries"] += 1
        log.info("bridge import %s: the broker refused %d messages for now (%s); "
                 "JetStream redelivers them in %.1f s", rule.name, len(msgs), error,
                 rule.nak_delay)
        for msg in msgs:
            await msg.nak(delay=rule.nak_delay)

    # -- stats -------------------------------------------------------------------------

    async def _sampler(self) -> None:
        """Every ``stats_interval``: each rule's rate, and its lag from either side."""
        client: Any = None
        try:
            while True:
                await asyncio.sleep(self.rules.stats_interval)
                for stats in self._stats.values():
                    stats.sample()
                try:
                    if client is None:
                        client = await self._client()
                    await self._sample_lag(client)
                except asyncio.CancelledError:
                    raise
                except Exception as error:   # a sample missed: the next one tries again
                    log.debug("bridge stats: %s", error)
                    if client is not None:
                        await client.close(timeout=1.0)
                        client = None
        finally:
            if client is not None:
                await client.close(timeout=1.0)

    async def _sample_lag(self, client: Any) -> None:
        queues = (await client.stats()).queues
        for rule in self.rules.export:
            queue = queues.get(rule.queue_name)
            if queue is not None:
                self._stats[f"export:{rule.name}"].values["lag"] = queue.messages
        for name, (js, stream, durable, created) in list(self._consumers.items()):
            info = await js.consumer_info(stream, durable)
            self._stats[f"import:{name}"].values["lag"] = info.num_pending
            if info.ack_floor is not None and name in self._consumers:
                self._floors[name] = (created, info.ack_floor.stream_seq)
