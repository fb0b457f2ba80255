"""Publishes the server keeps while a ``hold`` queue is full, answered once there is room.

Prior art: Pulsar's ``producer_request_hold`` backlog policy (the broker holds a
producer's sends while a backlog quota is exceeded), RabbitMQ's publisher flow control.
A queue with ``overflow="hold"`` refuses like ``reject`` in the embedded broker
(``QueueFull`` with ``hold=True``); the server, instead of answering with that error,
keeps the request and runs it again whenever room may have appeared (an ack, a purge, a
call that removes messages). The publisher's future simply resolves later: a pipelining
client with a bounded window of batches in flight is paced to its consumers, and the
broker's memory stays bounded, without a message lost or an error to retry.

Order: a session's requests stay in the order it sent them. Once one of its publishes is
held, its later publishes and sends wait behind it (they are held too, untried), so a
later message never overtakes an earlier one; other sessions are not held up.

Limits: a request is held at most ``timeout`` seconds, then answered with the
``QueueFull`` it met (counted as ``hold_timeouts``); ``timeout=0`` turns holding off (the
error is answered at once, as for ``reject``). A session's held requests keep their
frames: the server holds one more only while they stay within its ``max_held_bytes``
(the first is always held), and answers the others with ``QueueFull`` at once (counted as
``hold_refused``): a client that pipelines without waiting for answers made the broker
keep every request it sent until 2026-12-05.

Retries: a held request keeps the room its last refusal needed (``QueueFull.room``) and
is run again only once that queue has it (``retry``'s ``room``), at its deadline, or
after a change of topics or subscriptions (``routes_changed``: the queue may no longer be
one of its targets). A
publish of 2,000 messages run against a queue still short of room made and freed 2,000
blobs each time (~50 µs), once per round while a consumer acked. A batch whose need
shrank meanwhile (its dedup ids published by another session) waits for the room it
needed before, at most until its deadline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastfanout.errors import QueueFull

__all__ = ["HeldRequest", "HeldRequests"]


@dataclass(eq=False)
class HeldRequest:
    """One held publish or send: who asked, and how to run it again."""

    session: Any
    request_id: int
    run: Callable[[], list[bytes]]
    deadline: float
    room: tuple[str, int, int] | None = None   # its last refusal: (queue, messages, bytes)
    size: int = 0   # bytes of its frames


class HeldRequests:
    """The held requests of a server, oldest first.

    Args:
        timeout: seconds a request may be held before it is answered with ``QueueFull``.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._held: deque[HeldRequest] = deque()
        # session -> [how many of its requests wait, their size in bytes]
        self._sessions: dict[Any, list[int]] = {}
        self.reruns = 0
        """Held requests run again so far (``retry``), whatever their outcome."""

    def __len__(self) -> int:
        return len(self._held)

    def waiting(self, session: Any) -> bool:
        """Whether ``session`` has held requests (a new one must then wait behind them)."""
        return session in self._sessions

    def total_bytes(self) -> int:
        """The size of every held request (bytes of their frames)."""
        return sum(size for _, size in self._sessions.values())

    def held_bytes(self, session: Any) -> int:
        """The size of ``session``'s held requests (bytes of their frames)."""
        waiting = self._sessions.get(session)
        return 0 if waiting is None else waiting[1]

    def hold(self, session: Any, request_id: int, run: Callable[[], list[bytes]],
             now: float, room: tuple[str, int, int] | None = None, size: int = 0) -> None:
        """Keep a request to run again later.

        Args:
            session: whose request it is.
            request_id: its id, to answer it.
            run: runs it again.
            now: ``time.monotonic()`` seconds.
            room: what its refusal needed (None: not tried, or unknown).
            size: bytes of its frames (counted in ``held_bytes``).
        """
        self._held.append(HeldRequest(session, request_id, run, now + self.timeout, room,
                                      size))
        waiting = self._sessions.setdefault(session, [0, 0])
        waiting[0] += 1
        waiting[1] += size

    def retry(self, now: float, reply: Callable[[HeldRequest, list[bytes]], None],
              fail: Callable[[HeldRequest, BaseException], None],
              room: Callable[[str, int, int], bool] | None = None,
              withdraw: Callable[[tuple[str, int, int] | None], None] | None = None) -> int:
        """Run the held requests again, oldest first, each session's in its order.

        A request that goes through is answered with ``reply``; one that still meets a full
        ``hold`` queue stays (with every later one of its session) until its deadline,
        then is answered with ``fail`` like any other error (an unexpected exception too:
        the server answers it as ``internal``). With ``room`` (``ServerPort.has_room``),
        a request whose last refusal needed room its queue still lacks is not run again
        before its deadline. ``withdraw`` (``ServerPort.withdraw_refusal``) is given the
        ``room`` of a refusal that keeps its request held: a held publish is not refused,
        so its queue's ``rejected`` count takes it back. Returns how many timed out.
        """
        blocked: set[Any] = set()
        kept: deque[HeldRequest] = deque()
        timed_out = 0
        for held in self._held:
            if held.session in blocked or (
                    room is not None and held.room is not None and now < held.deadline
                    and not room(*held.room)):
                blocked.add(held.session)
                kept.append(held)
                continue
            self.reruns += 1
            try:
                payload = held.run()
            except QueueFull as exc:
                if exc.hold and now < held.deadline:
                    held.room = exc.room
                    if withdraw is not None:
                        withdraw(exc.room)
                    blocked.add(held.session)
                    kept.append(held)
                    continue
                timed_out += exc.hold
                self._forget(held)
                fail(held, exc)
            except Exception as exc:   # answered like any request's failure
                self._forget(held)
                fail(held, exc)
            else:
                self._forget(held)
                reply(held, payload)
        self._held = kept
        return timed_out

    def routes_changed(self) -> None:
        """Topics or subscriptions changed: run every held request at the next retry.

        The room a request waits for may no longer be needed (its full queue unsubscribed
        or filtered out, its topic deleted): it goes through, or meets its real outcome,
        now rather than at its deadline.
        """
        for held in self._held:
            held.room = None

    def drop_session(self, session: Any) -> None:
        """Forget a vanished session's held requests (nobody is left to answer)."""
        if self._sessions.pop(session, None) is not None:
            self._held = deque(h for h in self._held if h.session is not session)

    def take_all(self) -> list[HeldRequest]:
        """Remove and return every held request (the server is stopping)."""
        held, self._held = list(self._held), deque()
        self._sessions.clear()
        return held

    def _forget(self, held: HeldRequest) -> None:
        session = held.session
        waiting = self._sessions[session]
        if waiting[0] > 1:
            waiting[0] -= 1
            waiting[1] -= held.size
        else:
            del self._sessions[session]
