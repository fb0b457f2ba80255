"""A producer follows the limits of the broker it is connected to now, not at its making.

A client that reconnects may meet a broker restarted with other request limits
(``max_request_bytes``): its open producers refuse, or let through, bodies by those.
"""

from __future__ import annotations

import asyncio
from typing import Any as Tracker

import pytest

import fastfanout
from fastfanout import RequestTooLarge, aio

SMALL = 64 * 1024
LARGE = 4 * 1024 * 1024
MIDDLE = 256 * 1024   # over SMALL, under LARGE


def _setup(client: fastfanout.Client) -> None:
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")


def _reconnect(track: Tracker, client: fastfanout.Client) -> None:
    """Wait until the client is connected to the broker now on its endpoint."""
    def connected() -> bool:
        try:
            client.list_queues()
        except fastfanout.BrokenConnection:
            return False   # the first call after a restart learns of it; the next reconnects
        return True

    track.wait_until(connected, what="the client's reconnect")


def test_a_producer_takes_a_restarted_brokers_smaller_limits(track: Tracker) -> None:
    endpoint = track.endpoint()
    server = track.server(endpoint, max_request_bytes=LARGE)
    client = track.client(endpoint, timeout=2.0)
    _setup(client)
    producer = client.producer("t", batch_messages=100, linger=60)
    producer.offer(bytes(MIDDLE))            # the first broker takes it
    assert producer.flush() is not None and producer.published == 1
    server.stop()
    track.server(endpoint, max_request_bytes=SMALL)
    _reconnect(track, client)
    _setup(client)
    # refused at the offer, by the new broker's limit, and never put in a frame
    with pytest.raises(RequestTooLarge, match=f"max_request_bytes={SMALL}"):
        producer.offer(bytes(MIDDLE))
    producer.offer(b"small")
    assert producer.pending == 1
    producer.flush()                        # the frame of the small body alone
    assert producer.published == 2 and producer.dropped_frames == 0
    assert client.stats().queues["q"].enqueued == 1


def test_a_producer_takes_a_restarted_brokers_larger_limits(track: Tracker) -> None:
    endpoint = track.endpoint()
    server = track.server(endpoint, max_request_bytes=SMALL)
    client = track.client(endpoint, timeout=2.0)
    _setup(client)
    producer = client.producer("t", batch_messages=100, linger=60)
    with pytest.raises(RequestTooLarge, match=f"max_request_bytes={SMALL}"):
        producer.offer(bytes(MIDDLE))
    server.stop()
    track.server(endpoint, max_request_bytes=LARGE)
    _reconnect(track, client)
    _setup(client)
    producer.offer(bytes(MIDDLE))            # the new broker takes it
    producer.flush()
    assert producer.published == 1 and producer.dropped_frames == 0
    assert [len(m.body) for m in client.receive("q")] == [MIDDLE]


def test_an_asyncio_producer_takes_a_restarted_brokers_limits(track: Tracker) -> None:
    endpoint = track.endpoint()
    server = track.server(endpoint, max_request_bytes=LARGE)

    async def setup(client: aio.AsyncClient) -> None:
        await client.create_topic("t")
        await client.create_queue("q")
        await client.subscribe("t", "q")

    async def main() -> None:
        async with aio.connect(endpoint, timeout=2.0) as client:
            await setup(client)
            producer = await client.producer("t", batch_messages=100)
            producer.offer(bytes(MIDDLE))
            await producer.flush()
            assert producer.published == 1
            server.stop()
            track.server(endpoint, max_request_bytes=SMALL)
            with pytest.raises(fastfanout.BrokenConnection):   # one, then it reconnects
                await client.list_queues()
            await setup(client)
            with pytest.raises(RequestTooLarge, match=f"max_request_bytes={SMALL}"):
                producer.offer(bytes(MIDDLE))
            producer.offer(b"small")
            await producer.flush()
            assert producer.published == 2 and producer.dropped_frames == 0
            assert (await client.stats()).queues["q"].enqueued == 1
            await producer.close()

    asyncio.run(main())
