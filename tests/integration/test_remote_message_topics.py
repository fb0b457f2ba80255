"""message.topic over the wire: a pattern subscriber's deliveries carry their topic."""

from __future__ import annotations

import asyncio
from typing import Any as Tracker

from fastfanout import aio


def test_remote_messages_of_a_pattern_subscriber_carry_their_topic(
        track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    for topic in ("orders.eu", "orders.us"):
        client.create_topic(topic)
    client.create_queue("pat")
    client.create_queue("plain")
    client.subscribe("orders.>", "pat")
    client.subscribe("orders.eu", "plain")
    client.publish_batch("orders.eu", [b"a", b"b"])
    client.publish("orders.us", b"c")
    client.send("pat", b"d")
    got = client.receive("pat", max_messages=10)
    assert [(m.body, m.topic, m.queue) for m in got] == [
        (b"a", "orders.eu", "pat"), (b"b", "orders.eu", "pat"), (b"c", "orders.us", "pat"),
        (b"d", None, "pat")]
    client.ack_batch([m.receipt for m in got])
    assert [(m.body, m.topic) for m in client.receive("plain", max_messages=10)] == [
        (b"a", None), (b"b", None)]
    # pushed deliveries (consume) and their batches, blocking and asyncio
    client.publish("orders.us", b"e")
    with client.consume("pat", timeout=5.0) as consumer:
        message = next(consumer)
        assert (message.body, message.topic, message.queue) == (b"e", "orders.us", "pat")
        message.ack()
    # cancelled: the next message goes to the asyncio consumer
    client.publish("orders.eu", b"f")

    async def consume() -> list[tuple[bytes, str | None]]:
        async with await aio.connect(endpoint) as remote:
            async for batch in remote.consume_batches("pat", prefetch=10):
                topics = [(m.body, m.topic) for m in batch]
                batch.ack()
                return topics
        return []

    assert asyncio.run(consume()) == [(b"f", "orders.eu")]
