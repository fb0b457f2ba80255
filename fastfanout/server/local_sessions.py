"""The broker's side of local channels: which sessions have one, and their rounds.

A session with a local channel (``fastfanout.transport.local_channel``) gets every message
through its ring; the server hands requests read from the rings to the same ``handle``
as socket requests, so the two paths share every rule. This module keeps the
bookkeeping out of the server's loop:

- ``attach`` maps a client's channel (the ``ATTACH`` request) and watches its bell;
- ``round`` drains the bells a poll saw, retries the messages that waited for room in a
  ring, and reads the rings of every local session, up to a bound per round, in the
  order the client wrote; a marker stops a ring until the socket message it announces
  arrives (``before_socket_message``: a socket request of a local session first reads
  the ring up to its marker, so order holds across the two paths), and a count record
  until as many socket requests that no marker announced have (a client pinned out
  sends so: fastfanout.transport.local_channel, "Unannounced spills");
- ``send`` writes (or spills, or queues when the ring is full) a message to a session;
- ``may_sleep`` tells each ring's writer to ring the bell (and says whether a message
  slipped in meanwhile).

The records frame of a large PUBLISH or SEND (``HOLD_MIN_BYTES`` or more) is read in
place (a ``RingFrame``): the broker makes its blobs straight from the client's ring, and
the record is let go when the request is done (a held request keeps it, within the
ring's bound: ``shmring.pyx``). Any other large frame is copied out as before.

Deliveries by reference (``deliver_by_reference``, on by default): a push that is exactly
such a publish frame goes into the consumer's ring as a reference to it, which the
consumer maps (shmring.pyx, "Deliveries by reference"; deliveries.pyx says when). The
frame stays pinned in its producer's ring until the consumer's ring's tail passes the
reference: every ``round`` lets go of what was read past (``unpin``), and ``may_sleep``
has each consumer's ring ring the broker when its tail moves while frames are pinned.
A session that ends while its ring still pins frames and its client's process lives
(missed heartbeats, a slow client; a client's ``close()`` makes its own copies of what it
views first, shmring.pyx) leaves that ring *lingering*: the
client may still view the frames, and the producer must not write over them; each round
lets go of what the client has dropped since, and the ring is closed once nothing is
pinned or the process has ended (its ``pidfd``; without one, at once).

A session whose client process has ended (its bell hung up, or its process's ``pidfd``
became readable), that left its queue unread longer than ``backlog_seconds`` or let it
grow past ``backlog_bytes``, or that wrote a malformed record, is handed to ``end`` in
the next round (never in the middle of a send: the server may be iterating its
consumers then).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

from fastfanout._ext.shmring import FULL, SharedRing
from fastfanout.errors import MalformedFrame, PeerGone, Unroutable, WouldBlock
from fastfanout.server.descriptors import CHANNEL_DESCRIPTORS, descriptors_free, reserve
from fastfanout.server.sessions import Session
from fastfanout.transport.local_channel import HOLD_MIN_BYTES, LocalChannel
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode

__all__ = ["BACKLOG_BYTES", "BACKLOG_SECONDS", "DELIVER_BY_REFERENCE", "MAX_LINGERING",
           "ROUND_MESSAGES", "LocalSessions"]

log = logging.getLogger("fastfanout.server.loop")

DELIVER_BY_REFERENCE = True
"""Whether pushes to local consumers go by reference where they can (see the module
essay); ``fastfanout serve --no-deliver-by-reference`` turns it off. Off by default until
2026-12-07, when a consumer keeping views of its batches could stall its producers (it
is asked for them now, and a producer pinned out goes on unannounced)."""
MAX_LINGERING = 64
"""Most rings of ended sessions the broker keeps for the producers' frames their
references pin while the consumer's process lives (it may still view them); one more
closes the longest-kept, letting its producers' frames go (``local_lingering_dropped``)."""
PINS_BEFORE_ASKED = 4
"""Frames a consumer may pin by reference before the broker asks it to give the older
ones back when a producer's ring is short of room (shmring.pyx, "Pins given back on
demand"): a consumer that drops each batch's views in time pins its batch at hand and
the pushes on their way, and is never asked (``local_pins_asked`` counts the asks)."""
ROUND_MESSAGES = 1000
"""Most messages one round reads from one session's ring (as ``ROUND_REQUESTS``)."""
BACKLOG_SECONDS = 10.0
"""Longest a session's queue may wait for room in its ring before the session is ended
as a slow client (counted in ``slow_client``), as a socket's full queue would be."""
BACKLOG_BYTES = 64 << 20
"""Most bytes (ring records) a session's queue may hold while it waits for room in its
ring (64 MiB: 16 full default rings); a message past it is dropped and the session is
ended as a slow client (counted in ``local_backlog_overflow`` and ``slow_client``), its
leases released."""


class LocalSessions:
    """The sessions that talk through local channels.

    Args:
        counters: the server's counters (``local_channels``, ``local_spills``,
            ``local_pinned_spills``,
            ``local_ring_full``, ``local_peer_gone``, ``local_malformed``,
            ``local_backlog_overflow``, ``slow_client``).
        watch, unwatch: register / forget a bell with the server's poll.
        spill: send a message over a session's socket (too large for its ring).
        handle: handle one request ``[identity, header, *payload]``.
        end: end a session at once (its client is gone, slow or misbehaving).
        backlog_seconds: seconds a session's queue may wait for room before the session
            is ended as a slow client.
        backlog_bytes: bytes a session's queue may hold before the session is ended as
            a slow client.
        deliver_by_reference: whether a push that is exactly a publish frame read in
            place from a producer's ring goes to a consumer's ring by reference (no copy).
    """

    def __init__(self, counters: Counter[str], *, watch: Callable[[int], None],
                 unwatch: Callable[[int], None],
                 spill: Callable[[Session, list[bytes]], None],
                 handle: Callable[[list[bytes]], None], end: Callable[[Session], None],
                 backlog_seconds: float = BACKLOG_SECONDS,
                 backlog_bytes: int = BACKLOG_BYTES,
                 deliver_by_reference: bool = DELIVER_BY_REFERENCE) -> None:
        self.counters = counters
        self._watch = watch
        self._unwatch = unwatch
        self._spill = spill
        self._handle = handle
        self._end = end
        self.backlog_seconds = backlog_seconds
        self.backlog_bytes = backlog_bytes
        self.deliver_by_reference = deliver_by_reference
        self.sessions: dict[Session, LocalChannel] = {}
        self._by_bell: dict[int, Session] = {}   # bells and pidfds
        self._backlogged: set[Session] = set()
        self._overflowed: set[Session] = set()
        # (device, inode) of each attached session's two rings
        self._rings_of: dict[Session, set[tuple[int, int]]] = {}
        # rings of ended sessions still pinning frames: (ring, a pidfd of its client)
        self._lingering: list[tuple[SharedRing, int]] = []
        self.backlog_peak = 0   # most bytes one session's queue ever held

    def __bool__(self) -> bool:
        return bool(self.sessions)

    def counts(self) -> dict[str, int]:
        """Spills and full-ring waits so far (the open channels' included), bytes queued.

        ``local_pinned_spills``: pushes sent over the socket because the client slept
        with its ring's room pinned by frames it still viewed (part of ``local_spills``).

        ``local_backlog_bytes``: bytes waiting for room in rings now, all sessions;
        ``local_backlog_peak_bytes``: the most one session's queue has held (never
        above ``backlog_bytes``).

        ``local_references``: pushes written into consumers' rings by reference (no
        copy); ``local_reference_refusals``: pushes that could have gone so but were
        copied (``MAX_PINS`` frames pinned for that consumer, or the producer's ring
        closing); ``local_pinned_frames``: producers' frames pinned now by references
        not yet read past (the lingering rings' included); ``local_lingering_rings``:
        rings of ended sessions kept for them now; ``local_lingering_dropped``: such
        rings closed past ``MAX_LINGERING``; ``local_unannounced``: socket requests of
        local sessions that no marker announced (a client pinned out with no room even
        for a marker: fastfanout.transport.local_channel, "Unannounced spills");
        ``local_pins_asked``: times a consumer was asked to give back the frames it
        holds by reference (a producer waited for the room they pinned).
        """
        live = self.sessions.values()
        return {"local_spills": self.counters["local_spills"] + sum(c.spills for c in live),
                "local_pinned_spills": (self.counters["local_pinned_spills"]
                                        + sum(c.pinned_spills for c in live)),
                "local_ring_full": self.counters["local_ring_full"] + sum(c.full for c in live),
                "local_sessions": len(self.sessions),
                "local_backlog_bytes": sum(c.backlog_bytes for c in live),
                "local_backlog_peak_bytes": self.backlog_peak,
                "local_references": (self.counters["local_references"]
                                     + sum(c.outgoing.references_written for c in live)),
                "local_reference_refusals": (self.counters["local_reference_refusals"]
                                             + sum(c.outgoing.reference_refusals
                                                   for c in live)),
                "local_pinned_frames": (sum(c.outgoing.pins for c in live)
                                        + sum(ring.pins for ring, _ in self._lingering)),
                "local_lingering_rings": len(self._lingering),
                "local_lingering_dropped": self.counters["local_lingering_dropped"],
                "local_unannounced": self.counters["local_unannounced"],
                "local_pins_asked": self.counters["local_pins_asked"]}

    def ring_for(self, session: Session) -> SharedRing | None:
        """The ring a push to ``session`` may be written into now (None: send it)."""
        channel = self.sessions.get(session)
        if channel is None or channel.backlog or channel.overflowed:
            return None   # behind a backlog, a push must queue too (order)
        return channel.outgoing

    def push_target(self, session: Session, header: bytes
                    ) -> tuple[bool, SharedRing | None, int | None]:
        """Where a push to ``session`` goes now: ``(push now?, ring, most frame bytes)``.

        A session without a channel: ``(True, None, None)`` (sent, no bound). A local
        session's push is leased only when its ring has room for one of its size (a
        quarter of the ring, ``SharedRing.pair_room``), so that what is leased is written
        into the ring at once, never queued in front of it with its lease running: with
        room, ``(True, ring, bound)``; without, or behind a backlog, ``(False, None,
        None)`` — the ring's reader rings when it makes room (``wait_room`` announced the
        wait) and that round pushes. A reader asleep with its room pinned by frames it
        holds (``PINNED``) gets the push anyway, sent around its ring.
        """
        channel = self.sessions.get(session)
        if channel is None:
            return True, None, None
        if channel.backlog or channel.overflowed:
            return False, None, None
        ring = channel.outgoing
        if ring.wait_room(header) == FULL:
            return False, None, None
        return True, ring, ring.pair_room(header)

    def ring_bell(self, session: Session) -> None:
        """Ring a local session's bell (something was written straight into its ring)."""
        channel = self.sessions.get(session)
        if channel is not None:
            channel.ring_peer()

    def attach(self, session: Session, request: object) -> None:
        """Open the client's channel: its messages use it from now on.

        ``request`` is the ATTACH payload (see ``LocalChannel.attach``).

        Raises:
            MalformedFrame: ``request`` does not have the payload's form.
            ValueError, OSError: a descriptor it names is not a channel's of this user
                (nothing is kept); or the broker is short of descriptors (fewer than
                ``descriptors.reserve()`` would be left for sockets: counted
                ``local_refused_descriptors``).
        """
        if session in self.sessions:
            raise ValueError("this connection already has a local channel")
        free = descriptors_free()
        if free is not None and free - CHANNEL_DESCRIPTORS < reserve():
            self.counters["local_refused_descriptors"] += 1
            raise OSError(errno.EMFILE, (
                f"the broker has {free} file descriptors left under its open-files limit "
                f"and keeps {reserve()} for sockets (a channel takes "
                f"{CHANNEL_DESCRIPTORS}); stay on the socket, or raise the broker's "
                f"limit (ulimit -n)"))
        channel = LocalChannel.attach(request)
        rings = _ring_files(channel)
        if any(not rings.isdisjoint(taken) for taken in self._rings_of.values()):
            # another session's ring: two sessions would read (or write) one ring, and
            # each would take the other's messages for its own
            channel.close()
            raise ValueError("a ring it names is already another local channel's")
        self._rings_of[session] = rings
        channel.hold_min = HOLD_MIN_BYTES   # publish frames are read in place (_read)
        channel.incoming.on_room = channel.ring_peer   # a held publish let go: ring it
        channel.outgoing.takes_references = self.deliver_by_reference
        channel.spill = partial(self._spill, session)
        self.sessions[session] = channel
        for fd in _watched(channel):
            self._by_bell[fd] = session
            self._watch(fd)
        self.counters["local_channels"] += 1

    def detach(self, session: Session) -> None:
        """Forget a session's channel (its session ended) and close it."""
        channel = self.sessions.pop(session, None)
        if channel is None:
            return
        self._backlogged.discard(session)
        self._overflowed.discard(session)
        self._rings_of.pop(session, None)
        for fd in _watched(channel):
            self._by_bell.pop(fd, None)
            self._unwatch(fd)
        self.counters["local_spills"] += channel.spills
        self.counters["local_pinned_spills"] += channel.pinned_spills
        self.counters["local_ring_full"] += channel.full
        self.counters["local_references"] += channel.outgoing.references_written
        self.counters["local_reference_refusals"] += channel.outgoing.reference_refusals
        if (channel.outgoing.pins and channel.process_fd is not None
                and not _process_ended(channel.process_fd)):
            # its client may still view the frames: they stay pinned (the module essay)
            self._lingering.append((channel.outgoing, os.dup(channel.process_fd)))
            channel.close(keep_outgoing=True)
            while len(self._lingering) > MAX_LINGERING:
                self.counters["local_lingering_dropped"] += 1
                self._close_lingering(0)
            return
        channel.close()

    def close_all(self) -> None:
        """Close every channel (the broker stops; what was written stays readable).

        Messages still queued for room get one last try.
        """
        for session in list(self.sessions):
            try:
                self.sessions[session].flush_backlog(0.0)
            except (Unroutable, WouldBlock):   # a spill to a client that is gone
                pass
            self.detach(session)
        while self._lingering:
            self._close_lingering(0)

    def _close_lingering(self, index: int) -> None:
        ring, process_fd = self._lingering.pop(index)
        ring.close()   # lets go of every pin
        os.close(process_fd)

    def _let_go_lingering(self) -> None:
        """Let go of what the clients of ended sessions have dropped since.

        A ring that pins nothing any more, or whose client's process has ended, is closed.
        """
        for index in range(len(self._lingering) - 1, -1, -1):
            ring, process_fd = self._lingering[index]
            if not ring.unpin() or _process_ended(process_fd):
                self._close_lingering(index)

    def send(self, session: Session, frames: list[bytes]) -> bool:
        """Send ``frames`` to a local session; False when it has no channel."""
        channel = self.sessions.get(session)
        if channel is None:
            return False
        if not channel.send_or_queue(frames, time.monotonic(), self.backlog_bytes):
            self._overflowed.add(session)   # dropped: the session ends next round
        elif channel.backlog:
            self._backlogged.add(session)
            self.backlog_peak = max(self.backlog_peak, channel.backlog_bytes)
        return True

    def round(self, bells: list[int]) -> None:
        """Drain the bells a poll saw, end what is gone or overflowed, read the rings.

        Queued messages are retried before the rings are read.
        """
        for fd in bells:
            session = self._by_bell.get(fd)
            if session is None:
                continue
            try:
                self.sessions[session].heard(fd)
            except PeerGone:
                self.counters["local_peer_gone"] += 1
                self._end(session)
        if self._overflowed:
            for session in list(self._overflowed):
                log.warning("session %s: more than %d bytes wait for room in its ring; "
                            "ending it (slow client)", session.identity.hex(),
                            self.backlog_bytes)
                self.counters["local_backlog_overflow"] += 1
                self.counters["slow_client"] += 1
                self._end(session)
            self._overflowed.clear()
        if self._backlogged:
            self._flush_backlogs()
        if self._lingering:
            self._let_go_lingering()
        waits_on_pins = False
        for session, channel in list(self.sessions.items()):
            if channel.outgoing.pins:
                channel.outgoing.unpin()   # frames its reader is done with: let go
            if not channel.stopped and channel.incoming.pending():
                self._read(session, channel, until_marker=False)
            if channel.incoming.waits_on_pins():
                waits_on_pins = True
        if waits_on_pins:
            self._ask_for_pins()

    def _ask_for_pins(self) -> None:
        """Ask the consumers pinning many frames to give the older ones back.

        A producer waits for room that frames pinned by references keep: every consumer
        pinning more than ``PINS_BEFORE_ASKED`` frames is asked (shmring.pyx, "Pins given
        back on demand"), and each one asked anew is rung.
        """
        for channel in self.sessions.values():
            pins = channel.outgoing.pins
            if pins < channel.pins_when_asked:
                channel.pins_when_asked = 0   # it gave back what it could
            # asked again only once it pins as many more (a consumer with nothing it
            # can give, its ring's tail held by a frame of its own, was asked and woken
            # a thousand times a second: found by a bug hunt)
            if (pins > PINS_BEFORE_ASKED
                    and pins >= channel.pins_when_asked + PINS_BEFORE_ASKED
                    and channel.outgoing.ask_for_pins()):
                channel.pins_when_asked = pins
                self.counters["local_pins_asked"] += 1
                channel.ring_peer()

    def _flush_backlogs(self) -> None:
        now = time.monotonic()
        for session in list(self._backlogged):
            channel = self.sessions.get(session)
            try:
                flushed = channel is None or channel.flush_backlog(now)
            except (Unroutable, WouldBlock):
                # a queued message too large for the ring found the client's socket gone
                # or full: the session cannot be served in order any more
                self.counters["slow_client"] += 1
                self._backlogged.discard(session)
                self._end(session)
                continue
            if flushed:
                self._backlogged.discard(session)
            elif channel is not None and now - channel.backlog_since > self.backlog_seconds:
                self.counters["slow_client"] += 1
                self._end(session)

    def before_socket_message(self, session: Session | None) -> None:
        """A socket request of ``session`` arrived: handle its ring up to the marker.

        The request is the one a marker announced (read before, or now), or else one the
        client sent unannounced, which counts towards the ring's count records.
        """
        channel = None if session is None else self.sessions.get(session)
        if session is None or channel is None:
            return
        if not channel.stopped:
            self._read(session, channel, until_marker=True)
            if session not in self.sessions:
                return   # a request of its ring ended the session
        if channel.awaiting_socket:
            channel.awaiting_socket = False   # the announced one
        else:
            channel.unannounced += 1
            self.counters["local_unannounced"] += 1

    def _read(self, session: Session, channel: LocalChannel, until_marker: bool) -> None:
        """Handle what the ring holds, up to a marker or an unreached count record.

        A marker sets ``awaiting_socket``; a count record the unannounced requests taken
        have not reached leaves the channel ``stopped``. With ``until_marker``, up to the
        ring's end too (else one round's worth).
        """
        identity = session.identity
        while True:
            try:
                messages = channel.read(ROUND_MESSAGES)
            except ValueError as exc:
                # a record the ring refuses: the client wrote past its bounds
                log.warning("session %s: malformed record in its ring (%s); ending it",
                            identity.hex(), exc)
                self.counters["local_malformed"] += 1
                self._end(session)
                return
            for message in messages:
                if message is None:
                    channel.awaiting_socket = True
                    return
                if isinstance(message, int):   # a count record
                    channel.count_wanted = message
                    if channel.stopped:
                        return   # unannounced requests to take first
                    continue
                if type(message[-1]) is not bytes:   # the only frame ever read in place
                    message = _in_place(message)
                self._handle([identity, *message])
                if session not in self.sessions:
                    return   # the request ended the session (BYE)
            if not until_marker or not messages:
                return

    def may_sleep(self) -> bool:
        """Ask every ring's writer to ring when it writes; False if one just did write.

        Also False while a session waits to be ended (the next round ends it).
        """
        if self._overflowed:
            return False
        for channel in self.sessions.values():
            if not channel.stopped and not channel.incoming.sleep():
                return False
            if not channel.outgoing.watch_pins():
                return False   # its reader read past a pinned frame: let it go first
        return True


def _process_ended(process_fd: int) -> bool:
    """Whether the process of ``process_fd`` (a pidfd: readable once it ends) has ended."""
    poller = select.poll()
    poller.register(process_fd, select.POLLIN)
    return bool(poller.poll(0))


def _ring_files(channel: LocalChannel) -> set[tuple[int, int]]:
    """The (device, inode) of a channel's two rings: which memory files they are."""
    files = set()
    for ring in (channel.incoming, channel.outgoing):
        info = os.fstat(ring.fileno())
        files.add((info.st_dev, info.st_ino))
    return files


def _watched(channel: LocalChannel) -> list[int]:
    """The descriptors the server polls for ``channel``: its bell, the client's pidfd."""
    if channel.process_fd is None:
        return [channel.bell.fd]
    return [channel.bell.fd, channel.process_fd]


def _in_place(message: list[bytes]) -> list[bytes]:
    """A request whose last frame was read in place from a ring (a ``RingFrame``).

    Kept so only as a PUBLISH's or SEND's records frame (read once, natively); any other
    request gets its frames copied.
    """
    if len(message) == 3:
        try:
            opcode = protocol.decode_header(message[0])[1]
        except MalformedFrame:   # the handler refuses it
            opcode = -1
        if opcode == Opcode.PUBLISH or opcode == Opcode.SEND:
            return message
    return [frame if type(frame) is bytes else bytes(frame) for frame in message]
