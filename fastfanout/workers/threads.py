"""Sync handlers on threads: each thread its own source, its own loop, its own tally.

A handler with ``concurrency=N`` gets N threads. Each takes messages from its own source
(over a connection: its own connection and push consumer, so no thread waits for
another's socket), calls the function, then acks (it returned) or nacks with the queue's
backoff (it raised, or, for a batch handler, reported the message failed). A thread
holds at most its prefetch of messages; the ones not yet handled stay leased to it.

The ``LeaseKeeper`` thread, one per worker process, watches every slot: it extends the
leases of the messages a slot holds every third of a lease (as NATS's "in progress" and
Google Pub/Sub's client lease management do, so a slow handler never causes a second
delivery, unless one C call of it holds the GIL past the broker's heartbeat_timeout:
``ThreadRunner._heartbeats_missed``) and abandons a call
that passed its ``timeout`` (its messages nacked, counted and logged; a Python thread
cannot be killed, so the slot stays busy until the call returns, and then settles
nothing).

Invariant: every message a slot took is settled exactly once, by the slot under its lock
(ack, nack, or, when stopping, a nack with no delay so it is redelivered at once), or by
the keeper under the same lock when the call is abandoned.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable
from types import AsyncGeneratorType, CoroutineType, GeneratorType
from typing import Any

from fastfanout.errors import FastFanoutError, SessionExpired
from fastfanout.workers.handlers import Handler
from fastfanout.workers.sources import CLOSE_TIMEOUT, STOP_GRACE, Source, settle_quietly
from fastfanout.workers.stats import HandlerStats, Tally

__all__ = ["ACK_LINGER", "POLL", "RECONNECT_DELAY", "RECONNECT_TELL", "LeaseKeeper",
           "ReconnectTell", "Slot", "ThreadRunner", "failed_messages", "not_run",
           "not_run_line"]

log = logging.getLogger("fastfanout.worker")

POLL = 0.1
"""Seconds a runner waits for messages before it looks at the stop flag again."""
RECONNECT_DELAY = 1.0
"""Seconds between attempts to reconnect after the broker went away."""
RECONNECT_TELL = 30.0
"""Seconds between two warnings of one handler that still cannot consume: its loss is
logged, then its first failed attempt, then one line this often (it was one line a
second for each thread: 240 lines a minute from a worker of 4 threads; and a queue
deleted under a worker, which each thread reconnected to and lost again at once, still
was, until 2026-12-07)."""
ACK_LINGER = 0.01
"""Most seconds a per-message handler's success waits to be acked with the next ones."""


class ReconnectTell:
    """The warnings of one handler's loss of its sources, however many threads it has.

    One line when the first of its threads (or its async runner) loses its source; one
    for the first failed attempt to consume again (a reconnect refused, or a source lost
    again soon after it opened: the queue deleted); then one every ``RECONNECT_TELL``
    while it lasts; and one when every thread that lost its source consumes again (a
    source that yielded messages, or that ran ``RECONNECT_DELAY`` without failing).
    Threads of the handler losing theirs meanwhile add no line. Safe from any thread.

    Args:
        who: what reconnects, as the warnings name it (``handler NAME``).
    """

    def __init__(self, who: str) -> None:
        self.who = who
        self._lock = threading.Lock()
        self._down: set[int] = set()   # keys of the threads not consuming again yet
        self.began: float | None = None   # monotonic: the loss; None: consuming
        self.told = 0.0
        self._failure_told = False

    def down(self, key: int) -> bool:
        """True while thread ``key`` lost its source and does not consume again yet."""
        return key in self._down

    def lost(self, key: int, error: BaseException) -> None:
        """Thread ``key`` lost its source with ``error``."""
        with self._lock:
            now = time.monotonic()
            if self.began is None:
                self._down.add(key)
                self.began = self.told = now
                self._failure_told = False
                log.warning("%s lost its source (%s); reconnecting every %g s", self.who,
                            error, RECONNECT_DELAY)
            elif key in self._down:   # lost again before it consumed: a failed attempt
                self._failed(now, error)
            else:   # another thread of the same loss
                self._down.add(key)

    def failed(self, key: int, error: BaseException) -> None:
        """An attempt of thread ``key`` to open a source failed with ``error``."""
        with self._lock:
            self._down.add(key)
            now = time.monotonic()
            if self.began is None:   # (not after a loss: the thread's first open)
                self.began = self.told = now
            self._failed(now, error)

    def _failed(self, now: float, error: BaseException) -> None:
        assert self.began is not None
        if not self._failure_told:
            self._failure_told = True
            log.warning("%s cannot reconnect yet: %s (trying every %g s)", self.who, error,
                        RECONNECT_DELAY)
        elif now - self.told >= RECONNECT_TELL:
            log.warning("%s still cannot reconnect after %.0f s: %s", self.who,
                        now - self.began, error)
        else:
            return
        self.told = now

    def back(self, key: int) -> None:
        """Thread ``key`` consumes again; the last of them says so."""
        with self._lock:
            self._down.discard(key)
            if self._down or self.began is None:
                return
            log.warning("%s consumes again after %.0f s", self.who,
                        time.monotonic() - self.began)
            self.began = None


def not_run(result: object) -> str | None:
    """What a handler returned unrun (closed now), or None: it ran.

    A coroutine, generator or async generator, or any other awaitable: the caller of a
    sync function neither awaits nor iterates what it returns, so its message was acked
    with none of the handler's code run (until 2026-12-07, with only Python's "never
    awaited" warning on stderr). Such a call failed (nacked and counted, as if it had
    raised, and logged: ``not_run_line``); the object is closed (no "never awaited"
    warning).
    """
    if isinstance(result, CoroutineType):
        kind = "a coroutine"
    elif isinstance(result, GeneratorType):
        kind = "a generator"
    elif isinstance(result, AsyncGeneratorType):
        return "an async generator"   # never started: nothing to close
    elif inspect.isawaitable(result):
        kind = f"an awaitable ({type(result).__name__})"
    else:
        return None
    close = getattr(result, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):   # unrun code: nothing of it is ours
            close()
    return kind


def not_run_line(handler: str, kind: str, count: int) -> str:
    """The log line of a call of ``handler`` on ``count`` messages that returned ``kind``."""
    return (f"handler {handler} returned {kind}, which a worker neither awaits nor "
            f"iterates: its code never ran, and its {count} message(s) are nacked as "
            f"failed (a sync decorator on an async def, a yield, a missing await?); make "
            f"the handler a plain def that returns when done, or an async def whose "
            f"decorators' wrappers are async too")


def answer_request(message: Any, result: object) -> None:
    """Send a handler's return value as the reply to a request (``message.reply``).

    Nothing for None, or for a message that asked for no reply (published, not
    requested). A value a reply cannot take (not bytes-like) raises ``InvalidArgument``:
    the handler's failure, as if it had raised it.
    """
    if result is not None and message.reply_to is not None:
        message.reply(result)


def failed_messages(result: object, messages: list[Any]) -> list[Any]:
    """The messages a batch handler reported failed (SQS's ReportBatchItemFailures).

    ``result`` is None (all succeeded), or an iterable of messages of the batch or of
    their ids. Anything else (a string, a body, an id not of this batch, a non-iterable)
    does not say which failed: all of them count as failed (and it is logged), so that
    no failure is acked by mistake.
    """
    if result is None:
        return []
    named: list[Any] | None = None
    if not isinstance(result, (str, bytes, bytearray, memoryview)):
        try:
            named = list(result)  # type: ignore[call-overload]
        except TypeError:
            pass
    if named is not None:
        ids = {message.id for message in messages}
        keys = {item if type(item) is int else getattr(item, "id", None) for item in named}
        if keys <= ids:
            return [message for message in messages if message.id in keys]
    log.warning("a batch handler returned %.80r: not None nor the messages (or message "
                "ids) of its batch that failed; all %d count as failed", result,
                len(messages))
    return list(messages)


class Slot:
    """One thread's state, shared with the lease keeper under ``lock``.

    Attributes:
        held: the messages taken and not settled (``held[index:]``).
        done: handled, their ack deferred (``ACK_LINGER``): still leased to the slot.
        current: the messages of the call running now, or None.
        started: ``time.monotonic()`` when the current call started.
        abandoned: the keeper gave up on the current call and settled its messages.
        stale_source: the keeper closed ``source`` when it gave up on the call.
    """

    __slots__ = ("abandoned", "current", "done", "held", "index", "lock", "longest",
                 "source", "stale_source", "started", "tally", "thread")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: list[Any] = []
        self.index = 0
        # handled and returned, their ack deferred (``ACK_LINGER``): still leased to
        # this slot until it goes, so the keeper extends them too
        self.done: list[Any] = []
        self.current: list[Any] | None = None
        self.started = 0.0
        self.abandoned = False
        self.tally = Tally()
        self.thread: threading.Thread | None = None
        self.source: Source | None = None
        # the keeper closed the source under a call past its timeout (what it had pushed
        # goes to other consumers, not behind the hung call): the thread opens another
        self.stale_source = False
        # seconds of the longest call since the source opened: one that held the GIL
        # past the broker's heartbeat_timeout is named when the broker ends the session
        self.longest = 0.0

    def unsettled(self) -> list[Any]:
        """The messages this slot holds and has not settled (call with the lock held)."""
        return self.held[self.index:]


class ThreadRunner:
    """Runs one sync handler on ``handler.concurrency`` threads.

    Args:
        handler: the handler (defaults resolved).
        open_source: makes a thread's source (called in that thread).
        max_receive_count: the queue's, to count failures as retried or dead-lettered.
        stopping: set when the worker stops taking messages.
    """

    def __init__(self, handler: Handler, open_source: Callable[[], Source],
                 max_receive_count: int | None, stopping: threading.Event) -> None:
        self.handler = handler
        self._open_source = open_source
        self._max_receive_count = max_receive_count
        self._stopping = stopping
        # monotonic, set by the worker before it sets ``stopping``: the sources closed
        # after it wait for their goodbye only until then
        self.stop_deadline: float | None = None
        self.slots = [Slot() for _ in range(handler.concurrency or 1)]
        self.started = threading.Event()
        self._ready = 0
        self._ready_lock = threading.Lock()
        self.error: BaseException | None = None
        self._tell = ReconnectTell(f"handler {handler.name}")

    def start(self) -> None:
        """Start the threads (each opens its source first)."""
        for number, slot in enumerate(self.slots):
            slot.thread = threading.Thread(
                target=self._run, args=(slot,), daemon=True,
                name=f"fastfanout-worker-{self.handler.name}-{number}")
            slot.thread.start()

    def _opened(self) -> None:
        with self._ready_lock:
            self._ready += 1
            if self._ready == len(self.slots):
                self.started.set()

    def _run(self, slot: Slot) -> None:
        try:
            slot.source = self._open_source()
        except BaseException as exc:   # reported by Worker.start
            self.error = exc
            self.started.set()
            return
        self._opened()
        while not self._stopping.is_set():
            try:
                self._loop(slot, slot.source)
            except FastFanoutError as exc:   # the broker went away: connect again
                if self._stopping.is_set():
                    # the stop closed the source under a take (past its deadline, or
                    # stop_now): no reconnect follows, so none is told (until 2026-12-07
                    # "lost its source (the client is closed); reconnecting in 1 s")
                    return   # (the source is closed by the finally)
                self._heartbeats_missed(slot, exc)
                self._tell.lost(id(slot), exc)
            finally:
                self._release(slot, 0.0)
                slot.source.close(self._close_timeout())
            # a source closed under an abandoned call is replaced at once; a lost one
            # after RECONNECT_DELAY
            first_wait = 0.0 if slot.stale_source else RECONNECT_DELAY
            slot.stale_source = False
            if not self._reopen(slot, first_wait):
                return
        # the worker stopped just as a source was opened again (after an abandoned call,
        # or a reconnect): it was never looped over, so it is closed here
        slot.source.close(self._close_timeout())

    def _heartbeats_missed(self, slot: Slot, error: FastFanoutError) -> None:
        """Name a call that held the GIL when the broker ended the session for it.

        A sync call that holds the GIL (C code: a regex, an extension) stops its
        connection's heartbeat thread too; past the broker's ``heartbeat_timeout`` the
        broker ends the session and releases its messages, that call's included: the
        call returns, its ack is refused, and the message is delivered again (until
        2026-12-07 only "lost its source" was logged, and such a message ran again and
        again until dead-lettered). A Python thread cannot take the GIL back: the fix is
        the user's.
        """
        timeout = getattr(slot.source, "heartbeat_timeout", None)
        if (timeout is None or not isinstance(error, SessionExpired)
                or "heartbeat" not in str(error) or slot.longest < timeout / 2):
            return
        log.warning(
            "handler %s: a call ran %.1f s and the broker ended its connection's session "
            "meanwhile (it missed its heartbeats): a call that holds the GIL (C code: a "
            "regex, a C extension) stops the connection's heartbeats, and past the "
            "broker's heartbeat_timeout (%g s) the broker releases the connection's "
            "messages, that call's included: its ack is refused and the message comes "
            "back; run that work outside the worker's process (a process pool the "
            "handler waits on, or a library call that releases the GIL), or raise the "
            "broker's heartbeat_timeout above the call's length (processes=N does not "
            "help: a child's heartbeats stop alike)", self.handler.name, slot.longest,
            timeout)

    def _reopen(self, slot: Slot, first_wait: float) -> bool:
        """Open the slot's source again; False once the worker stops.

        The first try comes after ``first_wait`` seconds, the next ones every
        ``RECONNECT_DELAY`` until one opens.
        """
        wait = first_wait
        while not self._stopping.wait(wait):
            try:
                slot.source = self._open_source()
                return True
            except FastFanoutError as exc:
                self._tell.failed(id(slot), exc)
            wait = RECONNECT_DELAY
        return False

    def _close_timeout(self) -> float:
        """Seconds a source closed now waits for its goodbye: until the stop deadline."""
        deadline = self.stop_deadline
        if deadline is None or not self._stopping.is_set():
            return CLOSE_TIMEOUT
        return max(STOP_GRACE, deadline - time.monotonic())

    def _loop(self, slot: Slot, source: Source) -> None:
        """Take and handle messages until the worker stops (or the source fails)."""
        handler = self.handler
        batch_size = handler.batch_size
        take = max(batch_size, handler.prefetch_for(1))
        slot.longest = 0.0
        # after a loss: consuming again once the source yields, or lasts RECONNECT_DELAY
        recovering = self._tell.down(id(slot))
        opened = time.monotonic()
        while not self._stopping.is_set():
            if handler.batched:
                messages = self._collect(source, batch_size, handler.batch_window)
            else:
                messages = source.take(take, POLL)
            if recovering and (messages or time.monotonic() - opened >= RECONNECT_DELAY):
                recovering = False
                self._tell.back(id(slot))
            if not messages:
                continue
            with slot.lock:
                slot.held, slot.index = messages, 0
            if handler.batched:
                self._call(slot, messages)
            else:
                self._call_each(slot, messages)
            self._release(slot, 0.0)
            if slot.stale_source:   # closed under an abandoned call: open another
                return

    def _collect(self, source: Source, batch_size: int, window: float) -> list[Any]:
        """One batch: up to ``batch_size`` messages within ``window`` s of the first."""
        messages = source.take(batch_size, POLL)
        if not messages or window <= 0:
            return messages
        deadline = time.monotonic() + window
        while len(messages) < batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            messages.extend(source.take(batch_size - len(messages), left))
        return messages

    def _call_each(self, slot: Slot, messages: list[Any]) -> None:
        """Call the function on each message in turn and settle it: the per-message path.

        Kept short, names bound once. No lock before a call: ``started`` is written
        before ``current``, so the keeper, which reads them the other way round under the
        lock, never sees a new call with an old start time. Once ``index`` has moved past
        a message (under the lock) no one else settles it, so it is settled outside the
        lock: a failure is nacked at once; successes are acked together, when the slice
        ends or ``ACK_LINGER`` seconds after the first of them (``Source.ack``: one
        receipts frame for a whole push), not one SETTLE entry per message.
        """
        function = self.handler.function
        stopping = self._stopping
        tally = slot.tally
        acquire, release = slot.lock.acquire, slot.lock.release
        times = tally.times
        clock = time.monotonic
        max_receive_count = self._max_receive_count
        source = slot.source
        assert source is not None
        done: list[Any] = []   # returned: acked together (slot.done: the keeper sees it)
        slot.done = done
        first_done = 0.0
        longest = slot.longest
        try:
            for message in messages:
                if stopping.is_set():
                    return
                slot.started = started = clock()
                slot.current = [message]
                try:
                    result = function(message)
                    unrun = None if result is None else not_run(result)
                    if unrun is None:
                        answer_request(message, result)
                except BaseException:   # SystemExit too: it would end the thread, and
                    # the keeper would extend the message's lease for ever
                    log.exception("handler %s failed on message %d", self.handler.name,
                                  message.id)
                    failed = True
                else:
                    failed = unrun is not None
                    if failed:
                        log.error("%s", not_run_line(self.handler.name, str(unrun), 1))
                now = clock()
                elapsed = now - started
                if elapsed > longest:
                    longest = elapsed
                acquire()
                times.append(elapsed)
                slot.current = None
                if slot.abandoned:   # the keeper settled this call (and the rest) already
                    slot.abandoned = False
                    slot.held, slot.index = [], 0
                    release()
                    return
                slot.index += 1
                release()
                if failed:
                    tally.failures((message.receive_count,), max_receive_count)
                    settle_quietly(message.nack)
                    continue
                tally.processed += 1
                if not done:
                    first_done = now
                elif now - first_done >= ACK_LINGER:
                    source.ack(done)
                    done = slot.done = []
                    first_done = now
                done.append(message)
        finally:
            slot.longest = longest
            if done:
                source.ack(done)
            slot.done = []

    def _call(self, slot: Slot, messages: list[Any]) -> bool:
        """Run the function on a message (or a batch) and settle; False: stop the batch."""
        tally = slot.tally
        slot.started = started = time.monotonic()
        slot.current = messages
        failed: list[Any]
        unrun: str | None = None
        try:
            result = self.handler.function(messages if self.handler.batched else messages[0])
            unrun = None if result is None else not_run(result)
            if unrun is None and not self.handler.batched:
                answer_request(messages[0], result)
        except BaseException:   # as in _call_each
            log.exception("handler %s failed on %d message(s)", self.handler.name,
                          len(messages))
            failed = messages
        else:
            if unrun is not None:
                log.error("%s", not_run_line(self.handler.name, unrun, len(messages)))
                failed = messages
            else:
                failed = failed_messages(result, messages) if self.handler.batched else []
        elapsed = time.monotonic() - started
        slot.longest = max(slot.longest, elapsed)
        with slot.lock:
            tally.times.append(elapsed)
            slot.current = None
            if slot.abandoned:   # the keeper settled this call (and the rest) already
                slot.abandoned = False
                slot.held, slot.index = [], 0
                return False
            slot.index += len(messages)
        # past ``index`` (under the lock) no one else settles these messages
        self._settle(slot, messages, failed)
        return True

    def _settle(self, slot: Slot, messages: list[Any], failed: list[Any]) -> None:
        """Nack the failed messages, ack the others together (``Source.ack``)."""
        tally = slot.tally
        if failed:
            tally.failures([m.receive_count for m in failed], self._max_receive_count)
            for message in failed:
                settle_quietly(message.nack)
            if len(failed) == len(messages):
                return
            failed_ids = {id(m) for m in failed}
            messages = [m for m in messages if id(m) not in failed_ids]
        tally.processed += len(messages)
        if slot.source is not None:
            slot.source.ack(messages)

    def _release(self, slot: Slot, delay: float) -> None:
        """Give back, for redelivery after ``delay`` s, what the slot holds unsettled."""
        with slot.lock:
            rest = [] if slot.current is not None else slot.unsettled()
            slot.held, slot.index = ([], 0) if slot.current is None else (slot.held,
                                                                          slot.index)
        for message in rest:
            settle_quietly(message.nack, delay=delay)

    def abandon(self, slot: Slot, delay: float | None, reason: str) -> bool:
        """Settle the messages of a running call and of its batch, without the call.

        Args:
            slot: the slot.
            delay: seconds before the call's messages are redelivered (None: the queue's
                backoff, as a failure); the rest of the slot's messages come back at once.
            reason: for the log.

        Returns:
            True if a call was abandoned.
        """
        with slot.lock:
            if slot.current is None or slot.abandoned:
                return False
            slot.abandoned = True
            current, rest = slot.current, slot.held[slot.index + len(slot.current):]
            if delay is None and slot.source is not None:
                # past its timeout: its thread stays in the call, so its consumer stops
                # first (no push, the nacked messages included, waits behind the call);
                # the thread opens another source when the call returns
                slot.source.cancel()
                slot.stale_source = True
            if delay is None:
                slot.tally.failures([m.receive_count for m in current],
                                    self._max_receive_count)
                slot.tally.timed_out += 1
            log.warning("handler %s %s: %d message(s) nacked", self.handler.name, reason,
                        len(current))
            for message in current:
                settle_quietly(message.nack, delay=delay)
            for message in rest:
                settle_quietly(message.nack, delay=0.0)
            slot.held, slot.index = [], 0
            return True

    def join(self, deadline: float, hurry: threading.Event) -> list[Slot]:
        """Wait for the threads until ``deadline`` (monotonic) or ``hurry``.

        Returns:
            The slots whose thread still runs.
        """
        for slot in self.slots:
            thread = slot.thread
            while (thread is not None and thread.is_alive() and not hurry.is_set()
                   and time.monotonic() < deadline):
                thread.join(min(POLL, max(0.0, deadline - time.monotonic())))
        return [slot for slot in self.slots
                if slot.thread is not None and slot.thread.is_alive()]

    def stats(self) -> HandlerStats:
        """The handler's stats in this process."""
        in_flight = 0
        for slot in self.slots:
            current = slot.current
            in_flight += 0 if current is None else len(current)
        return HandlerStats.of(self.handler.queue, [slot.tally for slot in self.slots],
                               in_flight)


class LeaseKeeper:
    """One thread extending the leases of held messages and enforcing call timeouts.

    Args:
        runners: (runner, lease seconds) pairs to watch.
    """

    def __init__(self, runners: list[tuple[ThreadRunner, float]]) -> None:
        self._runners = runners
        self._stop = threading.Event()
        ticks = [lease / 6 for _, lease in runners if lease > 0]
        ticks += [runner.handler.timeout / 4 for runner, _ in runners
                  if runner.handler.timeout is not None]
        self._tick = max(0.005, min([1.0, *ticks]))
        self._extended = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="fastfanout-worker-leases")

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the leases then run out on their own)."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # Every third of a lease, checked every sixth: a lease is extended at most two
        # thirds after it began (or was last extended), the first time at the first
        # tick (messages may have been pushed before this thread started), so a
        # scheduling delay of a third of a lease costs no second delivery.
        last: dict[int, float] = {id(runner): 0.0 for runner, _ in self._runners}
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            for runner, lease in self._runners:
                timeout = runner.handler.timeout
                if timeout is not None:
                    for slot in runner.slots:
                        if (slot.current is not None and now - slot.started > timeout
                                and runner.abandon(slot, None,
                                                   f"passed its timeout of {timeout:g} s")
                                and slot.source is not None):
                            # the thread stays in the call: what its connection was
                            # pushed must not wait for it (the BYE releases it)
                            slot.source.close()
                if lease > 0 and now - last[id(runner)] >= lease / 3:
                    last[id(runner)] = now
                    for slot in runner.slots:
                        self._extend(slot, lease)

    @staticmethod
    def _extend(slot: Slot, lease: float) -> None:
        with slot.lock:
            # what the call holds, and what its source received beyond it (the rest of
            # a push larger than a batch): all of it is leased to this slot. Not behind
            # an abandoned call, which may never return: those leases run out and the
            # messages go to another consumer.
            source = slot.source
            waiting = source.buffered() if source is not None and not slot.abandoned else []
            # (and what it handled and has not acked yet: until 2026-12-07 not extended,
            # so a call longer than a lease let the one before it run out and come back)
            held = [*slot.unsettled(), *slot.done, *waiting]
            for message in held:
                if settle_quietly(message.extend, lease):
                    slot.tally.extended += 1
