"""A client's ``delay`` and ``ttl`` count on the broker's clock, not the client's.

The client turned ``delay`` and ``ttl`` into absolute times on its own clock
(``time.time()`` + seconds) and the broker compared them with its clock: a client on
another host, or one whose clock was stepped, delayed or expired its messages by the
difference of the two clocks (a ttl shorter than that was refused as expired before it
was published). They now travel as durations, counted from the broker's acceptance.
"""

from __future__ import annotations

import asyncio
import time

from clocks import FakeClock
from conftest import Tracker

from fastfanout import Broker, PublishEntry, aio

DAY = 86_400.0


def _broker_a_day_off(offset: float) -> tuple[Broker, FakeClock]:
    clock = FakeClock(time.time() + offset)
    broker = Broker(clock=clock)
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    return broker, clock


def test_a_delay_counts_on_the_brokers_clock(track: Tracker, endpoint: str) -> None:
    broker, clock = _broker_a_day_off(-DAY)   # the broker's clock a day behind the client's
    server = track.server(endpoint, broker=broker)
    client = track.client(server.endpoint)
    client.publish("t", b"blocking", delay=5.0)
    client.publish_batch("t", [PublishEntry(b"batch", delay=5.0)])

    async def publish() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as remote:
            await remote.publish("t", b"asyncio", delay=5.0)

    asyncio.run(publish())
    assert client.stats().queues["q"].delayed == 3
    clock.advance(4.9)
    assert client.receive("q", max_messages=10) == []
    clock.advance(0.2)   # 5.1 s on the broker's clock: due (it was a day and 5 s before)
    bodies = sorted(m.body for m in client.receive("q", max_messages=10))
    assert bodies == [b"asyncio", b"batch", b"blocking"]


def test_a_ttl_counts_on_the_brokers_clock(track: Tracker, endpoint: str) -> None:
    broker, clock = _broker_a_day_off(+DAY)   # the broker's clock a day ahead
    server = track.server(endpoint, broker=broker)
    client = track.client(server.endpoint)
    # refused before as "expired before it was published": its end was a day ago there
    client.publish("t", b"short-lived", ttl=10.0)
    client.publish("t", b"kept")
    clock.advance(9.0)
    assert client.stats().queues["q"].visible == 2
    clock.advance(2.0)   # 11 s on the broker's clock: the first has expired
    assert [m.body for m in client.receive("q", max_messages=10)] == [b"kept"]
    assert client.stats().queues["q"].dropped["expired"] == 1
