"""``processes=N``: a handler spread over worker processes, each with its own connection.

For CPU-bound handlers (the GIL lets one thread run Python at a time). The parent starts
N children with the ``spawn`` method (a fresh interpreter: no thread or lock of the
parent is inherited, unlike ``fork``); each imports the handler's module, connects, and
runs that one handler as a one-process worker. A child reports its stats through a pipe
every ``STATS_INTERVAL``; a child that dies is started again (counted in ``restarts``),
unless it stopped cleanly (exit status 0: a signal asked it to, e.g. Ctrl-C reaching the
whole process group); one that failed within ``QUICK_EXIT`` of its start is started again
after ``RESTART_DELAY``, doubled for each such failure in a row up to
``RESTART_MAX_DELAY`` (no restart storm while the broker is gone); the broker redelivers
what the dead one held at once, as it does for any client that vanishes. Stopping sends
SIGTERM to each child, which shuts down gracefully within the worker's
``shutdown_timeout``; one still running after that and ``KILL_GRACE`` more is killed.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import Any

from fastfanout.errors import InvalidArgument
from fastfanout.interrupts import resource_tracker_deaf_to_hangups, start_process
from fastfanout.workers.handlers import Handler
from fastfanout.workers.stats import HandlerStats, combine

__all__ = ["KILL_GRACE", "QUICK_EXIT", "RESTART_DELAY", "RESTART_MAX_DELAY", "STATS_INTERVAL",
           "ChildMain", "ProcessGroup"]

log = logging.getLogger("fastfanout.worker")

ChildMain = Callable[..., None]
"""A child's main function (``fastfanout.workers.app.run_child``): it gets the endpoint,
the client options, the handler, the shutdown timeout, the log level and the pipe to
report stats on."""

STATS_INTERVAL = 0.25
"""Seconds between a child's stats reports."""
KILL_GRACE = 5.0
"""Seconds past ``shutdown_timeout`` before a child that ignored SIGTERM is killed."""
QUICK_EXIT = 10.0
"""A child that fails within this many seconds of its start is restarted after a delay."""
RESTART_DELAY = 1.0
"""Seconds before a child that failed quickly is started again; doubled for each quick
failure in a row (a broker that is gone, a queue deleted: no restart storm)."""
RESTART_MAX_DELAY = 30.0
"""Longest delay, seconds, before a child that keeps failing quickly is started again."""


def _ending(exitcode: int | None) -> str:
    """How a child ended, for the log: its exit status, or the signal that killed it."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        what = {"SIGSEGV": "a crash in native code", "SIGKILL": "kill -9 or the OOM killer",
                "SIGABRT": "an abort"}.get(name)
        return f"was killed by {name}" + (f" ({what})" if what else "")
    return f"exited with status {exitcode}"


def _last_of(latest: HandlerStats, exitcode: int | None) -> HandlerStats:
    """What a finished child's last report still counts: its counters, no level.

    Nothing is in flight in a process that ended (until 2026-12-07 a crashed child's
    last ``in_flight`` stayed in the total for ever). One that died (exit status not 0:
    a crash, a kill) handled what its last report had in flight no further: the broker
    redelivers those messages, and they count as failed and retried, as a raising call's
    do (what it processed since that report, 0.25 s at most, is not counted). One that
    stopped cleanly settled them, and sent a report after.
    """
    if exitcode == 0 or latest.in_flight == 0:
        return replace(latest, in_flight=0)
    lost = latest.in_flight
    return replace(latest, in_flight=0, failed=latest.failed + lost,
                   retried=latest.retried + lost)


class _Child:
    __slots__ = ("latest", "process", "reader", "restart_at", "started")

    def __init__(self, process: BaseProcess, reader: multiprocessing.connection.Connection
                 ) -> None:
        self.process = process
        self.reader = reader
        self.latest: HandlerStats | None = None
        self.started = time.monotonic()
        self.restart_at: float | None = None   # dead, to be started again then


class ProcessGroup:
    """The children running one handler (``processes`` of them), supervised.

    Args:
        handler: the handler, with ``processes`` > 1.
        endpoint: the broker's endpoint.
        options: the worker's client options.
        shutdown_timeout: each child's graceful-stop deadline, seconds.
        target: the children's main function (importable by name).
    """

    def __init__(self, handler: Handler, endpoint: str | None, options: dict[str, Any],
                 shutdown_timeout: float, target: ChildMain) -> None:
        try:
            pickle.dumps(handler.function)
        except Exception as exc:
            raise InvalidArgument(
                f"handler {handler.name!r} has processes={handler.processes}: its function "
                f"must be importable by name (a module-level function), not {exc}") from None
        self.handler = handler
        self._target = target
        self._args = (endpoint, options, handler, shutdown_timeout,
                      logging.getLogger().getEffectiveLevel())
        self._context = multiprocessing.get_context("spawn")
        resource_tracker_deaf_to_hangups()   # its children start it: see the function
        self._children: list[_Child] = []
        self._finished: list[HandlerStats] = []   # the last stats of dead children
        self._stopping = False
        self._lock = threading.Lock()
        self._quick_failures = 0   # children in a row that failed soon after starting
        self.restarts = 0
        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                         name=f"fastfanout-worker-{handler.name}-processes")

    def _spawn(self) -> _Child:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=self._target, args=(*self._args, writer), daemon=True,
            name=f"fastfanout-worker-{self.handler.name}")
        start_process(process)
        writer.close()
        return _Child(process, reader)

    def start(self) -> None:
        """Start the children and the thread that collects stats and restarts them."""
        self._children = [self._spawn() for _ in range(self.handler.processes or 1)]
        self._watcher.start()

    @property
    def pids(self) -> list[int]:
        """The children's process ids."""
        return [child.process.pid or 0 for child in self._children
                if child.restart_at is None]

    def _drain(self, child: _Child) -> None:
        try:
            while child.reader.poll():
                child.latest = child.reader.recv()
        except (EOFError, OSError):
            pass

    def _watch(self) -> None:
        while not self._stopping:
            living = [child for child in self._children if child.restart_at is None]
            multiprocessing.connection.wait(
                [child.reader for child in living]
                + [child.process.sentinel for child in living], STATS_INTERVAL)
            with self._lock:
                now = time.monotonic()
                for number, child in reversed(list(enumerate(self._children))):
                    if child.restart_at is not None:
                        if now >= child.restart_at and not self._stopping:
                            self._children[number] = self._spawn()
                            self.restarts += 1
                        continue
                    self._drain(child)
                    if child.process.is_alive() or self._stopping:
                        continue
                    if child.latest is not None:
                        self._finished.append(_last_of(child.latest,
                                                       child.process.exitcode))
                        child.latest = None
                    child.reader.close()
                    if child.process.exitcode == 0:
                        # It stopped as asked: a SIGTERM or SIGINT sent to it, or to the
                        # whole process group (Ctrl-C, a service manager) before this
                        # parent's own stop began. Starting another would undo that.
                        log.info("worker process %s of %s stopped on a signal; not restarted",
                                 child.process.pid, self.handler.name)
                        del self._children[number]
                        continue
                    quick = now - child.started < QUICK_EXIT
                    self._quick_failures = self._quick_failures + 1 if quick else 0
                    delay = 0.0 if not quick else min(
                        RESTART_MAX_DELAY, RESTART_DELAY * 2 ** (self._quick_failures - 1))
                    log.warning("worker process %s of %s %s; starting another in %g s",
                                child.process.pid, self.handler.name,
                                _ending(child.process.exitcode), delay)
                    if delay > 0:
                        child.restart_at = now + delay
                        continue
                    self._children[number] = self._spawn()
                    self.restarts += 1

    def hurry(self) -> None:
        """SIGTERM the children again: each stops without waiting for running calls."""
        for child in self._children:
            if child.process.is_alive():
                child.process.terminate()

    def stop(self, shutdown_timeout: float) -> None:
        """SIGTERM every child; wait for its graceful stop, then kill what is left."""
        self._stopping = True
        self._watcher.join()
        for child in self._children:
            if child.process.is_alive():
                child.process.terminate()
        deadline = time.monotonic() + shutdown_timeout + KILL_GRACE
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.warning("worker process %s ignored SIGTERM; killed", child.process.pid)
                child.process.kill()
                child.process.join()
            self._drain(child)
            child.reader.close()
            if child.latest is not None:   # ended: nothing in flight any more
                child.latest = _last_of(child.latest, child.process.exitcode)

    def stats(self) -> HandlerStats:
        """The handler's stats over its processes (``combine``)."""
        with self._lock:
            for child in self._children:
                if not child.reader.closed:
                    self._drain(child)
            parts = [*self._finished,
                     *(child.latest or HandlerStats(self.handler.queue)
                       for child in self._children)]
        living = sum(1 for child in self._children if child.restart_at is None)
        return replace(combine(self.handler.queue, parts), processes=living)
