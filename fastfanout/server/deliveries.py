"""The server's delivery side: receive and long polls, push consumers, settling.

``Deliveries`` is a part of ``fastfanout.server.loop.Server``, composed, not mixed in: the
server owns the sockets, the sessions and the loop, and hands each leasing and settling
request to it (``handlers()``), calls ``deliver()`` at the end of a round, and tells it
when a session ends (``end_session``). It reaches the server only through the three
callables it is given (send, reply, error) and the broker through its ``ServerPort``.

A push leases up to the consumer's credit (at most ``push_batch``) in one native call
(``ServerPort.receive_push``) that writes the delivery frame straight into a local
session's ring when it has room — no frame object, no copy — or returns it to be sent.
Either way the session keeps the receipts (8 bytes a message, never the bodies) until
the leases have surely ended, so a vanished client's leases can be given back at once.
A push to a local session is leased only when its ring has room for a push now, and is
never larger than a quarter of the ring (``LocalSessions.push_target``): a consumer whose
credit is worth more gets several pushes in a row, each through the ring, as it reads,
instead of one sent around the ring over the socket, and no leased message waits in the
broker for room with its lease running. A push cut short so, or at ``push_batch``,
leaves the deliveries dirty: the next round pushes again at once (or, without room,
when the reader rings).

Credit is the broker's own count (RabbitMQ's ``basic.qos``): each consumer has an owner
tag in the store (``ServerPort.open_owner(session, prefetch)``), every lease pushed to it
carries the tag, and the store counts them until they end, however they end — acked
through the consumer or by receipt, nacked, extended to 0, terminated, expired, purged,
released. A push leases at most ``prefetch`` minus that count, in C, so the push and
ack paths do no per-message Python work for it. Every round offers each consumer a push
(the native call returns at once without credit); the loop wakes when a request comes
or a lease or delay ends. The clients' CREDIT (and SETTLE's credit frame) are accepted
and ignored. Every settle passes the session's tag, so a receipt of another session's
delivery is ``stale_receipt`` and changes nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from fastfanout._ext.shmring import WROTE_WAKE, SharedRing
from fastfanout.broker.embedded import Broker, ServerPort
from fastfanout.errors import (
    FastFanoutError,
    InvalidArgument,
    LimitExceeded,
    MalformedFrame,
    NotFound,
    StaleReceipt,
)
from fastfanout.server.local_sessions import LocalSessions
from fastfanout.server.requests import arguments, frame
from fastfanout.server.sessions import Consumer, Session, Waiter
from fastfanout.settings import MAX_RECEIVE_BATCH, MAX_VISIBILITY_TIMEOUT, finite, seconds_to_us
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status

__all__ = ["Deliveries"]


Send = Callable[[Session, int, int, list[bytes]], bool]
"""The server's send: (session, status, request id, payload frames) -> sent or queued."""
Reply = Callable[[Session, int, list[bytes]], None]
"""The server's reply to a request: (session, request id, payload frames)."""
Fail = Callable[[Session, int, BaseException], None]
"""The server's error answer to a request: (session, request id, error)."""
Handler = Callable[[Session, int, list[bytes]], "list[bytes] | None"]
"""A request handler: (session, request id, payload frames) -> reply frames, or None
when the reply comes later (a long poll) or never (a SETTLE that succeeded)."""

DEFAULT_MAX_CONSUMERS = 10_000
"""Default ``max_consumers``: push consumers one session may have open."""
DEFAULT_MAX_LONG_POLLS = 1000
"""Default ``max_long_polls``: RECEIVEs of one session waiting for messages at once
(each costs a lease attempt per round while it waits: 20,000 cost ~50 ms a round)."""
EMPTY_DELIVERY = b"FFB1\x00\x00\x00\x00"
RECEIVE_NAMES = frozenset({"queue", "max_messages", "wait", "visibility_timeout"})
"""The named arguments of RECEIVE; another name is ``invalid_argument``."""
CONSUME_NAMES = frozenset({"queue", "prefetch", "visibility_timeout"})
"""The named arguments of CONSUME; another name is ``invalid_argument``."""


def _known_names(operation: str, kwargs: dict[str, object], names: frozenset[str]) -> None:
    """Refuse a named argument ``operation`` does not take (``invalid_argument``).

    Until 2026-12-05 such a name was ignored: a typo such as ``max_mesages`` received one
    message, as if the argument had not been given.
    """
    unknown = [name for name in kwargs if name not in names]
    if unknown:
        raise InvalidArgument(
            f"{operation} has no argument {unknown[0]!r:.80}; it takes "
            f"{', '.join(sorted(names))}")
"""A delivery frame of no message: the answer to a long poll that ends empty."""


class Deliveries:
    """Leasing, pushing and settling for ``Server`` (see the module).

    Args:
        broker: the server's broker (queue settings, nack/extend/term by receipt).
        port: its ``ServerPort`` (the frame and owner calls).
        local: the server's local-channel sessions (rings and bells).
        counters: the server's counters (``pushes``, ``pushed_messages``).
        push_batch: the most messages one push leases.
        send, reply, error: how to answer on a session (the server's own).
        max_consumers: push consumers one session may have open; a CONSUME past it is
            refused (``LimitExceeded``, counted in ``consumers_refused``).
        max_long_polls: RECEIVEs of one session that may wait for messages at once; one
            more that would wait is refused (``LimitExceeded``, ``long_polls_refused``).
            Every round tries each consumer and each waiting receive: without these a
            single client could slow the broker for every other one.
    """

    def __init__(self, broker: Broker, port: ServerPort, local: LocalSessions,
                 counters: Counter[str], push_batch: int, *, send: Send, reply: Reply,
                 error: Fail, max_consumers: int = DEFAULT_MAX_CONSUMERS,
                 max_long_polls: int = DEFAULT_MAX_LONG_POLLS) -> None:
        self._max_consumers = max_consumers
        self._max_long_polls = max_long_polls
        self.broker = broker
        self._port = port
        self._local = local
        self.counters = counters
        self._push_batch = push_batch
        self._send = send
        self._reply = reply
        self._error = error
        self._consumers: dict[tuple[bytes, int], Consumer] = {}
        self._waiters: list[Waiter] = []
        self.dirty = False
        """A message may have become visible (or credit freed) since the last round."""
        self.room = False
        """Messages left a queue since held publishes were last tried."""

    def handlers(self) -> dict[int, Handler]:
        """The requests this part answers, by opcode."""
        return {
            Opcode.RECEIVE: self._receive, Opcode.ACK: self._ack,
            Opcode.CONSUME: self._consume, Opcode.CREDIT: self._credit,
            Opcode.CANCEL: self._cancel, Opcode.SETTLE: self._settle,
            Opcode.NACK: self._nack, Opcode.EXTEND: self._extend, Opcode.TERM: self._term,
            Opcode.NACK_BATCH: self._nack_batch, Opcode.EXTEND_BATCH: self._extend_batch,
            Opcode.TERM_BATCH: self._term_batch,
        }

    @property
    def consumers(self) -> int:
        """Push consumers open on every session."""
        return len(self._consumers)

    @property
    def long_polls(self) -> int:
        """Receives waiting for messages (long polls)."""
        return len(self._waiters)

    def polling_sessions(self) -> set[Session]:
        """The sessions with a long poll waiting."""
        return {waiter.session for waiter in self._waiters}

    def end_session(self, session: Session, expired: BaseException | None) -> None:
        """Drop a session's consumers (telling it ``expired`` if given) and long polls."""
        for request_id in list(session.consumers):
            consumer = self._consumers.get((session.identity, request_id))
            if consumer is not None:
                self._drop_consumer(consumer)
                if expired is not None:
                    self._send(session, Status.END, request_id,
                               [protocol.encode_error(expired)])
        self._waiters = [w for w in self._waiters if w.session is not session]
        session.long_polls = 0

    def stop(self, stopping: BaseException) -> None:
        """The server stops: long polls answered empty, consumers ended with ``stopping``."""
        for waiter in self._waiters:
            self._reply(waiter.session, waiter.request_id, [EMPTY_DELIVERY])
        self._waiters.clear()
        for consumer in list(self._consumers.values()):
            self._send(consumer.session, Status.END, consumer.request_id,
                       [protocol.encode_error(stopping)])

    def _lease_seconds(self, queue: str, visibility_timeout: float | None) -> float:
        if visibility_timeout is not None:
            seconds_to_us("visibility_timeout", visibility_timeout,
                          maximum=MAX_VISIBILITY_TIMEOUT)   # InvalidArgument if bad
            return float(visibility_timeout)
        return float(self.broker.queue_settings(queue).visibility_timeout)

    def _lease_for(self, session: Session, queue: str, max_messages: int,
                   visibility_timeout: float | None, lease: float, ring: SharedRing | None,
                   header: bytes, owner: int, max_bytes: int | None = None
                   ) -> tuple[bytes | None, int, int]:
        """Lease up to ``max_messages`` for ``session`` as ``owner``.

        ``owner`` is the session's own tag or one of its consumers': at most that owner's
        credit is leased (see ``ServerPort.receive_push``). Returns (frame, or None when
        written into ``ring``; count; the ring's status). The session holds the receipts
        until the leases have surely ended. ``max_bytes`` bounds the frame (None: no
        bound). A push cut short with credit left (at ``max_messages`` or ``max_bytes``)
        marks the deliveries dirty: the next round pushes again without waiting for
        another event.
        """
        frame, count, receipts, status, more = self._port.receive_push(
            queue, max_messages, visibility_timeout, ring, header, owner=owner,
            max_bytes=max_bytes)
        if count:
            dropped = session.hold_batch(receipts, time.monotonic() + lease + 1.0)
            if dropped:
                self.counters["held_receipts_dropped"] += dropped
            session.delivered += count
        if more:
            self.dirty = True
        return frame, count, status

    def _take(self, session: Session, queue: str, max_messages: int,
              visibility_timeout: float | None, lease: float) -> tuple[list[bytes], int]:
        """Lease up to ``max_messages`` for ``session``; returns (delivery frames, count)."""
        frame, count, _ = self._lease_for(session, queue, max_messages, visibility_timeout,
                                          lease, None, b"", session.owner)
        assert frame is not None   # no ring: always a frame
        return [frame], count

    def _push(self, consumer: Consumer) -> int:
        """Push up to the consumer's credit (at most ``push_batch``); returns how many.

        Without credit it returns 0 at once (the store counts it). To a session with a
        local channel the push is leased only when its ring has room for it, at most a
        quarter of the ring, and written straight into it (no frame object, no copy);
        otherwise it is sent.
        """
        session = consumer.session
        header = protocol.encode_header(Status.PUSH, consumer.request_id)
        now, ring, max_bytes = self._local.push_target(session, header)
        if not now:
            return 0   # its ring has no room: its reader rings when it makes some
        frame, count, status = self._lease_for(
            session, consumer.queue, self._push_batch, consumer.visibility_timeout,
            consumer.lease, ring, header, consumer.owner, max_bytes)
        if not count:
            return 0
        if frame is not None:
            self._send(session, Status.PUSH, consumer.request_id, [frame])
        elif status == WROTE_WAKE:
            self._local.ring_bell(session)
        return count

    def _receive(self, session: Session, request_id: int, frames: list[bytes]
                 ) -> list[bytes] | None:
        args, kwargs = arguments(frames)
        _known_names("receive", kwargs, RECEIVE_NAMES)
        if len(args) > 1 or (args and "queue" in kwargs):
            raise InvalidArgument(
                f"receive takes the queue in args or in kwargs, and the rest in kwargs "
                f"only (got {len(args)} args and kwargs {sorted(map(str, kwargs))})")
        queue = kwargs.get("queue", args[0] if args else None)
        max_messages = kwargs.get("max_messages", 1)
        wait = kwargs.get("wait", 0.0)
        visibility_timeout = kwargs.get("visibility_timeout")
        if (type(wait) not in (int, float) or not finite(wait)
                or not 0 <= wait <= 20):
            raise InvalidArgument(f"wait={wait!r} must be finite and from 0 to 20 seconds")
        if type(queue) is not str:
            raise InvalidArgument(f"queue name {queue!r} must be a string")
        if type(max_messages) is not int or not 1 <= max_messages <= MAX_RECEIVE_BATCH:
            # Checked before the queue is looked up, in the embedded broker's order.
            raise InvalidArgument(
                f"max_messages={max_messages!r} must be an int from 1 to {MAX_RECEIVE_BATCH}")
        lease = self._lease_seconds(queue, visibility_timeout)
        payload, count = self._take(session, queue, max_messages, visibility_timeout, lease)
        if count or not wait:
            return payload
        if session.long_polls >= self._max_long_polls:   # nothing was leased
            self.counters["long_polls_refused"] += 1
            raise LimitExceeded(
                f"this connection has {session.long_polls} receives waiting for messages "
                f"already, max_long_polls={self._max_long_polls}: wait for their answers "
                f"before asking for more (or receive without a wait, or consume)")
        self._waiters.append(Waiter(session, request_id, queue, max_messages, lease,
                                     visibility_timeout, time.monotonic() + wait))
        session.long_polls += 1
        return None

    def _ack(self, session: Session, request_id: int, frames: list[bytes]) -> list[bytes]:
        packed = frame(frames, 0, "receipts")
        if len(packed) % 8:
            raise MalformedFrame(
                f"receipts frame of {len(packed)} bytes is not a multiple of 8")
        self._port.ack_packed(packed, session=session.owner)
        self.room = True
        session.acked += len(packed) >> 3
        session.settled(packed)
        return []

    def _settle(self, session: Session, request_id: int, frames: list[bytes]) -> None:
        """ACKs in one request, answered only if an ack fails.

        Frames: the receipts of one or more pushed batches (or single messages), one frame
        each, then a credit frame, ignored (the broker counts credit itself; the frame
        stays so that SETTLEs of older clients still parse). Each frame is acked on its
        own, all or none as an ACK, so a stale receipt fails only its own frame; the loop
        over the frames is native. A consumer that settles batches so saves a message a
        batch (the ack's reply).
        """
        frame(frames, 1, "credit")   # one receipts frame at least, then the credit
        receipts = frames[:-1]
        try:
            stale = self._port.ack_frames(receipts, session=session.owner)
        except InvalidArgument as exc:   # a frame not a multiple of 8: nothing acked
            raise MalformedFrame(str(exc)) from None
        if stale and frames[-1] == protocol.SETTLE_EACH:
            self._ack_each(session, receipts, stale)
        self.room = True
        acked = 0
        for packed in receipts:
            acked += len(packed)
            session.settled(packed)
        session.acked += (acked >> 3) - len(stale)
        if stale:
            raise StaleReceipt(
                f"{len(stale)} receipts are stale (first: {stale[0]}); the frames "
                f"holding them were not acked", stale)

    def _ack_each(self, session: Session, frames: list[bytes], stale: list[int]) -> None:
        """A SETTLE of single messages' acks: the fresh receipts of refused frames, one by one.

        Their frames were refused whole for the stale receipts among them (``SETTLE_EACH``).
        """
        known = set(stale)
        fresh: list[int] = []
        for packed in frames:
            receipts = protocol.decode_receipts(packed)
            if not known.isdisjoint(receipts):   # refused whole: its other receipts
                fresh += [receipt for receipt in receipts if receipt not in known]
        if fresh:
            self._port.ack_frames([protocol.encode_receipt(receipt) for receipt in fresh],
                                  session=session.owner)

    def _by_receipt(self, session: Session, opcode: Opcode, frames: list[bytes]
                    ) -> list[bytes]:
        """NACK, EXTEND or TERM: the broker's call, as this session (``session=``)."""
        args, kwargs = arguments(frames)
        name = protocol.CALLS[opcode]
        try:
            # a ``session`` in the request's kwargs is a TypeError (given twice)
            getattr(self.broker, name)(*args, session=session.owner, **kwargs)
        except TypeError as exc:
            raise InvalidArgument(f"{name}: {exc}") from None
        if opcode == Opcode.EXTEND:   # the call took them: a receipt and finite seconds
            receipt = args[0] if args else kwargs["receipt"]
            seconds = args[1] if len(args) > 1 else kwargs["seconds"]
            dropped = session.hold_extended(protocol.encode_receipts([receipt]),
                                            time.monotonic() + float(seconds) + 1.0)
            if dropped:
                self.counters["held_receipts_dropped"] += dropped
        self.dirty = True    # a message may be visible again
        self.room = True     # or gone (term)
        return [protocol.encode_payload(None)]

    def _nack(self, session: Session, request_id: int, frames: list[bytes]) -> list[bytes]:
        return self._by_receipt(session, Opcode.NACK, frames)

    def _extend(self, session: Session, request_id: int, frames: list[bytes]
                ) -> list[bytes]:
        return self._by_receipt(session, Opcode.EXTEND, frames)

    def _term(self, session: Session, request_id: int, frames: list[bytes]) -> list[bytes]:
        return self._by_receipt(session, Opcode.TERM, frames)

    @staticmethod
    def _receipts_frame(frames: list[bytes]) -> bytes:
        """A batch settle's receipts frame (frame 0), as ACK's: whole u64s."""
        packed = frame(frames, 0, "receipts")
        if len(packed) % 8:
            raise MalformedFrame(
                f"receipts frame of {len(packed)} bytes is not a multiple of 8")
        return packed

    def _settled_by_receipt(self) -> None:
        self.dirty = True    # a message may be visible again
        self.room = True     # or gone (term)

    def _nack_batch(self, session: Session, request_id: int, frames: list[bytes]
                    ) -> list[bytes]:
        """NACK_BATCH: a receipts frame, then the msgpack ``delay`` (number or nil)."""
        packed = self._receipts_frame(frames)
        delay = protocol.decode_payload(frame(frames, 1, "delay"))
        self._port.nack_packed(packed, delay, session=session.owner)
        self._settled_by_receipt()
        return []

    def _extend_batch(self, session: Session, request_id: int, frames: list[bytes]
                      ) -> list[bytes]:
        """EXTEND_BATCH: a receipts frame, then the msgpack ``seconds`` (a number)."""
        packed = self._receipts_frame(frames)
        seconds = protocol.decode_payload(frame(frames, 1, "seconds"))
        self._port.extend_packed(packed, seconds, session=session.owner)
        # held once more as each EXTEND's receipt is (a copy: the frame may be a view of
        # a local channel's ring)
        if packed:
            dropped = session.hold_extended(bytes(packed),
                                            time.monotonic() + float(seconds) + 1.0)
            if dropped:
                self.counters["held_receipts_dropped"] += dropped
        self._settled_by_receipt()
        return []

    def _term_batch(self, session: Session, request_id: int, frames: list[bytes]
                    ) -> list[bytes]:
        """TERM_BATCH: a receipts frame."""
        self._port.term_packed(self._receipts_frame(frames), session=session.owner)
        self._settled_by_receipt()
        return []

    def _consume(self, session: Session, request_id: int, frames: list[bytes]
                 ) -> list[bytes]:
        _, kwargs = arguments(frames)
        _known_names("consume", kwargs, CONSUME_NAMES)
        queue = kwargs.get("queue")
        prefetch = kwargs.get("prefetch", 100)
        visibility_timeout = kwargs.get("visibility_timeout")
        if type(queue) is not str:
            raise InvalidArgument(f"queue name {queue!r} must be a string")
        if type(prefetch) is not int or not 1 <= prefetch <= 1_000_000:
            raise InvalidArgument(f"prefetch={prefetch!r} must be an int from 1 to 1,000,000")
        if request_id in session.consumers:
            # its pushes carry this id: a second consumer would take the first one's
            # place unseen (until 2026-12-05 it did, and the first one's owner tag, and
            # with it the session's, were never freed)
            raise InvalidArgument(
                f"request id {request_id} is already a consumer of this connection: a "
                f"CONSUME needs a request id of its own")
        lease = self._lease_seconds(queue, visibility_timeout)
        if len(session.consumers) >= self._max_consumers:
            self.counters["consumers_refused"] += 1
            raise LimitExceeded(
                f"this connection has {len(session.consumers)} consumers open already, "
                f"max_consumers={self._max_consumers}: cancel one before opening another")
        owner = self._port.open_owner(session.owner, prefetch)
        self._consumers[(session.identity, request_id)] = Consumer(
            session, request_id, queue, owner, lease, visibility_timeout)
        session.consumers.add(request_id)
        self.dirty = True
        return [protocol.encode_payload(None)]

    def _credit(self, session: Session, request_id: int, frames: list[bytes]) -> None:
        """CREDIT, from older clients: checked and ignored (the broker counts credit)."""
        value = protocol.decode_payload(frame(frames, 0, "credit"))
        if not isinstance(value, list) or len(value) != 2:
            raise MalformedFrame("credit payload must be [consumer_id, count]")

    def _drop_consumer(self, consumer: Consumer) -> None:
        """Forget a consumer; its leases run on (settled by its session or expiring)."""
        if self._consumers.pop((consumer.session.identity, consumer.request_id),
                               None) is consumer:
            consumer.session.consumers.discard(consumer.request_id)
            self._port.close_owner(consumer.owner)

    def _cancel(self, session: Session, request_id: int, frames: list[bytes]
                ) -> list[bytes]:
        args, _ = arguments(frames)
        consumer_id = args[0] if args else None
        if type(consumer_id) is not int:
            raise InvalidArgument(f"cancel consumer_id must be an int (the CONSUME request "
                                  f"id), got {type(consumer_id).__name__} {consumer_id!r:.80}")
        consumer = self._consumers.get((session.identity, consumer_id))
        if consumer is None:
            # a long poll of this session (RECEIVE with a wait) withdrawn by its client:
            # answered empty now, so it leases nothing nobody will read
            for waiter in self._waiters:
                if waiter.session is session and waiter.request_id == consumer_id:
                    self._waiters.remove(waiter)
                    session.long_polls -= 1
                    self._reply(session, consumer_id, [EMPTY_DELIVERY])
                    return [protocol.encode_payload(None)]
            raise NotFound(f"no consumer nor waiting receive {consumer_id!r} on this "
                           f"connection")
        self._drop_consumer(consumer)
        return [protocol.encode_payload(None)]

    def deliver(self) -> None:
        """Push to consumers with credit (round robin) and answer long polls that can be."""
        if self._consumers:
            consumers = list(self._consumers.values())
            for consumer in consumers:
                if (self._consumers.get((consumer.session.identity, consumer.request_id))
                        is not consumer):
                    continue   # its session ended during this round
                try:
                    count = self._push(consumer)
                except FastFanoutError as exc:
                    self._drop_consumer(consumer)
                    self._send(consumer.session, Status.END, consumer.request_id,
                               [protocol.encode_error(exc)])
                    continue
                if count:
                    self.counters["pushes"] += 1
                    self.counters["pushed_messages"] += count
            # rotate so that the next round starts with another consumer
            if len(self._consumers) > 1:
                first = next(iter(self._consumers))
                self._consumers[first] = self._consumers.pop(first)
        if self._waiters:
            now = time.monotonic()
            still = []
            for waiter in self._waiters:
                try:
                    payload, count = self._take(waiter.session, waiter.queue,
                                                waiter.max_messages, waiter.visibility_timeout,
                                                waiter.lease)
                except FastFanoutError as exc:
                    waiter.session.long_polls -= 1
                    self._error(waiter.session, waiter.request_id, exc)
                    continue
                if count or now >= waiter.deadline:
                    waiter.session.long_polls -= 1
                    self._reply(waiter.session, waiter.request_id, payload)
                else:
                    still.append(waiter)
            self._waiters = still
