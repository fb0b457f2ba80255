"""The blocking client used as the asyncio one, and the reverse, raise ``WrongClient``.

Each misuse is what a reader of the README's two samples writes by mistake: the other
client's ``with`` / ``for``, or the asyncio ``connect()`` not awaited. Each raises at
once a ``WrongClient`` naming the form that works (until 2026-12-05: Python's own
``TypeError`` or an ``AttributeError`` about an ``Opening`` or an
``AsyncMessageCursor``), and changes nothing: the client goes on working.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import Tracker

import fastfanout
import fastfanout.aio


@pytest.fixture
def endpoint(track: Tracker) -> str:
    server = track.server()
    with fastfanout.connect(server.endpoint) as client:
        client.create_topic("orders")
        client.create_queue("billing")
        client.subscribe("orders", "billing")
    return server.endpoint


def test_a_blocking_client_in_async_with(track: Tracker, endpoint: str) -> None:
    client = track.client(endpoint)

    async def enter() -> None:
        async with client:
            pass

    with pytest.raises(fastfanout.WrongClient, match=r"async with fastfanout\.aio\.connect"):
        asyncio.run(enter())
    assert client.publish("orders", b"still open").message_id > 0


def test_a_blocking_consumer_in_async_for(track: Tracker, endpoint: str) -> None:
    client = track.client(endpoint)
    consumer = client.consume("billing", prefetch=10, timeout=5.0)

    async def iterate() -> None:
        async for _ in consumer:   # type: ignore[attr-defined]
            pass

    with pytest.raises(fastfanout.WrongClient, match="iterated with 'for'"):
        asyncio.run(iterate())
    client.publish("orders", b"order 1")
    assert next(consumer).body == b"order 1"
    consumer.cancel()


def test_the_asyncio_connect_in_with(endpoint: str) -> None:
    with pytest.raises(fastfanout.WrongClient,
                       match=r"entered with 'async with'.*use fastfanout.connect\(\)"):
        with fastfanout.aio.connect(endpoint):   # type: ignore[attr-defined]
            pass
    assert isinstance(fastfanout.WrongClient("x"), TypeError)


def test_the_asyncio_connect_not_awaited(endpoint: str) -> None:
    opening = fastfanout.aio.connect(endpoint)
    with pytest.raises(fastfanout.WrongClient,
                       match=r"client = await fastfanout.aio.connect\(\)"):
        opening.publish("orders", b"x")   # type: ignore[attr-defined]
    assert not hasattr(opening, "no_such_name")   # other names stay AttributeErrors

    async def use() -> int:
        async with opening as client:      # the same opening still works
            return (await client.publish("orders", b"awaited")).message_id

    assert asyncio.run(use()) > 0


def test_the_asyncio_client_in_with_and_for(endpoint: str) -> None:
    async def misuse() -> list[str]:
        said = []
        async with fastfanout.aio.connect(endpoint, timeout=5.0) as client:
            with pytest.raises(fastfanout.WrongClient, match="entered with 'async with'"):
                with client:   # type: ignore[attr-defined]
                    pass
            with pytest.raises(fastfanout.WrongClient, match="'async for'") as raised:
                for _ in client.consume("billing"):   # type: ignore[attr-defined]
                    pass
            said.append(str(raised.value))
            with pytest.raises(fastfanout.WrongClient,
                               match=r"async with client.producer\('orders'\) as producer"):
                with client.producer("orders"):   # type: ignore[attr-defined]
                    pass
            await client.publish("orders", b"order 2")
            async for message in client.consume("billing", timeout=5.0):
                said.append(bytes(message.body).decode())
                message.ack()
                break
        return said

    said = asyncio.run(misuse())
    assert "queue 'billing'" in said[0] and said[1:] == ["order 2"]


def test_the_asyncio_batches_in_for(endpoint: str) -> None:
    # until 2026-12-05: TypeError "'async_generator' object is not iterable"
    async def misuse() -> list[bytes]:
        async with fastfanout.aio.connect(endpoint, timeout=5.0) as client:
            with pytest.raises(fastfanout.WrongClient,
                               match=r"queue 'billing'.*'async for'.*consume_batches"):
                for _ in client.consume_batches("billing"):   # type: ignore[attr-defined]
                    pass
            await client.publish("orders", b"order 3")
            async for batch in client.consume_batches("billing", timeout=5.0):
                batch.ack()
                return [bytes(message.body) for message in batch]
        return []

    assert asyncio.run(misuse()) == [b"order 3"]
