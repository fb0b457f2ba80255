"""Where a worker takes messages from: a broker server over a connection, or a ``Broker``.

Each runner thread (or the event loop, for async handlers) takes messages through one
source. Over a connection that is a push consumer (``Client.consume``, credit-based: the
broker pushes while the consumer holds fewer than ``prefetch`` unsettled messages, and
credit comes back however a message is settled), one connection per thread so that a
thread never waits for another's socket. An embedded ``Broker`` has no connection: the
source is its push consumer, ``Broker.consume`` (``fastfanout.broker.consumer``), which
waits on the broker's condition, woken by publishes and settles (no polling loop), with
the same credit.

Every message a source yields has ``ack()``, ``nack(delay)``, ``extend(seconds)`` and
``receive_count``, embedded or remote.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from fastfanout.broker.embedded import Broker
from fastfanout.client import Client
from fastfanout.errors import FastFanoutError
from fastfanout.transport.local_channel import DEFAULT_RING_BYTES

__all__ = [
    "CLOSE_TIMEOUT",
    "STOP_GRACE",
    "WORKER_RING_BYTES",
    "AsyncBrokerSource",
    "AsyncClientSource",
    "AsyncSource",
    "BrokerSource",
    "ClientSource",
    "Source",
    "ack_each",
    "ring_bytes_for",
    "settle_quietly",
]

CLOSE_TIMEOUT = 2.0
"""Seconds a sync source's connection waits for the answer to its goodbye, worker
running (say, a source left behind a call past its timeout)."""

STOP_GRACE = 0.2
"""Seconds a worker connection still gets to say goodbye once the stop deadline passed
(the broker answers BYE at once; one that is gone never does, and must not hold the stop
past its ``shutdown_timeout``)."""

WORKER_RING_BYTES = 1 << 18
"""Fewest bytes of each ring of a worker connection's local channel (256 KiB): a thread
per connection makes the client's default of 4 MiB costly, and a worker holds no more
than its prefetch (``ring_bytes_for``)."""


def ring_bytes_for(prefetch: int) -> int:
    """Ring bytes for a connection holding ``prefetch`` messages.

    The credit's worth of small messages (~256 bytes each, headers included) fits in
    half a ring (the broker pushes it in pieces of a quarter of the ring at most); from
    ``WORKER_RING_BYTES`` to the client's default of 4 MiB.
    """
    wanted = max(WORKER_RING_BYTES, prefetch * 512)
    return min(DEFAULT_RING_BYTES, 1 << (wanted - 1).bit_length())


def settle_quietly(action: Any, *args: Any, **kwargs: Any) -> bool:
    """Call a settle method; False (not an error) when the broker refused it.

    A stale receipt or a closed connection is not the worker's failure: the message is
    redelivered anyway.
    """
    try:
        action(*args, **kwargs)
    except FastFanoutError:
        return False
    return True


class Source(Protocol):
    """What a runner thread takes messages from."""

    def take(self, max_messages: int, timeout: float) -> list[Any]:
        """Up to ``max_messages`` messages, waiting up to ``timeout`` seconds for one."""
        ...

    def ack(self, messages: list[Any]) -> None:
        """Ack messages taken from this source and not settled, together; quietly."""
        ...

    def buffered(self) -> list[Any]:
        """Messages received and not taken yet (leased: their leases are kept too)."""
        ...

    def cancel(self) -> None:
        """Stop the pushes (what was pushed stays leased until ``close``); quietly."""
        ...

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop taking, waiting ``timeout`` seconds at most.

        Whatever is still leased is released by the caller (or BYE).
        """
        ...


def ack_each(messages: list[Any]) -> None:
    """Ack each message in turn; a refused ack is no failure (the message comes back)."""
    for message in messages:
        settle_quietly(message.ack)


class ClientSource:
    """A push consumer on its own connection (``Client.consume``)."""

    def __init__(self, endpoint: str | None, options: dict[str, Any], queue: str,
                 prefetch: int, lease: float) -> None:
        options = {"ring_bytes": ring_bytes_for(prefetch), **options}
        self.client = Client(endpoint, **options)
        try:
            self._consumer = self.client.consume(queue, prefetch=prefetch,
                                                 visibility_timeout=lease)
        except BaseException:
            self.client.close()
            raise
        # the broker's (its HELLO's): silence past it ends the session
        self.heartbeat_timeout = float(self.client.info.get("heartbeat_timeout", 2.0))
        self._pushed: list[Any] = []   # the last push, taken in slices
        self._taken = 0
        self._whole: Any = None   # the last push when it was taken whole
        self._whole_count = 0

    def take(self, max_messages: int, timeout: float) -> list[Any]:
        """Messages pushed (the buffered ones first), waiting up to ``timeout`` s."""
        if self._taken >= len(self._pushed):
            batch = self._consumer.next_batch(timeout)
            if batch is None:
                return []
            if len(batch) <= max_messages:
                self._whole, self._whole_count = batch, len(batch)
                return list(batch)
            self._whole = None
            self._pushed, self._taken = list(batch), 0
        start = self._taken
        self._taken = start + max_messages
        return self._pushed[start:start + max_messages]

    def ack(self, messages: list[Any]) -> None:
        """Ack messages together, in one pipelined receipts frame.

        ``DeliveryBatch.ack()`` leaves out the messages settled on their own (nacked), so
        when ``messages`` are all the others of the last push taken whole, one ack of the
        push is theirs (its receipts read from the frame); otherwise (a slice of a push,
        some of it failed) their receipts are packed into one frame.
        """
        whole = self._whole
        if whole is not None and len(messages) == self._whole_count and (
                messages[0] is whole[0]):
            self._whole = None
            with contextlib.suppress(FastFanoutError):
                whole.ack()
            return
        consumer = self._consumer
        if consumer.closed:
            ack_each(messages)
            return
        # a slice of a push (or what is left of one): its receipts in one pipelined frame,
        # each message detached from its batch as DeliveryBatch.ack() does
        receipts = [message.receipt for message in messages if message.detach()]
        if receipts:
            with contextlib.suppress(FastFanoutError):
                consumer.defer_settle(struct.pack(f"<{len(receipts)}Q", *receipts))

    def buffered(self) -> list[Any]:
        """What was pushed and not taken yet (read by the lease keeper's thread).

        The rest of the last push, and the pushes that came since (until 2026-12-07 these
        were not extended: a handler slower than a lease let them run out and come back).
        """
        pushed, taken = self._pushed, self._taken
        return [*pushed[taken:], *self._consumer.waiting()]

    def cancel(self) -> None:
        """Stop the pushes (CANCEL); what was pushed is released by ``close``."""
        with contextlib.suppress(FastFanoutError):
            self._consumer.cancel()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the connection: its BYE makes the broker release every lease at once.

        Its answer is awaited ``timeout`` seconds at most (a broker that is gone never
        sends it).
        """
        with contextlib.suppress(FastFanoutError):
            self.client.close(timeout=timeout)


class BrokerSource:
    """An embedded broker's push consumer (``Broker.consume``), within a prefetch."""

    def __init__(self, broker: Broker, queue: str, prefetch: int, lease: float) -> None:
        self._consumer = broker.consume(queue, prefetch=prefetch, visibility_timeout=lease)
        self._pushed: list[Any] = []
        self._taken = 0

    def take(self, max_messages: int, timeout: float) -> list[Any]:
        """Up to ``max_messages``, waiting (woken by publishes and settles) up to ``timeout``."""
        if self._taken >= len(self._pushed):
            batch = self._consumer.next_messages(timeout)
            if batch is None:
                return []
            if len(batch) <= max_messages:
                return batch
            self._pushed, self._taken = batch, 0
        start = self._taken
        self._taken = start + max_messages
        return self._pushed[start:start + max_messages]

    def ack(self, messages: list[Any]) -> None:
        """Ack each message (an embedded ack is a direct call)."""
        ack_each(messages)

    def buffered(self) -> list[Any]:
        """The rest of the last push, not taken yet (read by the lease keeper's thread)."""
        pushed, taken = self._pushed, self._taken
        return pushed[taken:]

    def cancel(self) -> None:
        """Stop consuming; what was received stays leased until ``close``."""
        self._consumer.cancel()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop consuming; what was received and not taken comes back at once.

        ``timeout`` is not needed: an embedded broker answers at once.
        """
        self._consumer.cancel()
        rest, self._pushed = self._pushed[self._taken:], []
        for message in rest:
            settle_quietly(message.nack, delay=0.0)


class AsyncSource(Protocol):
    """What the event loop takes messages from (for async handlers)."""

    async def take(self, max_messages: int, timeout: float) -> list[Any]:
        """Up to ``max_messages`` messages, waiting up to ``timeout`` seconds for one."""
        ...

    async def close(self, timeout: float) -> None:
        """Stop taking and let go of the connection, within ``timeout`` seconds."""
        ...


class AsyncClientSource:
    """A push consumer of an asyncio connection (``AsyncClient.consume_batches``)."""

    def __init__(self, endpoint: str | None, options: dict[str, Any], queue: str,
                 prefetch: int, lease: float) -> None:
        self._endpoint = endpoint
        self._options = {"ring_bytes": ring_bytes_for(prefetch), **options}
        self._queue = queue
        self._prefetch = prefetch
        self._lease = lease
        self._buffer: deque[Any] = deque()
        self._arrived = asyncio.Event()
        self._client: Any = None
        self._feeder: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def open(self) -> AsyncClientSource:
        """Connect and start consuming; returns self (cancelled: nothing stays open)."""
        from fastfanout.aio import connect

        self._client = await connect(self._endpoint, **self._options)
        try:
            pushes = self._client.consume_batches(self._queue, prefetch=self._prefetch,
                                                  visibility_timeout=self._lease)
            ready = asyncio.get_running_loop().create_future()
            self._feeder = asyncio.create_task(self._feed(pushes, ready))
            await ready
        except BaseException:
            await asyncio.shield(self.close(STOP_GRACE))
            raise
        return self

    async def _feed(self, pushes: AsyncIterator[list[Any]], ready: asyncio.Future[None]
                    ) -> None:
        # The first step sends CONSUME and waits for its answer (NotFound raises here).
        first = asyncio.ensure_future(pushes.__anext__())
        ready.set_result(None)
        try:
            batch = await first
            while True:
                self._buffer.extend(batch)
                self._arrived.set()
                batch = await pushes.__anext__()
        except StopAsyncIteration:
            pass
        except Exception as exc:   # handed to the taker
            self._error = exc
            self._arrived.set()
        finally:
            with contextlib.suppress(Exception):
                await pushes.aclose()   # type: ignore[attr-defined]

    async def take(self, max_messages: int, timeout: float) -> list[Any]:
        """Messages pushed (oldest first), waiting up to ``timeout`` s for one."""
        if not self._buffer:
            if self._error is not None:
                raise self._error
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            if self._error is not None and not self._buffer:
                raise self._error
        buffer = self._buffer
        return [buffer.popleft() for _ in range(min(max_messages, len(buffer)))]

    def buffered(self) -> list[Any]:
        """Messages pushed and not taken yet (they are leased)."""
        return list(self._buffer)

    async def close(self, timeout: float) -> None:
        """Cancel the consumer, send the queued acks and close the connection.

        Its BYE makes the broker release every lease the connection still holds; its
        answer is awaited ``timeout`` seconds at most.
        """
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._feeder
        if self._client is not None:
            with contextlib.suppress(FastFanoutError):
                await self._client.close(timeout)


class AsyncBrokerSource:
    """Leases from an embedded broker for the event loop, in one helper thread."""

    def __init__(self, broker: Broker, queue: str, prefetch: int, lease: float) -> None:
        self._source = BrokerSource(broker, queue, prefetch, lease)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fastfanout-worker-receive")

    async def open(self) -> AsyncBrokerSource:
        """Nothing to open; returns self."""
        return self

    async def take(self, max_messages: int, timeout: float) -> list[Any]:
        """Lease up to ``max_messages``, the long poll running in the helper thread."""
        loop = asyncio.get_running_loop()
        result: list[Any] = await loop.run_in_executor(
            self._pool, functools.partial(self._source.take, max_messages, timeout))
        return result

    def buffered(self) -> list[Any]:
        """Nothing is buffered: every message taken was handed over."""
        return []

    async def close(self, timeout: float) -> None:
        """Stop the helper thread (after its current wait), then the consumer.

        ``timeout`` is not needed: an embedded broker answers at once.
        """
        self._pool.shutdown(wait=True)
        self._source.close()
