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


async def still_serves(client: fastfanout.aio.AsyncClient, body: bytes) -> list[str]:
    """After the misuse, the client publishes ``body`` and consumes it as before: the
    bodies it got (one)."""
    await client.publish("orders", body)
    async for message in client.consume("billing", timeout=5.0):
        message.ack()
        return [bytes(message.body).decode()]
    return []


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
            said.extend(await still_serves(client, b"order 2"))
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


ASYNCIO_FIX = r"fastfanout\.aio\.connect\(\)"
"""Every blocking object's misuse names the asyncio client to use."""


def test_blocking_results_awaited(track: Tracker, endpoint: str) -> None:
    # until 2026-12-06: "object PublishResult can't be used in 'await' expression"
    client = track.client(endpoint)
    consumer = client.consume("billing", prefetch=10, timeout=5.0)
    listener = client.listen("orders")
    producer = client.producer("orders")
    misuses = {
        "a Client": fastfanout.connect(endpoint, timeout=5.0),
        "a PublishResult": client.publish("orders", b"1"),
        "a PublishFuture": client.publish_nowait("orders", b"2"),
        "a RemotePublishBatch": client.publish_batch("orders", [b"3"]),
        "a PublishBatchFuture": client.publish_batch_nowait("orders", [b"4"]),
        "a Consumer": consumer,
        "a Listener": listener,
        "a RemoteProducer": producer,
    }
    track.closeables.append(misuses["a Client"])

    async def wait_for(awaited: object) -> None:
        await awaited   # type: ignore[misc]

    for name, result in misuses.items():
        with pytest.raises(fastfanout.WrongClient,
                           match=rf"^{name} .*is not awaited: .*{ASYNCIO_FIX}"):
            asyncio.run(wait_for(result))
    # nothing changed: the futures complete, the client, consumer and producer work
    assert misuses["a PublishFuture"].result().message_id > 0   # type: ignore[union-attr]
    assert len(misuses["a PublishBatchFuture"].result()) == 1   # type: ignore[union-attr]
    producer.offer(b"5")
    producer.close()
    assert [bytes(next(consumer).body) for _ in range(5)] == [b"1", b"2", b"3", b"4", b"5"]
    consumer.cancel()
    listener.close()


def test_blocking_objects_in_async_with_and_async_for(track: Tracker, endpoint: str) -> None:
    client = track.client(endpoint)
    consumer = client.consume("billing", prefetch=10, timeout=5.0)
    listener = client.listen("orders")
    producer = client.producer("orders")

    async def enter(opened: object) -> None:
        async with opened:   # type: ignore[attr-defined]
            pass

    async def iterate(iterated: object) -> None:
        async for _ in iterated:   # type: ignore[attr-defined]
            pass

    for name, opened in (("a Consumer", consumer), ("a Listener", listener),
                         ("a RemoteProducer", producer)):
        with pytest.raises(fastfanout.WrongClient,
                           match=rf"^{name} .*'async with': enter it with 'with'.*{ASYNCIO_FIX}"):
            asyncio.run(enter(opened))
    batches = client.consume_batches("billing", timeout=5.0)
    for iterated in (listener, batches):
        with pytest.raises(fastfanout.WrongClient,
                           match=rf"'async for': iterate it with 'for'.*{ASYNCIO_FIX}"):
            asyncio.run(iterate(iterated))
    consumer.cancel()
    producer.close()
    listener.close()
    client.publish("orders", b"order 6")
    batch = next(batches)   # the batches' iterator still works, and closes
    assert [bytes(message.body) for message in batch] == [b"order 6"]
    batch.ack()
    batches.close()   # type: ignore[attr-defined]


def test_the_asyncio_listener_in_with_and_for(endpoint: str) -> None:
    # until 2026-12-06: AttributeError '__enter__', TypeError "not iterable"
    async def misuse() -> list[str]:
        said = []
        async with fastfanout.aio.connect(endpoint, timeout=5.0) as client:
            listener = await client.listen("orders")
            with pytest.raises(fastfanout.WrongClient, match="entered with 'with'") as raised:
                with listener:   # type: ignore[attr-defined]
                    pass
            said.append(str(raised.value))
            with pytest.raises(fastfanout.WrongClient, match="iterated with 'for'"):
                for _ in listener:   # type: ignore[attr-defined]
                    pass
            await client.publish("orders", b"heard")
            batch = await listener.recv_batch(5.0)
            said += [bytes(message.body).decode() for message in batch or []]
            await listener.close()
        return said

    said = asyncio.run(misuse())
    assert "'orders'" in said[0] and "fastfanout.connect()" in said[0]
    assert said[1:] == ["heard"]


def test_the_asyncio_consumer_awaited_or_entered(endpoint: str) -> None:
    # until 2026-12-06: "object AsyncMessageCursor can't be used in 'await' expression"
    async def misuse() -> list[str]:
        said = []
        async with fastfanout.aio.connect(endpoint, timeout=5.0) as client:
            with pytest.raises(fastfanout.WrongClient,
                               match=r"queue 'billing'.*is not awaited: iterate it with "
                                     r"'async for"):
                await client.consume("billing")   # type: ignore[misc]
            with pytest.raises(fastfanout.WrongClient,
                               match=r"queue 'billing'.*are not awaited: iterate them"):
                await client.consume_batches("billing")   # type: ignore[misc]
            with pytest.raises(fastfanout.WrongClient,
                               match=r"not entered with 'async with': iterate it"):
                async with client.consume("billing"):   # type: ignore[attr-defined]
                    pass
            said.extend(await still_serves(client, b"order 7"))
        return said

    assert asyncio.run(misuse()) == ["order 7"]
