"""State that grew with churn and was never freed, now bounded or freed (soak regressions).

Each test runs a few hundred cycles of one churn and asserts an exact count is back to
where it started: no timing, no RSS threshold.
"""

from __future__ import annotations

import asyncio

from conftest import Tracker

from fastfanout import aio

CYCLES = 200


def test_cancelled_consumers_are_forgotten_blocking(track: Tracker) -> None:
    # Until 2026-12-05 the client remembered the id of every consumer it cancelled for
    # the session's life (to release pushes crossing the CANCEL): one int per consume +
    # cancel, forever, on a connection that lives for weeks.
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    for _ in range(CYCLES):
        client.send("q", b"x")
        consumer = client.consume("q", prefetch=1, timeout=5.0)
        next(consumer).ack()
        consumer.cancel()
    # dropped without cancel: its CANCEL is sent by the finalizer, its answer dropped
    for _ in range(CYCLES // 10):
        client.send("q", b"x")
        consumer = client.consume("q", prefetch=1, timeout=5.0)
        next(consumer).ack()
        del consumer
    client.list_queues()   # a round trip: every CANCEL sent before it is answered
    assert client.connection.core.cancelled == set()
    assert client.connection.core.cancelling == {}


def test_cancelled_consumers_are_forgotten_asyncio(track: Tracker) -> None:
    server = track.server()

    async def churn() -> tuple[set[int], dict[int, int]]:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q")
            for _ in range(CYCLES):
                await client.send("q", b"x")
                messages = client.consume("q", prefetch=1, timeout=5.0)
                async for message in messages:
                    message.ack()
                    break
                await messages.aclose()
            await client.list_queues()
            core = client.connection.core
            return set(core.cancelled), dict(core.cancelling)

    assert asyncio.run(churn()) == (set(), {})


def test_deleted_topics_leave_no_stream_record(track: Tracker) -> None:
    # Until 2026-12-05 the server kept the stream sequence number (and cached listener
    # match) of every topic ever published to: topic create + publish + delete grew it
    # by one entry per cycle, forever.
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("kept")
    client.publish("kept", b"x")
    start = client.server_stats()["stream_topics"]
    assert start == 1
    for index in range(CYCLES):
        client.create_topic(f"churn{index}")
        client.publish(f"churn{index}", b"x")
        client.delete_topic(f"churn{index}")
    assert client.server_stats()["stream_topics"] == start


def test_a_topic_made_again_streams_from_sequence_one(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.publish("t", b"old")
    client.delete_topic("t")
    client.create_topic("t")
    with client.listen("t") as listener:
        client.publish("t", b"new")
        message = next(iter(listener))
    assert (message.body, message.sequence) == (b"new", 1)
    assert listener.gaps == 0


def test_messages_acked_one_by_one_are_not_held_until_their_lease_ends(
        track: Tracker) -> None:
    # Until 2026-12-05 the broker forgot a delivery's receipts (kept to release them if
    # the session ends) only when the whole delivery was acked in one request: a
    # receive of several messages acked one by one stayed held for the visibility
    # timeout, so ``held_receipts`` grew with the ack rate times the lease.
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q", visibility_timeout=600.0)
    for _ in range(CYCLES // 4):
        client.send_batch("q", [b"x"] * 4)
        messages = client.receive("q", max_messages=4)
        assert len(messages) == 4
        for message in messages:
            message.ack()
        client.send_batch("q", [b"x"] * 3)
        for message in client.receive("q", max_messages=3):
            client.ack(message.receipt)
    client.list_queues()   # a round trip: every ack sent before it is through
    assert client.server_stats()["held_receipts"] == 0
