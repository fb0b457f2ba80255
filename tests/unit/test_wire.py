"""Native wire helpers: FrameBuilder, receipts_of, results and stream frames, packed acks."""

import struct
from datetime import UTC, datetime

import msgspec
import pytest

from fastfanout import InvalidArgument, PublishEntry, StaleReceipt
from fastfanout._ext.codec import decode_batch
from fastfanout._ext.wire import FrameBuilder, count_of, encode_entries, receipts_of
from fastfanout.wire.protocol import decode_results


def test_frame_builder_round_trips_through_the_codec():
    builder = FrameBuilder()
    assert builder.append_body(b"a") == 0
    assert builder.append(bytearray(b"b"), {"k": "v"}, group_id="g", dedup_id="d",
                          priority=7) == 1
    builder.append(b"c", deliver_at=datetime(2030, 1, 1, tzinfo=UTC), ttl=5)
    assert len(builder) == 3 and builder.body_bytes == 3
    frame = builder.take()
    assert len(builder) == 0 and count_of(frame) == 3
    first, second, third = decode_batch(frame)
    assert first.body == b"a" and first.priority is None
    assert msgspec.msgpack.decode(second.attributes) == {"k": "v"}
    assert (second.group_id, second.dedup_id, second.priority) == ("g", "d", 7)
    assert third.deliver_at_us == round(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1e6)
    # a ttl (and a delay) travels as a duration: the broker counts it on its own clock
    assert third.ttl_us == 5_000_000 and third.expires_at_us is None and third.receipt is None
    builder.append(b"d", delay=1.5)
    (fourth,) = decode_batch(builder.take())
    assert fourth.delay_us == 1_500_000 and fourth.deliver_at_us is None


@pytest.mark.parametrize("call", [
    lambda b: b.append_body("text"),
    lambda b: b.append(b"x", delay=1, deliver_at=2),
    lambda b: b.append(b"x", priority=256),
    lambda b: b.append(b"x", group_id=""),
    lambda b: b.append(b"x", ttl=-1),
    lambda b: b.append(b"x", deliver_at=datetime(2030, 1, 1)),
    lambda b: b.append(b"x", attributes=[1]),
])
def test_frame_builder_refuses_bad_entries(call):
    builder = FrameBuilder()
    with pytest.raises(InvalidArgument):
        call(builder)
    assert len(builder) == 0


def test_publish_through_a_frame_and_ack_packed(broker):
    port = broker.server_port()
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    batch = port.publish_frame("t", encode_entries([b"1", PublishEntry(b"2", {"a": 1})]))
    ids, deliveries, duplicates = decode_results(batch.to_wire())
    assert ids == batch.message_ids and deliveries == [1, 1] and duplicates == [False, False]
    assert batch.accepted == 2
    frame, count = port.receive_frame("q", max_messages=5)
    packed = receipts_of(frame)
    assert len(packed) == 8 * count
    port.ack_packed(packed)
    assert broker.stats().queues["q"].acked == 2
    with pytest.raises(StaleReceipt):
        port.ack_packed(packed)
    with pytest.raises(InvalidArgument):
        port.ack_packed(b"1234")


def test_stream_frame_stamps_ids_sequences_and_topic(broker):
    port = broker.server_port()
    broker.create_topic("t", content_dedup=True)
    publish = encode_entries([b"a", b"a", b"b"])
    batch = port.publish_frame("t", publish)
    frame, count = batch.stream_frame(publish, "t", 41, 123)
    records = decode_batch(frame)
    assert count == 2 and [r.body for r in records] == [b"a", b"b"]
    assert [r.receipt for r in records] == [41, 42]
    assert [r.id for r in records] == [batch[0].message_id, batch[2].message_id]
    assert all(r.name == "t" and r.timestamp_us == 123 for r in records)


def test_receipts_of_refuses_frames_without_receipts():
    with pytest.raises(InvalidArgument):
        receipts_of(encode_entries([b"x"]))
    with pytest.raises(InvalidArgument):
        receipts_of(b"junk")
    assert receipts_of(b"FFB1" + struct.pack("<I", 0)) == b""


def test_receipt_span_reads_sequence_numbers_without_decoding(broker):
    port = broker.server_port()
    from fastfanout._ext.wire import receipt_span

    broker.create_topic("t")
    publish = encode_entries([b"a", b"b", b"c"])
    frame, _ = port.publish_frame("t", publish).stream_frame(publish, "t", 7, 0)
    assert receipt_span(frame) == (3, 7, 9)
    assert receipt_span(encode_entries([])) == (0, 0, 0)
    with pytest.raises(InvalidArgument):
        receipt_span(b"FFB1\x02\x00\x00\x00")
