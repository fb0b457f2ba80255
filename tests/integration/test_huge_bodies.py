"""A body over the broker's limits is refused at the call, before any copy of it."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from typing import Any as Tracker

import pytest

from fastfanout import PublishEntry, RequestTooLarge, aio

LIMIT = 64 * 1024
HUGE = 16 * 1024 * 1024   # 256 times the limit


@contextmanager
def _allocated_at_most(limit: int) -> Iterator[None]:
    """Fail unless the block's peak of traced allocations stays under ``limit`` bytes."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak} bytes allocated: the body was copied"


def test_the_blocking_client_refuses_a_huge_body_before_copying_it(track: Tracker) -> None:
    server = track.server(max_request_bytes=LIMIT)
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.create_topic("t")
    client.subscribe("t", "q")
    bodies = (bytes(HUGE), bytearray(HUGE), memoryview(bytes(HUGE)))
    calls: list[Callable[[object], object]] = [
        lambda body: client.publish("t", body),
        lambda body: client.send("q", body, delay=0),
        lambda body: client.publish_nowait("t", body),
        lambda body: client.send_nowait("q", body)]
    client.publish_nowait("t", b"open")        # the fast path: joining an open batch
    for call in calls:
        for body in bodies:
            with _allocated_at_most(HUGE // 4), pytest.raises(
                    RequestTooLarge, match=f"body of {HUGE} bytes.*max_request_bytes"):
                call(body)
    assert client.publish("t", b"fine").deliveries == 1   # still connected
    assert client.stats().queues["q"].enqueued == 2
    assert client.server_stats().get("disconnects", 0) == 0


def test_the_asyncio_client_refuses_a_huge_body_before_copying_it(track: Tracker) -> None:
    server = track.server(max_request_bytes=LIMIT)

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q")
            body = bytes(HUGE)
            with _allocated_at_most(HUGE // 4), pytest.raises(RequestTooLarge):
                await client.send("q", body)
            small = client.send_nowait("q", b"small")   # opens the batch
            with _allocated_at_most(HUGE // 4), pytest.raises(RequestTooLarge):
                client.send_nowait("q", body)           # the native fast path
            assert (await small).deliveries == 1
            assert (await client.stats()).queues["q"].enqueued == 1

    asyncio.run(main())


def _batches(body: object) -> list[list[object]]:
    """Batches of small entries with one huge one, in every form an entry takes."""
    return [[b"small", body], [PublishEntry(b"small"), PublishEntry(body, dedup_id="d")]]


def test_the_blocking_client_refuses_a_batch_with_a_huge_entry_before_copying_it(
        track: Tracker) -> None:
    server = track.server(max_request_bytes=LIMIT)
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.create_topic("t")
    client.subscribe("t", "q")
    sent: list[int] = []
    client.connection.core.on_request = lambda opcode, payload: sent.append(opcode)
    bodies = (bytes(HUGE), bytearray(HUGE), memoryview(bytes(HUGE)))
    calls: list[Callable[[Any], object]] = [
        lambda entries: client.publish_batch("t", entries),
        lambda entries: client.send_batch("q", entries),
        lambda entries: client.publish_batch("t", iter(entries)),
        lambda entries: client.publish_batch_nowait("t", entries),
        lambda entries: client.send_batch_nowait("q", entries)]
    for call in calls:
        for body in bodies:
            for entries in _batches(body):
                with _allocated_at_most(HUGE // 4), pytest.raises(
                        RequestTooLarge, match=f"body of {HUGE} bytes.*max_request_bytes"):
                    call(entries)
    assert sent == []                                    # nothing left for the broker
    assert client.stats().queues["q"].enqueued == 0
    assert len(client.publish_batch("t", [b"fine", b"too"])) == 2   # still connected
    assert client.stats().queues["q"].enqueued == 2
    assert client.server_stats().get("disconnects", 0) == 0


def test_the_asyncio_client_refuses_a_batch_with_a_huge_entry_before_copying_it(
        track: Tracker) -> None:
    server = track.server(max_request_bytes=LIMIT)

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q")
            await client.create_topic("t")
            await client.subscribe("t", "q")
            for entries in _batches(bytes(HUGE)):
                with _allocated_at_most(HUGE // 4), pytest.raises(RequestTooLarge):
                    await client.send_batch("q", entries)
                with _allocated_at_most(HUGE // 4), pytest.raises(RequestTooLarge):
                    await client.publish_batch("t", entries)
            assert (await client.stats()).queues["q"].enqueued == 0
            assert len(await client.send_batch("q", [b"fine"])) == 1
            assert (await client.stats()).queues["q"].enqueued == 1

    asyncio.run(main())
