"""The asyncio face of the client (``async with``, ``async for``), on ``zmq.asyncio``.

Design
------
The protocol lives in ``fastfanout.client.core.ConnectionCore``, as for the blocking
client; this module is its asyncio driver (``AsyncConnection``: a reader task that feeds
the core, so any number of coroutines may await calls at once, and a heartbeat task) and
the API over it (``AsyncClient``, each operation documented in ``fastfanout.api``). A
goodbye that ends the session (``SessionExpired``) makes a new connection. Sockets come
from ``fastfanout.transport.sockets``, still the only module that imports ``zmq``.

Publishes batch per event-loop iteration: ``publish()``/``send()`` of one iteration and
``publish_nowait()``/``send_nowait()`` join the batch of their target, which leaves when
the iteration ends (or when full, on ``flush()``, before any other request). Every call
is awaitable except the iterators (``consume``, ``consume_batches``: ``async for``) and
``closed``; the plain calls return something awaitable (futures, ``Opening``, the
listener, or the complete ``DONE``). ``message.ack()`` queues the receipt: the acks of
one iteration leave as one SETTLE with a frame per receipt (a stale one fails alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
)
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, Protocol, TypeVar

from fastfanout._ext.offers import LoopFutures, NowaitGate, PendingBatch
from fastfanout._ext.received import AckBuffer, AsyncMessageCursor
from fastfanout.api import AsyncBrokerAPI, AsyncClientAPI
from fastfanout.client import forks
from fastfanout.client.consumers import AsyncDeliveryBatch, AsyncSettler, StreamListening
from fastfanout.client.core import (
    SETTLE_MAX_RECEIPTS,
    Request,
    encode_call,
    stream_endpoint_hint,
)
from fastfanout.client.driver import DriverBase, dealer_to_attach
from fastfanout.client.face import ClientFace, control
from fastfanout.client.messages import (
    DONE,
    Done,
    RemoteMessage,
    RemotePublishBatch,
    messages_of,
    publish_options,
)
from fastfanout.client.producers import DEFAULT_MAX_IN_FLIGHT, AsyncProducer
from fastfanout.errors import (
    BrokenConnection,
    Closed,
    FastFanoutError,
    InvalidArgument,
    PeerLost,
    SessionExpired,
    TransportError,
    WrongClient,
    WrongEventLoop,
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
from fastfanout.server.streams import StreamMessage
from fastfanout.settings import check_wait
from fastfanout.transport.local import AsyncLocalTransport
from fastfanout.transport.local_channel import DEFAULT_RING_BYTES, pinned_hint
from fastfanout.transport.sockets import AsyncDealerTransport, AsyncSubTransport, CurveKeys
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode

R = TypeVar("R")

__all__ = ["AsyncClient", "AsyncConnection", "AsyncListener", "AsyncSettler", "Opening",
           "connect"]


async def _answered(request: Request) -> None:
    """Return once ``request`` is answered or failed (no timeout: the caller's)."""
    if request.done:
        return
    done = asyncio.get_running_loop().create_future()

    def complete() -> None:
        if not done.done():
            done.set_result(None)

    request.watch(complete)
    await done


RELEASE_DELAY: Final = 0.01
"""Seconds a dropped cursor's release waits for its consumer's CANCEL to leave first."""

class AsyncListener(StreamListening):
    """Stream messages of the topics matching a pattern (``AsyncClient.listen``).

    ``await`` it, or enter it (``async with``), before publishing what it must see: that
    returns once the broker applies the subscription (its probe came back, see
    ``fastfanout.server.streams``). Then use ``async for message in listener`` or
    ``await listener.recv_batch(timeout)``; close it (or leave ``async with``) when done.
    The arguments are the blocking ``Listener``'s (``fastfanout.client.consumers``).
    """

    def __init__(self, stream_endpoint: str, pattern: str, curve: CurveKeys | None, *,
                 timeout: float = 10.0, high_water_mark: int = 100_000,
                 heartbeat: tuple[float, float] | None = None) -> None:
        super().__init__(pattern)
        self._stream_endpoint = stream_endpoint
        self._timeout = timeout
        self._heartbeat = heartbeat
        follower = self.follower
        try:
            self._transport = AsyncSubTransport(
                stream_endpoint, [follower.prefix, follower.probe], curve, high_water_mark,
                heartbeat)
        except TransportError as exc:
            raise BrokenConnection(str(exc)) from None

    async def ready(self) -> AsyncListener:
        """Wait until the broker applies the subscription; returns self.

        Raises:
            BrokenConnection: it did not within the client's ``timeout``.
        """
        follower = self.follower
        if follower.live:
            return self
        try:
            async with asyncio.timeout(self._timeout):
                while not follower.live:
                    self.until_live(await self._transport.recv())
        except TimeoutError:
            raise self.not_live(self._stream_endpoint, self._timeout) from None
        except PeerLost:
            raise self.lost(self._stream_endpoint, self._heartbeat) from None
        self._transport.unsubscribe(follower.probe)
        return self

    def __await__(self) -> Generator[Any, None, AsyncListener]:
        """``await client.listen(...)`` is the listener once its subscription is live."""
        return self.ready().__await__()

    def __enter__(self) -> NoReturn:
        raise self._misused("entered with 'with'")

    def __exit__(self, *exc: object) -> None:   # pragma: no cover - __enter__ raised
        pass

    def __iter__(self) -> NoReturn:
        raise self._misused("iterated with 'for'")

    def _misused(self, how: str) -> WrongClient:
        return WrongClient(
            f"the listener of {self.pattern!r} belongs to an asyncio client and "
            f"is {how}: use 'async with client.listen(...) as listener:' and 'async for' "
            f"in a coroutine; in synchronous code use the listen() of a blocking client "
            f"(fastfanout.connect())")

    async def recv_batch(self, timeout: float | None = None) -> list[StreamMessage] | None:
        """The next stream batch (one publish), waiting up to ``timeout`` s; None on timeout.

        Raises:
            InvalidArgument: ``timeout`` is not a number of seconds (or None).
            BrokenConnection: the stream was lost, as the blocking ``Listener``'s.
        """
        check_wait("timeout", timeout)
        self.check_open()
        if not self.follower.live:
            await self.ready()
        if self.early:
            return list(self.early.popleft())
        deadline = None if timeout is None else time.monotonic() + timeout
        accept = self.follower.accept
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                frames = await asyncio.wait_for(self._transport.recv(), remaining)
            except TimeoutError:
                return None
            except PeerLost:
                raise self.lost(self._stream_endpoint, self._heartbeat) from None
            except asyncio.CancelledError:
                # close() from another task cancels the socket's pending read: that is
                # the listener closing, not this task being cancelled
                task = asyncio.current_task()
                if self.closed and (task is None or not task.cancelling()):
                    raise Closed(f"the listener of {self.pattern!r} is closed") from None
                raise
            except Exception:   # pyzmq's ZMQError: closed before the read began
                self.check_open()
                raise
            batch = accept(frames)
            if batch is not None:
                return list(batch)

    def __aiter__(self) -> AsyncListener:
        return self

    async def __anext__(self) -> StreamMessage:
        while not self.unread:
            batch = await self.recv_batch(None)
            if batch:
                self.unread.extend(batch)
        return self.unread.popleft()

    def close(self) -> Done:
        """Close the SUB socket (at once); returns ``DONE``, so it may be awaited.

        A later read raises ``Closed``.
        """
        self.closed = True
        self._transport.close()
        return DONE

    async def __aenter__(self) -> AsyncListener:
        try:
            return await self.ready()
        except BaseException:
            self.close()
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()


def _no_loop(batch: PendingBatch, index: int) -> asyncio.Future[PublishResult]:
    raise RuntimeError("the client is not started: await connect(...) or async with it")


def bind(futures: list[asyncio.Future[Any]], request: Request, whole: bool = False) -> None:
    """Resolve the futures of a sent batch from its request's answer (or error).

    Each future gets its own result, or (``whole``) the batch's results.
    """

    def resolve() -> None:
        error: BaseException | None = request.error
        results = None if error is not None else RemotePublishBatch(request.value()[0])
        for index, future in enumerate(futures):
            if future.done():
                continue
            if results is None:
                future.set_exception(error)   # type: ignore[arg-type]
            else:
                future.set_result(results if whole else results[index])

    request.watch(resolve)


def bind_batch(batch: PendingBatch, request: Request) -> None:
    """Resolve the futures of a sent batch from its request's answer or error.

    The core's ``bind``: the asyncio client's futures are listed in ``batch.futures``.
    """
    bind(batch.futures, request)


class AsyncConnection(DriverBase):
    """The asyncio I/O driver of a ``ConnectionCore``: a reader task and a heartbeat task.

    Producers and the ``AsyncClient`` work through it; its methods are a documented
    internal interface (and a test hook), not the broker API.

    Like the blocking ``Connection``, a lost connection (the local channel's broker gone,
    the reader failing) fails every waiter once and drops its transport (``lost``); the
    next request connects anew (``_reconnect``): HELLO, then ATTACH of a new local
    channel where one is wanted, the requests made meanwhile held back until then.

    Attributes:
        core: the connection's protocol state.
        transport: the DEALER socket or local channel (closed while ``lost``).
        lost: the connection broke; the next request reconnects.
        loop: the event loop that started it (None before ``start``): its tasks read the
            answers, so every call must come from it (``check_loop``).
        closing: ``close()`` is under way.
    """

    def __init__(self, endpoint: str, curve: CurveKeys | None, *, timeout: float,
                 batch_messages: int, batch_bytes: int, local_channel: bool | None,
                 ring_bytes: int) -> None:
        # publishes of one loop iteration travel together: linger is "this iteration"
        super().__init__(endpoint, curve, timeout=timeout, local_channel=local_channel,
                         ring_bytes=ring_bytes, linger=0.0, batch_messages=batch_messages,
                         batch_bytes=batch_bytes, bind=bind_batch)
        self.transport: AsyncDealerTransport | AsyncLocalTransport = AsyncDealerTransport(
            endpoint, curve)
        self.tasks: list[asyncio.Task[None]] = []
        self.lost = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closing = False   # close() is under way
        # while a reconnect's handshake runs: the requests made meanwhile, sent after it
        # (ATTACH must be alone on the socket until its reply)
        self._held: list[list[bytes]] | None = None
        self._handshake: asyncio.Task[None] | None = None
        # waits for the loss of the DEALER's connection (its monitor): a broker killed
        # without a GOODBYE breaks the connection at once, not at the timeout
        self._watcher: asyncio.Task[None] | None = None
        self._new_future: Callable[[PendingBatch, int], asyncio.Future[PublishResult]] = (
            _no_loop)
        self.wakers: dict[int, asyncio.Event] = {}   # consumers waiting for pushes
        self.settler = AsyncSettler(self)
        # the consumers' native cursors: closing drops the frame each is reading, so that
        # a step after close() raises Closed rather than yield what nothing can settle
        self.cursors: weakref.WeakSet[AsyncMessageCursor] = weakref.WeakSet()
        # message.ack() of a received or pushed message queues its receipt here, in C;
        # the acks of one loop iteration leave together (``send_acks``)
        self.acks = AckBuffer(self.core, SETTLE_MAX_RECEIPTS, self.send_acks,
                              self._acks_started)
        self.core.message_acks = self.acks   # a direct settle call sends them first
        forks.watch(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: the next call must refuse, and the reader stop reading."""
        self.core.forked = True
        self.core.closed = True   # a message's ack then raises UsedAfterFork, as calls do
        self.acks.clear()

    async def start(self) -> None:
        """Start the reader and the heartbeats, say HELLO (then ATTACH if wanted)."""
        self.loop = asyncio.get_running_loop()
        create_future = self.loop.create_future
        self._new_future = LoopFutures(create_future)   # one per publish, from C
        # publish_nowait/send_nowait of a bare body: one native call into an open batch
        self.nowait_gate = NowaitGate(self.core, self._new_future, self.send_out,
                                      self._batches_opened, check_loop=self.check_loop)
        self.acks.home(self.check_loop)   # message.ack() from another thread: refused
        self.tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._beat())]
        self._watch(self.transport)
        request = self.core.start(time.monotonic())
        try:
            self.send_out()
            self.hello(await self.wait(request))
            await self._attach_local()
        except BaseException:   # refused, timed out or cancelled: nothing stays open
            await self._stop_io()
            raise

    async def _attach_local(self) -> None:
        """Move onto a local channel if wanted (as the blocking driver does)."""
        dealer = dealer_to_attach(self.transport, AsyncDealerTransport)
        if dealer is None:
            return
        channel = self.new_channel()
        if channel is None:
            return
        try:
            request = self.attach_request(channel)
            self._send(self.core.outbox)   # alone, past any requests held meanwhile
            await self.wait(request)
            channel.attached()
        except (FastFanoutError, OSError, ValueError) as exc:
            self.attach_refused(channel, exc)
            return
        # The reader waits on the socket, where nothing more comes unannounced: move it.
        reader = self.tasks[0]
        reader.cancel()
        await asyncio.wait([reader])   # a cancelled start() raises (its own cancel)
        self.transport = AsyncLocalTransport(dealer, channel, self.timeout)
        self.tasks[0] = asyncio.create_task(self._reader())

    def check_loop(self) -> None:
        """Refuse a call from outside the event loop that started the connection.

        Raises:
            WrongEventLoop: called from another event loop, or a thread with none.
        """
        home = self.loop
        if home is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:   # a thread (or code) with no running loop
            running = None
        if running is not home:
            ended = " (it has ended)" if home.is_closed() else ""
            raise WrongEventLoop(
                f"this asyncio client was connected in another event loop{ended}; its "
                f"calls work only there: connect a client in this loop (or use "
                f"fastfanout.Client from threads)")

    # -- requests ------------------------------------------------------------------------

    def send_out(self) -> None:
        """Send what the core queued (into the ring, or to libzmq: no task per request).

        While the connection is lost, this connects anew first; while a reconnect's
        handshake runs, the requests are held and sent after it.

        Raises:
            BrokenConnection: the connection is lost (its waiters have the error too).
        """
        outbox = self.core.outbox
        if not outbox:
            return
        if self._held is not None:
            self._held.extend(outbox)
            outbox.clear()
        elif self.lost:
            if self.core.closed or self.core.forked:
                outbox.clear()
            else:
                self._reconnect()
        else:
            self._send(outbox)

    def _send(self, outbox: list[list[bytes]]) -> None:
        """Send ``outbox`` on the transport now, and clear it."""
        try:
            for frames in outbox:
                self.transport.send_nowait(frames)
        except PeerLost as exc:
            error = self.broken(BrokenConnection(f"the broker at {self.endpoint} is gone: "
                                                 f"{exc}"))
            raise error from None
        finally:
            outbox.clear()

    def _reconnect(self) -> None:
        """Connect anew after the connection was lost: a new socket and session.

        HELLO leaves at once; the requests queued (the outbox) wait for the handshake
        (``_rehandshake``), as do those made meanwhile: they leave after the HELLO reply
        and, where a local channel is wanted, the ATTACH of a new one.
        """
        core = self.core
        held = list(core.outbox)   # failed with every other waiter if this fails
        core.outbox.clear()
        try:
            dealer = AsyncDealerTransport(self.endpoint, self.curve)
        except TransportError as exc:
            raise self.broken(BrokenConnection(str(exc))) from None
        self.transport = dealer
        self.lost = False
        self._watch(dealer)
        hello = core.start(time.monotonic())
        self._send(core.outbox)
        self._held = held
        reader = asyncio.create_task(self._reader())
        if self.tasks:
            self.tasks[0] = reader
        else:
            self.tasks.append(reader)
        self._handshake = asyncio.create_task(self._rehandshake(hello))

    async def _rehandshake(self, hello: Request) -> None:
        """A reconnect's HELLO reply and ATTACH; then the held requests leave."""
        try:
            self.hello(await self.wait(hello))
            await self._attach_local()
        except Exception as exc:   # a task's error must reach the waiters, not the loop
            # no broker, or a local channel insisted on and refused: the held requests
            # fail with every other waiter, and the next request tries again
            self._held = None
            self.broken(exc if isinstance(exc, BrokenConnection)
                        else BrokenConnection(f"reconnecting to {self.endpoint}: {exc}"))
            return
        finally:
            if self._handshake is asyncio.current_task():
                self._handshake = None
        held, self._held = self._held, None
        if held and not self.lost:
            self.core.outbox[:0] = held
            with contextlib.suppress(FastFanoutError):   # broken: the waiters know
                self.send_out()

    def submit(self, make: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Queue a request made by ``make(*args, **kwargs)`` (a core method) and send it."""
        if self.core.closed or self.core.forked:
            self.core.check_open()
        forks.check_process("client", self.core.pid)   # a fork that bypassed os.fork
        self.check_loop()
        try:
            return make(*args, **kwargs)
        finally:
            self.send_out()

    def fire(self, opcode: int, *args: Any, **kwargs: Any) -> None:
        """Send a control call whose answer is dropped (the broker counts a failure)."""
        payload = encode_call(opcode, args, kwargs)
        self.submit(self.core.queue_frames, opcode, [payload], False)

    def fire_frames(self, opcode: int, payload: list[bytes]) -> None:
        """Send a request of these payload frames whose answer is dropped."""
        self.submit(self.core.queue_frames, opcode, payload, False)

    def release(self, receipts: bytes) -> None:
        """Give back leased messages nobody will read (``ConnectionCore.release``), soon.

        A dropped cursor's: its consumer's CANCEL (the iteration's ``finally``, run by
        ``aclose`` or by the loop's finalizer of async generators a moment later) must
        reach the broker first. Released before it, the messages went back to the same
        consumer (its credit returned) and the CANCEL released them again: each delivery
        counted twice, dead-lettered unread.
        """
        if self.lost:
            return

        def release() -> None:
            if not self.lost and not self.core.closed:
                with contextlib.suppress(FastFanoutError):
                    self.submit(self.core.release, receipts)

        try:
            asyncio.get_running_loop().call_later(RELEASE_DELAY, release)
        except RuntimeError:   # no running loop (a finalizer in another thread)
            release()

    async def wait(self, request: Request, extra: float = 0.0) -> list[bytes]:
        """Wait for a request's answer, at most the client's timeout plus ``extra``."""
        if not request.done:
            async with self.deadline(extra):
                await _answered(request)
        return request.value()

    async def publish_results(self, request: Request) -> RemotePublishBatch:
        """Wait for a publish's answer (a full ``hold`` queue may take ``hold_timeout``)."""
        return RemotePublishBatch((await self.wait(request, self.core.hold_timeout))[0])

    def batch_future(self, request: Request) -> asyncio.Future[RemotePublishBatch]:
        """A future of a publish request's results, completed by its answer."""
        future: asyncio.Future[RemotePublishBatch] = asyncio.get_running_loop().create_future()
        bind([future], request, whole=True)
        return future

    @contextlib.asynccontextmanager
    async def deadline(self, extra: float = 0.0) -> AsyncIterator[None]:
        """Wait for an answer at most the client's timeout (plus ``extra`` seconds).

        Raises:
            BrokenConnection: the time is up (no task per call, unlike ``wait_for``).
        """
        limit = self.timeout + extra
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError:
            raise BrokenConnection(
                f"no reply from the broker at {self.endpoint} within {limit:.1f} s; "
                f"is it running?{stream_endpoint_hint(self.endpoint)}") from None

    # -- batches and acks ----------------------------------------------------------------

    def enqueue(self, opcode: int, name: str, body: Any, options: tuple[Any, ...] | None
                ) -> asyncio.Future[PublishResult]:
        """Add one message to this loop iteration's batch of (opcode, name)."""
        core = self.core
        if core.closed or core.forked:
            core.check_open()
        self.check_loop()
        # a bad name or body raises before anything is queued
        future = core.enqueue(opcode, name, body, options, self._new_future,
                              0.0 if core.batches else self._batches_opened())
        if core.outbox:   # a full batch
            self.send_out()
        return future

    def _batches_opened(self) -> float:
        """The first batch of this loop iteration was opened: it leaves at its end."""
        self.check_loop()
        asyncio.get_running_loop().call_soon(self.flush_batches)
        return 0.0

    def flush_batches(self) -> None:
        """Send the batches being filled (also a loop callback: it never raises).

        A connection lost meanwhile fails the batches' futures, which is where the
        error goes.
        """
        if self.core.batches:
            self.core.flush_batches()
            with contextlib.suppress(FastFanoutError):
                self.send_out()

    def check_open(self) -> None:
        """Raise ``Closed`` after ``close()`` (``UsedAfterFork`` in a forked child)."""
        self.core.check_open()

    def queue_receipts(self, receipts: bytes) -> None:
        """Queue the ack of a receipts frame with this loop iteration's other acks.

        The acks of one loop iteration leave as one SETTLE, which acks each frame on its
        own (a batch's receipts all or none; a stale receipt fails its frame alone, as
        separate ACKs would), answered only if one fails.
        """
        if self.core.closed or self.core.forked:
            self.core.check_open()
        self.check_loop()
        if not self.core.loose_acks:
            self._acks_started()
        self.core.loose_acks.append(receipts)

    def _acks_started(self) -> None:
        """The first ack of this loop iteration was queued: they leave at its end."""
        self.check_loop()
        asyncio.get_running_loop().call_soon(self.send_acks)

    def send_acks(self) -> None:
        """Send the queued acks (also a loop callback: it never raises).

        Acks are not answered unless one fails; while the connection is lost they are
        dropped (the broker released those leases with the session) rather than
        reconnect for them.
        """
        core = self.core
        if self.lost:
            core.loose_acks.clear()
            self.acks.clear()
            return
        with contextlib.suppress(FastFanoutError):   # a broken connection: leases released
            if core.loose_acks:
                core.settle_loose()
                self.send_out()
            if self.acks.count:
                core.settle_each(self.acks.take())
                self.send_out()

    def release_unread(self, request: Request, queue: str) -> None:
        """A RECEIVE whose caller stopped waiting (cancelled, timed out): free its leases.

        A long poll still waiting is withdrawn (CANCEL of its request id: the broker
        answers it empty, leasing nothing). One answered meanwhile (or by a broker that
        cannot withdraw it) leased messages nobody reads: each is NACKed with no delay
        when the answer comes (now, if it came), visible again at once rather than after
        its visibility timeout; that delivery stays counted in its ``receive_count``
        (docs/semantics.md). Nothing is done once the session ended: the broker released
        its leases itself.
        """
        connection_core = self.core
        if not request.done and not self.lost:
            with contextlib.suppress(FastFanoutError):
                self.fire(Opcode.CANCEL, request.request_id)

        def release() -> None:
            frames = request.frames
            if frames is None or self.lost or connection_core.ended is not None:
                return
            for message in messages_of(frames[0], self.settler, None, queue):
                with contextlib.suppress(FastFanoutError):
                    self.fire(Opcode.NACK, message.receipt, delay=0.0)

        request.watch(release)

    # -- what arrives --------------------------------------------------------------------

    async def _reader(self) -> None:
        """Feed the core what arrives, while this is the connection's reader.

        It stops once the connection is lost, or a reconnect started another reader
        (say, from a callback it ran).
        """
        core = self.core
        me = asyncio.current_task()
        try:
            while not self.lost and self.tasks[0] is me:
                frames = await self.transport.recv()
                if core.forked:
                    return   # a forked child's copy: the replies are the parent's
                consumer = core.receive(frames, time.monotonic())
                if consumer is not None:
                    waker = self.wakers.get(consumer.consumer_id)
                    if waker is not None:
                        waker.set()
                elif core.outbox and core.ended is None:   # releases of pushes that
                    self.send_out()                        # crossed a CANCEL
                if core.ended is not None:   # a GOODBYE, or an END of the whole session
                    self._said_goodbye(core.ended)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.lost and self.tasks[0] is me:
                self.broken(BrokenConnection(f"connection to {self.endpoint} failed: {exc}"))

    def _said_goodbye(self, error: FastFanoutError) -> None:
        """GOODBYE failed every waiter; if the broker ended this session, start a new one.

        The broker serves no more requests of an ended session's connection (it ends a
        session whose client read nothing for too long, or was silent past its
        heartbeat timeout), so a fresh connection is made: a new session, announced
        with HELLO. Without a payload the broker is stopping: the connection is dropped
        (as the blocking client drops it), so ``close()`` waits for no reply from a
        broker that said goodbye, and the next request reconnects with a new session.
        A local channel never outlives its session (nor its broker): it is dropped too.
        """
        self._wake_all()
        self.core.ended = None
        if isinstance(self.transport, AsyncLocalTransport) or not isinstance(
                error, SessionExpired):
            self._drop_transport()
            return
        if isinstance(self.transport, AsyncDealerTransport):
            ended, self.transport = self.transport, AsyncDealerTransport(
                self.endpoint, self.curve)
            self._watch(self.transport)
            ended.close()
            self.core.queue_frames(Opcode.HELLO, [protocol.encode_payload({})], False)
            self.send_out()

    def _watch(self, dealer: AsyncDealerTransport | AsyncLocalTransport) -> None:
        """Break the connection as soon as ``dealer``'s connection is lost (its monitor).

        Without it, a broker killed without a GOODBYE left every call (and ``close()``'s
        BYE) waiting for its whole timeout: libzmq reconnects in silence, and the answers
        to the old connection can never come.
        """
        if self._watcher is not None:
            self._watcher.cancel()
        self._watcher = None
        if isinstance(dealer, AsyncDealerTransport):
            self._watcher = asyncio.create_task(self._watch_link(dealer))

    async def _watch_link(self, dealer: AsyncDealerTransport) -> None:
        error = await dealer.lost()
        # on a local channel, its bell says when the broker is gone
        if error is not None and self.transport is dealer and not self.lost:
            self._watcher = None
            self.broken(BrokenConnection(str(error)))

    def broken(self, error: FastFanoutError) -> FastFanoutError:
        """The connection failed: every waiter gets ``error``; the next request reconnects.

        The transport is closed and dropped (as the blocking ``Connection.broken`` does):
        a local channel whose broker is gone never works again, and the reader stops.
        While ``close()`` runs, the waiters get ``Closed`` instead: the broker ending the
        session after BYE is no failure.
        """
        if self.closing:
            error = Closed("the client is closed")
        self.core.broken(error)
        self.acks.clear()
        self._wake_all()
        self._drop_transport()
        return error

    def _drop_transport(self) -> None:
        """Close the transport and stop its reader (and a handshake); mark ``lost``."""
        if self.lost:
            return
        self.lost = True
        self._held = None
        current = asyncio.current_task()
        watcher, self._watcher = self._watcher, None
        for task in (self.tasks[0] if self.tasks else None, self._handshake, watcher):
            if task is not None and task is not current:
                task.cancel()
        self.transport.close()

    def _wake_all(self) -> None:
        for waker in self.wakers.values():
            waker.set()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.core.heartbeat_interval)
            if self.lost or self._held is not None:
                continue   # no connection to keep alive (a heartbeat never reconnects)
            try:
                now = time.monotonic()
                self.submit(self.core.heartbeat, now)
                # a broker silent too long while calls wait (hung, or gone unseen): broken,
                # as the blocking client's pump decides
                silence = self.core.silence(now, pinned_hint(self.transport))
                if silence is not None:
                    self.broken(silence)
            except FastFanoutError:
                if self.core.closed or self.core.forked:
                    return
                # broken: every waiter has been told; the next request reconnects

    async def pushes(self, queue: str, prefetch: int, visibility_timeout: float | None,
                     timeout: float | None) -> AsyncIterator[list[bytes]]:
        """The payloads pushed to a new consumer, as they come (see ``consume``)."""
        core = self.core
        request = self.submit(core.consume, queue, prefetch, visibility_timeout, timeout)
        state = core.consumers[request.request_id]
        waker = self.wakers[state.consumer_id] = asyncio.Event()
        try:
            # the client's deadline alone (BrokenConnection, as for every call): until
            # 2026-12-05 a wait_for of the same length beat it with a bare TimeoutError
            await self.wait(request)
            while True:
                while not state.batches:
                    if state.error is not None:
                        raise state.error
                    if state.closed:   # its client closed (Closed), or it was cancelled
                        core.check_open()
                        return
                    waker.clear()
                    if state.timeout is None:
                        await waker.wait()
                        continue
                    try:
                        async with asyncio.timeout(state.timeout):
                            await waker.wait()
                    except TimeoutError:   # nothing came in time: the iteration ends
                        return
                yield state.batches.popleft()
        finally:
            self.wakers.pop(state.consumer_id, None)
            if core.cancel(state):
                self.fire(Opcode.CANCEL, state.consumer_id)

    async def close(self, timeout: float | None = 5.0) -> None:
        """Send what is pending, say goodbye, stop the tasks and close the transport.

        Args:
            timeout: seconds to wait for the broker's answers at most (None: no limit).
        """
        core = self.core
        if self.lost:   # nobody to say goodbye to: no reconnect for it
            await self._stop_io()
            return
        self.closing = True
        try:
            with contextlib.suppress(FastFanoutError, TimeoutError):
                self.send_acks()   # the messages' queued acks, before BYE too
                publishes = self.submit(core.closing)   # acks before BYE (it releases leases)
                async with asyncio.timeout(timeout):
                    for request in publishes:
                        with contextlib.suppress(FastFanoutError):
                            await self.wait(request)
                    await self.wait(self.submit(core.request, Opcode.BYE, [], flush=False))
        finally:
            # closed even when the wait is cancelled (asyncio.wait_for around close()):
            # a half-closed client would run on with its session ended by the BYE
            await asyncio.shield(self._stop_io())

    def abandon(self) -> None:
        """Close without a word, the loop that ran the connection having ended.

        The broker releases the session's leases when its heartbeats stop.
        """
        self.core.closed = True
        self.core.broken(Closed("the client is closed"))
        self._drop_cursors()
        self.acks.clear()
        self.transport.close()

    def _drop_cursors(self) -> None:
        """Drop the frame every consumer's cursor is reading (the client is closed)."""
        for cursor in list(self.cursors):
            cursor.drop()

    async def _stop_io(self) -> None:
        """Stop the reader and heartbeat tasks and close the transport (no word sent).

        Calls and consumers still waiting in other tasks raise ``Closed`` at once.
        """
        self.core.closed = True
        self.core.broken(Closed("the client is closed"))
        self._drop_cursors()
        self._wake_all()
        watcher, self._watcher = self._watcher, None
        current = asyncio.current_task()
        tasks = [task for task in (*self.tasks, self._handshake, watcher)
                 if task is not None and task is not current]
        for task in tasks:
            task.cancel()
        try:
            if tasks:
                # asyncio.wait: their CancelledError stays in them and the caller's own
                # goes on (until 2026-12-05 a suppress around each await took the
                # caller's for theirs: a cancelled close() returned as if not cancelled)
                await asyncio.wait(tasks)
        finally:
            self.transport.close()


class AsyncClient(ClientFace["asyncio.Future[PublishResult]",
                              "asyncio.Future[RemotePublishBatch]"]):
    """An asyncio connection to a broker server (use ``await connect(...)``).

    The awaitable twin of ``Client``: the same options but ``linger`` (a publish batch
    leaves when the event-loop iteration ends), each operation documented where it is
    declared, in ``fastfanout.api``.

    Attributes:
        connection: the I/O driver (``AsyncConnection``) over the protocol core.
    """

    connection: AsyncConnection

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0,
                 curve: CurveKeys | None = None,
                 curve_server_key: bytes | str | os.PathLike[str] | None = None,
                 curve_keys: tuple[bytes, bytes] | str | os.PathLike[str] | None = None,
                 batch_messages: int = 1000, batch_bytes: int = 1 << 20,
                 local_channel: bool | None = None, ring_bytes: int = DEFAULT_RING_BYTES
                 ) -> None:
        curve = self._options(endpoint, timeout, 0.0, batch_messages, batch_bytes, curve,
                              curve_server_key, curve_keys, local_channel, ring_bytes)
        self.connection = AsyncConnection(
            self.endpoint, curve, timeout=timeout, batch_messages=batch_messages,
            batch_bytes=batch_bytes, local_channel=local_channel, ring_bytes=ring_bytes)
        # closed with the client (until 2026-12-05 they outlived it, reads waiting on)
        self._listeners: weakref.WeakSet[AsyncListener] = weakref.WeakSet()

    async def _start(self) -> AsyncClient:
        await self.connection.start()
        self._native_nowait(self.connection.nowait_gate)
        return self

    create_topic = control(AsyncBrokerAPI.create_topic)
    delete_topic = control(AsyncBrokerAPI.delete_topic)
    list_topics = control(AsyncBrokerAPI.list_topics)
    create_queue = control(AsyncBrokerAPI.create_queue)
    delete_queue = control(AsyncBrokerAPI.delete_queue)
    list_queues = control(AsyncBrokerAPI.list_queues)
    topic_settings = control(AsyncBrokerAPI.topic_settings)
    queue_settings = control(AsyncBrokerAPI.queue_settings)
    set_queue_settings = control(AsyncBrokerAPI.set_queue_settings)
    subscribe = control(AsyncBrokerAPI.subscribe)
    unsubscribe = control(AsyncBrokerAPI.unsubscribe)
    set_filter_policy = control(AsyncBrokerAPI.set_filter_policy)
    subscription = control(AsyncBrokerAPI.subscription)
    list_subscriptions = control(AsyncBrokerAPI.list_subscriptions)
    redrive = control(AsyncBrokerAPI.redrive)
    purge = control(AsyncBrokerAPI.purge)
    stats = control(AsyncBrokerAPI.stats)
    check = control(AsyncBrokerAPI.check)
    nack = control(AsyncBrokerAPI.nack)
    extend = control(AsyncBrokerAPI.extend)
    term = control(AsyncBrokerAPI.term)
    server_stats = control(AsyncClientAPI.server_stats)
    report_worker = control(AsyncClientAPI.report_worker)
    worker_stats = control(AsyncClientAPI.worker_stats)

    async def publish(self, topic: str, body: Body, *,
                      attributes: Attributes | None = None, delay: float | None = None,
                      deliver_at: float | datetime | None = None,
                      group_id: str | None = None, dedup_id: str | None = None,
                      priority: int | None = None, ttl: float | None = None
                      ) -> PublishResult:
        """Publish one message and wait for its result (this loop iteration's batch)."""
        future = self.connection.enqueue(Opcode.PUBLISH, topic, body, publish_options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))
        async with self.connection.deadline(self.connection.core.hold_timeout):
            return await future

    async def send(self, queue: str, body: Body, *,
                   attributes: Attributes | None = None, delay: float | None = None,
                   deliver_at: float | datetime | None = None, group_id: str | None = None,
                   dedup_id: str | None = None, priority: int | None = None,
                   ttl: float | None = None) -> PublishResult:
        """Send one message straight to a queue and wait for its result."""
        future = self.connection.enqueue(Opcode.SEND, queue, body, publish_options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))
        async with self.connection.deadline(self.connection.core.hold_timeout):
            return await future

    async def request(self, topic: str, body: Body, *, attributes: Attributes | None = None,
                      timeout: float = DEFAULT_REQUEST_TIMEOUT, group_id: str | None = None,
                      dedup_id: str | None = None, priority: int | None = None,
                      ttl: float | None = None) -> Reply:
        """Publish a message that asks for a reply, and wait for the first reply."""
        timeout = check_request_timeout(timeout)
        connection = self.connection
        core = connection.core
        waiter, address = connection.submit(core.reply_waiter)
        try:
            result = await self.publish(
                topic, body, attributes=request_attributes(attributes, address),
                group_id=group_id, dedup_id=dedup_id, priority=priority,
                ttl=ttl)
            if result.deliveries == 0:
                raise no_responders(topic, result)
            if not waiter.done:
                try:
                    async with asyncio.timeout(timeout):
                        await _answered(waiter)
                except TimeoutError:
                    raise no_reply(topic, result, timeout) from None
            frames = waiter.value()
        finally:
            core.forget_reply(waiter)
        return decode_reply(frames[0])

    async def reply(self, address: str, body: Body, *,
                    attributes: Attributes | None = None) -> None:
        """Answer a request: send ``body`` to the requester waiting at ``address``."""
        connection = self.connection
        await connection.wait(connection.submit(
            connection.core.request, Opcode.REPLY, reply_frames(address, body, attributes)))

    async def publish_batch(self, topic: str, entries: Iterable[Any]) -> RemotePublishBatch:
        """Publish many messages (bodies or ``PublishEntry``): all enqueued, or none.

        ``entries`` may be an array batch instead (a 2-D or structured numpy array, one
        row a body, or a ``(buffer, offsets)`` pair), encoded natively (docs/arrays.md).
        """
        return await self.connection.publish_results(
            self._entries(Opcode.PUBLISH, topic, entries))

    async def send_batch(self, queue: str, entries: Iterable[Any]) -> RemotePublishBatch:
        """Send many messages straight to a queue: all enqueued, or none."""
        return await self.connection.publish_results(
            self._entries(Opcode.SEND, queue, entries))

    def producer(self, topic: str, *, group_id: str | None = None,
                 batch_messages: int | None = None, batch_bytes: int | None = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, linger: float | None = None
                 ) -> Opening[AsyncProducer]:
        """A producer (``async with``, or ``await``); ``linger`` defaults to 0.

        See ``fastfanout.api.PipelineAPI.producer``; its errors are raised when it is
        awaited or entered.
        """
        return Opening(lambda: self._open_producer(topic, group_id, batch_messages,
                                                   batch_bytes, max_in_flight, linger),
                       AsyncProducer, f"client.producer({topic!r})",
                       "fastfanout.connect() and its producer() in synchronous code")

    async def _open_producer(self, topic: str, group_id: str | None,
                             batch_messages: int | None, batch_bytes: int | None,
                             max_in_flight: int, linger: float | None) -> AsyncProducer:
        core = self._producer_core(topic, group_id, batch_messages, batch_bytes,
                                   max_in_flight, linger, 0.0)
        self._check_producer_topic(core, await self.stats())
        producer = AsyncProducer(self.connection, core)
        self.connection.producers.add(producer)
        return producer

    def flush(self) -> asyncio.Future[None]:
        """Send this loop iteration's publish batches now; a future of their answers.

        ``await client.flush()`` also waits until every publish frame sent so far has
        its answer, or the connection is lost; it does not raise a publish's refusal.

        Raises:
            Closed: the client was closed.
        """
        self.connection.core.check_open()
        self.connection.check_loop()
        self.connection.flush_batches()
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = set(self.connection.core.publishes)
        if not waiting:
            answered.set_result(None)
            return answered

        def one_answered(request: Request) -> None:
            waiting.discard(request)
            if not waiting and not answered.done():
                answered.set_result(None)

        for request in list(waiting):
            request.watch(functools.partial(one_answered, request))
        return answered

    async def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                      visibility_timeout: float | None = None) -> list[RemoteMessage]:
        """Lease up to ``max_messages`` visible messages (``wait``: long-poll seconds)."""
        connection = self.connection
        request = connection.submit(connection.core.receive_request, queue, max_messages,
                                    wait, visibility_timeout)
        try:
            frames = await connection.wait(request, connection.core.receive_allowance(wait))
        except BaseException:   # cancelled or timed out: what it leases is nobody's
            connection.release_unread(request, queue)
            raise
        return messages_of(frames[0], connection.settler, connection.acks, queue)

    async def ack(self, receipt: int) -> None:
        """Delete the message of a delivery (raises ``StaleReceipt`` if its lease ended)."""
        await self.ack_batch((receipt,))

    async def ack_batch(self, receipts: Iterable[int]) -> None:
        """Ack many deliveries: all, or (if any receipt is stale) none.

        ``receipts``: ints, or a 1-D ``uint64`` array (a batch's ``receipts``), packed
        natively.
        """
        connection = self.connection
        await connection.wait(connection.submit(connection.core.ack_request, receipts))

    async def nack_batch(self, receipts: Iterable[int], *, delay: float | None = None) -> None:
        """End many leases early: all, or (if any receipt is stale) none.

        Each receipt is nacked as ``nack(receipt, delay=delay)`` would; ``receipts`` as
        ``ack_batch`` takes them, in one NACK_BATCH request.

        Raises:
            StaleReceipt: listing the stale receipts; nothing was nacked.
            InvalidArgument: ``delay`` (seconds, 0 to 31,536,000, or None: the queue's
                backoff) or a receipt is bad; nothing was sent.
        """
        connection = self.connection
        await connection.wait(connection.submit(
            connection.core.nack_batch_request, receipts, delay))

    async def extend_batch(self, receipts: Iterable[int], seconds: float) -> None:
        """Make many leases end ``seconds`` (0 to 43,200) from now: all, or none.

        ``receipts`` as ``ack_batch`` takes them, in one EXTEND_BATCH request.

        Raises:
            StaleReceipt: listing the stale receipts; nothing was extended.
            InvalidArgument: ``seconds`` or a receipt is bad; nothing was sent.
        """
        connection = self.connection
        await connection.wait(connection.submit(
            connection.core.extend_batch_request, receipts, seconds))

    async def term_batch(self, receipts: Iterable[int]) -> None:
        """Dead-letter many leased messages now: all, or (if any is stale) none.

        ``receipts`` as ``ack_batch`` takes them, in one TERM_BATCH request.

        Raises:
            StaleReceipt: listing the stale receipts; nothing was changed.
            InvalidArgument: a receipt is bad; nothing was sent.
        """
        connection = self.connection
        await connection.wait(connection.submit(
            connection.core.term_batch_request, receipts))

    def consume(self, queue: str, *, prefetch: int = 100,
                visibility_timeout: float | None = None,
                timeout: float | None = None) -> AsyncIterator[RemoteMessage]:
        """Iterate (``async for``) over pushed messages: a plain call, not awaited.

        See ``fastfanout.api.BrokerAPI.consume``; a queue name that is not a ``str``
        raises ``InvalidArgument`` here, a bad ``timeout`` (and whatever the broker
        refuses) on the first step of the iteration.
        """
        if type(queue) is not str:   # the native cursor takes a str only (a TypeError)
            raise InvalidArgument(f"queue name {queue!r} must be a string")
        connection = self.connection
        # a native iterator: one C step per message, awaiting only for the next push
        cursor = AsyncMessageCursor(connection.settler, connection.acks, queue,
                                    connection.pushes(queue, prefetch, visibility_timeout,
                                                      timeout), connection.release)
        connection.cursors.add(cursor)
        return cursor

    def consume_batches(self, queue: str, *, prefetch: int = 1000,
                        visibility_timeout: float | None = None,
                        timeout: float | None = None) -> AsyncIterator[AsyncDeliveryBatch]:
        """Iterate (``async for``) over pushed batches (a plain call, not awaited).

        ``prefetch`` and ``timeout`` as ``consume``'s. Each batch is a sequence of
        messages with numpy views of the frame (``ids``, ``receipts``, ``bodies``,
        ``as_array``: ``fastfanout.arrays``); ``batch.ack()`` acks it whole. A ``for``
        over it raises ``WrongClient`` (until 2026-12-05 Python's own TypeError).
        """
        return _PushedBatches(self._batches(queue, prefetch, visibility_timeout, timeout),
                              queue)

    async def _batches(self, queue: str, prefetch: int, visibility_timeout: float | None,
                       timeout: float | None) -> AsyncGenerator[AsyncDeliveryBatch, None]:
        connection = self.connection
        async for frames in connection.pushes(queue, prefetch, visibility_timeout, timeout):
            yield AsyncDeliveryBatch(frames[0], connection.settler, queue)

    def listen(self, topic_pattern: str, *, high_water_mark: int = 100_000
               ) -> AsyncListener:
        """Follow the stream of every topic matching ``topic_pattern`` (at most once).

        ``await`` the listener (or enter it) before publishing what it must see; see
        ``fastfanout.api.PipelineAPI.listen``.
        """
        self.connection.core.check_open()
        self._check_listen(topic_pattern, high_water_mark)
        listener = AsyncListener(str(self.info["stream_endpoint"]), topic_pattern,
                                 self.connection.curve, timeout=self.timeout,
                                 high_water_mark=high_water_mark,
                                 heartbeat=self.connection.core.listener_heartbeat())
        self._listeners.add(listener)
        return listener

    async def close(self, timeout: float = 5.0) -> None:
        """Flush pending publishes and open producers, say goodbye and close the socket.

        As ``Client.close`` (in a forked child it only marks the client closed). Calls
        and consumer iterations awaiting in other tasks then raise ``Closed`` at once, as
        in the blocking client. Cancelled (say, by ``asyncio.wait_for``) while it waits
        for the broker's answers, it still closes the client before it raises. Once the
        event loop that connected it has ended, it only closes the socket (nothing can be
        sent or awaited any more).
        After the broker said goodbye (it stopped) it waits for no reply: the connection
        was dropped then, and close only stops the client's tasks.

        ``timeout`` bounds the whole close, the producers' flushes included (until
        2026-12-05 each producer's flush waited its own deadline, the client's timeout
        plus the broker's ``hold_timeout``: 32 s against a hung broker, whatever
        ``timeout`` said).

        Raises:
            InvalidArgument: ``timeout`` is not seconds (an int or float that is not NaN)
                or None (no limit); nothing is closed.
            FastFanoutError: a producer's frame was refused, or not answered within
                ``timeout`` (``BrokenConnection``); the client is closed anyway and that
                producer's messages not confirmed may not be published.
            WrongEventLoop: called from another event loop (or thread) while the one that
                connected it still runs.
        """
        check_wait("timeout", timeout)
        connection = self.connection
        if connection.core.closed or connection.core.left_to_parent(os.getpid()):
            return
        for listener in list(self._listeners):   # a read waiting in a task raises Closed
            listener.close()
        if connection.loop is not None and connection.loop.is_closed():
            connection.abandon()   # its tasks ended with their loop: nobody to talk to
            return
        connection.check_loop()
        refusal: FastFanoutError | None = None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                for producer in list(connection.producers):   # their open and kept frames
                    try:
                        await producer.close()
                    except FastFanoutError as exc:
                        refusal = refusal or exc
        except TimeoutError:
            refusal = refusal or BrokenConnection(
                f"the broker at {self.endpoint} did not answer the producers' frames "
                f"within close's timeout of {timeout} s; their messages may not be "
                f"published")
        except asyncio.CancelledError:   # while a producer flushed: the client closes all
            # the same (BYE, within ``timeout``), rather than stay half closed
            await asyncio.shield(connection.close(timeout))
            raise
        await connection.close(None if deadline is None
                               else max(0.0, deadline - loop.time()))
        if refusal is not None:
            raise refusal

    async def __aenter__(self) -> AsyncClient:
        self.connection.core.check_open()   # Closed after close(), never a new start
        return self if self.connection.tasks else await self._start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        await self.close()

    def __enter__(self) -> NoReturn:
        raise WrongClient("an AsyncClient is entered with 'async with', in a coroutine; "
                          "in synchronous code use fastfanout.connect() and 'with'")

    def __exit__(self, *exc: object) -> None:   # pragma: no cover - __enter__ raised
        pass


class _PushedBatches(AsyncIterator[AsyncDeliveryBatch]):
    """What ``AsyncClient.consume_batches`` returns: its batches, by ``async for``."""

    def __init__(self, batches: AsyncGenerator[AsyncDeliveryBatch, None], queue: str) -> None:
        self._batches = batches
        self._queue = queue

    def __aiter__(self) -> _PushedBatches:
        return self

    async def __anext__(self) -> AsyncDeliveryBatch:
        return await self._batches.__anext__()

    async def aclose(self) -> None:
        """End the iteration (the consumer is cancelled, as on leaving ``async for``)."""
        await self._batches.aclose()

    if not TYPE_CHECKING:   # type checkers keep reporting the await themselves
        def __await__(self):
            raise WrongClient(
                f"the batches of queue {self._queue!r} (an asyncio client's "
                f"consume_batches(), a plain call) are not awaited: iterate them with "
                f"'async for batch in client.consume_batches(...)'")

    def __iter__(self) -> NoReturn:
        raise WrongClient(
            f"the batches of queue {self._queue!r} come from an asyncio client: iterate "
            f"them with 'async for' in a coroutine; in synchronous code use the "
            f"consume_batches() of a blocking client (fastfanout.connect())")


class _Closeable(Protocol):
    async def close(self) -> None: ...


_Opened = TypeVar("_Opened", bound=_Closeable)


class Opening(Generic[_Opened]):
    """What a call that opens something returns (``connect``, ``AsyncClient.producer``).

    ``await`` it for the opened thing, or use it in ``async with``, which awaits
    ``close()`` at the end. Nothing happens until one or the other.
    """

    def __init__(self, open_: Callable[[], Coroutine[Any, Any, _Opened]],
                 opened: type[_Opened], call: str, blocking: str,
                 discard: Callable[[], None] | None = None) -> None:
        """Wrap the opening of an asyncio object.

        Args:
            open_: makes the coroutine that opens it.
            opened: the class of what it opens (its method names get a clear error).
            call: the call that made this, as the user wrote it (for messages).
            blocking: the blocking form to use instead, in synchronous code.
            discard: lets go of what was made ahead and never opened (``connect``'s
                client and its sockets), on a misuse and when this is dropped.
        """
        self._open = open_
        self._opened: _Opened | None = None
        self._kind = opened
        self._call = call
        self._blocking = blocking
        self._discard = discard
        if discard is not None:
            weakref.finalize(self, discard)

    def _misused(self, how: str) -> WrongClient:
        if self._discard is not None:   # nothing is opened after a misuse is told
            self._discard()
        noun = "producer" if issubclass(self._kind, AsyncProducer) else "client"
        return WrongClient(
            f"{self._call} {how}: write 'async with {self._call} as {noun}:' or "
            f"'{noun} = await {self._call}' in a coroutine; use {self._blocking}")

    def __enter__(self) -> NoReturn:
        raise self._misused("opens an asyncio object: it is entered with 'async with', "
                            "not 'with'")

    def __exit__(self, *exc: object) -> None:   # pragma: no cover - __enter__ raised
        pass

    if not TYPE_CHECKING:   # type checkers keep reporting the missing await themselves
        def __getattr__(self, name: str) -> Any:
            # only the opened class's public names: other lookups (hasattr probes,
            # dunders) stay AttributeErrors
            if not name.startswith("_") and hasattr(self._kind, name):
                raise self._misused(f"was not awaited (.{name} is a method of what it "
                                    f"opens)")
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}")

    def __await__(self) -> Generator[Any, None, _Opened]:
        return self._open().__await__()

    async def __aenter__(self) -> _Opened:
        self._opened = await self._open()
        return self._opened

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        if self._opened is not None:
            await self._opened.close()


def connect(endpoint: str | None = None, **options: Any) -> Opening[AsyncClient]:
    """Open an asyncio connection (await it, or use it with ``async with``).

    Each await (or ``async with``) of what it returns opens a connection of its own, as
    the ``Opening`` of a producer does.

    Args:
        endpoint: the broker's command endpoint (default: the per-user ipc socket).
        **options: keyword arguments of ``AsyncClient``.

    Raises:
        InvalidArgument: an option is out of range (at once, before any await).
    """
    # made now, so that a bad option raises here; a later await opens a fresh client
    # (starting one client twice would leave the first start's tasks running)
    unopened: list[AsyncClient] = [AsyncClient(endpoint, **options)]

    def open_client() -> Coroutine[Any, Any, AsyncClient]:
        client = unopened.pop() if unopened else AsyncClient(endpoint, **options)
        return client._start()

    def discard() -> None:
        # the client made ahead and never awaited: its sockets closed now, not left to
        # the garbage collector (a ResourceWarning each, "nothing opened" untrue)
        while unopened:
            unopened.pop().connection.transport.close()

    return Opening(open_client, AsyncClient, "fastfanout.aio.connect()",
                   "fastfanout.connect() in synchronous code", discard)


