"""Batches and producer frames stay under a broker's request limit.

A client fills a publish batch (``publish_nowait``) or a producer's frame up to its own
``batch_bytes`` (1 MiB by default). Against a broker with a smaller
``max_request_bytes`` the whole frame was refused with ``RequestTooLarge`` and its
messages dropped (a producer's reported once): every message fit, the frame did not.
Now a frame leaves before a message would take it past the broker's limits (told at
HELLO), so every message goes through, in both clients, for bare bodies, bodies with
attributes and array rows alike.
"""

from __future__ import annotations

import asyncio

import numpy as np
from conftest import Tracker

from fastfanout import aio

LIMIT = 64 * 1024          # the broker's max_request_bytes
BODY = b"x" * 1000         # 300 of them make ~340 KB of frame: five requests' worth
COUNT = 300


def test_batches_and_frames_leave_before_they_pass_the_request_limit(
        track: Tracker) -> None:
    server = track.server(max_request_bytes=LIMIT)
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    producer = client.producer("t")
    for _ in range(COUNT):
        producer.offer(BODY)
    producer.offer_batch(np.zeros((COUNT, len(BODY)), np.uint8))
    producer.flush()
    assert producer.dropped_frames == 0
    futures = [client.publish_nowait("t", BODY) for _ in range(COUNT)]
    futures += [client.publish_nowait("t", BODY, attributes={"k": "v"})
                for _ in range(COUNT)]
    client.flush()
    assert all(future.result(5.0).message_id for future in futures)
    assert client.stats().queues["q"].visible == 4 * COUNT
    producer.close()


def test_the_asyncio_clients_batches_and_frames_stay_under_the_limit(
        track: Tracker) -> None:
    server = track.server(max_request_bytes=LIMIT)
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as aclient:
            producer = await aclient.producer("t")
            for _ in range(COUNT):
                producer.offer(BODY)
            await producer.flush()
            futures = [aclient.publish_nowait("t", BODY) for _ in range(COUNT)]
            await aclient.flush()
            results = [await future for future in futures]
            assert all(result.message_id for result in results)
            await producer.close()

    asyncio.run(main())
    assert client.stats().queues["q"].visible == 2 * COUNT
