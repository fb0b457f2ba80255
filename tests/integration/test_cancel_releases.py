"""A cancelled consumer gives back what was pushed to it and never read.

Until 2026-12-05 the messages a consumer held unread when it was cancelled — the rest of
the push its iteration was in, the pushes it had not started, and those that crossed the
CANCEL — stayed leased to the session until their visibility timeout: a ``for`` loop
over ``client.consume(...)`` left by ``break`` kept up to ``prefetch`` messages from
every other consumer for 30 s. Now they are released (visible again at once; the
delivery stays counted), in both clients. The queues here have a visibility timeout of
a minute, so only a release lets them back within the tests' deadline.
"""

from __future__ import annotations

import asyncio

from conftest import Tracker, wait_until

from fastfanout import aio
from fastfanout.client import Client

COUNT = 50
PREFETCH = 20
VISIBILITY = 60.0


def _queue(track: Tracker, endpoint: str) -> Client:
    client = track.client(endpoint)
    client.create_queue("q", visibility_timeout=VISIBILITY)
    for index in range(COUNT):
        client.send("q", b"%d" % index)
    return client


def _settled_back(client: Client, visible: int) -> None:
    """Wait until nothing of ``q`` is leased and ``visible`` messages are visible."""
    def back() -> bool:
        queue = client.stats().queues["q"]
        return queue.leased == 0 and queue.visible == visible
    wait_until(back, what="the unread messages to be released")


def test_cancel_gives_back_what_was_pushed_and_not_read(track: Tracker) -> None:
    endpoint = track.server().endpoint
    client = _queue(track, endpoint)
    consumer = client.consume("q", prefetch=PREFETCH)
    first = next(iter(consumer))
    first.ack()
    wait_until(lambda: client.stats().queues["q"].leased > 1,
               what="more pushes")
    consumer.cancel()
    _settled_back(client, COUNT - 1)
    assert list(consumer) == []   # what it held is not yielded after the cancel
    again = client.receive("q", max_messages=COUNT)
    assert len(again) == COUNT - 1 and first.body not in {m.body for m in again}
    # the pushed ones were delivered once already: that delivery stays counted
    assert max(m.receive_count for m in again) == 2


def test_a_for_loop_left_by_break_gives_back_the_rest_of_its_push(track: Tracker) -> None:
    endpoint = track.server().endpoint
    client = _queue(track, endpoint)
    for message in client.consume("q", prefetch=PREFETCH):
        message.ack()
        break
    _settled_back(client, COUNT - 1)


def test_the_asyncio_client_gives_back_the_rest_after_break_or_aclose(
        track: Tracker) -> None:
    endpoint = track.server().endpoint
    client = _queue(track, endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as consumer_client:
            # left by break: the cursor is dropped, its consumer cancelled
            async for message in consumer_client.consume("q", prefetch=PREFETCH):
                message.ack()
                break
            await asyncio.to_thread(_settled_back, client, COUNT - 1)
            # closed by aclose() in the middle of a push
            messages = consumer_client.consume("q", prefetch=PREFETCH)
            async for message in messages:
                message.ack()
                break
            await messages.aclose()
            await asyncio.to_thread(_settled_back, client, COUNT - 2)

    asyncio.run(main())


TRIALS = 8
"""Consumers left per client: the double count came in about half of the trials."""


def _counted_once(client: Client, queue: str) -> None:
    """The four unread messages of ``queue`` are back once: visible, their receive count
    that of one delivery, none dead-lettered (``max_receive_count`` 2)."""
    def back() -> bool:
        stats = client.stats().queues[queue]
        return (stats.visible == 4 and stats.leased == 0
                and client.server_stats()["consumers"] == 0)
    wait_until(back, what="the unread messages released and the consumer gone")
    stats = client.stats().queues[queue]
    assert (stats.delivered, stats.redelivered, stats.dead_lettered) == (5, 0, 0), stats
    got = client.receive(queue, max_messages=10)
    assert sorted(m.receive_count for m in got) == [2, 2, 2, 2]


def _dead_letter_queue(client: Client, queue: str) -> None:
    client.create_queue(f"{queue}-dlq")
    client.create_queue(queue, max_receive_count=2, dead_letter_queue=f"{queue}-dlq",
                        visibility_timeout=VISIBILITY)
    client.send_batch(queue, [b"a", b"b", b"c", b"d", b"e"])


def test_a_consumer_left_counts_each_unread_delivery_once(track: Tracker) -> None:
    """``for m in consume(q): break``: the rest of the push was released before the
    consumer's CANCEL reached the broker; the broker pushed it back to that consumer (its
    credit returned), and the CANCEL released it again: each delivery counted twice, and
    with ``max_receive_count`` 2 dead-lettered without anyone reading it."""
    endpoint = track.server().endpoint
    client = track.client(endpoint)
    for trial in range(TRIALS):
        queue = f"q{trial}"
        _dead_letter_queue(client, queue)
        for message in client.consume(queue, prefetch=10):
            message.ack()
            break
        _counted_once(client, queue)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as consumer_client:
            for trial in range(TRIALS):
                queue = f"a{trial}"
                _dead_letter_queue(client, queue)
                messages = consumer_client.consume(queue, prefetch=10)
                async for message in messages:
                    message.ack()
                    break
                if trial % 2:
                    await messages.aclose()
                else:
                    del messages   # dropped: the loop's finalizer closes the iteration
                await asyncio.to_thread(_counted_once, client, queue)

    asyncio.run(main())
