"""Producers on FIFO topics: a ``group_id`` for all their messages, or a refusal at once.

A FIFO topic needs a group id on every message (and a dedup id unless it has
``content_dedup``). A producer offers bare bodies, so a producer on a FIFO topic had
every frame refused and kept: its messages were never published and each flush and close
raised again. Now ``producer(topic, group_id=...)`` gives every message that group, and a
producer whose messages the topic would refuse is refused when it is opened.
"""

from __future__ import annotations

import array
import asyncio
from typing import Any

import pytest
from conftest import Tracker

from fastfanout import Broker, InvalidArgument, NotFound, aio

BODIES = [b"one", b"two", b"three", b"four"]


def _setup(api: Any) -> None:
    api.create_topic("fifo", fifo=True, content_dedup=True)
    api.create_topic("strict", fifo=True)                # no content_dedup
    api.create_queue("q", fifo=True, content_dedup=True)
    api.subscribe("fifo", "q")


def _drain(api: Any) -> list[Any]:
    """Every message of FIFO queue ``q`` (one group: one leased at a time), acked."""
    messages: list[Any] = []
    while batch := api.receive("q", max_messages=10):
        messages += batch
        api.ack_batch([m.receipt for m in batch])
    return messages


def _refusals(open_producer: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"needs a group_id.*group_id=\.\.\."):
        open_producer("fifo")
    with pytest.raises(InvalidArgument, match="content_dedup"):
        open_producer("strict", group_id="g")
    for bad in ("", 5, "x" * 129):
        with pytest.raises(InvalidArgument, match="group_id"):
            open_producer("fifo", group_id=bad)
    with pytest.raises(NotFound):
        open_producer("missing", group_id="g")


def test_the_embedded_producer_gives_its_group_or_is_refused() -> None:
    with Broker() as broker:
        _setup(broker)
        _refusals(broker.producer)
        with broker.producer("fifo", group_id="g", capacity=2) as producer:
            for body in BODIES:   # the ring of 2 fills: offers flush on the way
                producer.offer(body)
            producer.offer_batch((b"fivesix", array.array("q", [0, 4, 7])))
        messages = _drain(broker)
        assert [m.body for m in messages] == [*BODIES, b"five", b"six"]
        assert {m.group_id for m in messages} == {"g"}
        assert broker.stats().topics["fifo"].fifo
        assert broker.stats().topics["fifo"].content_dedup
        assert not broker.stats().topics["strict"].content_dedup


def test_the_blocking_producer_gives_its_group_or_is_refused(
        track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client)
    _refusals(client.producer)
    with client.producer("fifo", group_id="g", batch_messages=3) as producer:
        assert producer.group_id == "g"
        for body in BODIES:
            producer.offer(body)
    assert producer.published == len(BODIES) and producer.pending == 0
    messages = _drain(client)
    assert [m.body for m in messages] == BODIES
    assert {m.group_id for m in messages} == {"g"}
    # the same body again within the window: a duplicate, as for any content_dedup publish
    with client.producer("fifo", group_id="g") as producer:
        producer.offer(b"one")
    assert client.stats().topics["fifo"].duplicates == 1


def test_the_asyncio_producer_gives_its_group_or_is_refused(
        track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await asyncio.to_thread(_setup, track.client(endpoint))

            async def refusals(topic: str, **options: Any) -> None:
                await client.producer(topic, **options)

            for topic, options, problem in [
                    ("fifo", {}, "needs a group_id"),
                    ("strict", {"group_id": "g"}, "content_dedup"),
                    ("fifo", {"group_id": ""}, "group_id")]:
                with pytest.raises(InvalidArgument, match=problem):
                    await refusals(topic, **options)
            async with client.producer("fifo", group_id="g", batch_messages=3) as producer:
                for body in BODIES:
                    producer.offer(body)
            assert producer.published == len(BODIES)
            messages = await asyncio.to_thread(_drain, track.client(endpoint))
            assert [m.body for m in messages] == BODIES
            assert {m.group_id for m in messages} == {"g"}

    asyncio.run(main())
