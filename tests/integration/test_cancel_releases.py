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
