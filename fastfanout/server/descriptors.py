"""The broker's file descriptors: a budget kept so that sockets are never refused.

Why: libzmq (4.3.5) asserts when ``accept()`` on an ``ipc://`` listener fails with
``EMFILE``, which aborts the whole broker process (``Too many open files
(src/ipc_listener.cpp:...)``): a broker out of descriptors does not refuse the next
client, it dies, leases and unacknowledged pushes with it. A local channel costs the
broker five descriptors (two rings, two bells, the client's ``pidfd``) where a socket
client costs one, so with the usual soft limit of 1,024 about 170 local clients were
enough.

Three measures:

- ``fastfanout serve`` raises its soft ``RLIMIT_NOFILE`` to the hard limit (as the Go
  runtime and most servers do) before it binds: the soft limit of 1,024 exists for old
  programs that use ``select()``, which the broker does not (libzmq polls with epoll).
- An ``ATTACH`` that would leave fewer than ``reserve()`` descriptors free is refused
  (the client stays on its socket, one descriptor; counted ``local_refused_descriptors``):
  the descriptors left go to sockets.
- ``ListenerGuard``: when less than that reserve is left, the broker stops new
  connections to its ipc endpoints (``ServerTransport.pause_accepting``: the socket
  files are moved aside; the listeners and every connection made stay) and lets them in
  again once half as much again is free: a client then connecting finds no socket (it
  fails as with no broker there, and retries), where each one would otherwise bring the
  abort closer. The reserve is the margin for what libzmq accepts before the broker's
  thread sees it (the monitor's events come a round late, and connections already in
  the listen backlog are still accepted): a slow growth is stopped in time, a flood
  faster than a round may still pass it. Counted ``accept_pauses``; ``accepting`` says
  whether new connections are let in.
"""

from __future__ import annotations

import logging
import os
import resource
from collections import Counter
from typing import Final, Protocol

__all__ = ["CHANNEL_DESCRIPTORS", "ListenerGuard", "descriptors_free", "raise_limit",
           "reserve"]

log = logging.getLogger("fastfanout.server.loop")

CHANNEL_DESCRIPTORS: Final = 5
"""Descriptors the broker holds for one local channel (two rings, two bells, a pidfd)."""
RESERVE_FRACTION: Final = 4
"""A quarter of the soft limit is kept for sockets, ..."""
RESERVE_MIN: Final = 32
"""... at least 32 descriptors ..."""
RESERVE_MAX: Final = 1024
"""... and at most 1,024."""
RAISED_LIMIT_MAX: Final = 1 << 20
"""The soft limit ``raise_limit`` sets when the hard limit is unlimited."""


def _soft_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE``, None when unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def reserve() -> int:
    """Descriptors an ``ATTACH`` must leave free (kept for sockets), under the soft limit."""
    soft = _soft_limit()
    if soft is None:
        return RESERVE_MIN
    return min(RESERVE_MAX, max(RESERVE_MIN, soft // RESERVE_FRACTION))


def descriptors_free() -> int | None:
    """Descriptors this process may still open under its soft limit (None: no limit known).

    Counted from ``/proc/self/fd`` (once per ``ATTACH``, not per message).
    """
    soft = _soft_limit()
    if soft is None:
        return None
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:   # no /proc: the kernel's EMFILE is the only limit left
        return None
    return soft - used


def raise_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit now.

    The hard limit ``RLIM_INFINITY`` gives ``RAISED_LIMIT_MAX``. A refusal (a sandbox) is
    logged and leaves the limit as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = RAISED_LIMIT_MAX if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target,
                        exc)
            return soft
        log.info("open-files limit raised from %d to %d", soft, target)
        return target
    return None if soft == resource.RLIM_INFINITY else soft


RECOUNT_INTERVAL: Final = 1.0
"""Seconds between counts of the free descriptors while the listeners are open."""


class Listeners(Protocol):
    """What ``ListenerGuard`` drives (``ServerTransport``)."""

    accepting: bool

    def pause_accepting(self) -> bool:
        """Stop listening; True if it stopped now."""

    def resume_accepting(self) -> bool:
        """Listen again; True once listening."""


class ListenerGuard:
    """Pauses the broker's ipc listeners while it is short of file descriptors.

    ``connections(accepted, lost)`` after monitor events, ``tick()`` from housekeeping.
    The free descriptors are counted (a read of ``/proc/self/fd``) only when the
    estimate kept from the events says they may be short, so a connect costs nothing
    while there are plenty.

    Args:
        listeners: the transport.
        counters: the server's counters (``accept_pauses``).
    """

    def __init__(self, listeners: Listeners, counters: Counter[str]) -> None:
        self._listeners = listeners
        self._counters = counters
        self._estimate: int | None = None   # free descriptors, as last counted +- events
        self._counted_at = 0.0
        self._measure()

    def _measure(self) -> int | None:
        self._estimate = descriptors_free()
        return self._estimate

    def connections(self, accepted: int, lost: int) -> None:
        """Connections were accepted or lost: pause or resume listening if due."""
        if self._estimate is not None:
            self._estimate += lost - accepted
            if self._listeners.accepting and self._estimate >= 2 * reserve():
                return
        self._check()

    def tick(self, now: float) -> None:
        """Housekeeping: check again while paused, and count anew now and then.

        While paused, descriptors freed by more than connections end the pause; while
        open, a count every ``RECOUNT_INTERVAL`` corrects the estimate (local channels,
        files and the journal take descriptors no connection event tells of).
        """
        if not self._listeners.accepting or now - self._counted_at >= RECOUNT_INTERVAL:
            self._counted_at = now
            self._check()

    def _check(self) -> None:
        free = self._measure()
        if free is None:
            return
        keep = reserve()
        listeners = self._listeners
        if listeners.accepting:
            if free < keep and listeners.pause_accepting():
                self._counters["accept_pauses"] += 1
                log.warning("only %d file descriptors left: new connections are refused "
                            "until %d are free (raise the open-files limit for more "
                            "clients)", free, keep + keep // 2)
        elif free >= keep + keep // 2 and listeners.resume_accepting():
            log.warning("%d file descriptors free: accepting connections again", free)
