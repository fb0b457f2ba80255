"""The broker server: one embedded ``Broker`` behind a ROUTER and an XPUB socket.

Design
------
Prior art: the ZeroMQ Guide's Majordomo broker (one thread, one poll loop, ROUTER in
front), Redis (a single-threaded server owning all state, so no call ever waits for a
lock held by another request), RabbitMQ's ``basic.qos`` prefetch (credit-based push),
and SQS long polling.

Invariants:

- One thread owns the ``Broker`` and every socket; requests are handled in arrival order
  and each request of a live session gets exactly one reply (or, for CONSUME, a stream
  of PUSH messages after the reply), matched by request id. Nothing a client sends can
  raise out of the loop: every failure becomes an error reply with a stable code, and is
  counted.
- A consumer never holds more than its ``prefetch`` of unsettled pushed messages: the
  store counts each consumer's leases until they end, however they end, and a push
  leases at most ``prefetch`` minus that count (``fastfanout.server.deliveries``).
- A lease is settled only by the session it was made for: every settle passes the
  session's owner tag, and another session's receipt is ``stale_receipt``.
- Every lease handed to a session is remembered (as the receipts of each delivery batch,
  dropped once the batch is acked whole or its lease has surely ended). When the session
  ends — BYE, missed heartbeats, or a reply that cannot be routed because its connection
  is gone — every remembered receipt is nacked, so the messages are redelivered at once
  and a late ack from that client is refused as stale.
- The loop never waits for one client: a reply or push that finds the client's queue
  full (``max_queued_replies``) is not sent, and that session ends (``slow_client``).
  A session without heartbeats that sent nothing for ``idle_session_timeout`` and holds
  nothing ends too (``sessions_idle``). An ended session's connection is remembered for
  ``ENDED_SESSION_MEMORY``: its later requests are dropped (``ended_session_requests``),
  never served by a new session, and its client is told once, with a GOODBYE carrying
  ``session_expired``, as soon as that can be sent without waiting.
- A publish to a topic that stream listeners follow is also sent on the XPUB, one
  message per publish batch: ``[topic, records]``, each record's ``receipt`` field holding
  the topic's sequence number. The named ``slow_listener`` policy decides who pays for a
  full listener queue (``fastfanout.server.streams``: that listener alone, or everyone).
- The answers to a round's publishes and sends go out after its pushes when there is
  one (its consumer hears of the message first: latency), before them when there are
  several (their pipelining publishers send the next batches while the broker pushes:
  throughput; ~10-20 % more messages a second through the fan-out benchmark).
- A publish or send refused by a full ``hold`` queue is not answered with the error: it
  is held (``fastfanout.server.holds``) and run again as room appears, in each session's order,
  and answered when it goes through or after ``hold_timeout``.
- A client on this host may move its session onto a local channel (``ATTACH``,
  ``fastfanout.server.local_sessions``): each round reads its ring and hands the requests to
  the same ``_handle`` as socket requests; its replies and pushes go into its ring in
  order (a push is written there in place); when its bell hangs up — the client's
  process ended — the session ends at once.

The request handlers that lease and settle messages, and the push phase, are a part the
server holds (``fastfanout.server.deliveries.Deliveries``), as are held publishes
(``holds``), stream listeners (``streams``) and local channels (``local_sessions``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import stat
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Final

from fastfanout.broker.embedded import Broker
from fastfanout.errors import (
    BrokerRunning,
    Closed,
    FastFanoutError,
    InvalidArgument,
    MalformedBatch,
    MalformedFrame,
    QueueFull,
    RequestTooLarge,
    ServerStopping,
    SessionExpired,
    TransportError,
    UnknownOpcode,
    Unroutable,
    UnsupportedVersion,
    WouldBlock,
)
from fastfanout.runtime import (
    EndpointLock,
    check_endpoint,
    default_endpoint,
    ipc_occupant,
    ipc_problem,
    missing_ancestor,
    remove_stale_locks,
    stream_endpoint_for,
)
from fastfanout.semantics.replies import decode_reply, is_inbox, new_inbox, parse_address
from fastfanout.server.allocator import (
    collector_stats,
    freeze_startup_objects,
    keep_freed_memory,
    memory_stats,
)
from fastfanout.server.deliveries import (
    DEFAULT_MAX_CONSUMERS,
    DEFAULT_MAX_LONG_POLLS,
    Deliveries,
)
from fastfanout.server.descriptors import ListenerGuard, raise_limit
from fastfanout.server.guests import Guest
from fastfanout.server.holds import HeldRequest, HeldRequests
from fastfanout.server.local_sessions import BACKLOG_BYTES as LOCAL_BACKLOG_BYTES
from fastfanout.server.local_sessions import LocalSessions
from fastfanout.server.requests import arguments, frame, text
from fastfanout.server.sessions import DEFAULT_MAX_HELD_RECEIPTS, EndedSessions, Session
from fastfanout.server.streams import (
    DEFAULT_MAX_STREAM_SUBSCRIPTIONS,
    SLOW_LISTENER_POLICIES,
    Streams,
)
from fastfanout.settings import (
    DEFAULT_MAX_PATTERN_SUBSCRIPTIONS,
    DEFAULT_MAX_QUEUES,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC,
    DEFAULT_MAX_TOPICS,
    MAX_HIGH_WATER_MARK,
    MAX_RECEIVE_BATCH,
    check_count,
    check_flag,
    finite,
)
from fastfanout.stats import check_worker_report
from fastfanout.transport.local_channel import local_channels_supported
from fastfanout.transport.sockets import (
    CurveKeys,
    ServerTransport,
    check_curve_clients,
    curve_keypair,
    is_loopback,
)
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status

if TYPE_CHECKING:
    from fastfanout.storage.durability import CommitTicket

__all__ = ["SLOW_LISTENER_POLICIES", "Server", "serve"]

log = logging.getLogger("fastfanout.server.loop")

ROUND_REQUESTS: Final = 1000
"""Most requests one round of the loop handles before it pushes and answers; the rest
wait for the next round (one busy client cannot starve the consumers)."""
TICK: Final = 0.005
"""Seconds between passes while long polls or held publishes wait (their deadlines)."""
IDLE_TICK: Final = 0.1
"""Seconds between housekeeping passes (heartbeat expiry); the longest wait of the loop,
which push consumers cut short to the next lease or delay end (``Broker.next_due_in``)."""
DEFAULT_MAX_QUEUED_REPLIES: Final = 10_000
"""Default ``max_queued_replies``: messages queued for one socket client that reads
nothing before its session is ended as a slow client (the Python clients' own receive
queue holds 100,000 more)."""
DEFAULT_MAX_HELD_BYTES: Final = 64 * 1024 * 1024
"""Default ``max_held_bytes``: bytes of one session's requests held for a full ``hold``
queue at once (64 MiB)."""
DEFAULT_IDLE_SESSION_TIMEOUT: Final = 60.0
"""Default ``idle_session_timeout`` (seconds)."""
ENDED_SESSION_MEMORY: Final = 60.0
"""Seconds the identity of an ended session is remembered: its requests are dropped
(counted in ``ended_session_requests``) instead of starting a session again."""
MAX_ENDED_SESSIONS: Final = 100_000
"""Most ended identities remembered at once (the oldest are forgotten first, counted in
SERVER_STATS ``ended_sessions_forgotten``)."""


class Server:
    """A broker served over ZeroMQ; ``start()`` runs it in a thread, ``serve_forever()`` here.

    Args:
        endpoint: command endpoint (``ipc://PATH`` or ``tcp://HOST:PORT``); default the
            per-user ipc socket (see ``fastfanout.runtime``).
        stream_endpoint: stream (XPUB) endpoint; default derived from ``endpoint``.
        broker: the embedded broker to serve (default: a new one on the real clock, made
            with ``data_dir``, ``fsync``, ``fsync_interval`` and ``max_disk_bytes``). The
            server closes it when it stops only if it made it.
        data_dir: the data directory of the broker the server makes (None: in memory);
            see ``Broker``. Not with ``broker``.
        fsync: ``always``, ``interval`` or ``never``: the made broker's fsync policy.
        fsync_interval: with ``interval``, seconds between syncs.
        max_disk_bytes: most bytes the made broker's journal may hold (None: no limit).
        max_topics: most topics of the made broker (``Broker``'s limit).
        max_queues: most queues of the made broker.
        max_subscriptions_per_topic: most subscriptions feeding one topic of the made
            broker.
        max_pattern_subscriptions: most pattern subscriptions of the made broker.
        curve: the broker's CURVE keys (``transport.load_curve_keys``); required to bind
            tcp beyond loopback. Every connection is then encrypted and authenticated.
        curve_clients: with ``curve``, required: a directory of the allowed clients'
            public certificates (``*.key``, read at bind), or ``"*"``
            (``transport.CURVE_ALLOW_ANY``) to admit any client that knows the broker's
            public key. A client not admitted completes no handshake and hears nothing.
        heartbeat_interval: seconds between client heartbeats (told to clients).
        heartbeat_timeout: seconds of silence after which a heartbeating client is gone
            and its leases are released.
        max_request_bytes: largest request answered (bytes); bigger ones get
            ``request_too_large``.
        max_frame_bytes: ``ZMQ_MAXMSGSIZE`` (bytes); a bigger frame disconnects the peer,
            counted in ``disconnects`` only (libzmq reports it as any other disconnect:
            docs/protocol.md, frame-size disconnects). None (the default): the larger of
            256 MiB and ``max_request_bytes``, as ``fastfanout serve`` picks it (until
            2026-12-05 a ``Server`` given a larger ``max_request_bytes`` kept 256 MiB, and
            cut the connection of a request it would have taken).
        slow_listener: ``drop`` or ``wait`` (see ``SLOW_LISTENER_POLICIES``).
        stream_wait: seconds the ``wait`` policy waits for a slow listener.
        stream_high_water_mark: stream messages queued per listener in the broker before
            the ``slow_listener`` policy applies.
        max_stream_subscriptions: subscriptions one listener connection may hold (probes
            included); one more is refused and that connection ended, counted in
            ``stream_subscriptions_refused`` and ``stream_listeners_cut``
            (``streams.DEFAULT_MAX_STREAM_SUBSCRIPTIONS``).
        hold_timeout: seconds a publish to a full ``hold`` queue is held before it is
            answered with ``QueueFull`` (0: answer at once, like ``reject``).
        max_held_bytes: bytes of one session's publishes and sends that may be held
            at once (their frames); a request that would pass it is answered with
            ``QueueFull`` at once, counted in ``hold_refused`` (a session's first held
            request is always held, whatever its size).
        max_consumers: push consumers one session may have open; a ``consume`` past it
            is refused with ``LimitExceeded``, counted in ``consumers_refused``.
        max_long_polls: receives of one session that may wait for messages at once; one
            more that would wait is refused with ``LimitExceeded``, counted in
            ``long_polls_refused`` (each round tries every consumer and waiting receive).
        max_held_receipts: receipts of leases one session holds to release them when its
            client vanishes (``fastfanout.server.sessions``); past it, new deliveries'
            and extends' receipts are not held (their leases end by themselves), counted
            in ``held_receipts_dropped``.
        push_batch: most messages in one push to a consumer (1 to 10,000; a push never
            exceeds the consumer's credit, nor a quarter of a local consumer's ring, so
            this only caps consumers with a large prefetch: big pushes are what lets
            one consumer take millions a second).
        local_channels: let clients on this host attach a shared-memory channel
            (``ATTACH``, see ``fastfanout.transport.local_channel``); only on an ``ipc://``
            endpoint, where every client is on this host.
        deliver_by_reference: a push that is exactly one publish frame read in place
            from a local producer's ring goes into a local consumer's ring as a
            reference to it (the consumer maps the producer's ring), not a copy
            (``local_sessions``; counted in ``local_references``). On by default
            (docs/arrays.md, "Deliveries by reference": a consumer keeping views of
            its batches is asked for them when its producer is short of room).
        local_backlog_bytes: most bytes that may wait for room in one local session's
            ring (``local_sessions.BACKLOG_BYTES``); past it the session is ended as a
            slow client (``local_backlog_overflow``).
        max_queued_replies: messages (replies and pushes) queued for one socket client
            that does not read them; one more ends its session (counted in
            ``slow_client``): the broker never waits for a client.
        idle_session_timeout: seconds after which a session that does not heartbeat (it
            never said HELLO, or said HELLO without heartbeats) is ended when it sent
            nothing and holds nothing (no consumer, lease, long poll or held publish);
            counted in ``sessions_idle``.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        stream_endpoint: str | None = None,
        broker: Broker | None = None,
        curve: CurveKeys | None = None,
        curve_clients: str | None = None,
        heartbeat_interval: float = 0.25,
        heartbeat_timeout: float = 2.0,
        max_request_bytes: int = protocol.DEFAULT_MAX_REQUEST_BYTES,
        max_frame_bytes: int | None = None,
        slow_listener: str = "drop",
        stream_wait: float = 1.0,
        stream_high_water_mark: int = 10_000,
        max_stream_subscriptions: int = DEFAULT_MAX_STREAM_SUBSCRIPTIONS,
        push_batch: int = 8192,
        hold_timeout: float = 30.0,
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
        max_consumers: int = DEFAULT_MAX_CONSUMERS,
        max_long_polls: int = DEFAULT_MAX_LONG_POLLS,
        max_held_receipts: int = DEFAULT_MAX_HELD_RECEIPTS,
        local_channels: bool = True,
        deliver_by_reference: bool = True,
        local_backlog_bytes: int = LOCAL_BACKLOG_BYTES,
        max_queued_replies: int = DEFAULT_MAX_QUEUED_REPLIES,
        idle_session_timeout: float = DEFAULT_IDLE_SESSION_TIMEOUT,
        data_dir: str | os.PathLike[str] | None = None,
        fsync: str = "always",
        fsync_interval: float = 1.0,
        max_disk_bytes: int | None = None,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_queues: int = DEFAULT_MAX_QUEUES,
        max_subscriptions_per_topic: int = DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC,
        max_pattern_subscriptions: int = DEFAULT_MAX_PATTERN_SUBSCRIPTIONS,
    ) -> None:
        # checked as connect() checks it: until 2026-12-05 Server(5) raised an
        # AttributeError, "" meant the default endpoint and "ipc://" failed only at bind
        for argument, value, otherwise in (
                ("endpoint", endpoint, "the default endpoint"),
                ("stream_endpoint", stream_endpoint, "derived from the endpoint")):
            check_endpoint(value, argument, none=otherwise)
        self.endpoint = endpoint or default_endpoint()
        self.stream_endpoint = stream_endpoint or stream_endpoint_for(self.endpoint)
        if slow_listener not in SLOW_LISTENER_POLICIES:
            raise InvalidArgument(
                f"slow_listener={slow_listener!r} must be one of {SLOW_LISTENER_POLICIES}")
        if self.stream_endpoint == self.endpoint:
            raise InvalidArgument(
                f"stream_endpoint {self.stream_endpoint} is the command endpoint: give it "
                f"an address of its own (or leave it out: it is derived)")
        for ep in (self.endpoint, self.stream_endpoint):
            if not is_loopback(ep) and curve is None:
                raise InvalidArgument(
                    f"refusing to bind {ep} beyond loopback without CURVE keys "
                    f"(pass curve=... / --curve-secret-key)")
        if (curve is None) != (curve_clients is None):
            raise InvalidArgument(
                "CURVE needs both the broker's keys (curve / --curve-secret-key) and the "
                "allowed clients (curve_clients / --curve-clients: a directory of client "
                "*.key certificates, or '*' to allow any client)")
        if curve_clients is not None:
            try:
                check_curve_clients(curve_clients)
            except TransportError as exc:
                raise InvalidArgument(str(exc)) from None
        if (type(hold_timeout) not in (int, float) or not finite(hold_timeout)
                or hold_timeout < 0):
            raise InvalidArgument(f"hold_timeout={hold_timeout!r} must be finite seconds >= 0")
        if type(push_batch) is not int or not 1 <= push_batch <= MAX_RECEIVE_BATCH:
            raise InvalidArgument(
                f"push_batch={push_batch!r} must be an int from 1 to {MAX_RECEIVE_BATCH}")
        if type(max_held_bytes) is not int or max_held_bytes < 1:
            raise InvalidArgument(
                f"max_held_bytes={max_held_bytes!r} must be an int >= 1 (bytes)")
        if type(local_backlog_bytes) is not int or local_backlog_bytes < 1:
            raise InvalidArgument(
                f"local_backlog_bytes={local_backlog_bytes!r} must be an int >= 1 (bytes)")
        check_count("stream_high_water_mark", stream_high_water_mark,
                    maximum=MAX_HIGH_WATER_MARK)
        check_count("max_stream_subscriptions", max_stream_subscriptions,
                    maximum=MAX_HIGH_WATER_MARK)
        if not all(type(seconds) in (int, float) and finite(seconds)
                   for seconds in (heartbeat_interval, heartbeat_timeout)) or not (
                0 < heartbeat_interval < heartbeat_timeout):
            raise InvalidArgument(
                f"need 0 < heartbeat_interval < heartbeat_timeout, finite seconds (got "
                f"{heartbeat_interval!r} and {heartbeat_timeout!r})")
        check_count("max_request_bytes", max_request_bytes,
                    maximum=protocol.MAX_FRAME_BYTES_LIMIT)
        if max_frame_bytes is None:   # every request it answers fits in a frame
            max_frame_bytes = protocol.DEFAULT_MAX_FRAME_BYTES
            if type(max_request_bytes) is int:
                max_frame_bytes = max(max_frame_bytes, max_request_bytes)
        if (type(max_frame_bytes) is not int or max_frame_bytes < protocol.MIN_FRAME_BYTES
                or max_frame_bytes > protocol.MAX_FRAME_BYTES_LIMIT):
            raise InvalidArgument(
                f"max_frame_bytes={max_frame_bytes!r} must be an int from "
                f"{protocol.MIN_FRAME_BYTES} to {protocol.MAX_FRAME_BYTES_LIMIT} bytes")
        check_count("max_queued_replies", max_queued_replies, maximum=MAX_HIGH_WATER_MARK)
        check_count("max_consumers", max_consumers, maximum=MAX_HIGH_WATER_MARK)
        check_count("max_long_polls", max_long_polls, maximum=MAX_HIGH_WATER_MARK)
        check_count("max_held_receipts", max_held_receipts, maximum=MAX_HIGH_WATER_MARK)
        # a flag of another type was taken for its truth value: "false" turned it on
        check_flag("local_channels", local_channels)
        check_flag("deliver_by_reference", deliver_by_reference)
        if (type(idle_session_timeout) not in (int, float)
                or not finite(idle_session_timeout) or idle_session_timeout <= 0):
            raise InvalidArgument(
                f"idle_session_timeout={idle_session_timeout!r} must be finite seconds > 0")
        if broker is not None and broker.closed:
            raise Closed("broker= is closed: a server serves an open Broker (every call "
                         "of its clients would fail)")
        if broker is not None and data_dir is not None:
            raise InvalidArgument(
                "give either broker= or data_dir= (the data directory of the broker the "
                "server makes), not both")
        self._own_broker = broker is None
        self.broker = broker if broker is not None else (
            Broker(max_topics=max_topics, max_queues=max_queues,
                   max_subscriptions_per_topic=max_subscriptions_per_topic,
                   max_pattern_subscriptions=max_pattern_subscriptions)
            if data_dir is None else
            Broker(data_dir=data_dir, fsync=fsync, fsync_interval=fsync_interval,
                   max_disk_bytes=max_disk_bytes, max_topics=max_topics,
                   max_queues=max_queues,
                   max_subscriptions_per_topic=max_subscriptions_per_topic,
                   max_pattern_subscriptions=max_pattern_subscriptions))
        self._port = self.broker.server_port()   # the broker's calls for sessions
        self._curve = curve
        self._curve_clients = curve_clients
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._max_request_bytes = max_request_bytes
        self._max_frame_bytes = max_frame_bytes
        self._max_queued_replies = max_queued_replies
        self._idle_session_timeout = float(idle_session_timeout)
        self._ended = EndedSessions(ENDED_SESSION_MEMORY, MAX_ENDED_SESSIONS)
        self._push_batch = push_batch
        self._held = HeldRequests(hold_timeout)
        # replies made through the served Broker object (another thread) for a session's
        # request: handed to the loop (deque appends are atomic), which routes them
        self._broker_replies: deque[tuple[str, int, bytes]] = deque()
        self._max_held_bytes = max_held_bytes
        self._max_held_receipts = max_held_receipts
        self._prune_all = False   # a queue was deleted: every session prunes its receipts
        self._transport: ServerTransport | None = None
        self._lock: EndpointLock | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = threading.Event()
        self._wakeup_previous: int | None = None   # set_wakeup_fd's, while ours is set
        self._looping = False   # the loop runs (in start()'s thread or serve_forever's)
        self._guests: list[Guest] = []   # run in the loop's thread (``host``)
        self._sessions: dict[bytes, Session] = {}
        self._replies: list[tuple[Session, int, list[bytes]]] = []
        # A durable broker's pipelined commit: the replies its batch confirms, its ticket
        # (None: no commit in flight) and the descriptor readable when it is done.
        self._committing: list[tuple[Session, int, list[bytes]]] = []
        self._commit_ticket: CommitTicket | None = None
        self._commit_fd = -1
        self._probe_until = 0.0
        self._next_hold_check = 0.0
        self.counters: Counter[str] = Counter()
        self.stats_sources: dict[str, Callable[[], Any]] = {}
        """Extra ``server_stats`` entries: key -> a callable run on the server thread
        (``fastfanout serve --bridge`` adds ``bridge``: each rule's counters)."""
        self._streams = Streams(self.counters, slow_listener, stream_wait,
                                max_stream_subscriptions)
        self._stream_high_water_mark = stream_high_water_mark
        self._local_channels = (local_channels and self.endpoint.startswith("ipc://")
                                and local_channels_supported())
        self._local = LocalSessions(
            self.counters, watch=self._watch, unwatch=self._unwatch, spill=self._spill,
            handle=self._handle, end=self._end_local_session,
            backlog_bytes=local_backlog_bytes,
            deliver_by_reference=deliver_by_reference)
        self._deliveries = Deliveries(self.broker, self._port, self._local, self.counters,
                                      push_batch, send=self._send, reply=self._reply,
                                      error=self._error, max_consumers=max_consumers,
                                      max_long_polls=max_long_polls)
        self._handlers: dict[int, Callable[[Session, int, list[bytes]], Any]] = {
            Opcode.HELLO: self._hello, Opcode.HEARTBEAT: self._heartbeat,
            Opcode.BYE: self._bye, Opcode.PUBLISH: self._publish, Opcode.SEND: self._send_op,
            Opcode.SERVER_STATS: self._server_stats, Opcode.ATTACH: self._attach,
            **self._deliveries.handlers(),
            Opcode.REPORT: self._report, Opcode.WORKERS: self._workers,
            Opcode.REPLY: self._route_reply,
        }
        # each session's reply inbox (its HELLO answer names it) -> the session
        self._inboxes: dict[str, Session] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def bind(self) -> None:
        """Take the endpoint lock and bind the sockets (``start`` does this for you).

        Raises:
            BrokerRunning: another broker holds this endpoint.
            TransportError: the endpoint cannot be bound.
            Closed: the server was stopped (its sockets are closed; make a new one).
        """
        self._check_not_stopped()
        if self._transport is not None:
            return
        lock = EndpointLock(self.endpoint)
        lock.acquire()
        try:
            for endpoint, what in ((self.endpoint, "endpoint"),
                                   (self.stream_endpoint, "stream endpoint")):
                occupant = ipc_occupant(endpoint)
                if occupant is not None:   # libzmq's bind would delete it unasked
                    raise TransportError(
                        f"cannot bind the {what} {endpoint}: {endpoint[6:]} is {occupant}, "
                        f"not a socket, and binding would delete it; remove it yourself "
                        f"or choose another {what.replace(' ', '_')}")
                # binding an ipc path replaces its socket file: a live socket there (a
                # broker's stream socket, say) would be taken from its owner unseen
                if (endpoint.startswith("ipc://")
                        and (endpoint[6:].startswith("@") or os.path.exists(endpoint[6:]))
                        and ipc_problem(endpoint) is None):
                    raise BrokerRunning(
                        f"something already listens on the {what} {endpoint} (another "
                        f"broker's socket?); choose another {what.replace(' ', '_')}")
            self._transport = ServerTransport(
                self.endpoint, self.stream_endpoint, max_frame_bytes=self._max_frame_bytes,
                curve=self._curve, curve_clients=self._curve_clients,
                reply_high_water_mark=self._max_queued_replies,
                stream_high_water_mark=self._stream_high_water_mark,
                stream_no_drop=self._streams.no_drop)
        except (TransportError, BrokerRunning):
            lock.release()
            raise
        self._lock = lock
        log.info("bound %s (streams on %s); serving once the loop runs", self.endpoint,
                 self.stream_endpoint)

    def companion_curve(self) -> CurveKeys | None:
        """CURVE keys for a client in this process (the NATS bridge), or None without CURVE.

        A new key pair, admitted by this server in memory only: never written to disk,
        gone when the server stops. The server must be bound (``bind``).

        Returns:
            The client keys with the server's public key (``connect(curve=...)``).
        """
        if self._curve is None:
            return None
        if self._transport is None:
            raise RuntimeError("bind the server before admitting a companion's key")
        public, secret = curve_keypair()
        self._transport.admit_curve_client(public)
        return CurveKeys(public, secret, self._curve.public_key)

    def _check_not_stopped(self) -> None:
        if self._stopped.is_set():
            raise Closed(f"the server of {self.endpoint} is stopped: a server runs once; "
                         f"make a new Server to serve again")

    def _check_not_running(self) -> None:
        # a second loop on the same sockets broke the first (until 2026-12-05)
        self._check_not_stopped()
        if self._thread is not None or self._looping:
            raise InvalidArgument(f"the server of {self.endpoint} was started already (a "
                                  f"server starts once)")

    def start(self) -> Server:
        """Bind, then serve in a background thread; returns self.

        Raises:
            InvalidArgument: it was started already (or serves in another thread).
            Closed: it was stopped: a server runs once.
        """
        self._check_not_running()
        self.bind()
        self._thread = threading.Thread(target=self._run, name="fastfanout-server", daemon=True)
        self._thread.start()
        return self

    def host(self, guest: Guest) -> None:
        """Run ``guest`` in the loop's thread, between rounds (``fastfanout.server.guests``).

        The loop watches the guest's descriptor, wakes for its next timer and steps it
        after each round. Call it before the loop runs.

        Raises:
            RuntimeError: the loop runs already.
        """
        if self._looping:
            raise RuntimeError("host() a guest before the server's loop runs")
        self._guests.append(guest)

    def serve_forever(self) -> None:
        """Bind and serve in this thread until ``stop_nowait()`` (or a signal) stops it.

        Raises:
            InvalidArgument: it was started already (or serves in another thread).
            Closed: it was stopped: a server runs once.
        """
        self._check_not_running()
        self.bind()
        log.info("serving on %s", self.endpoint)
        self._run()

    def wake_on_signals(self) -> None:
        """Let a caught signal end the loop's wait, whichever thread the kernel gave it to.

        Sets ``signal.set_wakeup_fd`` to the transport's waker until the server stops
        (the previous one is put back then, before the waker closes). A Python signal
        handler runs in the main thread only, between two bytecodes; a signal the kernel
        delivered to another thread (any thread not blocking it may take a signal sent to
        the process) would otherwise not end the wait it came in. ``serve()`` calls it;
        main thread only, once bound.

        Raises:
            RuntimeError: the server is not bound.
            ValueError: not called from the main thread.
        """
        if self._transport is None:
            raise RuntimeError("bind the server before it wakes on signals")
        previous = signal.set_wakeup_fd(self._transport.wake_fileno(),
                                        warn_on_full_buffer=False)
        if self._wakeup_previous is None:
            self._wakeup_previous = previous

    def _restore_wakeup_fd(self) -> None:
        """Put back the wakeup descriptor ``wake_on_signals`` replaced (main thread only)."""
        if self._wakeup_previous is None:
            return
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._wakeup_previous)
        self._wakeup_previous = None

    def stop_nowait(self) -> None:
        """Ask the loop to stop (safe from signal handlers and other threads)."""
        self._stopping = True
        if self._transport is not None:
            self._transport.wake()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop: answer in-flight requests, tell clients goodbye, close; wait for the thread."""
        self.stop_nowait()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"server thread did not stop within {timeout} s")
            self._thread = None
        elif self._looping:
            # serve_forever() runs in some other thread: the loop shuts down itself.
            if not self._stopped.wait(timeout):
                raise TimeoutError(f"server loop did not stop within {timeout} s")
        elif self._transport is not None and not self._stopped.is_set():
            self._shutdown()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- test hooks (docs/testing.md) --------------------------------------------------

    @property
    def transport(self) -> ServerTransport | None:
        """The server's sockets once bound (None before ``bind``): a test hook.

        Tests that drive a bound server by hand (``run_round``) read or intercept its
        replies here (``transport.send_reply``); see docs/testing.md.
        """
        return self._transport

    def run_round(self, requests: Iterable[list[bytes]], *, waiting: bool = True) -> None:
        """Handle ``requests`` as one round of the loop, then push and answer: a test hook.

        For tests that drive a bound server whose loop does not run, so that they fix
        which requests share a round (docs/testing.md). Each request is a message as the
        ROUTER reads it, ``[identity, header, *payload]`` (docs/protocol.md); the replies
        and pushes go out through ``transport`` in the loop's order.

        Args:
            requests: the round's request messages, in arrival order.
            waiting: offer pushes even when no request made a message visible, as the
                loop does while someone waits for messages (``next_wait``).

        Raises:
            RuntimeError: the server is not bound, or its loop runs.
        """
        if self._transport is None or self._looping:
            raise RuntimeError("run_round drives a bound server whose loop does not run")
        for frames in requests:
            self._handle(frames)
        self._push_and_answer(waiting)

    # -- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        transport = self._transport
        assert transport is not None
        self._looping = True
        next_housekeeping = 0.0
        try:
            try:
                self._commit_fd = self._port.start_commit_writer()
            except FastFanoutError:   # a closed broker: requests say so
                self._commit_fd = -1
            if self._commit_fd >= 0:
                transport.watch(self._commit_fd)
            guests = self._guests
            for guest in guests:
                transport.watch(guest.fileno())
            guard = ListenerGuard(transport, self.counters)
            self._port.route_replies(self._broker_reply)
            while not self._stopping:
                timeout, waiting = self.next_wait()
                for guest in guests:
                    due = guest.timeout()
                    if due is not None and due < timeout:
                        timeout = due
                if timeout > 0 and self._local and not self._local.may_sleep():
                    timeout = 0.0
                requests, subscriptions, monitor, bells = transport.wait(timeout)
                self.counters["rounds"] += 1
                if requests:
                    frames = transport.recv_request(polled=True)
                    handled = 0
                    while frames is not None:
                        if self._local:
                            self._local.before_socket_message(self._sessions.get(frames[0]))
                        self._handle(frames)
                        handled += 1
                        frames = (transport.recv_request() if handled < ROUND_REQUESTS
                                  else None)
                if self._local:
                    self._local.round(bells)
                while self._broker_replies:
                    self._route_to_inbox(*self._broker_replies.popleft())
                if subscriptions:
                    self._streams.read_subscriptions(transport)
                if monitor:
                    lost, accepted, stream_lost = transport.monitor_events()
                    if lost:
                        self.counters["disconnects"] += lost
                        self._probe_until = time.monotonic() + 0.5
                    if stream_lost:
                        self.counters["stream_disconnects"] += stream_lost
                    guard.connections(accepted, lost + stream_lost)
                self._push_and_answer(waiting)
                now = time.monotonic()
                if self._held and (self._deliveries.room or now >= self._next_hold_check):
                    self._retry_held(now)
                if now >= next_housekeeping or now < self._probe_until:
                    next_housekeeping = now + IDLE_TICK
                    self._housekeeping(now)
                    self._streams.tick(transport, now)
                    guard.tick(now)
                for guest in guests:
                    guest.step()
        except Exception:
            log.exception("server loop failed")
            raise
        finally:
            self._shutdown()

    def _push_and_answer(self, waiting: bool) -> None:
        """End a round: push to consumers with credit, answer the round's publishes.

        Several publishes this round: their publishers are pipelining and wait for these
        answers to send more, so they are answered before the pushes and work while the
        broker pushes. A lone publish is answered after its push: its consumer hears of
        the message first. A durable broker pipelines its commits (``_commit_round``):
        the replies that go are those whose batch is on disk. A round of one publish at
        most pushes before it commits: a small commit that needs no fdatasync is written
        in this thread (the journal's inline write), and the push need not wait for it.
        """
        lone = len(self._replies) <= 1   # none or a lone publish: its consumer hears first
        if lone:
            self._push(waiting)
        if self._commit_fd >= 0:
            ready = self._commit_round()
        else:
            ready, self._replies = self._replies, []
        if lone or len(ready) > 1:
            self._answer(ready)
            ready = []
        if not lone:
            self._push(waiting)
            self._answer(ready)   # at most one: after the push, as a lone one

    def _push(self, waiting: bool) -> None:
        """Push to consumers with credit (a request made messages visible, or someone waits)."""
        deliveries = self._deliveries
        if deliveries.dirty or waiting:
            deliveries.dirty = False
            deliveries.deliver()

    def _commit_round(self) -> list[tuple[Session, int, list[bytes]]]:
        """A durable broker's group commit, pipelined; returns the replies that may go.

        Ends the commit in flight if it is done (its replies may go), then hands this
        round's records to the journal's writer thread (one write, and one fdatasync for
        every publish of the round) and keeps their replies until that is done, while
        the loop serves the next round. A failed commit answers its publishes with the
        error.
        """
        port = self._port
        ready: list[tuple[Session, int, list[bytes]]] = []
        if self._commit_ticket is not None:
            try:
                if not port.commit_end(self._commit_ticket):
                    return ready   # still writing: this round's records wait for the next
                ready = self._committing
            except FastFanoutError as exc:
                self._errors(self._committing, exc)
            self._commit_ticket = None
            self._committing = []
        batch, self._replies = self._replies, []
        try:
            ticket = port.commit_begin(confirms=bool(batch))
            if port.commit_end(ticket):   # nothing to wait for (or done already)
                ready.extend(batch)
            else:
                self._commit_ticket, self._committing = ticket, batch
        except FastFanoutError as exc:
            self._errors(batch, exc)
        return ready

    def _errors(self, replies: list[tuple[Session, int, list[bytes]]],
                error: FastFanoutError) -> None:
        """Answer held publish and send replies with ``error`` instead."""
        for session, request_id, _ in replies:
            self._error(session, request_id, error)

    def _end_commit(self) -> None:
        """Wait for the commit in flight, then commit the rest (the loop is stopping).

        ``self._replies`` then holds what may be answered.
        """
        ready: list[tuple[Session, int, list[bytes]]] = []
        if self._commit_ticket is not None:
            try:
                self._port.commit_end(self._commit_ticket, wait=True)
                ready = self._committing
            except FastFanoutError as exc:
                self._errors(self._committing, exc)
            self._commit_ticket = None
            self._committing = []
        try:
            self.broker.commit()
        except FastFanoutError as exc:
            self._errors(self._replies, exc)
            self._replies = []
        self._replies[:0] = ready

    def next_wait(self) -> tuple[float, bool]:
        """The loop's next wait: (seconds it may sleep, whether anyone waits for messages).

        Requests handled but not yet pushed for: 0. Long polls and held publishes have
        deadlines: ``TICK``. Push consumers wait for messages, or for credit: sleep until
        the next lease or delay ends (a message may become visible then, or a lease's end
        give a consumer credit), at most ``IDLE_TICK``. Nobody waiting: ``IDLE_TICK``.

        The loop asks this before each round; it reads only, so a test or a tool may ask
        it from any thread, as a gauge of what the loop does (docs/testing.md).
        """
        polling = bool(self._deliveries.long_polls) or bool(self._held)
        waiting = polling or bool(self._deliveries.consumers)
        if self._deliveries.dirty:
            return 0.0, waiting
        if polling:
            return TICK, waiting
        if waiting:
            try:
                due = self.broker.next_due_in()
            except FastFanoutError:   # a closed broker, a broken clock: requests say so
                due = None
            return (IDLE_TICK if due is None else min(due, IDLE_TICK)), waiting
        return IDLE_TICK, waiting

    def _unlink_sockets(self) -> None:
        """Remove this broker's ipc socket files (closed now; the endpoint lock still held).

        A client then hears "no such socket file" at once, not of a stale socket.
        """
        for endpoint in (self.endpoint, self.stream_endpoint):
            if endpoint.startswith("ipc://"):
                path = endpoint[len("ipc://"):]
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)

    def _shutdown(self) -> None:
        self._port.route_replies(None)   # the broker's replies to sessions: dropped now
        for guest in self._guests:
            guest.release()
        if self._stopped.is_set():
            return
        transport = self._transport
        try:
            self._restore_wakeup_fd()   # before the waker it names closes
            if transport is not None:
                self._finish_in_flight()
                self._local.close_all()
                transport.close(linger=2.0)
                self._unlink_sockets()
        finally:
            self._transport = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            if self._own_broker:
                self.broker.close()
            self._stopped.set()
            log.info("stopped %s", self.endpoint)

    def _send_replies(self) -> None:
        """Send the publish and send replies held back while this round pushed."""
        replies, self._replies = self._replies, []
        self._answer(replies)

    def _answer(self, replies: list[tuple[Session, int, list[bytes]]]) -> None:
        """Send publish and send replies."""
        for session, request_id, payload in replies:
            self._reply(session, request_id, payload)

    def _finish_in_flight(self) -> None:
        """Answer long polls (empty), end consumers, and tell every client goodbye."""
        self._end_commit()
        self._send_replies()
        stopping = ServerStopping("the broker is stopping")
        for held in self._held.take_all():
            self._error(held.session, held.request_id, stopping)
        self._deliveries.stop(stopping)
        for session in list(self._sessions.values()):
            self._send(session, Status.GOODBYE, 0, [])

    # -- local channels ----------------------------------------------------------------

    def _watch(self, fd: int) -> None:
        assert self._transport is not None
        self._transport.watch(fd)

    def _unwatch(self, fd: int) -> None:
        if self._transport is not None:
            self._transport.unwatch(fd)

    def _spill(self, session: Session, frames: list[bytes]) -> None:
        """A message too large for a session's ring goes over its socket (announced)."""
        assert self._transport is not None
        self._transport.send_reply([session.identity, *frames])

    def _end_local_session(self, session: Session) -> None:
        self._end_session(session, "its local channel ended (hung up, slow or malformed)",
                          notify=False)

    def _attach(self, session: Session, request_id: int, frames: list[bytes]) -> None:
        """ATTACH: map the client's local channel; answered over the socket."""
        if not self._local_channels:
            raise InvalidArgument(
                "this broker offers no local channels (not an ipc:// endpoint, or "
                "local_channels=False)")
        request = protocol.decode_payload(frame(frames, 0, "attach"))
        try:
            self._local.attach(session, request)
        except (ValueError, OSError) as exc:
            raise InvalidArgument(f"cannot attach the local channel: {exc}") from None
        self._socket_send(session, Status.OK, request_id, [protocol.encode_payload(None)])

    # -- sending -----------------------------------------------------------------------

    def _send(self, session: Session, status: int, request_id: int,
              payload: list[bytes]) -> bool:
        session.bytes_out += protocol.HEADER.size + sum(map(len, payload))
        if self._local:
            try:
                if self._local.send(
                        session, [protocol.encode_header(status, request_id), *payload]):
                    return True
            except (Unroutable, WouldBlock) as exc:   # a spill to a client that is gone
                return self._unsent(session, exc)
        return self._socket_send(session, status, request_id, payload)

    def _socket_send(self, session: Session, status: int, request_id: int,
                     payload: list[bytes]) -> bool:
        transport = self._transport
        assert transport is not None
        try:
            transport.send_reply(
                [session.identity, protocol.encode_header(status, request_id), *payload])
            return True
        except (Unroutable, WouldBlock) as exc:
            return self._unsent(session, exc)

    def _unsent(self, session: Session, exc: Exception) -> bool:
        """A reply could not be sent: end the session (counted by why, once)."""
        if self._sessions.get(session.identity) is not session:
            return False   # ended already (say, while ending it: its consumers' END)
        if isinstance(exc, Unroutable):
            self.counters["unroutable"] += 1
            self._end_session(session, "its connection is gone")
        else:
            self.counters["slow_client"] += 1
            self._end_session(session, "it did not read its replies")
        return False

    def _reply(self, session: Session, request_id: int, payload: list[bytes]) -> None:
        self._send(session, Status.OK, request_id, payload)

    def _error(self, session: Session, request_id: int, error: BaseException) -> None:
        code = getattr(error, "code", "internal")
        self.counters[f"error.{code}"] += 1
        self._send(session, Status.ERROR, request_id, [protocol.encode_error(error)])

    # -- requests ----------------------------------------------------------------------

    def _session(self, identity: bytes) -> Session:
        session = self._sessions.get(identity)
        if session is None:
            session = self._sessions[identity] = Session(
                identity, time.monotonic(), self._port.open_owner(),
                max_held=self._max_held_receipts)
            self.counters["sessions"] += 1
        else:
            session.last_seen = time.monotonic()
        return session

    def _handle(self, frames: list[bytes]) -> None:
        self.counters["requests"] += 1
        if self._ended and frames[0] in self._ended:
            self._refuse_ended(frames[0])
            return
        if frames[0] not in self._sessions and _is_heartbeat(frames):
            # a client that had a session this broker does not know (it restarted, say):
            # told so, rather than given a new session it does not know it has (its
            # consumers would wait for pushes that never come)
            self.counters["unknown_session_heartbeats"] += 1
            self._goodbye(frames[0], "this broker does not know the session: it restarted")
            return
        session = self._session(frames[0])
        request_id = 0
        try:
            if len(frames) < 2:
                raise MalformedFrame("a request needs a header frame")
            version, opcode, request_id = protocol.decode_header(frames[1])
            if version != protocol.PROTOCOL_VERSION:
                raise UnsupportedVersion(
                    f"protocol version {version} is not supported; this broker speaks "
                    f"version {protocol.PROTOCOL_VERSION}")
            if len(frames) - 2 > protocol.MAX_REQUEST_FRAMES:
                raise RequestTooLarge(
                    f"request of {len(frames) - 2} payload frames exceeds the protocol's "
                    f"MAX_REQUEST_FRAMES={protocol.MAX_REQUEST_FRAMES}")
            size = sum(map(len, frames)) - len(frames[0])   # header and payload, as sent
            session.requests += 1
            session.bytes_in += size
            if size > self._max_request_bytes:
                raise RequestTooLarge(
                    f"request of {size} bytes exceeds the broker's "
                    f"max_request_bytes={self._max_request_bytes} (see serve --max-request-bytes)")
            handler = self._handlers.get(opcode)
            if handler is not None:
                payload = handler(session, request_id, frames[2:])
            elif opcode in protocol.CALLS:
                payload = self._call(session, opcode, frames[2:])
            else:
                raise UnknownOpcode(f"opcode 0x{opcode:02x} is unknown")
            if payload is None:
                pass
            elif opcode == Opcode.PUBLISH or opcode == Opcode.SEND:
                # answered with this round's pushes (see _run: after them when alone)
                self._replies.append((session, request_id, payload))
            else:
                self._reply(session, request_id, payload)
        except FastFanoutError as exc:
            self._error(session, request_id, exc)
        except Exception as exc:
            log.exception("request 0x%x failed", request_id)
            error = FastFanoutError(f"internal error: {type(exc).__name__}: {exc}")
            error.code = "internal"
            self._error(session, request_id, error)

    def _call(self, session: Session, opcode: int, frames: list[bytes]) -> list[bytes]:
        args, kwargs = arguments(frames)
        if "redelivery_backoff" in kwargs:
            kwargs["redelivery_backoff"] = protocol.backoff_from_wire(kwargs["redelivery_backoff"])
        method = getattr(self.broker, protocol.CALLS[opcode])
        try:
            result = method(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgument(f"{protocol.CALLS[opcode]}: {exc}") from None
        if opcode in (Opcode.REDRIVE, Opcode.SUBSCRIBE, Opcode.CREATE_QUEUE):
            self._deliveries.dirty = True
        if opcode in (Opcode.UNSUBSCRIBE, Opcode.SET_FILTER_POLICY, Opcode.DELETE_TOPIC,
                      Opcode.DELETE_QUEUE, Opcode.SET_QUEUE_SETTINGS):
            self._held.routes_changed()   # a held publish may not need that room any more
        if opcode == Opcode.DELETE_QUEUE:
            self._prune_all = True   # its leases ended: the next housekeeping forgets them
        if opcode == Opcode.DELETE_TOPIC:
            self._streams.topic_deleted(args[0] if args else kwargs["name"])
        self._deliveries.room = True   # an ack, purge, delete, term... may have made room
        if opcode == Opcode.STATS:
            return [protocol.encode_payload(result)]
        return [protocol.encode_payload(protocol.call_result_to_wire(result))]

    def _hello(self, session: Session, request_id: int, frames: list[bytes]
               ) -> list[bytes]:
        options = protocol.decode_payload(frames[0]) if frames else {}
        session.heartbeat = bool(isinstance(options, dict) and options.get("heartbeat", True))
        wanted = options.get("inbox") if isinstance(options, dict) else None
        if self._inboxes.get(session.inbox) is session:   # a second HELLO: its first goes
            del self._inboxes[session.inbox]
        # the client's own, kept over its reconnects: the newest session naming it takes
        # it over (an inbox is 64 random bits: only its client knows it)
        session.inbox = wanted if isinstance(wanted, str) and is_inbox(wanted) else new_inbox()
        self._inboxes[session.inbox] = session
        from fastfanout import __version__

        return [protocol.encode_payload({
            "version": protocol.PROTOCOL_VERSION, "server": f"fastfanout {__version__}",
            "stream_endpoint": self.stream_endpoint,
            "heartbeat_interval": self._heartbeat_interval,
            "heartbeat_timeout": self._heartbeat_timeout,
            "max_request_bytes": self._max_request_bytes,
            "max_frame_bytes": self._max_frame_bytes,
            "hold_timeout": self._held.timeout,
            "local_channels": self._local_channels, "inbox": session.inbox})]

    def _route_reply(self, session: Session, request_id: int, frames: list[bytes]
                     ) -> list[bytes]:
        """REPLY: hand a reply to the session (or broker) whose inbox its address names.

        One for an inbox nobody has is dropped and counted.
        """
        address = text(frame(frames, 0, "reply address"), "the reply address")
        reply = bytes(frame(frames, 1, "reply frame"))
        inbox, number = parse_address(address)
        decode_reply(reply)   # one publish record, or MalformedFrame
        if inbox == self._port.reply_inbox:
            if self._port.deliver_reply(number, reply):
                self.counters["replies_routed"] += 1
        else:
            self._route_to_inbox(inbox, number, reply)
        return []

    def _route_to_inbox(self, inbox: str, number: int, reply: bytes) -> None:
        """Send a reply to the session holding ``inbox``; none: dropped and counted."""
        target = self._inboxes.get(inbox)
        if target is None:
            self.counters["replies_dropped"] += 1   # its requester is gone
        elif self._send(target, Status.REPLY, number, [reply]):
            self.counters["replies_routed"] += 1

    def _broker_reply(self, inbox: str, number: int, reply: bytes) -> None:
        """The served broker's reply to a session's request (any thread): to the loop."""
        self._broker_replies.append((inbox, number, reply))
        transport = self._transport
        if transport is not None:
            transport.wake()

    def _heartbeat(self, session: Session, request_id: int, frames: list[bytes]
                   ) -> list[bytes]:
        session.heartbeat = True
        return []

    def _bye(self, session: Session, request_id: int, frames: list[bytes]) -> None:
        self._reply(session, request_id, [])
        self._end_session(session, "it said goodbye", notify=False)

    def _server_stats(self, session: Session, request_id: int, frames: list[bytes]
                      ) -> list[bytes]:
        stats: dict[str, Any] = dict(self.counters)
        stats.update(connections=len(self._sessions), ended_sessions=len(self._ended),
                     ended_sessions_forgotten=self._ended.forgotten_early,
                     consumers=self._deliveries.consumers,
                     long_polls=self._deliveries.long_polls, held=len(self._held),
                     held_bytes=self._held.total_bytes(),
                     accepting=int(self._transport is not None
                                   and self._transport.accepting),
                     stream_subscriptions=self._streams.subscriptions(),
                     stream_listener_peers=self._streams.listener_peers(),
                     stream_topics=self._streams.topics(),
                     held_receipts=sum(s.held_receipts() for s in self._sessions.values()))
        stats.update(self._local.counts())
        stats.update(memory_stats())
        stats.update(collector_stats())
        stats["connection_stats"] = {session.identity.hex(): session.counters()
                                     for session in self._sessions.values()}
        for key, source in self.stats_sources.items():
            stats[key] = source()
        return [protocol.encode_payload(stats)]

    def _report(self, session: Session, request_id: int, frames: list[bytes]
                ) -> list[bytes]:
        """REPORT: keep the session's worker report (replacing its last one)."""
        try:
            report = check_worker_report(
                protocol.decode_payload(frame(frames, 0, "report")))
        except ValueError as exc:
            self.counters["worker_reports_refused"] += 1
            raise InvalidArgument(f"report: {exc}") from None
        session.report = report
        self.counters["worker_reports"] += 1
        return []

    def _workers(self, session: Session, request_id: int, frames: list[bytes]
                 ) -> list[bytes]:
        """WORKERS: the last report of every session that sent one and is open."""
        return [protocol.encode_payload(
            [s.report for s in self._sessions.values() if s.report is not None])]

    # -- publish and send --------------------------------------------------------------

    @staticmethod
    def _native(call: Any, name: str, frame: bytes) -> Any:
        """Run a native frame call; a frame the codec refuses is ``malformed_frame``."""
        try:
            return call(name, frame)
        except MalformedBatch as exc:
            raise MalformedFrame(str(exc)) from None

    def _hold_or_run(self, session: Session, request_id: int,
                     run: Callable[[], list[bytes]], size: int) -> list[bytes] | None:
        """Run a publish or send now, or hold it; None: it will be answered later.

        Held: behind the session's held requests, or refused by a full ``hold`` queue;
        ``size`` (bytes of its frames) counts towards the session's ``max_held_bytes``.

        Raises:
            QueueFull: the queue has no room and holding is off, or the session's held
                requests would pass ``max_held_bytes`` with this one (``hold_refused``).
        """
        room = None   # what the refusal needed: held without a rerun until it is there
        if not self._held.waiting(session):
            try:
                return run()
            except QueueFull as exc:
                if not exc.hold or self._held.timeout <= 0:
                    raise
                room = exc.room
                self._port.withdraw_refusal(room)   # held, not refused
        elif self._held.held_bytes(session) + size > self._max_held_bytes:
            self.counters["hold_refused"] += 1
            refusal = QueueFull(
                f"this session's publishes held for a full hold queue already take "
                f"{self._held.held_bytes(session)} bytes; with this one's {size} they would "
                f"pass max_held_bytes={self._max_held_bytes}: wait for the answers of those "
                f"sent before sending more (nothing of this one was published)")
            refusal.hold = True
            raise refusal
        self._held.hold(session, request_id, run, time.monotonic(), room, size)
        self.counters["held_requests"] += 1
        return None

    def _retry_held(self, now: float) -> None:
        """Run held requests again (room may have appeared, or a deadline passed)."""
        self._deliveries.room = False
        self._next_hold_check = now + TICK
        # A retried publish is answered with the next round's replies, after its commit.
        reruns = self._held.reruns
        self.counters["hold_timeouts"] += self._held.retry(
            now, lambda held, payload: self._replies.append(
                (held.session, held.request_id, payload)),
            self._held_failed, self._port.has_room, self._port.withdraw_refusal)
        if self._held.reruns != reruns:
            self.counters["hold_reruns"] += self._held.reruns - reruns

    def _held_failed(self, held: HeldRequest, error: BaseException) -> None:
        if not isinstance(error, FastFanoutError):
            log.error("held request 0x%x failed: %r", held.request_id, error)
        self._error(held.session, held.request_id, error)

    def _publish(self, session: Session, request_id: int, frames: list[bytes]
                 ) -> list[bytes] | None:
        topic = text(frame(frames, 0, "topic"), "topic name")
        batch_frame = frame(frames, 1, "records")
        return self._hold_or_run(session, request_id,
                                 lambda: self._publish_now(session, topic, batch_frame),
                                 len(batch_frame))

    def _publish_now(self, session: Session, topic: str, batch_frame: bytes) -> list[bytes]:
        # batch_frame may be read in place from a local channel's ring (a RingFrame):
        # the dispatcher may then keep large bodies there
        result = self._native(self._port.publish_frame, topic, batch_frame)
        session.published += len(result)
        self._deliveries.dirty = True
        assert self._transport is not None
        self._streams.published(self._transport, topic, batch_frame, result)
        return [result.to_wire()]   # the native batch writes the results frame itself

    def _send_op(self, session: Session, request_id: int, frames: list[bytes]
                 ) -> list[bytes] | None:
        queue = text(frame(frames, 0, "queue"), "queue name")
        records = frame(frames, 1, "records")
        return self._hold_or_run(session, request_id,
                                 lambda: self._send_now(session, queue, records),
                                 len(records))

    def _send_now(self, session: Session, queue: str, records: bytes) -> list[bytes]:
        # records may be read in place from a local channel's ring, as a publish's
        result = self._native(self._port.send_frame, queue, records)
        session.published += len(result)
        self._deliveries.dirty = True
        return [result.to_wire()]

    # -- sessions ----------------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        try:
            self.broker.sync_due()   # a durable broker's fsync_interval
        except FastFanoutError as error:
            # a documented, handled failure (logged once where it happened): one line,
            # no traceback (a data directory removed under a running broker printed one)
            log.error("the broker's storage failed: %s", error)
        probing = now < self._probe_until
        idle_since = now - self._idle_session_timeout
        polling: set[Session] | None = None   # sessions with a long poll, when needed
        prune_all, self._prune_all = self._prune_all, False
        for session in list(self._sessions.values()):
            if session.heartbeat and now - session.last_seen > self._heartbeat_timeout:
                self.counters["sessions_expired"] += 1
                self._end_session(session, "it missed its heartbeats")
                continue
            if probing and (session.consumers or session.holds_leases()):
                self._send(session, Status.PING, 0, [])
            session.expire(now)
            if prune_all or session.prune_due(now):
                self._prune(session, now)
            if (not session.heartbeat and session.last_seen < idle_since
                    and not session.consumers and not session.holds_leases()
                    and not self._held.waiting(session)):
                if polling is None:
                    polling = self._deliveries.polling_sessions()
                if session not in polling:
                    self.counters["sessions_idle"] += 1
                    self._end_session(session, "it sent nothing for its "
                                      "idle_session_timeout and does not heartbeat")
        if self._ended:
            self._ended.expire(now)

    def _prune(self, session: Session, now: float) -> None:
        """Forget the receipts ``session`` holds whose lease ended (counted)."""
        if not session.holds_leases():
            return
        owner = session.owner
        try:
            pruned = session.prune(lambda packed: self._port.live_mask(packed, session=owner),
                                   now)
        except (InvalidArgument, Closed):   # a closed broker: nothing to prune against
            return
        self.counters["held_receipts_pruned"] += pruned

    def _refuse_ended(self, identity: bytes) -> None:
        """A request of an ended session: dropped (counted); the client told once.

        A client that reads again learns from the GOODBYE that its session ended and
        connects anew; one that does not read is not waited for.
        """
        self.counters["ended_session_requests"] += 1
        why = self._ended[identity][1]
        if why is not None and self._goodbye(identity, why):
            self._ended.said_goodbye(identity)

    def _goodbye(self, identity: bytes, why: str) -> bool:
        """Try (never waiting) to tell a socket client its session ended; True if sent."""
        if self._transport is None:   # stopped: the sockets are closed
            return False
        expired = SessionExpired(
            f"the broker ended this session ({why}); the next call connects anew")
        try:
            self._transport.send_reply([identity, protocol.encode_header(Status.GOODBYE, 0),
                                        protocol.encode_error(expired)])
        except (Unroutable, WouldBlock):
            return False
        return True

    def _end_session(self, session: Session, why: str, notify: bool = True) -> None:
        """Forget a client: drop its consumers and long polls and release its leases."""
        if self._sessions.pop(session.identity, None) is None:
            return
        if self._inboxes.get(session.inbox) is session:   # not taken over by a reconnect
            del self._inboxes[session.inbox]
        released = 0
        for packed in session.take_receipts():
            try:
                released += self._port.release_packed(packed, session=session.owner)
            except (InvalidArgument, Closed):
                pass
        if released:
            self._deliveries.dirty = True
        expired = SessionExpired(f"the broker ended this session: {why}")
        self._deliveries.end_session(session, expired if notify else None)
        self._port.close_owner(session.owner)   # its tag is reused once its leases end
        self._held.drop_session(session)
        # A GOODBYE over the socket: never to a local channel's client, which reads its
        # socket only where its ring announces a message.
        socket_client = self._local.ring_for(session) is None
        self._local.detach(session)
        owed: str | None = None   # why it ended, while its client is still to be told
        if notify and socket_client and not self._goodbye(session.identity, why):
            owed = why
        self._ended.remember(session.identity, time.monotonic(), owed)
        log.info("session %s ended (%s); %d leases released", session.identity.hex(), why,
                 released)
        self.counters["leases_released"] += released


def _is_heartbeat(frames: list[bytes]) -> bool:
    """Whether a request is a HEARTBEAT (a well-formed header of this version)."""
    try:
        version, opcode, _ = protocol.decode_header(frames[1]) if len(frames) > 1 else (0, 0, 0)
    except FastFanoutError:
        return False
    return version == protocol.PROTOCOL_VERSION and opcode == Opcode.HEARTBEAT


def _endpoint_served(endpoint: str) -> BrokerRunning | None:
    """The ``BrokerRunning`` naming the broker that serves ``endpoint``, or None."""
    lock = EndpointLock(endpoint)
    try:
        lock.acquire()
    except BrokerRunning as exc:
        return exc
    except (OSError, FastFanoutError):   # no lock to probe: the first error stands
        return None
    lock.release()
    return None


def serve(endpoint: str | None = None, *,
          companion: Callable[[Server], Callable[[], None]] | None = None,
          made: str | None = None, **options: Any) -> int:
    """Serve a broker in this thread until SIGTERM, SIGINT or SIGHUP; returns 0.

    SIGHUP (the terminal it ran in closed) stops it as cleanly as the other two: by
    default it killed the process, leaving its socket and lock files behind.

    The handlers are set once the broker is built, before it binds: a signal that comes
    before the loop runs stops it as cleanly (goodbyes, journal, socket and lock files).

    This thread's process is a broker: its soft open-files limit is raised to the hard
    one (``descriptors.raise_limit``), its C allocator keeps freed delivery frames for
    reuse (``allocator.keep_freed_memory``) rather than paying page faults for new ones,
    and what it built to start is moved out of the cyclic garbage collector's reach
    (``allocator.freeze_startup_objects``): a full collection no longer walks it.

    Args:
        endpoint: command endpoint (default: the per-user ipc socket).
        companion: called once the endpoint is bound, before the loop runs (say, to
            host the NATS bridge in its thread); returns what stops it, called on a stop
            signal before the loop is told to stop (and again, a no-op, after it ended).
        made: the outermost directory the caller created for ``data_dir`` (as
            ``fastfanout serve`` does for its default one); default: the outermost one
            of ``data_dir`` missing now. A start that fails removes it.
        **options: any keyword argument of ``Server``.
    """
    made = made or missing_ancestor(options.get("data_dir"))
    raise_limit()   # before any socket: out of descriptors, libzmq aborts (descriptors.py)
    server: Server | None = None
    stop_companion: Callable[[], None] | None = None

    def stop_both() -> None:
        # The companion first: the bridge settles what it can while the broker serves.
        if stop_companion is not None:
            stop_companion()
        if server is not None:
            server.stop_nowait()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        if stop_companion is None:
            if server is not None:
                server.stop_nowait()
        else:   # a handler must not block: the companion stops in a thread of its own
            threading.Thread(target=stop_both, name="fastfanout-stop", daemon=True).start()

    previous: dict[int, Any] = {}
    stops = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)   # the mask this thread had
    try:
        server = Server(endpoint, **options)
        # From here on a signal asks the server to stop, even before its loop runs: a
        # supervisor that signals as soon as the socket file appears gets a clean stop
        # (exit 0, socket and lock files removed), never a process killed between the
        # bind and the loop with its files left behind.
        previous = {sig: signal.signal(sig, on_signal) for sig in stops}
        # The bind starts libzmq's threads. Blocked here, the stop signals are blocked
        # in them from birth (a thread inherits its creator's mask; libzmq blocks every
        # signal only once its thread runs, and on a busy machine that may come after
        # the socket file appeared and a supervisor signalled); one sent meanwhile
        # waits, pending, for the unblock below, then runs on_signal in this thread.
        server.bind()
        server.wake_on_signals()
    except BaseException as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None and server._own_broker:
            server.broker.close()   # its data directory's lock, at once
        if made is not None:
            # a start that fails (the endpoint busy) leaves nothing behind: not the data
            # directory its broker made, nor the directories made to hold it
            shutil.rmtree(made, ignore_errors=True)
        if server is None and isinstance(exc, BrokerRunning):
            # the data directory of a served endpoint is the other broker's too: say
            # that the endpoint is served (until 2026-12-05 only the directory was named)
            busy = _endpoint_served(endpoint or default_endpoint())
            if busy is not None:
                raise busy from None
        raise
    # Unblocked even when this process was started with them blocked (a parent's mask
    # is inherited across exec): a broker that ignored SIGTERM would never stop.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    try:
        # the lock files killed brokers left in the runtime directory (never a held one)
        removed = remove_stale_locks()
        if removed:
            log.info("removed %d stale lock file(s): %s", len(removed), ", ".join(removed))
        keep_freed_memory()
        if companion is not None and not server._stopping:
            stop_companion = companion(server)
        freeze_startup_objects()
        server.serve_forever()
    except BaseException:
        server.stop()   # a failure before the loop ran: its sockets and files go too
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if stop_companion is not None:
            stop_companion()
    return 0
