"""The encoded fast paths the server uses: publish_frame, send_frame, receive_frame."""

import gc
import json

import msgspec
import pytest

from fastfanout import InvalidArgument, MessageTooLarge
from fastfanout._ext.codec import Record, decode_batch, encode_batch
from fastfanout._ext.shmring import MIN_CAPACITY
from fastfanout._ext.wire import receipts_of


def frame_of(*records):
    return encode_batch(list(records))


def test_publish_frame_fans_out_every_record(broker, clock):
    port = broker.server_port()
    broker.create_topic("t")
    for name in ("a", "b"):
        broker.create_queue(name)
        broker.subscribe("t", name)
    attributes = msgspec.msgpack.encode({"k": "v", "n": 2})
    batch = port.publish_frame("t", frame_of(
        Record(b"one", attributes=attributes),
        Record(b"two", priority=0, deliver_at_us=round((clock.now + 5) * 1e6)),
    ))
    assert [r.deliveries for r in batch] == [2, 2]
    (first,) = broker.receive("a", max_messages=5)
    assert first.body == b"one" and first.attributes == {"k": "v", "n": 2}
    assert first.id == batch[0].message_id
    clock.advance(5)
    assert [m.body for m in broker.receive("b", max_messages=5)] == [b"one", b"two"]


def test_receive_frame_carries_receipts_that_ack(broker, clock):
    port = broker.server_port()
    broker.create_queue("q")
    broker.send_batch("q", [b"x", b"y"])
    frame, count = port.receive_frame("q", max_messages=10, visibility_timeout=5)
    records = decode_batch(frame)
    assert count == 2 and [r.body for r in records] == [b"x", b"y"]
    assert all(r.receive_count == 1 and r.receipt for r in records)
    assert records[0].timestamp_us == round(clock.now * 1e6)
    broker.ack_batch([r.receipt for r in records])
    assert broker.stats().queues["q"].acked == 2


def test_receive_frame_describes_dead_letters(broker):
    port = broker.server_port()
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.send("q", b"bad")
    broker.receive("q")[0].term()
    frame, _ = port.receive_frame("dlq")
    (record,) = decode_batch(frame)
    assert record.dead_letter
    reason, source, receive_count, first, last, when = json.loads(record.name)
    assert (reason, source, receive_count) == ("rejected", "q", 1)
    assert first == last and when >= first


def test_send_frame_with_ttl_group_and_dedup(broker, clock):
    port = broker.server_port()
    broker.create_queue("f", fifo=True)
    now_us = round(clock.now * 1e6)
    batch = port.send_frame("f", frame_of(
        Record(b"1", group_id="g", dedup_id="d1", expires_at_us=now_us + 1_000_000),
        Record(b"2", group_id="g", dedup_id="d1"),
    ))
    assert [r.duplicate for r in batch] == [False, True]
    clock.advance(1)
    assert broker.receive("f") == []
    assert broker.stats().queues["f"].dropped["expired"] == 1


@pytest.mark.parametrize("frame", [b"", b"FFB1", b"XXXX\x00\x00\x00\x00", b"FFB1\x01\x00\x00\x00"])
def test_malformed_frames_are_refused_and_change_nothing(broker, frame):
    port = broker.server_port()
    broker.create_queue("q")
    with pytest.raises(InvalidArgument, match="malformed"):
        port.send_frame("q", frame)
    assert broker.stats().queues["q"].enqueued == 0


def test_bad_records_are_refused_atomically(broker):
    port = broker.server_port()
    broker.create_queue("q", max_message_size=10)
    good = Record(b"ok")
    bad_records = (Record(b"x", attributes=b"\xc1"),
                   Record(b"x", attributes=msgspec.msgpack.encode([1])),
                   Record(b"x", attributes=msgspec.msgpack.encode({"a": True})))
    for bad in bad_records:
        with pytest.raises(InvalidArgument):
            port.send_frame("q", frame_of(good, bad))
    with pytest.raises(MessageTooLarge):
        port.send_frame("q", frame_of(good, Record(b"x" * 11)))
    with pytest.raises(InvalidArgument):
        port.send_frame("q", "not bytes")
    assert broker.stats().queues["q"].enqueued == 0


def test_a_bad_utf8_id_is_a_malformed_batch(broker):
    port = broker.server_port()
    import struct

    from fastfanout import MalformedBatch

    broker.create_queue("q")
    frame = bytearray(frame_of(Record(b"x", group_id="g")))
    # the group id byte follows the 56-byte header (no name part): make it invalid UTF-8
    frame[8 + 56] = 0xFF
    assert struct.unpack_from("<H", frame, 8 + 6)[0] == 1
    with pytest.raises(MalformedBatch):
        port.send_frame("q", bytes(frame))
    assert broker.stats().queues["q"].enqueued == 0


@pytest.fixture
def no_collection():
    # The slab's figures are the process's: no other test's garbage freed meanwhile.
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_freed_blobs_are_reused_and_empty_chunks_past_the_bound_go_back(
        broker, no_collection):
    port = broker.server_port()
    from fastfanout._ext import blobs

    size = blobs.blob_bytes(64)
    broker.create_queue("q", max_messages=None)
    before = blobs.blob_slab_stats()
    broker.send_batch("q", [b"x" * 64] * 1000)
    assert blobs.blob_slab_stats()["live_bytes"] == before["live_bytes"] + 1000 * size
    got = broker.receive("q", max_messages=1000)
    broker.ack_batch([m.receipt for m in got])
    assert blobs.blob_slab_stats()["live_bytes"] == before["live_bytes"]
    mapped = blobs.blob_slab_stats()["mapped_bytes"]
    broker.send_batch("q", [b"y" * 64] * 1000)   # in the chunks just freed: none mapped
    assert blobs.blob_slab_stats()["mapped_bytes"] == mapped
    assert [m.body for m in broker.receive("q", max_messages=2)] == [b"y" * 64] * 2
    # Far more freed than the bound: the empty chunks past it go back to the kernel.
    for _ in range(40):
        broker.send_batch("q", [b"z" * 64] * 10_000)
    held = blobs.blob_slab_stats()
    for _ in range(40):
        frame, _ = port.receive_frame("q", 10_000)
        port.ack_packed(receipts_of(frame))
    after = blobs.blob_slab_stats()
    assert after["live_bytes"] == held["live_bytes"] - 400_000 * size
    assert after["kept_bytes"] <= blobs.BLOB_SLAB_KEEP_BYTES
    freed_chunks = 400_000 * size // blobs.BLOB_SLAB_CHUNK
    released = after["released"] - held["released"]
    assert released >= freed_chunks - blobs.BLOB_SLAB_KEEP_BYTES // blobs.BLOB_SLAB_CHUNK - 2
    assert after["released_chunks"] >= released


def test_freed_big_blobs_are_pooled_within_the_bound(broker):
    # 1 KiB bodies (a numpy pipeline's rows) are past the small classes and past glibc's
    # thread cache: their blobs have a pool of their own, bounded and counted.
    port = broker.server_port()
    from fastfanout._ext import blobs

    size = blobs.blob_bytes(1024)
    assert size > blobs.BLOB_SLAB_MAX and (size - 8) % 16 == 0   # past the slab
    broker.create_queue("q", max_messages=None)
    broker.send_batch("q", [b"x" * 1024] * 1000)
    before, overflows = blobs.blob_big_pool_stats()
    assert before < blobs.BLOB_BIG_POOL_MAX_BYTES - 1000 * size   # room for them all
    got = broker.receive("q", max_messages=1000)
    broker.ack_batch([m.receipt for m in got])
    assert blobs.blob_big_pool_stats() == (before + 1000 * size, overflows)
    broker.send_batch("q", [b"y" * 1024] * 1000)   # the same chunks again, rewritten
    assert blobs.blob_big_pool_stats() == (before, overflows)
    assert [m.body for m in broker.receive("q", max_messages=2)] == [b"y" * 1024] * 2
    # More freed than the bound: the pool stops there, the rest goes to malloc, counted.
    for _ in range(4):
        broker.send_batch("q", [b"z" * 1024] * 10_000)
    pool_before_acks, _ = blobs.blob_big_pool_stats()
    for _ in range(4):
        frame, _ = port.receive_frame("q", 10_000)
        port.ack_packed(receipts_of(frame))
    pooled, overflows_after = blobs.blob_big_pool_stats()
    assert blobs.BLOB_BIG_POOL_MAX_BYTES <= pooled < blobs.BLOB_BIG_POOL_MAX_BYTES + size
    assert overflows_after - overflows == 40_000 - (pooled - pool_before_acks) // size
    # A body too big for the big classes is malloc'd and freed as it comes (uncounted);
    # the last 998 of the 1 KiB ones find the pool full.
    broker.send_batch("q", [b"b" * blobs.BLOB_BIG_MAX_SIZE])
    frame, _ = port.receive_frame("q", 10_000)
    port.ack_packed(receipts_of(frame))
    assert blobs.blob_big_pool_stats() == (pooled, overflows_after + 998)


@pytest.fixture
def ring_pair():
    from fastfanout._ext.shmring import SharedRing

    writer = SharedRing.create(MIN_CAPACITY)
    reader = SharedRing(f"/proc/self/fd/{writer.fileno()}")
    yield writer, reader
    writer.close()
    reader.close()


def test_receive_push_writes_the_push_into_a_ring(broker, ring_pair):
    port = broker.server_port()
    from fastfanout._ext.shmring import WROTE, WROTE_WAKE

    writer, reader = ring_pair
    broker.create_queue("q")
    assert port.receive_push("q", 10, None, writer, b"HDR") == (
        b"FFB1\x00\x00\x00\x00", 0, b"", WROTE, False)   # nothing leased: nothing written
    assert writer.used == 0
    broker.send_batch("q", [b"x", b"y" * 100])
    assert reader.sleep()
    frame, count, receipts, status, _ = port.receive_push("q", 10, 5.0, writer, b"HDR")
    assert (frame, count, status) == (None, 2, WROTE_WAKE)
    [[header, pushed]], _ = reader.read(10)
    assert header == b"HDR" and receipts == receipts_of(pushed)
    assert [r.body for r in decode_batch(pushed)] == [b"x", b"y" * 100]
    port.ack_packed(receipts)
    assert broker.stats().queues["q"].acked == 2


def test_receive_push_without_room_returns_the_frame(broker, ring_pair):
    port = broker.server_port()
    from fastfanout._ext.shmring import FULL, TOO_LARGE, WROTE

    writer, _ = ring_pair
    broker.create_queue("q")
    broker.send_batch("q", [b"z" * 40_000])              # more than half the ring
    frame, count, receipts, status, _ = port.receive_push("q", 10, None, writer, b"H")
    assert status == TOO_LARGE and count == 1 and writer.used == 0
    assert decode_batch(frame)[0].body == b"z" * 40_000 and receipts == receipts_of(frame)
    for filler in (b"f" * 20_000, b"f"):                # leaves less than 24 bytes
        while writer.write([filler]) != FULL:
            pass
    broker.send_batch("q", [b"small"])
    frame, count, _, status, _ = port.receive_push("q", 10, None, writer, b"H")
    assert status == FULL and [r.body for r in decode_batch(frame)] == [b"small"]
    broker.send("q", b"no ring")
    frame, count, receipts, status, _ = port.receive_push("q", 10, None, None, b"")
    assert status == WROTE and count == 1 and receipts == receipts_of(frame)


def test_receive_push_stops_short_of_max_bytes(broker, ring_pair):
    # Each head is sized before it is leased: the push stops before the record that
    # would take the frame past max_bytes (the first record always goes), says "more"
    # when it stopped at a bound of its own with credit left, and the messages it did
    # not take stay visible, in order, for the next push.
    port = broker.server_port()
    writer, reader = ring_pair
    broker.create_queue("q")
    bodies = [b"%03d" % n + b"x" * 997 for n in range(10)]   # records of 1,056 bytes
    broker.send_batch("q", bodies)
    frame, count, _, _, more = port.receive_push("q", 10, None, None, b"", max_bytes=8 + 3 * 1056)
    assert (count, more, len(frame)) == (3, True, 8 + 3 * 1056)
    assert [r.body for r in decode_batch(frame)] == bodies[:3]
    frame, count, _, _, more = port.receive_push("q", 10, None, None, b"", max_bytes=100)
    assert (count, more) == (1, True) and decode_batch(frame)[0].body == bodies[3]
    frame, count, _, _, more = port.receive_push("q", 2, None, None, b"")
    assert (count, more) == (2, True)      # stopped at max_messages, credit left
    frame, count, _, _, more = port.receive_push("q", 10, None, None, b"")
    assert (count, more) == (4, False)     # the queue ran out
    assert [r.body for r in decode_batch(frame)] == bodies[6:]
    # An owner's credit is no bound of the push's own: no "more" when it ran out.
    owner = port.open_owner(None, prefetch=2)
    broker.send_batch("q", bodies[:4])
    _, count, _, _, more = port.receive_push("q", 10, None, None, b"", owner=owner)
    assert (count, more) == (2, False)
    # The ring's room: a quarter of it, less the record's framing and the first frame.
    assert writer.pair_room(b"HDR") == MIN_CAPACITY // 4 - 16 - 3
    port.receive_push("q", 10, None, None, b"")   # (empty the queue)
    broker.send_batch("q", [b"y" * 5000] * 5)     # records of 5,056 bytes: 3 fit
    _, count, _, _, more = port.receive_push(
        "q", 10, None, writer, b"HDR", max_bytes=writer.pair_room(b"HDR"))
    assert (count, more) == (3, True) and writer.used <= MIN_CAPACITY // 4
    [[_, pushed]], _ = reader.read(10)
    assert len(decode_batch(pushed)) == 3


def test_a_bounded_push_settles_heads_out_of_receives_on_the_way(broker):
    # A head that has run out of receives is dead-lettered when the push reaches it, as
    # by receive(); the push goes on with the next head, and the settled head takes
    # none of its bound (records of 64 bytes: room for exactly two after the header).
    port = broker.server_port()
    broker.create_queue("dlq")
    broker.create_queue("q", max_receive_count=1, dead_letter_queue="dlq")
    broker.send("q", b"a")
    [first] = broker.receive("q", max_messages=1)
    first.nack()                                   # visible again, received once
    broker.send_batch("q", [b"b", b"c"])
    frame, count, _, _, more = port.receive_push("q", 10, None, None, b"",
                                                 max_bytes=8 + 2 * 64)
    assert [r.body for r in decode_batch(frame)] == [b"b", b"c"] and (count, more) == (2, False)
    assert [m.body for m in broker.receive("dlq", max_messages=10)] == [b"a"]


def test_receive_push_writes_into_any_sink_and_a_sink_without_room_gets_a_frame(broker):
    port = broker.server_port()
    from fastfanout._ext.shmring import SharedRing
    from fastfanout._ext.sinks import FULL, FrameSink

    assert issubclass(SharedRing, FrameSink)       # the ring is one sink among others
    broker.create_queue("q")
    broker.send_batch("q", [b"a", b"b"])
    frame, count, receipts, status, _ = port.receive_push("q", 10, None, FrameSink(), b"H")
    assert status == FULL and count == 2 and receipts == receipts_of(frame)
    assert [r.body for r in decode_batch(frame)] == [b"a", b"b"]


def test_long_receipts_frames_ack_whole_or_not_at_all(broker):
    # The ack of a frame asks for entries and blobs dozens of receipts ahead of its two
    # passes: frames shorter and longer than those distances, receipts naming no slot
    # of the store (far past its end) and a repeated receipt must all still be all or
    # none, and a scattered order (entries out of slot order) acks what it names.
    import random
    import struct

    from fastfanout import StaleReceipt

    port = broker.server_port()
    broker.create_queue("q", max_messages=None)
    broker.send_batch("q", [b"m%d" % i for i in range(300)])
    frame, count = port.receive_frame("q", 300)
    receipts = list(struct.unpack(f"<{count}Q", receipts_of(frame)))
    random.Random(7).shuffle(receipts)
    bogus = [(1 << 32) | 0xFFFFFFF0, (5 << 32) | 123_456_789]
    for stale in ([*receipts[:40], bogus[0]], [bogus[1], *receipts[:3]]):
        with pytest.raises(StaleReceipt) as raised:
            port.ack_packed(struct.pack(f"<{len(stale)}Q", *stale))
        assert raised.value.receipts == [r for r in stale if r in bogus]
    assert broker.stats().queues["q"].leased == 300   # nothing acked
    assert port.ack_packed(struct.pack("<5Q", *receipts[:5])) == 5
    assert port.ack_frames([struct.pack(f"<{len(receipts) - 5}Q", *receipts[5:])]) == []
    stats = broker.stats().queues["q"]
    assert (stats.leased, stats.visible, stats.acked) == (0, 0, 300)
