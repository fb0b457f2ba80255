"""The blocking client: the ``Broker`` API over ZeroMQ, with batching and push consumers.

Design
------
Prior art: the Kafka producer (records accumulate per target and are sent when a batch
is full, after ``linger``, or on ``flush()``; each send returns a future), RabbitMQ's
``basic.qos`` prefetch (the broker pushes while the consumer holds fewer than its
prefetch of unsettled messages, counted by the broker however they are settled), and trio's
``*_nowait`` core under each blocking call.

Choices:

- ``publish()`` / ``send()`` return the ``PublishResult``, as ``Broker`` does: they join
  the current batch of their target, flush it and wait. The pipelined form is
  ``publish_nowait()`` / ``send_nowait()``, which return a ``PublishFuture`` and send
  the batch when it holds ``batch_messages`` records or ``batch_bytes`` bytes, after
  ``linger`` seconds, on ``flush()``, before any other request, and on ``close()``.
  A batch is atomic on the broker: if it fails (say ``QueueFull``), every future of
  that batch raises the error. Order is kept per target (topic or queue).
- ``producer(topic)`` is the per-message fast path (``fastfanout.remote_producer``): no
  future per message, full frames pipelined, a frame that does not fill sent by the
  background thread after ``linger``; ``close()`` closes the producers still open.
- Many requests may be in flight; replies are matched by request id. A ``Client`` may be
  used from several threads, but its calls are serialised by one lock.
- Heartbeats: a background thread sends one every ``heartbeat_interval`` (the broker says
  how often), so the broker learns quickly when this process dies and releases its
  leases. If the broker stays silent for its ``heartbeat_timeout``, pending calls raise
  ``BrokenConnection`` and the next call reconnects.
- ``fork()``: a child that calls a client its parent connected gets ``UsedAfterFork``
  (``fastfanout.forks``); its ``close()`` leaves the parent's connection alone.
- Deliveries stay in the codec's record form until user code iterates; ``consume``
  yields ``RemoteMessage`` objects, ``consume_batches`` yields whole ``DeliveryBatch``es.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any

from fastfanout import forks, protocol
from fastfanout._ext.wire import (
    encode_entries,
)
from fastfanout.client_admin import ClientAdministration
from fastfanout.consumers import Consumer, DeliveryBatch, Listener, check_inactivity_timeout
from fastfanout.errors import (
    BrokenConnection,
    Closed,
    FastFanoutError,
    InvalidArgument,
    MalformedFrame,
    NotFound,
    PeerLost,
    RequestTooLarge,
    ServerStopping,
    TransportError,
)
from fastfanout.futures import (
    REPLY_POLL,
    PendingBatch,
    PublishBatchFuture,
    PublishFuture,
    _Pending,
    bind,
)
from fastfanout.local_channel import (
    DEFAULT_RING_BYTES,
    LocalChannel,
    check_channel_options,
    wants_local_channel,
)
from fastfanout.local_transport import LocalTransport
from fastfanout.protocol import Opcode, Status
from fastfanout.records import (
    Attributes,
    Body,
    ExponentialBackoff,
    PublishResult,
)
from fastfanout.remote import (
    RemoteMessage,
    RemotePublishBatch,
    StreamMessage,
    _options,
    decode_delivery,
)
from fastfanout.remote_producer import (
    DEFAULT_MAX_IN_FLIGHT,
    RemoteProducer,
    producer_limits,
)
from fastfanout.runtime import default_endpoint
from fastfanout.transport import (
    CurveKeys,
    DealerTransport,
    client_curve,
)

__all__ = [
    "Client",
    "Consumer",
    "DeliveryBatch",
    "Listener",
    "PublishFuture",
    "RemoteMessage",
    "RemotePublishBatch",
    "StreamMessage",
    "connect",
]

BUSY_TICKING = 0.05
"""Seconds the background thread keeps ticking every ``linger`` after a publish batch
was started (then it sleeps a heartbeat interval and is woken by the next batch)."""


class Client(ClientAdministration):
    """A connection to a broker server, with the methods and errors of ``Broker``.

    Args:
        endpoint: the broker's command endpoint (default: the per-user ipc socket).
        timeout: seconds a call waits for its reply beyond any ``wait`` it asks for.
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
            (``fastfanout.local_channel``) instead of its socket: None (the default)
            when the endpoint is ``ipc://`` and the broker offers it, True to insist
            (``BrokenConnection`` when it cannot be had), False never.
        ring_bytes: bytes of each of the channel's two rings (a power of two from 64 KiB
            to 1 GiB); a message larger than half a ring goes over the socket.

    Raises:
        BrokenConnection: no broker answered the handshake within ``timeout``.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0,
                 linger: float = 0.002, batch_messages: int = 1000,
                 batch_bytes: int = 1 << 20, curve: CurveKeys | None = None,
                 curve_server_key: bytes | str | os.PathLike[str] | None = None,
                 curve_keys: tuple[bytes, bytes] | str | os.PathLike[str] | None = None,
                 local_channel: bool | None = None, ring_bytes: int = DEFAULT_RING_BYTES
                 ) -> None:
        if curve_server_key is not None:
            curve = client_curve(curve_server_key, curve_keys)
        self.endpoint = endpoint or default_endpoint()
        self.timeout = timeout
        self.linger = linger
        self.batch_messages = batch_messages
        self.batch_bytes = batch_bytes
        self._curve = curve
        check_channel_options(local_channel, ring_bytes)
        self.local_channel = local_channel
        self.ring_bytes = ring_bytes
        self._lock = threading.RLock()
        self._transport: DealerTransport | LocalTransport | None = None
        self._pending: dict[int, _Pending] = {}
        self._discarded: set[int] = set()
        self._consumers: dict[int, Consumer] = {}
        self._producers: weakref.WeakSet[RemoteProducer] = weakref.WeakSet()
        self._batches: dict[tuple[int, str], PendingBatch[PublishFuture]] = {}
        self._oldest_batch = 0.0
        self._next_id = 1
        self._closed = False
        self._last_heard = 0.0
        self._last_sent_heartbeat = 0.0
        self.info: dict[str, Any] = {}
        self._limits: tuple[int, int] | None = None   # the broker's request size limits
        self._kick = threading.Event()
        self._busy_until = 0.0
        self._pid = os.getpid()   # the process that owns the connection (fastfanout.forks)
        self._forked = False
        forks.watch(self._after_fork)
        self._connect()
        self._thread = threading.Thread(target=self._background, name="fastfanout-client",
                                        daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child, before anything else runs: the next call must refuse.

        The lock and event are new: a parent thread may have held them at the fork.
        """
        self._forked = True
        self._lock = threading.RLock()
        self._kick = threading.Event()

    # -- connection --------------------------------------------------------------------

    def _connect(self) -> None:
        self.info = {}
        self._limits = None
        try:
            self._transport = DealerTransport(self.endpoint, self._curve)
        except TransportError as exc:
            raise BrokenConnection(str(exc)) from None
        self._last_heard = time.monotonic()
        pending = self._request(Opcode.HELLO, [protocol.encode_payload({"heartbeat": True})],
                                flush=False)
        try:
            frames = self._wait(pending, self.timeout, handshake=True)
        except BrokenConnection:
            self._drop_transport()
            raise
        self.info = protocol.decode_payload(frames[0])
        self._limits = protocol.request_limits(self.info)
        if wants_local_channel(self.local_channel, self.info, self.endpoint):
            self._attach_local()

    def _attach_local(self) -> None:
        """Move this connection onto a local channel (``ATTACH``), or stay on the socket.

        Staying is silent unless ``local_channel=True`` asked for the channel.
        """
        dealer = self._transport
        assert isinstance(dealer, DealerTransport)
        try:
            channel = LocalChannel.create(self.ring_bytes)
        except (OSError, ValueError) as exc:
            if self.local_channel:
                self._drop_transport()
                raise BrokenConnection(f"cannot make a local channel: {exc}") from None
            return
        with self._lock:   # nothing else may use the socket until the channel is in place
            try:
                self._wait(self._request(
                    Opcode.ATTACH, [protocol.encode_payload(channel.attach_request())],
                    flush=False), self.timeout, handshake=True)
                channel.attached()
            except (FastFanoutError, OSError, ValueError) as exc:
                channel.close()
                if self.local_channel:
                    self._drop_transport()
                    raise BrokenConnection(f"the broker refused a local channel: {exc}"
                                           ) from None
                return
            self._transport = LocalTransport(dealer, channel, self.timeout)

    def _lost(self, exc: TransportError) -> BrokenConnection:
        """The local channel's broker is gone: the connection is broken."""
        error = BrokenConnection(f"the broker at {self.endpoint} is gone: {exc}")
        self._broken(error)
        return error

    def _drop_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _broken(self, error: FastFanoutError) -> None:
        """The broker vanished: fail every pending call and consumer; reconnect later."""
        self._drop_transport()
        for pending in self._pending.values():
            pending.fail(error)
        self._pending.clear()
        self._discarded.clear()
        for consumer in self._consumers.values():
            consumer.error = error
        self._consumers.clear()
        for batch in self._batches.values():
            failed = _Pending(0)
            failed.fail(error)
            bind(batch.futures, failed)
        self._batches.clear()

    def _ensure(self) -> DealerTransport | LocalTransport:
        if self._forked:
            raise forks.used_after_fork("client", self._pid)
        if self._closed:
            raise Closed("the client is closed")
        if self._transport is None:
            self._connect()
        assert self._transport is not None
        return self._transport

    # -- requests and replies -----------------------------------------------------------

    def _request(self, opcode: int, payload: list[bytes], *, flush: bool = True) -> _Pending:
        forks.check_process("client", self._pid)   # a fork that bypassed os.fork
        with self._lock:
            if flush and self._batches:
                self._flush_batches()
            transport = self._transport if opcode == Opcode.HELLO else self._ensure()
            assert transport is not None
            request_id = self._transmit(transport, opcode, payload)
            pending = self._pending[request_id] = _Pending(request_id)
            if len(self._pending) > 32:
                # A pipelining caller never waits, so its replies pile up; read what has
                # arrived now, a little at a time, rather than thousands at once later
                # (a pause of milliseconds in the middle of a stream of publishes).
                self._drain(transport)
            return pending

    def _transmit(self, transport: DealerTransport | LocalTransport, opcode: int,
                  payload: list[bytes]) -> int:
        """Send one request under a new id (client lock held); returns the id.

        Raises:
            BrokenConnection: the local channel's broker is gone.
            RequestTooLarge: the request exceeds the broker's ``max_request_bytes`` or
                ``max_frame_bytes`` (told in its HELLO reply); nothing was sent.
        """
        request_id = self._next_id
        frames = [protocol.encode_header(opcode, request_id), *payload]
        if self._limits is not None:
            too_large = protocol.request_size_error(frames, *self._limits)
            if too_large is not None:
                raise too_large
        self._next_id += 1
        try:
            transport.send(frames)
        except PeerLost as exc:
            raise self._lost(exc) from None
        return request_id

    def _drain(self, transport: DealerTransport | LocalTransport) -> None:
        """Dispatch the replies that have arrived, without waiting."""
        try:
            frames = transport.recv(0)
            while frames is not None:
                self._last_heard = time.monotonic()
                self._dispatch(frames)
                if self._transport is None:
                    return
                frames = self._transport.recv(0)
        except PeerLost as exc:
            self._lost(exc)

    def _discard(self, pending: _Pending) -> None:
        """Forget a pipelined request's reply (its errors are counted by the broker)."""
        if self._pending.get(pending.request_id) is pending:
            self._discarded.add(pending.request_id)

    def _heartbeat_if_due(self, now: float) -> None:
        """Send a heartbeat when one is due (call with the lock held)."""
        if now - self._last_sent_heartbeat >= float(self.info.get("heartbeat_interval", 0.25)):
            self._last_sent_heartbeat = now
            self._discard(self._request(Opcode.HEARTBEAT, [], flush=False))

    def _pump_once(self, timeout: float) -> None:
        """Read and dispatch broker messages for up to ``timeout`` seconds.

        The pumping thread holds the socket for the whole wait, so it heartbeats itself:
        the background thread may not get the lock in between.
        """
        with self._lock:
            transport = self._ensure()
            try:
                frames = transport.recv(
                    min(timeout, float(self.info.get("heartbeat_interval", 0.25))))
            except PeerLost as exc:
                self._lost(exc)
                return
            now = time.monotonic()
            if self.info:   # not during the handshake
                self._heartbeat_if_due(now)
            if frames is None:
                silence = now - self._last_heard
                limit = float(self.info.get("heartbeat_timeout", 2.0)) * 1.5
                if silence > limit and (self._pending or self._consumers):
                    self._broken(BrokenConnection(
                        f"the broker at {self.endpoint} sent nothing for {silence:.1f} s "
                        f"(heartbeat timeout {limit:.1f} s); is it running?"))
                return
            self._last_heard = now
            self._dispatch(frames)
            if self._transport is not None:
                self._drain(self._transport)

    def _dispatch(self, frames: list[bytes]) -> None:
        try:
            _, status, request_id = protocol.decode_header(frames[0])
        except MalformedFrame:
            return
        if status == Status.OK or status == Status.ERROR:
            pending = self._pending.pop(request_id, None)
            if pending is None:
                return
            if request_id in self._discarded:
                self._discarded.discard(request_id)
                return
            if status == Status.OK:
                pending.answer(frames[1:])
            else:
                pending.fail(protocol.decode_error(frames[1] if len(frames) > 1 else b""))
        elif status == Status.PUSH:
            consumer = self._consumers.get(request_id)
            if consumer is not None:
                consumer._batches.append(frames[1:])
        elif status == Status.END:
            consumer = self._consumers.pop(request_id, None)
            if consumer is not None:
                consumer.error = protocol.decode_error(frames[1] if len(frames) > 1 else b"")
        elif status == Status.GOODBYE:
            # no payload: the broker stops; an error: it ended this session (say, this
            # client read nothing for too long). Either way, the next call reconnects
            # (a new connection is a new session).
            self._broken(protocol.decode_error(frames[1]) if len(frames) > 1
                         else ServerStopping(
                             f"the broker at {self.endpoint} is stopping; the next call "
                             f"reconnects"))

    def _wait(self, pending: _Pending, timeout: float | None, *, extra: float = 0.0,
              handshake: bool = False) -> list[bytes]:
        """Pump until ``pending`` is answered; returns its payload or raises its error."""
        limit = (self.timeout if timeout is None else timeout) + extra
        deadline = time.monotonic() + limit
        while not pending.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with self._lock:
                    self._broken(BrokenConnection(
                        f"no reply from the broker at {self.endpoint} within {limit:.1f} s"
                        + ("; is it running?" if handshake else "")))
                break
            self._pump_once(min(remaining, 0.05))
            if handshake and self._transport is None:
                break
        if pending.error is not None:
            raise pending.error
        if pending.frames is None:
            raise BrokenConnection(f"no reply from the broker at {self.endpoint}")
        return pending.frames

    def _publish_results(self, pending: _Pending, timeout: float | None = None
                         ) -> RemotePublishBatch:
        """Wait for a publish or send request's answer: its results frame, or its error.

        A publish to a full ``overflow="hold"`` queue is answered only when there is room
        (or after the broker's ``hold_timeout``), so the default wait (``timeout`` None)
        stretches by that much rather than declaring the connection broken. An explicit
        timeout is kept.
        """
        allowance = float(self.info.get("hold_timeout", 0.0)) if timeout is None else 0.0
        return RemotePublishBatch(self._wait(pending, timeout, extra=allowance)[0])

    def _call(self, opcode: int, *args: Any, **kwargs: Any) -> Any:
        try:
            payload = protocol.encode_payload([list(args), kwargs])
        except (TypeError, ValueError, OverflowError) as exc:
            # msgspec refuses what it cannot encode (an int beyond 64 bits, an object);
            # the embedded broker would have refused it as a bad argument too.
            raise InvalidArgument(f"an argument cannot be sent to the broker: {exc}") from None
        pending = self._request(opcode, [payload])
        frames = self._wait(pending, None)
        return protocol.decode_payload(frames[0]) if frames else None

    def _background(self) -> None:
        """Heartbeats and linger flushes, until close."""
        while not self._closed:
            interval = float(self.info.get("heartbeat_interval", 0.25))
            # While publishes come in, tick every linger instead of being woken for each
            # new batch: a wake-up per message costs the publisher a thread switch. While
            # requests are in flight, look for their replies every REPLY_POLL: a pipelined
            # publish's future must complete (and run its callbacks) with nobody calling.
            self._kick.wait(self.linger if self._batches or time.monotonic() < self._busy_until
                            else REPLY_POLL if self._pending else interval)
            self._kick.clear()
            if self._closed:
                return
            if not self._lock.acquire(timeout=interval):
                continue  # another thread is busy with the socket; it heartbeats too
            try:
                if self._transport is None:
                    continue
                now = time.monotonic()
                if self._batches and now - self._oldest_batch >= self.linger:
                    self._flush_batches()
                for producer in list(self._producers):
                    producer._linger_send(now)
                for consumer in list(self._consumers.values()):
                    consumer._settle_wait(now)
                if now - self._last_sent_heartbeat >= interval:
                    self._heartbeat_if_due(now)
                    self._pump_once(0)
                elif self._pending:
                    self._drain(self._transport)
            except FastFanoutError:
                pass
            finally:
                self._lock.release()

    # -- publishing ---------------------------------------------------------------------

    def _enqueue(self, opcode: int, name: str, body: Any,
                 options: tuple[Any, ...] | None) -> PublishFuture:
        """Add one message to the batch of (opcode, name); ``options`` as FrameBuilder.append."""
        if type(name) is not str:
            raise InvalidArgument(f"name {name!r} must be a string")
        with self._lock:
            self._ensure()
            key = (opcode, name)
            batch = self._batches.get(key)
            if batch is None:
                if not self._batches:
                    self._oldest_batch = self._start_ticking()
                batch = self._batches[key] = PendingBatch()
            builder = batch.builder
            index = (builder.append_body(body) if options is None
                     else builder.append(body, *options))
            future = PublishFuture(self, index)
            batch.futures.append(future)
            if index + 1 >= self.batch_messages or builder.nbytes >= self.batch_bytes:
                self._send_batch(key, self._batches.pop(key))
            return future

    def _start_ticking(self) -> float:
        """A publish batch or a producer's frame was opened; returns the time.

        The background thread ticks every linger for a while (to send it), woken if it
        sleeps long.
        """
        now = time.monotonic()
        if now >= self._busy_until:
            self._kick.set()   # the background thread sleeps long: wake it
        self._busy_until = now + BUSY_TICKING
        return now

    def _send_batch(self, key: tuple[int, str], batch: PendingBatch[PublishFuture]) -> None:
        frame = batch.builder.take()
        try:
            pending = self._request(key[0], [key[1].encode(), frame], flush=False)
        except RequestTooLarge as exc:   # never sent: each future of the batch raises it
            pending = _Pending(0)
            pending.fail(exc)
        bind(batch.futures, pending)

    def _flush_batches(self) -> None:
        batches, self._batches = self._batches, {}
        for key, batch in batches.items():
            self._send_batch(key, batch)

    def flush(self) -> None:
        """Send every pending publish batch now (does not wait for the answers)."""
        with self._lock:
            if self._batches:
                self._flush_batches()

    def publish_nowait(self, topic: str, body: Body, *,
                       attributes: Attributes | None = None, delay: float | None = None,
                       deliver_at: float | datetime | None = None,
                       group_id: str | None = None, dedup_id: str | None = None,
                       priority: int | None = None, ttl: float | None = None
                       ) -> PublishFuture:
        """Add a message to the current batch of ``topic``; returns a future of its result.

        See ``publish`` for the arguments (``delay`` in seconds).
        """
        return self._enqueue(Opcode.PUBLISH, topic, body, _options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))

    def send_nowait(self, queue: str, body: Body, *,
                    attributes: Attributes | None = None, delay: float | None = None,
                    deliver_at: float | datetime | None = None, group_id: str | None = None,
                    dedup_id: str | None = None, priority: int | None = None,
                    ttl: float | None = None) -> PublishFuture:
        """Add a message to the current batch of ``queue``; returns a future of its result."""
        return self._enqueue(Opcode.SEND, queue, body, _options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))

    def publish(self, topic: str, body: Body, *,
                attributes: Attributes | None = None, delay: float | None = None,
                deliver_at: float | datetime | None = None, group_id: str | None = None,
                dedup_id: str | None = None, priority: int | None = None,
                ttl: float | None = None) -> PublishResult:
        """Publish one message to every queue subscribed to ``topic`` and wait for the result.

        Args:
            topic: the topic name.
            body: the body (bytes-like).
            attributes: name -> str | int | float | bytes | list[str].
            delay: seconds before the copies become visible.
            deliver_at: absolute clock seconds (or an aware datetime) of visibility.
            group_id: FIFO group.
            dedup_id: deduplication id.
            priority: 0 to 255.
            ttl: seconds the message may wait before it expires.
        """
        return self._enqueue(Opcode.PUBLISH, topic, body, _options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl)).result()

    def send(self, queue: str, body: Body, *,
             attributes: Attributes | None = None, delay: float | None = None,
             deliver_at: float | datetime | None = None, group_id: str | None = None,
             dedup_id: str | None = None, priority: int | None = None,
             ttl: float | None = None) -> PublishResult:
        """Send one message straight to a queue (see ``publish``)."""
        return self._enqueue(Opcode.SEND, queue, body, _options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl)).result()

    def _batch_call(self, opcode: int, name: str, entries: Iterable[Any]) -> RemotePublishBatch:
        if type(name) is not str:
            raise InvalidArgument(f"name {name!r} must be a string")
        frame = encode_entries(entries)
        pending = self._request(opcode, [name.encode(), frame])
        return self._publish_results(pending)

    def publish_batch_nowait(self, topic: str, entries: Iterable[Any]) -> PublishBatchFuture:
        """Pipelined ``publish_batch``: send the batch now, get the results later.

        The entries are encoded into one frame natively (no Python object per message).
        """
        if type(topic) is not str:
            raise InvalidArgument(f"topic name {topic!r} must be a string")
        return PublishBatchFuture(
            self, self._request(Opcode.PUBLISH, [topic.encode(), encode_entries(entries)]))

    def send_batch_nowait(self, queue: str, entries: Iterable[Any]) -> PublishBatchFuture:
        """Pipelined ``send_batch``: send the batch now, get the results later."""
        if type(queue) is not str:
            raise InvalidArgument(f"queue name {queue!r} must be a string")
        return PublishBatchFuture(
            self, self._request(Opcode.SEND, [queue.encode(), encode_entries(entries)]))

    def producer(self, topic: str, *, batch_messages: int | None = None,
                 batch_bytes: int | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 linger: float | None = None) -> RemoteProducer:
        """A producer for one thread: ``offer()`` fills a frame, full frames are pipelined.

        The remote form of ``Broker.producer``: no future and no lock per message (see
        ``fastfanout.remote_producer``); ``flush()`` waits for every answer and raises a
        refusal (the refused frames are kept and sent again).

        Args:
            topic: the topic to publish to (it must exist now).
            batch_messages: messages per frame (default: the client's).
            batch_bytes: body bytes per frame (default: the client's).
            max_in_flight: frames sent and not yet answered before ``offer()`` waits;
                1 keeps strict offer order even when a frame is refused.
            linger: seconds a frame that is not full waits before it is sent (default:
                the client's ``linger``).

        Raises:
            NotFound: the topic does not exist.
            InvalidArgument: a limit is not a positive int.
        """
        batch_messages, batch_bytes, linger = producer_limits(
            topic, batch_messages, batch_bytes, max_in_flight, linger,
            (self.batch_messages, self.batch_bytes, self.linger))
        if topic not in self.list_topics():
            raise NotFound(f"topic {topic!r} does not exist")
        producer = RemoteProducer(self, topic, batch_messages, batch_bytes, max_in_flight,
                                  linger)
        self._producers.add(producer)
        return producer

    def publish_batch(self, topic: str, entries: Iterable[Any]) -> RemotePublishBatch:
        """Publish many messages (bodies or ``PublishEntry``): all enqueued, or none."""
        return self._batch_call(Opcode.PUBLISH, topic, entries)

    def send_batch(self, queue: str, entries: Iterable[Any]) -> RemotePublishBatch:
        """Send many messages straight to a queue: all enqueued, or none."""
        return self._batch_call(Opcode.SEND, queue, entries)

    # -- receiving and settling ---------------------------------------------------------

    def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                visibility_timeout: float | None = None) -> list[RemoteMessage]:
        """Lease up to ``max_messages`` visible messages (``wait``: long-poll seconds)."""
        pending = self._request(Opcode.RECEIVE, [protocol.encode_payload([[], {
            "queue": queue, "max_messages": max_messages, "wait": wait,
            "visibility_timeout": visibility_timeout}])])
        extra = float(wait) if type(wait) in (int, float) and math.isfinite(wait) else 0.0
        return decode_delivery(self._wait(pending, None, extra=extra), self, None, queue)

    def ack(self, receipt: int) -> None:
        """Delete the message of a delivery (raises ``StaleReceipt`` if its lease ended)."""
        self._wait(self._request(Opcode.ACK, [protocol.encode_receipts([receipt])]), None)

    def ack_batch(self, receipts: Iterable[int]) -> None:
        """Ack many deliveries: all, or (if any receipt is stale) none."""
        payload = protocol.encode_receipts(list(receipts))
        self._wait(self._request(Opcode.ACK, [payload]), None)

    def nack(self, receipt: int, *, delay: float | None = None) -> None:
        """End a lease early; visible again after ``delay`` seconds."""
        self._call(Opcode.NACK, receipt, delay=delay)

    def extend(self, receipt: int, seconds: float) -> None:
        """Make the lease end ``seconds`` from now (0: return the message at once)."""
        self._call(Opcode.EXTEND, receipt, seconds)

    def term(self, receipt: int) -> None:
        """Dead-letter a leased message now (reason ``rejected``)."""
        self._call(Opcode.TERM, receipt)

    def consume(self, queue: str, *, prefetch: int = 100,
                visibility_timeout: float | None = None,
                timeout: float | None = None) -> Consumer:
        """Start a push consumer: iterate it for messages, ``next_batch()`` for batches.

        Args:
            queue: the queue to consume.
            prefetch: most unsettled messages the consumer holds: the broker pushes more
                as the ones it holds are settled (any way: through the consumer, by
                receipt, or by their leases ending).
            visibility_timeout: lease of each pushed message, seconds (default: queue's).
            timeout: end the iteration when no message arrives within this many seconds
                of asking for the next one (the consumer is then cancelled), as pika's
                ``inactivity_timeout``; None (the default) waits forever.

        Raises:
            InvalidArgument: ``timeout`` is not None or finite seconds > 0.
        """
        timeout = check_inactivity_timeout(timeout)
        # Registered before the lock is let go: the background thread reads replies (and
        # the first pushes) as soon as it can take it.
        with self._lock:
            pending = self._request(Opcode.CONSUME, [protocol.encode_payload([[], {
                "queue": queue, "prefetch": prefetch,
                "visibility_timeout": visibility_timeout}])])
            request_id = pending.request_id
            consumer = self._consumers[request_id] = Consumer(self, queue, prefetch, request_id,
                                                              timeout)
        try:
            self._wait(pending, None)
        except FastFanoutError:
            self._consumers.pop(request_id, None)
            raise
        return consumer

    def consume_batches(self, queue: str, *, prefetch: int = 1000,
                        visibility_timeout: float | None = None,
                        timeout: float | None = None) -> Iterator[DeliveryBatch]:
        """Iterate over pushed batches; ``batch.ack()`` settles a batch.

        ``prefetch``, ``visibility_timeout`` and ``timeout`` are as for ``consume``: the
        iteration ends when no batch arrives within ``timeout``.
        """
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

    def _fire(self, opcode: int, payload: list[bytes]) -> None:
        """Send a request that gets no reply (SETTLE).

        Nothing is sent without a connection: the broker released that connection's
        leases when it went.
        """
        with self._lock:
            if self._transport is None:
                return
            if self._batches:
                self._flush_batches()
            self._transmit(self._transport, opcode, payload)

    def _settle(self, batches: list[bytes]) -> None:
        """Ack pushed batches (a receipts frame each) in one SETTLE.

        Its last frame is ``protocol.NO_CREDIT``: the broker counts credit itself.
        """
        self._fire(Opcode.SETTLE, [*batches, protocol.NO_CREDIT])

    def _cancel(self, consumer_id: int) -> None:
        with self._lock:
            self._consumers.pop(consumer_id, None)
            if self._transport is None or self._closed:
                return
        try:
            self._call(Opcode.CANCEL, consumer_id)
        except FastFanoutError:
            pass

    def listen(self, topic_pattern: str, *, high_water_mark: int = 100_000) -> Listener:
        """Follow the stream of every topic matching ``topic_pattern`` (at most once).

        Returns once the broker applies the subscription: every message published after
        this returns reaches the listener, unless its queue overflows.

        Args:
            topic_pattern: a topic name or pattern (``orders.*``, ``orders.>``).
            high_water_mark: stream batches the listener's socket queues; beyond them the
                broker drops batches for this listener only (counted in its ``gaps``).

        Raises:
            InvalidArgument: ``high_water_mark`` is not an int of 1 or more.
            BrokenConnection: the broker did not apply the subscription within the
                client's ``timeout``.
        """
        if type(high_water_mark) is not int or high_water_mark < 1:
            raise InvalidArgument(f"high_water_mark={high_water_mark!r} must be an int of 1 "
                                  f"or more")
        self._ensure()
        return Listener(str(self.info["stream_endpoint"]), topic_pattern, self._curve,
                        timeout=self.timeout, high_water_mark=high_water_mark)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def close(self, timeout: float = 5.0) -> None:
        """Flush pending publishes, wait for their answers, say goodbye and disconnect.

        Producers of this client still open are closed first (their messages flushed).
        In a forked child it only marks the client closed: the connection is the
        parent's, and nothing of it is sent, flushed or closed.

        Args:
            timeout: seconds to wait for the broker's answers at most.

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
                producer.close()
            except FastFanoutError as exc:
                refusal = refusal or exc
        try:
            with self._lock:
                if self._transport is not None:
                    futures = [f for batch in self._batches.values() for f in batch.futures]
                    self._flush_batches()
                    for consumer in list(self._consumers.values()):
                        consumer._send_settle()
                        consumer.closed = True
                    self._consumers.clear()
                    try:
                        for future in futures:
                            future.result(timeout)
                        self._wait(self._request(Opcode.BYE, [], flush=False), timeout)
                    except FastFanoutError:
                        pass
        finally:
            self._closed = True
            self._kick.set()
            self._thread.join(timeout)
            with self._lock:
                self._drop_transport()
        if refusal is not None:
            raise refusal

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def connect(endpoint: str | None = None, **options: Any) -> Client:
    """Connect to a broker server (default: the per-user ipc endpoint).

    Args:
        endpoint: ``ipc://PATH`` or ``tcp://HOST:PORT``.
        **options: keyword arguments of ``Client`` (``timeout``, ``linger``, ...).
    """
    return Client(endpoint, **options)


_ = ExponentialBackoff  # re-exported type users pass as redelivery_backoff
