"""What the server knows of each client connection: liveness, consumers, held leases.

Each session and each of its push consumers has an owner tag in the broker's store
(``ServerPort.open_owner``): the store counts the leases made for each tag, so a consumer's
credit is its prefetch minus that count (no bookkeeping here), and only the session a
lease was made for may settle it.

A session must be able to give back every lease it holds the moment its client vanishes
(the server nacks them all at once). It keeps them as packed receipts — 8 bytes a
delivery, never the bodies — with the monotonic time after which each lease has surely
ended anyway:

- delivery batches, keyed by their first receipt, so an ACK whose payload is exactly a
  batch's receipts, or several batches' back to back (what a client sends to settle whole
  pushed batches), forgets them at once: a steady consumer costs only what it has in
  flight, not rate times lease time;
- leases made longer by ``extend``, each receipt once, with the latest end any extend
  gave it: a client that extends one lease many times, or names it many times in one
  EXTEND_BATCH, costs 8 bytes for it, not 8 a time (until 2026-12-05 each extend kept
  its whole receipts frame: 64 MiB frames of one receipt, 43,200 s each, grew the
  broker by 64 MiB a request).

Both are bounded in count as well as in time. Receipts whose lease ended without the
session saying so (a delivery acked out of order, a lease extended then acked, nacked or
termed, its queue deleted) stay held only until the next **prune**: the server asks the
store which held receipts still name a live lease of the session (one native pass) and
forgets the others. A session prunes when what it holds has doubled since its last prune
(at least ``PRUNE_MIN`` receipts: amortised O(1) a receipt), at most once a
``PRUNE_INTERVAL`` once it reached its limit, and every session prunes after a queue was
deleted. And a session holds at most ``max_held`` receipts (the server's
``max_held_receipts``): past it, the receipts of new deliveries and extends are not held
(counted in ``held_receipts_dropped``). A receipt not held is only not released at once
when the client vanishes: its lease ends by itself, as a lease does. Until 2026-12-06
only time bounded them: a client acking out of order, or extending then acking, with a
12-hour lease, held every receipt it was ever given for 12 hours.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from fastfanout._ext.held import ExtendedReceipts, select_packed

__all__ = ["DEFAULT_MAX_HELD_RECEIPTS", "Consumer", "EndedSessions", "Session", "Waiter"]

DEFAULT_MAX_HELD_RECEIPTS: Final = 1_000_000
"""Default ``max_held_receipts``: receipts one session holds at most (8 MiB of them as
deliveries; 16 to 32 bytes each as extends). A consumer's prefetch is at most 1,000,000."""
PRUNE_MIN: Final = 4096
"""Receipts a session holds before its first prune (a prune walks them all)."""
PRUNE_INTERVAL: Final = 1.0
"""Seconds between prunes of a session at its ``max_held`` (each walks all it holds)."""


@dataclass(eq=False)
class Session:
    """One DEALER connection of a client.

    Attributes:
        identity: the ROUTER routing id of the connection.
        last_seen: monotonic time of its last request.
        owner: its owner tag in the broker (``ServerPort.open_owner``): the leases of its
            receives carry it, and its settle calls pass it as their ``session``.
        heartbeat: the client promised heartbeats (HELLO), so silence ends the session.
        consumers: request ids of its CONSUMEs.
        long_polls: its RECEIVEs waiting for messages now.
        report: the last worker report it sent (REPORT), shown by WORKERS while the
            session lasts.
        requests: requests it sent.
        published: messages of its PUBLISHes and SENDs that went through (duplicates
            included), counted per request.
        delivered: messages leased to it, pushed to its consumers or answering its
            RECEIVEs, counted per batch.
        acked: receipts it acked (ACK, SETTLE), counted per request; a SETTLE frame
            refused for a stale receipt is not counted.
        bytes_in: bytes of its requests (header and payload frames).
        bytes_out: bytes of the replies and pushes sent to it as frames (pushes written
            straight into a local channel's ring are not counted: they make no frame).
        max_held: most receipts it holds (see the module).
        inbox: its reply inbox, set by its HELLO (its client's, else one made then; empty
            before): replies to its requests are addressed to it
            (``fastfanout.semantics.replies``).
    """

    identity: bytes
    last_seen: float
    owner: int
    heartbeat: bool = False
    consumers: set[int] = field(default_factory=set)
    long_polls: int = 0
    report: dict[str, Any] | None = None
    requests: int = 0
    published: int = 0
    delivered: int = 0
    acked: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    max_held: int = DEFAULT_MAX_HELD_RECEIPTS
    inbox: str = ""
    _batches: dict[bytes, tuple[float, bytes]] = field(default_factory=dict)
    _extended: ExtendedReceipts = field(default_factory=ExtendedReceipts)
    _held_bytes: int = 0   # of the receipts above: SERVER_STATS adds them for every session
    _prune_at: int = PRUNE_MIN   # held receipts that make the next prune due
    _dropped_since_prune: bool = False
    _next_full_prune: float = 0.0

    def counters(self) -> dict[str, int]:
        """Its counters as SERVER_STATS reports them (``connection_stats``)."""
        return {"owner": self.owner, "requests": self.requests, "published": self.published,
                "delivered": self.delivered, "acked": self.acked,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "consumers": len(self.consumers)}

    def hold_batch(self, receipts: bytes, until: float) -> int:
        """Remember the receipts of a delivery batch until ``until`` (monotonic).

        Returns how many were not held for ``max_held`` (the first ones are, up to it).
        """
        key = receipts[:8]
        replaced = self._batches.get(key)
        if replaced is not None:
            self._held_bytes -= len(replaced[1])
            del self._batches[key]
        room = 8 * self.max_held - self._held_bytes
        dropped = 0
        if len(receipts) > room:
            dropped = (len(receipts) - max(room, 0)) >> 3
            self._dropped_since_prune = True
            if room <= 0:
                return dropped
            receipts = receipts[:room]
        self._batches[key] = (until, receipts)
        self._held_bytes += len(receipts)
        return dropped

    def hold_extended(self, receipts: bytes, until: float) -> int:
        """Remember receipts whose lease ``extend`` pushed out to ``until``.

        Each receipt is kept once, until the latest end given to it (in a native table:
        no Python object per receipt, see ext/held.pyx). Returns how many new ones were
        not held for ``max_held``.
        """
        before = len(self._extended)
        room = self.max_held - self._held_bytes // 8
        dropped: int = self._extended.hold_packed(receipts, until, before + max(room, 0))
        self._held_bytes += 8 * (len(self._extended) - before)
        if dropped:
            self._dropped_since_prune = True
        return dropped

    def prune_due(self, now: float) -> bool:
        """Whether a prune is due.

        It is when what it holds doubled since the last one, or when it dropped receipts
        at ``max_held`` and the last prune was ``PRUNE_INTERVAL`` ago.
        """
        if self._held_bytes >> 3 >= self._prune_at:
            return True
        return self._dropped_since_prune and now >= self._next_full_prune

    def prune(self, live: Callable[[bytes], bytes], now: float) -> int:
        """Forget the held receipts whose lease ended; returns how many went.

        ``live`` maps packed receipts to one byte each, 1 for a live lease of this
        session (``ServerPort.live_mask``).
        """
        before = self._held_bytes
        if self._batches:
            batches = self._batches
            mask = live(b"".join(packed for _, packed in batches.values()))
            kept: dict[bytes, tuple[float, bytes]] = {}
            offset = 0
            for until, packed in batches.values():
                count = len(packed) >> 3
                flags = mask[offset:offset + count]
                offset += count
                if 0 not in flags:
                    kept[packed[:8]] = (until, packed)
                elif 1 in flags:
                    rest = select_packed(packed, flags)
                    kept[rest[:8]] = (until, rest)
                    self._held_bytes -= len(packed) - len(rest)
                else:
                    self._held_bytes -= len(packed)
            self._batches = kept
        if self._extended:
            self._held_bytes -= 8 * self._extended.keep(live(self._extended.packed()))
        held = self._held_bytes >> 3
        self._prune_at = max(PRUNE_MIN, 2 * held)
        self._dropped_since_prune = False
        self._next_full_prune = now + PRUNE_INTERVAL
        return (before - self._held_bytes) >> 3

    def settled(self, receipts: bytes) -> None:
        """An ack of ``receipts`` went through: forget each whole batch it is made of.

        A client settles whole pushed batches, one or several back to back in one
        request; the scan stops at the first receipts that do not start a held batch.
        Receipts that are the start of a held batch, not all of it (the messages of a
        ``receive`` acked one by one, in order), leave the rest held: until 2026-12-05
        the whole batch stayed until its lease ended, so a session acking that way held
        every receipt it was given for ``visibility_timeout`` (``held_receipts`` grew
        with the rate times the lease).
        """
        batches = self._batches
        offset, end = 0, len(receipts)
        while offset < end:
            key = receipts[offset:offset + 8]
            held = batches.get(key)
            if held is None:
                return
            batch = held[1]
            if not receipts.startswith(batch, offset):
                acked = end - offset
                if acked < len(batch) and batch.startswith(receipts[offset:]):
                    del batches[key]
                    rest = batch[acked:]
                    batches[rest[:8]] = (held[0], rest)
                    self._held_bytes -= acked
                return
            del batches[key]
            self._held_bytes -= len(batch)
            offset += len(batch)

    def expire(self, now: float) -> None:
        """Forget what was held past its time (those leases have ended by themselves)."""
        batches = self._batches
        while batches:
            first = next(iter(batches))
            if batches[first][0] >= now:
                break
            self._held_bytes -= len(batches.pop(first)[1])
        self._held_bytes -= 8 * self._extended.expire(now)

    def holds_leases(self) -> bool:
        """Whether the session may still hold leases."""
        return bool(self._batches or self._extended)

    def held_receipts(self) -> int:
        """How many receipts are remembered (kept count of: no walk)."""
        return self._held_bytes // 8

    def take_receipts(self) -> list[bytes]:
        """Every remembered receipts frame, forgetting them (the client is gone)."""
        held = [packed for _, packed in self._batches.values()]
        if self._extended:
            held.append(self._extended.take())
        self._batches = {}
        self._held_bytes = 0
        self._prune_at = PRUNE_MIN
        return held


@dataclass(eq=False)
class Consumer:
    """A CONSUME of a session: where it reads, and its owner tag in the broker.

    The store counts the owner's leases; a push never takes them past its prefetch.
    """

    session: Session
    request_id: int
    queue: str
    owner: int
    lease: float
    visibility_timeout: float | None


@dataclass(eq=False)
class Waiter:
    """A RECEIVE that waits (long poll) until messages come or its deadline passes."""

    session: Session
    request_id: int
    queue: str
    max_messages: int
    lease: float
    visibility_timeout: float | None
    deadline: float


class EndedSessions(OrderedDict[bytes, tuple[float, str | None]]):
    """The identities of sessions the broker ended, remembered for a while.

    A connection keeps its identity, so the requests its client still sends (or had
    queued) after its session ended would silently start a new session, with none of
    the old one's consumers: they are dropped instead, and the client is told to start
    a new connection. Identity -> (monotonic time it is forgotten, why the session
    ended while a GOODBYE saying so is still owed, else None), oldest first; a plain
    mapping, so the server's check per request is one dictionary lookup.

    Args:
        memory: seconds an identity is remembered.
        limit: most identities remembered (the oldest are forgotten first, counted in
            ``forgotten_early``).
    """

    def __init__(self, memory: float, limit: int) -> None:
        super().__init__()
        self.memory = memory
        self.limit = limit
        self.forgotten_early = 0
        """Identities forgotten before their time because ``limit`` was reached."""

    def remember(self, identity: bytes, now: float, goodbye_owed: str | None) -> None:
        """Remember an ended session's identity from ``now`` (monotonic seconds).

        ``goodbye_owed``: why it ended, when its client is still to be told.
        """
        self.pop(identity, None)
        self[identity] = (now + self.memory, goodbye_owed)
        while len(self) > self.limit:
            self.popitem(last=False)
            self.forgotten_early += 1

    def said_goodbye(self, identity: bytes) -> None:
        """The GOODBYE owed to ``identity`` was sent."""
        until, _ = self[identity]
        self[identity] = (until, None)

    def expire(self, now: float) -> None:
        """Forget the identities remembered long enough."""
        while self:
            identity, (until, _) = next(iter(self.items()))
            if until > now:
                return
            del self[identity]
