"""Array batches through a broker server: the blocking and asyncio clients and their
producers publish numpy arrays and (buffer, offsets) pairs, consumers read each pushed
batch as numpy views of its frame and ack it with a uint64 array."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from typing import Any
from typing import Any as Tracker

import numpy as np
import pytest

import fastfanout
from fastfanout import InvalidArgument, StaleReceipt, aio
from fastfanout._ext.shmring import RingFrame
from fastfanout.client.consumers import DeliveryBatch

DATA = np.arange(40 * 256, dtype=np.float32).reshape(40, 256)


def setup(client: Any) -> None:
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")


def test_the_blocking_client_publishes_arrays_and_views_batches(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    setup(client)
    assert len(client.publish_batch("t", DATA[:10])) == 10
    assert len(client.send_batch("q", (DATA[10:].tobytes(), 1024 * np.arange(31)))) == 30
    with pytest.raises(InvalidArgument, match="rows must each be C-contiguous"):
        client.publish_batch("t", np.asfortranarray(DATA))
    consumer = client.consume("q", prefetch=100)
    tables = []
    while sum(len(t) for t in tables) < 40:
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None
        table = batch.as_array(np.float32, (256,))
        assert np.shares_memory(table, np.frombuffer(batch.frame, np.uint8))
        assert batch.receive_counts.tolist() == [1] * len(batch)
        tables.append(table)
        batch.ack()
    assert (np.concatenate(tables) == DATA).all()
    consumer.cancel()
    track.wait_until(lambda: client.stats().queues["q"].acked == 40, what="40 acks")


def test_the_blocking_client_acks_a_uint64_array(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    setup(client)
    client.send_batch("q", DATA[:4].view(np.uint8))
    receipts = np.array([m.receipt for m in client.receive("q", max_messages=4)], np.uint64)
    with pytest.raises(InvalidArgument, match="must be >= 0"):
        client.ack_batch(np.append(receipts.astype(np.int64), -1))
    client.ack_batch(receipts)
    assert client.stats().queues["q"].acked == 4


def test_the_remote_producer_cuts_an_array_batch_into_frames(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    setup(client)
    with client.producer("t", batch_messages=7) as producer:
        producer.offer(b"first")
        producer.offer_batch(DATA[:20])
        producer.offer_batch((b"abcdef", np.array([0, 2, 6], dtype=np.int32)))
        with pytest.raises(InvalidArgument, match="2-D or structured array"):
            producer.offer_batch([b"a list"])
        assert producer.offered == 23
    messages = client.receive("q", max_messages=100)
    assert [m.body for m in messages] == [b"first", *(r.tobytes() for r in DATA[:20]),
                                          b"ab", b"cdef"]


def test_the_asyncio_client_views_batches_and_acks_arrays(track: Tracker) -> None:
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            setup_results = [await client.create_topic("t"), await client.create_queue("q"),
                             await client.subscribe("t", "q")]
            assert setup_results[0] is None
            await client.send_batch("q", DATA[:3])
            receipts = [m.receipt for m in await client.receive("q", max_messages=3, wait=5.0)]
            assert len(receipts) == 3
            await client.ack_batch(np.array(receipts, dtype=np.uint64))
            assert len(await client.publish_batch("t", DATA[:8])) == 8
            async with client.producer("t", batch_messages=5) as producer:
                await producer.offer_batch(DATA[8:20])
            got: list[np.ndarray[Any, Any]] = []
            async for batch in client.consume_batches("q", prefetch=100, timeout=1.0):
                got.append(batch.as_array(np.float32).copy())
                assert batch.ids.dtype == np.uint64 and len(batch.ids) == len(batch)
                if len(got) == 1:
                    batch[0].ack()        # settled on its own: the batch ack skips it
                await batch.ack()
                if sum(len(t) for t in got) == 20:
                    break
            assert (np.concatenate(got) == DATA[:20]).all()
            deadline = asyncio.get_running_loop().time() + 5.0
            while (await client.stats()).queues["q"].acked < 23:
                assert asyncio.get_running_loop().time() < deadline, "acks missing"
                await asyncio.sleep(0.01)

    asyncio.run(main())


def test_body_list_gives_the_bodies_as_bytes(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    setup(client)
    client.publish_batch("t", [b"a", b"b"])
    batch = client.consume("q").next_batch(timeout=5.0)
    assert batch is not None and batch.body_list() == [b"a", b"b"]
    assert isinstance(batch, DeliveryBatch) and bytes(batch.body(1)) == b"b"
    batch.ack()


def test_a_large_batch_is_a_view_of_the_clients_ring_until_it_is_dropped(
        track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint, local_channel=True, ring_bytes=1 << 20)
    setup(client)
    rows = np.arange(200 * 256, dtype=np.float32).reshape(200, 256)   # a 200 KiB frame
    assert len(client.publish_batch("t", rows)) == 200   # written into the ring in place
    ring = client.connection.transport.channel.incoming
    consumer = client.consume("q", prefetch=1000)
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None and len(batch) == 200
    table = batch.as_array(np.float32, (256,))
    assert (table == rows).all() and not table.flags.writeable
    assert type(batch.bodies.obj) is RingFrame        # no copy out of the ring
    assert np.shares_memory(table, np.frombuffer(batch.bodies, np.uint8))
    assert bytes(batch.frame) == bytes(batch.bodies)  # ``frame``: a copy
    assert ring.held == 1
    batch.ack()
    del batch
    assert ring.held == 1          # the table still views the frame: it stays held
    del table
    assert ring.held == 0 and ring.hold_refusals == 0
    consumer.cancel()
    track.wait_until(lambda: client.stats().queues["q"].acked == 200, what="200 acks")


def test_publishes_read_in_place_by_the_broker_arrive_whole_even_when_held(
        track: Tracker) -> None:
    # Over a local channel the broker reads a large publish frame where it lies in the
    # client's ring. A publish held by a full ``hold`` queue keeps its frame while the
    # client writes on behind it (past half its ring: the broker copies the frame out).
    server = track.server()
    client = track.client(server.endpoint, local_channel=True, ring_bytes=1 << 20)
    client.create_topic("t")
    client.create_queue("q", max_messages=100, overflow="hold")
    client.subscribe("t", "q")
    rows = np.arange(800 * 256, dtype=np.float32).reshape(800, 256)
    client.publish_batch("t", rows[:100])                  # the queue is full now
    held = client.publish_batch_nowait("t", rows[100:200])   # 108 KB: read in place, held
    rest = [client.publish_batch_nowait("t", rows[start:start + 50])   # 54 KB frames
            for start in range(200, 800, 50)]
    consumer = client.consume("q", prefetch=100)
    got: list[Any] = []
    while sum(map(len, got)) < 800:
        batch = consumer.next_batch(timeout=10.0)
        assert batch is not None
        got.append(np.array(batch.as_array(np.float32, (256,))))
        batch.ack()
    assert (np.concatenate(got) == rows).all()
    assert len(held.result()) == 100 and all(len(f.result()) == 50 for f in rest)
    consumer.cancel()


def test_the_asyncio_client_views_large_batches_in_its_ring(track: Tracker) -> None:
    server = track.server()
    rows = np.arange(300 * 256, dtype=np.float32).reshape(300, 256)   # 324 KB frames

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0, local_channel=True,
                               ring_bytes=4 << 20) as client:
            await client.create_topic("t")
            await client.create_queue("q")
            await client.subscribe("t", "q")
            await client.send_batch("q", rows)   # a RECEIVE answer of 324 KB: copied
            received = await client.receive("q", max_messages=300, wait=5.0)
            assert [m.body for m in received] == [row.tobytes() for row in rows]
            await client.ack_batch(np.array([m.receipt for m in received], np.uint64))
            assert len(await client.publish_batch("t", rows)) == 300
            batches = client.consume_batches("q", prefetch=1000, timeout=5.0)
            batch = await anext(batches)
            assert len(batch) == 300 and type(batch.bodies.obj) is RingFrame
            table = batch.as_array(np.float32, (256,))
            assert (table == rows).all()
            assert batch[299].body == rows[299].tobytes()   # messages made from it
            await batch.ack()
            await batches.aclose()   # the iterator let go of the frame it yielded
            await client.stats()     # and so did the connection's reader (a later message)
            ring = client.connection.transport.channel.incoming
            assert ring.held == 1
            del batch, table
            assert ring.held == 0

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_a_consumer_keeping_its_last_batchs_view_while_it_waits_gets_the_next(
        track: Tracker, kind: str) -> None:
    # The usual loop (``table = batch.as_array(...)``, then ask for the next batch)
    # keeps the last batch in the client's ring. Until 2026-12-04 a push of 0.43 of the
    # ring placed after such a batch could fit neither free piece (a record never
    # straddles the ring's end) and the client waited for it in vain, then called the
    # broker dead; later the broker sent such a push around the ring over the socket.
    # Pushes are now cut to a quarter of the ring, which always finds room beside a held
    # batch: every push comes through the ring, none over the socket.
    server = track.server()
    publisher = track.client(server.endpoint, local_channel=False)
    setup(publisher)
    rows = np.arange(1040 * 256, dtype=np.float32).reshape(1040, 256)
    # four pushes of 54 KB (copied: under HOLD_MIN_BYTES) move the ring's head to 0.2
    # of its 1 MiB; the parts of 420 rows (0.43 of the ring) come as pushes of at most
    # a quarter of it, each viewed in place while the next one is written
    cuts = [0, 50, 100, 150, 200, 620, 1040]
    parts = [rows[start:end] for start, end in pairwise(cuts)]

    def publish(part: Any) -> None:
        assert len(publisher.publish_batch("t", part)) == len(part)

    async def consume_async() -> list[Any]:
        async with aio.connect(server.endpoint, timeout=5.0, local_channel=True,
                               ring_bytes=1 << 20) as client:
            batches = client.consume_batches("q", prefetch=1000, timeout=10.0)
            tables = []
            for end, part in zip(cuts[1:], parts, strict=True):
                await asyncio.to_thread(publish, part)
                while sum(len(t) for t in tables) < end:
                    batch = await anext(batches)
                    table = batch.as_array(np.float32, (256,))   # the last view stays
                    tables.append(np.array(table))
                    await batch.ack()
            await batches.aclose()
            return tables

    def consume_blocking() -> list[Any]:
        client = track.client(server.endpoint, local_channel=True, ring_bytes=1 << 20)
        consumer = client.consume("q", prefetch=1000)
        tables = []
        for end, part in zip(cuts[1:], parts, strict=True):
            publish(part)
            while sum(len(t) for t in tables) < end:
                batch = consumer.next_batch(timeout=10.0)
                assert batch is not None, "the next push never came"
                table = batch.as_array(np.float32, (256,))   # the last view stays
                tables.append(np.array(table))
                batch.ack()
        consumer.cancel()
        return tables

    tables = consume_blocking() if kind == "blocking" else asyncio.run(consume_async())
    quarter = (1 << 20) // 4 // (256 * 4 + 56)   # rows of a push of a quarter of the ring
    assert [len(t) for t in tables[:4]] == [50, 50, 50, 50]
    assert len(tables) >= 8 and max(len(t) for t in tables) <= quarter
    assert (np.concatenate(tables) == rows).all()
    stats = publisher.server_stats()
    assert stats["local_pinned_spills"] == 0 and stats["local_spills"] == 0


def test_an_array_kept_for_good_leaves_later_pushes_to_the_socket(track: Tracker) -> None:
    # The first batch's array is kept; the broker fills the ring behind it, and then,
    # the consumer waiting with every record read, sends each push around the ring.
    server = track.server()
    publisher = track.client(server.endpoint, local_channel=False)
    setup(publisher)
    client = track.client(server.endpoint, local_channel=True, ring_bytes=1 << 20)
    consumer = client.consume("q", prefetch=1000)
    rows = np.arange(2200 * 256, dtype=np.float32).reshape(2200, 256)   # 2.3 rings
    publisher.publish_batch("t", rows[:200])
    first = consumer.next_batch(timeout=10.0)
    assert first is not None
    kept = first.as_array(np.float32, (256,))   # in the ring, viewed for good
    first.ack()
    got = [np.array(kept)]
    for start in range(200, 2200, 100):
        publisher.publish_batch("t", rows[start:start + 100])
        batch = consumer.next_batch(timeout=10.0)
        assert batch is not None, "the push behind the kept array never came"
        got.append(np.array(batch.as_array(np.float32, (256,))))
        batch.ack()
        # the kept array still reads its own rows: its frame was neither moved out of
        # the ring (it is viewed) nor written over
        assert (kept == rows[:200]).all(), f"the kept array changed at row {start}"
    assert (np.concatenate(got) == rows).all()
    frame = first.bodies.obj
    assert type(frame) is RingFrame and frame.in_ring   # viewed: never moved out
    assert publisher.server_stats()["local_pinned_spills"] >= 1
    consumer.cancel()


def settle_with_numpy_receipts(api: Any, queue: str) -> list[str]:
    """Each settle call given receipts as a batch's ``receipts`` items (numpy uint64), and
    a bool as a receipt; returns what each did (the same in the three APIs)."""
    outcomes = []
    for settle in (lambda r: api.ack(r), lambda r: api.ack_batch([r]),
                   lambda r: api.ack_batch((r,)),
                   lambda r: api.nack(r), lambda r: api.extend(r, 0), lambda r: api.term(r)):
        api.send(queue, b"x")
        batch_receipts = np.array([api.receive(queue, wait=5.0)[0].receipt], np.uint64)
        settle(next(iter(batch_receipts)))   # a numpy uint64, as iterating gives
        outcomes.append("settled")
        api.purge(queue)
        try:
            settle(True)
        except InvalidArgument:
            outcomes.append("bool refused")
    return outcomes


def test_numpy_integer_receipts_settle_alike_in_the_three_apis(track: Tracker) -> None:
    # the broker refused them everywhere; the clients' ack and ack_batch took them (and
    # a bool), and their nack, extend and term failed to encode them
    expected = ["settled", "bool refused"] * 6
    with fastfanout.Broker() as broker:
        broker.create_queue("q")
        assert settle_with_numpy_receipts(broker, "q") == expected
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    assert settle_with_numpy_receipts(client, "q") == expected

    async def main() -> list[str]:
        async with aio.connect(server.endpoint, timeout=5.0) as aclient:
            outcomes = []
            for settle in ("ack", "nack", "term"):
                await aclient.send("q", b"x")
                receipt = (await aclient.receive("q", wait=5.0))[0].receipt
                await getattr(aclient, settle)(np.uint64(receipt))
                await aclient.purge("q")
                with pytest.raises(InvalidArgument):
                    await getattr(aclient, settle)(True)
                outcomes.append(settle)
            return outcomes

    assert asyncio.run(main()) == ["ack", "nack", "term"]
    assert client.stats().queues["q"].visible == 0


def test_a_message_looked_at_after_its_batch_ack_is_settled_with_it(track: Tracker) -> None:
    # made after batch.ack(), its ack was queued as fresh: nothing raised on the client,
    # where the embedded broker raises StaleReceipt
    def ack_after_the_batch(api: Any) -> None:
        api.create_queue("q")
        api.send_batch("q", [b"a", b"b"])
        consumer = api.consume("q", prefetch=10)
        batch = consumer.next_batch(5.0)
        assert batch is not None
        batch.ack()
        with pytest.raises(StaleReceipt):
            batch[0].ack()
        consumer.cancel()
        assert api.stats().queues["q"].acked == 2

    with fastfanout.Broker() as broker:
        ack_after_the_batch(broker)
    server = track.server()
    ack_after_the_batch(track.client(server.endpoint, linger=30.0))
