"""The per-message loop over the wire: messages made in C, acks queued in C (issue 15)."""

from __future__ import annotations

import asyncio
from typing import Any
from typing import Any as Tracker

import pytest

from fastfanout import Broker, InvalidArgument, StaleReceipt, aio
from fastfanout._ext.received import MessageCursor, RemoteMessage
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode


def _consumer_of_three(track: Tracker) -> tuple[Tracker, Tracker, Tracker, list[bytes]]:
    """(server, client, consumer, settles): a, b and c pushed together, nothing acked.

    ``settles`` collects the payload of every SETTLE the client queues.
    """
    server = track.server()
    client = track.client(server.endpoint, linger=30.0)
    client.create_queue("q", visibility_timeout=60.0)
    settles: list[list[bytes]] = []

    def counted(opcode: int, payload: list[bytes]) -> None:
        if opcode == Opcode.SETTLE:
            settles.append(payload)

    client.connection.core.on_request = counted
    client.send_batch("q", [b"a", b"b", b"c"])
    consumer = client.consume("q", prefetch=100, timeout=5.0)
    return server, client, consumer, settles


def test_iterating_a_consumer_steps_a_native_cursor(track: Tracker) -> None:
    consumer = _consumer_of_three(track)[2]
    iterator = iter(consumer)
    assert type(iterator) is MessageCursor   # no Python frame per message
    messages = [next(iterator) for _ in range(3)]
    assert all(type(message) is RemoteMessage for message in messages)
    assert [message.body for message in messages] == [b"a", b"b", b"c"]
    assert [bytes(memoryview(message)) for message in messages] == [b"a", b"b", b"c"]
    assert [message.queue for message in messages] == ["q", "q", "q"]
    assert [message.receive_count for message in messages] == [1, 1, 1]
    assert messages[0].attributes == {} and messages[0].dead_letter is None
    consumer.cancel()


def test_acks_of_every_message_of_a_push_settle_it_whole(track: Tracker) -> None:
    _, client, consumer, settles = _consumer_of_three(track)
    for got, message in enumerate(consumer, 1):
        message.ack()
        if got == 3:
            break
    assert settles == []                 # queued in C within the linger
    consumer.cancel()                    # sends them
    # one receipts frame for the push, in delivery order: the server forgets it at once
    assert [[len(frame) for frame in payload[:-1]] for payload in settles] == [[24]]
    assert settles[0][-1] == protocol.SETTLE_EACH
    assert client.stats().queues["q"].acked == 3
    assert client.server_stats()["held_receipts"] == 0


def test_a_stale_receipt_among_message_acks_fails_alone(track: Tracker) -> None:
    server, client, consumer, _ = _consumer_of_three(track)
    a, b, c = (next(consumer) for _ in range(3))
    client.ack(b.receipt)                # acked by receipt: b's receipt is now stale
    for message in (a, b, c):
        message.ack()                    # one frame a, b, c: refused whole at first
    consumer.cancel()
    track.wait_until(lambda: server.counters["error.stale_receipt"] == 1, what="counted")
    stats = client.stats().queues["q"]
    assert stats.acked == 3 and stats.leased == 0


def test_message_acks_go_at_once_at_half_the_prefetch(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint, linger=30.0)
    client.create_queue("q", visibility_timeout=60.0)
    client.send_batch("q", [b"%d" % index for index in range(4)])
    consumer = client.consume("q", prefetch=4, timeout=5.0)
    next(consumer).ack()
    assert client.stats().queues["q"].acked == 0    # 1 of 4 owed: queued
    next(consumer).ack()                            # 2 of 4: sent without the linger
    track.wait_until(lambda: client.stats().queues["q"].acked == 2, what="acks sent")
    consumer.cancel()


def test_background_thread_sends_message_acks_when_nobody_waits(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint, linger=0.01)
    client.create_queue("q", visibility_timeout=60.0)
    client.send("q", b"a")
    consumer = client.consume("q", prefetch=100, timeout=5.0)
    next(consumer).ack()
    track.wait_until(lambda: client.stats().queues["q"].acked == 1, what="ack sent")
    consumer.cancel()


def test_receive_makes_native_messages(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.send("q", b"body", attributes={"k": "v"}, group_id=None, dedup_id="d1",
                priority=None)
    (message,) = client.receive("q")
    assert type(message) is RemoteMessage
    assert (message.body, message.attributes, message.dedup_id, message.group_id,
            message.queue) == (b"body", {"k": "v"}, "d1", None, "q")
    message.ack()    # a received message's ack waits for the broker
    assert client.stats().queues["q"].acked == 1


def test_the_asyncio_consumer_is_a_native_iterator(track: Tracker) -> None:
    import asyncio

    from fastfanout import aio
    from fastfanout._ext.received import AsyncMessageCursor

    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q", visibility_timeout=60.0)
            await client.send_batch("q", [b"a", b"b", b"c"])
            settles: list[list[bytes]] = []

            def counted(opcode: int, payload: list[bytes]) -> None:
                if opcode == Opcode.SETTLE:
                    settles.append(payload)

            client.connection.core.on_request = counted
            messages = client.consume("q", prefetch=100, timeout=5.0)
            assert type(messages) is AsyncMessageCursor
            bodies = []
            async for message in messages:
                assert type(message) is RemoteMessage
                bodies.append(message.body)
                await message.ack()
                if len(bodies) == 3:
                    break
            await messages.aclose()   # cancels the consumer
            assert bodies == [b"a", b"b", b"c"]
            deadline = asyncio.get_running_loop().time() + 5.0
            while (await client.stats()).queues["q"].acked < 3:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            # acked in one loop iteration: one SETTLE of one frame (the push), SETTLE_EACH
            assert [[len(frame) for frame in payload] for payload in settles] == [[24, 4]]
            assert settles[0][-1] == protocol.SETTLE_EACH

    asyncio.run(main())


def test_a_producers_offer_is_one_native_call(track: Tracker) -> None:
    import types

    import pytest

    from fastfanout.errors import Closed, InvalidArgument

    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    producer = client.producer("t", batch_messages=3)
    assert isinstance(producer.offer, types.BuiltinMethodType)   # no Python frame
    for index in range(7):
        producer.offer(b"%d" % index)
    producer.offer(bytearray(b"7"))
    with pytest.raises(InvalidArgument):
        producer.offer("not bytes")
    assert producer.offered == 8
    producer.close()
    with pytest.raises(Closed):
        producer.offer(b"late")
    assert producer.offered == 8 and client.stats().queues["q"].enqueued == 8


def test_publish_nowait_of_a_bare_body_fills_open_batches_natively(track: Tracker) -> None:
    import pytest

    from fastfanout.errors import InvalidArgument

    server = track.server()
    client = track.client(server.endpoint, batch_messages=10, linger=30.0)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    sent: list[int] = []
    client.connection.core.on_request = lambda opcode, payload: sent.append(opcode)
    futures = [client.publish_nowait("t", b"%d" % index) for index in range(25)]
    futures.append(client.send_nowait("q", bytearray(b"direct")))
    with pytest.raises(InvalidArgument):
        client.publish_nowait("t", "text")   # refused before anything is queued
    with pytest.raises(InvalidArgument):
        client.publish_nowait(7, b"x")       # type: ignore[arg-type]
    assert sent.count(Opcode.PUBLISH) == 2   # two full batches left at once; 5 wait
    ids = [future.result().message_id for future in futures]
    assert ids == sorted(ids) and len(set(ids)) == 26
    assert client.stats().queues["q"].enqueued == 26


def test_asyncio_publish_nowait_of_bare_bodies_goes_in_one_request(track: Tracker) -> None:
    import asyncio

    from fastfanout import aio

    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0, batch_messages=10) as client:
            await client.create_topic("t")
            await client.create_queue("q")
            await client.subscribe("t", "q")
            sent: list[int] = []
            client.connection.core.on_request = lambda opcode, payload: sent.append(opcode)
            futures = [client.publish_nowait("t", b"%d" % index) for index in range(25)]
            assert sent.count(Opcode.PUBLISH) == 2   # full batches at once; 5 at the end
            ids = [(await future).message_id for future in futures]
            assert sent.count(Opcode.PUBLISH) == 3
            assert ids == sorted(ids) and len(set(ids)) == 25

    asyncio.run(main())


def test_publish_nowait_is_one_native_call_making_only_its_future(track: Tracker) -> None:
    import sys
    import types

    from fastfanout._ext.offers import PublishFuture

    server = track.server()
    client = track.client(server.endpoint, batch_messages=100, linger=30.0)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    # the client's own methods are the gate's: no Python frame per call
    assert isinstance(client.publish_nowait, types.BuiltinMethodType)
    assert isinstance(client.send_nowait, types.BuiltinMethodType)
    body = b"x" * 64
    client.send_nowait(queue="q", body=b"warm-up").result()
    refs = sys.getrefcount(body)
    futures = [client.publish_nowait("t", body) for _ in range(250)]
    assert sys.getrefcount(body) == refs                # copied into the frame
    assert all(type(future) is PublishFuture for future in futures)
    with_options = client.publish_nowait("t", b"a", attributes={"k": "v"})
    direct = client.send_nowait(queue="q", body=b"d")
    ids = [future.result().message_id for future in futures]
    assert ids == sorted(ids) and len(set(ids)) == 250
    assert with_options.result().deliveries == 1 and direct.result().deliveries == 1
    # (what a future holds is checked in tests/unit/test_publish_futures.py: here the
    # client's background thread takes references of its own to the connection)
    assert client.stats().queues["q"].enqueued == 253


def test_asyncio_publish_nowait_is_one_native_call(track: Tracker) -> None:
    import asyncio
    import types

    from fastfanout import aio

    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0, batch_messages=10) as client:
            await client.create_topic("t")
            await client.create_queue("q")
            await client.subscribe("t", "q")
            assert isinstance(client.publish_nowait, types.BuiltinMethodType)
            assert isinstance(client.send_nowait, types.BuiltinMethodType)
            futures = [client.publish_nowait("t", b"%d" % index) for index in range(15)]
            futures.append(client.send_nowait("q", b"direct", attributes={"k": "v"}))
            assert all(isinstance(future, asyncio.Future) for future in futures)
            results = [await future for future in futures]
            ids = [result.message_id for result in results]
            assert ids == sorted(ids) and len(set(ids)) == 16
            assert (await client.stats()).queues["q"].enqueued == 16

    asyncio.run(main())


def test_a_settle_call_after_a_queued_ack_comes_after_it(track: Tracker) -> None:
    # message.ack() only queues its receipt (linger 30 s here); a nack, term or ack of
    # the same delivery made after it used to reach the broker first: the ack was then
    # stale and the message came back (or was dead-lettered), unlike the embedded broker
    _, client, consumer, _ = _consumer_of_three(track)
    a, b, c = (next(consumer) for _ in range(3))
    a.ack()
    with pytest.raises(StaleReceipt):
        a.nack()
    b.ack()
    with pytest.raises(StaleReceipt):
        client.term(b.receipt)
    c.ack()
    with pytest.raises(StaleReceipt):
        c.ack()
    stats = client.stats().queues["q"]
    assert (stats.acked, stats.visible, stats.leased, stats.dead_lettered) == (3, 0, 0, 0)
    consumer.cancel()


def test_an_asyncio_settle_after_a_queued_ack_comes_after_it(track: Tracker) -> None:
    server = track.server()

    async def main() -> tuple[int, int, int, int]:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q", visibility_timeout=60.0)
            await client.send_batch("q", [b"a", b"b", b"c"])
            received = await client.receive("q", max_messages=3, wait=5.0)
            for message, then in zip(received, ("nack", "term", "extend"), strict=True):
                message.ack()                      # queued for this loop iteration
                await (message.extend(5.0) if then == "extend"
                       else getattr(message, then)())   # sent at once, after the ack
            stats = (await client.stats()).queues["q"]
            return stats.acked, stats.visible, stats.leased, stats.dead_lettered

    assert asyncio.run(main()) == (3, 0, 0, 0)


def refuse_bad_settles_then_ack_the_batch(api: Any) -> tuple[int, int]:
    """A pushed batch: bad nack and extend arguments refused, then the batch acked;
    returns (acked, leased)."""
    api.create_queue("q", visibility_timeout=60.0)
    api.send_batch("q", [b"a", b"b"])
    consumer = api.consume("q", prefetch=10)
    batch = consumer.next_batch(5.0)
    for bad in (lambda m: m.nack(delay=-1), lambda m: m.nack(delay="soon"),
                lambda m: m.extend(-1.0)):
        with pytest.raises(InvalidArgument):
            bad(batch[0])
    batch.ack()   # the refused calls did nothing: the batch ack covers the message
    consumer.cancel()
    stats = api.stats().queues["q"]
    return stats.acked, stats.leased


def test_a_refused_nack_leaves_the_message_to_its_batch_ack(track: Tracker) -> None:
    # the refused nack marked the message settled: the batch ack left it out, leased
    with Broker() as broker:
        assert refuse_bad_settles_then_ack_the_batch(broker) == (2, 0)
    server = track.server()
    assert refuse_bad_settles_then_ack_the_batch(track.client(server.endpoint)) == (2, 0)


def test_asyncio_message_settles_refuse_bad_arguments(track: Tracker) -> None:
    # they were sent, refused by the broker and only counted: the call returned DONE
    server = track.server()

    async def main() -> tuple[int, int]:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q", visibility_timeout=60.0)
            await client.send("q", b"a")
            (message,) = await client.receive("q", wait=5.0)
            for bad in (lambda: message.nack(delay=-1), lambda: message.extend(-5.0),
                        lambda: message.extend("x")):
                with pytest.raises(InvalidArgument):
                    bad()
            await message.ack()   # queued: it leaves when this loop iteration ends
            deadline = asyncio.get_running_loop().time() + 5.0
            while (stats := (await client.stats()).queues["q"]).acked < 1:
                assert asyncio.get_running_loop().time() < deadline, "ack missing"
                await asyncio.sleep(0.01)
            return stats.acked, stats.leased

    assert asyncio.run(main()) == (1, 0)
    assert server.counters["error.invalid_argument"] == 0
