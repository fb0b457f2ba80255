"""Async handlers on the worker's event loop.

One task per handler takes messages from its source and starts a task per call, at most
``concurrency`` at once (a semaphore); each call acks on return and nacks with the
queue's backoff on an exception, on a reported failure (batch handlers) or when it passes
``timeout`` (the call is cancelled: asyncio can, threads cannot). A keeper task extends
the leases of every message the handler holds (taken or running) every third of a
lease.

Stopping: the taker stops, what is buffered and not started is nacked with no delay
(redelivered at once), running calls get until the deadline, then are cancelled and
their messages nacked with no delay too; the connection's BYE releases anything left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from fastfanout.errors import FastFanoutError
from fastfanout.workers.handlers import Handler
from fastfanout.workers.sources import (
    STOP_GRACE,
    AsyncBrokerSource,
    AsyncClientSource,
    settle_quietly,
)
from fastfanout.workers.stats import HandlerStats, Tally
from fastfanout.workers.threads import (
    POLL,
    RECONNECT_DELAY,
    ReconnectTell,
    answer_request,
    failed_messages,
    not_run,
    not_run_line,
)

__all__ = ["LOOP_BLOCKED", "AsyncRunner", "LoopWatch"]

log = logging.getLogger("fastfanout.worker")

LOOP_BLOCKED: Final = 1.0
"""Seconds the worker's event loop may run no callback before ``LoopWatch`` warns: an
async handler blocking it (``time.sleep``, CPU-bound work in an ``async def``) stops its
connection's heartbeats and lease extensions with it, and a broker ends such a session
after its ``heartbeat_timeout`` (2 s by default) and redelivers what it held, the call's
message included: without the warning, a handler that always blocks that long was seen
to run its message again and again, never acked, with nothing naming the cause."""


class LoopWatch:
    """A thread that warns while the worker's event loop is blocked (``LOOP_BLOCKED``).

    Every ``LOOP_BLOCKED / 2`` seconds it asks the loop to run one callback; when none
    ran within ``LOOP_BLOCKED``, it logs one warning naming the async handlers with calls
    running (and how to unblock), and one more when the loop runs again. Nothing of it
    runs per message. ``blocked`` counts the warnings.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 running: Callable[[], list[str]]) -> None:
        self._loop = loop
        self._running = running
        self._stopped = threading.Event()
        self.blocked = 0
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="fastfanout-worker-loop-watch")

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (returns at once; the thread ends promptly)."""
        self._stopped.set()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the thread to end (after ``stop``)."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _answered(self, answered: threading.Event, deadline: float) -> bool:
        """Wait for the loop's answer until ``deadline``, or the stop (True: no warning)."""
        while not answered.wait(min(LOOP_BLOCKED / 5, max(0.0, deadline - time.monotonic()))):
            if self._stopped.is_set():
                return True
            if time.monotonic() >= deadline:
                return False
        return True

    def _watch(self) -> None:
        while not self._stopped.wait(LOOP_BLOCKED / 2):
            answered = threading.Event()
            try:
                self._loop.call_soon_threadsafe(answered.set)
            except RuntimeError:   # the loop has closed
                return
            began = time.monotonic()
            if self._answered(answered, began + LOOP_BLOCKED):
                continue
            if self._stopped.is_set():
                return
            self.blocked += 1
            names = ", ".join(self._running()) or "an async handler"
            log.warning("%s blocked the worker's event loop for over %g s (a blocking call "
                        "in an async def: make the handler a plain def, or await "
                        "asyncio.to_thread(...)); meanwhile its connection sends no "
                        "heartbeat and extends no lease, and a broker ends the session "
                        "after its heartbeat_timeout, redelivering its messages",
                        names, LOOP_BLOCKED)
            while not answered.wait(LOOP_BLOCKED / 5):
                if self._stopped.is_set():
                    return
            log.warning("the worker's event loop ran again after %.1f s",
                        time.monotonic() - began)


async def _acquire(slots: asyncio.Semaphore, stopping: asyncio.Event) -> bool:
    """Take a slot, unless the worker stops first (False: no slot taken)."""
    if not slots.locked():
        await slots.acquire()   # free: returns at once
        return True
    acquiring = asyncio.ensure_future(slots.acquire())
    stopped = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({acquiring, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not acquiring.done():
        acquiring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquiring
    if acquiring.done() and not acquiring.cancelled():
        if not stopping.is_set():
            return True
        slots.release()
    return False


class AsyncRunner:
    """Runs one async handler on the running event loop.

    Args:
        handler: the handler (defaults resolved).
        open_source: opens a new source for the handler (awaited on the loop), at start
            and again after the broker went away.
        max_receive_count: the queue's, to count failures as retried or dead-lettered.
        lease: seconds of each lease, renewed every third of a lease.
    """

    def __init__(self, handler: Handler,
                 open_source: Callable[[], Awaitable[AsyncClientSource | AsyncBrokerSource]],
                 max_receive_count: int | None, lease: float) -> None:
        self.handler = handler
        self._open_source = open_source
        self._max_receive_count = max_receive_count
        self._lease = lease
        self.tally = Tally()
        self._held: dict[int, Any] = {}   # id(message) -> message: taken, not settled
        # id(message) -> message of calls that ignored their cancellation (past their
        # timeout, or at the stop): given back, never settled by the call. Held here
        # (no id reused meanwhile) until the call ends.
        self._abandoned: dict[int, Any] = {}
        self._abandoned_calls = 0
        self._calls: set[asyncio.Task[None]] = set()
        self._source: AsyncClientSource | AsyncBrokerSource | None = None
        self._tell = ReconnectTell(f"handler {handler.name}")

    async def open(self) -> None:
        """Open the source (raises what the connection or the consumer raises)."""
        self._source = await self._open_source()

    async def run(self, stopping: asyncio.Event) -> None:
        """Take and handle messages until ``stopping`` is set."""
        assert self._source is not None
        source = self._source
        handler = self.handler
        slots = asyncio.Semaphore(handler.concurrency or 1)
        keeper = asyncio.create_task(self._keep())
        tell = self._tell
        recovering = False   # after a loss: until the source yields, or lasts a while
        opened = 0.0
        try:
            while not stopping.is_set():
                if not await _acquire(slots, stopping):
                    break
                try:
                    messages = await self._take(source, handler.batch_size,
                                                handler.batch_window)
                except FastFanoutError as exc:   # the broker went away: connect again
                    slots.release()
                    if stopping.is_set():   # no reconnect follows: none is told
                        break
                    tell.lost(0, exc)
                    reopened = await self._reopen(source, stopping)
                    if reopened is None:
                        break
                    source = self._source = reopened
                    recovering, opened = True, time.monotonic()
                    continue
                if recovering and (messages or time.monotonic() - opened
                                   >= RECONNECT_DELAY):
                    recovering = False
                    tell.back(0)
                if not messages:
                    slots.release()
                    continue
                if stopping.is_set():
                    slots.release()
                    self._give_back(messages)
                    break
                task = asyncio.create_task(self._call(messages, slots))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _reopen(self, source: AsyncClientSource | AsyncBrokerSource,
                      stopping: asyncio.Event
                      ) -> AsyncClientSource | AsyncBrokerSource | None:
        """Close a failed source and open another (None: the worker stopped first).

        Tries every ``RECONNECT_DELAY`` seconds until one opens. An attempt under way
        when the worker stops is cancelled: connecting to a broker that is gone waits
        for the client's whole ``timeout``, past the worker's ``shutdown_timeout``.
        """
        self._held.clear()   # the broker released the old connection's leases
        await source.close(STOP_GRACE)   # its broker went away: no answer to wait for
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONNECT_DELAY):
                    await stopping.wait()
            if stopping.is_set():
                return None
            opening = asyncio.ensure_future(self._open_source())
            stopped = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not opening.done():
                opening.cancel()   # the source closes what it opened (see ``open``)
                with contextlib.suppress(asyncio.CancelledError, FastFanoutError):
                    await opening
                return None
            try:
                return opening.result()
            except FastFanoutError as exc:
                self._tell.failed(0, exc)

    async def _take(self, source: AsyncClientSource | AsyncBrokerSource, batch_size: int,
                    window: float) -> list[Any]:
        messages = await source.take(batch_size, POLL)
        if messages and window > 0 and len(messages) < batch_size:
            deadline = time.monotonic() + window
            while len(messages) < batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                messages.extend(await source.take(batch_size - len(messages), left))
        for message in messages:
            self._held[id(message)] = message
        return messages

    async def _call(self, messages: list[Any], slots: asyncio.Semaphore) -> None:
        handler = self.handler
        tally = self.tally
        tally.in_flight += len(messages)
        started = time.monotonic()
        failed: list[Any]
        timed_out = False
        limit: asyncio.Timeout | None = None
        try:
            argument = messages if handler.batched else messages[0]
            if handler.timeout is None:
                result = await handler.function(argument)
            else:
                limit = asyncio.timeout(handler.timeout)
                # a call that ignores the timeout's cancellation loses its messages
                # STOP_GRACE later all the same (``_abandon_late``), as a sync call does
                watchdog = asyncio.get_running_loop().call_later(
                    handler.timeout + STOP_GRACE, self._abandon_late, messages)
                try:
                    async with limit:
                        result = await handler.function(argument)
                finally:
                    watchdog.cancel()
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # stopping, past the deadline (stop() cancelled this task): back at once
                tally.in_flight -= len(messages)
                self._give_back(messages)
                slots.release()
                raise
            # the function's own (it awaited something cancelled): its failure, with the
            # queue's backoff, not a redelivery at once in a loop
            log.error("handler %s failed on %d message(s): %r", handler.name,
                      len(messages), exc)
            failed = messages
        except BaseException as exc:   # SystemExit too: it would end the event loop
            # a TimeoutError the function raised itself (its own wait_for, a client's
            # timeout) is its failure, not the handler's ``timeout`` passing
            timed_out = (isinstance(exc, TimeoutError) and limit is not None
                         and limit.expired())
            if not timed_out:
                log.exception("handler %s failed on %d message(s)", handler.name,
                              len(messages))
            failed = messages
        else:
            if limit is not None and limit.expired():
                # it caught its timeout's cancellation and returned: still past its
                # timeout, so its result is ignored (until 2026-12-05 it was acked)
                timed_out = True
                failed = messages
            elif (unrun := None if result is None else not_run(result)) is not None:
                # it returned a coroutine it did not await (or a generator)
                log.error("%s", not_run_line(handler.name, unrun, len(messages)))
                failed = messages
            elif handler.batched:
                failed = failed_messages(result, messages)
            else:
                failed = []
                try:
                    answer_request(messages[0], result)
                except FastFanoutError:   # not a body a reply takes: its failure
                    log.exception("handler %s returned a reply that cannot be sent",
                                  handler.name)
                    failed = messages
        tally.times.append(time.monotonic() - started)
        tally.in_flight -= len(messages)
        slots.release()
        if self._abandoned and all(id(m) in self._abandoned for m in messages):
            for message in messages:   # given back while it ran on: its result ignored
                del self._abandoned[id(message)]
            return
        if timed_out:
            tally.timed_out += 1
            log.warning("handler %s passed its timeout of %g s: %d message(s) nacked",
                        handler.name, handler.timeout, len(messages))
        self._settle(messages, failed)

    def _abandon(self, calls: int) -> None:
        """Calls that ignored their cancellation: give back what they hold, now.

        What is still held once the other calls ended is theirs (the buffered messages
        were given back first). They run on, on the worker's loop, until they return;
        their result is then ignored (``_call``), as a sync call's past its timeout.
        Until 2026-12-05 the stop waited for them, however long they ran.
        """
        log.warning("handler %s: %d call(s) ignored their cancellation; their messages "
                    "are nacked and their results will be ignored", self.handler.name,
                    calls)
        self._abandoned_calls += calls
        messages = list(self._held.values())
        self._abandoned.update((id(message), message) for message in messages)
        self._give_back(messages)

    def _abandon_late(self, messages: list[Any]) -> None:
        """A call still running STOP_GRACE past its timeout: it ignored the cancellation.

        Its messages are nacked with the queue's backoff now (a timed-out failure, as a
        sync call's past its timeout are); it runs on, holding its slot, and its result
        is ignored. Until 2026-12-05 they stayed with it for as long as it ran, their
        leases extended: never retried, never counted timed out.
        """
        held = [m for m in messages if id(m) in self._held]
        if not held:
            return
        log.warning("handler %s ignored its timeout of %g s: %d message(s) nacked; its "
                    "result will be ignored", self.handler.name, self.handler.timeout,
                    len(held))
        self._abandoned.update((id(message), message) for message in messages)
        self.tally.timed_out += 1
        self.tally.failures([m.receive_count for m in held], self._max_receive_count)
        for message in held:
            self._held.pop(id(message), None)
            settle_quietly(message.nack)

    def _settle(self, messages: list[Any], failed: list[Any]) -> None:
        held = self._held
        for message in messages:
            held.pop(id(message), None)
        if failed:
            self.tally.failures([m.receive_count for m in failed], self._max_receive_count)
            for message in failed:
                settle_quietly(message.nack)
            failed_ids = {id(m) for m in failed}
            messages = [m for m in messages if id(m) not in failed_ids]
        for message in messages:
            settle_quietly(message.ack)
        self.tally.processed += len(messages)

    def _give_back(self, messages: list[Any]) -> None:
        """Nack with no delay: redelivered at once (stopping)."""
        for message in messages:
            if self._held.pop(id(message), None) is not None:
                settle_quietly(message.nack, delay=0.0)

    async def _keep(self) -> None:
        """Extend every held message's lease each third of a lease.

        A delay of a third of a lease in the event loop then costs no second delivery.
        """
        if self._lease <= 0:
            return
        while True:
            await asyncio.sleep(self._lease / 3)
            source = self._source
            buffered = source.buffered() if source is not None else []
            for message in [*self._held.values(), *buffered]:
                if settle_quietly(message.extend, self._lease):
                    self.tally.extended += 1

    async def stop(self, deadline: float, hurry: asyncio.Event) -> None:
        """Finish (after ``run``): running calls get until ``deadline``, then are cancelled.

        What is buffered is given back at once, then the source closes.
        """
        source = self._source
        if source is not None:
            self._give_back(source.buffered())
        late: set[asyncio.Task[None]] = set(self._calls)
        if late:
            hurried = asyncio.ensure_future(hurry.wait())
            while late and not hurry.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done, _ = await asyncio.wait({*late, hurried}, timeout=left,
                                             return_when=asyncio.FIRST_COMPLETED)
                late -= done
            hurried.cancel()
            if late:
                log.warning("handler %s: %d call(s) still running at the shutdown deadline;"
                            " their messages are nacked", self.handler.name, len(late))
                for task in late:
                    task.cancel()
                _, stubborn = await asyncio.wait(late, timeout=STOP_GRACE)
                if stubborn:
                    self._abandon(len(stubborn))
        if source is not None:
            # bounded by the deadline: a broker that is gone never answers the BYE
            await source.close(max(STOP_GRACE, deadline - time.monotonic()))

    @property
    def abandoned(self) -> bool:
        """True once the stop abandoned calls that ignored their cancellation."""
        return self._abandoned_calls > 0

    def stats(self) -> HandlerStats:
        """The handler's stats in this process."""
        return HandlerStats.of(self.handler.queue, [self.tally])
