"""Streams: the broker's side (who listens, sequences, probes, beacons) and a listener's.

Design
------
Prior art: ZeroMQ's PUB/SUB (prefix subscriptions on the subscriber's side, filtered by
the publisher's XPUB), NATS core subjects (at most once; a slow consumer pays alone), and
Aeron's sequence numbers with heartbeats that carry the last position, so a receiver
learns of a loss at the tail, too.

A stream message is two frames, ``[topic, records]``: one per publish batch, each
record's receipt slot holding the topic's sequence number (every accepted record of a
topic takes the next number whether or not anyone listens). Two control messages share
the socket, both documented in docs/protocol.md so that a stock SUB can follow a stream:

- **Probe** ``[PROBE_PREFIX + token, b""]``. A listener's SUB subscribes its topic
  prefix, then ``PROBE_PREFIX + token``; the broker answers each probe subscription it
  reads with one probe message on that prefix. libzmq's XPUB adds a subscription to its
  filter before it hands it to the broker, and one SUB's subscriptions arrive in order
  (a connecting SUB sends them in byte order, and ``0xFF`` sorts after every UTF-8
  byte), so once the probe arrives the topic subscription is in force: ``listen()``
  returns then, and nothing published afterwards misses the listener. ``0xFF`` never
  occurs in UTF-8, so no topic name starts with the probe prefix; only a SUB of the empty
  prefix sees others' probes (``StreamFollower`` drops them).
- **Beacon** ``[topic, BEACON_MAGIC + u64 last sequence]``. A listener that loses the
  end of a burst (its queue was full) sees no later sequence number and would count no
  gap; so when a streamed topic goes quiet the broker sends its last sequence number on
  the next housekeeping tick, and again every ``BEACON_INTERVAL`` for ``BEACON_SPAN``
  (a listener that was full the first time hears a later one).

Listeners are counted per peer. The server reads every (un)subscription
(``XPUB_VERBOSER``) with the connection it came from (libzmq message metadata: the file
descriptor, the peer address -- over ipc, the peer's process -- and the CURVE user). A
frame that is neither a subscription (``0x01``) nor an unsubscription (``0x00``) is
ignored (counted), and a peer's unsubscription counts down
only what that peer subscribed (else ignored, counted): no peer's frames change another
peer's subscriptions. Every subscription counts, a peer's duplicates too, because a
descriptor may already belong to a new connection when libzmq reports the end of the old
one: libzmq's own unsubscriptions, one per prefix of a connection that ended, come
without a peer; each counts its prefix down once, and since the broker cannot tell
which connection it was, no peer keeps that prefix on record (a later unsubscription of
it by a live peer is then ignored). So the count errs only upwards (a stream frame built
for nobody), never downwards (a listener silenced) -- with one exception it cannot
rule out: a peer that connects on the descriptor of a connection that just ended, from
the same process (ipc) or host (tcp without CURVE; with CURVE, with the same key),
before libzmq reports that end, and unsubscribes a prefix the old connection held.

Each peer holds at most ``max_stream_subscriptions`` subscriptions (probes included),
each of ``MAX_SUBSCRIPTION_BYTES`` at most.
libzmq adds a subscription to the XPUB's filter before the broker reads it, so one past
the limit cannot be refused alone: the broker ends that peer's connection, and libzmq's
own unsubscriptions then take every prefix of it away (memory per listener connection is
bounded; the refusal and the cut are counted).

Slow listeners: with ``drop`` the XPUB has no ``XPUB_NODROP``, so libzmq drops a batch
only for a listener whose queue is full: that listener pays alone, and counts the loss
from sequence numbers and beacons (the broker cannot count it). With ``wait`` the XPUB
has ``XPUB_NODROP``: a send that some matching listener's full queue refuses is retried
for up to ``stream_wait`` seconds (the broker waits, every listener with it), then the
batch is dropped for everyone and counted.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any, Final, overload

from fastfanout._ext.wire import receipt_span
from fastfanout.errors import InvalidArgument, WouldBlock
from fastfanout.records import Attributes
from fastfanout.semantics.topic_pattern import pattern_matches
from fastfanout.transport.sockets import MAX_SUBSCRIPTION_BYTES, Peer, ServerTransport
from fastfanout.wire import protocol

__all__ = [
    "BEACON_INTERVAL",
    "BEACON_MAGIC",
    "BEACON_QUIET",
    "BEACON_SPAN",
    "DEFAULT_MAX_STREAM_SUBSCRIPTIONS",
    "MAX_PROBE_BYTES",
    "PROBE_PREFIX",
    "PROBE_RETRY",
    "SLOW_LISTENER_POLICIES",
    "StreamBatch",
    "StreamFollower",
    "StreamMessage",
    "Streams",
    "stream_prefix",
]

SLOW_LISTENER_POLICIES: Final = ("drop", "wait")
"""``drop``: a listener whose queue is full loses the batch alone (it counts the gap);
``wait``: the broker waits up to ``stream_wait`` seconds for room in every matching
listener's queue, then drops the batch for everyone (counted)."""

PROBE_PREFIX: Final = b"\xffprobe."
"""Topic-frame prefix of subscription probes (never a UTF-8 topic name)."""
MAX_PROBE_BYTES: Final = 64
"""Longest probe prefix the broker answers (bytes, ``PROBE_PREFIX`` included)."""
DEFAULT_MAX_STREAM_SUBSCRIPTIONS: Final = 1000
"""Default ``max_stream_subscriptions``: subscriptions one listener connection may hold
(its probes included; a ``listen()`` holds one prefix and, until it is live, one probe).
One more is refused and ends that connection (``stream_subscriptions_refused``,
``stream_listeners_cut``): libzmq keeps every subscription in the XPUB's filter, so one
peer could otherwise make the broker's memory grow without bound."""
PROBE_RETRY: Final = 10.0
"""Seconds the broker retries a probe that a full queue refused (``wait`` policy)."""
BEACON_MAGIC: Final = b"FFSQ"
"""First bytes of a beacon frame: ``BEACON_MAGIC`` + u64 last sequence (little-endian)."""
BEACON_QUIET: Final = 0.05
"""Least seconds between two beacon passes (the server's housekeeping runs them every
0.1 s): a topic without a stream batch between two passes is quiet."""
BEACON_INTERVAL: Final = 1.0
"""Seconds between the beacons of a quiet topic."""
BEACON_SPAN: Final = 60.0
"""Seconds after a topic's last stream batch during which its beacons repeat."""

_BEACON = struct.Struct("<4sQ")


def beacon_frame(sequence: int) -> bytes:
    """The second frame of a beacon: the topic's last sequence number."""
    return _BEACON.pack(BEACON_MAGIC, sequence)


class Streams:
    """Listeners' prefixes per peer, per-topic sequences, probes, beacons, the policy.

    Args:
        counters: the server's counters (``stream_batches``, ``stream_messages``,
            ``stream_dropped``, ``stream_dropped.wait``, ``stream_probes``,
            ``stream_probes_dropped``, ``stream_beacons``, ``stream_bad_frames``,
            ``stream_unknown_unsubscribes``, ``stream_subscriptions_refused``,
            ``stream_listeners_cut``).
        slow_listener: one of ``SLOW_LISTENER_POLICIES``.
        stream_wait: seconds the ``wait`` policy waits for room.
        max_subscriptions: subscriptions one peer may hold, probes included; one more
            is refused and the peer's connection ended (``ServerTransport.cut_stream_peer``).
    """

    def __init__(self, counters: Counter[str], slow_listener: str, stream_wait: float,
                 max_subscriptions: int = DEFAULT_MAX_STREAM_SUBSCRIPTIONS) -> None:
        self._counters = counters
        self._slow_listener = slow_listener
        self._stream_wait = stream_wait
        self._max_subscriptions = max_subscriptions
        self._holders: Counter[bytes] = Counter()   # prefix -> peers holding it
        # peer -> its subscriptions, probes included; a peer holding none is removed (a
        # record kept per connection that ever listened grew without bound until
        # 2026-12-05)
        self._peers: dict[Peer | None, Counter[bytes]] = {}
        self._held: Counter[Peer | None] = Counter()   # peer -> the total of its record
        self._listened: dict[str, bool] = {}
        self._sequences: dict[str, int] = {}
        self._streamed: set[str] = set()   # topics streamed since the last tick
        self._beacons: dict[str, tuple[float, float]] = {}   # topic -> (due, until)
        self._probes: deque[tuple[bytes, float]] = deque()   # refused probes, retried
        self._next_tick = 0.0

    @property
    def no_drop(self) -> bool:
        """Whether the XPUB needs ``XPUB_NODROP`` (the ``wait`` policy)."""
        return self._slow_listener == "wait"

    def subscriptions(self) -> int:
        """Listener subscriptions in force (one per listener and prefix; probes aside).

        An upper bound: see the module's notes on connections that ended.
        """
        return sum(self._holders.values())

    def read_subscriptions(self, transport: ServerTransport) -> None:
        """Apply every (un)subscription waiting on the XPUB socket; answer probes."""
        counters = self._counters
        while (change := transport.recv_subscription()) is not None:
            subscribe, prefix, peer = change
            if subscribe is None:
                counters["stream_bad_frames"] += 1
                continue
            probe = prefix.startswith(PROBE_PREFIX)
            if subscribe:
                if peer is not None and (self._held[peer] >= self._max_subscriptions
                                         or len(prefix) > MAX_SUBSCRIPTION_BYTES):
                    # libzmq has put it in the XPUB's filter already: only ending the
                    # connection takes it (and the peer's others) out again
                    counters["stream_subscriptions_refused"] += 1
                    if transport.cut_stream_peer(peer):
                        counters["stream_listeners_cut"] += 1
                    continue
                # counted each time, even a peer's duplicates: a descriptor may belong to a
                # new connection before libzmq reports the end of the old one
                self._peers.setdefault(peer, Counter())[prefix] += 1
                self._held[peer] += 1
                if probe:
                    self._probe(transport, prefix, time.monotonic() + PROBE_RETRY)
                    continue
                self._holders[prefix] += 1
            elif peer is None and (probe or self._holders[prefix] > 0):
                # libzmq's own, for a connection that ended: which one is unknown, so no
                # peer keeps the prefix on record (its own unsubscription is then ignored)
                for holder in [holder for holder, own in self._peers.items() if prefix in own]:
                    self._forget(holder, prefix, self._peers[holder][prefix])
                if probe:
                    continue
                self._drop_holder(prefix)
            elif peer is not None and peer in self._peers and self._peers[peer][prefix] > 0:
                self._forget(peer, prefix, 1)
                if probe:
                    continue
                self._drop_holder(prefix)
            else:
                if not probe:   # a listener's probe may be gone with its connection
                    counters["stream_unknown_unsubscribes"] += 1
                continue
            self._listened.clear()

    def _forget(self, peer: Peer | None, prefix: bytes, count: int) -> None:
        """Take ``count`` subscriptions of ``prefix`` off ``peer``'s record."""
        own = self._peers[peer]
        own[prefix] -= count
        if own[prefix] <= 0:
            del own[prefix]
        self._held[peer] -= count
        if not own:
            del self._peers[peer]
            del self._held[peer]

    def listener_peers(self) -> int:
        """Listener connections with a subscription on record (an upper bound)."""
        return len(self._peers)

    def topics(self) -> int:
        """Topics with a stream sequence number on record (one per topic published to)."""
        return len(self._sequences)

    def topic_deleted(self, topic: str) -> None:
        """Forget a deleted topic: its sequence number, cached match and beacon.

        A topic made again under that name is a new topic, numbered from 1 (a listener
        counts no gap for a sequence that goes back). Until 2026-12-05 every topic
        ever published to kept its record here: it grew with topic churn, forever.
        """
        self._sequences.pop(topic, None)
        self._listened.pop(topic, None)
        self._beacons.pop(topic, None)
        self._streamed.discard(topic)

    def _drop_holder(self, prefix: bytes) -> None:
        if self._holders[prefix] > 1:
            self._holders[prefix] -= 1
        else:
            del self._holders[prefix]

    def _probe(self, transport: ServerTransport, prefix: bytes, until: float) -> None:
        """Send a probe to the subscribers of ``prefix`` (retried while refused)."""
        if len(prefix) > MAX_PROBE_BYTES:
            self._counters["stream_bad_frames"] += 1
            return
        try:
            transport.publish_stream([prefix, b""])
            self._counters["stream_probes"] += 1
        except WouldBlock:
            if time.monotonic() < until:
                self._probes.append((prefix, until))
            else:
                self._counters["stream_probes_dropped"] += 1

    def listened(self, topic: str) -> bool:
        """Whether some listener's prefix matches ``topic`` (cached until a change)."""
        listened = self._listened.get(topic)
        if listened is None:
            name = topic.encode()
            listened = self._listened[topic] = any(
                name.startswith(prefix) for prefix in self._holders)
        return listened

    def published(self, transport: ServerTransport, topic: str, batch_frame: bytes,
                  result: Any) -> None:
        """Number a publish's accepted records; stream them if anyone listens."""
        sequence = self._sequences.get(topic, 0)
        if not self.listened(topic):
            self._sequences[topic] = sequence + result.accepted
            return
        frame, count = result.stream_frame(
            batch_frame, topic, sequence + 1, round(time.time() * 1_000_000))
        self._sequences[topic] = sequence + count
        if count:
            self._streamed.add(topic)
            self._send(transport, [topic.encode(), frame], count)

    def tick(self, transport: ServerTransport, now: float) -> None:
        """Housekeeping: retry refused probes, send the beacons that are due.

        Runs at most every ``BEACON_QUIET`` seconds. A topic streamed since the last
        run is not quiet yet: its first beacon goes with the next run that finds it
        quiet, then one every ``BEACON_INTERVAL`` seconds for ``BEACON_SPAN`` seconds,
        while anyone listens.

        Args:
            transport: the server's sockets.
            now: ``time.monotonic()`` seconds.
        """
        if now < self._next_tick:
            return
        self._next_tick = now + BEACON_QUIET
        for _ in range(len(self._probes)):
            prefix, until = self._probes.popleft()
            self._probe(transport, prefix, until)
        streamed = self._streamed
        for topic, (due, until) in list(self._beacons.items()):
            if due > now or topic in streamed:
                continue
            if now > until or not self.listened(topic):
                del self._beacons[topic]
                continue
            try:
                transport.publish_stream([topic.encode(),
                                          beacon_frame(self._sequences.get(topic, 0))])
                self._counters["stream_beacons"] += 1
            except WouldBlock:
                pass   # a listener's queue is full (``wait``): the next beacon, then
            self._beacons[topic] = (now + BEACON_INTERVAL, until)
        for topic in streamed:
            self._beacons[topic] = (now, now + BEACON_SPAN)
        streamed.clear()

    def _send(self, transport: ServerTransport, frames: list[bytes], count: int) -> None:
        """Send one stream batch, applying the slow-listener policy (counted)."""
        counters = self._counters
        deadline = time.monotonic() + (self._stream_wait if self._slow_listener == "wait" else 0)
        while True:
            try:
                transport.publish_stream(frames)
                counters["stream_batches"] += 1
                counters["stream_messages"] += count
                return
            except WouldBlock:
                if time.monotonic() >= deadline:
                    counters["stream_dropped"] += count
                    counters[f"stream_dropped.{self._slow_listener}"] += count
                    return
                time.sleep(0.0005)


class StreamFollower:
    """A listener's side of a stream, without I/O: probe, filter, gaps (sans-I/O).

    Feed it each message of the SUB socket (``accept``); it says which are the
    listener's stream batches. The blocking and asyncio listeners drive it.

    Args:
        pattern: the topic name or pattern followed (``orders.*``, ``orders.>``).

    Attributes:
        pattern: as given.
        prefix: the topic-name prefix to subscribe to.
        probe: this follower's probe prefix (subscribe to it after ``prefix``).
        live: the probe came back: the broker applies the subscription.
        gaps: messages missed so far, from sequence numbers and beacons per topic.
        received: messages received so far.
        malformed: stream frames dropped because they did not decode.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.prefix = stream_prefix(pattern)
        self._topic = pattern.encode()
        self._wildcard = self.prefix != self._topic
        self.probe = PROBE_PREFIX + secrets.token_hex(8).encode()
        self.live = False
        self._last: dict[str, int] = {}
        self.gaps = 0
        self.received = 0
        self.malformed = 0

    def accept(self, frames: list[bytes]) -> StreamBatch | None:
        """The stream batch in a SUB message, or None for anything else.

        Anything else: this follower's probe (``live`` becomes True), others' probes, a
        topic that only shares the prefix, a beacon (gaps counted), a malformed message.
        """
        if len(frames) != 2:
            self.malformed += 1
            return None
        name, records = frames
        if name == self._topic:
            topic = self.pattern
        elif name.startswith(PROBE_PREFIX):
            if name == self.probe:
                self.live = True
            return None
        else:
            topic = name.decode(errors="replace")
            if not (self._wildcard and pattern_matches(self.pattern, topic)):
                return None   # a longer topic sharing the prefix
        try:
            count, first, last = receipt_span(records)
        except InvalidArgument:
            if len(records) == _BEACON.size and records.startswith(BEACON_MAGIC):
                self._beacon(topic, _BEACON.unpack(records)[1])
            else:
                self.malformed += 1
            return None
        if not count:
            return None
        previous = self._last.get(topic)   # inline: once per batch on the listener's path
        if previous is not None and first > previous + 1:
            self.gaps += first - previous - 1
        self._last[topic] = last
        self.received += count
        return StreamBatch(topic, records, count)

    def _beacon(self, topic: str, sequence: int) -> None:
        """The broker's last sequence number of ``topic``: what came after ours is lost."""
        previous = self._last.get(topic)
        if previous is not None and sequence > previous:
            self.gaps += sequence - previous
        if previous is None or sequence > previous:
            self._last[topic] = sequence


class StreamMessage:
    """A message received by a stream listener (at most once, no receipt).

    Attributes:
        topic: the topic it was published to.
        sequence: its topic's sequence number (gaps mean missed messages).
        id: broker-unique message id.
        body: the body bytes.
        timestamp: clock seconds when the broker streamed it.
        group_id: FIFO group, or None.
        dedup_id: deduplication id, or None.
        priority: priority given by the publisher.
    """

    __slots__ = ("_encoded", "body", "dedup_id", "group_id", "id", "priority", "sequence",
                 "timestamp", "topic")

    def __init__(self, topic: str, record: Any) -> None:
        self.topic = topic
        self.sequence: int = record.receipt or 0
        self.id: int = record.id
        self.body: bytes = record.body
        self._encoded: bytes = record.attributes
        self.timestamp: float = record.timestamp_us / 1e6
        self.group_id: str | None = record.group_id
        self.dedup_id: str | None = record.dedup_id
        self.priority: int = record.priority or 0

    @property
    def attributes(self) -> Attributes:
        """Message attributes (decoded on access)."""
        decoded: Attributes = protocol.decode_payload(self._encoded) if self._encoded else {}
        return decoded

    def __repr__(self) -> str:
        return f"StreamMessage(topic={self.topic!r}, sequence={self.sequence}, id={self.id})"


def stream_prefix(topic_pattern: str) -> bytes:
    """The SUB prefix that covers a topic pattern: everything before the first wildcard."""
    cut = len(topic_pattern)
    for token in ("*", ">"):
        position = topic_pattern.find(token)
        if position >= 0:
            cut = min(cut, position)
    return topic_pattern[:cut].encode()


class StreamBatch(Sequence[StreamMessage]):
    """One stream batch (one publish to a topic); messages are decoded on first access.

    Attributes:
        topic: the topic the batch was published to.
        frame: the record batch as received (codec layout).
    """

    def __init__(self, topic: str, frame: bytes, count: int) -> None:
        self.topic = topic
        self.frame = frame
        self._count = count
        self._messages: list[StreamMessage] | None = None

    def _materialise(self) -> list[StreamMessage]:
        if self._messages is None:
            self._messages = [StreamMessage(self.topic, record) for record
                              in protocol.codec_module().decode_batch(self.frame)]
        return self._messages

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> StreamMessage: ...
    @overload
    def __getitem__(self, index: slice) -> list[StreamMessage]: ...

    def __getitem__(self, index: int | slice) -> StreamMessage | list[StreamMessage]:
        return self._materialise()[index]
