"""Push consumer credit is the broker's count of unsettled pushed messages; receipts are
bound to the session they were delivered to. Every test runs the blocking ``Client`` and
the asyncio ``AsyncClient`` through one driver interface.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest
from conftest import DEADLINE, Tracker

from fastfanout import StaleReceipt, aio
from fastfanout.client.messages import RemoteMessage

T = TypeVar("T")

PREFETCH = 3
COUNT = 9


class LoopThread:
    """An event loop in its own thread: lets sync test code drive the asyncio client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop")
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = DEADLINE) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive(), "the test's event loop did not stop"
        self.loop.close()


class BlockingDriver:
    """A blocking client and (once ``consume`` is called) one push consumer."""

    def __init__(self, track: Tracker, endpoint: str) -> None:
        self.client = track.client(endpoint)
        self._consumer: Any = None

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.client, name)(*args, **kwargs)

    def consume(self, queue: str, prefetch: int) -> None:
        self._consumer = self.client.consume(queue, prefetch=prefetch)

    def next_messages(self, timeout: float) -> list[RemoteMessage]:
        """The next pushed batch's messages, or [] after ``timeout`` seconds."""
        batch = self._consumer.next_batch(timeout=timeout)
        return [] if batch is None else list(batch)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()


class AsyncDriver:
    """An asyncio client, run on a ``LoopThread``, with the same interface."""

    def __init__(self, track: Tracker, endpoint: str) -> None:
        self._loop = LoopThread()
        self._messages: AsyncIterator[RemoteMessage] | None = None
        self._next: asyncio.Future[RemoteMessage] | None = None
        self.client: aio.AsyncClient | None = None
        track.closeables.append(self)

        async def connect() -> aio.AsyncClient:
            return await aio.connect(endpoint, timeout=5.0)

        self.client = self._loop.run(connect())

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(getattr(self.client, name)(*args, **kwargs))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop (its messages settle only there)."""
        return self._loop.run(coroutine)

    def consume(self, queue: str, prefetch: int) -> None:
        self._messages = self.client.consume(queue, prefetch=prefetch)

    def next_messages(self, timeout: float) -> list[RemoteMessage]:
        """The next pushed message as a list of one, or [] after ``timeout`` seconds
        (the pending ``__anext__`` stays pending for the next call: no cancellation)."""
        async def wait() -> list[RemoteMessage]:
            assert self._messages is not None
            if self._next is None:
                self._next = asyncio.ensure_future(self._messages.__anext__())
            done, _ = await asyncio.wait({self._next}, timeout=timeout)
            if not done:
                return []
            message = self._next.result()
            self._next = None
            return [message]

        return self._loop.run(wait(), timeout + DEADLINE)

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return

        async def close() -> None:
            if self._next is not None:
                self._next.cancel()
                await asyncio.gather(self._next, return_exceptions=True)
            if self.client is not None:
                await self.client.close()

        try:
            self._loop.run(close())
        finally:
            self._loop.close()


DRIVERS = {"blocking": BlockingDriver, "asyncio": AsyncDriver}


def settle(driver: BlockingDriver | AsyncDriver, how: str, messages: list[RemoteMessage]
           ) -> None:
    """Settle ``messages`` through the client, by receipt (``expire``: leave them)."""
    receipts = [message.receipt for message in messages]
    if how in ("ack_batch", "nack_batch", "term_batch"):
        driver.call(how, receipts)
    elif how == "extend_batch_to_zero":
        driver.call("extend_batch", receipts, 0)
    elif how == "extend_to_zero":
        for receipt in receipts:
            driver.call("extend", receipt, 0)
    elif how != "expire":
        for receipt in receipts:
            driver.call(how, receipt)


@pytest.mark.parametrize("how", ["ack", "ack_batch", "nack", "term", "extend_to_zero",
                                 "expire", "nack_batch", "term_batch",
                                 "extend_batch_to_zero"])
@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_a_consumer_gets_the_whole_queue_never_more_than_prefetch_unsettled(
        track: Tracker, kind: str, how: str) -> None:
    """Settled by receipt through the client (or left to expire), pushed messages give
    their credit back; and while a consumer holds ``prefetch`` unsettled, it gets no
    more (the asyncio client's own credit used to come back unsettled)."""
    server = track.server()
    driver = DRIVERS[kind](track, server.endpoint)
    driver.call("create_queue", "q", visibility_timeout=0.4 if how == "expire" else 60.0)
    driver.call("send_batch", "q", [b"m%d" % index for index in range(COUNT)])
    driver.consume("q", PREFETCH)
    seen: set[int] = set()
    held: list[RemoteMessage] = []
    deadline = time.monotonic() + 20.0
    while len(seen) < COUNT:
        got = driver.next_messages(max(0.0, deadline - time.monotonic()))
        assert got, f"the consumer stalled after {sorted(seen)} ({how})"
        held += got
        seen.update(message.id for message in got)
        assert driver.call("stats").queues["q"].leased <= PREFETCH
        assert len(held) <= PREFETCH
        if len(held) == PREFETCH:
            if how != "expire":   # (an expiring lease gives credit back by itself)
                assert driver.next_messages(0.2) == [], "pushed past the prefetch"
            settle(driver, how, held)
            held = []
    driver.close()


@pytest.mark.parametrize("how", ["ack", "ack_batch", "nack", "term", "extend_to_zero",
                                 "extend", "nack_batch", "term_batch",
                                 "extend_batch_to_zero", "extend_batch"])
@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_a_settle_from_another_session_is_stale_and_changes_nothing(
        track: Tracker, kind: str, how: str) -> None:
    server = track.server()
    first = BlockingDriver(track, server.endpoint)
    first.call("create_queue", "q", visibility_timeout=60.0)
    first.call("send", "q", b"a")
    first.consume("q", 1)
    (message,) = first.next_messages(DEADLINE)
    other = DRIVERS[kind](track, server.endpoint)
    with pytest.raises(StaleReceipt) as raised:
        if how == "extend":
            other.call("extend", message.receipt, 30.0)
        elif how == "extend_batch":
            other.call("extend_batch", [message.receipt], 30.0)
        else:
            settle(other, how, [message])
    assert raised.value.receipts == [message.receipt]
    queue = other.call("stats").queues["q"]
    assert (queue.leased, queue.acked, queue.visible, queue.messages) == (1, 0, 0, 1)
    first.call("ack", message.receipt)                 # still the first session's lease
    assert first.call("stats").queues["q"].acked == 1
    first.close()
    other.close()
