"""Client behaviour: pipelined publishes, listeners with gap counts, the asyncio face."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any as Tracker

import pytest

import fastfanout
from fastfanout import aio
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode


def test_publish_nowait_batches_and_resolves(track: Tracker, endpoint: str) -> None:
    server = track.server(endpoint)
    client = track.client(endpoint, batch_messages=100, linger=0.001)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    futures = [client.publish_nowait("t", b"%d" % i) for i in range(1050)]
    # 10 batches left on size; the last 50 go after the linger, with no flush() call
    track.wait_until(lambda: futures[-1].done() or client.connection.pump(0.01) is not None,
                     what="the linger flush")
    ids = [future.result().message_id for future in futures]
    assert ids == sorted(ids) and len(set(ids)) == 1050
    assert server.counters["requests"] < 100  # batched, not one request per message
    assert client.stats().queues["q"].enqueued == 1050
    client.close()


def test_batch_error_reaches_every_future(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("small", max_messages=2)
    futures = [client.send_nowait("small", b"x") for _ in range(3)]
    client.flush()
    for future in futures:
        with pytest.raises(fastfanout.QueueFull):
            future.result()
    with pytest.raises(fastfanout.InvalidArgument):
        client.publish("t", "not bytes")  # type: ignore[arg-type]
    client.close()


def test_listener_follows_a_pattern(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    for topic in ("ticks.a", "ticks.b", "tickets"):
        client.create_topic(topic)
    listener = client.listen("ticks.*")   # live on return
    track.closeables.append(listener)
    client.publish("tickets", b"shares the prefix, not the pattern")
    client.publish_batch("ticks.a", [b"1", b"2"])
    first = listener.recv_batch(5.0)
    assert first is not None and [m.sequence for m in first] == [1, 2]
    client.publish("ticks.b", b"other topic")
    other = next(listener)
    assert (other.topic, other.sequence, other.body) == ("ticks.b", 1, b"other topic")
    assert listener.received == 3 and listener.gaps == 0 and listener.malformed == 0
    client.close()


def test_asyncio_client(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await client.create_queue("q")
            await client.create_topic("t")
            await client.subscribe("t", "q")
            result = await client.publish("t", b"hello", attributes={"k": "v"})
            assert result.deliveries == 1
            await client.publish_batch("t", [b"a", b"b"])
            received = []
            async for message in client.consume("q", prefetch=2):
                received.append(message.body)
                await client.ack(message.receipt)
                if len(received) == 3:
                    break
            assert received == [b"hello", b"a", b"b"]
            with pytest.raises(fastfanout.NotFound):
                await client.receive("missing")
            stats = await client.stats()
            assert stats.queues["q"].acked == 3

    asyncio.run(main())


def test_idle_consumer_keeps_its_session(track: Tracker) -> None:
    # A consumer blocked in next_batch holds the client's socket for the whole wait: the
    # waiting thread itself must send the heartbeats, or the broker ends the session.
    # (a heartbeat timeout a loaded machine keeps: its heartbeats may lag a second)
    server = track.server(heartbeat_interval=0.1, heartbeat_timeout=2.0)
    client = track.client(server.endpoint)
    client.create_queue("q")
    consumer = client.consume("q", prefetch=10)
    assert consumer.next_batch(timeout=6.5) is None      # > 3 heartbeat timeouts, idle
    assert server.counters["sessions_expired"] == 0
    client.send("q", b"late")
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None and batch.body_list() == [b"late"]


def _consumer_with_linger(track: Tracker, linger: float, prefetch: int
                          ) -> tuple[Tracker, Tracker]:
    """A client with ``linger`` of a new server, and its consumer of queue q (60 s leases)."""
    client = track.client(track.server().endpoint, linger=linger)
    client.create_queue("q", visibility_timeout=60.0)
    return client, client.consume("q", prefetch=prefetch)


def _one_message_batches(client: Tracker, consumer: Tracker, count: int) -> None:
    """Send ``count`` messages one by one, receiving and acking each as its own batch."""
    for index in range(count):
        client.send("q", b"m%d" % index)
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None and len(batch) == 1
        batch.ack()


def test_batch_acks_wait_for_the_linger_and_go_together(track: Tracker) -> None:
    client, consumer = _consumer_with_linger(track, 30.0, 100)
    settles: list[list[bytes]] = []

    def counted_settle(opcode: int, payload: list[bytes]) -> None:
        if opcode == Opcode.SETTLE:
            settles.append(payload[:-1])   # the receipts frames (NO_CREDIT last)

    client.connection.core.on_request = counted_settle
    _one_message_batches(client, consumer, 3)
    # three sends were answered; the three acks are still queued in the client
    assert client.stats().queues["q"].leased == 3 and settles == []
    consumer.cancel()   # sends the queued acks first, as one SETTLE
    assert client.stats().queues["q"].acked == 3
    assert [[len(receipts) for receipts in batches] for batches in settles] == [[8, 8, 8]]
    # the server forgot the three pushed batches' receipts with that one SETTLE
    assert client.server_stats()["held_receipts"] == 0


def test_batch_acks_go_at_once_when_half_the_prefetch_is_owed(track: Tracker) -> None:
    client, consumer = _consumer_with_linger(track, 30.0, 4)
    _one_message_batches(client, consumer, 1)
    assert client.stats().queues["q"].leased == 1
    _one_message_batches(client, consumer, 1)   # 2 of 4 credits owed: sent without linger
    track.wait_until(lambda: client.stats().queues["q"].acked == 2, what="acks sent")
    consumer.cancel()


def test_batch_acks_go_when_the_linger_ends_during_a_wait(track: Tracker) -> None:
    client, consumer = _consumer_with_linger(track, 0.05, 100)
    _one_message_batches(client, consumer, 1)
    assert consumer.next_batch(timeout=0.5) is None   # the wait sends the due ack
    assert client.stats().queues["q"].acked == 1
    consumer.cancel()


def test_background_thread_sends_batch_acks_when_nobody_waits(track: Tracker) -> None:
    client, consumer = _consumer_with_linger(track, 0.01, 100)
    _one_message_batches(client, consumer, 1)
    track.wait_until(lambda: client.stats().queues["q"].acked == 1, what="ack sent")
    consumer.cancel()


def test_close_sends_queued_batch_acks(track: Tracker) -> None:
    client, consumer = _consumer_with_linger(track, 30.0, 100)
    _one_message_batches(client, consumer, 2)
    client.close()
    observer = track.client(client.endpoint)
    assert observer.stats().queues["q"].acked == 2


def test_a_stale_batch_in_a_settle_fails_alone(track: Tracker) -> None:
    client, consumer = _consumer_with_linger(track, 30.0, 100)
    server = track.servers[-1]
    client.send("q", b"a")
    first = consumer.next_batch(timeout=5.0)
    client.send("q", b"b")
    second = consumer.next_batch(timeout=5.0)
    assert first is not None and second is not None
    client.ack(first[0].receipt)   # acked directly: the batch's receipt is now stale
    first.ack()
    second.ack()                   # queued with the stale one, in the same SETTLE
    consumer.cancel()
    track.wait_until(lambda: server.counters["error.stale_receipt"] == 1, what="counted")
    assert client.stats().queues["q"].acked == 2 and client.stats().queues["q"].leased == 0


def _one_batch_of_three(track: Tracker, linger: float) -> tuple[Tracker, ...]:
    """(server, client, consumer, batch): a, b and c pushed together to a consumer."""
    client, consumer = _consumer_with_linger(track, linger, 100)
    client.send_batch("q", [b"a", b"b", b"c"])
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None and len(batch) == 3
    return track.servers[-1], client, consumer, batch


def test_pushed_message_acks_are_pipelined_with_the_consumers_settles(track: Tracker) -> None:
    server, client, consumer, batch = _one_batch_of_three(track, 30.0)
    client.ack(batch[2].receipt)   # acked already: stale when the message acks it
    for message in batch:
        message.ack()              # queued: no round trip, and no StaleReceipt raised
    assert client.stats().queues["q"].acked == 1
    consumer.cancel()              # one SETTLE, a frame per message: c's fails alone
    track.wait_until(lambda: server.counters["error.stale_receipt"] == 1, what="counted")
    assert client.stats().queues["q"].acked == 3


def test_a_batch_ack_after_single_settles_acks_only_the_rest(track: Tracker) -> None:
    server, client, consumer, batch = _one_batch_of_three(track, 0.0)
    batch[0].nack(delay=60.0)      # settled on its own (waits for the answer)
    batch.ack(wait=True)           # b and c only: the batch's whole frame would be stale
    stats = client.stats().queues["q"]
    assert stats.acked == 2 and stats.leased == 0 and stats.delayed == 1
    assert "error.stale_receipt" not in server.counters
    consumer.cancel()


def test_queued_acks_go_at_settle_max_frames(track: Tracker) -> None:
    client, consumer = _consumer_with_linger(track, 30.0, 5000)
    count = protocol.SETTLE_MAX_FRAMES + 76
    client.send_batch("q", [b"m"] * count)
    acked = 0
    while acked < count:
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None
        for message in batch:
            message.ack()          # a frame each; 2,500 credits would be half the prefetch
        acked += len(batch)
    # the first SETTLE_MAX_FRAMES went without the (30 s) linger, the rest wait for it
    track.wait_until(
        lambda: client.stats().queues["q"].acked == protocol.SETTLE_MAX_FRAMES,
        what="the full SETTLE")
    consumer.cancel()
    assert client.stats().queues["q"].acked == count


BAD_ATTRIBUTES = [{"a": 2**64}, {"a": -(2**63) - 1}, {"a": "\ud800"}, {"\ud800": "v"},
                  {"a": ["ok", "\udc00"]}, {"a": object()}, {"a": {"nested": 1}}]


def test_attributes_no_encoding_can_carry_are_refused_before_sending(
        track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    for attributes in BAD_ATTRIBUTES:
        with pytest.raises(fastfanout.InvalidArgument, match=r"64-bit|Unicode|has type"):
            client.send("q", b"x", attributes=attributes)
        with pytest.raises(fastfanout.InvalidArgument, match=r"64-bit|Unicode|has type"):
            client.send_nowait("q", b"x", attributes=attributes)
    for option in ("group_id", "dedup_id"):
        with pytest.raises(fastfanout.InvalidArgument, match=option):
            client.send("q", b"x", **{option: "\ud800"})

    async def refused() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as aclient:
            with pytest.raises(fastfanout.InvalidArgument, match="64-bit"):
                await aclient.send("q", b"x", attributes={"a": 2**64})

    asyncio.run(refused())
    client.send("q", b"kept", attributes={"top": 2**64 - 1, "bottom": -(2**63)})
    [message] = client.receive("q", max_messages=10)
    assert (message.body, message.attributes) == (b"kept", {"top": 2**64 - 1,
                                                            "bottom": -(2**63)})


@pytest.mark.parametrize("options", [
    {"timeout": "1"}, {"timeout": -1}, {"timeout": 0}, {"timeout": float("nan")},
    {"linger": -1}, {"linger": float("nan")}, {"batch_messages": 0}, {"batch_bytes": 0}])
def test_client_options_out_of_range_are_refused_before_connecting(
        track: Tracker, options: dict[str, object]) -> None:
    server = track.server()
    with pytest.raises(fastfanout.InvalidArgument):
        fastfanout.connect(server.endpoint, **options)   # type: ignore[arg-type]
    with pytest.raises(fastfanout.InvalidArgument, match="endpoint"):
        fastfanout.connect(123)   # type: ignore[arg-type]
    if "linger" not in options:
        async def refused() -> None:
            with pytest.raises(fastfanout.InvalidArgument):
                await aio.connect(server.endpoint, **options)   # type: ignore[arg-type]

        asyncio.run(refused())
    assert server.broker.stats().topics == {}   # nothing was asked of the broker


def test_flush_after_close_raises_closed(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    producer = client.producer("t")
    client.close()
    with pytest.raises(fastfanout.Closed):
        client.flush()
    with pytest.raises(fastfanout.Closed):
        producer.flush()

    async def closed() -> None:
        aclient = await aio.connect(server.endpoint, timeout=5.0)
        aproducer = await aclient.producer("t")
        await aclient.close()
        with pytest.raises(fastfanout.Closed):
            aclient.flush()
        with pytest.raises(fastfanout.Closed):
            await aproducer.flush()

    asyncio.run(closed())


def test_a_closed_client_and_producer_refuse_a_with_block(track: Tracker) -> None:
    # until 2026-12-05 `with client:` after close() entered the block, and `async with`
    # on a closed asyncio client started its connection again; now both raise Closed
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    producer = client.producer("t")
    client.close()
    with pytest.raises(fastfanout.Closed), producer:
        pytest.fail("entered a closed producer")
    with pytest.raises(fastfanout.Closed), client:
        pytest.fail("entered a closed client")

    async def closed() -> None:
        aclient = await aio.connect(server.endpoint, timeout=5.0)
        aproducer = await aclient.producer("t")
        await aclient.close()
        with pytest.raises(fastfanout.Closed):
            async with aproducer:
                pytest.fail("entered a closed producer")
        with pytest.raises(fastfanout.Closed):
            async with aclient:
                pytest.fail("entered a closed client")
        with pytest.raises(fastfanout.Closed):
            await aclient.list_topics()   # nothing was started again

    asyncio.run(closed())


def test_a_consume_loop_left_by_break_cancels_its_consumer(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("dlq")
    client.create_queue("q", visibility_timeout=1.0, max_receive_count=2,
                        dead_letter_queue="dlq")
    client.send("q", b"first")
    for message in client.consume("q", prefetch=10):   # the README's loop
        message.ack()
        break
    track.wait_until(lambda: client.server_stats()["consumers"] == 0,
                     what="the abandoned consumer cancelled")
    client.send("q", b"second")   # pushed to nobody: it stays deliverable
    [got] = client.receive("q", wait=5.0)
    assert (got.body, got.receive_count) == (b"second", 1)
    client.ack(got.receipt)
    assert client.stats().queues["dlq"].messages == 0
    # a consumer its user keeps is not cancelled: the iteration may go on
    consumer = client.consume("q", prefetch=10)
    client.send("q", b"third")
    for message in consumer:
        message.ack()
        break
    assert client.server_stats()["consumers"] == 1
    client.send("q", b"fourth")
    assert next(consumer).body == b"fourth"
    consumer.cancel()


def test_a_consumer_iterated_after_close_raises_closed(track: Tracker) -> None:
    # until 2026-12-05 an iteration resumed after close() yielded the rest of the pushed
    # frame (messages whose ack() raised Closed), then ended quietly (StopIteration)
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    for n in range(3):
        client.send("q", b"m%d" % n)
    consumer = client.consume("q", prefetch=10)
    iterator = iter(consumer)
    assert next(iterator).body == b"m0"
    idle = client.consume("q", prefetch=10)   # pushed nothing or something: no matter
    client.close()
    with pytest.raises(fastfanout.Closed):
        next(iterator)
    with pytest.raises(fastfanout.Closed):
        consumer.next_batch(timeout=1.0)
    with pytest.raises(fastfanout.Closed):
        next(idle)
    with pytest.raises(fastfanout.Closed):
        next(iter(client.consume_batches("q")))
    observer = track.client(server.endpoint)   # every lease was released by the goodbye
    track.wait_until(lambda: observer.stats().queues["q"].visible == 3,
                     what="the three messages visible again")


CLOSE_HUGE = """
import gc, sys
import fastfanout
for timeout in (2**70, 1e300, float("inf")):
    client = fastfanout.connect(sys.argv[1])
    client.close(timeout=timeout)
    del client
    gc.collect()   # the connection's socket and context go with it
print("closed")
"""


def test_close_with_a_timeout_longer_than_a_thread_join_takes_closes(track: Tracker) -> None:
    # until 2026-12-05 close(timeout=2**70) (or 1e300) raised OverflowError from the
    # background thread's join and left the socket open: the next collection hung in
    # the zmq context's term()
    server = track.server()
    done = subprocess.run([sys.executable, "-c", CLOSE_HUGE, server.endpoint],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "closed"), done.stderr


@pytest.mark.parametrize("first", ["ack", "nack", "term"])
def test_a_batch_settled_after_close_raises_closed_every_time(track: Tracker,
                                                              first: str) -> None:
    # until 2026-12-05 the refused call marked the batch settled: every later ack, nack
    # or term of it did nothing and raised nothing (both clients)
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.send_batch("q", [b"a", b"b"])
    batch = client.consume("q", prefetch=10).next_batch(timeout=5.0)
    assert batch is not None and len(batch) == 2
    client.close()
    for name in (first, "ack", "nack", "term"):
        with pytest.raises(fastfanout.Closed):
            getattr(batch, name)()

    async def main() -> None:
        aclient = await aio.connect(server.endpoint, timeout=5.0)
        await aclient.send_batch("q", [b"c", b"d"])
        abatch = await aclient.consume_batches("q", prefetch=10).__anext__()
        await aclient.close()
        for name in (first, "ack", "nack", "term"):
            with pytest.raises(fastfanout.Closed):
                getattr(abatch, name)()

    asyncio.run(main())
