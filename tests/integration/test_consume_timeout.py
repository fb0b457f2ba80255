"""A consumer's inactivity timeout: ``consume(queue, timeout=...)`` ends the iteration
when nothing arrives in time (as pika's ``inactivity_timeout``), in both clients; what
arrives in time is still yielded, and the ended consumer is cancelled on the broker.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any as Tracker

import pytest

import fastfanout
from fastfanout import aio

TIMEOUT = 0.5
GAP = 0.15          # a pause shorter than TIMEOUT: what comes after it is still yielded
LATE = 10.0         # how long an ended iteration may take, at most, on a busy machine


def _setup(client: fastfanout.Client) -> None:
    client.create_queue("q")


def _later(endpoint: str, bodies: list[bytes]) -> threading.Thread:
    """Send ``bodies`` to q from another connection, each after a GAP."""
    def run() -> None:
        with fastfanout.connect(endpoint, timeout=5.0) as sender:
            for body in bodies:
                time.sleep(GAP)
                sender.send("q", body)

    thread = threading.Thread(target=run, name="late-sender")
    thread.start()
    return thread


def _consumers(client: fastfanout.Client) -> int:
    return int(client.server_stats()["consumers"])


def test_blocking_consume_ends_after_the_inactivity_timeout(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    _setup(client)
    client.send("q", b"first")
    sender = _later(server.endpoint, [b"second", b"third"])
    consumer = client.consume("q", timeout=TIMEOUT)
    bodies = []
    for message in consumer:
        bodies.append(message.body)
        message.ack()
        last = time.monotonic()
    ended = time.monotonic()
    sender.join(LATE)
    assert bodies == [b"first", b"second", b"third"]
    assert TIMEOUT <= ended - last < LATE
    assert consumer.closed
    assert list(consumer) == []                  # ended for good
    track.wait_until(lambda: _consumers(client) == 0, what="the consumer's cancel")
    assert client.stats().queues["q"].acked == 3


def test_blocking_consume_batches_ends_after_the_inactivity_timeout(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    _setup(client)
    client.send_batch("q", [b"a", b"b"])
    sender = _later(server.endpoint, [b"c"])
    started = time.monotonic()
    bodies = []
    for batch in client.consume_batches("q", timeout=TIMEOUT):
        bodies.extend(batch.body_list())
        batch.ack()
    sender.join(LATE)
    assert bodies == [b"a", b"b", b"c"]
    assert GAP + TIMEOUT <= time.monotonic() - started < LATE
    track.wait_until(lambda: _consumers(client) == 0, what="the consumer's cancel")


def test_an_empty_queue_ends_the_iteration_after_the_timeout(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    _setup(client)
    started = time.monotonic()
    assert list(client.consume("q", timeout=TIMEOUT)) == []
    assert TIMEOUT <= time.monotonic() - started < LATE


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "1", True])
def test_a_bad_timeout_is_refused_before_anything_starts(track: Tracker, timeout: object
                                                         ) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    _setup(client)
    with pytest.raises(fastfanout.InvalidArgument, match="timeout="):
        client.consume("q", timeout=timeout)  # type: ignore[arg-type]
    assert _consumers(client) == 0

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as aclient:
            with pytest.raises(fastfanout.InvalidArgument, match="timeout="):
                async for _ in aclient.consume("q", timeout=timeout):  # type: ignore[arg-type]
                    pass
            assert (await aclient.server_stats())["consumers"] == 0

    asyncio.run(main())


@pytest.mark.parametrize("timeout", [float("nan"), "1", True, [1]])
def test_next_batch_refuses_a_bad_timeout_instead_of_hanging(track: Tracker, timeout: object
                                                            ) -> None:
    # a NaN deadline was never reached: next_batch waited forever (embedded broker and
    # blocking client); a str failed inside the wait with a TypeError
    server = track.server()
    client = track.client(server.endpoint)
    _setup(client)
    with fastfanout.Broker() as broker:
        broker.create_queue("q")
        for consumer in (broker.consume("q"), client.consume("q")):
            with pytest.raises(fastfanout.InvalidArgument, match="timeout="):
                consumer.next_batch(timeout)  # type: ignore[arg-type]
            assert consumer.next_batch(0) is None and consumer.next_batch(-1.0) is None
            consumer.cancel()
        consumer = client.consume("q")
        with pytest.raises(fastfanout.InvalidArgument, match="timeout="):
            consumer.timeout = float("nan")
        assert consumer.timeout is None
        consumer.cancel()


def test_asyncio_consume_ends_after_the_inactivity_timeout(track: Tracker) -> None:
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q")
            await client.send("q", b"first")

            async def later() -> None:
                for body in (b"second", b"third"):
                    await asyncio.sleep(GAP)
                    await client.send("q", body)

            sending = asyncio.create_task(later())
            bodies = []
            async for message in client.consume("q", timeout=TIMEOUT):
                bodies.append(message.body)
                message.ack()
                last = time.monotonic()
            ended = time.monotonic()
            await sending
            assert bodies == [b"first", b"second", b"third"]
            assert TIMEOUT <= ended - last < LATE

            started = time.monotonic()
            batches = [batch async for batch in client.consume_batches("q", timeout=TIMEOUT)]
            assert batches == [] and TIMEOUT <= time.monotonic() - started < LATE

            deadline = time.monotonic() + LATE
            while (await client.server_stats())["consumers"]:   # both cancelled
                assert time.monotonic() < deadline, "the consumers were not cancelled"
                await asyncio.sleep(0.01)
            assert (await client.stats()).queues["q"].acked == 3

    asyncio.run(main())
