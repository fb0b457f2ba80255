"""Guests of the server's thread: an asyncio event loop the server's own loop steps.

A broker process that runs more than its server — the NATS bridge of ``fastfanout serve
--bridge`` — used to run it in a thread of its own, and every message crossed between
the two threads twice (the server's push to the bridge, the bridge's ack or send back),
each time waking a thread and handing it the GIL. On a small, shared host each such
wake-up costs 50 to 150 µs before the woken thread runs (docs/bridge.md "Speed").

A guest runs in the server's thread instead: the server watches the guest's descriptor
beside its sockets and rings, bounds its poll by the guest's next timer, and after each
round runs the guest's ready callbacks (``Guest.step``). What the server pushes to the
guest's local channel is read in the same round; what the guest sends back is read in
the next one, without a thread switch.

``SteppedLoop`` is such a guest: an asyncio event loop whose iterations are run by
``step`` (``loop.stop()`` then ``run_forever()``: one poll of its selector that does not
wait, then the callbacks that are ready) rather than by a thread of its own. It knows,
through the public scheduling methods only, whether callbacks are waiting (``call_soon``
since the last iteration) and when its next timer is due (``call_at``, which
``call_later`` uses), so the server neither spins for it nor sleeps past its timers.
"""

from __future__ import annotations

import asyncio
import heapq
import select
import selectors
import threading
from collections.abc import Callable
from contextvars import Context
from typing import Protocol, TypeVarTuple, Unpack

__all__ = ["STEP_ITERATIONS", "TIMERS_COMPACT_MIN", "Guest", "Host", "SteppedLoop"]

STEP_ITERATIONS = 32
"""Most loop iterations one ``step`` runs: a chain of callbacks longer than that (each
scheduling the next) goes on after the server's next round, so a guest that keeps
itself busy cannot hold the server up."""

TIMERS_COMPACT_MIN = 256
"""Timers the loop remembers before it drops the cancelled ones (then twice as many as
are left): its memory of timers stays within twice the live ones."""

Ts = TypeVarTuple("Ts")


class Guest(Protocol):
    """What the server's loop needs of a guest it runs in its own thread."""

    def fileno(self) -> int:
        """A descriptor readable when the guest has I/O to handle."""

    def step(self) -> None:
        """Run what is ready now, without waiting."""

    def timeout(self) -> float | None:
        """Seconds until the guest must be stepped again (0: now; None: no timer)."""

    def release(self) -> None:
        """The host steps it no more (its loop ended)."""


class Host(Protocol):
    """What runs guests: ``fastfanout.server.Server``."""

    def host(self, guest: Guest) -> None:
        """Run ``guest`` in the host's thread, between its rounds."""


class SteppedLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop stepped by its host's loop (see the module's essay).

    Create it, schedule its work (``create_task``), hand it to ``Server.host``; stop its
    work by a callback (``call_soon_threadsafe`` from other threads: its self-pipe wakes
    the host), and ``close`` it after ``run_until_complete`` of what remains, once the
    host no longer steps it (``stepper`` is None, or the caller's own thread).

    Attributes:
        stepper: the thread id of the host that steps it, None once released.
    """

    def __init__(self) -> None:
        self._epoll = selectors.EpollSelector()
        super().__init__(self._epoll)
        self._soon = 0           # call_soon calls so far: grows while callbacks wait
        self._stepped_soon = 0   # its value when the last iteration began
        self._timers: list[asyncio.TimerHandle] = []   # a heap: handles order by time
        self._last_step_time = 0.0   # when the last iteration began
        self._compact_at = TIMERS_COMPACT_MIN   # timers held before cancelled ones go
        self.stepper: int | None = None   # the thread that steps it (None: none now)
        self._readable = select.poll()
        self._readable.register(self._epoll.fileno(), select.POLLIN)

    def call_soon(self, callback: Callable[[Unpack[Ts]], object], *args: *Ts,
                  context: Context | None = None) -> asyncio.Handle:
        """As ``asyncio`` does, counted: the host steps again while callbacks wait."""
        self._soon += 1
        return super().call_soon(callback, *args, context=context)

    def call_at(self, when: float, callback: Callable[[Unpack[Ts]], object],
                *args: *Ts, context: Context | None = None) -> asyncio.TimerHandle:
        """As ``asyncio`` does, remembered: the host wakes for the earliest timer."""
        handle = super().call_at(when, callback, *args, context=context)
        timers = self._timers
        heapq.heappush(timers, handle)
        if len(timers) > self._compact_at:
            # Timeouts are mostly cancelled long before they are due (a deadline per
            # request): drop those now, or each would live on here until its time came.
            timers[:] = [timer for timer in timers if not timer.cancelled()]
            heapq.heapify(timers)
            self._compact_at = max(TIMERS_COMPACT_MIN, 2 * len(timers))
        return handle

    def fileno(self) -> int:
        """The selector's epoll descriptor: readable when a watched descriptor is."""
        return self._epoll.fileno()

    def step(self) -> None:
        """Run the loop's ready callbacks and I/O, iteration by iteration, without waiting.

        Stops when an iteration scheduled nothing more, or after ``STEP_ITERATIONS``.
        Returns at once (one ``poll`` of its descriptor) when nothing is ready: a host
        steps it after every round, busy or not.
        """
        self.stepper = threading.get_ident()
        if self.timeout() != 0.0 and not self._readable.poll(0):
            return
        for _ in range(STEP_ITERATIONS):
            self._stepped_soon = self._soon
            super().call_soon(self.stop)   # not counted: it is the step's own
            self.run_forever()
            if self._soon == self._stepped_soon:
                return

    def timeout(self) -> float | None:
        """Seconds until the next step is due: 0 while callbacks wait, else the next timer."""
        if self._soon != self._stepped_soon:
            return 0.0
        timers = self._timers
        # cancelled, or ran in the last step (it ran every timer due when it began)
        while timers and (timers[0].cancelled() or timers[0].when() <= self._last_step_time):
            heapq.heappop(timers)
        if not timers:
            return None
        return max(0.0, timers[0].when() - self.time())

    def release(self) -> None:
        """The host steps it no more: whoever stops its work may run it (``stepper``)."""
        self.stepper = None

    def run_forever(self) -> None:
        """As ``asyncio`` does; notes when the iteration began (timers due by then ran)."""
        self._last_step_time = self.time()
        super().run_forever()
