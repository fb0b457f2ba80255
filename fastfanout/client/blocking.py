"""The blocking client: the ``Broker`` API over ZeroMQ, with batching and push consumers.

Design
------
Prior art: the Kafka producer (records batch per target, sent when full, after
``linger`` or on ``flush()``; each send returns a future), RabbitMQ's ``basic.qos``
prefetch, and trio's ``*_nowait`` core under each blocking call.

The protocol lives in ``fastfanout.client.core.ConnectionCore`` (publish batching, credit,
settling, heartbeats); this module is its blocking I/O driver (``Connection``: a socket or
local channel, a reentrant lock, a background thread) and the API over it (``Client``,
each operation documented in ``fastfanout.api``). Choices:

- ``publish()``/``send()`` join the current batch of their target, flush it and wait;
  ``publish_nowait()``/``send_nowait()`` return a ``PublishFuture`` (``fastfanout.client
  .futures``); a full batch is sent (and the replies that have arrived read) by the
  caller, a batch that lingers by the background thread after ``linger``. A batch is
  atomic on the broker: if it fails, every future of it raises the error.
- A ``Client`` may be used from several threads; its calls are serialised by the lock,
  many requests may be in flight. A thread that waits for the broker (a consumer's
  iteration, a call's answer) holds the lock while it waits in ``recv``; a call from
  another thread wakes it through a pipe (``claim``), and it steps aside for the
  threads waiting for the lock, so a call does not wait for a consumer's idle wait.
  The background thread heartbeats, sends lingering batches, producer frames and acks,
  and reads replies while requests are in flight and no caller reads them. Between
  those it sleeps in C without the GIL (``Ticker``) until one is due, so a caller that
  keeps its batches full is not interrupted.
- A broker silent past its ``heartbeat_timeout`` fails pending calls with
  ``BrokenConnection``; the next call reconnects. A forked child that uses its parent's
  client gets ``UsedAfterFork`` (``fastfanout.client.forks``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NoReturn

from fastfanout._ext.locks import FastRLock
from fastfanout._ext.offers import FutureMaker, NowaitGate, Ticker, bind_batch
from fastfanout.api import BrokerAPI, ClientAPI
from fastfanout.client import forks
from fastfanout.client.consumers import Consumer, DeliveryBatch, Listener
from fastfanout.client.core import (
    PIPELINE_READ,
    ConsumerState,
    Request,
    decode_value,
    encode_call,
    stream_endpoint_hint,
)
from fastfanout.client.driver import DriverBase, dealer_to_attach
from fastfanout.client.face import ClientFace, control
from fastfanout.client.futures import REPLY_POLL, PublishBatchFuture, PublishFuture
from fastfanout.client.messages import (
    RemoteMessage,
    RemotePublishBatch,
    messages_of,
    publish_options,
)
from fastfanout.client.producers import DEFAULT_MAX_IN_FLIGHT, RemoteProducer
from fastfanout.errors import (
    BrokenConnection,
    CallTimeout,
    FastFanoutError,
    InvalidArgument,
    PeerLost,
    TransportError,
    WrongClient,
    blocking_misused,
)
from fastfanout.records import Attributes, Body, PublishResult, Reply
from fastfanout.semantics.replies import (
    DEFAULT_REQUEST_TIMEOUT,
    check_request_timeout,
    decode_reply,
    no_reply,
    no_responders,
    reply_frames,
    request_attributes,
)
from fastfanout.settings import check_wait
from fastfanout.transport.local import LocalTransport
from fastfanout.transport.local_channel import DEFAULT_RING_BYTES, pinned_hint
from fastfanout.transport.sockets import CurveKeys, DealerTransport
from fastfanout.wire.protocol import Opcode

__all__ = ["BUSY_PATIENCE", "CLAIM_YIELD", "Client", "Connection", "connect"]

CLAIM_YIELD = 0.005
"""Seconds at most a thread woken out of its wait in ``recv`` (``Connection.claim``)
leaves the lock to the calls that woke it before it pumps again."""

BUSY_PATIENCE = 0.05
"""Seconds the background thread, due to run, leaves the connection to a thread that
holds its lock before it waits its turn for it (``Connection._background``)."""

class Connection(DriverBase):
    """The blocking I/O driver of a ``ConnectionCore``: transport, lock, background thread.

    Consumers, producers and futures of a ``Client`` work through it; its methods are a
    documented internal interface (and a test hook), not the broker API.

    Attributes:
        core: the connection's protocol state.
        transport: the DEALER socket or local channel; None while disconnected.
        lock: serialises every use of the core and the transport (reentrant: a
            ``FastRLock``, which the native gates take in C).
        in_flight_waits: times a ``publish_nowait``/``send_nowait`` that sent a full
            batch waited for the oldest answer (more than ``max_in_flight`` unanswered).
        busy_retries: times the background thread, due to run, found the lock held by a
            caller and looked again at its next wake-up (``BUSY_PATIENCE``).
        close_deadline: while ``Client.close(timeout)`` runs, when its timeout ends
            (``time.monotonic()``): its producers' flushes wait no longer. None otherwise.
    """

    def __init__(self, endpoint: str, curve: CurveKeys | None, *, timeout: float,
                 linger: float, batch_messages: int, batch_bytes: int,
                 local_channel: bool | None, ring_bytes: int,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        super().__init__(endpoint, curve, timeout=timeout, local_channel=local_channel,
                         ring_bytes=ring_bytes, linger=linger, batch_messages=batch_messages,
                         batch_bytes=batch_bytes, bind=bind_batch)
        self.core.max_in_flight = max_in_flight
        self.in_flight_waits = 0
        self.busy_retries = 0
        self.close_deadline: float | None = None
        self.abandoned: list[ConsumerState] = []   # consumers to cancel (``abandon``)
        self.unread: list[bytes] = []   # receipts to give back (``release_unread``)
        self.lock = FastRLock()
        self.transport: DealerTransport | LocalTransport | None = None
        self._new_future = FutureMaker(self)   # native futures, made in C by the gate
        # publish_nowait/send_nowait of a bare body: one native call into an open batch
        self.nowait_gate = NowaitGate(self.core, self._new_future, self.send_and_read,
                                      self.start_ticking, self, self.pace)
        self._ticker = Ticker()   # where the background thread sleeps until work is due
        # A thread that waits for pushes (a consumer's iteration) holds the lock while it
        # waits in the transport's recv, up to a tenth of a second at a time, and takes
        # it again at once: a call from another thread waited for the lock for tenths of
        # a second, at times over a second. A call that finds the lock taken writes a
        # byte here, which ends such a wait (``claim``); the pipe lives as long as this
        # object, so a late write never reaches a descriptor reused after a close.
        self._wake_reader, self._wake_writer = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # threads waiting for the lock (``claim``, ``pump``), each by what it waits for:
        # _BRIEF (a call that needs the lock briefly), a request, or a consumer's state
        self._claimers: list[Any] = []
        weakref.finalize(self, _close_descriptors, self._wake_reader, self._wake_writer)
        forks.watch(self._after_fork)
        self.connect()
        self._thread = threading.Thread(target=self._background, name="fastfanout-client",
                                        daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child, before anything else runs: the next call must refuse.

        The lock and ticker are new: a parent thread may have held them at the fork.
        """
        self.core.forked = True
        self.lock = FastRLock()
        self._claimers = []   # a parent thread's, waiting for the parent's lock
        self.nowait_gate.forget()   # it remembers the parent's lock and open batch
        self._ticker = Ticker()

    # -- connection ----------------------------------------------------------------------

    def connect(self) -> None:
        """Open the socket and say HELLO (then ATTACH a local channel if wanted)."""
        try:
            self.transport = DealerTransport(self.endpoint, self.curve, self.timeout)
        except TransportError as exc:
            raise BrokenConnection(str(exc)) from None
        self.transport.watch_wake(self._wake_reader)
        request = self.core.start(time.monotonic())
        try:
            self.send_out()
            self.hello(self.wait(request, self.timeout, handshake=True))
            self._attach_local()
        except BaseException:   # any failure: no socket left open behind the error
            self.drop_transport()
            raise

    def _attach_local(self) -> None:
        """Move onto a local channel (``ATTACH``) if wanted, or stay on the socket."""
        dealer = dealer_to_attach(self.transport, DealerTransport)
        if dealer is None:
            return
        channel = self.new_channel()
        if channel is None:
            return
        with self.lock:   # nothing else may use the socket until the channel is in place
            try:
                request = self.attach_request(channel)
                self.send_out()
                self.wait(request, self.timeout, handshake=True)
                channel.attached()
            except (FastFanoutError, OSError, ValueError) as exc:
                self.attach_refused(channel, exc)
                return
            local = LocalTransport(dealer, channel, self.timeout)
            local.watch_wake(self._wake_reader)   # the dealer watches it already
            self.transport = local

    def drop_transport(self) -> None:
        """Close the transport (the next call reconnects)."""
        self.nowait_gate.forget()   # its next call ensures a transport again
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def broken(self, error: FastFanoutError) -> FastFanoutError:
        """The broker vanished: fail every pending call and consumer; reconnect later."""
        self.drop_transport()
        self.core.broken(error)
        return error

    def _lost(self, exc: TransportError) -> FastFanoutError:
        """The broker is gone, or took no request in time: the connection is broken."""
        return self.broken(BrokenConnection(f"the broker at {self.endpoint} is gone: {exc}"
                                            + stream_endpoint_hint(self.endpoint)))

    def ensure(self) -> DealerTransport | LocalTransport:
        """The transport, connecting first if needed.

        Raises:
            UsedAfterFork: in a forked child.
            Closed: the client is closed.
        """
        self.core.check_open()
        if self.transport is None:
            self.connect()
        assert self.transport is not None
        return self.transport

    def claim(self) -> None:
        """Take the lock for a call; a thread waiting in ``recv`` with it is woken first.

        Release it with ``self.lock.release()``.
        """
        self._take(_BRIEF, wake=True)

    def _take(self, waiting: Any, *, wake: bool) -> None:
        """Take the lock, waiting as a claimer for ``waiting`` while another thread has it.

        ``waiting`` None: not as a claimer; ``wake``: write the wake first. An interrupt
        (Ctrl-C) landing once the lock was taken lets it go again, and leaves no claim.
        """
        lock = self.lock
        held_before = lock.held_here()
        registered = False
        try:
            if lock.acquire(False):   # free, or this thread's
                return
            if waiting is not None:
                registered = True   # before the append: an interrupt between leaves none
                self._claimers.append(waiting)   # appends and removes are atomic (the GIL)
                if wake:
                    try:
                        os.write(self._wake_writer, b"\0")
                    except BlockingIOError:
                        pass   # the pipe is full: a wake is pending already
            lock.acquire()
        except BaseException:
            if not held_before and lock.held_here():
                lock.release()
            raise
        finally:
            if registered:
                _unregister(self._claimers, waiting)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The lock for a block of calls; a thread waiting in ``recv`` with it is woken first.

        That thread (a consumer's iteration) holds the lock a tenth of a second or more
        at a time: waiting for the lock alone waited that wait out (``claim``).
        """
        self.claim()
        try:
            yield
        finally:
            self.lock.release()

    # -- requests and replies ------------------------------------------------------------

    def send_out(self) -> None:
        """Send what the core queued (lock held); nothing without a connection.

        Raises:
            UsedAfterFork: in a forked child (what was queued is dropped: the connection,
                and a local channel's rings, are the parent's; a child that flushed a
                batch it inherited wrote it into the ring the parent sends it through).
        """
        outbox = self.core.outbox
        if not outbox:
            return
        if self.core.forked:
            outbox.clear()
            raise forks.used_after_fork("client", self.core.pid)
        transport = self.transport
        if transport is None:
            outbox.clear()
            return
        try:
            for frames in outbox:
                transport.send(frames)
        except PeerLost as exc:
            raise self._lost(exc) from None
        finally:
            outbox.clear()

    def send_and_read(self) -> None:
        """Send what the core queued (lock held), then read the replies that have arrived.

        A full publish batch leaves this way: a caller that keeps publishing reads its
        own replies, and the background thread sleeps on (``Ticker``).
        """
        self.send_out()
        if self.core.pending:
            self.drain()

    def submit(self, make: Callable[..., Request], *args: Any, **kwargs: Any) -> Request:
        """Queue a request made by ``make(*args, **kwargs)`` (a core method) and send it."""
        forks.check_process("client", self.core.pid)   # a fork that bypassed os.fork
        self.claim()
        try:
            self.ensure()
            try:
                request = make(*args, **kwargs)
            finally:
                self.send_out()
            self._ticker.used()   # its caller reads the replies: no reply poll meanwhile
            if len(self.core.pending) > PIPELINE_READ:
                # A pipelining caller never waits, so its replies pile up; read what has
                # arrived now, a little at a time, rather than thousands at once later
                # (a pause of milliseconds in the middle of a stream of publishes).
                self.drain()
            return request
        finally:
            self.lock.release()

    def reply_waiter(self) -> tuple[Request, str]:
        """A number for a ``request()`` to wait on, and its reply address (connected)."""
        forks.check_process("client", self.core.pid)
        self.claim()
        try:
            self.ensure()
            return self.core.reply_waiter()
        finally:
            self.lock.release()

    def forget_reply(self, waiter: Request) -> None:
        """Stop waiting for ``waiter``'s reply."""
        self.claim()
        try:
            self.core.forget_reply(waiter)
        finally:
            self.lock.release()

    def request(self, opcode: int, payload: list[bytes], *, flush: bool = True) -> Request:
        """Send a request (the publish batches being filled first, with ``flush``)."""
        return self.submit(self.core.request, opcode, payload, flush=flush)

    def call(self, opcode: int, *args: Any, **kwargs: Any) -> Any:
        """A control call: its decoded answer."""
        return decode_value(self.wait(self.submit(self.core.call, opcode, *args, **kwargs),
                                      None))

    def drain(self) -> None:
        """Feed the core what has arrived, without waiting (lock held)."""
        core = self.core
        try:
            while self.transport is not None:
                frames = self.transport.recv(0)
                if frames is None:
                    break
                core.receive(frames, time.monotonic())
                if core.ended is not None:
                    self.drop_transport()
        except PeerLost as exc:
            self._lost(exc)
        self._ticker.used()

    def pump(self, timeout: float, until: Request | None = None,
             consumer: ConsumerState | None = None) -> None:
        """Read and feed broker messages for up to ``timeout`` seconds.

        The pumping thread holds the socket for the whole wait, so it heartbeats itself:
        the background thread may not get the lock in between. A call from another
        thread ends the wait early (``claim``). ``until``: the request a caller waits
        for, or ``consumer``: the consumer whose next frames it waits for; what another
        thread read for it meanwhile ends the pump before it starts. Such callers, and
        ``claim``'s, count as claimers while they wait for the lock: a pumping thread
        steps aside for them after each pump (``_let_claimers_in``), and one that takes
        the lock while a claimer's wait is over (its answer or frames read, or a brief
        call) only looks, so the lock soon passes on (it waited in ``recv`` a whole
        wait: a delivery or a call of a third thread was late by tenths of a second).
        """
        core = self.core
        lock = self.lock
        waiting: Any = until if until is not None else consumer
        self._take(waiting, wake=False)
        try:
            if waiting is not None and _wait_is_over(waiting):
                return
            transport = self.ensure()
            wait = (0.0 if any(_wait_is_over(entry) for entry in list(self._claimers))
                    else min(timeout, core.heartbeat_interval))
            try:
                frames = transport.recv(wait)
            except PeerLost as exc:
                self._lost(exc)
                return
            if frames is None and wait > 0:
                try:   # a wake that ended the wait, or came after it: used up
                    os.read(self._wake_reader, 4096)
                except BlockingIOError:
                    pass
            self._ticker.used()
            now = time.monotonic()
            if core.info:   # not during the handshake
                core.heartbeat(now)
                self.send_out()
            if frames is None:
                silence = core.silence(now, pinned_hint(self.transport))
                if silence is not None:
                    self.broken(silence)
            else:
                core.receive(frames, now)
                if core.ended is not None:
                    self.drop_transport()
                else:
                    self.drain()
                    if core.outbox:   # releases of pushes that crossed a CANCEL
                        self.send_out()
        finally:
            lock.release()
        if self._claimers and not lock.held_here():
            self._let_claimers_in()

    def _let_claimers_in(self) -> None:
        """After a pump (lock released): let the threads waiting for the lock take it.

        Without it the pumping thread (a consumer's iteration), running, took the lock
        back before a waiting caller was scheduled, and waited in ``recv`` again: a
        call waited for whole ``recv``s, a caller whose answer it had read already
        included. Bounded by ``CLAIM_YIELD``.
        """
        deadline = time.monotonic() + CLAIM_YIELD
        while self._claimers and time.monotonic() < deadline:
            time.sleep(CLAIM_YIELD / 50)

    def wait(self, request: Request, timeout: float | None, *, extra: float = 0.0,
             handshake: bool = False, poll: bool = False) -> list[bytes]:
        """Pump until ``request`` is answered; returns its payload or raises its error.

        Past ``timeout`` the connection counts as broken, unless ``poll`` (a caller's own
        wait on a future): then ``CallTimeout`` is raised and nothing else changes.
        """
        limit = (self.timeout if timeout is None else timeout) + extra
        deadline = time.monotonic() + limit
        while not request.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if poll:
                    self.pump(0, request)   # read an answer that has arrived
                    if request.done:
                        break
                    raise CallTimeout(
                        f"no answer from the broker at {self.endpoint} within the "
                        f"{limit:g} s waited; the request is still pending (the "
                        f"connection is unchanged): wait again")
                with self.held():
                    self.broken(BrokenConnection(
                        f"no reply from the broker at {self.endpoint} within {limit:.1f} s"
                        + (f"; is it running?{stream_endpoint_hint(self.endpoint)}"
                           if handshake else "")))
                break
            self.pump(min(remaining, 0.05), request)
            if handshake and self.transport is None and not request.done:
                break
        if request.error is not None:
            raise request.error
        if request.frames is None:
            raise BrokenConnection(f"no reply from the broker at {self.endpoint}")
        return request.frames

    def publish_results(self, request: Request, timeout: float | None = None
                        ) -> RemotePublishBatch:
        """Wait for a publish or send request's answer: its results frame, or its error.

        A publish to a full ``overflow="hold"`` queue is answered only when there is room
        (or after the broker's ``hold_timeout``), so the default wait (``timeout`` None)
        stretches by that much rather than declaring the connection broken. An explicit
        timeout is a caller's own wait (a future's ``result(timeout)``): past it
        ``CallTimeout`` is raised and the connection and request are left alone.
        """
        if timeout is None:
            return RemotePublishBatch(
                self.wait(request, None, extra=self.core.hold_timeout)[0])
        return RemotePublishBatch(self.wait(request, timeout, poll=True)[0])

    # -- publish batches and settling -----------------------------------------------------

    def enqueue(self, opcode: int, name: str, body: Any,
                options: tuple[Any, ...] | None) -> PublishFuture:
        """Add one message to the batch of (opcode, name); returns its future."""
        self.claim()
        try:
            self.ensure()
            core = self.core
            now = self.start_ticking() if not core.batches else 0.0
            # a bad name or body raises before anything is queued
            future = core.enqueue(opcode, name, body, options, self._new_future, now)
            sent = bool(core.outbox)   # a full batch
            if sent:
                self.send_out()
        finally:
            self.lock.release()
        if sent:
            self.pace()
        return future

    def pace(self) -> None:
        """Wait (lock not held) while more than ``max_in_flight`` batches are unanswered.

        A caller of ``publish_nowait`` that sent a full batch is so paced to the
        broker's answers, as a producer is (counted in ``in_flight_waits``).

        An answer that is an error is left to the futures of its batch; a broker silent
        past the timeout (and ``hold_timeout``) breaks the connection, which fails them.
        """
        core = self.core
        request = core.batch_to_wait()
        while request is not None:
            self.in_flight_waits += 1
            try:
                self.wait(request, None, extra=core.hold_timeout)
            except FastFanoutError:
                pass   # the batch's futures carry it; a broken connection ends the wait
            request = core.batch_to_wait()

    def batch_future(self, request: Request) -> PublishBatchFuture:
        """A future of a publish request's results (sent already).

        The background thread is woken to look for its answer ``REPLY_POLL`` from now:
        asleep with nothing in flight, it looked for replies only at its next heartbeat
        (a whole ``heartbeat_interval``; the future completed that late when nobody
        waited on it, as a callback-driven pipeline does not).
        """
        self._ticker.due(time.monotonic() + REPLY_POLL, _REPLIES)
        return PublishBatchFuture(self, request)

    def start_ticking(self, source: Any = None, linger: float | None = None) -> float:
        """A publish batch (``source`` None) or a producer's frame was opened; the time.

        The background thread wakes ``linger`` (default: the client's) from now to send
        it, unless it left full before: ``source``'s next frame moves the deadline.
        """
        now = time.monotonic()
        self._ticker.due(now + (self.core.linger if linger is None else linger), source)
        return now

    def flush(self) -> None:
        """Send every pending publish batch now (does not wait for the answers).

        Raises:
            UsedAfterFork: in a forked child (a batch it inherited is the parent's to send).
        """
        if self.core.left_to_parent(os.getpid()):
            raise forks.used_after_fork("client", self.core.pid)
        self.claim()
        try:
            if self.core.batches:
                self.core.flush_batches()
                self.send_out()
        finally:
            self.lock.release()

    def defer_settle(self, consumer: ConsumerState, receipts: bytes) -> None:
        """Queue a consumer's pipelined ack (sent within linger, or now when due).

        The thread that waits for the consumer's next batch sends it when its linger is
        up; when no thread waits, the background thread does, at its next heartbeat (it
        is not woken for acks: waking it would take the socket from the consuming thread).
        """
        with self.held():
            self.core.defer_settle(consumer, receipts, time.monotonic())
            self.send_out()

    def settle(self, consumer: ConsumerState, now: float | None = None) -> float | None:
        """Send the consumer's queued acks if due (now when ``now`` is None).

        Returns the seconds until they are due, or None.
        """
        with self.held():
            if now is None:
                self.core.settle(consumer)
                left = None
            else:
                left = self.core.settle_wait(consumer, now)
            self.send_out()
            return left

    def abandon(self, consumer: ConsumerState) -> None:
        """A consumer its user can no longer reach (its iteration dropped): cancel it soon.

        Called from a finalizer, in whatever thread dropped it. The CANCEL (answer
        dropped) leaves at once when the connection is free (the usual case: the thread
        whose ``for`` loop ended), so the broker pushes nothing more to it; otherwise
        the background thread, woken, sends it.
        """
        self.abandoned.append(consumer)
        self._soon()

    def release_unread(self, receipts: bytes) -> None:
        """Give back pushed messages nobody will read (a dropped cursor's), soon.

        Called from a finalizer, in whatever thread dropped the cursor; sent by the
        background thread, or with the CANCEL of ``abandon`` (``ConnectionCore.release``)
        when the consumer goes too — the usual case, a ``for`` left by ``break``: the
        consumer's own finalizer runs right after the cursor's. Not sent at once: a
        release that reached the broker before the CANCEL gave the consumer its credit
        back, the broker pushed the same messages to it again, and the CANCEL released
        them a second time (each delivery counted twice: dead-lettered unread).
        """
        self.unread.append(receipts)
        self._ticker.ring()

    def _soon(self) -> None:
        """Send the abandoned consumers' CANCELs and the unread releases, now or soon.

        Now when the connection is free; otherwise the background thread, woken,
        sends them.
        """
        lock = self.lock
        if not lock.held_here() and lock.acquire(False):   # never inside our own call
            try:
                if self.transport is not None:
                    self._cancel_abandoned()
                    self.send_out()
            except FastFanoutError:
                pass   # a broken connection: the broker dropped the consumer itself
            finally:
                lock.release()
        else:
            self._ticker.ring()

    def _cancel_abandoned(self) -> None:
        """Cancel the abandoned consumers, then release the unread messages (lock held).

        In that order: the broker pushes nothing more to a consumer it has cancelled, so
        what is released is not pushed back to it and released again.
        """
        core = self.core
        while self.abandoned:
            consumer = self.abandoned.pop()
            if core.cancel(consumer):
                core.queue_frames(Opcode.CANCEL, [encode_call(
                    Opcode.CANCEL, (consumer.consumer_id,), {})], False)
        while self.unread:
            core.release(self.unread.pop())

    def cancel(self, consumer: ConsumerState) -> None:
        """Cancel a consumer (its queued acks sent first, ``ConnectionCore.cancel``)."""
        with self.held():
            ask = self.core.cancel(consumer) and self.transport is not None
            self.send_out()
        if ask:
            try:
                self.call(Opcode.CANCEL, consumer.consumer_id)
            except FastFanoutError:
                pass

    def _background(self) -> None:
        """Heartbeats, linger sends and reply reads, until close."""
        core = self.core
        busy_since: float | None = None
        while not core.closed:
            interval = core.heartbeat_interval
            ticker = self._ticker
            # Asleep in C, without the GIL, until something is due: a batch or frame a
            # caller opened reaches its linger (one that left full meanwhile moves it to
            # what is open then), a heartbeat, or — while requests are in flight —
            # REPLY_POLL after callers last used the connection: a pipelined publish's
            # future must complete (and run its callbacks) with nobody calling.
            ticker.wait(interval, REPLY_POLL if core.pending else -1.0)
            if core.closed:
                return
            # A thread holding the lock is inside a call: it sends and reads replies, and
            # heartbeats as it pumps. Waiting for the lock here made every later call of
            # that thread wait its turn too (the lock is fair to waiters): a loop of
            # publish_nowait, whose caller holds the lock while paced to the broker's
            # answers, paid two thread wake-ups per round of this thread, a sixth of its
            # time. So unless a batch or frame that could leave is past its linger — then
            # the holder is woken if it waits in ``recv`` (``claim``), for nobody else
            # sends it — this thread looks again at its next wake-up, and waits its turn
            # only once the lock has been busy for BUSY_PATIENCE (acks and reply reads wait
            # no longer).
            if not self.lock.acquire(blocking=False):
                now = time.monotonic()
                if self._lingering(now):
                    self.claim()
                else:
                    if busy_since is None:
                        busy_since = now
                    if now - busy_since < BUSY_PATIENCE:
                        # nothing that could leave lingers: look again at the next reply
                        # poll (which a pumping holder keeps pushing out), heartbeat or
                        # deadline a caller sets; what is open sets its own once held
                        self.busy_retries += 1
                        ticker.take()
                        continue
                    if not self.lock.acquire(timeout=interval):
                        continue  # another thread is busy with the socket; it heartbeats too
            busy_since = None
            try:
                ticker.take()   # what is still open sets the next deadline (finally)
                if self.transport is None:
                    continue
                now = time.monotonic()
                if self.abandoned or self.unread:
                    self._cancel_abandoned()
                if core.batch_due(now):
                    core.flush_batches()
                for producer in list(self.producers):
                    producer.linger_send(now)
                for consumer in list(core.consumers.values()):
                    core.settle_wait(consumer, now)
                self.send_out()
                if now - core.last_sent_heartbeat >= interval:
                    self.pump(0)
                elif core.pending:
                    self.drain()
            except FastFanoutError:
                pass
            finally:
                try:
                    self._linger_due(ticker)
                finally:
                    self.lock.release()

    def _lingering(self, now: float) -> bool:
        """A publish batch or a producer's frame that could leave is past its linger.

        A frame behind ``max_in_flight`` unanswered ones leaves with its thread's next send.

        Read without the lock, by the background thread: a hint.
        """
        if self.core.batch_due(now):
            return True
        for producer in list(self.producers):
            due = producer.linger_due()
            if due is not None and due <= now and producer.can_leave():
                return True
        return False

    def _linger_due(self, ticker: Ticker) -> None:
        """Tell ``ticker`` when the oldest batch or frame still open must leave (lock held).

        One that could not leave yet (a producer at its ``max_in_flight``) is looked at
        again a ``linger`` from now, as before.
        """
        core = self.core
        dues: list[tuple[float, Any]] = []
        for producer in list(self.producers):
            due = producer.linger_due()
            if due is not None:
                dues.append((due, producer))
        if core.batches:
            dues.append((core.oldest_batch + core.linger, None))
        now = time.monotonic()
        for due, source in dues:
            ticker.due(due if due > now else now + core.linger, source)

    def close(self, timeout: float | None) -> None:
        """Flush, say goodbye and disconnect (see ``Client.close``).

        ``timeout`` bounds the whole close (None or ``inf``: the client's own timeout
        for each answer, no bound on the thread's end).
        """
        core = self.core
        deadline = (None if timeout is None or timeout >= threading.TIMEOUT_MAX
                    else time.monotonic() + timeout)

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        try:
            with self.held():
                if self.transport is not None:
                    publishes = core.closing()
                    try:
                        self.send_out()
                        for request in publishes:
                            try:
                                self.wait(request, left())
                            except BrokenConnection:
                                raise
                            except FastFanoutError:
                                pass   # its refusal, in its future: wait for the others
                        self.wait(self.request(Opcode.BYE, [], flush=False), left())
                    except FastFanoutError:
                        pass
        finally:
            core.closed = True
            self.nowait_gate.forget()   # the batch it remembers (and its futures) go
            self._ticker.ring()
            # ``inf``, or more than ``Thread.join`` takes (an OverflowError, and the
            # transport left open), waits as None does
            self._thread.join(left())
            with self.held():
                self.drop_transport()


class Client(ClientFace[PublishFuture, PublishBatchFuture]):
    """A connection to a broker server, with the methods and errors of ``Broker``.

    Each operation is documented where it is declared, in ``fastfanout.api``.

    Args:
        endpoint: the broker's command endpoint (default: the per-user ipc socket).
        timeout: seconds a call waits for its reply beyond any ``wait`` it asks for; also
            the longest a request waits for room to be sent (a local channel's ring, or
            the socket's queue: ``DEALER_HIGH_WATER_MARK`` requests, or no connection to
            queue it on), past which the connection is broken.
        linger: seconds a pipelined publish, or a consumer's pipelined batch ack, may wait
            for more to batch with.
        batch_messages: records per publish batch before it is sent.
        batch_bytes: body bytes per publish batch before it is sent.
        curve: client CURVE keys (with the broker's public key) for a CURVE broker.
        curve_server_key: the CURVE broker's public key (Z85) or certificate file; the
            simple alternative to ``curve``.
        curve_keys: this client's key pair or certificate file, with
            ``curve_server_key``; None makes a fresh pair (a broker admitting any client).
        local_channel: talk to the broker through shared memory
            (``fastfanout.transport.local_channel``) instead of its socket: None (the default)
            when the endpoint is ``ipc://`` and the broker offers it, True to insist
            (``BrokenConnection`` when it cannot be had), False never.
        ring_bytes: bytes of each of the channel's two rings (a power of two from 64 KiB
            to 1 GiB); a message larger than half a ring goes over the socket.
        max_in_flight: publish batches of ``publish_nowait``/``send_nowait`` that may be
            unanswered (default 8, as a producer's frames); the call that sends one more
            full batch waits for the oldest answer first (counted in
            ``connection.in_flight_waits``), so a loop of pipelined publishes is paced
            to the broker and its consumers instead of piling its batches up in the
            broker. 0: no limit.

    Attributes:
        connection: the I/O driver (``Connection``) over the protocol core.

    Raises:
        BrokenConnection: no broker answered the handshake within ``timeout``.
    """

    connection: Connection

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0,
                 linger: float = 0.002, batch_messages: int = 1000,
                 batch_bytes: int = 1 << 20, curve: CurveKeys | None = None,
                 curve_server_key: bytes | str | os.PathLike[str] | None = None,
                 curve_keys: tuple[bytes, bytes] | str | os.PathLike[str] | None = None,
                 local_channel: bool | None = None, ring_bytes: int = DEFAULT_RING_BYTES,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        curve = self._options(endpoint, timeout, linger, batch_messages, batch_bytes, curve,
                              curve_server_key, curve_keys, local_channel, ring_bytes)
        if type(max_in_flight) is not int or max_in_flight < 0:
            raise InvalidArgument(f"max_in_flight={max_in_flight!r} must be an int of 0 "
                                  f"(no limit) or more")
        self.linger = linger
        self.connection = Connection(
            self.endpoint, curve, timeout=timeout, linger=linger,
            batch_messages=batch_messages, batch_bytes=batch_bytes,
            local_channel=local_channel, ring_bytes=ring_bytes, max_in_flight=max_in_flight)
        self._native_nowait(self.connection.nowait_gate)

    create_topic = control(BrokerAPI.create_topic)
    delete_topic = control(BrokerAPI.delete_topic)
    list_topics = control(BrokerAPI.list_topics)
    create_queue = control(BrokerAPI.create_queue)
    delete_queue = control(BrokerAPI.delete_queue)
    list_queues = control(BrokerAPI.list_queues)
    topic_settings = control(BrokerAPI.topic_settings)
    queue_settings = control(BrokerAPI.queue_settings)
    set_queue_settings = control(BrokerAPI.set_queue_settings)
    subscribe = control(BrokerAPI.subscribe)
    unsubscribe = control(BrokerAPI.unsubscribe)
    set_filter_policy = control(BrokerAPI.set_filter_policy)
    subscription = control(BrokerAPI.subscription)
    list_subscriptions = control(BrokerAPI.list_subscriptions)
    redrive = control(BrokerAPI.redrive)
    purge = control(BrokerAPI.purge)
    stats = control(BrokerAPI.stats)
    check = control(BrokerAPI.check)
    nack = control(BrokerAPI.nack)
    extend = control(BrokerAPI.extend)
    term = control(BrokerAPI.term)
    server_stats = control(ClientAPI.server_stats)
    report_worker = control(ClientAPI.report_worker)
    worker_stats = control(ClientAPI.worker_stats)

    def publish(self, topic: str, body: Body, *,
                attributes: Attributes | None = None, delay: float | None = None,
                deliver_at: float | datetime | None = None, group_id: str | None = None,
                dedup_id: str | None = None, priority: int | None = None,
                ttl: float | None = None) -> PublishResult:
        """Publish one message and wait for its result (``publish_nowait``'s batch)."""
        return self.connection.enqueue(Opcode.PUBLISH, topic, body, publish_options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl)).result()

    def send(self, queue: str, body: Body, *,
             attributes: Attributes | None = None, delay: float | None = None,
             deliver_at: float | datetime | None = None, group_id: str | None = None,
             dedup_id: str | None = None, priority: int | None = None,
             ttl: float | None = None) -> PublishResult:
        """Send one message straight to a queue and wait for its result."""
        return self.connection.enqueue(Opcode.SEND, queue, body, publish_options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl)).result()

    def request(self, topic: str, body: Body, *, attributes: Attributes | None = None,
                timeout: float = DEFAULT_REQUEST_TIMEOUT, group_id: str | None = None,
                dedup_id: str | None = None, priority: int | None = None,
                ttl: float | None = None) -> Reply:
        """Publish a message that asks for a reply, and wait for the first reply."""
        timeout = check_request_timeout(timeout)
        connection = self.connection
        waiter, address = connection.reply_waiter()
        try:
            result = self.publish(topic, body,
                                  attributes=request_attributes(attributes, address),
                                  group_id=group_id, dedup_id=dedup_id, priority=priority,
                                  ttl=ttl)
            if result.deliveries == 0:
                raise no_responders(topic, result)
            try:
                frames = connection.wait(waiter, timeout, poll=True)
            except CallTimeout:
                raise no_reply(topic, result, timeout) from None
        finally:
            connection.forget_reply(waiter)
        return decode_reply(frames[0])

    def reply(self, address: str, body: Body, *,
              attributes: Attributes | None = None) -> None:
        """Answer a request: send ``body`` to the requester waiting at ``address``."""
        connection = self.connection
        connection.wait(connection.request(Opcode.REPLY, reply_frames(address, body,
                                                                      attributes)), None)

    def publish_batch(self, topic: str, entries: Iterable[Any]) -> RemotePublishBatch:
        """Publish many messages (bodies or ``PublishEntry``): all enqueued, or none.

        ``entries`` may be an array batch instead (a 2-D or structured numpy array, one
        row a body, or a ``(buffer, offsets)`` pair), encoded natively (docs/arrays.md).
        """
        return self.connection.publish_results(self._entries(Opcode.PUBLISH, topic, entries))

    def send_batch(self, queue: str, entries: Iterable[Any]) -> RemotePublishBatch:
        """Send many messages straight to a queue: all enqueued, or none."""
        return self.connection.publish_results(self._entries(Opcode.SEND, queue, entries))

    def producer(self, topic: str, *, group_id: str | None = None,
                 batch_messages: int | None = None, batch_bytes: int | None = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, linger: float | None = None
                 ) -> RemoteProducer:
        """A producer for one thread (see ``fastfanout.api.PipelineAPI.producer``)."""
        core = self._producer_core(topic, group_id, batch_messages, batch_bytes,
                                   max_in_flight, linger, self.linger)
        self._check_producer_topic(core, self.stats())
        producer = RemoteProducer(self.connection, core)
        self.connection.producers.add(producer)
        return producer

    def flush(self) -> None:
        """Send every pending publish batch now (does not wait for the answers).

        Raises:
            Closed: the client was closed.
        """
        self.connection.core.check_open()
        self.connection.flush()

    def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                visibility_timeout: float | None = None) -> list[RemoteMessage]:
        """Lease up to ``max_messages`` visible messages (``wait``: long-poll seconds)."""
        connection = self.connection
        extra = connection.core.receive_allowance(wait)
        request = connection.submit(connection.core.receive_request, queue, max_messages,
                                    wait, visibility_timeout)
        return messages_of(connection.wait(request, None, extra=extra)[0], self, None, queue)

    def ack(self, receipt: int) -> None:
        """Delete the message of a delivery (raises ``StaleReceipt`` if its lease ended)."""
        self.ack_batch((receipt,))

    def ack_batch(self, receipts: Iterable[int]) -> None:
        """Ack many deliveries: all, or (if any receipt is stale) none.

        ``receipts``: ints, or a 1-D ``uint64`` array (a batch's ``receipts``), packed
        natively.
        """
        connection = self.connection
        connection.wait(connection.submit(connection.core.ack_request, receipts), None)

    def nack_batch(self, receipts: Iterable[int], *, delay: float | None = None) -> None:
        """End many leases early: all, or (if any receipt is stale) none.

        Each receipt is nacked as ``nack(receipt, delay=delay)`` would; ``receipts`` as
        ``ack_batch`` takes them, in one NACK_BATCH request.

        Raises:
            StaleReceipt: listing the stale receipts; nothing was nacked.
            InvalidArgument: ``delay`` (seconds, 0 to 31,536,000, or None: the queue's
                backoff) or a receipt is bad; nothing was sent.
        """
        connection = self.connection
        connection.wait(connection.submit(
            connection.core.nack_batch_request, receipts, delay), None)

    def extend_batch(self, receipts: Iterable[int], seconds: float) -> None:
        """Make many leases end ``seconds`` (0 to 43,200) from now: all, or none.

        ``receipts`` as ``ack_batch`` takes them, in one EXTEND_BATCH request.

        Raises:
            StaleReceipt: listing the stale receipts; nothing was extended.
            InvalidArgument: ``seconds`` or a receipt is bad; nothing was sent.
        """
        connection = self.connection
        connection.wait(connection.submit(
            connection.core.extend_batch_request, receipts, seconds), None)

    def term_batch(self, receipts: Iterable[int]) -> None:
        """Dead-letter many leased messages now: all, or (if any is stale) none.

        ``receipts`` as ``ack_batch`` takes them, in one TERM_BATCH request.

        Raises:
            StaleReceipt: listing the stale receipts; nothing was changed.
            InvalidArgument: a receipt is bad; nothing was sent.
        """
        connection = self.connection
        connection.wait(connection.submit(
            connection.core.term_batch_request, receipts), None)

    def consume(self, queue: str, *, prefetch: int = 100,
                visibility_timeout: float | None = None,
                timeout: float | None = None) -> Consumer:
        """Start a push consumer (see ``fastfanout.api.BrokerAPI.consume``).

        Iterate it for messages, or call ``next_batch()`` for batches.
        """
        connection = self.connection
        # the consumer is registered with its request: pushes may come before the answer
        request = connection.submit(connection.core.consume, queue, prefetch,
                                    visibility_timeout, timeout)
        state = connection.core.consumers[request.request_id]
        connection.wait(request, None)   # refused: the core dropped the consumer
        return Consumer(connection, state, self)

    def consume_batches(self, queue: str, *, prefetch: int = 1000,
                        visibility_timeout: float | None = None,
                        timeout: float | None = None) -> Iterator[DeliveryBatch]:
        """Iterate over pushed batches; ``batch.ack()`` settles a batch."""
        return _PulledBatches(self._batches(queue, prefetch, visibility_timeout, timeout),
                              queue)

    def _batches(self, queue: str, prefetch: int, visibility_timeout: float | None,
                 timeout: float | None) -> Iterator[DeliveryBatch]:
        consumer = self.consume(queue, prefetch=prefetch, visibility_timeout=visibility_timeout,
                                timeout=timeout)
        try:
            while True:
                batch = consumer.next_batch(consumer.timeout)
                if batch is None:   # only with a timeout: nothing came in time
                    return
                yield batch
        finally:
            consumer.cancel()

    def listen(self, topic_pattern: str, *, high_water_mark: int = 100_000) -> Listener:
        """Follow the stream of every topic matching ``topic_pattern`` (at most once).

        Returns once the broker applies the subscription (see
        ``fastfanout.api.PipelineAPI.listen``).
        """
        self._check_listen(topic_pattern, high_water_mark)
        with self.connection.held():
            self.connection.ensure()
        return Listener(str(self.info["stream_endpoint"]), topic_pattern,
                        self.connection.curve, timeout=self.timeout,
                        high_water_mark=high_water_mark,
                        heartbeat=self.connection.core.listener_heartbeat(),
                        client_open=self.connection.core.check_open)

    def close(self, timeout: float = 5.0) -> None:
        """Flush, wait for the answers, say goodbye and disconnect (``fastfanout.api``).

        Producers of this client still open are closed first; in a forked child it only
        marks the client closed (the connection is the parent's). ``timeout`` bounds the
        whole close, the producers' flushes included.

        Raises:
            InvalidArgument: ``timeout`` is not seconds (an int or float that is not NaN);
                nothing is closed.
            FastFanoutError: a producer's frame was refused, or not answered within
                ``timeout`` (``BrokenConnection``); the client is closed anyway and that
                producer's messages not confirmed may not be published.
        """
        check_wait("timeout", timeout)
        connection = self.connection
        if connection.core.closed or connection.core.left_to_parent(os.getpid()):
            return
        refusal: FastFanoutError | None = None
        # None or inf: the client's own waits, unbounded as a whole
        deadline = (None if timeout is None or timeout >= threading.TIMEOUT_MAX
                    else time.monotonic() + timeout)
        # the producers' flushes wait no longer than the close may: until 2026-12-05
        # each waited the client's timeout plus the broker's hold_timeout
        connection.close_deadline = deadline
        try:
            for producer in list(connection.producers):   # their open and kept frames
                try:
                    producer.close()
                except FastFanoutError as exc:
                    refusal = refusal or exc
        finally:
            connection.close_deadline = None
        connection.close(timeout if deadline is None
                         else max(0.0, deadline - time.monotonic()))
        if refusal is not None:
            raise refusal

    def __enter__(self) -> Client:
        self.connection.core.check_open()   # Closed after close(), UsedAfterFork in a child
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> NoReturn:
        raise WrongClient("a Client (fastfanout.connect()) is the blocking client, entered "
                          "with 'with'; in asyncio code use 'async with "
                          "fastfanout.aio.connect() as client:'")

    async def __aexit__(self, *exc: object) -> None:   # pragma: no cover - __aenter__ raised
        pass

    if not TYPE_CHECKING:   # type checkers keep reporting the await themselves
        def __await__(self):
            raise blocking_misused(
                "a Client (what fastfanout.connect() returns, connected already)",
                "awaited", "use it as it is, or in 'with fastfanout.connect() as client:'")


_REPLIES: Final = object()
"""The ``Ticker`` deadline source of a reply poll (``Connection.batch_future``)."""
_BRIEF: Final = object()
"""What a ``claim`` waits for (``Connection._claimers``): the lock, for a brief call."""


def _unregister(claimers: list[Any], waiting: Any) -> None:
    """Take a claimer's entry out (none if an interrupt came before it was added)."""
    with contextlib.suppress(ValueError):
        claimers.remove(waiting)


def _wait_is_over(waiting: Any) -> bool:
    """A claimer's wait is over once it has the lock.

    So for a brief call (``_BRIEF``), a request answered, or a consumer whose frames (or
    end) another thread read.
    """
    if waiting is _BRIEF:
        return True
    if isinstance(waiting, Request):
        return waiting.done
    return bool(waiting.batches) or waiting.error is not None or waiting.closed


class _PulledBatches(Iterator[DeliveryBatch]):
    """What ``Client.consume_batches`` returns: its batches, by ``for``.

    A generator but for ``async for``, which raises ``WrongClient`` (a bare generator
    left Python's "requires an object with __aiter__ method, got generator").
    """

    __slots__ = ("_batches", "_queue")

    def __init__(self, batches: Iterator[DeliveryBatch], queue: str) -> None:
        self._batches = batches
        self._queue = queue

    def __iter__(self) -> _PulledBatches:
        return self

    def __next__(self) -> DeliveryBatch:
        return next(self._batches)

    def close(self) -> None:
        """End the iteration (the consumer is cancelled, as on leaving ``for``)."""
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()

    def __aiter__(self) -> NoReturn:
        raise blocking_misused(
            f"the batch iterator of queue {self._queue!r} (consume_batches() of a blocking "
            f"client)", "iterated with 'async for'", "iterate it with 'for'")


def _close_descriptors(*descriptors: int) -> None:
    """Close a finalized connection's wake pipe."""
    for descriptor in descriptors:
        os.close(descriptor)


def connect(endpoint: str | None = None, **options: Any) -> Client:
    """Connect to a broker server (default: the per-user ipc endpoint).

    Args:
        endpoint: ``ipc://PATH`` or ``tcp://HOST:PORT``.
        **options: keyword arguments of ``Client`` (``timeout``, ``linger``, ...).
    """
    return Client(endpoint, **options)
