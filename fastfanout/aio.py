"""The asyncio face of the client (``async with``, ``async for``), on ``zmq.asyncio``.

Design
------
Same wire protocol and the same payload helpers as ``fastfanout.client``; only the I/O
differs. One reader task owns the DEALER socket's receive side and resolves a future per
request id, so any number of coroutines may await calls at once (the asyncio analogue of
many requests in flight). Pushes for a consumer go to its ``asyncio.Queue``. A heartbeat
task keeps the session alive; if the broker says goodbye or the reader fails, every
pending call raises ``BrokenConnection`` (a goodbye that ends the session, ``SessionExpired``,
also makes a new connection: a new session). Sockets come from ``fastfanout.transport``,
which remains the only module that imports ``zmq``.

Publishes batch per event-loop iteration: ``publish()``/``send()`` calls made in one
iteration (``asyncio.gather``, other tasks) and ``publish_nowait()``/``send_nowait()``
join the batch of their target, which leaves as one request when the iteration ends (or
at ``batch_messages``/``batch_bytes``, on ``flush()``, or before any other request, so
publishes keep their order); a batch is atomic on the broker, as in the blocking client,
and ``close()`` sends what is pending and waits for the answers.
``publish_batch_nowait()``/``send_batch_nowait()`` send a whole batch at once and return a
future of its results, like the blocking client's. ``async with client.producer(topic)``
(or ``await client.producer(topic)``) is the per-message fast path
(``fastfanout.aio_producer``: synchronous ``offer()``, awaited ``drain()``/``flush()``);
``close()`` closes the producers still open first.

Every call is awaitable except the iterators (``consume``, ``consume_batches``: use
``async for``) and ``closed``. The plain calls return something awaitable: futures
(``*_nowait``, ``flush()``, whose future is its answers), ``Opening`` (``producer``,
``connect``), the listener itself (``listen``), or the already-complete ``DONE``
(``message.ack()`` and its kind, ``listener.close()``, ``producer.offer()``), so
``await`` works on each as it reads.

``message.ack()`` (synchronous, so it cannot await) queues the receipt; the acks of one
event-loop iteration leave together, as one SETTLE with a frame per receipt (each acked
on its own, so a stale one fails alone), and ``close()`` sends what is queued before its
BYE. A consumer acking message by message so costs the broker one request per loop
iteration, not one per message. ``await client.ack(...)`` still waits for its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from fastfanout import forks, protocol
from fastfanout._ext.wire import encode_entries
from fastfanout.aio_admin import AsyncClientAdministration
from fastfanout.aio_producer import AsyncProducer
from fastfanout.consumers import DeliveryBatch, check_inactivity_timeout
from fastfanout.errors import (
    BrokenConnection,
    Closed,
    FastFanoutError,
    InvalidArgument,
    NotFound,
    PeerLost,
    RequestTooLarge,
    ServerStopping,
    SessionExpired,
    TransportError,
)
from fastfanout.futures import PendingBatch
from fastfanout.local_channel import (
    DEFAULT_RING_BYTES,
    LocalChannel,
    check_channel_options,
    wants_local_channel,
)
from fastfanout.local_transport import AsyncLocalTransport
from fastfanout.protocol import Opcode, Status
from fastfanout.records import Body, PublishResult
from fastfanout.remote import (
    DONE,
    Done,
    RemoteMessage,
    RemotePublishBatch,
    StreamBatch,
    StreamMessage,
    decode_delivery,
)
from fastfanout.remote_producer import DEFAULT_MAX_IN_FLIGHT, producer_limits
from fastfanout.runtime import default_endpoint
from fastfanout.streams import StreamFollower
from fastfanout.transport import (
    AsyncDealerTransport,
    AsyncSubTransport,
    CurveKeys,
    client_curve,
)

__all__ = ["AsyncClient", "AsyncListener", "Opening", "connect"]


class _SyncOwner:
    """Lets ``RemoteMessage.ack()`` work from async code by scheduling the call."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def ack(self, receipt: int) -> None:
        self._client._queue_ack(receipt)

    def nack(self, receipt: int, delay: float | None = None) -> None:
        self._client._fire(Opcode.NACK, [protocol.encode_payload([[receipt], {"delay": delay}])])

    def extend(self, receipt: int, seconds: float) -> None:
        self._client._fire(Opcode.EXTEND, [protocol.encode_payload([[receipt, seconds], {}])])

    def term(self, receipt: int) -> None:
        self._client._fire(Opcode.TERM, [protocol.encode_payload([[receipt], {}])])


class AsyncListener:
    """Stream messages of the topics matching a pattern (``AsyncClient.listen``).

    ``await`` it, or enter it (``async with``), before publishing what it must see: that
    returns once the broker applies the subscription (its probe came back, see
    ``fastfanout.streams``). Then use ``async for message in listener`` or
    ``await listener.recv_batch(timeout)``; close it (or leave ``async with``) when done.

    Args:
        stream_endpoint: the broker's stream endpoint.
        pattern: the topic name or pattern (``orders.*``, ``orders.>``).
        curve: client keys when the broker uses CURVE.
        timeout: seconds to wait for the broker to apply the subscription.
        high_water_mark: stream batches this listener's socket queues; beyond them the
            broker drops batches for this listener only (counted here as ``gaps``).

    Attributes:
        pattern: the topic name or pattern.
    """

    def __init__(self, stream_endpoint: str, pattern: str, curve: CurveKeys | None, *,
                 timeout: float = 10.0, high_water_mark: int = 100_000) -> None:
        self.pattern = pattern
        self._stream_endpoint = stream_endpoint
        self._timeout = timeout
        self._follower = follower = StreamFollower(pattern)
        try:
            self._transport = AsyncSubTransport(
                stream_endpoint, [follower.prefix, follower.probe], curve, high_water_mark)
        except TransportError as exc:
            raise BrokenConnection(str(exc)) from None
        self._early: deque[StreamBatch] = deque()   # batches that came before the probe
        self._pending: deque[StreamMessage] = deque()

    @property
    def gaps(self) -> int:
        """Messages missed so far, from sequence numbers and beacons per topic."""
        return self._follower.gaps

    @property
    def received(self) -> int:
        """Messages received so far."""
        return self._follower.received

    @property
    def malformed(self) -> int:
        """Stream messages dropped because they did not decode."""
        return self._follower.malformed

    async def ready(self) -> AsyncListener:
        """Wait until the broker applies the subscription; returns self.

        Raises:
            BrokenConnection: it did not within the client's ``timeout``.
        """
        follower = self._follower
        if follower.live:
            return self
        try:
            async with asyncio.timeout(self._timeout):
                while not follower.live:
                    batch = follower.accept(await self._transport.recv())
                    if batch is not None:
                        self._early.append(batch)
        except TimeoutError:
            raise BrokenConnection(
                f"the broker at {self._stream_endpoint} did not apply the stream "
                f"subscription to {self.pattern!r} within {self._timeout} s; is it "
                f"running?") from None
        self._transport.unsubscribe(follower.probe)
        return self

    def __await__(self) -> Generator[Any, None, AsyncListener]:
        """``await client.listen(...)`` is the listener once its subscription is live."""
        return self.ready().__await__()

    async def recv_batch(self, timeout: float | None = None) -> list[StreamMessage] | None:
        """The next stream batch (one publish), waiting up to ``timeout`` s; None on timeout."""
        if not self._follower.live:
            await self.ready()
        if self._early:
            return list(self._early.popleft())
        deadline = None if timeout is None else time.monotonic() + timeout
        accept = self._follower.accept
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                frames = await asyncio.wait_for(self._transport.recv(), remaining)
            except TimeoutError:
                return None
            batch = accept(frames)
            if batch is not None:
                return list(batch)

    def __aiter__(self) -> AsyncListener:
        return self

    async def __anext__(self) -> StreamMessage:
        while not self._pending:
            batch = await self.recv_batch(None)
            if batch:
                self._pending.extend(batch)
        return self._pending.popleft()

    def close(self) -> Done:
        """Close the SUB socket (at once); returns ``DONE``, so it may be awaited."""
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


class AsyncClient(AsyncClientAdministration):
    """An asyncio connection to a broker server (use ``await connect(...)``).

    Args:
        endpoint: the broker's command endpoint (default: the per-user ipc socket).
        timeout: seconds a call waits for its reply beyond any ``wait`` it asks for.
        curve: client CURVE keys for a CURVE broker (see ``transport.client_curve``).
        curve_server_key: instead of ``curve``: the CURVE broker's public key (Z85, or
            its ``.key`` certificate file).
        curve_keys: with ``curve_server_key``: this client's key pair (``(public,
            secret)``, or a ``.key_secret`` certificate file); None makes a fresh pair.
        batch_messages: records per publish batch before it is sent.
        batch_bytes: body bytes per publish batch before it is sent.
        local_channel: talk to the broker through shared memory (see ``Client``): None
            when the endpoint is ``ipc://`` and the broker offers it, True to insist,
            False never.
        ring_bytes: bytes of each of the channel's rings (a power of two, from 64 KiB to 1 GiB).
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0,
                 curve: CurveKeys | None = None,
                 curve_server_key: bytes | str | os.PathLike[str] | None = None,
                 curve_keys: tuple[bytes, bytes] | str | os.PathLike[str] | None = None,
                 batch_messages: int = 1000, batch_bytes: int = 1 << 20,
                 local_channel: bool | None = None, ring_bytes: int = DEFAULT_RING_BYTES
                 ) -> None:
        check_channel_options(local_channel, ring_bytes)
        self.local_channel = local_channel
        self.ring_bytes = ring_bytes
        self.endpoint = endpoint or default_endpoint()
        self.timeout = timeout
        self.batch_messages = batch_messages
        self.batch_bytes = batch_bytes
        # publishes and sends of this loop iteration, per (opcode, target): one request each
        self._batches: dict[tuple[int, str], PendingBatch[asyncio.Future[PublishResult]]] = {}
        self._in_flight: set[asyncio.Future[list[bytes]]] = set()
        if curve_server_key is not None:
            curve = client_curve(curve_server_key, curve_keys)
        self._curve = curve
        self._transport: AsyncDealerTransport | AsyncLocalTransport = AsyncDealerTransport(
            self.endpoint, curve)
        self._futures: dict[int, asyncio.Future[list[bytes]]] = {}
        self._queues: dict[int, asyncio.Queue[list[bytes] | FastFanoutError]] = {}
        self._next_id = 1
        self._closed = False
        self._owner = _SyncOwner(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._producers: weakref.WeakSet[AsyncProducer] = weakref.WeakSet()
        self._acks: list[int] = []   # message.ack() calls not sent yet (_send_acks)
        self.info: dict[str, Any] = {}
        self._limits: tuple[int, int] | None = None   # the broker's request size limits
        self._pid = os.getpid()   # the process that owns the connection (fastfanout.forks)
        self._forked = False
        forks.watch(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: the next call must refuse, and the reader stop reading."""
        self._forked = True

    def _check_open(self) -> None:
        """Raise ``UsedAfterFork`` in a forked child, ``Closed`` after ``close()``."""
        if self._forked:
            raise forks.used_after_fork("client", self._pid)
        if self._closed:
            raise Closed("the client is closed")

    async def _start(self) -> AsyncClient:
        self._tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._beat())]
        frames = await self._request(Opcode.HELLO, [protocol.encode_payload({})])
        self.info = protocol.decode_payload(frames[0])
        self._limits = protocol.request_limits(self.info)
        if wants_local_channel(self.local_channel, self.info, self.endpoint):
            await self._attach_local()
        return self

    async def _attach_local(self) -> None:
        """Move this connection onto a local channel (as ``Client._attach_local`` does)."""
        dealer = self._transport
        assert isinstance(dealer, AsyncDealerTransport)
        try:
            channel = LocalChannel.create(self.ring_bytes)
        except (OSError, ValueError) as exc:
            if self.local_channel:
                await self.close()
                raise BrokenConnection(f"cannot make a local channel: {exc}") from None
            return
        try:
            await self._request(Opcode.ATTACH,
                                [protocol.encode_payload(channel.attach_request())])
            channel.attached()
        except (FastFanoutError, OSError, ValueError) as exc:
            channel.close()
            if self.local_channel:
                await self.close()
                raise BrokenConnection(f"the broker refused a local channel: {exc}") from None
            return
        # The reader waits on the socket, where nothing more comes unannounced: move it.
        reader = self._tasks[0]
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        self._transport = AsyncLocalTransport(dealer, channel, self.timeout)
        self._tasks[0] = asyncio.create_task(self._reader())

    def _send(self, opcode: int, payload: list[bytes], flush: bool = True) -> int:
        """Queue a request; the publish batches of this iteration leave before it.

        Raises:
            RequestTooLarge: the request exceeds the broker's ``max_request_bytes`` or
                ``max_frame_bytes`` (told in its HELLO reply); nothing was sent.
        """
        if self._closed or self._forked:
            self._check_open()
        forks.check_process("client", self._pid)   # a fork that bypassed os.fork
        if flush and self._batches:
            # a request sent now must not overtake earlier publishes (per-topic order,
            # FIFO groups), as in the blocking client
            self._flush_batches()
        request_id = self._next_id
        frames = [protocol.encode_header(opcode, request_id), *payload]
        if self._limits is not None:   # refused here rather than dropped by the broker
            too_large = protocol.request_size_error(frames, *self._limits)
            if too_large is not None:
                raise too_large
        self._next_id += 1
        try:   # sent now (into the ring, or to libzmq): no task per request
            self._transport.send_nowait(frames)
        except PeerLost as exc:
            error = BrokenConnection(f"the broker at {self.endpoint} is gone: {exc}")
            self._fail(error)
            raise error from None
        return request_id

    def _fire(self, opcode: int, payload: list[bytes]) -> None:
        # the reply is read and dropped by the reader; acks and heartbeats have no
        # order to keep with publishes: this iteration's batches stay together
        self._send(opcode, payload, flush=False)

    def _queue_ack(self, receipt: int) -> None:
        """Queue a ``message.ack()``: the acks of one loop iteration go in one request."""
        if self._closed or self._forked:
            self._check_open()
        if not self._acks:
            asyncio.get_running_loop().call_soon(self._send_acks)
        self._acks.append(receipt)

    def _send_acks(self) -> None:
        """Send the queued acks: a SETTLE with a frame per receipt (per 1,024 of them).

        SETTLE acks each frame on its own (all or none per frame), so a stale receipt
        fails alone, as separate ACKs would, and is answered only if one fails.
        """
        acks, self._acks = self._acks, []
        for start in range(0, len(acks), protocol.SETTLE_MAX_FRAMES):
            chunk = acks[start:start + protocol.SETTLE_MAX_FRAMES]
            self._fire(Opcode.SETTLE, [*map(protocol.encode_receipt, chunk), protocol.NO_CREDIT])

    async def _request(self, opcode: int, payload: list[bytes], extra: float = 0.0
                       ) -> list[bytes]:
        request_id = self._send(opcode, payload)
        future = self._futures[request_id] = asyncio.get_running_loop().create_future()
        try:
            async with self._deadline(extra):
                frames: list[bytes] = await future
            return frames
        finally:
            self._futures.pop(request_id, None)

    @contextlib.asynccontextmanager
    async def _deadline(self, extra: float = 0.0) -> AsyncIterator[None]:
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
                f"is it running?") from None

    def _hold_allowance(self) -> float:
        """Extra seconds a publish may take (the broker's ``hold_timeout``).

        A full ``hold`` queue answers only when there is room, or after that long.
        """
        return float(self.info.get("hold_timeout", 0.0))

    async def _reader(self) -> None:
        try:
            while True:
                frames = await self._transport.recv()
                if self._forked:
                    return   # a forked child's copy: the replies are the parent's
                _, status, request_id = protocol.decode_header(frames[0])
                if status in (Status.OK, Status.ERROR):
                    future = self._futures.get(request_id)
                    if future is None or future.done():
                        continue
                    if status == Status.OK:
                        future.set_result(frames[1:])
                    else:
                        future.set_exception(protocol.decode_error(frames[1]))
                elif status in (Status.PUSH, Status.END):
                    queue = self._queues.get(request_id)
                    if queue is not None:
                        queue.put_nowait(frames[1:] if status == Status.PUSH
                                         else protocol.decode_error(frames[1]))
                elif status == Status.GOODBYE:
                    self._said_goodbye(frames)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(BrokenConnection(f"connection to {self.endpoint} failed: {exc}"))

    def _said_goodbye(self, frames: list[bytes]) -> None:
        """GOODBYE: fail every waiter; if the broker ended this session, start a new one.

        The broker serves no more requests of an ended session's connection (it ends a
        session whose client read nothing for too long, or was silent past its
        heartbeat timeout), so a fresh connection is made: a new session, announced
        with HELLO. Without a payload the broker is stopping; the socket reconnects by
        itself when it is back.
        """
        if len(frames) < 2:
            self._fail(ServerStopping("the broker is stopping"))
            return
        error = protocol.decode_error(frames[1])
        self._fail(error)
        if isinstance(error, SessionExpired) and isinstance(self._transport,
                                                            AsyncDealerTransport):
            ended, self._transport = self._transport, AsyncDealerTransport(
                self.endpoint, self._curve)
            ended.close()
            self._fire(Opcode.HELLO, [protocol.encode_payload({})])

    def _fail(self, error: FastFanoutError) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)
        for queue in self._queues.values():
            queue.put_nowait(error)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(float(self.info.get("heartbeat_interval", 0.25)))
            try:
                self._fire(Opcode.HEARTBEAT, [])
            except FastFanoutError:
                return   # the connection is broken: every waiter has been told

    async def _call(self, opcode: int, *args: Any, **kwargs: Any) -> Any:
        try:
            payload = protocol.encode_payload([list(args), kwargs])
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            # Broker raises InvalidArgument for such values; so must a client
            raise InvalidArgument(
                f"{Opcode(opcode).name.lower()}: an argument cannot be sent: {exc}") from None
        frames = await self._request(opcode, [payload])
        return protocol.decode_payload(frames[0]) if frames else None

    # -- the API (see fastfanout.client.Client for each method's contract) --------------

    async def publish(self, topic: str, body: Body, **options: Any) -> PublishResult:
        """Publish one message (options as ``Client.publish``) and wait for its result.

        Publishes made in the same loop iteration (``asyncio.gather``, other tasks) travel
        together, one request per topic, as ``publish_nowait`` ones do.
        """
        return await self._result(self._enqueue(Opcode.PUBLISH, topic, body, options))

    def producer(self, topic: str, *, batch_messages: int | None = None,
                 batch_bytes: int | None = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 linger: float | None = None) -> Opening[AsyncProducer]:
        """A producer: synchronous ``offer()``, awaited ``drain()`` and ``flush()``.

        ``async with client.producer(topic) as producer:`` (closed, so flushed, at the
        end), or ``producer = await client.producer(topic)``. See
        ``fastfanout.aio_producer``; the arguments are ``Client.producer``'s, but
        ``linger`` defaults to 0: a frame that is not full leaves when this event-loop
        iteration ends, as ``publish_nowait`` batches do.

        Raises:
            NotFound: the topic does not exist (when awaited or entered).
            InvalidArgument: a limit is not a positive int (when awaited or entered).
        """
        return Opening(lambda: self._open_producer(topic, batch_messages, batch_bytes,
                                                   max_in_flight, linger))

    async def _open_producer(self, topic: str, batch_messages: int | None,
                             batch_bytes: int | None, max_in_flight: int,
                             linger: float | None) -> AsyncProducer:
        batch_messages, batch_bytes, linger = producer_limits(
            topic, batch_messages, batch_bytes, max_in_flight, linger,
            (self.batch_messages, self.batch_bytes, 0.0))
        if topic not in await self.list_topics():
            raise NotFound(f"topic {topic!r} does not exist")
        producer = AsyncProducer(self, topic, batch_messages, batch_bytes, max_in_flight,
                                 linger)
        self._producers.add(producer)
        return producer

    async def publish_batch(self, topic: str, entries: Iterable[Any]) -> RemotePublishBatch:
        """Publish many messages at once: all enqueued, or none."""
        return await self._batch(Opcode.PUBLISH, topic, entries)

    async def send(self, queue: str, body: Body, **options: Any) -> PublishResult:
        """Send one message straight to a queue (batched as ``publish``)."""
        return await self._result(self._enqueue(Opcode.SEND, queue, body, options))

    async def send_batch(self, queue: str, entries: Iterable[Any]) -> RemotePublishBatch:
        """Send many messages straight to a queue."""
        return await self._batch(Opcode.SEND, queue, entries)

    def publish_nowait(self, topic: str, body: Body, **options: Any
                       ) -> asyncio.Future[PublishResult]:
        """Add a message to this loop iteration's batch of ``topic``; a future of its result.

        The batch leaves as one request when the iteration ends, or at
        ``batch_messages`` / ``batch_bytes``. A batch is atomic on the broker: if it fails
        (say ``QueueFull``), every future of it raises that error.
        """
        return self._enqueue(Opcode.PUBLISH, topic, body, options)

    def send_nowait(self, queue: str, body: Body, **options: Any
                    ) -> asyncio.Future[PublishResult]:
        """Add a message to this loop iteration's batch of ``queue`` (as ``publish_nowait``)."""
        return self._enqueue(Opcode.SEND, queue, body, options)

    def _enqueue(self, opcode: int, name: str, body: Any, options: dict[str, Any]
                 ) -> asyncio.Future[PublishResult]:
        if self._closed or self._forked:
            self._check_open()
        if type(name) is not str:
            raise InvalidArgument(f"name {name!r} must be a string")
        loop = asyncio.get_running_loop()
        key = (opcode, name)
        batch = self._batches.get(key)
        if batch is None:
            if not self._batches:
                loop.call_soon(self._flush_batches)
            batch = self._batches[key] = PendingBatch()
        builder = batch.builder
        try:
            index = builder.append(body, **options) if options else builder.append_body(body)
        except TypeError as exc:   # an unknown option name
            raise InvalidArgument(f"publish/send: {exc}") from None
        future: asyncio.Future[PublishResult] = loop.create_future()
        batch.futures.append(future)
        if index + 1 >= self.batch_messages or builder.nbytes >= self.batch_bytes:
            self._send_batch(key, self._batches.pop(key))
        return future

    def _flush_batches(self) -> None:
        batches, self._batches = self._batches, {}
        for key, batch in batches.items():
            self._send_batch(key, batch)

    def _send_batch(self, key: tuple[int, str],
                    batch: PendingBatch[asyncio.Future[PublishResult]]) -> None:
        """Send one batch; its reply resolves the future of each of its messages."""
        futures = batch.futures
        if not futures:   # its only message was refused by the frame builder
            return

        def resolve(results: RemotePublishBatch | None, error: BaseException | None) -> None:
            for index, future in enumerate(futures):
                if future.done():
                    continue
                if results is not None:
                    future.set_result(results[index])
                else:
                    future.set_exception(error)   # type: ignore[arg-type]

        try:
            self._send_frame(key[0], key[1], batch.builder.take(), resolve, flush=False)
        except RequestTooLarge as exc:   # never sent: each future of the batch raises it
            resolve(None, exc)

    def _send_frame(self, opcode: int, name: str, frame: bytes,
                    resolve: Callable[[RemotePublishBatch | None, BaseException | None], None],
                    flush: bool = True) -> None:
        """Send a PUBLISH/SEND of one record frame; ``resolve(results, error)`` on its reply.

        ``close()`` waits for the reply (``_in_flight``); a lost connection resolves it
        with the error.
        """
        request_id = self._send(opcode, [name.encode(), frame], flush)
        reply = self._futures[request_id] = asyncio.get_running_loop().create_future()
        self._in_flight.add(reply)

        def done(reply: asyncio.Future[list[bytes]]) -> None:
            self._futures.pop(request_id, None)
            self._in_flight.discard(reply)
            error = (BrokenConnection("the publish was cancelled") if reply.cancelled()
                     else reply.exception())
            if error is None:
                resolve(RemotePublishBatch(reply.result()[0]), None)
            else:
                resolve(None, error)

        reply.add_done_callback(done)

    def flush(self) -> asyncio.Future[None]:
        """Send this loop iteration's publish batches now; a future of their answers.

        A plain call sends and returns at once, as the blocking client's ``flush()``;
        ``await client.flush()`` also waits until every publish frame sent so far (these
        batches, ``*_batch_nowait`` ones, producers' frames) has its answer, or the
        connection is lost. It does not raise a publish's refusal: each publish's own
        future holds its result or error.
        """
        self._flush_batches()
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = set(self._in_flight)
        if not waiting:
            answered.set_result(None)
            return answered

        def one_answered(reply: asyncio.Future[list[bytes]]) -> None:
            waiting.discard(reply)
            if not waiting and not answered.done():
                answered.set_result(None)

        for reply in list(waiting):
            reply.add_done_callback(one_answered)
        return answered

    def publish_batch_nowait(self, topic: str, entries: Iterable[Any]
                             ) -> asyncio.Future[RemotePublishBatch]:
        """Pipelined ``publish_batch``: the batch leaves now; a future of its results.

        The entries are encoded into one frame natively (no Python object per message);
        a bad entry raises here and nothing is sent. Batches of ``publish_nowait`` pending
        in this iteration leave first, so the order of publishes is kept.
        """
        return self._batch_nowait(Opcode.PUBLISH, topic, entries)

    def send_batch_nowait(self, queue: str, entries: Iterable[Any]
                          ) -> asyncio.Future[RemotePublishBatch]:
        """Pipelined ``send_batch``: the batch leaves now; a future of its results."""
        return self._batch_nowait(Opcode.SEND, queue, entries)

    def _batch_nowait(self, opcode: int, name: str, entries: Iterable[Any]
                      ) -> asyncio.Future[RemotePublishBatch]:
        if type(name) is not str:
            raise InvalidArgument(f"name {name!r} must be a string")
        frame = encode_entries(entries)
        future: asyncio.Future[RemotePublishBatch] = (
            asyncio.get_running_loop().create_future())

        def resolve(results: RemotePublishBatch | None, error: BaseException | None) -> None:
            if future.done():
                return
            if results is not None:
                future.set_result(results)
            else:
                future.set_exception(error)   # type: ignore[arg-type]

        self._send_frame(opcode, name, frame, resolve)
        return future

    async def _result(self, future: asyncio.Future[PublishResult]) -> PublishResult:
        async with self._deadline(self._hold_allowance()):
            return await future

    async def _batch(self, opcode: int, name: str, entries: Iterable[Any]
                     ) -> RemotePublishBatch:
        return await self._frame(opcode, name, encode_entries(entries))

    async def _frame(self, opcode: int, name: str, frame: bytes) -> RemotePublishBatch:
        if type(name) is not str:
            raise InvalidArgument(f"name {name!r} must be a string")
        frames = await self._request(opcode, [name.encode(), frame], self._hold_allowance())
        return RemotePublishBatch(frames[0])

    async def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                      visibility_timeout: float | None = None) -> list[RemoteMessage]:
        """Lease up to ``max_messages`` messages (``wait``: long-poll seconds)."""
        extra = float(wait) if type(wait) in (int, float) and math.isfinite(wait) else 0.0
        frames = await self._request(Opcode.RECEIVE, [protocol.encode_payload([[], {
            "queue": queue, "max_messages": max_messages, "wait": wait,
            "visibility_timeout": visibility_timeout}])], extra)
        return decode_delivery(frames, self._owner, None, queue)

    async def ack(self, receipt: int) -> None:
        """Delete the message of a delivery."""
        await self._request(Opcode.ACK, [protocol.encode_receipts([receipt])])

    async def ack_batch(self, receipts: Iterable[int]) -> None:
        """Ack many deliveries: all, or none."""
        await self._request(Opcode.ACK, [protocol.encode_receipts(list(receipts))])

    async def nack(self, receipt: int, *, delay: float | None = None) -> None:
        """End a lease early."""
        await self._call(Opcode.NACK, receipt, delay=delay)

    async def extend(self, receipt: int, seconds: float) -> None:
        """Make the lease end ``seconds`` from now (0: return the message at once)."""
        await self._call(Opcode.EXTEND, receipt, seconds)

    async def term(self, receipt: int) -> None:
        """Dead-letter a leased message now (reason ``rejected``)."""
        await self._call(Opcode.TERM, receipt)

    def listen(self, topic_pattern: str, *, high_water_mark: int = 100_000
               ) -> AsyncListener:
        """Follow the stream of every topic matching ``topic_pattern`` (at most once).

        ``listener = await client.listen(pattern)`` (or ``async with
        client.listen(pattern) as listener``) returns once the broker applies the
        subscription: every message published after that reaches the listener, unless
        its queue overflows.

        Args:
            topic_pattern: a topic name or pattern (``orders.*``, ``orders.>``).
            high_water_mark: stream batches the listener's socket queues; beyond them the
                broker drops batches for this listener only (counted in its ``gaps``).

        Raises:
            Closed: the client is closed.
            InvalidArgument: ``high_water_mark`` is not an int of 1 or more.
            BrokenConnection: (when awaited) the broker did not apply the subscription
                within the client's ``timeout``.
        """
        if self._closed:
            raise Closed("the client is closed")
        if type(high_water_mark) is not int or high_water_mark < 1:
            raise InvalidArgument(f"high_water_mark={high_water_mark!r} must be an int of 1 "
                                  f"or more")
        return AsyncListener(str(self.info["stream_endpoint"]), topic_pattern, self._curve,
                             timeout=self.timeout, high_water_mark=high_water_mark)

    async def consume(self, queue: str, *, prefetch: int = 100,
                      visibility_timeout: float | None = None,
                      timeout: float | None = None) -> AsyncIterator[RemoteMessage]:
        """Iterate (``async for``) over pushed messages: a plain call, not awaited.

        Arguments as ``Client.consume``: ``prefetch`` is the most unsettled messages the
        consumer holds (the broker pushes more as the ones it holds are settled, any way:
        ``message.ack()``, by receipt, or by their leases ending); with ``timeout``, the
        iteration ends (and the consumer is cancelled) when no message arrives within
        that many seconds.

        Raises:
            InvalidArgument: ``timeout`` is not None or finite seconds > 0 (on the first
                step of the iteration).
        """
        async for frames in self._pushes(queue, prefetch, visibility_timeout, timeout):
            for message in decode_delivery(frames, self._owner, None, queue):
                yield message

    async def consume_batches(self, queue: str, *, prefetch: int = 1000,
                              visibility_timeout: float | None = None,
                              timeout: float | None = None
                              ) -> AsyncIterator[list[RemoteMessage]]:
        """Iterate (``async for``) over pushed batches (a plain call, not awaited).

        ``prefetch`` and ``timeout`` as ``consume``'s.
        """
        async for frames in self._pushes(queue, prefetch, visibility_timeout, timeout):
            yield decode_delivery(frames, self._owner, None, queue)

    async def _pushes(self, queue: str, prefetch: int, visibility_timeout: float | None,
                      timeout: float | None) -> AsyncIterator[list[bytes]]:
        timeout = check_inactivity_timeout(timeout)
        request_id = self._send(Opcode.CONSUME, [protocol.encode_payload([[], {
            "queue": queue, "prefetch": prefetch, "visibility_timeout": visibility_timeout}])])
        future = self._futures[request_id] = asyncio.get_running_loop().create_future()
        pushes: asyncio.Queue[list[bytes] | FastFanoutError] = asyncio.Queue()
        self._queues[request_id] = pushes
        try:
            await asyncio.wait_for(future, self.timeout)
            while True:
                if timeout is None or not pushes.empty():
                    item = await pushes.get()
                else:
                    try:
                        async with asyncio.timeout(timeout):
                            item = await pushes.get()
                    except TimeoutError:   # nothing came in time: the iteration ends
                        return
                if isinstance(item, FastFanoutError):
                    raise item
                yield item
        finally:
            self._futures.pop(request_id, None)
            self._queues.pop(request_id, None)
            if not self._closed:
                self._fire(Opcode.CANCEL, [protocol.encode_payload([[request_id], {}])])

    async def close(self) -> None:
        """Flush pending publishes and open producers, say goodbye and close the socket.

        In a forked child it only marks the client closed: the connection is the
        parent's, and nothing of it is sent, flushed or closed.

        Raises:
            FastFanoutError: a producer's frame was refused; the client is closed anyway
                and that producer's refused messages are not published.
        """
        if self._closed:
            return
        if self._forked or os.getpid() != self._pid:
            # a forked child: the connection is the parent's, leave all of it alone
            self._forked = self._closed = True
            return
        refusal: FastFanoutError | None = None
        for producer in list(self._producers):   # their open and kept frames first
            try:
                await producer.close()
            except FastFanoutError as exc:
                refusal = refusal or exc
        self._send_acks()   # before BYE: after it, the broker has released their leases
        self._flush_batches()
        if self._in_flight:   # publish answers may come after BYE's: wait for them first
            await asyncio.wait(set(self._in_flight), timeout=self.timeout)
        with contextlib.suppress(FastFanoutError):
            await self._request(Opcode.BYE, [])
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._transport.close()
        if refusal is not None:
            raise refusal

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    async def __aenter__(self) -> AsyncClient:
        return self if self._tasks else await self._start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        await self.close()


class _Closeable(Protocol):
    async def close(self) -> None: ...


_Opened = TypeVar("_Opened", bound=_Closeable)


class Opening(Generic[_Opened]):
    """What a call that opens something returns (``connect``, ``AsyncClient.producer``).

    ``await`` it for the opened thing, or use it in ``async with``, which awaits
    ``close()`` at the end. Nothing happens until one or the other.
    """

    def __init__(self, open_: Callable[[], Coroutine[Any, Any, _Opened]]) -> None:
        self._open = open_
        self._opened: _Opened | None = None

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

    Args:
        endpoint: the broker's command endpoint (default: the per-user ipc socket).
        **options: keyword arguments of ``AsyncClient``.
    """
    return Opening(AsyncClient(endpoint, **options)._start)


_ = DeliveryBatch
