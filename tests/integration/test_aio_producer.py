"""AsyncClient.producer: synchronous offers, awaited drain and flush, refusals kept."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any
from typing import Any as Tracker

import pytest

import fastfanout
from fastfanout import aio
from fastfanout.wire.protocol import Opcode


async def _setup(client: aio.AsyncClient, **queue_settings: Tracker) -> None:
    await client.create_topic("t")
    await client.create_queue("q", **queue_settings)
    await client.subscribe("t", "q")


async def _bodies(client: aio.AsyncClient) -> list[bytes]:
    bodies: list[bytes] = []
    while batch := await client.receive("q", max_messages=1000):
        bodies += [m.body for m in batch]
        await client.ack_batch([m.receipt for m in batch])
    return bodies


def _count_publishes(client: aio.AsyncClient) -> list[int]:
    sent: list[int] = []

    def counted(opcode: int, payload: list[bytes]) -> None:
        if opcode == Opcode.PUBLISH:
            sent.append(opcode)

    client.connection.core.on_request = counted
    return sent


def test_full_frames_leave_at_once_up_to_max_in_flight(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client)
            sent = _count_publishes(client)
            producer = await client.producer("t", batch_messages=10, max_in_flight=2,
                                             linger=60)
            for n in range(45):
                producer.offer(b"m%d" % n)
            assert len(sent) == 2            # two in flight, two more full frames queued
            assert producer.pending == 45
            await producer.drain()           # answers sent the queued frames
            assert len(sent) == 4 and producer.published >= 20
            results = await producer.flush()
            assert results is not None and len(results) == 5     # the open frame
            assert len(sent) == 5 and producer.published == 45 and producer.pending == 0
            assert await producer.flush() is None
            assert await _bodies(client) == [b"m%d" % n for n in range(45)]
            async with await client.producer("t") as second:
                second.offer(b"closing")
            assert second.published == 1       # close() flushed
            with pytest.raises(fastfanout.Closed):
                second.offer(b"late")

    asyncio.run(main())


def test_a_refused_frame_is_kept_until_a_flush_succeeds(track: Tracker,
                                                        endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client, max_messages=15, overflow="reject")
            producer = await client.producer("t", batch_messages=10, max_in_flight=1,
                                             linger=60)
            for n in range(20):
                producer.offer(b"a%d" % n)    # frame 1 leaves, frame 2 waits for room
            for n in range(10):
                producer.offer(b"b%d" % n)    # frame 3 waits too
            with pytest.raises(fastfanout.QueueFull):
                await producer.flush()        # frame 1 in (10 of 15), frame 2 refused
            assert producer.refused_frames == 1 and producer.pending == 20
            with pytest.raises(fastfanout.QueueFull):
                producer.offer(b"c")          # while frames are kept: refused, not added
            assert producer.offered == 30 and producer.pending == 20
            assert len(await _bodies(client)) == 10          # room for one frame
            with pytest.raises(fastfanout.QueueFull):
                await producer.flush()        # frame 2 in, frame 3 refused again
            assert producer.pending == 10
            assert len(await _bodies(client)) == 10
            assert await producer.flush() is not None        # frame 3 in
            producer.offer(b"c")
            await producer.close()
            assert producer.published == 31 and producer.pending == 0
            assert await _bodies(client) == [b"b%d" % n for n in range(10)] + [b"c"]

    asyncio.run(main())


def test_a_refusal_surfaces_at_drain(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client)
            producer = await client.producer("t", batch_messages=10, max_in_flight=1,
                                             linger=60)
            await client.delete_topic("t")
            for n in range(20):
                producer.offer(b"x%d" % n)    # refused: no topic
            with pytest.raises(fastfanout.NotFound):
                await producer.drain()
            with pytest.raises(fastfanout.NotFound):
                producer.offer(b"y")
            assert producer.pending == 20 and producer.offered == 20
            await client.create_topic("t")
            await client.subscribe("t", "q")
            await producer.flush()            # kept frames, oldest first
            producer.offer(b"y")
            await producer.close()
            assert producer.published == 21
            assert await _bodies(client) == [b"x%d" % n for n in range(20)] + [b"y"]

    asyncio.run(main())


def test_bad_producer_arguments_are_refused(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client)
            with pytest.raises(fastfanout.NotFound):
                await client.producer("missing")
            for options in ({"batch_messages": 0}, {"max_in_flight": "8"}, {"linger": -1}):
                with pytest.raises(fastfanout.InvalidArgument):
                    await client.producer("t", **options)
            producer = await client.producer("t")
            with pytest.raises(fastfanout.InvalidArgument):
                producer.offer(42)   # type: ignore[arg-type]
            assert producer.offered == 0 and producer.pending == 0

    asyncio.run(main())


def test_closing_the_client_flushes_its_open_producers(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client, max_messages=5, overflow="reject")
            async with aio.connect(endpoint, timeout=5.0) as publisher:
                producer = await publisher.producer("t")
                for n in range(3):
                    producer.offer(b"open %d" % n)
            assert producer.published == 3
            assert await _bodies(client) == [b"open 0", b"open 1", b"open 2"]
            publisher = await aio.connect(endpoint, timeout=5.0)
            producer = await publisher.producer("t", linger=60)
            for n in range(6):
                producer.offer(b"%d" % n)
            with pytest.raises(fastfanout.QueueFull):
                await publisher.close()
            assert publisher.closed and producer.pending == 6
            assert await _bodies(client) == []

    asyncio.run(main())


def test_a_frame_that_does_not_fill_leaves_after_linger(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def enqueued(client: aio.AsyncClient, count: int) -> None:
        deadline = asyncio.get_running_loop().time() + 10.0
        while (await client.stats()).queues["q"].enqueued < count:
            assert asyncio.get_running_loop().time() < deadline, "the frame never left"
            await asyncio.sleep(0.005)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client)
            producer = await client.producer("t")    # linger 0: at the iteration's end
            for n in range(3):
                producer.offer(b"m%d" % n)
            await enqueued(client, 3)
            slow = await client.producer("t", linger=0.02)
            slow.offer(b"late")
            await enqueued(client, 4)   # it left on its own (no flush yet)
            # a round's publish answers go after its other replies: wait for them
            await slow.flush()
            assert producer.published == 3 and slow.published == 1
            assert await _bodies(client) == [b"m0", b"m1", b"m2", b"late"]

    asyncio.run(main())


def test_a_frame_refused_for_a_message_too_large_is_dropped_once(track: Tracker,
                                                                endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client, max_message_size=100)
            producer = await client.producer("t", batch_messages=2, max_in_flight=1,
                                             linger=60)
            producer.offer(b"a")
            producer.offer(b"x" * 101)        # frame 1 leaves: the broker refuses it
            producer.offer(b"b")
            producer.offer(b"c")              # frame 2 waits for room, then goes on
            with pytest.raises(fastfanout.MessageTooLarge):
                await producer.flush()        # raised once...
            assert producer.refused_frames == 1 and producer.dropped_frames == 1
            assert producer.pending == 0 and producer.published == 2
            producer.offer(b"d")              # ...and the producer goes on
            await producer.close()
            assert producer.published == 3
            assert await _bodies(client) == [b"b", b"c", b"d"]

    asyncio.run(main())


def test_a_body_over_the_request_limit_is_refused_at_offer(track: Tracker,
                                                          endpoint: str) -> None:
    track.server(endpoint, max_request_bytes=64 * 1024)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client)
            producer = await client.producer("t", batch_messages=3, linger=60)
            producer.offer(b"a")
            with pytest.raises(fastfanout.RequestTooLarge, match="max_request_bytes"):
                producer.offer(b"x" * (65 * 1024))
            assert producer.offered == 1 and producer.pending == 1
            producer.offer(b"b")
            await producer.close()
            assert await _bodies(client) == [b"a", b"b"]

    asyncio.run(main())


def test_a_flush_cancelled_while_it_resends_a_kept_frame_spoils_no_later_flush(
        track: Tracker, endpoint: str) -> None:
    # until 2026-12-05 the resent frame stayed in flight for good: the next flush() and
    # close() waited the client's timeout plus hold_timeout (35 s) and raised
    # BrokenConnection, and the frame's refusal was lost with it
    track.server(endpoint)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client, max_messages=15, overflow="reject")
            producer = await client.producer("t", batch_messages=10, max_in_flight=1,
                                             linger=60)
            for n in range(20):
                producer.offer(b"a%d" % n)
            with pytest.raises(fastfanout.QueueFull):
                await producer.flush()        # frame 2 refused: kept
            sent = _count_publishes(client)
            flushing = asyncio.ensure_future(producer.flush())
            deadline = loop.time() + 10.0
            while not sent:                   # until it sent the kept frame again
                assert loop.time() < deadline
                await asyncio.sleep(0)
            flushing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flushing
            async with asyncio.timeout(10.0):
                with pytest.raises(fastfanout.QueueFull):
                    await producer.flush()    # the cancelled resend's refusal
                assert producer.pending == 10
                assert len(await _bodies(client)) == 10
                assert await producer.flush() is not None
                await producer.close()
            assert producer.published == 20 and producer.pending == 0
            assert await _bodies(client) == [b"a%d" % n for n in range(10, 20)]

    asyncio.run(main())


def test_offers_and_flushes_from_another_thread_are_refused_and_change_nothing(
        track: Tracker, endpoint: str) -> None:
    # until 2026-12-05 another thread's offers were added unchecked until one filled the
    # frame; that frame's send was refused there (WrongEventLoop) and kept, so the
    # loop's own next offer raised WrongEventLoop
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client)
            producer = await client.producer("t", batch_messages=3, linger=60)
            producer.offer(b"own0")
            refused: list[BaseException] = []

            def attempt(call: Any) -> None:
                try:
                    call()
                except fastfanout.WrongEventLoop as exc:
                    refused.append(exc)

            def foreign() -> None:
                for n in range(3):
                    attempt(functools.partial(producer.offer, b"foreign%d" % n))
                attempt(lambda: producer.offer_batch([b"foreign"]))
                attempt(lambda: asyncio.run(producer.flush()))
                attempt(lambda: asyncio.run(producer.drain()))

            thread = threading.Thread(target=foreign)
            thread.start()
            thread.join(10.0)
            assert not thread.is_alive()
            assert len(refused) == 6
            assert producer.offered == 1 and producer.pending == 1
            producer.offer(b"own1")
            await producer.close()
            assert producer.published == 2
            assert await _bodies(client) == [b"own0", b"own1"]

    asyncio.run(main())


def test_a_producer_whose_topic_was_deleted_discards_its_messages_and_closes(
        track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _setup(client)
            producer = await client.producer("t", batch_messages=10, max_in_flight=1,
                                             linger=60)
            await client.delete_topic("t")
            for n in range(25):
                producer.offer(b"x%d" % n)    # refused: no topic
            with pytest.raises(fastfanout.NotFound):
                await producer.close()
            assert producer.pending == 25
            assert await producer.discard() == 25
            assert producer.pending == 0 and producer.discarded == 25
            await producer.close()            # nothing left: it closes
            with pytest.raises(fastfanout.Closed):
                producer.offer(b"late")
            assert producer.published == 0

    asyncio.run(main())
